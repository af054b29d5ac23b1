"""The TensorRT-LLM engine in one process against the double (``tests/doubles/tensorrt_llm``):
refit, sleep/wake and generation checked against Hugging Face ``generate`` on the same weights;
the contract the double enforces; the owner's environment; the config check for
``rollout.engine=trtllm``. The multi-rank trainer runs are in ``test_trtllm_trainer.py``."""

from __future__ import annotations

import json
import os
import pickle
import sys
import types

import pytest
import torch

from nemo_gift.algorithms.interfaces import SamplingConfig
from nemo_gift.models.policy.config import ModelConfig
from tests.unit.generation._trtllm_ranks import DOUBLES

CFG = ModelConfig(arch="qwen2", num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4,
                  num_query_groups=2, vocab_size=64, max_position_embeddings=64, add_qkv_bias=True)
PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]


@pytest.fixture
def double(monkeypatch, tmp_path):
    """The double importable as ``tensorrt_llm`` for this test only."""
    monkeypatch.syspath_prepend(DOUBLES)
    monkeypatch.setenv("TRTLLM_DOUBLE_STATE_DIR", str(tmp_path / "double"))
    yield tmp_path / "double"
    for name in [m for m in sys.modules if m.split(".")[0] in ("tensorrt_llm", "trtllm_double_log")]:
        del sys.modules[name]


def _hf_dir(tmp_path):
    from nemo_gift.models.policy.hf_weights import model_config_to_hf_config

    path = tmp_path / "hf"
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps(model_config_to_hf_config(CFG, dtype="float32")))
    return str(path)


def _hf_model(model_dir, seed):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), attn_implementation="eager").eval()


def _hf_greedy(model, prompts, steps):
    out = []
    for p in prompts:
        seq = torch.tensor([p])
        with torch.no_grad():
            for _ in range(steps):
                seq = torch.cat([seq, model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        out.append(seq[0, len(p):].tolist())
    return out


def _engine(tmp_path, **cfg):
    from nemo_gift.models.generation import trtllm_engine as te

    return te.TrtllmGenerationEngine(te.TrtllmConfig(model_dir=_hf_dir(tmp_path), load_format="dummy",
                                                     dtype="float32", **cfg), CFG)


def test_generation_follows_refit_across_sleep_and_wake(double, tmp_path):
    from tests.doubles.trtllm_double_log import read

    engine = _engine(tmp_path)
    greedy = SamplingConfig(max_new_tokens=8, temperature=0.0)
    first, second = _hf_model(_hf_dir(tmp_path), 1), _hf_model(_hf_dir(tmp_path), 2)
    engine.refit(first.state_dict().items())
    assert engine.generate(PROMPTS, 2, greedy).responses() == [r for r in _hf_greedy(first, PROMPTS, 8) for _ in "ab"]
    sampled = engine.generate(PROMPTS, 3, SamplingConfig(max_new_tokens=8, seed=4))
    assert sampled.responses()[0] != sampled.responses()[3]  # one seed per request, not one per call
    engine.sleep()
    with pytest.raises(RuntimeError, match="asleep"):
        engine.generate(PROMPTS, 1, greedy)
    with pytest.raises(RuntimeError, match="asleep"):
        engine.refit(second.state_dict().items())
    engine.wake()
    engine.refit(second.state_dict().items())
    assert engine.generate(PROMPTS, 1, greedy).responses() == _hf_greedy(second, PROMPTS, 8)
    engine.shutdown()
    names = [e["event"] for e in read(double)[0]]
    assert names == ["import", "llm_init", "update_weights", "update_weights_finalize", "generate", "generate",
                     "sleep", "wakeup", "update_weights", "update_weights_finalize", "generate", "shutdown"]
    finals = [e for e in read(double)[0] if e["event"] == "update_weights_finalize"]
    assert [e["loaded"] for e in finals] == [len(first.state_dict())] * 2


def test_refit_goes_in_buckets_and_sampled_logprobs_may_be_missing(double, tmp_path):
    from tests.doubles.trtllm_double_log import read

    engine = _engine(tmp_path, refit_bucket_bytes=8 * 1024)
    engine.refit(_hf_model(_hf_dir(tmp_path), 1).state_dict().items())
    buckets = [e["tensors"] for e in read(double)[0] if e["event"] == "update_weights"]
    assert len(buckets) > 2 and sorted(n for b in buckets for n in b) == sorted(_hf_model(_hf_dir(tmp_path), 1).state_dict())
    out = engine.generate(PROMPTS, 4, SamplingConfig(max_new_tokens=8, temperature=1.5, seed=0))
    assert engine.last_missing_logprobs == int(out.logprobs.isnan().sum()) > 0  # no crash (defect 6)
    engine.shutdown()


def test_the_double_enforces_the_contract(double, tmp_path):
    import base64

    from tensorrt_llm import LLM, SamplingParams

    from nemo_gift.models.generation import trtllm_engine as te

    engine = _engine(tmp_path)
    llm = engine.llm
    with pytest.raises(RuntimeError, match="already hosts"):  # one LLM per engine GPU
        LLM(model=_hf_dir(tmp_path), tensor_parallel_size=1, orchestrator_type="ray")
    with pytest.raises(RuntimeError, match="can not be pickled"):  # only its owner holds it
        pickle.dumps(llm)
    with pytest.raises(ValueError, match="invalid argument"):
        LLM(model=_hf_dir(tmp_path), no_such_flag=1)
    bad = te.serialize_ipc_handles([("model.layers.0.mlp.up_proj.weight", torch.zeros(3))], "CPU-0",
                                   engine.transport.handle)
    with pytest.raises(ValueError, match="shape"):
        llm._collective_rpc("update_weights", args=(bad,))
    bad = te.serialize_ipc_handles([("transformer.h.0.weight", torch.zeros(3))], "CPU-0", engine.transport.handle)
    with pytest.raises(KeyError, match="not a weight"):
        llm._collective_rpc("update_weights", args=(bad,))
    with pytest.raises(ValueError, match="Device UUID CPU-0 not found"):  # each worker opens its own device's
        llm._collective_rpc("update_weights", args=({"CPU-7": bad["CPU-0"]},))
    evil = {"CPU-0": base64.b64encode(pickle.dumps([("x", (os.system, ("true",)))])).decode()}
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        llm._collective_rpc("update_weights", args=(evil,))
    with pytest.raises(ValueError, match="end_id"):  # no tokenizer: end_id must be given
        llm.generate([[1, 2]], SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="does not allow multiple returns"):
        SamplingParams(n=2, top_k=1, end_id=-1)
    with pytest.raises(ValueError, match="Unknown memory tag"):
        llm._collective_rpc("sleep", args=(["weights"],))
    engine.shutdown()
    no_sleep = _engine(tmp_path, enable_sleep=False)
    with pytest.raises(ValueError, match="Sleep feature is not enabled"):
        no_sleep.llm._collective_rpc("sleep", args=(["kv_cache"],))
    no_sleep.sleep()  # the engine does not ask for what it did not enable
    no_sleep.shutdown()


def test_import_under_srun_needs_mpi_off(double, monkeypatch):
    """Issue 15, defect 3: the real import initializes MPI, which can hang with srun's PMI state."""
    from nemo_gift.models.generation.trtllm_runtime import owner_env

    monkeypatch.setenv("SLURM_JOB_ID", "1")
    monkeypatch.setenv("PMIX_RANK", "0")
    monkeypatch.delenv("TLLM_DISABLE_MPI", raising=False)
    with pytest.raises(RuntimeError, match="can hang under srun"):
        import tensorrt_llm  # noqa: F401
    sys.modules.pop("tensorrt_llm", None)
    with owner_env([0]) as changes:
        import tensorrt_llm  # noqa: F401,F811

        assert "SLURM_JOB_ID" not in os.environ and "PMIX_RANK" not in os.environ
        assert changes["TLLM_DISABLE_MPI"] == "1" and os.environ["TLLM_RAY_FORCE_LOCAL_CLUSTER"] == "1"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0" and os.environ["MASTER_PORT"] == changes["MASTER_PORT"]
    assert os.environ["SLURM_JOB_ID"] == "1" and os.environ["PMIX_RANK"] == "0"  # restored
    assert os.environ["TLLM_DISABLE_MPI"] == "1"  # stays: later TensorRT-LLM imports read it


def _run_cfg(executor="local", tp=1, pp=1, tasks=1, cpus=None):
    return types.SimpleNamespace(
        cluster=types.SimpleNamespace(executor=executor, tasks_per_node=tasks, cpus_per_task=cpus),
        parallel=types.SimpleNamespace(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp))


def test_config_check_accepts_the_double_only_where_it_is_installed(double, monkeypatch):
    from nemo_gift.models.generation import trtllm_runtime as rt

    assert rt.is_cpu_double() and rt.config_problems(_run_cfg(), cuda=False) == []
    monkeypatch.setattr(rt, "is_cpu_double", lambda: False)  # a real TensorRT-LLM on a CPU machine
    assert rt.config_problems(_run_cfg(), cuda=False) == [
        "rollout.engine=trtllm needs CUDA GPUs; use rollout.engine=torch on CPU"]
    assert rt.config_problems(_run_cfg(), cuda=True) == []


def test_config_check_without_tensorrt_llm_and_on_slurm():
    from nemo_gift.models.generation import trtllm_runtime as rt

    if rt.importlib.util.find_spec("tensorrt_llm") is None:
        assert "needs TensorRT-LLM" in rt.config_problems(_run_cfg(), cuda=True)[0]
    assert rt.config_problems(_run_cfg("slurm", tp=8, tasks=8, cpus=16), cuda=False) == []
    (cpus,) = rt.config_problems(_run_cfg("slurm", tp=4, pp=2, tasks=8), cuda=False)
    assert "cluster.cpus_per_task=None" in cpus and "hang" in cpus  # defect 3: Ray's placement group
    (node,) = rt.config_problems(_run_cfg("slurm", tp=8, pp=2, tasks=8, cpus=32), cuda=False)
    assert "must fit on one node" in node
