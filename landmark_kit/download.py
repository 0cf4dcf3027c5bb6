"""Resumable archive downloads and safe extraction, shared by the data sources of stage 00 (gldv2.py,
revisited_data.py).

A file downloads to ``<dest>.part`` (resumed with an HTTP Range request, hashed as it arrives) and becomes
``<dest>`` only when its length matches the announced Content-Length. An archive is extracted into a staging
folder, read to its end (gzip CRC and length checked, nothing but zeros after the tar's end-of-archive
marker), and only then are its files renamed into place: a damaged archive leaves nothing behind. Members
that are not regular files or whose path is absolute or climbs out (``..``) are refused, never written.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from tqdm import tqdm

from .data import DataError

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A file or archive that could not be made complete (download, checksum, archive); its name is in the message."""


@dataclass
class DownloadConfig:
    """Where the files come from and how they are fetched."""

    base_url: str = ""
    workers: int = 4  # archives downloaded + verified + extracted concurrently
    retries: int = 3  # attempts per file (each resumes the .part left by the previous one)
    timeout: float = 120.0  # seconds without data before an attempt fails
    backoff: float = 1.0  # seconds before the second attempt, doubled for each later one


def parse_range(spec: str | None, first: int, last: int, flag: str) -> list[int]:
    """``"0-9"``, ``"3,5,7-8"`` or None (all of ``first..last``) as sorted numbers, each checked to lie in range;
    ``flag`` names the option in the error."""
    if spec is None:
        return list(range(first, last + 1))
    numbers: set[int] = set()
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise DataError(f"{flag} {spec!r}: {part!r} is not N or N-M")
        lo, hi = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if lo > hi or lo < first or hi > last:
            raise DataError(f"{flag} {spec!r}: {part!r} is outside {first}-{last}")
        numbers.update(range(lo, hi + 1))
    return sorted(numbers)


def _open(url: str, timeout: float, start: int = 0):
    headers = {"Range": f"bytes={start}-"} if start else {}
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def fetch(url: str, dest: Path, cfg: DownloadConfig, bar: tqdm | None = None) -> tuple[int, str]:
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed when the server honours Range); renamed to
    ``dest`` only when the body has the announced length. Returns the bytes received this call and the md5
    of the whole file, hashed as it arrives (a resumed ``.part`` is hashed first)."""
    part = dest.with_name(dest.name + ".part")
    received = 0
    last: Exception | None = None
    for attempt in range(cfg.retries):
        if attempt:
            time.sleep(cfg.backoff * 2 ** (attempt - 1))
        start = part.stat().st_size if part.exists() else 0
        try:
            with _open(url, cfg.timeout, start) as response:
                resumed = response.status == 206
                digest = file_md5(part, hexdigest=False) if resumed else hashlib.md5()
                length = response.headers.get("Content-Length")
                expected = (start if resumed else 0) + int(length) if length is not None else None
                with open(part, "ab" if resumed else "wb") as fh:
                    while chunk := response.read1(CHUNK):  # what has arrived, on disk at once (kill-safe)
                        fh.write(chunk)
                        fh.flush()
                        digest.update(chunk)
                        received += len(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
            size = part.stat().st_size
            if expected is not None and size != expected:
                raise DownloadError(f"{url}: received {size} of {expected} bytes")
            os.replace(part, dest)
            return received, digest.hexdigest()
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and part.exists():  # asked past the end: the .part is stale, start over
                part.unlink()
            last = exc
            if exc.code == 404:
                break
        except (OSError, http.client.HTTPException, DownloadError, ValueError) as exc:  # dropped connections, timeouts
            last = exc
    raise DownloadError(f"{url}: download failed ({last})")


def file_md5(path: Path, hexdigest: bool = True):
    """md5 of a file read in 1 MiB chunks: the hex digest, or the hash object to continue (a resumed part)."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest() if hexdigest else digest


def bytes_to_fetch(url: str, dest: Path, timeout: float) -> int:
    """Bytes still to download for ``dest`` (HEAD request less its ``.part``; 0 when unknown), for the ETA."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0)
    except (OSError, ValueError, http.client.HTTPException):
        return 0
    part = dest.with_name(dest.name + ".part")
    return max(total - (part.stat().st_size if part.exists() else 0), 0)


def safe_name(member: tarfile.TarInfo) -> str | None:
    """The member's relative path (``./`` stripped) when it is a regular file that stays inside the folder it is
    extracted into; None for links, devices, absolute paths and paths with ``..``."""
    if not member.isfile():
        return None
    path = PurePosixPath(member.name.replace("\\", "/"))
    parts = [p for p in path.parts if p != "."]
    if path.is_absolute() or not parts or ".." in parts:
        return None
    return "/".join(parts)


def _drain(fileobj) -> None:
    """Read what follows the tar's end-of-archive marker to the end of the file (so gzip checks its CRC and
    length); anything but zeros there means a damaged header ended the member list early."""
    while chunk := fileobj.read(CHUNK):
        if chunk.count(0) != len(chunk):
            raise DownloadError("data after the end-of-archive marker (a damaged member header)")


def extract(archive: Path, target_for: Callable[[str], Path | None], staging: Path) -> dict:
    """Every member of ``archive`` that :func:`safe_name` accepts and ``target_for`` maps to a path, staged under
    ``staging`` and renamed into place once the whole archive has been read and checked; others are listed.
    Returns ``{files, refused}``; a damaged archive raises :class:`DownloadError` naming it, nothing written."""
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    staged: list[tuple[Path, Path]] = []
    refused: list[str] = []
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                if member.isdir():
                    continue
                name = safe_name(member)
                target = target_for(name) if name is not None else None
                if target is None:
                    refused.append(member.name)
                    continue
                tmp = staging / f"{len(staged)}.part"
                with tar.extractfile(member) as src, open(tmp, "wb") as dst:
                    while chunk := src.read(CHUNK):
                        dst.write(chunk)
                staged.append((tmp, target))
            _drain(tar.fileobj)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error, DownloadError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise DownloadError(f"{archive.name}: unreadable archive ({exc})") from None
    for folder in {target.parent for _, target in staged}:
        folder.mkdir(parents=True, exist_ok=True)
    for tmp, target in staged:
        os.replace(tmp, target)
    shutil.rmtree(staging, ignore_errors=True)
    return {"files": len(staged), "refused": refused}


@dataclass
class Batch:
    """What :func:`run_archives` did: each finished archive's record, the failed ones' reasons, time, bytes."""

    records: dict[str, dict]
    failed: dict[str, str]
    seconds: float
    downloaded: int

    @property
    def mb_per_s(self) -> float:
        return round(self.downloaded / 1e6 / self.seconds, 2) if self.seconds else 0.0


def run_archives(names: list[str], job: Callable[[str, tqdm], dict], remaining: Callable[[str], int], workers: int,
                 desc: str, progress: bool = True) -> Batch:
    """``job(name, bar)`` for every archive, ``workers`` at once, behind one byte progress bar sized by
    ``remaining(name)`` (bytes still to fetch); a job that fails is recorded by name and the others finish."""
    start, records, failed = time.perf_counter(), {}, {}
    with tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress, desc=desc,
              smoothing=0.05) as bar, ThreadPoolExecutor(workers) as pool:
        bar.total = sum(pool.map(remaining, names)) or None
        futures = {name: pool.submit(job, name, bar) for name in names}
        for name, future in futures.items():
            try:
                records[name] = future.result()
            except (DownloadError, DataError, OSError) as exc:
                failed[name] = str(exc)
            bar.set_postfix(done=len(records), failed=len(failed))
    return Batch(records, failed, round(time.perf_counter() - start, 2),
                 sum(r["downloaded"] for r in records.values()))


@dataclass
class Tally:
    """Archive counts of a download run, which each data source's summary extends (printed as JSON by stage 00)."""

    completed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already complete before this run
    failed: dict[str, str] = field(default_factory=dict)
    downloaded_mb: float = 0.0
    seconds: float = 0.0
    mb_per_s: float = 0.0
    images: int = 0  # extracted this run

    def add(self, batch: Batch, images: str) -> None:
        """Count ``batch``: completed, skipped and failed archives, each new record's ``images``, time and bytes."""
        for name, record in batch.records.items():
            if record["skipped"]:
                self.skipped.append(name)
            else:
                self.completed.append(name)
                self.images += record[images]
        self.failed.update(batch.failed)
        self.seconds, self.mb_per_s = batch.seconds, batch.mb_per_s
        self.downloaded_mb = round(batch.downloaded / 1e6, 2)
