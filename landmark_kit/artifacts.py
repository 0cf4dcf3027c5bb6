"""Atomic artifact writes: every output goes to a temporary sibling and is renamed into place, so a killed
run never leaves a half-written file that a resumed run would trust."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix, so writers that add one don't); on success it
    replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def part_path(folder: str | os.PathLike, number: int) -> Path:
    """Chunk ``number`` of a part folder (``part_NNNNN.npz``): how long jobs save work a kill cannot undo."""
    return Path(folder) / f"part_{number:05d}.npz"


def parts(folder: str | os.PathLike) -> list[Path]:
    """The finished chunks of a part folder, in order (a chunk exists only once written whole)."""
    return sorted(Path(folder).glob("part_*.npz"))


def save_part(folder: str | os.PathLike, number: int, **arrays) -> Path:
    """Write chunk ``number`` of a part folder atomically."""
    import numpy as np

    path = part_path(folder, number)
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)
    return path
