"""Checkpoint formats the Aligner actor restores from (no NeMo needed for these checks)."""

import json
import tarfile

import pytest

from nemo_gift.integrations.nemo_aligner.availability import INSTALL_HINT, aligner_unavailable_reason, require_aligner
from nemo_gift.integrations.nemo_aligner.checkpoint import checkpoint_format, merged_model_config, restore_actor


@pytest.fixture
def checkpoints(tmp_path):
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    (unpacked / "model_config.yaml").write_text("num_layers: 2\n")
    archive = tmp_path / "policy.nemo"
    with tarfile.open(archive, "w") as tar:
        tar.add(unpacked / "model_config.yaml", arcname="./model_config.yaml")
    nemo2 = tmp_path / "nemo2"
    (nemo2 / "context").mkdir(parents=True)
    (nemo2 / "weights").mkdir()
    (nemo2 / "context" / "io.json").write_text("{}")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    return {"nemo1_archive": archive, "nemo1_dir": unpacked, "nemo2": nemo2, "hf": hf, "root": tmp_path}


def test_formats_are_told_apart(checkpoints):
    assert checkpoint_format(checkpoints["nemo1_archive"]) == "nemo1"
    assert checkpoint_format(checkpoints["nemo1_dir"]) == "nemo1"
    assert checkpoint_format(checkpoints["nemo2"]) == "nemo2"
    assert checkpoint_format(checkpoints["hf"]) == "hf"


def test_unknown_paths_fail_saying_what_was_expected(checkpoints):
    empty = checkpoints["root"] / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="NeMo 2 directory"):
        checkpoint_format(empty)
    text = checkpoints["root"] / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a .nemo archive"):
        checkpoint_format(text)
    with pytest.raises(FileNotFoundError):
        checkpoint_format(checkpoints["root"] / "missing")


def test_hf_checkpoint_is_refused_with_the_conversion_command(checkpoints):
    for fn in (lambda p: merged_model_config(p, {}), lambda p: restore_actor(object, {}, None, p)):
        with pytest.raises(ValueError, match="nemo_gift.integrations.nemo_aligner.checkpoint HF_DIR OUT_DIR"):
            fn(checkpoints["hf"])


def test_availability_reason_names_what_to_install():
    reason = aligner_unavailable_reason()
    if reason is None:
        require_aligner()  # importable here: no error
        return
    assert "nemo" in reason
    with pytest.raises(ImportError, match="scripts/install_aligner_env.sh"):
        require_aligner()
    assert "containers/Dockerfile.aligner" in INSTALL_HINT and "make test-aligner" in INSTALL_HINT
