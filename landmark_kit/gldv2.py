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

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .artifacts import atomic_write_csv, write_text
from .data import DataError, image_path, read_csv_str, read_train_csv, scan_split
from .download import (DownloadConfig, DownloadError, bytes_to_fetch, extract, fetch, file_md5, parse_range,
                       Tally, run_archives)

BASE_URL = "https://s3.amazonaws.com/google-landmark"
SHARDS = {"train": 500, "index": 100, "test": 20}
METADATA = {
    "train": ("metadata/train.csv", "metadata/train_clean.csv"),
    "index": ("metadata/index.csv",),
    "test": ("metadata/test.csv", "ground_truth/recognition_solution_v2.1.csv",
             "ground_truth/retrieval_solution_v2.1.csv"),
}
MEMBER = re.compile(r"^([0-9a-f])/([0-9a-f])/([0-9a-f])/(([0-9a-f]){16})\.jpg$")
ShardError = DownloadError  # a shard that could not be made complete; its name is in the message


@dataclass
class Gldv2Config(DownloadConfig):
    """Where the shards come from and how many are fetched at once."""

    base_url: str = BASE_URL
    keep_tars: bool = False  # keep images_NNN.tar after extraction (default: delete, the images are the data)


@dataclass(kw_only=True)
class Summary(Tally):
    """What a run did, printed as JSON by stage 00."""

    split: str
    shards: int = 0
    bad_members: int = 0  # tar members that were not a/b/c/<id>.jpg (listed in the shard's json)
    csvs: dict[str, int] = field(default_factory=dict)


def parse_shards(spec: str | None, split: str) -> list[int]:
    """``"0-9"``, ``"3,5,7-8"`` or None (every shard of the split) as sorted shard numbers, checked."""
    if split not in SHARDS:
        raise DataError(f"unknown GLDv2 split {split!r}: expected one of {sorted(SHARDS)}")
    return parse_range(spec, 0, SHARDS[split] - 1, "--shards")


def read_md5(path: Path) -> str:
    """The hex digest of an md5 file (``<md5>  images_NNN.tar`` as md5sum writes, or the digest alone)."""
    tokens = path.read_text().split()
    if not tokens or not re.fullmatch(r"[0-9a-fA-F]{32}", tokens[0]):
        raise ShardError(f"{path}: not an md5 file (expected 32 hex digits first)")
    return tokens[0].lower()


def image_target(out: Path, split: str):
    """Where a shard member goes: ``out/<split>/a/b/c/<id>.jpg`` for a well-formed ``a/b/c/<id>.jpg``, else None."""
    def target(name: str) -> Path | None:
        match = MEMBER.match(name)
        if not match or match[4][:3] != match[1] + match[2] + match[3]:
            return None
        return image_path(out, split, match[4])
    return target


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
    extracted = extract(tar_path, image_target(out, split), work / "scratch" / name)
    record = {"shard": name, "md5": expected, "images": extracted["files"], "bad_members": extracted["refused"]}
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
    names = {shard_name(s): s for s in shards}
    batch = run_archives(list(names), lambda name, bar: process_shard(names[name], split, out, cfg, bar),
                         lambda name: _head_size(f"{cfg.base_url}/{split}/{name}.tar", out, split, names[name], cfg),
                         cfg.workers, f"gldv2 {split}", progress)
    summary.add(batch, "images")
    summary.bad_members += sum(len(r["bad_members"]) for r in batch.records.values() if not r["skipped"])
    try:
        fetch_metadata(split, out, cfg)
        summary.csvs = write_csvs(split, out)
    except (ShardError, DataError) as exc:
        summary.failed["metadata"] = str(exc)
    write_text(out / ".gldv2" / f"{split}.summary.json", json.dumps(summary.__dict__, indent=1))
    return summary


def _head_size(url: str, out: Path, split: str, shard: int, cfg: Gldv2Config) -> int:
    """Bytes still to fetch for a shard (0 when complete already or unknown), for the ETA."""
    work = out / ".gldv2" / split
    name = shard_name(shard)
    if (work / f"{name}.json").exists() or (work / f"{name}.tar").exists():
        return 0
    return bytes_to_fetch(url, work / f"{name}.tar", cfg.timeout)
