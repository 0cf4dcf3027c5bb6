"""GLDv2 from its official tar shards: download (resumable), md5 check, parallel extraction into the Kaggle
layout, and the split's CSVs (train.csv / train_clean.csv; the v2.1 solutions for test).

Official layout under the base URL (cvdfoundation/google-landmark): ``<split>/images_NNN.tar``,
``md5sum/<split>/md5.images_NNN.txt``, ``metadata/*.csv``, ``ground_truth/*_solution_v2.1.csv``. Work files
live in ``DIR/.gldv2/``: a shard downloads to ``images_NNN.tar.part`` (resumed with an HTTP Range request),
becomes ``images_NNN.tar`` only when its length matches, is extracted only when its md5 matches, and counts as
complete only when ``images_NNN.json`` is written after the last image (atomic renames throughout).

    python stages/00_data.py gldv2 --split test --out DIR [--shards 0-9] [--base-url URL] [--workers N]
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import tarfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .artifacts import write_text
from .data import DataError, atomic_write_csv, image_path, read_csv_str, read_train_csv, scan_split

BASE_URL = "https://s3.amazonaws.com/google-landmark"
SHARDS = {"train": 500, "index": 100, "test": 20}
METADATA = {
    "train": ("metadata/train.csv", "metadata/train_clean.csv"),
    "index": ("metadata/index.csv",),
    "test": ("metadata/test.csv", "ground_truth/recognition_solution_v2.1.csv",
             "ground_truth/retrieval_solution_v2.1.csv"),
}
MEMBER = re.compile(r"^(?:\./)?([0-9a-f])/([0-9a-f])/([0-9a-f])/(([0-9a-f]){16})\.jpg$")
CHUNK = 1 << 20


class ShardError(RuntimeError):
    """A shard that could not be made complete (download, md5, archive); its name is in the message."""


@dataclass
class Gldv2Config:
    """Where the shards come from and how many are fetched at once."""

    base_url: str = BASE_URL
    workers: int = 4  # shards downloaded + verified + extracted concurrently
    retries: int = 3  # attempts per file (each resumes the .part left by the previous one)
    timeout: float = 120.0  # seconds without data before an attempt fails
    backoff: float = 1.0  # seconds before the second attempt, doubled for each later one
    keep_tars: bool = False  # keep images_NNN.tar after extraction (default: delete, the images are the data)


@dataclass
class Summary:
    """What a run did, printed as JSON by stage 00."""

    split: str
    shards: int = 0
    completed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already complete before this run
    failed: dict[str, str] = field(default_factory=dict)
    downloaded_mb: float = 0.0
    seconds: float = 0.0
    mb_per_s: float = 0.0
    images: int = 0  # extracted this run
    bad_members: int = 0  # tar members that were not a/b/c/<id>.jpg (listed in the shard's json)
    csvs: dict[str, int] = field(default_factory=dict)


def parse_shards(spec: str | None, split: str) -> list[int]:
    """``"0-9"``, ``"3,5,7-8"`` or None (every shard of the split) as sorted shard numbers, checked."""
    if split not in SHARDS:
        raise DataError(f"unknown GLDv2 split {split!r}: expected one of {sorted(SHARDS)}")
    total = SHARDS[split]
    if spec is None:
        return list(range(total))
    shards: set[int] = set()
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise DataError(f"--shards {spec!r}: {part!r} is not N or N-M")
        lo, hi = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if lo > hi or hi >= total:
            raise DataError(f"--shards {spec!r}: {part!r} is outside 0-{total - 1} for {split}")
        shards.update(range(lo, hi + 1))
    return sorted(shards)


def _open(url: str, timeout: float, start: int = 0):
    headers = {"Range": f"bytes={start}-"} if start else {}
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def fetch(url: str, dest: Path, cfg: Gldv2Config, bar: tqdm | None = None) -> tuple[int, str]:
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
                raise ShardError(f"{url}: received {size} of {expected} bytes")
            os.replace(part, dest)
            return received, digest.hexdigest()
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and part.exists():  # asked past the end: the .part is stale, start over
                part.unlink()
            last = exc
            if exc.code == 404:
                break
        except (OSError, http.client.HTTPException, ShardError, ValueError) as exc:  # dropped connections, timeouts
            last = exc
    raise ShardError(f"{url}: download failed ({last})")


def read_md5(path: Path) -> str:
    """The hex digest of an md5 file (``<md5>  images_NNN.tar`` as md5sum writes, or the digest alone)."""
    tokens = path.read_text().split()
    if not tokens or not re.fullmatch(r"[0-9a-fA-F]{32}", tokens[0]):
        raise ShardError(f"{path}: not an md5 file (expected 32 hex digits first)")
    return tokens[0].lower()


def file_md5(path: Path, hexdigest: bool = True):
    """md5 of a file read in 1 MiB chunks: the hex digest, or the hash object to continue (a resumed part)."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest() if hexdigest else digest


def extract(tar_path: Path, out: Path, split: str, scratch: Path) -> dict:
    """Every ``a/b/c/<id>.jpg`` member of the shard into ``out/<split>/``, each through a scratch file and a
    rename; other members are listed, never written. Returns ``{images, bad_members}``."""
    images, bad = 0, []
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if member.isdir():
                    continue
                match = MEMBER.match(member.name)
                if not member.isfile() or not match or match[4][:3] != match[1] + match[2] + match[3]:
                    bad.append(member.name)
                    continue
                target = image_path(out, split, match[4])
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = scratch / f"{match[4]}.jpg.part"
                with tar.extractfile(member) as src, open(tmp, "wb") as dst:
                    while chunk := src.read(CHUNK):
                        dst.write(chunk)
                os.replace(tmp, target)
                images += 1
    except (tarfile.TarError, EOFError) as exc:
        raise ShardError(f"{tar_path.name}: unreadable archive ({exc})") from None
    return {"images": images, "bad_members": bad}


def shard_name(shard: int) -> str:
    return f"images_{shard:03d}"


def process_shard(shard: int, split: str, out: Path, cfg: Gldv2Config, bar: tqdm | None = None) -> dict:
    """Download, verify and extract one shard unless its completion record exists. Returns the record
    (``downloaded`` bytes added, ``skipped`` True when it was complete already)."""
    name = shard_name(shard)
    work = out / ".gldv2" / split
    work.mkdir(parents=True, exist_ok=True)
    record_path = work / f"{name}.json"
    if record_path.exists():
        return {**json.loads(record_path.read_text()), "skipped": True, "downloaded": 0}
    md5_path = work / f"md5.{name}.txt"
    downloaded = 0
    if not md5_path.exists():
        downloaded += fetch(f"{cfg.base_url}/md5sum/{split}/md5.{name}.txt", md5_path, cfg)[0]
    expected = read_md5(md5_path)
    tar_path = work / f"{name}.tar"
    if tar_path.exists():  # downloaded by an earlier run that stopped before extracting it
        actual = file_md5(tar_path)
    else:
        received, actual = fetch(f"{cfg.base_url}/{split}/{name}.tar", tar_path, cfg, bar)
        downloaded += received
    if actual != expected:
        tar_path.unlink()  # a rerun downloads it again
        raise ShardError(f"{split}/{name}.tar: md5 {actual} does not match {expected} (md5sum/{split}/md5.{name}.txt)"
                         f"; refused, nothing of it extracted")
    record = {"shard": name, "md5": expected, **extract(tar_path, out, split, work / "scratch" / name)}
    write_text(record_path, json.dumps(record, indent=1))
    if not cfg.keep_tars:
        tar_path.unlink()
    return {**record, "skipped": False, "downloaded": downloaded}


def fetch_metadata(split: str, out: Path, cfg: Gldv2Config) -> list[Path]:
    """The split's metadata and ground-truth CSVs into ``out/metadata`` / ``out/ground_truth`` (kept once
    complete: they do not change between runs)."""
    paths = []
    for rel in METADATA[split]:
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            fetch(f"{cfg.base_url}/{rel}", dest, cfg)
        paths.append(dest)
    return paths


def write_csvs(split: str, out: Path) -> dict[str, int]:
    """The kit's CSVs for the images on disk: ``train.csv`` (id,landmark_id) and ``train_clean.csv``
    (landmark_id,images) for train; ``recognition_solution.csv`` / ``retrieval_solution.csv`` (the v2.1
    ground truth, test rows present on disk) for test. Returns the rows written per file."""
    if split == "index" or not (out / split).is_dir():
        return {}
    present = set(scan_split(out, split))
    rows = {}
    if split == "train":
        full = read_train_csv(out / "metadata" / "train.csv")
        full = full[full["id"].isin(present)]
        atomic_write_csv(full[["id", "landmark_id"]], out / "train.csv")
        clean = read_train_csv(out / "metadata" / "train_clean.csv")
        clean = clean[clean["id"].isin(present)]
        grouped = clean.groupby("landmark_id", sort=False)["id"].agg(" ".join).reset_index(name="images")
        atomic_write_csv(grouped, out / "train_clean.csv")
        rows = {"train.csv": len(full), "train_clean.csv images": len(clean)}
    else:
        for track in ("recognition", "retrieval"):
            solution = read_csv_str(out / "ground_truth" / f"{track}_solution_v2.1.csv")
            if "id" not in solution.columns or "Usage" not in solution.columns:
                raise DataError(f"{out}/ground_truth/{track}_solution_v2.1.csv: expected columns id,...,Usage, "
                                f"found {','.join(solution.columns)}")
            solution = solution[solution["id"].isin(present)]
            atomic_write_csv(solution, out / f"{track}_solution.csv")
            rows[f"{track}_solution.csv"] = len(solution)
    return rows


def download(split: str, out, shards: list[int] | None = None, cfg: Gldv2Config | None = None,
             progress: bool = True) -> Summary:
    """Every requested shard of ``split`` complete under ``out`` (shards that fail are reported, the others
    still finished), then the split's metadata and its CSVs for the images on disk."""
    cfg = cfg or Gldv2Config()
    out = Path(out)
    shards = parse_shards(None, split) if shards is None else shards
    summary = Summary(split=split, shards=len(shards))
    start = time.perf_counter()
    with tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
              desc=f"gldv2 {split}", smoothing=0.05) as bar, ThreadPoolExecutor(cfg.workers) as pool:
        sizes = list(pool.map(lambda s: _head_size(f"{cfg.base_url}/{split}/{shard_name(s)}.tar", out, split, s,
                                                   cfg), shards))
        bar.total = sum(sizes) or None
        futures = {shard_name(s): pool.submit(process_shard, s, split, out, cfg, bar) for s in shards}
        downloaded = 0
        for name, future in futures.items():
            try:
                record = future.result()
            except (ShardError, DataError, OSError) as exc:
                summary.failed[name] = str(exc)
                continue
            downloaded += record["downloaded"]
            if record["skipped"]:
                summary.skipped.append(name)
            else:
                summary.completed.append(name)
                summary.images += record["images"]
                summary.bad_members += len(record["bad_members"])
            bar.set_postfix(done=len(summary.completed) + len(summary.skipped), failed=len(summary.failed))
    summary.seconds = round(time.perf_counter() - start, 2)
    summary.downloaded_mb = round(downloaded / 1e6, 2)
    summary.mb_per_s = round(summary.downloaded_mb / summary.seconds, 2) if summary.seconds else 0.0
    try:
        fetch_metadata(split, out, cfg)
        summary.csvs = write_csvs(split, out)
    except (ShardError, DataError) as exc:
        summary.failed["metadata"] = str(exc)
    write_text(out / ".gldv2" / f"{split}.summary.json", json.dumps(summary.__dict__, indent=1))
    return summary


def _head_size(url: str, out: Path, split: str, shard: int, cfg: Gldv2Config) -> int:
    """Bytes still to fetch for a shard (HEAD request; 0 when complete already or unknown), for the ETA."""
    work = out / ".gldv2" / split
    name = shard_name(shard)
    if (work / f"{name}.json").exists() or (work / f"{name}.tar").exists():
        return 0
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=cfg.timeout) as response:
            total = int(response.headers.get("Content-Length") or 0)
    except (OSError, ValueError):
        return 0
    part = work / f"{name}.tar.part"
    return max(total - (part.stat().st_size if part.exists() else 0), 0)
