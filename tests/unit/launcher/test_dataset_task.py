"""The trainer's task for a real dataset schema: the GSM8K fixture, a local HF tokenizer, the
GSM8K verifier (no downloads: the tokenizer is built here)."""

import time
from pathlib import Path

from nemo_gift.launcher.main import load
from nemo_gift.data.task import build_task
from nemo_gift.train import task_spec

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "data" / "gsm8k.jsonl"


def _char_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,?!$#%+-*/=:;'\"()\n"
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<eos>", "<unk>", *chars])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tk.decoder = decoders.Fuse()
    PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>").save_pretrained(out)


def test_gsm8k_task_encodes_and_scores(tmp_path):
    _char_tokenizer(tmp_path / "tok")
    cfg = load("gift_tiny", [
        "data.dataset=gsm8k", f"data.train_path={FIXTURE}", f"data.eval_path={FIXTURE}", "data.eval_size=4",
        "tokenizer.kind=hf", f"tokenizer.path={tmp_path / 'tok'}", "reward.verifier=gsm8k", "sft.steps=0",
        "data.max_prompt_length=1000", "model.max_position_embeddings=1024",
    ])
    task = build_task(task_spec(cfg))
    assert len(task.train_records) == 20 and len(task.eval_records) == 4
    first = task.train_records[0]
    ids = task.encode(first)
    text = task.decode(ids)
    assert first.prompt[-1]["content"] in text  # the plain template wraps the user's message
    rewards, reasons = task.score(task.train_records[:3], [f"#### {first.ground_truth}", "no answer here", "#### -12345"])
    assert rewards.tolist()[:2] == [1.0, 0.0] and reasons[:2] == ["correct", "no_answer"]
    assert set(task.stop_token_ids) == {0, 1} and task.pad_token_id == 0  # eos, and pad where it differs


def _task(tmp_path, *overrides, dataset="gsm8k", fixture=FIXTURE):
    if not (tmp_path / "tok").exists():
        _char_tokenizer(tmp_path / "tok")
    return build_task(task_spec(load("gift_tiny", [
        f"data.dataset={dataset}", f"data.train_path={fixture}", f"data.eval_path={fixture}", "data.eval_size=4",
        "tokenizer.kind=hf", f"tokenizer.path={tmp_path / 'tok'}", f"reward.verifier={dataset}", "sft.steps=0",
        "model.max_position_embeddings=1024", *overrides,
    ])))


def test_data_max_prompt_length_filters_long_prompts(tmp_path, caplog):
    """The prompts the engine would get (template included) never exceed data.max_prompt_length."""
    everything = _task(tmp_path, "data.max_prompt_length=1000")
    lengths = sorted(len(everything.encode(r)) for r in everything.train_records)
    limit = lengths[len(lengths) // 2]
    task = _task(tmp_path, f"data.max_prompt_length={limit}")
    expected = [r.prompt for r in everything.train_records if len(everything.encode(r)) <= limit]
    assert [r.prompt for r in task.train_records] == expected
    assert 0 < len(expected) < len(everything.train_records)
    assert all(len(task.encode(r)) <= limit for r in task.eval_records + task.train_eval_records)
    assert f"data.max_prompt_length={limit}: dropped" in caplog.text


def test_arithmetic_prompts_are_filtered_too():
    task = build_task(task_spec(load("gift_tiny", ["data.max_prompt_length=6"])))
    kept = {len(task.encode(r)) for r in task.train_records + task.eval_records}
    assert kept and max(kept) <= 6  # <bos> a + b =: the 2+2-digit sums (7 tokens) are gone
    full = build_task(task_spec(load("gift_tiny", [])))
    assert max(len(full.encode(r)) for r in full.train_records) == 7


def test_reward_timeout_and_pool_size_reach_the_math_verifier(tmp_path, monkeypatch):
    """reward.timeout_s bounds a hanging check (a stand-in worker that never answers ``hang``),
    and reward.math_verify_workers sizes the pool."""
    import nemo_gift.rewards as rewards
    from nemo_gift.rewards import equivalence

    from ..rewards.test_equivalence_pool import FAKE_WORKER

    (tmp_path / "fake_worker.py").write_text(FAKE_WORKER)
    monkeypatch.setattr(equivalence, "_WORKER_PATH", tmp_path / "fake_worker.py")
    pools = []

    class RecordingPool(equivalence.MathEquivalencePool):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            pools.append(self)

    monkeypatch.setattr(rewards, "MathEquivalencePool", RecordingPool)
    math_fixture = FIXTURE.with_name("math_lighteval.jsonl")
    task = _task(tmp_path, "reward.timeout_s=0.4", "reward.math_verify_workers=3", "data.max_prompt_length=1000",
                 dataset="math", fixture=math_fixture)
    assert [(p.num_workers, p.timeout_s) for p in pools] == [(3, 0.4)]
    start = time.monotonic()
    rewards_, reasons = task.score(task.train_records[:2], ["\\boxed{hang}", "\\boxed{hang}"])
    elapsed = time.monotonic() - start
    assert reasons == ["timeout", "timeout"] and rewards_.tolist() == [0.0, 0.0]
    assert pools[0].stats.kills == 2  # two (answer, truth) pairs, checked in parallel
    assert elapsed < 4.5, f"{elapsed:.1f} s: the default 5 s timeout was used"
    assert task.score(task.train_records[:2], ["\\boxed{hang}"] * 2)[1] == ["timeout", "timeout"]
    assert pools[0].stats.kills == 2 and pools[0].stats.cached_timeouts == 2  # repeats cost nothing
    pools[0].close()
