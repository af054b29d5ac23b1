"""A worked example of GIFT's loss (Eq. 12): 2 prompts x 4 responses, by hand.

Hand computation (exact fractions; eps = 1e-6 enters as 1/(std + eps)):

prompt 0: rewards r = [1, 0, 0, 0]        mean 1/4,  deviations [3/4, -1/4, -1/4, -1/4]
          sum of squares 3/4, unbiased var 1/4, std 1/2
          s = [-0.4, 0.8, 0.4, -0.4]      mean 1/10, deviations [-1/2, 7/10, 3/10, -1/2]
          sum of squares 27/25, var 9/25, std 3/5
prompt 1: rewards r = [0.9, 0.5, -0.3, -0.3]  mean 1/5, deviations [7/10, 3/10, -1/2, -1/2], std 3/5
          s = [-0.25, -1.25, -0.25, -0.25]  mean -1/2, deviations [1/4, -3/4, 1/4, 1/4], std 1/2

With eps = 0 (exact):
    A = [3/2, -1/2, -1/2, -1/2,   7/6, 1/2, -5/6, -5/6]
    z = [-5/6, 7/6, 1/2, -5/6,    1/2, -3/2, 1/2, 1/2]
    A - z = [7/3, -5/3, -1, 1/3,  2/3, 2, -4/3, -4/3]
    L = (1/8) sum (A - z)^2 = (1/8)(49/9 + 25/9 + 1 + 1/9 + 4/9 + 4 + 16/9 + 16/9) = (1/8)(52/3) = 13/6
    dL/ds_i = -(2/8)(A_i - z_i)/std_s = [-35/36, 25/36, 5/12, -5/36,  -1/3, -1, 2/3, 2/3]
With eps = 1e-6 (the default), the same fractions with std -> std + 1e-6, evaluated
exactly with fractions.Fraction and rounded to 17 digits (below).

The s come from per-token log-probs with ragged masks (kl_sum); responses 2 and 7
have a single token, padded positions hold 7.0 to show they are ignored. The
gradient with respect to a valid token's policy log-prob is dL/ds_i; padding gets 0.
"""

import math

import pytest
import torch

from nemo_gift.algorithms import GiftLossConfig, gift_loss

PAD = 7.0
POLICY = [
    [-1.0, -0.6, PAD],  # s0 = -0.2 - 0.2       = -0.4
    [-0.5, -0.2, -1.0],  # s1 = 0.5 + 0.1 + 0.2  = 0.8
    [-0.1, PAD, PAD],  # s2 = 0.4 (single token)
    [-2.0, -0.5, -0.3],  # s3 = -0.5 + 0.1 + 0   = -0.4
    [-0.3, -0.4, -0.5],  # s4 = -0.1 - 0.15 + 0  = -0.25
    [-1.5, -1.0, PAD],  # s5 = -1.0 - 0.25      = -1.25
    [-0.25, -0.5, -0.75],  # s6 = 0.25 + 0 - 0.5  = -0.25
    [-0.75, PAD, PAD],  # s7 = -0.25 (single token)
]
BASELINE = [
    [-0.8, -0.4, PAD],
    [-1.0, -0.3, -1.2],
    [-0.5, PAD, PAD],
    [-1.5, -0.6, -0.3],
    [-0.2, -0.25, -0.5],
    [-0.5, -0.75, PAD],
    [-0.5, -0.5, -0.25],
    [-0.5, PAD, PAD],
]
LENGTHS = [2, 3, 1, 3, 3, 2, 3, 1]
REWARDS = [1.0, 0.0, 0.0, 0.0, 0.9, 0.5, -0.3, -0.3]

# eps = 1e-6: exact rational values rounded to 17 significant digits.
EXPECTED_LOSS = 2.1666587222442129
EXPECTED_DL_DS = [
    -0.97221877315736109,
    0.69444206019134258,
    0.41666520833717592,
    -0.13888849537115741,
    -0.33333219444734259,
    -0.99999608334486108,
    0.66666413889610183,
    0.66666413889610183,
]
# eps = 0: exact.
EXACT_LOSS = 13.0 / 6.0
EXACT_DL_DS = [-35 / 36, 25 / 36, 5 / 12, -5 / 36, -1 / 3, -1.0, 2 / 3, 2 / 3]


def _inputs():
    policy = torch.tensor(POLICY, dtype=torch.float64, requires_grad=True)
    baseline = torch.tensor(BASELINE, dtype=torch.float64)
    mask = torch.arange(3)[None, :] < torch.tensor(LENGTHS)[:, None]  # [8, 3]
    rewards = torch.tensor(REWARDS, dtype=torch.float64)
    return policy, baseline, mask, rewards


def _expected_token_grad(dl_ds):
    mask = torch.arange(3)[None, :] < torch.tensor(LENGTHS)[:, None]
    return torch.tensor(dl_ds, dtype=torch.float64)[:, None] * mask


@pytest.mark.parametrize(
    "eps, loss_expected, dl_ds",
    [(1e-6, EXPECTED_LOSS, EXPECTED_DL_DS), (0.0, EXACT_LOSS, EXACT_DL_DS)],
    ids=["eps=1e-6", "eps=0"],
)
@pytest.mark.parametrize("guard", ["std_floor", "center_only"])
def test_worked_example_loss_and_gradients(eps, loss_expected, dl_ds, guard):
    # Both groups' implicit std (0.6, 0.5) is far above the guard value 1e-2: no guard acts.
    policy, baseline, mask, rewards = _inputs()
    loss, _ = gift_loss(policy, baseline, mask, rewards, 4, GiftLossConfig(eps=eps, std_guard=guard))
    loss.backward()
    assert loss.item() == pytest.approx(loss_expected, rel=1e-13, abs=0)
    torch.testing.assert_close(policy.grad, _expected_token_grad(dl_ds), rtol=1e-12, atol=1e-15)


def test_worked_example_raw_formula_matches():
    policy, baseline, mask, rewards = _inputs()
    loss, _ = gift_loss(policy, baseline, mask, rewards, 4, GiftLossConfig(std_guard="none"))
    loss.backward()
    assert loss.item() == pytest.approx(EXPECTED_LOSS, rel=1e-13, abs=0)
    torch.testing.assert_close(policy.grad, _expected_token_grad(EXPECTED_DL_DS), rtol=1e-12, atol=1e-15)


def test_worked_example_beta_two():
    # beta = 2, eps = 0: L = (1/8) sum (A - 2z)^2; dL/ds_i = -(2*2/8)(A_i - 2 z_i)/std_s.
    # A - 2z = [19/6, -17/6, -3/2, 7/6,  1/6, 7/2, -11/6, -11/6]
    # sum of squares = (361 + 289 + 81 + 49 + 1 + 441 + 121 + 121)/36 = 1464/36 = 122/3
    policy, baseline, mask, rewards = _inputs()
    loss, _ = gift_loss(policy, baseline, mask, rewards, 4, GiftLossConfig(beta=2.0, eps=0.0))
    loss.backward()
    assert loss.item() == pytest.approx(122 / 3 / 8, rel=1e-13, abs=0)
    e = [19 / 6, -17 / 6, -3 / 2, 7 / 6, 1 / 6, 7 / 2, -11 / 6, -11 / 6]
    std_s = [0.6] * 4 + [0.5] * 4
    dl_ds = [-(4 / 8) * ei / si for ei, si in zip(e, std_s)]
    torch.testing.assert_close(policy.grad, _expected_token_grad(dl_ds), rtol=1e-12, atol=1e-15)


def test_worked_example_metrics():
    policy, baseline, mask, rewards = _inputs()
    _, m = gift_loss(policy, baseline, mask, rewards, 4)
    # Within-group Pearson(z, A) (scale-free, so eps does not matter):
    # prompt 0: sum A z = -5/3, sum A^2 = sum z^2 = 3 -> -5/9; prompt 1: -1 / 3 -> -1/3. Mean -4/9.
    assert m["z_a_corr"].item() == pytest.approx(-4 / 9, rel=1e-12)
    assert m["loss"].item() == pytest.approx(EXPECTED_LOSS, rel=1e-13)
    assert m["zero_explicit_std_frac"].item() == 0.0
    assert m["degenerate_implicit_std_frac"].item() == 0.0
    # s = [-0.4, 0.8, 0.4, -0.4, -0.25, -1.25, -0.25, -0.25]: mean -0.2, sum of squared deviations 2.55
    assert m["implicit_reward_mean"].item() == pytest.approx(-0.2, rel=1e-13)
    assert m["implicit_reward_std"].item() == pytest.approx(math.sqrt(2.55 / 7), rel=1e-12)
    assert m["implicit_group_std_mean"].item() == pytest.approx(0.55, rel=1e-12)
    assert m["response_length_mean"].item() == pytest.approx(18 / 8, rel=1e-7)
    assert m["num_pairs"].item() == 8.0
    for name, value in m.items():
        assert value.dim() == 0 and not value.requires_grad, name
