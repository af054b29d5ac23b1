"""experiments/stats.py: the t distribution against closed forms and published quantiles, and the
paired intervals and verdicts against hand-computed values."""

import math

import pytest

from experiments.stats import PairedInterval, betainc, paired, t_cdf, t_quantile


@pytest.mark.parametrize("t", [-7.0, -1.3, 0.0, 0.4, 2.0, 25.0])
def test_t_cdf_matches_the_closed_forms_for_1_and_2_degrees_of_freedom(t):
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-13)  # Cauchy
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-13)


@pytest.mark.parametrize("df, q975", [
    (1, 12.706204736174703), (2, 4.302652729749464), (3, 3.182446305284263), (5, 2.570581835636314),
    (10, 2.228138851986274), (30, 2.042272456301238),
])
def test_t_quantile_matches_published_values(df, q975):
    """Two-sided 95% quantiles of Student's t (any statistics table; here to 15 digits)."""
    assert t_quantile(0.975, df) == pytest.approx(q975, rel=1e-9)
    assert t_quantile(0.025, df) == pytest.approx(-q975, rel=1e-9)


def test_betainc_symmetry_and_a_closed_form():
    assert betainc(2.0, 3.0, 0.4) == pytest.approx(1 - betainc(3.0, 2.0, 0.6), abs=1e-14)
    x = 0.3  # I_x(1, b) = 1 - (1 - x)^b
    assert betainc(1.0, 4.5, x) == pytest.approx(1 - (1 - x) ** 4.5, abs=1e-14)
    with pytest.raises(ValueError, match="x=1.5"):
        betainc(1.0, 1.0, 1.5)


def test_paired_interval_by_hand():
    # a - b per seed: 0.1, 0.3, 0.2 -> mean 0.2, sd 0.1, half width t(0.975, 2) * 0.1 / sqrt(3).
    iv = paired({1: 0.6, 2: 0.8, 3: 0.5, 9: 1.0}, {1: 0.5, 2: 0.5, 3: 0.3, 4: 0.0})
    assert iv.seeds == (1, 2, 3) and iv.n == 3  # only seeds both arms finished
    assert iv.mean == pytest.approx(0.2) and iv.sd == pytest.approx(0.1)
    hw = 4.302652729749464 * 0.1 / math.sqrt(3)
    assert iv.half_width == pytest.approx(hw, rel=1e-9)
    assert (iv.low, iv.high) == pytest.approx((0.2 - hw, 0.2 + hw))
    assert iv.verdict("higher") == "not resolved" and iv.fmt() == "+0.200 [-0.048, +0.448]"


def test_verdicts_follow_the_interval():
    up = PairedInterval((0.1, 0.12, 0.11, 0.09))
    assert up.verdict("higher") == "supported" and up.verdict("lower") == "refuted"
    down = PairedInterval((-0.1, -0.12, -0.11, -0.09))
    assert down.verdict("lower") == "supported" and down.verdict("higher") == "refuted"
    assert PairedInterval((0.1, -0.1, 0.05)).verdict("higher") == "not resolved"
    one = PairedInterval((0.5,))
    assert one.verdict("higher") == "not resolved" and one.fmt() == "+0.500 (1 seed, no interval)"
    assert PairedInterval(()).fmt() == "n/a" and PairedInterval(()).verdict("lower") == "not resolved"
