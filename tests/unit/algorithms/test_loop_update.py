"""nemo_gift.algorithms.gift.update: each algorithm's own advantage settings, and GIFT's loss
metrics split by the mini-batch's place in the rollout batch.

The policy is a test double of :class:`nemo_gift.algorithms.interfaces.PolicyInterface`
(``logprobs``, ``train_step``): a real linear softmax policy over fixed random features, trained
with plain SGD, so a step on one mini-batch moves the log-probs of every other row, as a shared
network does.
"""

import dataclasses
import math
import shutil

import pytest
import torch

from nemo_gift.algorithms.config import GiftLossConfig, GrpoLossConfig
from nemo_gift.algorithms.gift import LoopConfig, LoopParts, update
from nemo_gift.algorithms.interfaces import SamplingConfig

G, S, V, D = 4, 5, 6, 8


class LinearPolicy:
    """log pi(labels[n, t]) = log_softmax(features[row_n, t] @ W)[labels[n, t]]; SGD on W."""

    def __init__(self, n: int, lr: float = 0.5, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.features = torch.randn(n, S, D, generator=gen, dtype=torch.float64)
        self.w = torch.randn(D, V, generator=gen, dtype=torch.float64).requires_grad_(True)
        self.lr = lr
        self.seen: list[dict] = []

    def _logprobs(self, batch):
        logits = self.features[batch["row"]] @ self.w  # [n, S, V]
        return torch.log_softmax(logits, -1).gather(-1, batch["labels"][..., None])[..., 0]  # [n, S]

    def logprobs(self, batch, *, reference=False):
        with torch.no_grad():
            return self._logprobs(batch)

    def train_step(self, batch, objective, *, group_size):
        self.seen.append({k: v.clone() for k, v in batch.items()})
        loss, metrics = objective(self._logprobs(batch), batch)
        (grad,) = torch.autograd.grad(loss, self.w)
        with torch.no_grad():
            self.w -= self.lr * grad
        return {"loss": float(loss.detach()), **{k: float(v) for k, v in metrics.items()}}


def _batch(n: int):
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, V, (n, S), generator=gen)
    mask = torch.zeros(n, S, dtype=torch.bool)
    mask[:, 2:] = True  # a 2-token prompt, then 3 response tokens
    return {"tokens": labels.clone(), "labels": labels, "loss_mask": mask, "row": torch.arange(n)}


def _cfg(algorithm: str, mini_batch_prompts: int, **options) -> LoopConfig:
    """The loop's config; ``options``: each algorithm's options by registry name (``gift=...``)."""
    sampling = SamplingConfig(max_new_tokens=3)
    return LoopConfig(algorithm=algorithm, max_steps=1, group_size=G, mini_batch_prompts=mini_batch_prompts,
                      micro_batch_size=G * mini_batch_prompts, eval_every=0, checkpoint_every=0, keep_last=1,
                      sampling=sampling, eval_sampling=sampling, algorithm_options=options)


def _parts(policy) -> LoopParts:
    return LoopParts(policy=policy, engine=None, score=None, encode=None, decode=None, pad_token_id=0,
                     sampler=None, eval_records=[], train_eval_records=[])


REWARDS = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0])


def _hand_advantages(eps: float, unbiased: bool) -> list[float]:
    out = []
    for group in ([1.0, 0, 0, 0], [1.0, 1, 0, 0]):
        mean = sum(group) / G
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (G - 1 if unbiased else G))
        out += [(r - mean) / (std + eps) for r in group]
    return out


@pytest.mark.parametrize("algorithm", ["grpo", "gift"])
def test_advantages_use_the_algorithms_own_eps_and_std(algorithm):
    """GRPO reads grpo.eps / grpo.unbiased_std (it read gift's before); GIFT reads gift's."""
    grpo, gift = GrpoLossConfig(eps=0.5, unbiased_std=False, beta_kl=0.0), GiftLossConfig(eps=1e-6, unbiased_std=True)
    policy = LinearPolicy(8)
    update(_parts(policy), _cfg(algorithm, 2, grpo=grpo, gift=gift), _batch(8), REWARDS)
    (seen,) = policy.seen
    expected = _hand_advantages(0.5, False) if algorithm == "grpo" else _hand_advantages(1e-6, True)
    torch.testing.assert_close(seen["advantages"].tolist(), expected, rtol=1e-6, atol=0)


def test_gift_metrics_split_first_and_later_mini_batches():
    """pi_old baseline: s = 0 on the first optimizer step (every implicit std degenerate, corr 0);
    the first step moves the shared weights, so the later mini-batches start with s != 0."""
    n = 4 * 2 * G  # 4 mini-batches of 2 prompts
    rewards = torch.tensor([1.0, 0, 0, 1] * (n // G))
    policy = LinearPolicy(n)
    gift = GiftLossConfig(std_guard="none")
    metrics = update(_parts(policy), _cfg("gift", 2, gift=gift), _batch(n), rewards)
    assert metrics["train/optimizer_steps"] == 4
    assert metrics["train/degenerate_implicit_std_frac/first_mb"] == 1.0
    assert metrics["train/z_a_corr/first_mb"] == 0.0
    assert metrics["train/degenerate_implicit_std_frac/later_mb"] == 0.0
    assert metrics["train/z_a_corr/later_mb"] != 0.0
    # The plain means over all 4 steps are still logged.
    later = metrics["train/z_a_corr/later_mb"]
    assert metrics["train/z_a_corr"] == pytest.approx(later * 3 / 4, rel=1e-12)


def test_grpo_logs_no_gift_metrics():
    metrics = update(_parts(LinearPolicy(16)), _cfg("grpo", 2, grpo=GrpoLossConfig(beta_kl=0.0)), _batch(16),
                     torch.tensor([1.0, 0, 0, 1] * 4))
    assert metrics["train/optimizer_steps"] == 2
    assert not [k for k in metrics if k.endswith("_mb")]


@pytest.mark.parametrize(
    "algorithm, options, reference",
    [
        ("gift", GiftLossConfig(), False),  # pi_old, the default
        ("gift", GiftLossConfig(implicit_baseline="reference"), True),  # the paper's pi_ref
        ("grpo", GrpoLossConfig(beta_kl=0.001), True),  # the KL term reads pi_ref
        ("grpo", GrpoLossConfig(beta_kl=0.0), False),
    ],
)
def test_the_registry_says_which_log_probs_and_whether_the_reference_is_kept(algorithm, options, reference):
    from nemo_gift.algorithms.registry import get_algorithm

    entry = get_algorithm(algorithm)
    assert entry.needs_reference(options) is reference
    keys = {"gift": {"baseline_logprobs"}, "grpo": {"old_logprobs"} | ({"reference_logprobs"} if reference else set())}
    assert set(entry.logprobs(options)) == keys[algorithm]
    with pytest.raises(ValueError, match=r"'ppo' is not one of \['gift', 'grpo'\]"):
        get_algorithm("ppo")


@dataclasses.dataclass(frozen=True)
class SeqPgConfig:
    """The options of the made-up loss of the next test: one key no config section has."""

    scale: float = 1.0
    """The loss is ``scale`` times the sequence-level policy gradient."""
    eps: float = 1e-6
    """eps of the explicit advantage (every entry's options have it)."""
    unbiased_std: bool = True
    """Unbiased std in the explicit advantage (every entry's options have it)."""

    def __post_init__(self):
        if self.scale <= 0:
            raise ValueError(f"scale={self.scale!r} must be > 0")


def test_a_new_loss_is_a_function_and_a_registry_entry(monkeypatch, tmp_path):
    """docs/architecture.md "Adding a loss": a sequence-level policy gradient with an option of
    its own (``seq_pg.scale``) is a loss function, a registry entry carrying its options
    dataclass, and a recipe overlay; it composes, validates and trains through the unchanged
    loop and config (no new RunConfig or LoopConfig field)."""
    from nemo_gift.algorithms import registry
    from nemo_gift.config.schema import load_run_config
    from nemo_gift.launcher.main import DEFAULT_CONF_DIR, compose
    from nemo_gift.utils.convert import ConfigError, to_dict

    def seq_pg_loss(logprobs, mask, advantages, num_sequences):  # -(1/n) sum_i A_i sum_t log pi
        return -(advantages * (logprobs * mask).sum(-1)).sum() / num_sequences

    def objective(options, step):
        def fn(logprobs, mb):
            n = step.num_groups * step.group_size
            loss = options.scale * seq_pg_loss(logprobs, mb["loss_mask"], mb["advantages"], n)
            return loss, {"old_mean": mb["old_logprobs"].mean().detach()}
        return fn

    def check(options, cfg):  # a cross-check of the options against the run config
        if options.scale > 1 and cfg.optim.lr > 1e-3:
            raise ConfigError(f"seq_pg.scale={options.scale} with optim.lr={cfg.optim.lr}: too big a step")

    entry = registry.Algorithm(options=SeqPgConfig, logprobs=lambda options: {"old_logprobs": False},
                               objective=objective, check=check)
    monkeypatch.setitem(registry.ALGORITHMS, "seq_pg", entry)

    # The recipe overlay, composed by Hydra over a copy of conf/.
    conf = tmp_path / "conf"
    shutil.copytree(DEFAULT_CONF_DIR, conf)
    (conf / "algorithm" / "seq_pg.yaml").write_text(
        "# @package _global_\ntrainer:\n  algorithm: seq_pg\nseq_pg:\n  scale: 2.0\n  eps: 0.5\n  unbiased_std: false\n")
    overrides = ["algorithm=seq_pg", f"run_dir={tmp_path / 'run'}", "sft.cache_dir=null"]
    raw = compose("gift_tiny", overrides, conf)
    assert raw["seq_pg"] == {"scale": 2.0, "eps": 0.5, "unbiased_std": False}
    cfg = load_run_config(raw, cuda=False)
    assert cfg.trainer.algorithm == "seq_pg" and cfg.loss_options() == SeqPgConfig(2.0, 0.5, False)
    assert to_dict(cfg)["seq_pg"] == raw["seq_pg"]  # written back as the YAML section
    with pytest.raises(ConfigError, match=r"seq_pg: scale=-1.0 must be > 0"):
        load_run_config(compose("gift_tiny", overrides + ["seq_pg.scale=-1"], conf), cuda=False)
    with pytest.raises(ConfigError, match=r"unknown key seq_pg.scal\b"):
        load_run_config(compose("gift_tiny", overrides + ["+seq_pg.scal=1"], conf), cuda=False)
    with pytest.raises(ConfigError, match=r"seq_pg.scale=2.0 with optim.lr=0.01"):
        load_run_config(compose("gift_tiny", overrides + ["optim.lr=0.01"], conf), cuda=False)

    # It trains through the unchanged loop, with the run config's options.
    policy = LinearPolicy(8)
    batch = _batch(8)
    before = policy.logprobs(batch)  # [8, S] at the weights of the one optimizer step
    metrics = update(_parts(policy), _cfg("seq_pg", 2, **cfg.algorithm_options), batch, REWARDS)
    adv = torch.tensor(_hand_advantages(0.5, False), dtype=torch.float64)
    expected = -2.0 * (adv * (before * batch["loss_mask"]).sum(-1)).sum() / 8
    assert metrics["train/optimizer_steps"] == 1
    assert metrics["train/loss"] == pytest.approx(float(expected), rel=1e-6)  # A is float32
    assert metrics["train/old_mean"] == pytest.approx(float(before.mean()), rel=1e-12)
    assert "old_logprobs" not in policy.seen[0]  # one step per batch: from the training forward
    assert metrics["logprobs/pi_old_from_training_forward"] == 1.0


class RowByRowPolicy(LinearPolicy):
    """Sums the objective over one-row micro-batches, as a token budget may deal them (every group split)."""

    def train_step(self, batch, objective, *, group_size):
        n = batch["labels"].shape[0]
        parts = [objective(self._logprobs(mb), mb) for mb in ({k: v[i:i + 1] for k, v in batch.items()} for i in range(n))]
        loss = sum(p[0] for p in parts)
        (grad,) = torch.autograd.grad(loss, self.w)
        with torch.no_grad():
            self.w -= self.lr * grad
        return {"loss": float(loss.detach())}


def test_a_token_budget_gives_gift_the_mini_batch_group_statistics():
    """With ``max_tokens_per_micro_batch`` the micro-batches split groups, so the GIFT objective
    carries the mini-batch's (detached) group moments: one-row micro-batches then give the whole
    mini-batch's loss and step."""
    n = 2 * 2 * G
    rewards = torch.tensor([1.0, 0, 0, 1] * (n // G))
    runs = {}
    for name, policy, budget in (("whole", LinearPolicy(n), None), ("rows", RowByRowPolicy(n), 4096)):
        metrics = update(_parts(policy), dataclasses.replace(_cfg("gift", 2), max_tokens_per_micro_batch=budget), _batch(n), rewards)
        runs[name] = (metrics["train/loss"], policy.w.detach().clone())
    assert runs["rows"][0] == pytest.approx(runs["whole"][0], rel=1e-12)
    torch.testing.assert_close(runs["rows"][1], runs["whole"][1], rtol=1e-12, atol=1e-12)


class CountingPolicy(LinearPolicy):
    """LinearPolicy that counts its forward-only passes."""

    def __init__(self, n: int):
        super().__init__(n)
        self.forwards = 0

    def logprobs(self, batch, *, reference=False):
        self.forwards += 1
        return super().logprobs(batch, reference=reference)


def _run(algorithm, options, mini_batch_prompts, *, source=None, micro_batch_size=None, reuse=False, monkeypatch=None):
    """update() on 16 rows (4 groups); ``source`` forces where pi_old comes from."""
    from nemo_gift.algorithms import gift

    if source is not None:
        monkeypatch.setattr(gift, "old_policy_source", lambda *args: source)
    n = 16
    policy = CountingPolicy(n)
    batch = _batch(n)
    batch["rollout_logprobs"] = policy.logprobs(batch) + 1e-3 * torch.randn(n, S, generator=torch.Generator().manual_seed(2),
                                                                           dtype=torch.float64)  # an engine's, off by 1e-3
    policy.forwards = 0
    cfg = dataclasses.replace(_cfg(algorithm, mini_batch_prompts, **options), reuse_engine_logprobs=reuse)
    if micro_batch_size is not None:
        cfg = dataclasses.replace(cfg, micro_batch_size=micro_batch_size)
    rewards = torch.tensor([1.0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 0, 1, 0, 1, 0, 0])
    metrics = update(_parts(policy), cfg, batch, rewards)
    if source is not None:
        monkeypatch.undo()
    return metrics, policy


CASES = [
    ("gift", {"gift": GiftLossConfig()}),
    ("gift", {"gift": GiftLossConfig(implicit_reward="kl_average", detach_implicit_stats=False)}),
    ("grpo", {"grpo": GrpoLossConfig(beta_kl=0.0)}),
]


@pytest.mark.parametrize("algorithm, options", CASES)
@pytest.mark.parametrize("micro_batch_size", [None, 6])  # 6: micro-batches split groups (GIFT's moments pass)
def test_pi_old_from_the_training_forward_is_exactly_the_recomputed_one(algorithm, options, micro_batch_size,
                                                                        monkeypatch):
    """One optimizer step per rollout batch: the step with pi_old = sg(log pi) of the training
    forward is the step with pi_old recomputed, to the bit, and runs no pi_old forward."""
    own, own_policy = _run(algorithm, options, 4, micro_batch_size=micro_batch_size)
    ref, ref_policy = _run(algorithm, options, 4, source="recomputed", micro_batch_size=micro_batch_size,
                           monkeypatch=monkeypatch)
    assert own["logprobs/pi_old_from_training_forward"] == 1.0 and ref["logprobs/pi_old_from_recomputed"] == 1.0
    assert own["train/optimizer_steps"] == ref["train/optimizer_steps"] == 1
    assert torch.equal(own_policy.w, ref_policy.w)
    assert own["train/loss"] == ref["train/loss"]
    gift_moments = algorithm == "gift" and micro_batch_size is not None
    assert own_policy.forwards == 0 and ref_policy.forwards == 1 + gift_moments
    assert not torch.equal(own_policy.w, LinearPolicy(16).w)  # the step moved the weights


@pytest.mark.parametrize("algorithm, options", CASES)
def test_engine_logprobs_serve_as_pi_old_after_the_first_step(algorithm, options):
    """Two optimizer steps per batch with reuse_engine_logprobs: the first reads the training
    forward, the second the engine's log-probs (``rollout_logprobs``); no pi_old forward runs."""
    metrics, policy = _run(algorithm, options, 2, reuse=True)
    key = "baseline_logprobs" if algorithm == "gift" else "old_logprobs"
    assert metrics["logprobs/pi_old_from_engine"] == 1.0 and metrics["train/optimizer_steps"] == 2
    assert policy.forwards == 0
    first, second = policy.seen
    assert key not in first
    assert torch.equal(second[key], second["rollout_logprobs"])
    off, _ = _run(algorithm, options, 2)  # reuse off: recomputed
    assert off["logprobs/pi_old_from_recomputed"] == 1.0


def test_the_reference_baseline_reports_no_pi_old_source():
    metrics, policy = _run("gift", {"gift": GiftLossConfig(implicit_baseline="reference")}, 4)
    assert not [k for k in metrics if k.startswith("logprobs/pi_old_from")]
    assert policy.forwards == 1  # pi_ref
