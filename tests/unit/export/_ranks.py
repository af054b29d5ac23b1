"""Rank-side checks of HF import/export, run through ``run_on_ranks`` (no transformers import
here: each rank would pay for it)."""

from __future__ import annotations

from pathlib import Path

import torch


def logits(model, tokens: torch.Tensor):
    """Full-vocabulary logits ``[B, S, Vp]`` on the last pipeline stage (None elsewhere), through
    megatron-core's schedule (forward only, one micro-batch)."""
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel
    from megatron.core.pipeline_parallel.schedules import get_forward_backward_func

    b, s = tokens.shape
    pos = torch.arange(s).unsqueeze(0).expand(b, s)
    mask = torch.triu(torch.ones(s, s, dtype=torch.bool), 1).view(1, 1, s, s)

    def loss_func(out):  # out: [b, s, Vp/TP]
        full = tensor_parallel.gather_from_tensor_model_parallel_region(out)
        return out.sum() * 0.0, {"logits": full.detach().clone()}

    def forward_step(data_iterator, model):
        return model(next(data_iterator), pos, mask), loss_func

    with torch.no_grad():
        out = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter([tokens]), model=[model],
            num_microbatches=1, seq_length=s, micro_batch_size=b, forward_only=True,
        )
    return out[0]["logits"] if ps.is_pipeline_last_stage() else None


def _compare_export(model, cfg, originals: dict[str, torch.Tensor]) -> dict:
    from nemo_gift.models.policy.hf_weights import export_hf_tensors

    names, mismatched = [], []
    for name, tensor in export_hf_tensors(model, cfg):
        names.append(name)
        ref = originals.get(name)
        if ref is None or ref.dtype != tensor.dtype or not torch.equal(ref, tensor):
            mismatched.append(name)
    return {"names": names, "mismatched": mismatched, "complete": sorted(names) == sorted(originals)}


def import_export_checks(rank, world_size, models: dict, layouts, out_root: str) -> dict:
    """For each (TP, PP) layout and each model: import from the HF directory, compare logits
    with transformers', and stream the export back (bit for bit against the source files).
    At TP=2 x PP=2 it also writes an HF directory (``export_model``) and a project checkpoint
    (for the CLI test); at TP=2 it also loads from a reversed stream of tensors."""
    from safetensors.torch import load_file

    from nemo_gift.utils.convert import to_dict
    from nemo_gift.models.policy import parallel
    from nemo_gift.export.hf_export import export_model
    from nemo_gift.export.hf_import import HFCheckpoint, build_from_hf
    from nemo_gift.models.policy.hf_weights import load_hf_tensors
    from nemo_gift.models.policy import checkpoint
    from nemo_gift.models.policy.builder import build_gpt_model
    from nemo_gift.models.policy.config import ParallelConfig

    originals = {}
    for name, m in models.items():
        originals[name] = {}
        for f in sorted(Path(m["path"]).glob("*.safetensors")):
            originals[name].update(load_file(f))

    report = {}
    for tp, pp in layouts:
        layout = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
        parallel.initialize(layout, seed=1000 + 10 * tp + pp)  # random init differs from the checkpoint
        for name, m in models.items():
            model, cfg = build_from_hf(m["path"], layout, world_size=world_size)
            entry = {"rows": cfg.padded_vocab_size(tp)}
            out = logits(model, m["tokens"])
            if out is not None:
                entry["logit_columns"] = out.shape[-1]
                entry["max_logit_diff"] = (out[..., : cfg.vocab_size] - m["logits"]).abs().max().item()
                entry["logit_scale"] = m["logits"].abs().max().item()
            entry["export"] = _compare_export(model, cfg, originals[name])
            if (tp, pp) == (2, 1):
                fresh = build_gpt_model(cfg, layout)
                ckpt = HFCheckpoint(m["path"])
                load_hf_tensors(fresh, cfg, ((n, ckpt[n]) for n in reversed(list(ckpt))))
                entry["streamed_load_export"] = _compare_export(fresh, cfg, originals[name])
            if (tp, pp) == (2, 2):
                export_model(model, cfg, Path(out_root) / f"hf_{name}", hf_source=m["path"])
                try:  # a used directory is refused on every rank, before any collective
                    export_model(model, cfg, Path(out_root) / f"hf_{name}")
                    entry["reexport_refused"] = False
                except FileExistsError:
                    entry["reexport_refused"] = True
                checkpoint.save_checkpoint(
                    Path(out_root) / f"ckpt_{name}", 7, model, model_config=to_dict(cfg), keep_last=1
                )
            report[(name, tp, pp)] = entry
    return report


def load_error_messages(rank, world_size, model_path: str) -> dict:
    """``load_hf_tensors`` names the tensor: an unknown one, a missing one, a wrong shape, both
    as a mapping and as a stream. One rank, TP=1."""
    from nemo_gift.models.policy import parallel
    from nemo_gift.export.hf_import import HFCheckpoint
    from nemo_gift.models.policy.hf_weights import load_hf_tensors
    from nemo_gift.models.policy.builder import build_gpt_model
    from nemo_gift.models.policy.config import ParallelConfig

    layout = ParallelConfig()
    parallel.initialize(layout)
    ckpt = HFCheckpoint(model_path)
    cfg = ckpt.model_config
    model = build_gpt_model(cfg, layout)
    good = {n: ckpt[n] for n in ckpt}
    cases = {
        "unknown": {**good, "model.layers.0.mlp.extra_proj.weight": torch.zeros(3)},
        "missing": {n: t for n, t in good.items() if n != "model.layers.1.self_attn.k_proj.weight"},
        "shape": {**good, "model.layers.1.mlp.down_proj.weight": torch.zeros(64, 95)},
    }
    messages = {}
    for case, tensors in cases.items():
        for form, arg in (("mapping", tensors), ("stream", list(tensors.items()))):
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            try:
                load_hf_tensors(model, cfg, arg)
                messages[(case, form)] = None
            except (KeyError, ValueError) as err:
                messages[(case, form)] = f"{type(err).__name__}: {err}"
            if form == "mapping":  # a mapping is checked as a whole before anything is copied
                messages[(case, "untouched")] = all(
                    torch.equal(p, before[n]) for n, p in model.named_parameters()
                )
    return messages
