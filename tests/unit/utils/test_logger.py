"""metrics.jsonl after a kill: a torn last line is dropped with a warning, complete lines are
kept (the resumed run can always start), and damage elsewhere is named by file and line."""

from __future__ import annotations

import json

import pytest

from nemo_gift.utils.logger import METRICS_FILE, MetricsLogger, read_metrics


def _write(run_dir, steps, torn: str = ""):
    lines = [json.dumps({"step": s, "time": 1.0 + s, "train/loss": s / 3, "eval/pass@1": float("nan")}) for s in steps]
    (run_dir / METRICS_FILE).write_text("".join(l + "\n" for l in lines) + torn)
    return lines


def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path, caplog):
    lines = _write(tmp_path, [0, 1, 2], torn='{"step": 3, "time": 4.0, "train/lo')
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [0, 1, 2]
    assert "torn last line 4" in caplog.text
    assert records[1]["train/loss"] == 1 / 3


def test_a_resumed_run_keeps_every_complete_line_and_appends(tmp_path, caplog):
    lines = _write(tmp_path, [0, 1, 2, 3], torn='{"step": 4, "ti')
    logger = MetricsLogger(tmp_path, tensorboard=False, resume_step=2)
    logger.log(3, {"train/loss": 9.0})
    logger.close()
    text = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert text[:3] == lines[:3]  # byte for byte, NaN included
    assert [json.loads(l)["step"] for l in text] == [0, 1, 2, 3]
    assert json.loads(text[3])["train/loss"] == 9.0
    assert not list(tmp_path.glob("*.tmp"))
    assert "torn last line 5" in caplog.text


def test_a_torn_line_without_the_newline_of_the_line_before_is_still_the_last(tmp_path):
    (tmp_path / METRICS_FILE).write_text('{"step": 0, "time": 1.0}\n{"step": 1, "time"')
    assert [r["step"] for r in read_metrics(tmp_path)] == [0]


def test_a_damaged_line_before_the_last_is_refused_naming_the_line(tmp_path):
    _write(tmp_path, [0, 1])
    path = tmp_path / METRICS_FILE
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "garbage", lines[1]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not a JSON record"):
        read_metrics(tmp_path)
    with pytest.raises(ValueError, match="line 2"):
        MetricsLogger(tmp_path, tensorboard=False, resume_step=1)
    assert path.read_text().splitlines()[1] == "garbage"  # nothing rewritten
