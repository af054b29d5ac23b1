"""The shared overlays (conf/base.yaml, conf/algorithm/*.yaml) set only what differs from the
schema: a key set there to exactly the schema's default would be a second source of that
default, which the schema could silently contradict. The defaults themselves live in the
dataclasses (nemo_gift/config/schema.py RunConfig and the sections it composes)."""

from __future__ import annotations

import pytest
import yaml

from nemo_gift.config.schema import RunConfig
from nemo_gift.launcher.main import DEFAULT_CONF_DIR
from nemo_gift.utils.convert import to_dict

OVERLAYS = ["base.yaml", *sorted(f"algorithm/{p.name}" for p in (DEFAULT_CONF_DIR / "algorithm").glob("*.yaml"))]

KEEP = {"trainer.algorithm": "an algorithm overlay's own choice: it must not depend on which algorithm the schema "
                             "happens to default to"}
"""Keys an overlay may set to the schema's default, and why."""


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def restated_defaults(overlay: dict, defaults: dict) -> list[str]:
    """The keys of ``overlay`` (its ``defaults:`` list aside) set to exactly their schema default."""
    flat = _flat({k: v for k, v in overlay.items() if k != "defaults"})
    return sorted(k for k, v in flat.items() if k in defaults and defaults[k] == v and k not in KEEP)


@pytest.mark.parametrize("name", OVERLAYS)
def test_an_overlay_does_not_restate_a_schema_default(name):
    overlay = yaml.safe_load((DEFAULT_CONF_DIR / name).read_text()) or {}
    restated = restated_defaults(overlay, _flat(to_dict(RunConfig())))
    assert not restated, (f"conf/{name} sets {restated} to the schema's default; remove them (the schema is "
                          "the one source of a default) or add the key to KEEP with the reason")


def test_the_check_sees_a_restated_default():
    defaults = _flat(to_dict(RunConfig()))
    overlay = {"defaults": ["x"], "seed": 1234, "optim": {"lr": 1.0e-6}, "gift": {"beta": 1.0},
               "trainer": {"algorithm": "gift"}}
    assert restated_defaults(overlay, defaults) == ["gift.beta", "seed"]
