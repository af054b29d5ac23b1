"""HF import and export against transformers itself, at TP=1, TP=2, PP=2 and TP=2 x PP=2.

One spawn of 4 gloo ranks imports every tiny model (``conftest.py``) at every layout, in fp32:
- megatron-core's logits equal transformers' (<= 1e-4 absolute, with logits of order 1-10);
- the streamed export (``export_hf_tensors``) gives back every source tensor bit for bit, in
  the same order on every rank;
- at TP=2 x PP=2, ``export_model`` writes an HF directory that ``AutoModelForCausalLM`` loads,
  with the original logits, and the CLI exports a project checkpoint the same way.
"""

from __future__ import annotations

import json

import pytest
import torch

from nemo_gift.distributed.spawn import run_on_ranks

from ._ranks import import_export_checks, load_error_messages
from .conftest import SPECS, read_safetensors_dir

pytestmark = pytest.mark.distributed

LAYOUTS = [(1, 1), (2, 1), (1, 2), (2, 2)]  # (TP, PP)
TOL = 1e-4


@pytest.fixture(scope="module")
def spawned(hf_models, tmp_path_factory):
    out_root = tmp_path_factory.mktemp("exports")
    models = {n: {"path": str(m.path), "tokens": m.tokens, "logits": m.logits} for n, m in hf_models.items()}
    results = run_on_ranks(import_export_checks, world_size=4, args=(models, LAYOUTS, str(out_root)), timeout=480)
    return results, out_root


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: f"tp{l[0]}pp{l[1]}")
@pytest.mark.parametrize("name", list(SPECS))
def test_logits_match_transformers(spawned, hf_models, name, layout):
    results, _ = spawned
    entries = [r[(name, *layout)] for r in results]
    last = [e for e in entries if "max_logit_diff" in e]
    assert last, "no rank was a last pipeline stage"
    for e in last:
        assert e["logit_columns"] == e["rows"]
        assert e["max_logit_diff"] <= TOL, e
        assert e["logit_scale"] > 1.0  # the test's logits are not trivially small
    if name == "llama" and layout[0] == 2:
        assert entries[0]["rows"] == 256  # vocab 255 padded for TP=2


@pytest.mark.parametrize("name", list(SPECS))
def test_streamed_export_is_bitwise_and_identical_on_every_rank(spawned, name):
    results, _ = spawned
    for layout in LAYOUTS:
        sequences = [r[(name, *layout)]["export"]["names"] for r in results]
        assert all(s == sequences[0] for s in sequences), layout
        for rank, r in enumerate(results):
            exp = r[(name, *layout)]["export"]
            assert exp["complete"] and not exp["mismatched"], (rank, layout, exp["mismatched"])
        streamed = results[0][(name, 2, 1)]["streamed_load_export"]
        assert streamed["complete"] and not streamed["mismatched"], streamed["mismatched"]


def _hf_logits(path, tokens):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path).float().eval()
    with torch.no_grad():
        return model(input_ids=tokens).logits


@pytest.mark.parametrize("name", list(SPECS))
def test_exported_directory_loads_in_transformers(spawned, hf_models, name):
    results, out_root = spawned
    assert all(r[(name, 2, 2)]["reexport_refused"] for r in results)
    src, out = hf_models[name].path, out_root / f"hf_{name}"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in out.glob("model-*.safetensors")}
    original, exported = read_safetensors_dir(src), read_safetensors_dir(out)
    assert sorted(exported) == sorted(original)
    for key, tensor in original.items():
        assert exported[key].dtype == tensor.dtype and torch.equal(exported[key], tensor), key
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / f).read_text() == (src / f).read_text(), f
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == json.loads((src / "config.json").read_text())["architectures"]
    logits = _hf_logits(out, hf_models[name].tokens)
    assert torch.equal(logits, hf_models[name].logits)


@pytest.mark.parametrize("name", ["qwen2_tied", "llama"])
def test_cli_exports_a_checkpoint(spawned, hf_models, name, tmp_path):
    from nemo_gift.export.__main__ import main

    _, out_root = spawned
    out = tmp_path / "hf"
    assert main(["--checkpoint", str(out_root / f"ckpt_{name}"), "--hf-out", str(out),
                 "--hf-source", str(hf_models[name].path), "--max-shard-gb", "0.00005"]) == 0
    assert len(list(out.glob("model-*.safetensors"))) > 1  # several shards, with an index
    original, exported = read_safetensors_dir(hf_models[name].path), read_safetensors_dir(out)
    assert sorted(exported) == sorted(original)
    assert all(torch.equal(exported[k], original[k]) for k in original)
    assert torch.equal(_hf_logits(out, hf_models[name].tokens), hf_models[name].logits)
    with pytest.raises(FileExistsError, match="not empty"):
        main(["--checkpoint", str(out_root / f"ckpt_{name}"), "--hf-out", str(out)])


def test_load_hf_tensors_names_the_bad_tensor(hf_models):
    (messages,) = run_on_ranks(load_error_messages, world_size=1, args=(str(hf_models["qwen3"].path),), timeout=300)
    for form in ("mapping", "stream"):
        assert "model.layers.0.mlp.extra_proj.weight" in messages[("unknown", form)]
        assert "model.layers.1.self_attn.k_proj.weight" in messages[("missing", form)]
        assert "model.layers.1.mlp.down_proj.weight" in messages[("shape", form)]
        assert "(64, 95)" in messages[("shape", form)]
    for case in ("unknown", "missing", "shape"):
        assert messages[(case, "untouched")], case
