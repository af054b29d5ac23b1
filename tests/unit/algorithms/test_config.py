"""Loss configs: defaults from the spec, string coercion, and validation that names the field."""

import dataclasses
import re

import pytest

from nemo_gift.algorithms import (
    GiftLossConfig,
    GrpoLossConfig,
    ImplicitBaseline,
    ImplicitRewardMode,
    KlEstimator,
    LossAggregation,
    StdGuard,
    validate_group_size,
)


def test_gift_defaults_follow_the_spec():
    cfg = GiftLossConfig()
    assert cfg.beta == 1.0 and cfg.eps == 1e-6 and cfg.unbiased_std is True
    assert cfg.implicit_reward is ImplicitRewardMode.KL_SUM and cfg.length_exponent is None
    assert cfg.detach_implicit_stats is True and cfg.drop_zero_std_groups is False
    assert cfg.implicit_baseline is ImplicitBaseline.OLD_POLICY  # the CPU experiment's evidence
    assert cfg.std_guard is StdGuard.STD_FLOOR and cfg.std_guard_value == 1e-2
    assert cfg.effective_length_exponent == 0.0


def test_grpo_defaults_follow_the_spec():
    cfg = GrpoLossConfig()
    assert cfg.clip_eps == 0.2 and cfg.clip_low == 0.8 and cfg.clip_high == 1.2
    assert cfg.beta_kl == 0.001 and cfg.kl_estimator is KlEstimator.K3
    assert cfg.aggregation is LossAggregation.TOKEN_MEAN
    assert GrpoLossConfig(clip_eps_high=0.28).clip_high == 1.28


def test_strings_from_yaml_become_enums_and_configs_are_frozen():
    cfg = GiftLossConfig(implicit_reward="kl_average", std_guard="center_only", implicit_baseline="old_policy")
    assert cfg.implicit_reward is ImplicitRewardMode.KL_AVERAGE and cfg.effective_length_exponent == 1.0
    assert cfg.std_guard is StdGuard.CENTER_ONLY and cfg.implicit_baseline is ImplicitBaseline.OLD_POLICY
    assert GrpoLossConfig(aggregation="seq_mean", kl_estimator="k1").aggregation is LossAggregation.SEQ_MEAN
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.beta = 2.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"beta": 0.0}, "beta=0.0 must be > 0"),
        ({"beta": float("nan")}, "beta=nan must be a finite number"),
        ({"beta": True}, "beta=True must be a finite number"),
        ({"eps": -1e-6}, "eps=-1e-06 must be >= 0"),
        ({"implicit_reward": "kl_max"}, "implicit_reward='kl_max' is not one of ['kl_sum', 'kl_average']"),
        ({"std_guard": "clip"}, "std_guard='clip' is not one of ['std_floor', 'center_only', 'none']"),
        ({"std_guard_value": 0.0}, "std_guard_value=0.0 must be > 0"),
        ({"implicit_baseline": "ref"}, "implicit_baseline='ref' is not one of"),
        ({"length_exponent": -0.5}, "length_exponent=-0.5 must be >= 0"),
        ({"implicit_reward": "kl_average", "length_exponent": 0.5}, "length_exponent=0.5 contradicts"),
        ({"detach_implicit_stats": "false"}, "detach_implicit_stats='false' must be a bool"),
        ({"std_guard": "none", "eps": 0.0}, "eps=0.0 with std_guard='none'"),
    ],
)
def test_gift_config_rejects_bad_values_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        GiftLossConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"clip_eps": 1.0}, "clip_eps=1.0 must be < 1"),
        ({"clip_eps": 0.0}, "clip_eps=0.0 must be > 0"),
        ({"clip_eps_high": -0.1}, "clip_eps_high=-0.1 must be > 0"),
        ({"beta_kl": -0.001}, "beta_kl=-0.001 must be >= 0"),
        ({"aggregation": "sum"}, "aggregation='sum' is not one of ['token_mean', 'seq_mean']"),
        ({"kl_estimator": "k4"}, "kl_estimator='k4' is not one of"),
    ],
)
def test_grpo_config_rejects_bad_values_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        GrpoLossConfig(**kwargs)


def test_group_size_validation():
    assert validate_group_size(16) == 16
    for bad in (1, 0, 2.0, True):
        with pytest.raises(ValueError, match=f"group_size={bad!r}"):
            validate_group_size(bad)
