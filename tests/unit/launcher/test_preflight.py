"""``--preflight``: parameter counts from the meta-device build, the memory terms, the table of
every recipe, and the refusals (a layout rule, a recipe that does not fit 80 GB)."""

import subprocess
import sys
from pathlib import Path

import pytest

from nemo_gift.utils.convert import ConfigError
from nemo_gift.launcher import preflight
from nemo_gift.launcher.main import DEFAULT_CONF_DIR, load
from nemo_gift.models.policy.meta_build import distinct_stages, stage_parameter_counts

REPO = Path(__file__).resolve().parents[3]
RECIPES = sorted(p.stem for p in DEFAULT_CONF_DIR.glob("*.yaml") if p.stem not in ("base", "export"))
GIB = 2**30
QWEN = "gift_qwen2.5-32b-instruct_gsm8k_4n8g"  # 4 nodes x 8 GPUs, TP=8, GSM8K
DEEPSEEK = "gift_deepseek-llm-7b-chat_gsm8k_1n8g"


def qwen25_32b_per_gpu(tp: int, layers: int, first: bool, last: bool) -> int:
    """Qwen2.5-32B's parameters on one GPU, counted by hand from the architecture: per layer
    Q/K/V weights h*(a+2g)*d and biases (a+2g)*d, O a*d*h, the SwiGLU MLP 3*h*f, all split by TP,
    and two replicated RMSNorms; the embedding and the output layer V*h/TP; the final norm h."""
    h, a, g, d, f, V = 5120, 40, 8, 128, 27648, 152064
    per_layer = (h * (a + 2 * g) * d + (a + 2 * g) * d + a * d * h + 3 * h * f) // tp + 2 * h
    return layers * per_layer + (V * h // tp if first else 0) + (V * h // tp + h if last else 0)


def test_meta_build_counts_match_the_architecture():
    cfg = load(QWEN, [])
    assert stage_parameter_counts(cfg.model, cfg.parallel) == {0: qwen25_32b_per_gpu(8, 64, True, True)}
    # TP=2 x PP=4: a replica of 8 GPUs, one node (a TensorRT-LLM engine spans one replica)
    pp4 = load(QWEN, ["parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=4"])
    counts = stage_parameter_counts(pp4.model, pp4.parallel)
    assert distinct_stages(4) == [0, 1, 3]
    assert counts == {0: qwen25_32b_per_gpu(2, 16, True, False), 1: qwen25_32b_per_gpu(2, 16, False, False),
                      3: qwen25_32b_per_gpu(2, 16, False, True)}
    tp1 = load(QWEN, ["parallel.tensor_model_parallel_size=1", "cluster.nodes=1", "cluster.tasks_per_node=1",
                                "cluster.gpus_per_node=1", "trainer.micro_batch_size=4",
                                "parallel.sequence_parallel=false"])
    assert sum(stage_parameter_counts(tp1.model, tp1.parallel).values()) == 32_763_876_352  # Qwen2.5-32B's count


def test_memory_terms_of_the_qwen2_5_32b_gsm8k_recipe_by_hand():
    cfg = load(QWEN, [])
    P = qwen25_32b_per_gpu(8, 64, True, True)
    (stage,) = preflight.estimate(cfg, {0: P})
    train = {t.name: t.bytes for t in stage.phases["train"]}
    assert train["weights"] == 2 * P and train["gradients (fp32)"] == 4 * P
    assert train["optimizer (main params + Adam)"] == 12 * P / 4  # distributed optimizer, DP=4
    assert "reference model" not in train  # GIFT's default baseline is pi_old
    s, b, h, f, tp = 2048, 2, 5120, 27648, 8
    assert train["activations"] == pytest.approx(s * b * h * (18 + 6 * f / h) / tp * 64 + 8 * s * b)
    # parallel.fused_lm_head_logprobs (default): one bf16 [256, V/TP] chunk of logits and its fp32 copy
    assert train["logits + log-prob work"] == pytest.approx((2 + 4) * 256 * 152064 / tp)
    unfused = preflight.estimate(load("gift_qwen32b", ["parallel.fused_lm_head_logprobs=false"]), {0: P})[0]
    unfused_train = {t.name: t.bytes for t in unfused.phases["train"]}
    assert unfused_train["logits + log-prob work"] == pytest.approx(2 * b * s * 152064 / tp + 8 * 256 * 152064 / tp)
    rollout = {t.name: t.bytes for t in stage.phases["rollout"]}
    free = 80 * GIB - 2 * GIB - (2 + 4 + 3) * P - 2 * P
    assert rollout["KV cache (TRT-LLM)"] == pytest.approx(0.4 * free)
    grpo = {t.name: t.bytes for t in preflight.estimate(load("grpo_qwen2.5-32b-instruct_gsm8k_4n8g", []), {0: P})[0].phases["train"]}
    assert grpo["reference model"] == 2 * P  # beta_kl = 0.001 > 0


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_passes_preflight_and_prints_its_table(name, capsys):
    cfg = load(name, [])
    stages = preflight.check(cfg)
    out = capsys.readouterr().out
    assert out.startswith(f"preflight {name}:") and "layout:" in out and "memory per GPU, stage 0" in out
    assert len(stages) == len(distinct_stages(cfg.parallel.pipeline_model_parallel_size))
    if cfg.cluster.gpu_memory_gb:
        assert max(st.total(st.peak_phase) for st in stages) <= cfg.cluster.gpu_memory_gb * GIB


def test_h200_cluster_and_pipeline_parallel_variant_pass():
    assert load(QWEN, ["cluster=dgx_h200"]).cluster.gpu_memory_gb == 141
    pp2 = load(QWEN, ["parallel.tensor_model_parallel_size=4", "parallel.pipeline_model_parallel_size=2"])
    (first, last) = preflight.check(pp2, print_table=False)
    # TensorRT-LLM shards its copy over all TP x PP = 8 GPUs of the replica, so it weighs what the
    # TP=8 recipe's does, and it holds every layer's KV heads: 8 query groups / 8 GPUs.
    P_model = sum(stage_parameter_counts(pp2.model, pp2.parallel).values())
    engine = {t.name: t.bytes for t in last.phases["rollout"]}["rollout engine weights (TRT-LLM)"]
    assert engine == 2 * P_model / 2
    assert preflight.kv_bytes_per_token(pp2) == 2 * 64 * 1 * 128 * 2


def _launch(*args):
    return subprocess.run([sys.executable, str(REPO / "launcher" / "run.py"), *args, "--preflight"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def test_refused_tp_that_does_not_divide_the_heads():
    out = _launch(f"conf={QWEN}", "parallel.tensor_model_parallel_size=16")
    assert out.returncode == 2
    assert "parallel.tensor_model_parallel_size=16 does not divide model.num_attention_heads=40" in out.stderr


def test_refused_recipe_that_does_not_fit_80gb_names_the_largest_term():
    out = _launch(f"conf={QWEN}", "parallel.tensor_model_parallel_size=2", "trainer.micro_batch_size=1")
    assert out.returncode == 2, out.stdout[-2000:]
    assert f"{QWEN} does not fit cluster.gpu_memory_gb=80" in out.stderr
    assert "the largest term is gradients (fp32) (61.0 GiB)" in out.stderr
    assert "Fix: raise parallel.pipeline_model_parallel_size" in out.stderr
    assert "memory per GPU" in out.stdout  # the table comes first


def test_refused_activations_suggest_recompute_which_then_fits():
    over = ["trainer.micro_batch_size=16", "trainer.logprob_chunk_size=1024"]
    with pytest.raises(ConfigError, match=r"largest term is activations .* Fix: set parallel.recompute_activations=true"):
        preflight.check(load(DEEPSEEK, over), print_table=False)
    preflight.check(load(DEEPSEEK, over + ["parallel.recompute_activations=true"]), print_table=False)


def test_refused_sequence_padding_past_the_position_table():
    cfg = load(QWEN, ["data.max_prompt_length=1023", "model.max_position_embeddings=2047"])
    with pytest.raises(ConfigError, match=r"padded sequence length 2048 .* rounded up to 8 .*model.max_position_embeddings=2047"):
        preflight.check(cfg, print_table=False)
