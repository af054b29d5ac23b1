"""Reading raw rows from local files: JSONL, Parquet, or a `datasets.save_to_disk` directory.

`iter_rows` yields ``(source_label, row_number, row)`` with 1-based row numbers
(for JSONL, the physical line number), so that loaders can name the exact place
of a bad row. Nothing here downloads anything.

Accepted ``path`` values:
- ``*.jsonl`` / ``*.json`` (JSON Lines: one object per line, blank lines skipped; a
  ``.json`` file that holds one array of objects is read too, rows numbered from 1);
- ``*.parquet``;
- a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``
  (``datasets.load_from_disk``; give ``split`` for a dict with several splits);
- any other directory, e.g. a hub snapshot (``data/train-00000-of-00001.parquet``):
  its ``*.parquet`` / ``*.jsonl`` files in sorted order, those of ``split`` only if
  given (a path part equal to the split, or a file name starting with ``<split>-``
  or ``<split>.``).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nemo_gift.data.records import DatasetError, DatasetFormatError

RawRow = tuple[str, int, dict[str, Any]]
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


def iter_rows(path: str | Path, split: str | None = None) -> Iterator[RawRow]:
    """Yield ``(source_label, row_number, row_dict)`` for every row under ``path``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"{p}: no such file or directory")
    if p.is_file():
        yield from _iter_file(p)
        return
    if (p / "dataset_dict.json").exists() or (p / "state.json").exists():
        yield from _iter_saved_dataset(p, split)
        return
    files = _data_files(p, split)
    if not files:
        wanted = f" for split {split!r}" if split else ""
        raise DatasetError(f"{p}: no .jsonl, .json or .parquet files{wanted}")
    for f in files:
        yield from _iter_file(f)


def _data_files(root: Path, split: str | None) -> list[Path]:
    files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix in _FILE_SUFFIXES)
    files = [f for f in files if not f.name.startswith(".") and f.name not in ("dataset_info.json", "state.json")]
    if split is None:
        return files
    keep = []
    for f in files:
        parts = f.relative_to(root).parts[:-1]
        if split in parts or f.name.startswith(f"{split}-") or f.name.startswith(f"{split}."):
            keep.append(f)
    return keep


def _iter_file(path: Path) -> Iterator[RawRow]:
    if path.suffix in (".jsonl", ".json"):
        yield from _iter_jsonl(path)
    elif path.suffix == ".parquet":
        yield from _iter_parquet(path)
    else:
        raise DatasetError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl, .json or .parquet")


def _starts_with_array(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    return head.startswith(b"[")


def _iter_json_array(path: Path) -> Iterator[RawRow]:
    label = str(path)
    try:
        rows = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise DatasetFormatError(label, None, None, f"not a valid JSON array: {_decode_problem(e)}") from None
    for row_no, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DatasetFormatError(label, row_no, None, f"expected a JSON object, got {type(row).__name__}")
        yield label, row_no, row


def _iter_jsonl(path: Path) -> Iterator[RawRow]:
    label = str(path)
    if path.suffix == ".json" and _starts_with_array(path):
        yield from _iter_json_array(path)
        return
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DatasetFormatError(label, line_no, None, f"not valid UTF-8 ({e.reason})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as e:
                raise DatasetFormatError(label, line_no, None, _decode_problem(e)) from None
            if not isinstance(row, dict):
                raise DatasetFormatError(label, line_no, None, f"expected a JSON object, got {type(row).__name__}")
            yield label, line_no, row


def _decode_problem(e: BaseException) -> str:
    """What a JSON decoder's error says, in a row's error message."""
    if isinstance(e, RecursionError):
        return "invalid JSON: nested too deeply to decode"
    if isinstance(e, json.JSONDecodeError):
        return f"invalid JSON: {e.msg} at column {e.colno}"
    return f"invalid JSON: {e}"


def _iter_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    label = str(path)
    try:
        reader = pq.ParquetFile(path)
        batches = reader.iter_batches(batch_size=1024)
        row_no = 0
        for batch in batches:
            for row in batch.to_pylist():
                row_no += 1
                yield label, row_no, row
    except (OSError, ValueError, RecursionError) as e:  # pyarrow's ArrowInvalid is a ValueError
        if isinstance(e, DatasetError):
            raise
        problem = "nested too deeply to decode" if isinstance(e, RecursionError) else str(e)
        raise DatasetError(f"{label}: cannot read Parquet: {problem}") from None


def _iter_saved_dataset(path: Path, split: str | None) -> Iterator[RawRow]:
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets is a dependency
        raise DatasetError(f"{path}: reading a save_to_disk directory needs the 'datasets' package") from e
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as e:
        raise DatasetError(f"{path}: load_from_disk failed: {e}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            if len(loaded) != 1:
                raise DatasetError(f"{path}: several splits {sorted(loaded)}; pass split=")
            split = next(iter(loaded))
        if split not in loaded:
            raise DatasetError(f"{path}: no split {split!r}; splits: {sorted(loaded)}")
        loaded = loaded[split]
    label = f"{path}[{split}]" if split else str(path)
    rows = iter(loaded)
    for row_no in itertools.count(1):
        try:
            row = next(rows)
        except StopIteration:
            return
        except RecursionError:
            raise DatasetFormatError(label, row_no, None, "nested too deeply to decode") from None
        yield label, row_no, dict(row)
