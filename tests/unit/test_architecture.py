"""Imports only flow down the layers of docs/architecture.md.

The layer order is read from the ```layers block of docs/architecture.md (top layer first;
names on one line are peers). Every import of every module under ``nemo_gift/`` is read with
``ast``, those inside functions and ``if TYPE_CHECKING:`` blocks included, and resolved to the
module it names. A module may import its own layer entry, any entry on a lower line, and the
package faces above the entries (``nemo_gift``, ``nemo_gift.models``), which import nothing;
anything else (an upward import, a peer's import, a module that no entry covers) fails with
the file, line and both layers.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "nemo_gift"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
OUTSIDE = ("experiments", "benchmarks", "scripts", "tests", "launcher")
"""Top-level directories of the repository that sit above the package: it never imports them."""


def read_layers(text: str) -> list[list[str]]:
    """The ```layers block of docs/architecture.md: one list of entries per line, top first."""
    blocks = re.findall(r"^```layers\n(.*?)^```", text, flags=re.M | re.S)
    if len(blocks) != 1:
        raise ValueError(f"{ARCHITECTURE}: expected one ```layers block, found {len(blocks)}")
    lines = [line.split("#", 1)[0].split() for line in blocks[0].splitlines()]
    return [line for line in lines if line]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path], root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, imported module) for every import of ``path``: ``from X import y`` names the module
    ``X.y`` when that is a module of the package, else ``X``; relative imports are resolved."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if sub in modules else base))
    return found


def layer_of(module: str, index: dict[str, int]) -> str | None:
    """The longest layer entry that is ``module`` or a package above it."""
    matches = [e for e in index if module == e or module.startswith(e + ".")]
    return max(matches, key=len) if matches else None


def violations(layers: list[list[str]], modules: dict[str, Path], root: Path = ROOT) -> list[str]:
    rank = {entry: len(layers) - i for i, line in enumerate(layers) for entry in line}  # higher = upper
    # Package faces above the entries (``nemo_gift``, ``nemo_gift.models``) belong to no layer:
    # they may import nothing of the project, and importing one is importing nothing.
    faces = {name for name in modules if any(e.startswith(name + ".") for e in rank) and layer_of(name, rank) is None}
    bad = []
    for name, path in modules.items():
        where = path.relative_to(root)
        own = layer_of(name, rank)
        if own is None and name not in faces:
            bad.append(f"{where}: {name} is in no layer of docs/architecture.md")
            continue
        for line, target in imports_of(path, modules, root):
            top = target.split(".")[0]
            if top in OUTSIDE:
                bad.append(f"{where}:{line}: imports {target}, which sits above the package")
            if top != "nemo_gift" or target in faces:
                continue
            theirs = layer_of(target, rank)
            if theirs is None:
                bad.append(f"{where}:{line}: imports {target}, which is in no layer")
            elif own is None:
                bad.append(f"{where}:{line}: the package face {name} imports {target}")
            elif theirs != own and rank[theirs] >= rank[own]:
                how = "a peer" if rank[theirs] == rank[own] else "up"
                bad.append(f"{where}:{line}: {own} imports {target} ({theirs}): {how}")
    return bad


def test_imports_only_flow_down_the_layers():
    layers = read_layers(ARCHITECTURE.read_text())
    modules = all_modules()
    assert violations(layers, modules) == []


def import_circles(modules: dict[str, Path], root: Path = ROOT) -> list[list[str]]:
    """The groups of two or more modules that import each other in a loop (Tarjan's strongly
    connected components over every import, function-level ones included)."""
    graph = {
        n: sorted({t for _, t in imports_of(p, modules, root) if t in modules and t != n}) for n, p in modules.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(group) > 1:
                circles.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return circles


def test_no_module_circles():
    assert import_circles(all_modules()) == []


def test_every_layer_entry_exists_once():
    layers = read_layers(ARCHITECTURE.read_text())
    entries = [e for line in layers for e in line]
    assert len(entries) == len(set(entries))
    modules = all_modules()
    assert [e for e in entries if e not in modules and not (ROOT / e.replace(".", "/")).is_dir()] == []


def _write(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return {module_name(root / rel, root): root / rel for rel in files}


def test_the_circle_finder_finds_a_circle(tmp_path):
    modules = _write(tmp_path, {
        "nemo_gift/__init__.py": "", "nemo_gift/a.py": "def f():\n    from nemo_gift import b\n",
        "nemo_gift/b.py": "from nemo_gift.a import f\n", "nemo_gift/c.py": "import nemo_gift.a\n",
    })
    assert import_circles(modules, tmp_path) == [["nemo_gift.a", "nemo_gift.b"]]


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from nemo_gift.low import a\n", None),  # down: allowed
        ("def f():\n    from nemo_gift.top import t\n", "nemo_gift.top (nemo_gift.top): up"),  # inside a function
        ("from nemo_gift import top\n", "nemo_gift.top (nemo_gift.top): up"),  # a module named as a name
        ("from ..peer import p\n", "nemo_gift.peer.p (nemo_gift.peer): a peer"),  # relative, a peer
        ("import experiments.run\n", "imports experiments.run, which sits above the package"),
    ],
)
def test_the_checker_catches_what_it_claims(tmp_path, source, expected):
    """A negative control on a made-up package: the checker reads what the real one does."""
    modules = _write(tmp_path, {
        "nemo_gift/__init__.py": "", "nemo_gift/top.py": "", "nemo_gift/low/__init__.py": "",
        "nemo_gift/low/a.py": "", "nemo_gift/mid/__init__.py": "", "nemo_gift/mid/m.py": source,
        "nemo_gift/peer/__init__.py": "", "nemo_gift/peer/p.py": "",
    })
    layers = read_layers("```layers\nnemo_gift.top\nnemo_gift.mid nemo_gift.peer  # peers\nnemo_gift.low\n```\n")
    found = violations(layers, modules, tmp_path)
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].startswith("nemo_gift/mid/m.py:") and expected in found[0], found
