"""benchmarks/rl_step.py's project side, smallest preset, one step (no TRL): it keeps running,
the responses have the forced lengths, and every time of the breakdown is reported."""

import torch

from benchmarks import rl_step
from nemo_gift.algorithms.interfaces import GenerationOutput, SamplingConfig
from nemo_gift.distributed.spawn import run_on_ranks

ARGV = ["--preset", "small", "--vocab", "256", "--prompts", "2", "--group", "2", "--prompt-len", "4",
        "--min-new", "3", "--max-new", "6", "--micro-batch", "2", "--warmup", "0", "--rounds", "1"]


def test_forced_lengths_cut_the_engine_output():
    class Engine:  # an engine that returns the rows it is asked for, 10 + column as tokens
        def generate(self, prompts, n, sampling):
            rows, width = len(prompts) * n, sampling.max_new_tokens
            assert sampling.stop_token_ids == ()
            tokens = 10 + torch.arange(width).expand(rows, width)
            return GenerationOutput(
                tokens=tokens, lengths=torch.full((rows,), width), logprobs=-torch.ones(rows, width),
                finish_reasons=["length"] * rows, prompt_index=torch.arange(len(prompts)).repeat_interleave(n))

    out = rl_step.ForcedLengths(Engine(), torch.tensor([[3, 1, 2]])).generate([[5]], 3, SamplingConfig(stop_token_ids=(2,)))
    assert out.tokens.tolist() == [[10, 11, 12], [10, 0, 0], [10, 11, 0]]
    assert out.logprobs.tolist() == [[-1, -1, -1], [-1, 0, 0], [-1, -1, 0]]
    assert out.lengths.tolist() == [3, 1, 2] and out.responses() == [[10, 11, 12], [10], [10, 11]]


def test_project_step_runs_with_the_drawn_lengths():
    args = rl_step._args(ARGV)
    (res,) = run_on_ranks(rl_step.project_steps, world_size=1, args=(args, "gift", 1), timeout=300)
    (step,) = res["steps"]
    assert res["params"] == sum(  # embedding, output layer, 2 x (QKV with bias, proj, SwiGLU, 2 norms), final norm
        [2 * 256 * 128, 2 * ((128 + 1) * (128 + 2 * 64) + 128 * 128 + 3 * 128 * 352 + 2 * 128), 128])
    assert step["train/response_length"] == rl_step.length_table(args)[0].float().mean().item()
    assert step["wall"] > 0 and all(step[k] >= 0 for k in rl_step.TIME_KEYS)
    assert step["rollout"] > 0 and step["update"] > 0 and step["peak_rss_mib"] > 0
