"""The bad-input matrix: image files a web-scale crawl contains, written over chosen ids of a
Kaggle-layout competition. Each case says whether the kit must decode it (``ok``) or skip it with a reason."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from landmark_kit.data import image_path


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(size=(160, 120), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(sum(size))
    rgb = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    return rgb.convert(mode)


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return _encoded(_photo((160, 96)), "JPEG", exif=exif)


def _sixteen_bit() -> bytes:
    return _encoded(Image.fromarray((np.arange(160 * 120, dtype=np.uint16).reshape(120, 160) * 3)), "PNG")


def _bomb() -> bytes:
    """A 20000 x 20000 PNG (400 Mpx, above PIL's decompression-bomb limit) that compresses to ~0.4 MB."""
    return _encoded(Image.new("L", (20000, 20000)), "PNG", compress_level=1)


# name -> (content maker or None for "no file", must decode?, reason fragment when skipped)
CASES = {
    "truncated_jpeg": (lambda: _encoded(_photo(), "JPEG")[:700], False, "corrupt or truncated"),
    "corrupt_bytes": (lambda: b"\xff\xd8\xff\xe0 not really a jpeg" * 20, False, "corrupt"),
    "zero_bytes": (lambda: b"", False, "empty file"),
    "png_as_jpg": (lambda: _encoded(_photo(), "PNG"), True, ""),
    "gif_as_jpg": (lambda: _encoded(_photo().convert("P"), "GIF"), True, ""),
    "webp_as_jpg": (lambda: _encoded(_photo(), "WEBP"), True, ""),
    "cmyk_jpeg": (lambda: _encoded(_photo(mode="CMYK"), "JPEG"), True, ""),
    "sixteen_bit_png": (_sixteen_bit, True, ""),
    "grayscale_jpeg": (lambda: _encoded(_photo(mode="L"), "JPEG"), True, ""),
    "rgba_png": (lambda: _encoded(_photo(mode="RGBA"), "PNG"), True, ""),
    "exif_rotated": (_exif_rotated, True, ""),
    "one_pixel": (lambda: _encoded(Image.new("RGB", (1, 1)), "JPEG"), False, "too small"),
    "bomb_20000px": (_bomb, False, "too large"),
    "missing": (None, False, "cannot read file"),
    "unreadable": ("directory", False, "cannot read file"),  # a folder where the file should be
}


def plant(root: Path, split: str, ids: list[str], cases=CASES) -> dict[str, str]:
    """Overwrite the images of ``ids`` (one per case, in order) in ``root/split``; returns id -> case."""
    if len(ids) < len(cases):
        raise ValueError(f"{len(cases)} cases need as many ids, got {len(ids)}")
    planted = {}
    for image_id, (name, (make, _, _)) in zip(ids, cases.items()):
        path = image_path(root, split, image_id)
        path.unlink(missing_ok=True)
        if make == "directory":
            path.mkdir()
        elif make is not None:
            path.write_bytes(make())
        planted[image_id] = name
    return planted


def copy_competition(src: Path, dst: Path) -> Path:
    """A writable copy of a Kaggle-layout competition folder."""
    shutil.copytree(src, dst, symlinks=False)
    os.sync()
    return dst
