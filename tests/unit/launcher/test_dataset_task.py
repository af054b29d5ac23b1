"""The trainer's task for a real dataset schema: the GSM8K fixture, a local HF tokenizer, the
GSM8K verifier (no downloads: the tokenizer is built here)."""

from pathlib import Path

from nemo_gift.launcher.main import load
from nemo_gift.train import build_task

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
    task = build_task(cfg)
    assert len(task.train_records) == 20 and len(task.eval_records) == 4
    first = task.train_records[0]
    ids = task.encode(first)
    text = task.decode(ids)
    assert first.prompt[-1]["content"] in text  # the plain template wraps the user's message
    rewards, reasons = task.score(task.train_records[:3], [f"#### {first.ground_truth}", "no answer here", "#### -12345"])
    assert rewards.tolist()[:2] == [1.0, 0.0] and reasons[:2] == ["correct", "no_answer"]
    assert set(task.stop_token_ids) == {0, 1} and task.pad_token_id == 0  # eos, and pad where it differs
