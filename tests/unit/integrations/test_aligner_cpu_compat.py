"""Every NeMo/Aligner CPU patch is still needed, and does what it says (needs the aligner venv for
the scenarios; the rules themselves are checked everywhere).

``nemo_gift/integrations/nemo_aligner/cpu_compat.py`` patches NeMo 2.4.1 and NeMo-Aligner 0.7.0
where they assume CUDA, Apex or an NGC container. For each patch the scenario that needs it runs
without it and must fail as the patch's reason says, then with it and must pass
(``_aligner_patch_scenarios``). When an upgrade makes a patch unnecessary, its "without" run passes
and this test names the patch to drop.
"""

import importlib.util

import pytest

from nemo_gift.integrations.nemo_aligner import cpu_compat

HAVE_ALIGNER = importlib.util.find_spec("nemo_aligner") is not None

# What each scenario raises without its patch (type and a piece of the message).
EXPECTED_FAILURE = {
    "apex_strategy": ("ImportError", "Apex was not found"),
    "nvidia_version": ("TypeError", "expected string or bytes-like object"),
    "lazy_layer_spec": ("NameError", "TESpecProvider"),
    "tp_attribute_defaults": ("NameError", "set_defaults_if_not_set_tensor_model_parallel_attributes"),
    "cp_stream": ("RuntimeError", "torch.cuda.Stream requires CUDA"),
    "apex_param_groups": ("NameError", "listify_model"),
    "model_cuda": ("TypeError", "must be int, not torch.device"),
    "legacy_cuda_tensors": ("AssertionError", "Torch not compiled with CUDA enabled"),
    "model_parallel_seed": ("Exception", "model-parallel-rng is not added"),
    "gloo_allgather_scalar": ("RuntimeError", "invalid tensor size"),
    "apex_grad_norm": ("NameError", "multi_tensor_applier"),
}


def test_every_patch_has_a_reason_a_stack_and_a_scenario():
    names = [p.name for p in cpu_compat.PATCHES]
    assert len(names) == len(set(names))
    assert set(names) == set(EXPECTED_FAILURE)
    for patch in cpu_compat.PATCHES:
        assert len(patch.reason) > 40 and patch.needed_on.startswith(cpu_compat.STACK), patch.name


def test_apply_is_a_no_op_with_cuda(monkeypatch):
    monkeypatch.setattr(cpu_compat, "cpu_mode", lambda: False)
    assert cpu_compat.apply() == []


def test_an_unknown_skip_name_is_refused(monkeypatch):
    monkeypatch.setattr(cpu_compat, "cpu_mode", lambda: True)
    monkeypatch.setenv(cpu_compat.SKIP_ENV, "apex_strategy,no_such_patch")
    with pytest.raises(ValueError, match=r"unknown patches \['no_such_patch'\]"):
        cpu_compat.apply()


@pytest.mark.distributed
@pytest.mark.skipif(not HAVE_ALIGNER, reason="nemo_aligner is not installed (make test-aligner)")
def test_each_patch_is_still_needed_and_fixes_its_scenario():
    from nemo_gift.distributed.spawn import run_on_ranks
    from tests.unit.integrations import _aligner_patch_scenarios

    (results,) = run_on_ranks(_aligner_patch_scenarios.check_every_patch, 1, timeout=300)
    assert list(results) == [p.name for p in cpu_compat.PATCHES]
    for name, (kind, message) in EXPECTED_FAILURE.items():
        without, with_patch = results[name]["without"], results[name]["with"]
        assert not without["ok"], f"{name} is no longer needed: its scenario passes without it ({without})"
        assert without["error"].startswith(kind + ":") and message in without["error"], (name, without)
        assert with_patch["ok"], (name, with_patch)
    assert results["apex_param_groups"]["with"]["value"] == [1, 1]
    assert results["legacy_cuda_tensors"]["with"]["value"] == [[1.0] * 3] * 2
    assert results["apex_grad_norm"]["with"]["value"] == 5.0
