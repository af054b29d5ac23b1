"""A synthetic arithmetic task for CPU runs: tokenizer, seeded generator, verifier, splits.

The task: ``"<a><op><b>="`` -> the integer result, then EOS. Example with the
plain template (the prompt string is used verbatim)::

    prompt  "48+379="        target "427"   (reverse_answer=True: "724")
    tokens  <bos> 4 8 + 3 7 9 =  4 2 7 <eos>
            '---- prompt ----'   '-- response --'

The class defaults (1-3 digit operands, ``+`` only, answer most-significant digit
first) give a tiny GPT (2 layers, width 128) partial pass@1 after a supervised warm start:
the hard part is the carry, which the model must work out before it writes the first
digit. But a model that imitates correct demonstrations has little left for RL to find:
measured with the tiny recipe, 1000 RL steps after an 800-step warm start left held-out
greedy pass@1 flat at 0.23-0.28, while sampled rewards rose a little.

The CPU recipes (``conf/task/arithmetic.yaml``) therefore use 1-2 digit operands, which
the model learns well, and a flawed teacher: ``teacher_carry_drop`` is the share of the
warm start's demonstrations of a sum whose carries are dropped (``58+67`` -> ``15``). The
warm-started model then answers most carry problems without the carry, but samples the
carried answer often enough for the exact verifier to reward it: RL has to discover that the
teacher was wrong, the regime in which RL from verifiable rewards improves on imitation.
Measured (gift_tiny): held-out greedy pass@1 0.48 after the warm start, 0.83 after 150
GIFT steps.

Other knobs: ``reverse_answer=True`` (least-significant digit first) makes carries local;
``max_digits`` 4-5, ``Operator.SUB`` or ``Operator.MUL`` make the task harder.

The scratchpad format (``scratchpad_rate`` > 0, the GIFT-vs-GRPO experiment's task,
``conf/task/arithmetic_scratchpad.yaml``) lets the response length follow the policy's
choice. A response is either the answer alone or a scratchpad, a space, then the answer::

    prompt  "58+67="     direct "125"  (4 tokens with EOS)    scratchpad "521 125"  (8 tokens)

The scratchpad is the sum written the other way round (least-significant digit first), where
every carry is local to the digit being written; the answer is then that string reversed. The
verifier (``arithmetic_scratchpad``) reads only the last space-separated field, so a scratchpad
is never checked and never required. The teacher writes it in ``scratchpad_rate`` of its
demonstrations of a sum (always correctly); its direct answers drop carries at
``teacher_carry_drop``. RL can then raise accuracy by writing the scratchpad more often, which
makes the responses longer: the paper's length claim becomes measurable.

Splits: each problem belongs to TRAIN or HELDOUT by a hash of its canonical form
(commutative operands sorted), independent of any seed, so the two never overlap
and ``a+b`` / ``b+a`` fall on the same side. About ``heldout_fraction`` of the
problem space is held out.
"""

from __future__ import annotations

import enum
import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from nemo_gift.data.records import DatasetName, PromptRecord
from nemo_gift.rewards.arithmetic import ArithmeticVerifier

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
SPLIT_SALT = "nemo_gift.arith.v1"
"""The default salt of the split hash (:meth:`ArithmeticTask.split_of`)."""
DEFAULT_ALPHABET = "0123456789+-*= "


class CharTokenizer:
    """A character-level tokenizer: ids 0, 1, 2 are ``<pad>``, ``<bos>``, ``<eos>``; then one id per character.

    It follows the parts of the `transformers` tokenizer interface the project uses
    (``encode(text, add_special_tokens)``, ``decode``, the special-token ids). It has
    no chat template: use `TemplateKind.PLAIN`.
    """

    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2
    chat_template = None

    def __init__(self, alphabet: str = DEFAULT_ALPHABET) -> None:
        if len(set(alphabet)) != len(alphabet) or not alphabet:
            raise ValueError("alphabet must be non-empty, with distinct characters")
        self.alphabet = alphabet
        self._to_id = {c: i + len(SPECIAL_TOKENS) for i, c in enumerate(alphabet)}
        self._to_char = {i: c for c, i in self._to_id.items()}

    @property
    def vocab_size(self) -> int:
        return len(SPECIAL_TOKENS) + len(self.alphabet)

    def encode(self, text: str, add_special_tokens: bool = True, add_eos: bool = False) -> list[int]:
        """Token ids of ``text``: ``[<bos>] + chars (+ [<eos>])``. An unknown character raises ValueError."""
        try:
            ids = [self._to_id[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the alphabet {self.alphabet!r}") from None
        if add_special_tokens:
            ids = [self.bos_token_id] + ids
        if add_eos:
            ids.append(self.eos_token_id)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True, stop_at_eos: bool = True) -> str:
        """The text of ``ids``; stops at the first ``<eos>`` unless ``stop_at_eos=False``."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_token_id and stop_at_eos:
                break
            if i < len(SPECIAL_TOKENS):
                if not skip_special_tokens:
                    out.append(SPECIAL_TOKENS[i])
                continue
            if i not in self._to_char:
                raise ValueError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
            out.append(self._to_char[i])
        return "".join(out)

    def pad(
        self, sequences: Sequence[Sequence[int]], side: Literal["left", "right"] = "right"
    ) -> tuple[list[list[int]], list[list[int]]]:
        """``(ids, mask)``, both [B, max_len]; ``side="left"`` for generation, ``"right"`` for training."""
        width = max((len(s) for s in sequences), default=0)
        ids, mask = [], []
        for s in sequences:
            fill = [self.pad_token_id] * (width - len(s))
            ones, zeros = [1] * len(s), [0] * (width - len(s))
            ids.append(fill + list(s) if side == "left" else list(s) + fill)
            mask.append(zeros + ones if side == "left" else ones + zeros)
        return ids, mask


class Operator(str, enum.Enum):
    ADD = "+"
    SUB = "-"
    MUL = "*"


class Split(str, enum.Enum):
    TRAIN = "train"
    HELDOUT = "heldout"


@dataclass(frozen=True)
class ArithmeticConfig:
    """Difficulty knobs of the synthetic task; also the run config's ``data.arithmetic`` section
    (``operators`` is written ``["+", "-"]`` there, and its errors name ``data.arithmetic``);
    :class:`ArithmeticTask` holds the two knobs that are not run config keys."""

    min_digits: int = 1
    """Fewest digits of an operand."""
    max_digits: int = 3
    """Most digits of an operand (each operand's length is uniform in [min, max])."""
    operators: tuple[Operator, ...] = (Operator.ADD,)
    """The operators a problem draws from, uniformly."""
    reverse_answer: bool = False
    """Write the answer least-significant digit first (much easier)."""
    heldout_fraction: float = 0.05
    """Share of the problem space that is held out."""
    teacher_carry_drop: float = 0.0
    """Share of the supervised (SFT) demonstrations of ``+`` written by a flawed teacher that
    drops every carry (``58+67`` -> ``15``, digit-wise sums mod 10). RL rewards stay exact."""

    scratchpad_rate: float = 0.0
    """Share of the SFT demonstrations of ``+`` written as ``<sum reversed> <answer>`` (always
    correct); the rest are direct answers, of which ``teacher_carry_drop`` drop their carries."""
    pool_size: int | None = None
    """RL prompts with a correct key, distinct and stratified by difficulty
    (:mod:`nemo_gift.data.arithmetic_sets`); the train-eval set is this pool. None: a stream of
    4096 training prompts with repeats, and the train-eval set is its head."""
    wrong_key_prompts: int = 0
    """Extra RL prompts (with a pool) keyed with a wrong answer that neither the rule nor the
    teacher gives (:func:`nemo_gift.data.arithmetic_sets.wrong_key`): a model that fits them has
    memorized them against the rule (``memo/pass@1``)."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_digits <= self.max_digits <= 18:
            raise ValueError(f"need 1 <= min_digits <= max_digits <= 18, got {self.min_digits}, {self.max_digits}")
        if not self.operators:
            raise ValueError("operators is empty")
        object.__setattr__(self, "operators", tuple(Operator(o) for o in self.operators))
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if not 0.0 <= self.teacher_carry_drop <= 1.0:
            raise ValueError(f"teacher_carry_drop must be in [0, 1], got {self.teacher_carry_drop}")
        if self.teacher_carry_drop > 0 and Operator.ADD not in self.operators:
            raise ValueError("teacher_carry_drop > 0 needs the '+' operator: it only changes sums")
        if not 0.0 <= self.scratchpad_rate <= 1.0:
            raise ValueError(f"scratchpad_rate must be in [0, 1], got {self.scratchpad_rate}")
        if self.scratchpad_rate > 0 and self.operators != (Operator.ADD,):
            raise ValueError("scratchpad_rate > 0 needs operators ['+'] only: the scratchpad is a sum's digits")
        if self.pool_size is not None and self.pool_size < 1:
            raise ValueError(f"pool_size must be >= 1 or None, got {self.pool_size}")
        if self.wrong_key_prompts < 0 or (self.wrong_key_prompts and self.pool_size is None):
            raise ValueError(f"wrong_key_prompts={self.wrong_key_prompts} must be >= 0, and > 0 only with a pool_size")

    def shortest_prompt(self) -> int:
        """Tokens of the task's shortest prompt: ``<bos>``, two min_digits operands, operator, ``=``."""
        return 2 * self.min_digits + 3


@dataclass(frozen=True)
class ArithmeticProblem:
    """One problem ``a op b``."""

    a: int
    """The left operand."""
    op: Operator
    """The operator."""
    b: int
    """The right operand."""

    @property
    def answer(self) -> int:
        if self.op is Operator.ADD:
            return self.a + self.b
        if self.op is Operator.SUB:
            return self.a - self.b
        return self.a * self.b

    @property
    def prompt(self) -> str:
        """The plain prompt, e.g. ``"57+468="``."""
        return f"{self.a}{self.op.value}{self.b}="

    def target(self, reverse: bool = False) -> str:
        """The response the model should write (before EOS)."""
        return format_answer(self.answer, reverse)

    @property
    def carryless_answer(self) -> int:
        """The sum with every carry dropped: each digit is ``(a_i + b_i) mod 10`` (``+`` only)."""
        if self.op is not Operator.ADD:
            raise ValueError(f"carryless_answer is defined for '+', not {self.op.value!r}")
        a, b, out, place = self.a, self.b, 0, 1
        while a or b:
            out += ((a % 10 + b % 10) % 10) * place
            a, b, place = a // 10, b // 10, place * 10
        return out

    @property
    def has_carry(self) -> bool:
        return self.op is Operator.ADD and self.carryless_answer != self.answer

    @property
    def carries(self) -> int:
        """How many columns produce a carry (``+`` only; 0 for other operators)."""
        if self.op is not Operator.ADD:
            return 0
        a, b, carry, count = self.a, self.b, 0, 0
        while a or b:
            carry = int(a % 10 + b % 10 + carry >= 10)
            count += carry
            a, b = a // 10, b // 10
        return count

    def scratchpad_target(self, reverse: bool = False) -> str:
        """The answer after a scratchpad: the answer written the other way round, a space, the answer."""
        return f"{format_answer(self.answer, not reverse)} {format_answer(self.answer, reverse)}"

    def canonical(self) -> str:
        a, b = self.a, self.b
        if self.op in (Operator.ADD, Operator.MUL):
            a, b = min(a, b), max(a, b)
        return f"{a}{self.op.value}{b}"


def format_answer(value: int, reverse: bool = False) -> str:
    """``value`` as the model writes it; reversed means sign first, then digits least-significant first."""
    sign, digits = ("-", str(-value)) if value < 0 else ("", str(value))
    return sign + (digits[::-1] if reverse else digits)


class ArithmeticTask:
    """Seeded problems, splits, records and SFT examples for the synthetic task.

    Two knobs are not in :class:`ArithmeticConfig` (so not in the run config): ``allow_negative``
    lets SUB draw a < b (negative answers; otherwise the operands are ordered), and changing
    ``split_salt`` reshuffles which problems are held out."""

    def __init__(self, config: ArithmeticConfig | None = None, *, allow_negative: bool = False,
                 split_salt: str = SPLIT_SALT) -> None:
        self.config = config or ArithmeticConfig()
        self.allow_negative = allow_negative
        self.split_salt = split_salt
        self.tokenizer = CharTokenizer()

    @property
    def verifier_name(self) -> str:
        if self.config.scratchpad_rate > 0:
            return "arithmetic_scratchpad_reversed" if self.config.reverse_answer else "arithmetic_scratchpad"
        return "arithmetic_reversed" if self.config.reverse_answer else "arithmetic"

    def verifier(self) -> ArithmeticVerifier:
        return ArithmeticVerifier(reverse_answer=self.config.reverse_answer,
                                  final_field_only=self.config.scratchpad_rate > 0)

    def split_of(self, problem: ArithmeticProblem) -> Split:
        digest = hashlib.blake2b(f"{self.split_salt}|{problem.canonical()}".encode(), digest_size=8).digest()
        u = int.from_bytes(digest, "big") / 2.0**64
        return Split.HELDOUT if u < self.config.heldout_fraction else Split.TRAIN

    def _operand(self, rng: random.Random) -> int:
        digits = rng.randint(self.config.min_digits, self.config.max_digits)
        lo = 0 if digits == 1 else 10 ** (digits - 1)
        return rng.randint(lo, 10**digits - 1)

    def sample(self, rng: random.Random) -> ArithmeticProblem:
        """One problem from the task distribution (either split)."""
        a, b = self._operand(rng), self._operand(rng)
        op = rng.choice(self.config.operators)
        if op is Operator.SUB and not self.allow_negative and a < b:
            a, b = b, a
        return ArithmeticProblem(a, op, b)

    def iter_problems(self, split: Split | str, seed: int, max_draws: int | None = None) -> Iterator[ArithmeticProblem]:
        """A seeded stream of ``split`` problems (repeats possible); endless unless ``max_draws`` is set.

        ``max_draws`` bounds the samples drawn from the task distribution, of either split.
        """
        split, rng = Split(split), random.Random(seed)
        draws = 0
        while max_draws is None or draws < max_draws:
            draws += 1
            p = self.sample(rng)
            if self.split_of(p) is split:
                yield p

    def problems(self, split: Split | str, n: int, seed: int, unique: bool | None = None) -> list[ArithmeticProblem]:
        """``n`` problems of ``split``; distinct by default for HELDOUT, with repeats allowed for TRAIN."""
        split = Split(split)
        unique = split is Split.HELDOUT if unique is None else unique
        out: list[ArithmeticProblem] = []
        seen: set[str] = set()
        for p in self.iter_problems(split, seed, max_draws=400 * n + 20_000):
            if unique:
                if p.canonical() in seen:
                    continue
                seen.add(p.canonical())
            out.append(p)
            if len(out) == n:
                return out
        kind = "distinct " if unique else ""
        raise ValueError(f"only {len(out)} {kind}{split.value} problems found of {n}; widen the digit range")

    def record(self, problem: ArithmeticProblem, split: Split | str) -> PromptRecord:
        """A `PromptRecord` with the plain prompt and the canonical integer answer."""
        meta = {"a": problem.a, "op": problem.op.value, "b": problem.b, "split": Split(split).value}
        return PromptRecord(problem.prompt, str(problem.answer), DatasetName.ARITHMETIC.value, self.verifier_name, meta)

    def records(self, split: Split | str, n: int, seed: int) -> list[PromptRecord]:
        return [self.record(p, split) for p in self.problems(split, n, seed)]

    def sft_example(
        self, problem: ArithmeticProblem, rng: random.Random | None = None
    ) -> tuple[list[int], list[int]]:
        """``(ids, loss_mask)`` for supervised warm start, both [T]: loss on the answer and EOS only.

        With ``teacher_carry_drop`` > 0 and an ``rng``, a sum's demonstration is the carry-less
        answer with that probability (one ``rng`` draw per ``+`` problem). With ``scratchpad_rate``
        > 0, a first draw decides whether it is the (correct) scratchpad form instead."""
        prompt = self.tokenizer.encode(problem.prompt, add_special_tokens=True)
        reverse = self.config.reverse_answer
        target = problem.target(reverse)
        is_sum = rng is not None and problem.op is Operator.ADD
        drop, pad = self.config.teacher_carry_drop, self.config.scratchpad_rate
        if pad > 0 and is_sum and rng.random() < pad:
            target = problem.scratchpad_target(reverse)
        elif drop > 0 and is_sum and rng.random() < drop:
            target = format_answer(problem.carryless_answer, reverse)
        answer = self.tokenizer.encode(target, add_special_tokens=False, add_eos=True)
        return prompt + answer, [0] * len(prompt) + [1] * len(answer)
