"""Prompt sets of the arithmetic task that make overfitting measurable (the GIFT-vs-GRPO experiment).

With ``ArithmeticConfig.pool_size`` set, :func:`rl_sets` builds, from one ``seed``:

- the **pool**: ``pool_size`` distinct TRAIN problems with correct keys. RL revisits it every
  ``pool / B`` steps (many epochs), and it is also the **train-eval** set, so ``train/pass@1``
  is measured on exactly the prompts RL trained on;
- the **held-out** set: ``eval_size`` distinct HELDOUT problems (never in any training set,
  the split being a hash of the problem);
- the **wrong-key slice**: ``wrong_key_prompts`` further distinct TRAIN problems outside the
  pool, whose key is :func:`wrong_key`: the true answer with its last digit d replaced by
  (d + 1) mod 10 (``58+67`` -> ``126``, ``59+70`` -> ``120``). RL trains on them with the rest and
  is rewarded for that key; ``memo/pass@1`` is the share of them answered greedily with it.

Why that key. A memorization probe must start near 0 and rise only if RL fits those very prompts
against the rule. The first version keyed the slice with the carry-less sum (``58+67`` -> ``15``),
which is what the warm start's flawed teacher (``teacher_carry_drop``) demonstrates: the warm start
already answered it greedily on every slice prompt (``memo/pass@1`` 1.000 at step 0 in every arm),
so the probe measured nothing. The last digit of a sum is ``(a_0 + b_0) mod 10`` under every carry
rule (correct, carry-less, or any carry dropped), so a key whose last digit differs is produced
neither by the rule nor by the teacher, nor by any carry slip; it differs from the true answer in
one digit only, and the warm start does make that slip when it samples: measured with the
experiment's warm start (``sft.seed=1234``) on 600 TRAIN sums outside the pool, the greedy answer
was this key 0 times (434 carry-less, 166 correct), and 64 samples at temperature 1 gave it in 0.88%
of the responses (0.95%, 0.79%, 0.98% on sums with 0, 1, 2 carries), at least once for 31% of the
sums. So RL sees the key, and can only make it greedy by fitting those prompts. A key the warm
start never samples (last digit + 5: 0.01% of the samples) would stay unrewarded, hence at 0,
whatever the algorithm. Because the key differs from the true answer on every problem, the slice
needs no carry, and it has the pool's difficulty mix.

The pool, the held-out set and the slice have one difficulty mix: each is filled to per-stratum
quotas computed from the same stratum shares, a stratum being (digits of the shorter operand,
digits of the longer, number of carries). The shares are the task distribution's, estimated from
``SHARE_DRAWS`` draws of a fixed generator; each set's quotas are the largest-remainder rounding
of its size times those shares; the held-out quotas are k times the pool's plus the rounding of
the remainder, so with ``eval_size = k * pool_size`` the pool's and the held-out mixes are
identical.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

from nemo_gift.data.records import PromptRecord
from nemo_gift.data.synthetic import ArithmeticProblem, ArithmeticTask, Split

Stratum = tuple[int, int, int]

SHARE_DRAWS = 20_000
"""Draws of the task distribution (seed 0) that estimate the stratum shares."""


@dataclasses.dataclass
class RlSets:
    """What the RL loop samples from and scores on."""

    train: list[PromptRecord]
    """The RL prompts: the pool, then the wrong-key slice."""
    train_eval: list[PromptRecord]
    """The pool (correct keys): ``train/pass@1``."""
    heldout: list[PromptRecord]
    """``eval/pass@1``."""
    wrong_key: list[PromptRecord]
    """The wrong-key slice: ``memo/pass@1`` is the rate of greedy answers equal to its (wrong) key."""


def stratum(problem: ArithmeticProblem) -> Stratum:
    """(digits of the shorter operand, digits of the longer, carries)."""
    a, b = sorted((len(str(abs(problem.a))), len(str(abs(problem.b)))))
    return a, b, problem.carries


def stratum_shares(task: ArithmeticTask, draws: int = SHARE_DRAWS) -> dict[Stratum, float]:
    """Share of each stratum in the task distribution (both splits), from ``draws`` seeded draws."""
    rng = random.Random(0)
    counts = Counter(stratum(task.sample(rng)) for _ in range(draws))
    return {s: c / draws for s, c in sorted(counts.items())}


def quotas(shares: dict[Stratum, float], n: int) -> dict[Stratum, int]:
    """Largest-remainder rounding of ``n * share``: integers that sum to ``n``, ties in stratum order."""
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    total = sum(shares.values())
    exact = {s: n * v / total for s, v in shares.items()}
    out = {s: int(x) for s, x in exact.items()}
    left = n - sum(out.values())
    for s in sorted(exact, key=lambda s: (-(exact[s] - out[s]), s))[:left]:
        out[s] += 1
    return out


def stratified_problems(task: ArithmeticTask, split: Split, quota: dict[Stratum, int], seed: int,
                        exclude: set[str] = frozenset()) -> list[ArithmeticProblem]:
    """Distinct ``split`` problems filling ``quota`` per stratum, in draw order; none in ``exclude``
    (canonical forms). Raises ValueError naming the strata it could not fill."""
    need, seen, out = dict(quota), set(exclude), []
    n = sum(quota.values())
    for p in task.iter_problems(split, seed, max_draws=200 * n + 20_000):
        key, s = p.canonical(), stratum(p)
        if key in seen or need.get(s, 0) == 0:
            continue
        seen.add(key)
        need[s] -= 1
        out.append(p)
        if len(out) == n:
            return out
    short = {s: k for s, k in need.items() if k}
    raise ValueError(f"could not draw enough distinct {split.value} problems per stratum (short: {short}); "
                     "widen the digit range or lower the set sizes")


def wrong_key(problem: ArithmeticProblem) -> int:
    """The true answer with its last digit d replaced by (d + 1) mod 10, the sign kept
    (``125`` -> ``126``, ``129`` -> ``120``, ``-7`` -> ``-8``): never the answer, and for a sum
    never what any carry rule gives (see the module docstring)."""
    value = abs(problem.answer)
    key = value - value % 10 + (value % 10 + 1) % 10
    return -key if problem.answer < 0 else key


def wrong_key_record(task: ArithmeticTask, problem: ArithmeticProblem) -> PromptRecord:
    """A TRAIN record keyed with :func:`wrong_key`; ``meta["true_answer"]`` keeps the answer."""
    record = task.record(problem, Split.TRAIN)
    meta = {**record.meta, "true_answer": str(problem.answer), "wrong_key": True}
    return dataclasses.replace(record, ground_truth=str(wrong_key(problem)), meta=meta)


def rl_sets(task: ArithmeticTask, eval_size: int, seed: int) -> RlSets:
    """The pool, held-out set and wrong-key slice of ``task.config`` (see the module docstring)."""
    cfg = task.config
    if cfg.pool_size is None:
        raise ValueError("rl_sets needs ArithmeticConfig.pool_size")
    shares = stratum_shares(task)
    k, rest = divmod(eval_size, cfg.pool_size)  # k copies of the pool's quotas: the same mix exactly
    pool_quota, rest_quota = quotas(shares, cfg.pool_size), quotas(shares, rest)
    heldout_quota = {s: k * pool_quota[s] + rest_quota[s] for s in shares}
    pool = stratified_problems(task, Split.TRAIN, pool_quota, seed)
    heldout = stratified_problems(task, Split.HELDOUT, heldout_quota, seed + 1)
    wrong = stratified_problems(task, Split.TRAIN, quotas(shares, cfg.wrong_key_prompts), seed + 2,
                                exclude={p.canonical() for p in pool})
    pool_records = [task.record(p, Split.TRAIN) for p in pool]
    wrong_records = [wrong_key_record(task, p) for p in wrong]
    return RlSets(train=pool_records + wrong_records, train_eval=pool_records,
                  heldout=[task.record(p, Split.HELDOUT) for p in heldout], wrong_key=wrong_records)


def arithmetic_sets(task: ArithmeticTask, n_train: int, eval_size: int, seed: int) -> RlSets:
    """The trainer's prompt sets: :func:`rl_sets` with a ``pool_size``; otherwise a seeded stream of
    ``n_train`` TRAIN prompts (repeats possible), its head as the train-eval set, ``eval_size``
    distinct HELDOUT prompts, and no wrong-key slice."""
    if task.config.pool_size is not None:
        return rl_sets(task, eval_size, seed)
    train = task.records(Split.TRAIN, n_train, seed=seed)
    heldout = task.records(Split.HELDOUT, eval_size, seed=seed + 1)
    return RlSets(train=train, train_eval=train[:eval_size], heldout=heldout, wrong_key=[])
