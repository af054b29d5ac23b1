"""Prompt templates and prompt-length filtering."""

import pytest

from nemo_gift.data import (
    CharTokenizer,
    EmptyDatasetError,
    PromptRecord,
    TemplateKind,
    count_prompt_tokens,
    dapo_style,
    dapo_style_record,
    filter_by_prompt_length,
    render_plain,
    render_prompt,
)

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402


def chat_tokenizer():
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    vocab = {s: i for i, s in enumerate(specials)}
    for c in [chr(i) for i in range(32, 127)] + ["\n"]:
        vocab.setdefault(c, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tk.add_special_tokens(specials)
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return tok


def user(text, **meta):
    return PromptRecord([{"role": "user", "content": text}], "1", "gsm8k", "gsm8k", meta)


def test_plain_template():
    assert render_plain("12+34=") == "12+34="  # a string prompt is used verbatim
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "2+2?"},
    ]
    assert render_plain(chat) == "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello\n\nUser: 2+2?\n\nAssistant:"
    with pytest.raises(ValueError, match="unknown role"):
        render_plain([{"role": "tool", "content": "x"}])


def test_chat_template_and_token_counts():
    tok = chat_tokenizer()
    record = user("What is 2+2?")
    text = render_prompt(record, TemplateKind.CHAT, tok)
    assert text == "<s><|user|>What is 2+2?<|end|><|assistant|>"
    assert count_prompt_tokens(record, "chat", tok) == 1 + 1 + len("What is 2+2?") + 1 + 1  # no second BOS
    assert count_prompt_tokens(record, "plain", tok) == len(tok.encode("User: What is 2+2?\n\nAssistant:"))
    with pytest.raises(ValueError, match="chat_template"):
        render_prompt(record, TemplateKind.CHAT, CharTokenizer())
    with pytest.raises(ValueError):
        render_prompt(record, "jinja")


def test_filter_by_prompt_length():
    tok = CharTokenizer()
    records = [PromptRecord(p, "0", "arithmetic", "arithmetic") for p in ["1+2=", "12+34=", "123+456="]]
    kept, stats = filter_by_prompt_length(records, tok, max_prompt_tokens=7, kind=TemplateKind.PLAIN)
    assert [r.prompt for r in kept] == ["1+2=", "12+34="]  # BOS + 6 characters = 7 tokens
    assert (stats.kept, stats.dropped, stats.longest_kept) == (2, 1, 7)
    with pytest.raises(EmptyDatasetError, match="max_prompt_tokens=3"):
        filter_by_prompt_length(records, tok, max_prompt_tokens=3, kind="plain")
    with pytest.raises(EmptyDatasetError):
        filter_by_prompt_length([], tok, max_prompt_tokens=10, kind="plain")
    with pytest.raises(ValueError):
        filter_by_prompt_length(records, tok, max_prompt_tokens=0, kind="plain")


def test_filter_with_chat_template():
    tok = chat_tokenizer()
    records = [user("short"), user("a much longer question " * 20)]
    kept, stats = filter_by_prompt_length(records, tok, max_prompt_tokens=64, kind=TemplateKind.CHAT)
    assert kept == records[:1] and stats.dropped == 1


def test_dapo_style_wrapping():
    text = dapo_style("What is 1+1?")
    assert text.startswith("Solve the following math problem") and "What is 1+1?" in text
    assert text.endswith('after "Answer:".')
    record = user("What is 1+1?", id=3)
    styled = dapo_style_record(record)
    assert styled.prompt[-1]["content"] == text and styled.meta == {"id": 3}
    assert record.prompt[-1]["content"] == "What is 1+1?"  # the original is unchanged


def test_record_validation():
    with pytest.raises(ValueError):
        PromptRecord("", "1", "x", None)
    with pytest.raises(ValueError):
        PromptRecord([{"role": "user"}], "1", "x", None)
    assert PromptRecord("3+4=", "7", "arithmetic", "arithmetic").messages == [{"role": "user", "content": "3+4="}]
