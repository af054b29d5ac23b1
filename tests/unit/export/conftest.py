"""Tiny random Hugging Face models, built from config objects and saved locally (no downloads).

Each covers what its family's mapping can get wrong:
- ``qwen2_tied``: QKV bias, GQA (4 query / 2 KV heads), tied embeddings;
- ``qwen2_untied``: the same untied, saved as 3 shards with an index;
- ``qwen3``: q/k RMSNorm, an explicit ``head_dim`` (32) unlike hidden/heads (16);
- ``llama``: plain multi-head attention, RoPE theta 5e5, and a vocabulary (255) that TP=2 does
  not divide, so megatron pads it to 256 and export must strip the padding.
Every weight is random (norm weights around 1, biases non-zero), so that a transposed or
swapped tensor changes the logits. The reference logits are transformers' own, in fp32.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

SEQ, BATCH = 12, 2

COMMON = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=64, rms_norm_eps=1e-6)

SPECS = {
    "qwen2_tied": ("Qwen2Config", dict(vocab_size=256, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6)),
    "qwen2_untied": ("Qwen2Config", dict(vocab_size=256, num_key_value_heads=2, tie_word_embeddings=False, rope_theta=1e6)),
    "qwen3": ("Qwen3Config", dict(vocab_size=256, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False, rope_theta=1e6)),
    "llama": ("LlamaConfig", dict(vocab_size=255, num_key_value_heads=4, tie_word_embeddings=False, rope_theta=5e5)),
}
SHARDED = {"qwen2_untied": "120KB"}  # save_pretrained max_shard_size: several files and an index


@dataclasses.dataclass
class HFModel:
    name: str
    path: Path
    tokens: torch.Tensor  # [BATCH, SEQ]
    logits: torch.Tensor  # [BATCH, SEQ, V], transformers fp32
    vocab_size: int


def _randomize(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.2 * noise)
            elif "embed_tokens" in name:
                p.copy_(noise)
            else:
                p.copy_(0.1 * noise)


def make_hf_model(name: str, root: Path, seed: int = 0) -> HFModel:
    import transformers

    cls_name, kw = SPECS[name]
    config = getattr(transformers, cls_name)(**COMMON, **kw)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
    _randomize(model, seed)
    path = root / name
    model.save_pretrained(path, max_shard_size=SHARDED.get(name, "50GB"))
    # Stand-ins for tokenizer files: export must copy them.
    (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64, "marker": name}))
    (path / "tokenizer.json").write_text(json.dumps({"version": "1.0", "marker": name}))
    g = torch.Generator().manual_seed(100 + seed)
    tokens = torch.randint(0, config.vocab_size, (BATCH, SEQ), generator=g)
    with torch.no_grad():
        logits = model(input_ids=tokens).logits.float()
    return HFModel(name, path, tokens, logits, config.vocab_size)


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory) -> dict[str, HFModel]:
    root = tmp_path_factory.mktemp("hf_models")
    return {name: make_hf_model(name, root, seed=i) for i, name in enumerate(SPECS)}


def read_safetensors_dir(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF directory (single file or shards)."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        out.update(load_file(f))
    return out
