"""GLDv2 data layer: ids, paths, label CSVs, robust image loading and a torch Dataset over ids.

Everything here follows the Kaggle layout exactly: ``<root>/<split>/a/b/c/<id>.jpg`` with 16-hex-char ids
(other layouts, e.g. a benchmark's named files with crop boxes, come in as an :class:`ImageSource`).
Bad input never crashes a long run silently: CSV problems raise :class:`DataError` naming the file and row,
unreadable images raise :class:`ImageLoadError` (or are skipped and reported by the Dataset).
"""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from .artifacts import DamagedArtifact, DataError, atomic_path, atomic_write_csv  # noqa: F401  (importable from here)

log = logging.getLogger(__name__)
SPLITS = ("train", "test", "index")
_ID_RE = re.compile(r"^[0-9a-f]{16}$")
MIN_IMAGE_SIDE = 8


class ImageLoadError(OSError):
    """An image that cannot be used; carries the image id and a short reason."""

    def __init__(self, image_id: str, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"image {image_id} ({path}): {reason}")
        self.image_id = image_id
        self.path = str(path)
        self.reason = reason


def is_valid_id(image_id: object) -> bool:
    """True for a GLDv2 image id: exactly 16 lowercase hex characters."""
    return isinstance(image_id, str) and _ID_RE.match(image_id) is not None


def check_id(image_id: object, where: str = "") -> str:
    """Return ``image_id`` or raise :class:`DataError`; ids become paths, so nothing else gets through."""
    if not is_valid_id(image_id):
        raise DataError(f"{where}invalid image id {image_id!r}: expected 16 lowercase hex characters")
    return image_id  # type: ignore[return-value]


def image_path(root: str | os.PathLike, split: str, image_id: str) -> Path:
    """Kaggle path of an image: ``<root>/<split>/<id[0]>/<id[1]>/<id[2]>/<id>.jpg``."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: expected one of {SPLITS}")
    check_id(image_id)
    return Path(root) / split / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


def scan_split(root: str | os.PathLike, split: str) -> list[str]:
    """Sorted ids of all images under ``<root>/<split>``; misplaced or misnamed files raise DataError."""
    base = Path(root) / split
    if not base.is_dir():
        raise DataError(f"split folder not found: {base}")
    ids: list[str] = []
    problems: list[str] = []
    for dirpath, _, files in os.walk(base):
        rel = Path(dirpath).relative_to(base).parts
        for name in files:
            stem, ext = os.path.splitext(name)
            if ext.lower() != ".jpg":
                problems.append(f"{Path(dirpath) / name}: not a .jpg file")
            elif not is_valid_id(stem):
                problems.append(f"{Path(dirpath) / name}: file name is not a 16-hex-char id")
            elif tuple(rel) != (stem[0], stem[1], stem[2]):
                problems.append(f"{Path(dirpath) / name}: expected under {split}/{stem[0]}/{stem[1]}/{stem[2]}/")
            else:
                ids.append(stem)
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(f"{len(problems)} unexpected file(s) under {base}:\n  {shown}{more}")
    return sorted(ids)


def require_inputs(data_root: str | os.PathLike, splits: tuple[str, ...],
                   train_csv: str | os.PathLike | None = None) -> None:
    """Raise DataError, one line naming every missing input: the data root, else the train CSV (``train_csv`` or
    ``<root>/train.csv``, when ``splits`` holds train) and split folders. Call it before writing anything."""
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(f"data root {root}: {'not a folder' if root.exists() else 'not found'}")
    missing = []
    if "train" in splits:
        labels = Path(train_csv) if train_csv else root / "train.csv"
        if not labels.is_file():
            missing.append(f"train CSV {labels}" + (" (--train-csv)" if train_csv else ""))
    missing += [f"split folder {root / split}/" for split in splits if not (root / split).is_dir()]
    if missing:
        raise DataError(f"missing input(s): {', '.join(missing)}")


SAMPLE_SUBMISSIONS = ("sample_submission.csv", "recognition_sample_submission.csv", "retrieval_sample_submission.csv")


def split_ids(data_root: str | os.PathLike, split: str, train_csv: str | os.PathLike | None = None) -> list[str]:
    """Ids of a split: train from its CSV (the labelled set), test/index by scanning the folder. A data root
    without ``index/`` (a recognition-only competition, e.g. GLR2021) has an empty index split. Test ids listed
    by a Kaggle sample submission but without a readable file are kept (reported unreadable, still given a
    submission row): the leaderboard scores every id of the sample."""
    if split == "train":
        return read_train_csv(train_csv or Path(data_root) / "train.csv")["id"].tolist()
    if split == "index" and not (Path(data_root) / "index").is_dir():
        log.warning("%s has no index/ folder: empty index split (recognition only; retrieval rows stay empty)",
                    data_root)
        return []
    ids = scan_split(data_root, split)
    if split != "test":
        return ids
    listed: set[str] = set()
    for name in SAMPLE_SUBMISSIONS:
        if (Path(data_root) / name).is_file():
            sample = read_csv_str(Path(data_root) / name)
            if "id" not in sample.columns:
                raise DataError(f"{Path(data_root) / name}: no id column")
            listed.update(check_id(i, f"{Path(data_root) / name}, line {n}: ") for n, i in enumerate(sample["id"], 2))
    absent = listed - set(ids)
    if absent:
        log.warning("%d test id(s) of the sample submission have no image file under %s (e.g. %s): they get a "
                    "row and are reported unreadable", len(absent), Path(data_root) / split, min(absent))
    return sorted(set(ids) | listed)


def read_csv_str(path: str | os.PathLike) -> pd.DataFrame:
    """A CSV with every cell a string (empty cells stay ''); unreadable files raise DataError naming them."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None


def _parse_labels(values: Iterable[str], path: str | os.PathLike, first_row: int = 2) -> np.ndarray:
    out = []
    for row, value in enumerate(values, start=first_row):
        text = value.strip()
        if not re.fullmatch(r"-?\d+", text):
            raise DataError(f"{path}, line {row}: landmark_id {value!r} is not an integer")
        out.append(int(text))
    return np.asarray(out, dtype=np.int64)


def _check_unique_ids(ids: Sequence[str], path: str | os.PathLike, lines: Sequence[int]) -> None:
    seen: dict[str, int] = {}
    for image_id, line in zip(ids, lines):
        check_id(image_id, f"{path}, line {line}: ")
        if image_id in seen:
            raise DataError(f"{path}, line {line}: duplicate id {image_id} (first on line {seen[image_id]})")
        seen[image_id] = line


def read_train_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read GLDv2 ``train.csv`` (``id,landmark_id[,url]``) or GLDv2-clean (``landmark_id,images``).

    Returns a frame with columns ``id`` (str) and ``landmark_id`` (int64), one row per image, file order kept.
    """
    df = read_csv_str(path)
    cols = list(df.columns)
    if {"id", "landmark_id"} <= set(cols):
        ids = [s.strip() for s in df["id"]]
        labels = _parse_labels(df["landmark_id"], path)
        lines = list(range(2, len(ids) + 2))
    elif {"landmark_id", "images"} <= set(cols):
        ids, label_list, lines = [], [], []
        for line, (label, images) in enumerate(zip(df["landmark_id"], df["images"]), start=2):
            parsed = _parse_labels([label], path, line)[0]
            tokens = images.split()
            if not tokens:
                raise DataError(f"{path}, line {line}: landmark {parsed} has no images")
            ids.extend(tokens)
            label_list.extend([parsed] * len(tokens))
            lines.extend([line] * len(tokens))
        labels = np.asarray(label_list, dtype=np.int64)
    else:
        raise DataError(f"{path}: expected columns id,landmark_id or landmark_id,images, found {','.join(cols)}")
    _check_unique_ids(ids, path, lines)
    return pd.DataFrame({"id": ids, "landmark_id": labels})


def write_train_csv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``id,landmark_id`` atomically."""
    atomic_write_csv(df[["id", "landmark_id"]], path)


def upright_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) after EXIF rotation, from the file header alone; None when unreadable."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            rotated = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # orientations that swap the axes
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    return (height, width) if rotated else (width, height)


def load_image(path: str | os.PathLike, image_id: str = "?", max_side: int | None = None) -> Image.Image:
    """Decode any image file into an upright RGB PIL image.

    Handles EXIF orientation, grayscale, palette, CMYK, 16-bit and alpha (composited on white) and
    content that is not JPEG despite the name (PNG-in-.jpg). With ``max_side`` JPEGs are decoded in
    draft mode (DCT-domain downscale, ~1.5x faster) to at least that size. Raises :class:`ImageLoadError`
    for missing, truncated, corrupt, tiny (< 8 px) or decompression-bomb files.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ImageLoadError(image_id, path, f"cannot read file ({exc.strerror or exc})") from None
    if not data:
        raise ImageLoadError(image_id, path, "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if max_side is not None and img.format == "JPEG":
                img.draft("RGB", (max_side, max_side))
            img.load()
            img = ImageOps.exif_transpose(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(image_id, path, f"image too large ({exc})") from None
    except UnidentifiedImageError:
        raise ImageLoadError(image_id, path, "not a recognised image format (corrupt file?)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(image_id, path, f"corrupt or truncated image ({exc})") from None
    if min(img.size) < MIN_IMAGE_SIDE:
        raise ImageLoadError(image_id, path, f"image too small ({img.size[0]}x{img.size[1]} px)")
    return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        scale = 255.0 / max(float(arr.max()), 1.0)
        return Image.fromarray((arr * scale).clip(0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


@dataclass(frozen=True)
class Failure:
    """One image skipped by a loader, with why."""

    image_id: str
    reason: str


Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in upright pixels


def crop_box(box: Box, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``box`` rounded to whole pixels and clipped to an image of ``size`` (width, height)."""
    width, height = size
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    return max(0, min(x1, width)), max(0, min(y1, height)), max(0, min(x2, width)), max(0, min(y2, height))


@dataclass(frozen=True)
class ImageSource:
    """Images named by explicit files instead of the Kaggle layout (any names, e.g. a benchmark's): ``paths``
    maps each name to its file, ``boxes`` optionally to a crop box applied after EXIF rotation, before resizing."""

    paths: Mapping[str, str | os.PathLike]
    boxes: Mapping[str, Box] = field(default_factory=dict)


class ImageDataset:
    """A torch-style map Dataset over image ids of one split.

    Items are ``(tensor_or_array, position)``; an unreadable image yields ``(None, position, reason)``
    instead of raising, and :func:`collate_skip_bad` drops it and reports it, so a 4M-image pass never
    dies on one bad file. ``transform`` maps a PIL RGB image to whatever the model needs. With ``source``
    the ids are any names of its files (cropped to their boxes) instead of Kaggle ids under ``root``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        ids: Sequence[str],
        transform: Callable[[Image.Image], object] | None = None,
        max_side: int | None = None,
        source: ImageSource | None = None,
    ) -> None:
        if source is None:
            for i, image_id in enumerate(ids):
                check_id(image_id, f"{split} ids, position {i}: ")
        else:
            unknown = [i for i in ids if i not in source.paths]
            if unknown:
                raise DataError(f"{split}: {len(unknown)} image name(s) without a file in the source, "
                                f"e.g. {unknown[0]}")
        self.root = Path(root)
        self.split = split
        self.ids = list(ids)
        self.transform = transform
        self.max_side = max_side
        self.source = source

    def __len__(self) -> int:
        return len(self.ids)

    def path(self, position: int) -> Path:
        if self.source is not None:
            return Path(self.source.paths[self.ids[position]])
        return image_path(self.root, self.split, self.ids[position])

    def box(self, position: int) -> Box | None:
        """The crop box of an image (None: the whole image)."""
        return None if self.source is None else self.source.boxes.get(self.ids[position])

    def size(self, position: int) -> tuple[int, int] | None:
        """(width, height) of the item before any resize, from the file header (cropped); None when unreadable."""
        size, box = upright_size(self.path(position)), self.box(position)
        if size is None or box is None:
            return size
        x1, y1, x2, y2 = crop_box(box, size)
        return x2 - x1, y2 - y1

    def __getitem__(self, position: int):
        image_id, box = self.ids[position], self.box(position)
        try:  # a cropped image is decoded whole: draft mode would shrink the box's pixels
            img = load_image(self.path(position), image_id, self.max_side if box is None else None)
            if box is not None:
                img = img.crop(crop_box(box, img.size))
                if min(img.size) < MIN_IMAGE_SIDE:
                    raise ImageLoadError(image_id, self.path(position), f"crop box {tuple(box)} leaves "
                                         f"{img.size[0]}x{img.size[1]} px")
        except ImageLoadError as exc:
            return None, position, Failure(image_id, exc.reason)
        return (self.transform(img) if self.transform else img), position, None


def collate_skip_bad(batch):
    """Collate ``ImageDataset`` items: stack the good ones; returns ``(tensor|None, positions, failures)``."""
    import torch

    good = [(x, pos) for x, pos, err in batch if err is None]
    failures = [err for _, _, err in batch if err is not None]
    positions = torch.as_tensor([pos for _, pos in good], dtype=torch.long)
    if not good:
        return None, positions, failures
    xs = [x for x, _ in good]
    stacked = torch.stack([torch.as_tensor(np.asarray(x)) if not torch.is_tensor(x) else x for x in xs])
    return stacked, positions, failures
