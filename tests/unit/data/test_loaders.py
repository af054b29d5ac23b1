"""Every loader on its fixture, in every source format, and on deliberately broken copies."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nemo_gift.data import (
    GSM8K_INSTRUCTION,
    DatasetError,
    DatasetFormatError,
    EmptyDatasetError,
    PromptRecord,
    load_records,
)
from nemo_gift.rewards import Reason, get_verifier

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "data"
FILES = {
    "gsm8k": "gsm8k.jsonl",
    "math": "math_lighteval.jsonl",
    "dapo": "dapo_math_17k.jsonl",
    "aime": "aime_2024.jsonl",
    "infinity_instruct": "infinity_instruct.jsonl",
}
# How a correct response looks in each dataset's answer format.
ANSWER_FORMAT = {"gsm8k": "#### {}", "math": "so \\boxed{{{}}}", "dapo": "work\nAnswer: {}", "aime": "\\boxed{{{}}}"}


def rows_of(name: str) -> list[dict]:
    with open(FIXTURES / FILES[name], encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, rows: list) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


def comparable(records: list[PromptRecord]) -> list[tuple]:
    return [(r.prompt, r.ground_truth, r.source, r.verifier) for r in records]


@pytest.mark.parametrize("name", sorted(FILES))
def test_fixture_loads(name):
    records = load_records(name, FIXTURES / FILES[name])
    assert len(records) == len(rows_of(name)) == 20
    for i, r in enumerate(records, start=1):
        assert r.source == name
        assert r.meta["row"] == i and r.meta["file"].endswith(FILES[name])
        assert isinstance(r.prompt, list) and r.prompt[-1]["role"] == "user"
        if name == "infinity_instruct":
            assert r.verifier is None and r.ground_truth == ""
        else:
            assert r.verifier == name and r.ground_truth


@pytest.mark.parametrize("name", sorted(ANSWER_FORMAT))
def test_fixture_ground_truths_pass_their_own_verifier(name):
    """Loader output and verifier input agree: a response in the right format with the gold answer is CORRECT."""
    verifier = get_verifier(name)
    for r in load_records(name, FIXTURES / FILES[name]):
        result = verifier(ANSWER_FORMAT[name].format(r.ground_truth), r.ground_truth)
        assert result.reason is Reason.CORRECT, (r.ground_truth, result)


def test_normalization_details():
    gsm = load_records("gsm8k", FIXTURES / FILES["gsm8k"])
    assert gsm[7].ground_truth == "1480"  # "#### 1,480" in the fixture
    assert gsm[0].prompt[0]["content"].endswith(GSM8K_INSTRUCTION)
    assert "####" in gsm[0].meta["solution"]
    math = load_records("math", FIXTURES / FILES["math"])
    assert math[12].ground_truth == "\\frac{\\sqrt{2}}{2}"  # nested braces
    assert math[0].meta["level"] == "Level 1" and math[0].meta["type"] == "Algebra"
    aime = load_records("aime", FIXTURES / FILES["aime"])
    assert aime[0].ground_truth == "56"  # "056" in the fixture
    dapo = load_records("dapo", FIXTURES / FILES["dapo"])
    assert dapo[0].prompt == rows_of("dapo")[0]["prompt"]  # used as is
    assert dapo[0].meta["reward_model"]["style"] == "rule-lighteval/MATH_v2"
    inst = load_records("infinity_instruct", FIXTURES / FILES["infinity_instruct"])
    assert inst[0].meta["reference_response"].startswith("Steady beam")
    multi = next(r for r in inst if r.meta["id"] == 5100)
    assert [m["role"] for m in multi.prompt] == ["user", "assistant", "user"]
    system = next(r for r in inst if r.meta["id"] == 5101)
    assert system.prompt[0] == {"role": "system", "content": "You answer in one word."}
    open_ended = next(r for r in inst if r.meta["id"] == 5102)
    assert "reference_response" not in open_ended.meta


def test_instruction_override():
    records = load_records("math", FIXTURES / FILES["math"], instruction="")
    assert records[0].prompt[0]["content"] == rows_of("math")[0]["problem"]
    records = load_records("aime", FIXTURES / FILES["aime"], instruction="Answer with an integer.")
    assert records[0].prompt[0]["content"].endswith("\nAnswer with an integer.")


@pytest.mark.parametrize("name", sorted(FILES))
def test_parquet_matches_jsonl(name, tmp_path):
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows_of(name)), path)
    assert comparable(load_records(name, path)) == comparable(load_records(name, FIXTURES / FILES[name]))


def test_save_to_disk_directories(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = rows_of("dapo")
    expected = comparable(load_records("dapo", FIXTURES / FILES["dapo"]))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    assert comparable(load_records("dapo", tmp_path / "single")) == expected
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:3])})
    dd.save_to_disk(str(tmp_path / "dict"))
    assert comparable(load_records("dapo", tmp_path / "dict", split="train")) == expected
    assert len(load_records("dapo", tmp_path / "dict", split="test")) == 3
    with pytest.raises(DatasetError, match="pass split="):
        load_records("dapo", tmp_path / "dict")
    with pytest.raises(DatasetError, match="no split 'validation'"):
        load_records("dapo", tmp_path / "dict", split="validation")


def test_hub_snapshot_directory_with_splits(tmp_path):
    rows = rows_of("gsm8k")
    (tmp_path / "main").mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:15]), tmp_path / "main" / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows[15:]), tmp_path / "main" / "test-00000-of-00001.parquet")
    assert len(load_records("gsm8k", tmp_path, split="train")) == 15
    assert len(load_records("gsm8k", tmp_path, split="test")) == 5
    assert len(load_records("gsm8k", tmp_path)) == 20
    with pytest.raises(DatasetError, match="for split 'validation'"):
        load_records("gsm8k", tmp_path, split="validation")


def test_dedupe_and_limit(tmp_path):
    rows = rows_of("dapo")
    path = write_jsonl(tmp_path / "dup.jsonl", rows * 3)
    assert len(load_records("dapo", path)) == 20
    assert len(load_records("dapo", path, dedupe=False)) == 60
    assert len(load_records("dapo", path, limit=5)) == 5
    with pytest.raises(ValueError):
        load_records("dapo", path, limit=0)


def _del(key):
    def f(row):
        row.pop(key)

    return f


def _set(path, value):
    def f(row):
        target = row
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value

    return f


BROKEN = [
    ("gsm8k", 3, _del("question"), "question", "missing"),
    ("gsm8k", 0, _set(["question"], 5), "question", "expected a string"),
    ("gsm8k", 19, _set(["answer"], "It is 5."), "answer", "no '####"),
    ("gsm8k", 5, _set(["answer"], "#### five"), "answer", "not a number"),
    ("math", 2, _set(["solution"], "The answer is 5."), "solution", "\\boxed"),
    ("math", 4, _set(["solution"], "so \\boxed{5"), "solution", "\\boxed"),
    ("math", 6, _del("level"), "level", "missing"),
    ("math", 8, _set(["problem"], "   "), "problem", "empty"),
    ("dapo", 1, _set(["prompt"], "just text"), "prompt", "list"),
    ("dapo", 2, _set(["prompt", 0, "role"], "robot"), "prompt[0].role", "robot"),
    ("dapo", 3, _set(["prompt", 0, "content"], None), "prompt[0].content", "non-empty string"),
    ("dapo", 4, _set(["prompt", 0, "role"], "assistant"), "prompt", "last message"),
    ("dapo", 5, _set(["reward_model"], {"style": "rule"}), "reward_model.ground_truth", "missing"),
    ("dapo", 6, _set(["reward_model", "ground_truth"], True), "reward_model.ground_truth", "expected a string"),
    ("dapo", 7, _set(["reward_model", "ground_truth"], "$$"), "reward_model.ground_truth", "empty"),
    ("aime", 9, _set(["answer"], "1000"), "answer", "0-999"),
    ("aime", 10, _set(["answer"], "x"), "answer", "0-999"),
    ("aime", 11, _del("problem"), "problem", "missing"),
    ("infinity_instruct", 12, _set(["conversations"], []), "conversations", "non-empty list"),
    ("infinity_instruct", 13, _set(["conversations", 0, "from"], "bot"), "conversations[0].from", "bot"),
    ("infinity_instruct", 14, _set(["conversations", 1, "value"], 3), "conversations[1].value", "non-empty string"),
    ("infinity_instruct", 15, _set(["conversations"], [{"from": "gpt", "value": "hi"}]), "conversations", "no human"),
    ("infinity_instruct", 16, _set(["conversations", 0], "hello"), "conversations[0]", "expected an object"),
]


def _broken_rows(name, index, mutate):
    rows = rows_of(name)
    mutate(rows[index])
    return rows


def _parquet_can_hold(case) -> bool:
    try:
        pa.Table.from_pylist(_broken_rows(*case[:3]))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return False  # e.g. an int in a string column: only JSONL can hold that row
    return True


BROKEN_CASES = [("jsonl", *b) for b in BROKEN] + [("parquet", *b) for b in BROKEN if _parquet_can_hold(b)]


@pytest.mark.parametrize(
    "fmt,name,index,mutate,field,fragment", BROKEN_CASES, ids=[f"{b[0]}-{b[1]}-{b[4]}-{b[2]}" for b in BROKEN_CASES]
)
def test_broken_row_names_file_row_and_field(tmp_path, fmt, name, index, mutate, field, fragment):
    rows = _broken_rows(name, index, mutate)
    if fmt == "jsonl":
        path = write_jsonl(tmp_path / f"broken_{name}.jsonl", rows)
    else:
        path = tmp_path / f"broken_{name}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DatasetFormatError) as info:
        load_records(name, path)
    err = info.value
    assert err.row == index + 1 and err.field == field, str(err)
    message = str(err)
    assert path.name in message and f"row {index + 1}" in message and repr(field) in message
    assert fragment in message


@pytest.mark.parametrize(
    "lines,row,fragment",
    [
        (["{not json"], 1, "invalid JSON"),
        (["[1, 2]"], 1, "JSON object"),
        (["", "   "], None, None),  # only blank lines: empty
    ],
)
def test_broken_jsonl_lines(tmp_path, lines, row, fragment):
    good = rows_of("gsm8k")[:3]
    path = write_jsonl(tmp_path / "bad.jsonl", [*good, "", *lines])  # a blank line before: physical numbering
    if row is None:
        assert len(load_records("gsm8k", path)) == 3
        return
    with pytest.raises(DatasetFormatError) as info:
        load_records("gsm8k", path)
    assert info.value.row == 5 and fragment in str(info.value) and "bad.jsonl" in str(info.value)


def test_non_utf8_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(rows_of("gsm8k")[0]).encode() + b"\n" + b'{"question": "caf\xe9"}\n')
    with pytest.raises(DatasetFormatError, match="row 2: not valid UTF-8"):
        load_records("gsm8k", path)


def test_empty_sources(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(EmptyDatasetError, match="no rows"):
        load_records("gsm8k", empty)
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n  \n")
    with pytest.raises(EmptyDatasetError):
        load_records("aime", blank)
    table = pa.Table.from_pylist(rows_of("aime")).slice(0, 0)
    pq.write_table(table, tmp_path / "empty.parquet")
    with pytest.raises(EmptyDatasetError):
        load_records("aime", tmp_path / "empty.parquet")


def test_unreadable_sources(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_records("gsm8k", tmp_path / "missing.jsonl")
    (tmp_path / "data.csv").write_text("question,answer\n")
    with pytest.raises(DatasetError, match="unsupported file type"):
        load_records("gsm8k", tmp_path / "data.csv")
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DatasetError, match="corrupt.parquet: cannot read Parquet"):
        load_records("gsm8k", tmp_path / "corrupt.parquet")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DatasetError, match="no .jsonl"):
        load_records("gsm8k", tmp_path / "nothing")
    with pytest.raises(ValueError):
        load_records("arithmetic", tmp_path)
    with pytest.raises(ValueError):
        load_records("not_a_dataset", tmp_path)


def test_json_array_file(tmp_path):
    rows = rows_of("aime")
    path = tmp_path / "aime.json"
    path.write_text(json.dumps(rows))
    assert comparable(load_records("aime", path)) == comparable(load_records("aime", FIXTURES / FILES["aime"]))
    rows[4]["answer"] = "-1"
    path.write_text(json.dumps(rows, indent=1))
    with pytest.raises(DatasetFormatError, match="aime.json: row 5: field 'answer'"):
        load_records("aime", path)


DEEP = "[" * 100_000 + "]" * 100_000  # past the decoder's recursion limit


def test_deeply_nested_json_names_the_file_and_row(tmp_path):
    good = rows_of("gsm8k")[0]
    path = tmp_path / "deep.jsonl"
    path.write_text(json.dumps(good) + "\n" + '{"question": ' + DEEP + ', "answer": "#### 1"}\n')
    with pytest.raises(DatasetFormatError, match=r"deep\.jsonl: row 2: invalid JSON: nested too deeply") as err:
        load_records("gsm8k", path)
    assert (err.value.source, err.value.row) == (str(path), 2)
    array = tmp_path / "deep.json"
    array.write_text("[" + json.dumps(good) + ", " + DEEP + "]")
    with pytest.raises(DatasetFormatError, match=r"deep\.json: not a valid JSON array: invalid JSON: nested too deeply"):
        load_records("gsm8k", array)


def test_a_converter_failure_names_the_file_and_row(tmp_path, monkeypatch):
    """Any error a malformed row provokes while it is converted (not only the checked fields)."""
    from nemo_gift.data import loaders
    from nemo_gift.data.records import DatasetName

    def boom(row, instruction):
        if row.number == 2:
            raise RecursionError("maximum recursion depth exceeded")
        if row.number == 3:
            raise TypeError("unhashable type: 'list'")
        return loaders.gsm8k_record(row, instruction)

    monkeypatch.setitem(loaders.CONVERTERS, DatasetName.GSM8K, boom)
    rows = rows_of("gsm8k")
    path = write_jsonl(tmp_path / "rows.jsonl", rows[:3])
    with pytest.raises(DatasetFormatError, match=r"rows\.jsonl: row 2: nested too deeply"):
        load_records("gsm8k", path)
    path = write_jsonl(tmp_path / "rows.jsonl", [rows[0], rows[1], rows[2]])
    monkeypatch.setitem(loaders.CONVERTERS, DatasetName.GSM8K,
                        lambda row, i: boom(row, i) if row.number != 2 else loaders.gsm8k_record(row, i))
    with pytest.raises(DatasetFormatError, match=r"rows\.jsonl: row 3: TypeError: unhashable type"):
        load_records("gsm8k", path)
