"""docs/gift-math.md section 12, checked numerically.

1. At theta = theta_old (every s_i = 0, the first mini-batch of each rollout batch with the pi_old
   baseline) GIFT's gradient is GRPO's times a positive scalar, under every guard: cosine 1.
2. z is invariant to s -> a(x) s + b(x) (a > 0): with pi_ref as baseline the loss is ~0 on the
   whole family log pi/pi_ref = a(x) r + b(x), however small or large the drift a(x).
3. A group whose rewards are all equal (A = 0) is minimized only by a constant s: its gradient
   pulls every s_i to the group mean, and its loss does not shrink with the spread.

The policy is a real (tiny) parametric model: per-token log-probs are a log-softmax over a
linear map of fixed random features, so gradients are taken with respect to its weights.
"""

import pytest
import torch

from nemo_gift.algorithms import GiftLossConfig, GrpoLossConfig, gift_loss, grpo_loss

F64 = torch.float64
B, G, T, V, D = 3, 4, 5, 7, 6  # prompts, responses per prompt, tokens, vocabulary, feature width


def _policy(seed: int = 0):
    """(weights W [D, V], features [N, T, D], sampled tokens [N, T], ragged mask [N, T], rewards [N])."""
    gen = torch.Generator().manual_seed(seed)
    n = B * G
    w = torch.randn(D, V, generator=gen, dtype=F64, requires_grad=True)
    feats = torch.randn(n, T, D, generator=gen, dtype=F64)
    tokens = torch.randint(0, V, (n, T), generator=gen)
    lengths = torch.randint(2, T + 1, (n,), generator=gen)
    mask = torch.arange(T)[None, :] < lengths[:, None]  # [N, T]
    # Prompt 0: 1 right of 4; prompt 1: 3 of 4 with a partial-credit reward; prompt 2: all right (A = 0).
    rewards = torch.tensor([1, 0, 0, 0, 1, 1, 0.5, 1, 1, 1, 1, 1], dtype=F64)
    return w, feats, tokens, mask, rewards


def _logprobs(w, feats, tokens):
    return torch.log_softmax(feats @ w, dim=-1).gather(-1, tokens[..., None])[..., 0]  # [N, T]


def _grad(loss, w):
    (g,) = torch.autograd.grad(loss, w)
    return g.flatten()


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("guard", ["none", "std_floor", "center_only"])
@pytest.mark.parametrize("mode, aggregation", [("kl_sum", "token_mean"), ("kl_average", "seq_mean")])
def test_gift_at_theta_old_is_grpo_up_to_a_scale(guard, mode, aggregation):
    w, feats, tokens, mask, rewards = _policy()
    logp = _logprobs(w, feats, tokens)
    old = logp.detach()  # pi_old = pi_theta: s = 0 exactly
    beta = 1.0
    gift_cfg = GiftLossConfig(beta=beta, implicit_reward=mode, std_guard=guard)
    gift, metrics = gift_loss(logp, old, mask, rewards, G, gift_cfg)
    assert float(metrics["degenerate_implicit_std_frac"]) == 1.0  # every group's implicit std is 0
    g_gift = _grad(gift, w)
    logp = _logprobs(w, feats, tokens)
    grpo, grpo_metrics = grpo_loss(logp, old, old, mask, rewards, G, GrpoLossConfig(aggregation=aggregation))
    assert float(grpo_metrics["clip_fraction"]) == 0.0  # ratio 1 never clips; the k3 KL has zero gradient
    g_grpo = _grad(grpo, w)
    assert _cos(g_gift, g_grpo) == pytest.approx(1.0, abs=1e-12)
    # The scale: GIFT's dL/ds_i = -(2 beta / N) A_i / d, d = the guard's denominator at std 0;
    # GRPO's is -A_i / N_tok (token_mean, kl_sum) or -A_i / N (seq_mean, kl_average, per-token 1/|y_i| alike).
    n, eps, v = B * G, gift_cfg.eps, gift_cfg.std_guard_value
    d = {"none": eps, "std_floor": v + eps, "center_only": 1.0}[guard]
    grpo_norm = int(mask.sum()) if aggregation == "token_mean" else n
    expected = (2 * beta / (n * d)) * grpo_norm
    assert float(g_gift.norm() / g_grpo.norm()) == pytest.approx(expected, rel=1e-9)


def _family_logprobs(ref, mask, rewards, a, b):
    """Policy log-probs with sum_t (log pi - log pi_ref) = a_x r_i + b_x, spread over the valid tokens."""
    s = a.repeat_interleave(G) * rewards + b.repeat_interleave(G)  # [N]
    per_token = s / mask.sum(-1)  # [N]
    return ref + torch.where(mask, per_token[:, None], torch.zeros_like(ref))


@pytest.mark.parametrize("scale", [1e-2, 1.0, 30.0])
def test_loss_vanishes_along_the_affine_family(scale):
    """Any per-prompt a(x) > 0, b(x) gives z = A: no pressure towards Eq. 1's optimum r / beta - log Z."""
    w, feats, tokens, mask, rewards = _policy(1)
    ref = _logprobs(w, feats, tokens).detach()
    a = scale * torch.tensor([0.5, 2.0, 1.0], dtype=F64)  # per-prompt slopes
    b = torch.tensor([-3.0, 0.7, 5.0], dtype=F64)  # per-prompt offsets (log Z-like)
    policy = _family_logprobs(ref, mask, rewards, a, b).requires_grad_(True)
    cfg = GiftLossConfig(std_guard="none", eps=1e-12)
    loss, metrics = gift_loss(policy, ref, mask, rewards, G, cfg)
    # Groups 0 and 1 have z = A up to eps / std; group 2 (all right) has s constant, so z = 0 = A.
    assert float(loss.detach()) < 1e-16
    assert float(metrics["z_a_corr"]) == pytest.approx(1.0, abs=1e-12)
    (grad,) = torch.autograd.grad(loss, policy)
    assert float(grad.abs().max()) < 1e-6
    # Off the family (one response's log-ratio nudged), the loss and its gradient are not ~0.
    nudged = policy.detach().clone()
    nudged[1, 0] += 0.1 * scale
    nudged.requires_grad_(True)
    off = gift_loss(nudged, ref, mask, rewards, G, cfg)[0]
    assert float(off.detach()) > 1e-4
    assert float(torch.autograd.grad(off, nudged)[0].abs().max()) > 1e-3 / scale


def test_the_std_floor_breaks_the_invariance_only_below_its_value():
    w, feats, tokens, mask, rewards = _policy(1)
    ref = _logprobs(w, feats, tokens).detach()
    cfg = GiftLossConfig(std_guard="std_floor", std_guard_value=1e-2, eps=1e-12)
    a, b = torch.tensor([1e-4, 1e-4, 1e-4], dtype=F64), torch.zeros(3, dtype=F64)
    tiny = gift_loss(_family_logprobs(ref, mask, rewards, a, b), ref, mask, rewards, G, cfg)[0]
    big = gift_loss(_family_logprobs(ref, mask, rewards, 1e4 * a, b), ref, mask, rewards, G, cfg)[0]
    # Below the floor z ~ 0, so the loss stays near mean A^2 = 0.5 (groups 0 and 1: (G-1)/G each).
    assert float(tiny) > 0.49 and float(big) < 1e-16


@pytest.mark.parametrize("spread", [1e-3, 1.0, 50.0])
def test_a_zero_group_pulls_s_to_its_mean_whatever_the_spread(spread):
    """One all-right group: L = beta^2 (G-1)/G (std/(std+eps))^2 for any spread, minimized only by
    a constant s; dL/ds_i = 2 beta^2 z_i / (G (std + eps)) points from the mean to s_i."""
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(G, T, generator=gen, dtype=F64)
    mask = torch.ones(G, T, dtype=torch.bool)
    s = spread * torch.tensor([0.3, -1.2, 0.9, 0.0], dtype=F64)
    policy = (base + (s / T)[:, None]).requires_grad_(True)
    beta, eps = 0.7, 1e-6
    cfg = GiftLossConfig(beta=beta, std_guard="none", eps=eps)
    loss, metrics = gift_loss(policy, base, mask, torch.ones(G, dtype=F64), G, cfg)
    assert float(metrics["zero_explicit_std_frac"]) == 1.0
    std = float(s.std())
    assert float(loss.detach()) == pytest.approx(beta**2 * (G - 1) / G * (std / (std + eps)) ** 2, rel=1e-9)
    (grad,) = torch.autograd.grad(loss, policy)
    ds = grad[:, 0]  # kl_sum: every token of response i gets dL/ds_i
    z = (s - s.mean()) / (std + eps)
    expected = 2 * beta**2 * z / (G * (std + eps))
    torch.testing.assert_close(ds, expected, rtol=1e-9, atol=1e-9 * float(expected.abs().max()))
    # A gradient step shrinks the group's spread of s towards its mean (the baseline's relative
    # probabilities), and only a constant s has zero loss.
    stepped = policy.detach() - 1e-3 * std**2 * grad
    new_s = (stepped - base).sum(-1)
    assert float(new_s.std()) < std
    const = base + 5.0 / T
    assert float(gift_loss(const, base, mask, torch.ones(G, dtype=F64), G, cfg)[0]) == 0.0
