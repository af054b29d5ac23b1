"""Every field of the config dataclasses has an attribute docstring (megatron-core's habit):
the string literal on the line after the field, which Sphinx and readers take as its doc.

The modules are parsed with ``ast``, not imported, so a field added without a docstring fails
here by name (``module.Class.field``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3] / "nemo_gift"

CONFIG_MODULES = (
    "config/schema.py",
    "config/sections.py",
    "config/cluster.py",
    "algorithms/config.py",
    "algorithms/interfaces.py",
    "algorithms/registry.py",
    "models/policy/config.py",
    "integrations/nemo_aligner/loss.py",
    "data/synthetic.py",
)
"""Every module that defines config dataclasses (the run config's sections, the loss options,
the sampling options, the registry entry, the Aligner actor's block, the synthetic task's ``data.arithmetic``)."""

def _is_dataclass(node: ast.ClassDef) -> bool:
    for deco in node.decorator_list:
        target = deco.func if isinstance(deco, ast.Call) else deco
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name == "dataclass":
            return True
    return False


def undocumented_fields(source: str) -> list[str]:
    """``Class.field`` of every dataclass field (an annotated name in the class body, ClassVar
    aside) not followed by a string literal."""
    missing = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.ClassDef) and _is_dataclass(node)):
            continue
        body = node.body
        for i, stmt in enumerate(body):
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            if "ClassVar" in ast.unparse(stmt.annotation):
                continue
            nxt = body[i + 1] if i + 1 < len(body) else None
            documented = (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                          and isinstance(nxt.value.value, str) and nxt.value.value.strip())
            if not documented:
                missing.append(f"{node.name}.{stmt.target.id}")
    return missing


@pytest.mark.parametrize("module", CONFIG_MODULES)
def test_every_config_field_has_an_attribute_docstring(module):
    missing = undocumented_fields((ROOT / module).read_text())
    assert not missing, f"fields of nemo_gift/{module} without an attribute docstring: {missing}"


def test_the_check_finds_a_missing_docstring():
    source = (
        "import dataclasses\n"
        "@dataclasses.dataclass(frozen=True)\n"
        "class A:\n"
        "    x: int = 1\n"
        '    """Documented."""\n'
        "    y: int = 2\n"
        "    z: int = 3\n"
        "    '''Documented too.'''\n"
        "class NotADataclass:\n"
        "    w: int = 4\n"
    )
    assert undocumented_fields(source) == ["A.y"]
