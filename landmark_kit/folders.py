"""Any labelled photo folder as a Kaggle-layout competition, so the whole pipeline runs and scores on your photos.

Two source layouts:
- one folder per landmark (folder name = label) plus an optional ``distractors/`` folder of non-landmark photos;
- flat files named ``<label>__<name>`` with ``distractor`` as the non-landmark label (``../shared/realdev``).

Split rule: per landmark, the first half of its photos (sorted by path, or shuffled with ``seed``; at least
one) are labelled train photos and the rest test queries; distractors alternate test / index; the index holds
the train photos plus the index distractors, so a query's retrieval ground truth is the index photos of its
landmark. ``half="second"`` swaps the halves (the complementary split). Ids are the first 16 hex chars of
sha1(path relative to the source); Public / Private alternate by sorted test id; JPEGs are copied as they
are, other formats re-encoded as JPEG.

    python stages/00_data.py from-folders SRC --out DIR [--seed S] [--half second]
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from .artifacts import atomic_write_csv, write_bytes, write_text
from .data import DataError, image_path
from .submission import write_competition_files

EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
DISTRACTOR = "distractor"  # the flat layout's non-landmark label
DISTRACTOR_FOLDERS = {"distractors", "distractor"}
HALVES = ("first", "second")


def photo_id(key: str) -> str:
    """16 hex chars of sha1 of the photo's path relative to the source (its file name in the flat layout)."""
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def collect(src: str | os.PathLike) -> list[tuple[str, str]]:
    """``(relative path, label)`` of every photo under ``src`` (label '' = non-landmark), either layout."""
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"source folder not found: {src}")
    folders = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    photos = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
    if folders and photos:
        raise DataError(f"{src}: photos at the top level ({photos[0].name}) and label folders ({folders[0].name}); "
                        f"use one layout")
    if photos:
        return [(p.name, _flat_label(p.name)) for p in photos]
    items = []
    for folder in folders:
        label = "" if folder.name.lower() in DISTRACTOR_FOLDERS else folder.name
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
        if not files and label:
            raise DataError(f"{folder}: label folder without photos ({', '.join(sorted(EXTENSIONS))})")
        items += [(p.relative_to(src).as_posix(), label) for p in files]
    if not items:
        raise DataError(f"no photos in {src}")
    return items


def _flat_label(name: str) -> str:
    if "__" not in name:
        raise ValueError(f"{name}: expected '<landmark>__<photo>' file name")
    label = name.split("__", 1)[0]
    return "" if label == DISTRACTOR else label


def plan_items(items: list[tuple[str, str]], half: str = "first", seed: int | None = None) -> pd.DataFrame:
    """One row per (photo, split): file, id, landmark ('' for distractors), split."""
    if half not in HALVES:
        raise ValueError(f"half must be one of {HALVES}, found {half!r}")
    swap = half == "second"
    groups: dict[str, list[str]] = defaultdict(list)
    for key, label in sorted(items):
        groups[label].append(key)
    rng = np.random.default_rng(seed) if seed is not None else None
    rows = []
    for label, files in sorted(groups.items()):
        if rng is not None:
            files = [files[i] for i in rng.permutation(len(files))]
        if not label:
            for i, f in enumerate(files):
                rows.append((f, photo_id(f), "", "test" if (i % 2 == 0) != swap else "index"))
            continue
        n_train = max(1, len(files) // 2)
        for i, f in enumerate(files):
            if (i < n_train) != swap:
                rows += [(f, photo_id(f), label, "train"), (f, photo_id(f), label, "index")]
            else:
                rows.append((f, photo_id(f), label, "test"))
    return pd.DataFrame(rows, columns=["file", "id", "landmark", "split"])


def plan_split(names: list[str], half: str = "first") -> pd.DataFrame:
    """:func:`plan_items` of flat ``<label>__<name>`` file names in sorted order."""
    return plan_items([(n, _flat_label(n)) for n in names], half)


def write_jpeg(src: Path, dst: Path) -> None:
    """Copy a JPEG as is (the loader applies EXIF rotation and converts grayscale / CMYK when it reads);
    re-encode anything else (PNG, WebP, ...) as an RGB JPEG."""
    data = src.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format == "JPEG":
                out = data
            else:
                buf = io.BytesIO()
                ImageOps.exif_transpose(img).convert("RGB").save(buf, "JPEG", quality=95)
                out = buf.getvalue()
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{src}: not a readable image ({exc})") from None
    write_bytes(dst, out)


def build(src: str | os.PathLike, out: str | os.PathLike, half: str = "first", seed: int | None = None) -> dict:
    """Write the competition folder from ``src``; returns counts (also in ``out/folders.json``)."""
    src, out = Path(src), Path(out)
    plan = plan_items(collect(src), half, seed)
    if plan.drop_duplicates(["file"])["id"].duplicated().any():
        raise DataError(f"{src}: two photos share an id (sha1 prefix collision); rename one")
    landmarks = sorted(x for x in plan["landmark"].unique() if x)
    if not landmarks:
        raise DataError(f"{src}: no landmark photos, only distractors")
    label_of = {name: i for i, name in enumerate(landmarks)}
    for row in plan.drop_duplicates(["file", "split"]).itertuples():
        write_jpeg(src / row.file, image_path(out, row.split, row.id))
    plan["landmark_id"] = [label_of.get(x, -1) for x in plan["landmark"]]
    atomic_write_csv(plan, out / "ground_truth.csv")
    atomic_write_csv(plan[plan.split == "train"][["id", "landmark_id"]], out / "train.csv")
    test = plan[plan.split == "test"].sort_values("id")
    usage = ["Public" if i % 2 == 0 else "Private" for i in range(len(test))]
    write_competition_files(out, test, plan[plan.split == "index"], usage)
    summary = {"landmarks": len(landmarks), **plan["split"].value_counts().to_dict()}
    write_text(out / "folders.json", json.dumps({"source": str(src), "half": half, "seed": seed,
                                                 "labels": label_of, **summary}, indent=2))
    return summary
