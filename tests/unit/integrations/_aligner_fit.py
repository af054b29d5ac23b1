"""Rank function for ``test_aligner_fit.py``: ``GiftTrainer.fit`` end to end on CPU (gloo).

Everything the run touches is the real NeMo-Aligner 0.7.0 / nemo-toolkit 2.4.1 / megatron-core
0.13.1 code, wired by ``nemo_gift.integrations.nemo_aligner.build`` exactly as the example script
wires it, with the CPU patches of ``nemo_gift.integrations.nemo_aligner.cpu_compat``:

- the recipe is ``examples/nemo_aligner/conf/gpt_gift_actor.yaml`` with a tiny-model overlay
  (:func:`tiny_recipe`); the Lightning trainer is Aligner's ``resolve_and_create_trainer``;
- the actor is ``MegatronGPTGiftActorModel(cfg.model, trainer)``, NeMo's real constructor building a
  random 2-layer megatron-core GPT (the way Lightning builds it: ``self._device`` is Lightning's);
- the tokenizer is a small BPE trained here on the task's text with ``tokenizers`` and loaded by
  NeMo's HF wrapper from that directory (nothing is downloaded);
- rollouts are NeMo's own text generation (``trt_llm.enable: False``), G per prompt;
- the reward server is Aligner's real client (``RemoteGPTRMClient``, ``HTTPCommunicator``,
  ``RMFutureResult``) whose PyTriton connection is :class:`LocalRewardClient`, which follows
  PyTriton's ``FuturesModelClient.infer_batch`` contract and scores with the project's
  arithmetic verifier;
- the logger follows Aligner's ``CustomLoggerWrapper`` contract and keeps every row.

The prompts are the project's synthetic arithmetic task (``nemo_gift.data.synthetic``), one-digit
operands. The reward is the verifier's verdict, graded so that an untrained model's groups differ:
1 for the right sum, 0.5 for a well-formed wrong integer, 0 for anything else.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import time

import torch

G = 4  # responses per prompt (num_rollouts_per_prompt)
PROMPTS = 2  # prompts per rollout step
ROWS = G * PROMPTS  # responses per step = global batch: one mini-batch, one optimizer step per step
MBS = G  # micro-batch: one whole group
MAX_RESPONSE_TOKENS = 2
SEED = 1234
_GRADED = {"correct": 1.0, "wrong": 0.5}


def task_problems():
    """The training prompts: one-digit sums of the synthetic task, in a fixed order."""
    from nemo_gift.data.synthetic import ArithmeticConfig, ArithmeticTask

    task = ArithmeticTask(ArithmeticConfig(min_digits=1, max_digits=1))
    return task.problems("train", 16, seed=SEED)


def build_tokenizer(directory: str, problems) -> str:
    """A byte-pair tokenizer trained here on the task's text (prompts and answers), saved in
    Hugging Face's format; ``<pad>``, ``<bos>``, ``<eos>`` are its special tokens."""
    from tokenizers import Tokenizer, decoders, models, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.decoder = decoders.Fuse()  # tokens concatenate back to the text
    trainer = trainers.BpeTrainer(
        vocab_size=18, special_tokens=["<pad>", "<bos>", "<eos>"], initial_alphabet=list("0123456789+="), show_progress=False
    )
    bpe.train_from_iterator([p.prompt + str(p.answer) for p in problems], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    fast.save_pretrained(directory)
    return directory


def tiny_recipe(workdir: str, tokenizer_dir: str, tp: int, world_size: int, baseline: str):
    """The example's recipe, shrunk to a random 2-layer GPT on CPU, for 2 GIFT steps."""
    from omegaconf import OmegaConf

    here = os.path.dirname(os.path.abspath(__file__))
    example = os.path.join(here, "..", "..", "..", "examples", "nemo_aligner", "conf", "gpt_gift_actor.yaml")
    cfg = OmegaConf.load(example)
    prompts = os.path.join(workdir, "prompts.jsonl")
    overlay = {
        "cluster_type": "BCP",  # Lightning's TorchElasticEnvironment: ranks from RANK/WORLD_SIZE (run_on_ranks)
        "exp_manager": None,
        "trainer": {
            "devices": world_size,
            "accelerator": "cpu",
            "precision": 32,
            "enable_progress_bar": False,
            "reinforce": {"num_rollouts_per_prompt": G, "max_steps": 2, "val_check_interval": 2},
        },
        "model": {
            "gift": {"loss": {"implicit_baseline": baseline}},
            "tensor_model_parallel_size": tp,
            "micro_batch_size": MBS,
            "global_batch_size": ROWS,
            "megatron_amp_O2": False,
            "seed": SEED,
            # The architecture, which a checkpoint's config would otherwise supply.
            "num_layers": 2,
            "hidden_size": 32,
            "ffn_hidden_size": 64,
            "num_attention_heads": 4,
            "encoder_seq_length": 16,
            "init_method_std": 0.02,
            "hidden_dropout": 0.0,
            "attention_dropout": 0.0,
            "ffn_dropout": 0.0,
            "position_embedding_type": "rope",
            "normalization": "layernorm",
            "transformer_engine": False,
            "use_cpu_initialization": True,
            "make_vocab_size_divisible_by": 1,
            "gradient_as_bucket_view": False,
            "activations_checkpoint_granularity": None,
            "activations_checkpoint_method": None,
            "activations_checkpoint_num_layers": None,
            "activations_checkpoint_layers_per_pipeline": None,
            "tokenizer": {"library": "huggingface", "type": tokenizer_dir, "use_fast": True},
            "reinforce": {
                "rollout_micro_batch_size": PROMPTS,
                "num_rollout_samples": PROMPTS,
                "num_val_samples": PROMPTS,
                "length_params": {"max_length": MAX_RESPONSE_TOKENS},
                "sampling_params": {"end_strings": ["<eos>"]},
            },
            "data": {"data_prefix": {"train": [prompts], "validation": [prompts], "test": [prompts]}},
        },
    }
    cfg = OmegaConf.merge(cfg, OmegaConf.create(overlay))
    # Plain torch Adam: the example's distributed_fused_adam is Apex's (GPU only).
    cfg.model.optim = OmegaConf.create({"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "betas": [0.9, 0.999]})
    return cfg, prompts


def graded_reward(verifier, response: str, answer: int) -> float:
    """1 for the right sum, 0.5 for a well-formed wrong integer, 0 otherwise (the verifier's reason)."""
    return _GRADED.get(verifier(response, str(answer)).reason.value, 0.0)


class LocalRewardClient:
    """The reward server, in process, behind PyTriton's client API.

    Follows ``pytriton.client.FuturesModelClient`` as Aligner's ``HTTPCommunicator`` calls it
    (``nemo_aligner/servers/http_communicator.py``, ``send_data_to_server``:
    ``client.infer_batch(**data)`` returns a ``concurrent.futures.Future``; ``close()``), and Aligner's
    reward server's tensors (``nemo_aligner/algorithms/reward_server.py``, ``RewardModelServer``: inputs
    ``tokens`` [B, L] int64 and ``sequence_lengths`` [B, 1] int64, output ``rewards`` [B, 1] float32).
    Each sequence is decoded, split into the prompt (up to ``=``) and the response, and the response
    verified against the prompt's sum.
    """

    def __init__(self, tokenizer_dir: str):
        from transformers import PreTrainedTokenizerFast

        from nemo_gift.rewards.arithmetic import ArithmeticVerifier

        self.tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
        self.verifier = ArithmeticVerifier()
        self.scored: list[tuple[str, float]] = []

    def infer_batch(self, **inputs):
        import numpy as np

        tokens, lengths = inputs["tokens"], inputs["sequence_lengths"]
        rewards = []
        for row, n in zip(tokens, lengths[:, 0]):
            text = self.tokenizer.decode(row[: int(n)].tolist(), skip_special_tokens=True)
            question, _, response = text.partition("=")
            a, _, b = question.partition("+")
            rewards.append(graded_reward(self.verifier, response, int(a) + int(b)))
            self.scored.append((text, rewards[-1]))
        future = concurrent.futures.Future()
        future.set_result({"rewards": np.asarray(rewards, dtype=np.float32)[:, None]})
        return future

    def close(self):
        pass


class RecordingLogger:
    """Aligner's ``CustomLoggerWrapper`` contract (``log_metrics(metrics, step, prefix)``,
    ``log_table``, ``finalize``), keeping every metrics row."""

    def __init__(self):
        self.rows: list[tuple[str, int, dict]] = []

    def log_metrics(self, metrics, step=None, prefix=""):
        self.rows.append((prefix, step, dict(metrics)))

    def log_table(self, *args, **kwargs):
        pass

    def finalize(self):
        pass

    def metrics(self, prefix: str) -> list[dict]:
        return [m for p, _, m in self.rows if p == prefix]


def local_reward_client(cfg, tokenizer_dir: str):
    """Aligner's ``RemoteGPTRMClient`` with its PyTriton connection replaced by :class:`LocalRewardClient`."""
    from nemo_aligner.models.nlp.gpt.reward_critic_clients import RemoteGPTRMClient

    rm = RemoteGPTRMClient(cfg.remote_rm)
    name = cfg.remote_rm.reward_model.name
    ip, port, _ = rm.communicator.connections[name]
    local = LocalRewardClient(tokenizer_dir)
    rm.communicator.connections[name] = (ip, port, local)
    return rm, local


def reference_logprobs(actor, tokens: torch.Tensor) -> torch.Tensor:
    """log pi(tokens[:, t+1] | tokens[:, :t+1]) [n, S-1] float64, independently of nemo_gift's kernel:
    one forward of the whole batch, the vocabulary gathered over TP, torch's log_softmax."""
    from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

    attention_mask, _, position_ids = actor.get_ltor_masks_and_position_ids(tokens)
    with torch.no_grad():
        logits = actor.model(tokens, position_ids, attention_mask, labels=None)  # [n, S, V/TP]
        logits = gather_from_tensor_model_parallel_region(logits)  # [n, S, V]
    lp = torch.log_softmax(logits.double(), dim=-1)
    return lp[:, :-1].gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)


def _record_training_batches(actor, records: list) -> None:
    """Wrap two of the actor's methods (on this instance only) to keep, for each optimizer step:

    - the log-probs its GIFT micro-batch losses were computed from (``gift_microbatch_loss``'s
      reports, in row order) and ``gift_loss`` of the batch on exactly those, in float64;
    - the log-probs of :func:`reference_logprobs` at the same weights, before the step;
    - the implicit rewards s and the advantages A of the batch.
    """
    from nemo_gift.algorithms import gift_loss
    from nemo_gift.algorithms.normalization import explicit_advantages, implicit_rewards

    make_forward_step = actor.get_actor_forward_output_and_loss_func
    get_loss_and_metrics = actor.get_loss_and_metrics
    cfg = actor.gift.loss
    step_logprobs: list = []

    def recording_forward_step_factory(*args, **kwargs):
        forward_step = make_forward_step(*args, **kwargs)

        def recording_forward_step(data_iterator, model):
            logits, loss_func = forward_step(data_iterator, model)

            def recording_loss_func(logits_shard):
                out = loss_func(logits_shard)
                step_logprobs.append(out[1]["logprobs"].double())  # [mbs, S-1]
                return out

            return logits, recording_loss_func

        return recording_forward_step

    def recording_get_loss_and_metrics(batch, forward_only):
        if forward_only:
            return get_loss_and_metrics(batch, forward_only)
        independent = reference_logprobs(actor, batch["response_tokens"])  # [n, S-1]
        step_logprobs.clear()
        out = get_loss_and_metrics(batch, forward_only)
        used = torch.cat(step_logprobs)  # [n, S-1]
        base, mask, rewards = batch["baseline_logprobs"].double(), batch["mask"], batch["rewards"].double()
        _, metrics = gift_loss(used, base, mask, rewards, G, cfg)
        records.append(
            {
                "gift_loss": {k: float(v) for k, v in metrics.items()},
                "logprobs_vs_independent": float(((used - independent) * mask).abs().max()),
                "implicit_rewards": implicit_rewards(used, base, mask).tolist(),  # s [n]
                "advantages": explicit_advantages(rewards, G, eps=cfg.eps).advantages.tolist(),  # A [n]
            }
        )
        return out

    actor.get_actor_forward_output_and_loss_func = recording_forward_step_factory
    actor.get_loss_and_metrics = recording_get_loss_and_metrics


def fit_gift(rank: int, world_size: int, tp: int, baseline: str, workdir: str) -> dict:
    """Build the run as the example does, fit 2 steps, and report what the test checks."""
    from tests.unit.integrations import _aligner_shims

    _aligner_shims.install()
    t0 = time.perf_counter()
    from nemo_gift.integrations.nemo_aligner import build, cpu_compat

    cpu_compat.apply()
    from nemo_gift.integrations.nemo_aligner.actor import MegatronGPTGiftActorModel
    from nemo_aligner.utils.train_script_utils import resolve_and_create_trainer

    problems = task_problems()
    tokenizer_dir = os.path.join(workdir, "tokenizer")
    if rank == 0:
        build_tokenizer(tokenizer_dir, problems)
    build.register_resolvers()
    cfg, prompts = tiny_recipe(workdir, tokenizer_dir, tp, world_size, baseline)
    if rank == 0:
        with open(prompts, "w") as f:
            f.writelines(json.dumps({"text": p.prompt}) + "\n" for p in problems)
    torch.distributed.barrier()

    trainer = resolve_and_create_trainer(cfg, "reinforce")
    build.initialize_parallel_state(trainer, cfg.model)
    actor = MegatronGPTGiftActorModel(cfg.model, trainer)
    build.keep_reference_policy(actor, cfg.model)
    rm, local = local_reward_client(cfg, tokenizer_dir)
    logger = RecordingLogger()
    gift_trainer = build.build_gift_trainer(cfg, trainer, actor, rm, logger)
    records: list = []
    _record_training_batches(actor, records)
    before = {k: v.detach().clone() for k, v in actor.model.named_parameters()}
    t_fit = time.perf_counter()
    gift_trainer.fit()
    fit_s = time.perf_counter() - t_fit
    after = dict(actor.model.named_parameters())
    return {
        "lightning_device": repr(actor._device),
        "device_is_torch_device": isinstance(actor._device, torch.device),
        "moved": {k: float((after[k].detach() - v).abs().max()) for k, v in before.items()},
        "optim": logger.metrics("train_optim/"),
        "rollouts": logger.metrics("train_rollouts/"),
        "records": records,
        "scored": local.scored,
        "has_reference_copy": actor.init_policy_state_dict is not None,
        "patches": cpu_compat.applied(),
        "fit_s": fit_s,
        "rank_s": time.perf_counter() - t0,
    }
