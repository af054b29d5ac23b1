"""The trainer with ``rollout.engine=trtllm`` on CPU, against the TensorRT-LLM double
(``tests/doubles/tensorrt_llm``), at TP2 x DP2 (4 gloo ranks, then a resume) and at PP2.

What the double's call log must show (regressions of issue 15's defects 1, 3, 4, 5 and 6):
one ``LLM`` per data-parallel replica, owned by the replica's first rank, on the replica's
devices, and no ``tensorrt_llm`` import elsewhere; the import and the engine built without the
launcher's SLURM/PMI environment and with MPI off; a refit before the first rollout carrying
the warm-started (or resumed) weights; ``sleep`` before every optimizer step and ``wakeup`` +
refit before the next rollout, never a generate while asleep; each DP rank's prompts on its
own replica; every rank training on the same gathered batch; greedy responses after refit
equal to the torch engine's on the same weights; and sampled rollouts whose TensorRT-LLM
log-prob dicts lack the sampled token do not crash.
"""

from __future__ import annotations

import pytest

from nemo_gift.distributed.spawn import run_on_ranks
from tests.unit.generation._trtllm_ranks import LAUNCHER_ENV, reference, train_runs

pytestmark = pytest.mark.distributed

OVERRIDES = [
    "rollout.engine=trtllm", "rollout.group_size=4", "trainer.max_steps=2", "trainer.prompts_per_step=4",
    "trainer.mini_batch_prompts=4", "trainer.micro_batch_size=8", "trainer.eval_every=1", "data.eval_size=4",
    "sft.steps=2", "sft.batch_size=16", "checkpoint.every=1", "logging.progress_bar=false",
    "logging.tensorboard=false", "logging.plots=false",
    # The tiny model's rollouts may all score 0 (no gradient); decoupled weight decay still moves
    # every weight at every step, so each refit must carry new weights.
    "optim.lr=1.0e-3", "optim.warmup_steps=0", "optim.weight_decay=0.1",
]


def _compose(tmp_path, extra):
    from nemo_gift.launcher.main import compose

    return compose("gift_tiny", OVERRIDES + [f"run_dir={tmp_path / 'run'}", f"sft.cache_dir={tmp_path / 'sft'}",
                                             *extra])


def _owner_events(log, rank):
    """The owner's engine calls and optimizer steps, per-worker duplicates merged."""
    out = []
    for e in log[rank]:
        if e["event"] in ("sleep", "wakeup", "update_weights") and out and out[-1]["event"] == e["event"]:
            continue
        out.append(e)
    return out


def _runs(events):
    """Split one process's events into runs (each starts at an llm_init)."""
    runs = []
    for e in events:
        if e["event"] == "llm_init":
            runs.append([])
        if runs:
            runs[-1].append(e)
    return runs


def _check_call_order(run, first_digest):
    names = [e["event"] for e in run]
    first_gen = names.index("generate")
    finals = [i for i, n in enumerate(names) if n == "update_weights_finalize"]
    assert finals and finals[0] < first_gen, f"no refit before the first rollout: {names[:first_gen + 1]}"
    if first_digest is None:  # no warm start: the policy's initial weights, not the engine's dummy ones
        assert run[finals[0]]["digest"] != run[0]["weights_digest"]
    else:
        assert run[finals[0]]["digest"] == first_digest, "the first refit did not carry the warm-started/resumed weights"
    asleep, refit_since_wake, last = False, True, None
    for i, n in enumerate(names):
        if n == "sleep":
            asleep = True
        elif n == "wakeup":
            asleep, refit_since_wake = False, False
        elif n == "update_weights_finalize":
            refit_since_wake = True
        elif n == "generate":
            assert not asleep, f"generate while asleep at call {i}: {names}"
            assert refit_since_wake, f"generate after wakeup without a refit at call {i}: {names}"
        elif n == "optimizer_step":
            assert asleep, f"optimizer step {i} while the engine was awake: {names}"
        last = n
    assert last == "shutdown"
    return names.count("optimizer_step")


def _final_greedy(run):
    """Prompts and responses of the last refit's greedy generations (the final evaluation)."""
    last_final = max(i for i, e in enumerate(run) if e["event"] == "update_weights_finalize")
    calls = [e for e in run[last_final:] if e["event"] == "generate" and e["greedy"]]
    return [p for c in calls for p in c["prompts"]], [r[0] for c in calls for r in c["responses"]]


def _train_prompts(run):
    return [e["prompts"] for e in run if e["event"] == "generate" and not e["greedy"]]


def _check_ownership(log, owners, devices, world):
    assert set(log) <= set(range(world))
    for rank in range(world):
        events = [e["event"] for e in log.get(rank, [])]
        if rank in owners:
            inits = [e for e in log[rank] if e["event"] == "llm_init"]
            assert inits and all(e["devices"] == devices[rank] and e["tensor_parallel_size"] == len(devices[rank])
                                 for e in inits)
            for e in inits:  # the owner's environment when it built the LLM
                assert e["orchestrator_type"] == "ray" and e["enable_sleep"] and e["load_format"] == "dummy"
                assert e["env"]["TLLM_DISABLE_MPI"] == "1" and e["env"]["TLLM_RAY_FORCE_LOCAL_CLUSTER"] == "1"
                assert e["env"]["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, devices[rank]))
                assert e["launcher_vars"] == [] and e["kv_cache_config"]["enable_block_reuse"] is False
            imports = [e for e in log[rank] if e["event"] == "import"]
            assert len(imports) == 1 and imports[0]["mpi_disabled"] and imports[0]["launcher_vars"] == []
        else:
            assert set(events) <= {"optimizer_step"}, f"rank {rank} is no owner but called the engine: {set(events)}"


def _reference(raw, tmp_path, checkpoints, prompts, steps):
    from nemo_gift.models.policy.checkpoint import latest_checkpoint

    paths = {"sft": str(latest_checkpoint(key)) for key in (tmp_path / "sft").glob("*")}
    paths.update({name: str(tmp_path / "run" / "checkpoints" / f"step_{step:06d}") for name, step in checkpoints.items()})
    return run_on_ranks(reference, world_size=1, args=(raw, paths, prompts, steps), timeout=300)[0]


def _check_ranks_agree(out, owners, steps):
    histories = [o["histories"] for o in out]
    assert all(h == histories[0] for h in histories), "the ranks did not train on the same batch"
    assert [[r["step"] for r in h] for h in histories[0]] == steps
    for rank, o in enumerate(out):
        # the launcher's environment is back after the owner built its LLM; MPI stays off there
        assert o["env_after"] == {"SLURM_JOB_ID": "4242", "TLLM_DISABLE_MPI": "1" if rank in owners else None}
        assert o["imported"] == (rank in owners)


def test_trainer_tp2_dp2_with_resume(tmp_path):
    from tests.doubles.trtllm_double_log import read

    state = tmp_path / "double"
    raw_a = _compose(tmp_path, ["parallel.tensor_model_parallel_size=2", "cluster.tasks_per_node=4"])
    raw_b = dict(raw_a, trainer=dict(raw_a["trainer"], max_steps=3))  # checkpoint.resume=auto: from step 2
    out = run_on_ranks(train_runs, world_size=4, args=([raw_a, raw_b], str(state)), env=LAUNCHER_ENV, timeout=560)

    owners = {0: [0, 1], 2: [2, 3]}  # one LLM per DP replica (TP group), on the replica's devices
    log = read(state)
    _check_ownership(log, owners, owners, 4)
    _check_ranks_agree(out, owners, [[0, 1, 2], [3]])
    runs = {rank: _runs(_owner_events(log, rank)) for rank in owners}
    assert all(len(r) == 2 for r in runs.values())  # one LLM per run
    finals = {rank: _final_greedy(runs[rank][0]) for rank in owners}
    ref = _reference(raw_a, tmp_path, {"step2": 2, "step3": 3}, {"step2": finals[0][0] + finals[2][0]}, 2)
    for rank in owners:
        run_a, run_b = runs[rank]
        assert _check_call_order(run_a, ref["digests"]["sft"]) == 2  # after the warm start
        assert _check_call_order(run_b, ref["digests"]["step2"]) == 1  # after the resume
        last = [e for e in run_b if e["event"] == "update_weights_finalize"][-1]
        assert last["digest"] == ref["digests"]["step3"]
    # the final evaluation's greedy responses, after the last refit, are the torch engine's
    assert finals[0][1] + finals[2][1] == ref["greedy"]["step2"]
    # each DP rank's half of every rollout batch went to its own replica's engine
    for step in range(2):
        assert _train_prompts(runs[0][0])[step] + _train_prompts(runs[2][0])[step] == ref["batches"][step]


def test_trainer_pp2(tmp_path):
    from tests.doubles.trtllm_double_log import read

    state = tmp_path / "double"
    # no warm start: the random policy's greedy responses are long, a stronger check than EOS at once
    raw = _compose(tmp_path, ["parallel.pipeline_model_parallel_size=2", "cluster.tasks_per_node=2", "sft.steps=0"])
    out = run_on_ranks(train_runs, world_size=2, args=([raw], str(state)), env=LAUNCHER_ENV, timeout=400)

    owners = {0: [0, 1]}  # the PP group is the replica: one LLM with one worker per stage's device
    log = read(state)
    _check_ownership(log, owners, owners, 2)
    _check_ranks_agree(out, owners, [[0, 1, 2]])
    (run,) = _runs(_owner_events(log, 0))
    prompts, responses = _final_greedy(run)
    ref = _reference(raw, tmp_path, {"step2": 2}, {"step2": prompts}, 2)
    assert _check_call_order(run, None) == 2
    assert [e for e in run if e["event"] == "update_weights_finalize"][-1]["digest"] == ref["digests"]["step2"]
    assert responses == ref["greedy"]["step2"] and max(map(len, responses)) > 1
    assert _train_prompts(run) == ref["batches"]
