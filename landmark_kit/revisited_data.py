"""Revisited Oxford and Paris (roxford5k, rparis6k) and the 1M distractors (revisitop1m) from their official
archives, into the layout the benchmark's own download script (filipradenovic/revisitop, python/download.py)
produces: ``ROOT/<dataset>/jpg/<name>.jpg`` + ``ROOT/<dataset>/gnd_<dataset>.pkl``, and for the distractors
``ROOT/revisitop1m/jpg/<path as listed>`` + ``ROOT/revisitop1m/revisitop1m.txt``.

The Oxford and Paris archives are flattened as that script's ``find -type f -exec mv`` does (``paris/<landmark>/
<name>.jpg`` -> ``jpg/<name>.jpg``); the distractor archives keep their members' paths under ``jpg/``. No md5s
are published: an archive counts as intact when its length matches the announced Content-Length and it reads
to its end (gzip CRC, tar headers). Work files live in ``ROOT/.revisited/<dataset>/`` (``.part`` downloads
resumed with HTTP Range, ``<archive>.json`` completion records; landmark_kit/download.py). Images named by the
ground truth (database + queries) or the image list that are absent or unreadable (PIL verify; e.g. the 20
known broken Paris images, HTML pages saved as .jpg) are listed by name in ``ROOT/<dataset>/missing.csv``.

    python stages/00_data.py revisited roxford5k|rparis6k|revisitop1m --out ROOT [--archives 1-3] [--base-url URL]
"""

from __future__ import annotations

import csv
import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from PIL import Image
from tqdm import tqdm

from .artifacts import write_text
from .data import DataError
from .download import (DownloadConfig, DownloadError, bytes_to_fetch, extract, fetch, file_md5, parse_range,
                       Tally, run_archives)
from .revisited_metric import read_ground_truth

VGG = "https://www.robots.ox.ac.uk/~vgg/data"
GROUND_TRUTH = "http://cmp.felk.cvut.cz/revisitop/data/datasets"
DISTRACTORS = "http://ptak.felk.cvut.cz/revisitop/revisitop1m"
LISTED = 100  # missing names printed in the summary; all of them are in missing.csv


@dataclass(frozen=True)
class Source:
    """One dataset's official files: its archives (numbered from 1 for ``--archives``) and its list of images."""

    archives: tuple[str, ...]
    listing: str  # gnd_<dataset>.pkl (database + query names) or revisitop1m.txt (one path per line)
    flatten: bool  # every file into jpg/<basename>, else the member's own path under jpg/
    ext: str  # appended to a listed name to make its file name


SOURCES = {
    "roxford5k": Source((f"{VGG}/oxbuildings/oxbuild_images-v1.tgz",),
                        f"{GROUND_TRUTH}/roxford5k/gnd_roxford5k.pkl", True, ".jpg"),
    "rparis6k": Source(tuple(f"{VGG}/parisbuildings/paris_{n}-v1.tgz" for n in (1, 2)),
                       f"{GROUND_TRUTH}/rparis6k/gnd_rparis6k.pkl", True, ".jpg"),
    "revisitop1m": Source(tuple(f"{DISTRACTORS}/jpg/revisitop1m.{n}.tar.gz" for n in range(1, 101)),
                          f"{DISTRACTORS}/revisitop1m.txt", False, ""),
}


@dataclass
class RevisitedConfig(DownloadConfig):
    """Where the archives come from (``base_url`` replaces the official scheme and host) and how they are fetched."""

    keep_archives: bool = False  # keep each archive after extraction (default: delete, the images are the data)


@dataclass(kw_only=True)
class Summary(Tally):
    """What a run did, printed as JSON by stage 00."""

    dataset: str
    archives: int = 0
    refused_members: dict[str, list[str]] = field(default_factory=dict)  # links, absolute or ../ paths, per archive
    expected: int = 0  # images named by the ground truth or the image list
    missing_count: int = 0  # of those, absent or unreadable
    missing: list[str] = field(default_factory=list)  # the first LISTED of them; all in <dataset>/missing.csv


def parse_archives(spec: str | None, dataset: str) -> list[int]:
    """``"1-3"``, ``"1,5,7-8"`` or None (every archive of the dataset) as sorted archive numbers, checked."""
    if dataset not in SOURCES:
        raise DataError(f"unknown revisited dataset {dataset!r}: expected one of {sorted(SOURCES)}")
    return parse_range(spec, 1, len(SOURCES[dataset].archives), "--archives")


def mirrored(url: str, base_url: str) -> str:
    """``url`` with its scheme and host replaced by ``base_url`` (unchanged when empty)."""
    return base_url.rstrip("/") + urlsplit(url).path if base_url else url


def file_name(url: str) -> str:
    return PurePosixPath(urlsplit(url).path).name


def work_dir(out: Path, dataset: str) -> Path:
    return out / ".revisited" / dataset


def _target(jpg: Path, flatten: bool):
    """Where an (already safe) member name goes under ``jpg``."""
    def target(name: str) -> Path:
        return jpg / (PurePosixPath(name).name if flatten else name)
    return target


def process_archive(dataset: str, number: int, out: Path, cfg: RevisitedConfig, bar: tqdm | None = None) -> dict:
    """Download, read whole and extract archive ``number`` unless its completion record exists. Returns the record
    (``downloaded`` bytes added, ``skipped`` True when it was complete already)."""
    source = SOURCES[dataset]
    url = source.archives[number - 1]
    name = file_name(url)
    work = work_dir(out, dataset)
    work.mkdir(parents=True, exist_ok=True)
    record_path = work / f"{name}.json"
    if record_path.exists():
        return {**json.loads(record_path.read_text()), "skipped": True, "downloaded": 0}
    archive = work / name
    if archive.exists():  # downloaded by an earlier run that stopped before extracting it
        received, md5 = 0, file_md5(archive)
    else:
        received, md5 = fetch(mirrored(url, cfg.base_url), archive, cfg, bar)
    size = archive.stat().st_size
    try:
        extracted = extract(archive, _target(out / dataset / "jpg", source.flatten), work / f"{name}.staging")
    except DownloadError as exc:
        archive.unlink()  # a rerun downloads it again
        raise DownloadError(f"{exc}; refused, nothing of it extracted") from None
    record = {"archive": name, "url": url, "bytes": size, "md5": md5, **extracted}
    write_text(record_path, json.dumps(record, indent=1))
    if not cfg.keep_archives:
        archive.unlink()
    return {**record, "skipped": False, "downloaded": received}


def fetch_listing(dataset: str, out: Path, cfg: RevisitedConfig) -> Path:
    """The ground truth (``gnd_<dataset>.pkl``) or image list (``revisitop1m.txt``) into ``out/<dataset>/`` (kept
    once complete: it does not change between runs)."""
    url = SOURCES[dataset].listing
    dest = out / dataset / file_name(url)
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        fetch(mirrored(url, cfg.base_url), dest, cfg)
    return dest


def expected_names(dataset: str, listing: Path) -> list[str]:
    """The image names a dataset's listing promises: database then query names of the ground truth (each once),
    or the lines of ``revisitop1m.txt``."""
    if SOURCES[dataset].listing.endswith(".txt"):
        return [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    gt = read_ground_truth(listing)
    return list(dict.fromkeys(gt.imlist + gt.qimlist))


def _problem(path: Path) -> str | None:
    """None when ``path`` is an image PIL reads (header + verify), else why not."""
    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as img:
            img.verify()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"[:200]
    return None


def check_images(jpg: Path, names: list[str], ext: str, workers: int = 4, progress: bool = True,
                 batch: int = 1000) -> list[tuple[str, str]]:
    """``(name, reason)`` for each name whose file ``jpg/<name><ext>`` is absent, unreadable or not a path inside
    ``jpg`` (names taken as given, so the listing step can be fed any list)."""
    def check(chunk: list[str]) -> list[tuple[str, str]]:
        found = []
        for name in chunk:
            rel = PurePosixPath(name + ext)
            problem = ("not a path inside jpg/" if rel.is_absolute() or ".." in rel.parts
                       else _problem(jpg / rel))
            if problem:
                found.append((name, problem))
        return found

    chunks = [names[i:i + batch] for i in range(0, len(names), batch)]
    problems: list[tuple[str, str]] = []
    with tqdm(total=len(names), unit="img", desc=f"checking {jpg.parent.name}", disable=not progress) as bar, \
            ThreadPoolExecutor(max(workers, 1)) as pool:
        for chunk, found in zip(chunks, pool.map(check, chunks)):
            problems += found
            bar.update(len(chunk))
    return problems


def write_missing(path: Path, problems: list[tuple[str, str]]) -> Path:
    """``name,reason`` rows (header only when nothing is missing), written atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["name", "reason"])
    writer.writerows(problems)
    return write_text(path, buf.getvalue())


def download(dataset: str, out, archives: list[int] | None = None, cfg: RevisitedConfig | None = None,
             progress: bool = True) -> Summary:
    """The dataset's listing and every requested archive complete under ``out`` (archives that fail are reported,
    the others still finished), then the listed images that are missing or unreadable."""
    cfg = cfg or RevisitedConfig()
    out = Path(out)
    archives = parse_archives(None, dataset) if archives is None else archives
    source = SOURCES[dataset]
    summary = Summary(dataset=dataset, archives=len(archives))
    work = work_dir(out, dataset)
    try:
        listing: Path | None = fetch_listing(dataset, out, cfg)
    except DownloadError as exc:
        listing = None
        summary.failed[file_name(source.listing)] = str(exc)
    numbers = {file_name(source.archives[n - 1]): n for n in archives}

    def remaining(name: str) -> int:
        if (work / f"{name}.json").exists() or (work / name).exists():
            return 0
        return bytes_to_fetch(mirrored(source.archives[numbers[name] - 1], cfg.base_url), work / name, cfg.timeout)

    batch = run_archives(list(numbers), lambda name, bar: process_archive(dataset, numbers[name], out, cfg, bar),
                         remaining, cfg.workers, f"revisited {dataset}", progress)
    summary.add(batch, "files")
    summary.refused_members.update({name: record["refused"] for name, record in batch.records.items()
                                    if not record["skipped"] and record["refused"]})
    if listing is not None:
        try:
            names = expected_names(dataset, listing)
        except (DataError, OSError, UnicodeDecodeError) as exc:
            listing.unlink()  # not what the benchmark publishes (an error page?): a rerun downloads it again
            summary.failed[listing.name] = f"{exc}; deleted"
        else:
            problems = check_images(out / dataset / "jpg", names, source.ext, cfg.workers, progress)
            write_missing(out / dataset / "missing.csv", problems)
            summary.expected, summary.missing_count = len(names), len(problems)
            summary.missing = [name for name, _ in problems[:LISTED]]
    write_text(out / ".revisited" / f"{dataset}.summary.json", json.dumps(summary.__dict__, indent=1))
    return summary
