"""Atomic artifact writes: every output goes to a temporary sibling and is renamed into place, so a killed
run never leaves a half-written file that a resumed run would trust. Checked reads: a file a full disk or an
interrupted copy cut short raises :class:`DamagedArtifact` naming it, and caches are removed and made again."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Malformed input data (CSV, id, layout); the message names the file and row."""


class DamagedArtifact(DataError):
    """A file that cannot be read whole (truncated, cut mid-write, not its format); the message names it."""

    def __init__(self, path: str | os.PathLike, reason: str, kind: str = "file", hint: str = "") -> None:
        super().__init__(f"{path}: damaged {kind} ({reason})" + (f"; {hint}" if hint else ""))
        self.path, self.reason = Path(path), reason


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


def atomic_write_csv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a CSV through a temporary file and rename it, so a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def npy_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """Shape of a ``.npy`` file from its header, checked against the file's size (O(1), nothing else read)."""
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(fh)
        except ValueError as exc:
            raise DamagedArtifact(path, f"unreadable header: {exc}") from None
        if not dtype.hasobject:  # object arrays have no fixed size; np.load refuses them anyway
            expected, size = fh.tell() + int(np.prod(shape)) * dtype.itemsize, os.fstat(fh.fileno()).st_size
            if size != expected:
                raise DamagedArtifact(path, f"{size:,} bytes where its header says {expected:,}")
    return tuple(shape)


def load_npy(path: str | os.PathLike, mmap: bool = True) -> np.ndarray:
    """A ``.npy`` array (memory-mapped by default) once :func:`npy_shape` found the file whole."""
    npy_shape(path)
    return np.load(path, mmap_mode="r" if mmap else None)


def check_zip(path: str | os.PathLike) -> None:
    """A ``.npz`` (or torch) file's zip directory is readable and every member lies within the file (O(1))."""
    try:
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise DamagedArtifact(path, f"unreadable zip archive: {exc}") from None
    size = os.path.getsize(path)
    for info in members:
        if info.header_offset + info.compress_size > size:
            raise DamagedArtifact(path, f"member {info.filename} runs past the end of the file")


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` file, read whole (so checksums are verified); damage raises naming the file."""
    check_zip(path)
    try:
        with np.load(path) as z:
            return {name: z[name] for name in z.files}
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise DamagedArtifact(path, str(exc)) from None


def discard(damage: DamagedArtifact, *also: str | os.PathLike, then: str = "made again") -> None:
    """Log a damaged cache file (naming it) and remove it and ``also`` (files or folders that depend on it)."""
    log.warning("%s; removed, %s", damage, then)
    for path in (damage.path, *map(Path, also)):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def intact(path: str | os.PathLike, check=check_zip) -> bool:
    """True when ``path`` exists and passes ``check``; a damaged one is discarded (logged), so it is made again."""
    if not Path(path).is_file():
        return False
    try:
        check(path)
    except DamagedArtifact as damage:
        discard(damage)
        return False
    return True


def part_path(folder: str | os.PathLike, number: int) -> Path:
    """Chunk ``number`` of a part folder (``part_NNNNN.npz``): how long jobs save work a kill cannot undo."""
    return Path(folder) / f"part_{number:05d}.npz"


def parts(folder: str | os.PathLike) -> list[Path]:
    """The finished chunks of a part folder, in order (a chunk exists only once written whole)."""
    return sorted(Path(folder).glob("part_*.npz"))


def read_chunks(paths: Iterable[str | os.PathLike]) -> Iterator[dict[str, np.ndarray]]:
    """The arrays of each existing ``.npz`` of ``paths`` (e.g. :func:`parts`), in order; a damaged one is discarded
    (logged) and skipped, so whatever it held is computed again."""
    for path in paths:
        if not Path(path).is_file():
            continue
        try:
            arrays = load_npz(path)
        except DamagedArtifact as damage:
            discard(damage)
            continue
        yield arrays


def save_part(folder: str | os.PathLike, number: int, **arrays) -> Path:
    """Write chunk ``number`` of a part folder atomically."""
    path = part_path(folder, number)
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)
    return path


def append_part(folder: str | os.PathLike, **arrays) -> Path:
    """Write a chunk after the last one of a part folder (numbers stay unique when a damaged one was removed)."""
    done = parts(folder)
    return save_part(folder, int(done[-1].stem.removeprefix("part_")) + 1 if done else 0, **arrays)
