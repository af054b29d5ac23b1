"""The reward-model scorer on a tiny random Llama sequence classifier (built locally, no downloads)."""

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402

from nemo_gift.rewards.reward_model import (  # noqa: E402
    NonFinitePolicy,
    NonFiniteScoreError,
    RewardModelConfig,
    RewardModelScorer,
)

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tokenizer(pad_token: str = "<pad>"):
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for c in [chr(i) for i in range(32, 127)] + ["\n"]:
        vocab.setdefault(c, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens(SPECIALS)
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token=pad_token, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_model(tokenizer, seed: int = 0, arch: str = "llama"):
    torch.manual_seed(seed)
    if arch == "gpt2":  # absolute position embeddings: left padding needs explicit position ids
        config = transformers.GPT2Config(
            vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=512,
            num_labels=1, pad_token_id=tokenizer.pad_token_id,
        )
        return transformers.GPT2ForSequenceClassification(config).eval()
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    return transformers.LlamaForSequenceClassification(config).eval()


PROMPTS = [
    "What is 2+2?",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
    "Write a long sentence about the sea and the wind and the boats.",
    "Hi",
    "Explain gravity.",
]
RESPONSES = [
    "4",
    "Blue, like the sky on a clear day.",
    "The sea rolls; the wind sings.",
    "Hello there!",
    "Mass attracts mass.",
]


@pytest.fixture(scope="module")
def tok_and_model():
    tok = make_tokenizer()
    return tok, make_model(tok)


def scorer(tok_and_model, **kw):
    tok, model = tok_and_model
    return RewardModelScorer(model, tok, RewardModelConfig(**kw))


def reference_scores(tok, model, prompts, responses):
    """Each conversation alone, no padding, read at the last token: the independent reference."""
    out = []
    for p, r in zip(prompts, responses):
        messages = ([{"role": "user", "content": p}] if isinstance(p, str) else list(p)) + [
            {"role": "assistant", "content": r}
        ]
        text = tok.apply_chat_template(messages, tokenize=False)
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            hidden = model.base_model(input_ids=ids).last_hidden_state  # [1, T, H]
            out.append(model.score(hidden[:, -1]).item())
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_scores_match_unbatched_reference(tok_and_model, arch):
    tok = tok_and_model[0]
    model = tok_and_model[1] if arch == "llama" else make_model(tok, arch=arch)
    expected = reference_scores(tok, model, PROMPTS, RESPONSES)
    for batch_size in (1, 2, 5):
        got = scorer((tok, model), batch_size=batch_size, length_normalize=False).score(PROMPTS, RESPONSES)
        assert got.raw_scores == pytest.approx(expected, abs=1e-5, rel=1e-4)
        assert got.scores == pytest.approx(expected, abs=1e-5, rel=1e-4)
        assert got.valid == [True] * len(PROMPTS)


def test_pad_token_equal_to_end_token_still_reads_the_last_position():
    """With pad == the template's end-of-turn token, naive 'rightmost non-pad' pooling would skip it."""
    tok = make_tokenizer(pad_token="<|end|>")
    model = make_model(tok, seed=1)
    expected = reference_scores(tok, model, PROMPTS, RESPONSES)
    got = RewardModelScorer(model, tok, RewardModelConfig(batch_size=5, length_normalize=False)).score(
        PROMPTS, RESPONSES
    )
    assert got.raw_scores == pytest.approx(expected, abs=1e-5, rel=1e-4)
    assert model.config.pad_token_id == tok.pad_token_id  # restored after the forward


def test_length_normalization_divides_by_sqrt_response_tokens(tok_and_model):
    raw = scorer(tok_and_model, batch_size=4, length_normalize=False).score(PROMPTS, RESPONSES)
    norm = scorer(tok_and_model, batch_size=4, length_normalize=True).score(PROMPTS, RESPONSES)
    # the character tokenizer: one token per character
    assert norm.response_tokens == [len(r) for r in RESPONSES]
    for s, r, n in zip(norm.scores, raw.raw_scores, norm.response_tokens):
        assert s == pytest.approx(r / math.sqrt(n), rel=1e-5, abs=1e-6)
    given = scorer(tok_and_model, length_normalize=True).score(PROMPTS, RESPONSES, response_lengths=[4, 9, 16, 0, 1])
    expected = [r / math.sqrt(max(1, n)) for r, n in zip(raw.raw_scores, [4, 9, 16, 0, 1])]
    assert given.scores == pytest.approx(expected, rel=1e-5, abs=1e-6)


def _poison(model, rows):
    """Make the score head output NaN for the given batch rows."""

    def hook(module, args, output):
        output = output.clone()
        output[rows] = float("nan")
        return output

    return model.score.register_forward_hook(hook)


def test_nan_scores_are_refused(tok_and_model):
    tok, model = tok_and_model
    s = scorer(tok_and_model, batch_size=8)
    handle = _poison(model, [1])
    try:
        with pytest.raises(NonFiniteScoreError, match="1 of 5"):
            s.score(PROMPTS, RESPONSES)
    finally:
        handle.remove()
    assert s.metrics()["reward_model/nonfinite"] == 1.0


def test_nan_scores_can_be_marked_invalid(tok_and_model):
    tok, model = tok_and_model
    s = scorer(tok_and_model, batch_size=8, nonfinite=NonFinitePolicy.MARK_INVALID)
    handle = _poison(model, [0])
    try:
        got = s.score(PROMPTS, RESPONSES)
    finally:
        handle.remove()
    assert got.num_invalid == 1 and got.valid.count(False) == 1
    bad = got.valid.index(False)
    assert got.scores[bad] == 0.0 and math.isnan(got.raw_scores[bad])
    assert all(math.isfinite(x) for x in got.scores)


def test_truncation_keeps_the_end(tok_and_model):
    tok, model = tok_and_model
    s = scorer(tok_and_model, max_length=20, length_normalize=False)
    got = s.score(PROMPTS, RESPONSES)
    assert any(got.truncated)
    text = s.render(PROMPTS[2], RESPONSES[2])
    ids = tok(text, add_special_tokens=False)["input_ids"][-20:]
    with torch.no_grad():
        expected = model.score(model.model(input_ids=torch.tensor([ids])).last_hidden_state[:, -1]).item()
    assert got.raw_scores[2] == pytest.approx(expected, abs=1e-5)


def test_load_by_path(tok_and_model, tmp_path):
    tok, model = tok_and_model
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = RewardModelScorer.from_config(RewardModelConfig(model_path=str(tmp_path), length_normalize=False))
    direct = scorer(tok_and_model, length_normalize=False).score(PROMPTS, RESPONSES)
    assert loaded.score(PROMPTS, RESPONSES).raw_scores == pytest.approx(direct.raw_scores, abs=1e-5)


def test_errors(tok_and_model):
    tok, model = tok_and_model
    s = scorer(tok_and_model)
    with pytest.raises(ValueError, match="same length"):
        s.score(PROMPTS, RESPONSES[:2])
    assert s.score([], []).scores == []
    no_template = make_tokenizer()
    no_template.chat_template = None
    with pytest.raises(ValueError, match="chat_template"):
        RewardModelScorer(model, no_template)
    with pytest.raises(ValueError):
        RewardModelConfig(batch_size=0)
    with pytest.raises(ValueError):
        RewardModelConfig(nonfinite="ignore")
