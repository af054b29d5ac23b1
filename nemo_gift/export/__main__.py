"""Export a project checkpoint to a Hugging Face directory.

    python -m nemo_gift.export --checkpoint RUN_DIR/checkpoints --hf-out OUT \\
        [--hf-source /models/Qwen3-32B] [--dtype bfloat16] [--max-shard-gb 5]

Runs in one process, on CPU, without a process group, whatever TP/PP the checkpoint was saved
with: its megatron-core ``dist_checkpointing`` tensors (or a format-1 checkpoint's per-(TP, PP)
files) are read tensor by tensor (see docs/export.md).
``--checkpoint`` is one checkpoint (``step_000042``) or a checkpoints root (its latest one).
``--hf-source`` is the HF directory the run started from: its tokenizer files and
``generation_config.json`` are copied and its ``config.json`` extras (token ids...) kept.
"""

from __future__ import annotations

import argparse
import sys
import time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nemo_gift.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a checkpoint directory, or a root of step_* checkpoints")
    p.add_argument("--hf-out", required=True, help="new (or empty) output directory")
    p.add_argument("--hf-source", default=None, help="HF directory to copy tokenizer and generation config from")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="cast the weights (default: the checkpoint's dtype)")
    p.add_argument("--max-shard-gb", type=float, default=5.0, help="largest safetensors shard, in GiB")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from nemo_gift.export.hf_export import export_checkpoint

    start = time.monotonic()
    out = export_checkpoint(
        args.checkpoint, args.hf_out, hf_source=args.hf_source, dtype=args.dtype,
        max_shard_bytes=int(args.max_shard_gb * 1024**3),
    )
    print(f"exported {args.checkpoint} -> {out} in {time.monotonic() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
