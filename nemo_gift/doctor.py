"""Check this machine's stack: versions, optional extras, and a real TP/PP equivalence run.

    python -m nemo_gift.doctor            # also: nemo-gift-doctor

It prints which backends are importable (Transformer Engine, TensorRT-LLM, NeMo-Aligner),
which megatron-core CPU patches apply, and then runs a tiny megatron-core GPTModel on 4 gloo
ranks at TP=2, PP=2 and TP=2 x PP=2 against TP=1, printing the largest logit, loss and
gradient differences. It exits non-zero when a difference exceeds 1e-5.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import platform
import sys
import time

import torch

TOLERANCE = 1e-5


def _version(dist_name: str) -> str:
    try:
        return importlib.metadata.version(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, str]:
    """Versions and availability of everything the project can use."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else "not available",
        "megatron-core": _version("megatron-core"),
        "transformers": _version("transformers"),
        "transformer-engine (extra: gpu)": "importable"
        if importlib.util.find_spec("transformer_engine")
        else "absent",
        "tensorrt-llm (extra: gpu)": "importable" if importlib.util.find_spec("tensorrt_llm") else "absent",
        "nemo-aligner (extra: aligner)": "importable"
        if importlib.util.find_spec("nemo_aligner")
        else "absent",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the gloo run")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from nemo_gift.distributed import cpu_compat
    from nemo_gift.models.policy.layout_check import compare_layouts
    from nemo_gift.distributed.spawn import run_on_ranks

    console = Console()
    env = Table(title="nemo_gift environment", show_header=False)
    for key, value in environment().items():
        env.add_row(key, value)
    console.print(env)
    if cpu_compat.cpu_mode():
        console.print("CUDA absent: megatron-core runs with these CPU patches:")
        for patch in cpu_compat.PATCHES:
            console.print(f"  - {patch.name}: {patch.reason}")

    layouts = [(2, 1), (1, 2), (2, 2)]
    start = time.perf_counter()
    results = run_on_ranks(compare_layouts, 4, args=(layouts,), timeout=args.timeout)
    wall = time.perf_counter() - start
    table = Table(title=f"Layouts vs TP=1 on 4 gloo ranks (fp32, {wall:.1f} s)")
    for col in ("TP", "PP", "max |logit diff|", "max |loss diff|", "max |grad diff|"):
        table.add_column(col, justify="right")
    worst = 0.0
    for tp, pp in layouts:
        entries = [r["layouts"][(tp, pp)] for r in results]
        last = [e for e in entries if e["last_stage"]]
        logit = max(e["max_logit_diff"] for e in last)
        loss = max(e["loss_diff"] for e in last)
        grad = max(e["max_grad_diff"] for e in entries)
        worst = max(worst, logit, loss, grad)
        table.add_row(str(tp), str(pp), f"{logit:.2e}", f"{loss:.2e}", f"{grad:.2e}")
    console.print(table)
    console.print(f"reference loss (TP=1): {results[0]['ref_loss']:.6f}")
    ok = worst <= TOLERANCE
    console.print("[green]OK[/green]" if ok else f"[red]FAILED: a difference exceeds {TOLERANCE}[/red]")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
