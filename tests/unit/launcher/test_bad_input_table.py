"""The bad-input table: invocations of ``launcher/run.py`` that must be refused before any work.

Each row asserts exit code 2, no traceback, the offending key (or file) in the message, nothing
written anywhere under the test's directory (run_dir, the files it names, the working
directory), and under 10 s of CPU time: the work a refusal does. (Wall time on a shared CI host
measures its neighbours too: a real launcher took 2-3 s idle and up to 16 s while the machine
ran five test suites.) The rows run in-process through ``nemo_gift.launcher.main.main`` (an
accepted config would reach ``run_local``, which is replaced so that nothing trains); a few run
again as real subprocesses of ``launcher/run.py``.

Not here: the ``cluster.*`` field checks, a missing ``sbatch``, the run-directory lock and
signals (issue 16's).
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nemo_gift.launcher import main as launcher
from nemo_gift.launcher.main import load

from ..config._fixtures import tree, write_checkpoint_metadata

REPO = Path(__file__).resolve().parents[3]
LIMIT_S = 10.0

# (id, overrides after conf=gift_tiny and run_dir={run}, a fragment the message must hold, setup)
# Placeholders: {run} the run directory, {file} an existing file, {txt} an existing .txt file,
# {dir} an existing directory that is no checkpoint, {hf} an HF directory whose config.json says
# vocab_size 32000. setup "checkpoint": RUN_DIR holds a
# checkpoint trained with the unchanged config; "corrupt": its metadata.json is torn.
TABLE = [
    # the rows
    ("optim.lr=nan", ["optim.lr=nan"], "optim.lr=nan", None),
    ("optim.lr=inf", ["optim.lr=inf"], "optim.lr=inf", None),
    ("optim.clip_grad=nan", ["optim.clip_grad=nan"], "optim.clip_grad=nan", None),
    ("rollout.temperature=nan", ["rollout.temperature=nan"], "rollout.temperature=nan", None),
    ("resume optim.lr", ["optim.lr=5e-3"], "optim.lr: 0.0001 -> 0.005", "checkpoint"),
    ("resume rollout.group_size", ["rollout.group_size=4"], "rollout.group_size: 8 -> 4", "checkpoint"),
    ("resume seed", ["seed=7"], "seed: 1234 -> 7", "checkpoint"),
    ("resume trainer.algorithm", ["trainer.algorithm=grpo"], 'trainer.algorithm: "gift" -> "grpo"', "checkpoint"),
    ("reward.timeout_s=nan", ["reward.timeout_s=nan"], "reward.timeout_s=nan", None),
    ("reward.timeout_s=0", ["reward.timeout_s=0"], "reward.timeout_s=0.0", None),
    ("data.max_prompt_length=3", ["data.max_prompt_length=3"], "data.max_prompt_length=3", None),
    ("reward.verifier=nonexistent", ["reward.verifier=nonexistent"], "reward.verifier='nonexistent'", None),
    ("model.vocab_size=10", ["model.vocab_size=10"], "model.vocab_size=10", None),
    ("sft.cache_dir=<file>", ["sft.cache_dir={file}"], "sft.cache_dir=", None),
    ("run_dir=<file>", ["run_dir={file}"], "run_dir=", None),
    ("run_dir=''", ["run_dir="], "run_dir=''", None),
    ("name=../../..", ["name=../../.."], "name='../../..'", None),
    ("gsm8k verifier on arithmetic", ["reward.verifier=gsm8k"], "reward.verifier=gsm8k", None),
    # numbers: finite and in range
    ("optim.min_lr=nan", ["optim.min_lr=nan"], "optim.min_lr=nan", None),
    ("optim.min_lr>lr", ["optim.min_lr=1e-2"], "optim.min_lr=0.01", None),
    ("optim.adam_beta1=1", ["optim.adam_beta1=1.0"], "optim.adam_beta1=1.0", None),
    ("optim.adam_beta2=nan", ["optim.adam_beta2=nan"], "optim.adam_beta2=nan", None),
    ("optim.weight_decay<0", ["optim.weight_decay=-0.1"], "optim.weight_decay=-0.1", None),
    ("optim.warmup_steps<0", ["optim.warmup_steps=-1"], "optim.warmup_steps=-1", None),
    ("rollout.top_p=nan", ["rollout.top_p=nan"], "rollout.top_p=nan", None),
    ("rollout.top_k<0", ["rollout.top_k=-1"], "rollout.top_k=-1", None),
    ("rollout.top_k=1 (greedy rollouts)", ["rollout.top_k=1"], "rollout.top_k=1 decodes greedily", None),
    ("rollout.temperature=0 (greedy rollouts)", ["rollout.temperature=0"], "rollout.temperature=0", None),
    ("rollout.eval_temperature=inf", ["rollout.eval_temperature=inf"], "rollout.eval_temperature=inf", None),
    ("rollout.trtllm_gpu_memory_fraction=0", ["rollout.trtllm_gpu_memory_fraction=0"],
     "rollout.trtllm_gpu_memory_fraction=0.0", None),
    ("rollout.reuse_engine_logprobs with trtllm", ["rollout.engine=trtllm", "rollout.reuse_engine_logprobs=true"],
     "rollout.reuse_engine_logprobs=true needs rollout.engine=torch", None),
    ("gift.beta=nan", ["gift.beta=nan"], "beta=nan", None),
    ("gift.eps=inf", ["gift.eps=inf"], "eps=inf", None),
    ("grpo.clip_eps=nan", ["grpo.clip_eps=nan"], "clip_eps=nan", None),
    ("sft.lr=nan", ["sft.lr=nan"], "sft.lr=nan", None),
    ("sft.steps<0", ["sft.steps=-1"], "sft.steps=-1", None),
    ("sft.seed<0", ["sft.seed=-1"], "sft.seed=-1", None),
    ("seed<0", ["seed=-5"], "seed=-5", None),
    ("data.eval_size=0", ["data.eval_size=0"], "data.eval_size=0", None),
    ("data.arithmetic.heldout_fraction=nan", ["data.arithmetic.heldout_fraction=nan"], "heldout_fraction", None),
    ("model.rotary_base=nan", ["model.rotary_base=nan"], "model.rotary_base=nan", None),
    ("model.norm_epsilon=0", ["model.norm_epsilon=0"], "model.norm_epsilon=0.0", None),
    ("trainer.logprob_chunk_size=0", ["trainer.logprob_chunk_size=0"], "trainer.logprob_chunk_size=0", None),
    ("trainer.eval_every<0", ["trainer.eval_every=-1"], "trainer.eval_every=-1", None),
    ("checkpoint.keep_last=0", ["checkpoint.keep_last=0"], "checkpoint.keep_last=0", None),
    ("reward.math_verify_workers=0", ["reward.math_verify_workers=0"], "reward.math_verify_workers=0", None),
    # names against their registries, and the reward against the task
    ("reward.device=gpu0", ["reward.device=gpu0"], "reward.device='gpu0'", None),
    ("arithmetic_reversed on forward answers", ["reward.verifier=arithmetic_reversed"],
     "reward.verifier=arithmetic_reversed", None),
    ("reward model on arithmetic", ["reward.kind=reward_model", "reward.reward_model_path={dir}"],
     "reward.kind=reward_model", None),
    ("warm start on gsm8k", ["data.dataset=gsm8k", "data.train_path={gsm8k}", "data.eval_path={gsm8k}",
                             "tokenizer.kind=hf", "tokenizer.path={dir}", "reward.verifier=gsm8k"], "sft.steps=800", None),
    ("name with a space", ["name=a b"], "name='a b'", None),
    # paths: kind and writability
    ("data.train_path=<.txt file>", ["data.dataset=gsm8k", "data.train_path={txt}", "data.eval_path={gsm8k}",
                                     "tokenizer.kind=hf", "tokenizer.path={dir}", "reward.verifier=gsm8k",
                                     "sft.steps=0"], "data.train_path=", None),
    ("init.hf_checkpoint=<file>", ["init.hf_checkpoint={file}"], "init.hf_checkpoint=", None),
    ("init.hf_checkpoint of another vocabulary", ["init.hf_checkpoint={hf}"], "model.vocab_size=18 != 32000", None),
    ("sft.cache_dir under a file", ["sft.cache_dir={file}/cache"], "sft.cache_dir=", None),
    ("checkpoint.resume=<file>", ["checkpoint.resume={file}"], "checkpoint.resume=", None),
    # resume: where from
    ("checkpoint.resume=<no checkpoint>", ["checkpoint.resume={dir}"], "checkpoint.resume", None),
    ("resume from torn metadata.json", [], "checkpoint.resume", "corrupt"),
    ("resume switching the optimizer kind", ["parallel.use_distributed_optimizer=true"],
     "was saved with parallel.use_distributed_optimizer=false", "checkpoint"),
]

SUBPROCESS = ["optim.lr=nan", "resume optim.lr", "run_dir=<file>", "name=../../.."]


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Paths for the placeholders; the working directory is inside tmp_path too, so that a
    refused ``run_dir=''`` or ``name=../../..`` would have written where the test looks."""
    cwd = tmp_path / "cwd" / "a" / "b"
    cwd.mkdir(parents=True)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{"vocab_size": 32000}')
    monkeypatch.chdir(cwd)
    calls = []
    monkeypatch.setattr(launcher, "run_local", lambda cfg, path: calls.append(path) or 0)
    fixture = REPO / "tests" / "fixtures" / "data" / "gsm8k.jsonl"
    return {"root": tmp_path, "run": tmp_path / "run", "file": tmp_path / "a_file", "txt": tmp_path / "notes.txt",
            "dir": tmp_path / "a_dir", "hf": tmp_path / "hf", "gsm8k": fixture, "calls": calls, "cwd": cwd}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _argv(env, overrides, setup):
    run = env["run"]
    if setup:
        path = write_checkpoint_metadata(run, load("gift_tiny", [f"run_dir={run}"]))
        if setup == "corrupt":
            text = (path / "metadata.json").read_text()
            (path / "metadata.json").write_text(text[: len(text) // 2])
    args = [o.format(**env) for o in overrides]
    if not any(a.startswith("run_dir=") for a in args):
        args.append(f"run_dir={run}")
    return ["conf=gift_tiny", *args]


def test_the_table_has_at_least_40_rows():
    assert len(TABLE) >= 40
    assert len({row[0] for row in TABLE}) == len(TABLE)


@pytest.mark.parametrize("case", TABLE, ids=[row[0] for row in TABLE])
def test_bad_invocation_is_refused_before_any_work(case, env, capsys):
    _, overrides, fragment, setup = case
    argv = _argv(env, overrides, setup)
    before = tree(env["root"])
    start = time.process_time()
    code = launcher.main(argv)
    cpu = time.process_time() - start
    out, err = capsys.readouterr()
    assert code == 2, (argv, out, err)
    assert "Traceback" not in out + err
    assert fragment in err, err
    assert tree(env["root"]) == before, "something was written"
    assert not env["calls"], "the run was started"
    assert cpu < LIMIT_S, cpu


@pytest.mark.parametrize("case_id", SUBPROCESS)
def test_bad_invocation_is_refused_by_the_real_launcher(case_id, env):
    _, overrides, fragment, setup = next(row for row in TABLE if row[0] == case_id)
    argv = _argv(env, overrides, setup)
    before = tree(env["root"])
    start = _children_cpu()
    proc = subprocess.run([sys.executable, str(REPO / "launcher" / "run.py"), *argv], cwd=env["cwd"],
                          capture_output=True, text=True, timeout=120)
    cpu = _children_cpu() - start
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert fragment in proc.stderr, proc.stderr
    assert tree(env["root"]) == before
    assert cpu < LIMIT_S, cpu


def test_accepted_resumes_reach_the_run(env, capsys):
    """Control: the same checkpoint with an unchanged config, with changes that are not trajectory
    changes, and with an allowed change, is accepted."""
    for extra in ([], ["logging.plots=false", "checkpoint.every=1", "trainer.eval_every=5", "trainer.max_steps=300"],
                  ["optim.lr=5e-3", "checkpoint.resume_config_change=allow"]):
        run = env["root"] / f"run{len(env['calls'])}"
        write_checkpoint_metadata(run, load("gift_tiny", [f"run_dir={run}"]))
        assert launcher.main(["conf=gift_tiny", f"run_dir={run}", *extra]) == 0, capsys.readouterr().err
    assert len(env["calls"]) == 3
