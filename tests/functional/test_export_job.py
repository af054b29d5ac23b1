"""``launcher/run.py conf=export``: a TP=2 training checkpoint becomes a Hugging Face directory
that transformers loads, through the launcher's export job."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nemo_gift.distributed.spawn import run_on_ranks

REPO = Path(__file__).resolve().parents[2]


def _save_tp2_checkpoint(rank, world_size, root):
    from nemo_gift.models.policy import parallel
    from nemo_gift.models.policy import checkpoint
    from nemo_gift.models.policy.builder import build_gpt_model, wrap_for_training
    from nemo_gift.models.policy.config import ModelConfig, ParallelConfig
    from nemo_gift.utils.convert import to_dict

    cfg = ModelConfig(arch="qwen2", num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                      num_query_groups=2, vocab_size=64, max_position_embeddings=32, add_qkv_bias=True)
    layout = ParallelConfig(tensor_model_parallel_size=2)
    parallel.initialize(layout, seed=5)
    model = wrap_for_training(build_gpt_model(cfg, layout), layout)
    tokens = torch.arange(8).unsqueeze(0)
    pos = torch.arange(8).unsqueeze(0)
    mask = torch.triu(torch.ones(8, 8, dtype=torch.bool), 1).view(1, 1, 8, 8)
    from megatron.core import tensor_parallel

    logits = tensor_parallel.gather_from_tensor_model_parallel_region(model.module(tokens, pos, mask))
    checkpoint.save_checkpoint(root, 7, model, model_config=to_dict(cfg))
    return logits.detach()


@pytest.mark.distributed
def test_export_job_writes_a_loadable_hf_directory(tmp_path):
    logits = run_on_ranks(_save_tp2_checkpoint, 2, args=(str(tmp_path / "ckpts"),), timeout=240)[0]
    out = subprocess.run(
        [sys.executable, str(REPO / "launcher" / "run.py"), "conf=export", f"run_dir={tmp_path / 'run'}",
         f"export.checkpoint={tmp_path / 'ckpts'}", f"export.hf_out={tmp_path / 'hf'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32)
    with torch.no_grad():
        hf_logits = hf(torch.arange(8).unsqueeze(0)).logits
    assert (hf_logits - logits).abs().max().item() <= 1e-4
