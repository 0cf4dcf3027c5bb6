"""Turn the real-photo dev set (``shared/realdev``) into a Kaggle-layout competition folder.

File names are ``<landmark>__<photo>.<ext>``; ``distractor`` means no landmark. The split follows the set's
README: per landmark the first half of its photos (sorted by name, at least one) are train and the rest test
queries; distractors alternate test / index; the index holds the train photos plus the index distractors;
ids are the first 16 hex chars of sha1(file name); Public / Private alternate by sorted id.

``--half second`` builds the complementary split from the same photos: per landmark the photos that were test
queries become the labelled train / index photos and the first-half photos become the queries; distractors
swap test and index. Tuning on one split and scoring on the other measures what transfers.

    python -m landmark_kit.realdev --src ../shared/realdev --out data/realdev [--half second]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
from collections import defaultdict
from pathlib import Path

import pandas as pd
from PIL import Image

from .artifacts import write_bytes
from .data import atomic_write_csv, image_path
from .submission import write_competition_files

EXTENSIONS = {".jpg", ".jpeg", ".png"}
DISTRACTOR = "distractor"


def photo_id(file_name: str) -> str:
    return hashlib.sha1(file_name.encode()).hexdigest()[:16]


HALVES = ("first", "second")


def plan_split(names: list[str], half: str = "first") -> pd.DataFrame:
    """One row per (photo, split): file, id, landmark name ('' for distractors), split; ``half`` picks the
    README's split or its complement."""
    if half not in HALVES:
        raise ValueError(f"half must be one of {HALVES}, found {half!r}")
    swap = half == "second"
    groups: dict[str, list[str]] = defaultdict(list)
    for name in sorted(names):
        if "__" not in name:
            raise ValueError(f"{name}: expected '<landmark>__<photo>' file name")
        groups[name.split("__", 1)[0]].append(name)
    rows = []
    for label, files in sorted(groups.items()):
        if label == DISTRACTOR:
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


def _write_jpeg(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        if img.format == "JPEG":
            out = data
        else:
            buf = io.BytesIO()
            img.convert("RGB").save(buf, "JPEG", quality=95)
            out = buf.getvalue()
    write_bytes(dst, out)


def build(src: str | os.PathLike, out: str | os.PathLike, half: str = "first") -> dict:
    """Write the competition folder (``half``: the README's split or its complement); returns counts."""
    src, out = Path(src), Path(out)
    names = [p.name for p in src.iterdir() if p.suffix.lower() in EXTENSIONS]
    if not names:
        raise FileNotFoundError(f"no photos in {src}")
    plan = plan_split(names, half)
    if plan.groupby("split")["id"].apply(lambda s: s.duplicated().any()).any():
        raise ValueError("two photos share an id (sha1 prefix collision)")
    landmarks = sorted(x for x in plan["landmark"].unique() if x)
    label_of = {name: i for i, name in enumerate(landmarks)}
    for row in plan.itertuples():
        _write_jpeg(src / row.file, image_path(out, row.split, row.id))
    plan["landmark_id"] = [label_of.get(x, -1) for x in plan["landmark"]]
    atomic_write_csv(plan, out / "ground_truth.csv")
    train = plan[plan.split == "train"]
    atomic_write_csv(train[["id", "landmark_id"]], out / "train.csv")
    test = plan[plan.split == "test"].sort_values("id")
    usage = ["Public" if i % 2 == 0 else "Private" for i in range(len(test))]
    write_competition_files(out, test, plan[plan.split == "index"], usage)
    summary = {"landmarks": len(landmarks), **plan["split"].value_counts().to_dict()}
    (out / "realdev.json").write_text(json.dumps({"source": str(src), "half": half, "labels": label_of, **summary}, indent=2))
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default="../shared/realdev", help="folder of <landmark>__<photo> files")
    ap.add_argument("--out", default="data/realdev", help="Kaggle-layout output folder")
    ap.add_argument("--half", default="first", choices=HALVES, help="the README's split or its complement")
    args = ap.parse_args(argv)
    print(json.dumps(build(args.src, args.out, args.half)))


if __name__ == "__main__":
    main()
