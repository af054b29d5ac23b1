"""File integrity of checkpoint directories: a manifest of sizes and CRC-32s, fsync, and checks.

A checkpoint's ``metadata.json`` lists every other file of it (``relative path -> {"bytes",
"crc32"}``, :func:`build_manifest`). :func:`find_bad_file` compares a directory with its
manifest: a missing file or a wrong size always, the CRC-32 of the contents on request. Both
spread the reading over the ranks of the default process group when there is one (rank ``r``
reads files ``r, r + W, ...`` of the sorted list, and the results are all-gathered), so every
rank gets the same answer; without a process group one process reads everything.

CRC-32 (``zlib.crc32``) detects the corruption that matters here (truncation, torn or flipped
blocks); it is not a defence against deliberate tampering.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import torch.distributed as dist

_CHUNK = 16 << 20  # bytes read at a time


def _rank_world() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_gather(obj: Any) -> list[Any]:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def crc32_of(path: Path) -> int:
    """CRC-32 of a file's contents, read in 16 MiB chunks."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            crc = zlib.crc32(block, crc)
    return crc


def _files(root: Path, exclude: tuple[str, ...]) -> list[str]:
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and str(p.relative_to(root)) not in exclude
    )


def build_manifest(root: str | os.PathLike, exclude: tuple[str, ...] = ("metadata.json",)) -> dict[str, dict]:
    """``{relative path: {"bytes": size, "crc32": crc}}`` of every file under ``root`` but
    ``exclude``; collective when a process group exists (call it on every rank)."""
    root = Path(root)
    names = _files(root, exclude)
    rank, world = _rank_world()
    mine = {n: {"bytes": (root / n).stat().st_size, "crc32": crc32_of(root / n)} for n in names[rank::world]}
    manifest: dict[str, dict] = {}
    for part in _all_gather(mine):
        manifest.update(part)
    return dict(sorted(manifest.items()))


def find_bad_file(root: str | os.PathLike, manifest: dict[str, dict], *, checksums: bool) -> str | None:
    """The first file of ``manifest`` (sorted) that is missing, has another size, or (with
    ``checksums``) another CRC-32, described in a sentence; None when all are as recorded.
    Collective when a process group exists and ``checksums`` is set."""
    root = Path(root)
    for name in sorted(manifest):
        path = root / name
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != manifest[name]["bytes"]:
            return f"{path} has {size} bytes, the manifest says {manifest[name]['bytes']}"
    if not checksums:
        return None
    rank, world = _rank_world()
    mine = []
    for name in sorted(manifest)[rank::world]:
        crc = crc32_of(root / name)
        if crc != manifest[name]["crc32"]:
            mine.append(f"{root / name} has CRC-32 {crc:#010x}, the manifest says {manifest[name]['crc32']:#010x}")
    bad = sorted(b for part in _all_gather(mine) for b in part)
    return bad[0] if bad else None


def fsync_file(path: str | os.PathLike) -> None:
    """Flush one file's contents to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file under ``root``, then every directory bottom-up (so that the entries
    naming the files are durable too), ``root`` included."""
    root = Path(root)
    dirs = [root]
    for p in sorted(root.rglob("*")):
        if p.is_file():
            fsync_file(p)
        elif p.is_dir():
            dirs.append(p)
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        fsync_file(d)
