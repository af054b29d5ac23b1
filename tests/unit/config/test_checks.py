"""Every number of the run config is checked before any work: NaN and inf for each float field,
a negative value for each integer field, found by walking the schema (cluster.* is issue 16's)."""

from __future__ import annotations

import dataclasses
import re
import types
import typing

import pytest

from nemo_gift.utils.checks import check_range
from nemo_gift.utils.convert import SECTIONS, ConfigError
from nemo_gift.config.schema import RunConfig
from nemo_gift.launcher.main import load


def _leaves(cls, prefix=""):
    """(dotted key, type) of every scalar field, with Optional unwrapped (registry sections, the
    loss options, under their own names)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if SECTIONS in f.metadata:
            for key, section in f.metadata[SECTIONS]().items():
                yield from _leaves(section, f"{prefix}{key}.")
            continue
        tp = hints[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if dataclasses.is_dataclass(tp):
            yield from _leaves(tp, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", tp


LEAVES = [(k, tp) for k, tp in _leaves(RunConfig) if not k.startswith(("cluster.", "parallel.fp8."))]
FLOATS = [k for k, tp in LEAVES if tp is float]
INTS = [k for k, tp in LEAVES if tp is int]


def test_the_walk_finds_the_numbers():
    assert {"optim.lr", "rollout.temperature", "gift.beta", "reward.timeout_s", "model.rotary_base"} <= set(FLOATS)
    assert {"seed", "rollout.group_size", "trainer.max_steps", "data.max_prompt_length", "sft.steps"} <= set(INTS)
    assert len(FLOATS) >= 25 and len(INTS) >= 30


@pytest.mark.parametrize("key", FLOATS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_refuses_non_finite_values(key, value):
    with pytest.raises(ConfigError, match=rf"{key.rsplit('.', 1)[-1]}\b.*{re.escape(value)}"):
        load("gift_tiny", [f"{key}={value}"])


@pytest.mark.parametrize("key", INTS)
def test_every_integer_refuses_a_negative_value(key):
    with pytest.raises(ConfigError, match=key.rsplit(".", 1)[-1]):
        load("gift_tiny", [f"{key}=-1"])


@pytest.mark.parametrize("kwargs,message", [
    ({"low": 0, "low_open": True}, "x=nan must be a finite number > 0"),
    ({"low": 0, "high": 1, "high_open": True}, "x=nan must be a finite number in [0, 1)"),
    ({}, "x=nan must be a finite number"),
])
def test_check_range_names_the_interval(kwargs, message):
    with pytest.raises(ConfigError) as err:
        check_range("x", float("nan"), **kwargs)
    assert str(err.value) == message
    check_range("x", 0.5, **kwargs)
    check_range("x", None, **kwargs)
