"""The GIFT actor against NeMo-Aligner 0.7.0's real classes (needs the aligner venv).

Run with ``bash scripts/install_aligner_env.sh`` then
``.venv-aligner/bin/python -m pytest -q tests/unit/integrations``. Where nemo_aligner is not
installed (the main venv, the default CI job) the module is skipped with that reason.

NeMo-Aligner's actor modules import tensorrt_llm, pytriton, mpi4py and tensorrt at import time;
none installs on CPU. ``_aligner_shims.install()`` (test-only, see its docstring) registers
placeholders for them. Here the actor is built with ``__new__`` around a real megatron-core
GPTModel (``_aligner_ranks`` docstring), to compare its loss, gradients and log-probs with
nemo_gift's at TP=2. NeMo's own constructor, Aligner's generation and ``GiftTrainer.fit`` run end to
end in ``test_aligner_fit.py``. Not executed anywhere on CPU: the TRT-LLM refit/free hooks of
``prepare_for_inference``/``finish_inference`` (TensorRT-LLM needs a GPU; only their signatures are
checked below).
"""

import importlib.util
import inspect

import pytest
import torch

if importlib.util.find_spec("nemo_aligner") is None:
    pytest.skip(
        "nemo_aligner is not installed: the NeMo-Aligner tests run in the separate aligner venv "
        "(bash scripts/install_aligner_env.sh; docs/nemo-aligner.md)",
        allow_module_level=True,
    )

from tests.unit.integrations import _aligner_ranks, _aligner_shims  # noqa: E402

_aligner_shims.install()

from nemo_gift.integrations.nemo_aligner.availability import aligner_unavailable_reason  # noqa: E402

_REASON = aligner_unavailable_reason()
if _REASON is not None:
    pytest.skip(f"NeMo-Aligner does not import here: {_REASON}", allow_module_level=True)

from nemo_aligner.algorithms.reinforce import ReinforceTrainer  # noqa: E402
from nemo_aligner.models.alignable_interface import (  # noqa: E402
    AlignableGenerativeInterface,
    Inferrable,
    SupervisedInterface,
)
from nemo_aligner.utils.ppo_utils import calculate_rloo_baseline, create_mask  # noqa: E402

from nemo_gift.distributed.spawn import run_on_ranks  # noqa: E402
from nemo_gift.integrations.nemo_aligner import GiftTrainer, MegatronGPTGiftActorModel  # noqa: E402
from nemo_gift.integrations.nemo_aligner.loss import METRIC_KEYS  # noqa: E402
from nemo_gift.integrations.nemo_aligner.rollout import build_gift_rollout_data, group_by_prompt, response_mask  # noqa: E402


def _abstract_names(*classes):
    return {name for cls in classes for name, v in vars(cls).items() if getattr(v, "__isabstractmethod__", False)}


def test_actor_implements_the_alignable_interface_with_nothing_abstract_left():
    assert issubclass(MegatronGPTGiftActorModel, AlignableGenerativeInterface)
    assert MegatronGPTGiftActorModel.__abstractmethods__ == frozenset()
    required = _abstract_names(AlignableGenerativeInterface, SupervisedInterface, Inferrable)
    assert required >= {"get_loss_and_metrics", "prepare_for_training_step", "finish_training_step",
                        "prepare_for_inference", "finish_inference", "infer", "prepare_for_training",
                        "finish_training"}
    for name in required | {"get_init_policy_logprobs", "get_inference_log_probs"}:
        fn = getattr(MegatronGPTGiftActorModel, name)
        assert not getattr(fn, "__isabstractmethod__", False), name
    # The math-carrying methods are GIFT's own; the rest is Aligner's REINFORCE actor.
    own = vars(MegatronGPTGiftActorModel)
    assert {"get_loss_and_metrics", "get_logprob_output_only_func", "get_actor_forward_output_and_loss_func"} <= set(own)
    assert "prepare_for_inference" not in own and "infer" not in own  # TRT-LLM refit hooks: Aligner's


def test_trainer_is_aligners_reinforce_loop_with_gift_data():
    assert issubclass(GiftTrainer, ReinforceTrainer)
    overridden = {n for n in vars(GiftTrainer) if not n.startswith("__")}
    assert overridden == {"generate_reinforce_data"}
    assert inspect.signature(GiftTrainer.generate_reinforce_data).parameters.keys() == \
        inspect.signature(ReinforceTrainer.generate_reinforce_data).parameters.keys()


def test_mask_and_groups_agree_with_aligners_own_functions():
    rb = _aligner_ranks.aligner_style_rollout(seed=3)
    logprobs = rb["logprobs"]
    ours = response_mask(rb["prompt_lengths"], rb["response_lengths"], logprobs.shape[1])
    assert torch.equal(ours.float(), create_mask(logprobs, rb["prompt_lengths"], rb["response_lengths"]))
    # Aligner groups by prompt tokens for its RLOO baseline; its baseline of each row, computed
    # with our contiguous groups, must equal the leave-one-out mean of that row's group.
    width = int(rb["prompt_lengths"].max())
    prompts = torch.where(torch.arange(width) < rb["prompt_lengths"][:, None], rb["prompt_tokens"][:, :width], -1)
    rloo = calculate_rloo_baseline(prompts, rb["rewards"], torch.ones_like(rb["rewards"]))
    order, group_ids = group_by_prompt(rb["prompt_tokens"], rb["prompt_lengths"], _aligner_ranks.G)
    r = rb["rewards"][order].view(-1, _aligner_ranks.G)
    loo = (r.sum(1, keepdim=True) - r) / (_aligner_ranks.G - 1)
    torch.testing.assert_close(rloo[order], loo.flatten())
    data, _ = build_gift_rollout_data(rb, _aligner_ranks.G, "reference")
    assert torch.equal(data["group_ids"], group_ids)


CASES = [
    {},  # the defaults: kl_sum, beta 1, reference baseline, std_floor guard
    {"loss": {"implicit_reward": "kl_average", "beta": 0.5, "implicit_baseline": "old_policy"}},
    {"loss": {"drop_zero_std_groups": True, "std_guard": "none"}, "logprob_chunk_size": 5},
]


@pytest.mark.distributed
def test_actor_loss_metrics_and_grads_equal_nemo_gift_at_tp2():
    results = run_on_ranks(_aligner_ranks.actor_matches_nemo_gift, 2, args=(CASES,), timeout=300)
    for rank_result in results:
        for case, res in zip(CASES, rank_result):
            metrics = res["metrics"]
            assert set(metrics) == set(METRIC_KEYS), case
            assert res["loss"] == metrics["loss"]
            for key in METRIC_KEYS:
                assert metrics[key] == pytest.approx(res["ref"][key], rel=1e-5, abs=1e-6), (case, key)
            fwd_loss, fwd_metrics = res["forward_only"]
            assert fwd_loss == pytest.approx(res["loss"], rel=1e-6, abs=1e-7), case
            assert res["same_grad_keys"], case
            assert res["grad_max_abs"] > 0, case
            assert res["grad_max_abs_diff"] <= 1e-5 * res["grad_max_abs"] + 1e-7, (case, res["grad_max_abs_diff"])
    # Both TP ranks report the same (replicated) metrics.
    assert [r["metrics"] for r in results[0]] == [r["metrics"] for r in results[1]]


@pytest.mark.distributed
def test_rollout_and_reference_logprobs_through_aligners_inference_path_at_tp2():
    for res in run_on_ranks(_aligner_ranks.actor_logprobs_match, 2, timeout=300):
        assert res["moved_vs_ref"] > 1e-3  # the weight change is visible
        assert res["rollout_vs_ref"] < 1e-5
        assert res["init_vs_ref"] < 1e-5  # the reference weights were swapped in
        assert res["after_vs_moved"] < 1e-5  # ... and swapped back out


def test_trt_llm_refit_hooks_match_the_nemo_exporter_they_call():
    """prepare_for_inference/finish_inference (inherited) drive Aligner's GPTGenerateTRTLLM, whose
    refit/free call NeMo 2.4.1's TensorRT-LLM exporter. Nothing here runs TRT-LLM (GPU only):
    the check is that the calls bind to the exporter's real signatures in this nemo-toolkit."""
    from nemo.export.tensorrt_llm import TensorRTLLM
    from nemo_aligner.utils.trt_llm import GPTGenerateTRTLLM

    assert {"refit", "generate", "free"} <= set(vars(GPTGenerateTRTLLM))
    inspect.signature(TensorRTLLM.build).bind(
        None, model=None, model_config=None, model_type="llama", tokenizer=None, gpus_per_node=8,
        max_input_len=1024, max_output_len=1024, max_batch_size=4, use_refit=True, reshard_model=False,
    )
    inspect.signature(TensorRTLLM.refit).bind(None, None, None)
    inspect.signature(TensorRTLLM.unload_engine).bind(None)
    src = inspect.getsource(MegatronGPTGiftActorModel.__mro__[1].prepare_for_inference)
    assert "trtllm_generate.refit(self.model)" in src


@pytest.mark.parametrize("baseline", [None, "reference", "old_policy"])
def test_trainer_refuses_a_kl_penalty_and_prepares_gift_data(baseline):
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from nemo_gift.algorithms import GiftLossConfig, ImplicitBaseline
    from nemo_gift.integrations.nemo_aligner.loss import GiftActorConfig
    from nemo_gift.integrations.nemo_aligner.rollout import GIFT_BATCH_KEYS

    cfg = OmegaConf.create({"initial_policy_kl_penalty": 0.01, "num_rollouts_per_prompt": 4, "model_gbs": 16, "model_mbs": 8})
    with pytest.raises(ValueError, match="initial_policy_kl_penalty=0.01"):
        GiftTrainer(cfg, None)
    gift = GiftActorConfig() if baseline is None else GiftActorConfig(loss=GiftLossConfig(implicit_baseline=baseline))
    # None: the default, pi_old (docs/gift-math.md section 4; the recipe's old_policy).
    expected_baseline = ImplicitBaseline.OLD_POLICY if baseline is None else ImplicitBaseline(baseline)
    assert gift.loss.implicit_baseline is expected_baseline
    trainer = GiftTrainer.__new__(GiftTrainer)  # Aligner's constructor needs dataloaders; the hook does not
    trainer.model = SimpleNamespace(gift=gift)
    trainer.group_size, trainer.implicit_baseline = _aligner_ranks.G, gift.loss.implicit_baseline
    rb = _aligner_ranks.aligner_style_rollout(seed=5)
    data, metrics = trainer.generate_reinforce_data(rb)
    expected, expected_metrics = build_gift_rollout_data(rb, _aligner_ranks.G, expected_baseline)
    assert set(data) == set(GIFT_BATCH_KEYS)
    assert all(torch.equal(data[k], expected[k]) for k in GIFT_BATCH_KEYS)
    source = rb["init_logprobs"] if expected_baseline is ImplicitBaseline.REFERENCE else rb["logprobs"]
    order, _ = group_by_prompt(rb["prompt_tokens"], rb["prompt_lengths"], _aligner_ranks.G)
    assert torch.equal(data["baseline_logprobs"], source.float()[order])
    assert metrics == expected_metrics and metrics["zero_explicit_std_frac"] == 0.25
