"""Data layer: ids, paths, label CSVs and image loading that survives real-world files."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from landmark_kit.data import (
    DataError,
    ImageDataset,
    ImageLoadError,
    check_id,
    collate_skip_bad,
    image_path,
    load_image,
    read_train_csv,
    scan_split,
)

GOOD = "0123456789abcdef"


@pytest.mark.parametrize("bad", ["../../etc/passwd", "0123456789ABCDEF", "0123456789abcde", "0123456789abcdefa",
                                 "0123456789abcdeg", "", None, 123, "0123456789abcde/"])
def test_ids_are_strictly_16_lowercase_hex(bad):
    with pytest.raises(DataError, match="invalid image id"):
        check_id(bad)


def test_image_path_is_kaggle_layout(tmp_path):
    assert image_path(tmp_path, "train", GOOD) == tmp_path / "train/0/1/2/0123456789abcdef.jpg"
    with pytest.raises(DataError, match="unknown split"):
        image_path(tmp_path, "val", GOOD)


def _save(img: Image.Image, path, fmt="JPEG", **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **kw)
    return path


def test_scan_split_finds_ids_and_reports_misplaced_files(tmp_path):
    img = Image.new("RGB", (32, 32))
    ids = ["00aa000000000001", "ffee000000000002"]
    for i in ids:
        _save(img, image_path(tmp_path, "test", i))
    assert scan_split(tmp_path, "test") == ids
    _save(img, tmp_path / "test" / "a" / "b" / "c" / "0123456789abcdef.jpg")
    with pytest.raises(DataError, match="expected under test/0/1/2/"):
        scan_split(tmp_path, "test")
    with pytest.raises(DataError, match="split folder not found"):
        scan_split(tmp_path, "index")


def test_read_train_csv_both_formats(tmp_path):
    a, b, c = GOOD, "1123456789abcdef", "2123456789abcdef"
    (tmp_path / "train.csv").write_text(f"id,url,landmark_id\n{a},http://x,7\n{b},,7\n{c},,9\n")
    df = read_train_csv(tmp_path / "train.csv")
    assert df["id"].tolist() == [a, b, c] and df["landmark_id"].tolist() == [7, 7, 9]
    (tmp_path / "clean.csv").write_text(f"landmark_id,images\n7,{a} {b}\n9,{c}\n")
    df2 = read_train_csv(tmp_path / "clean.csv")
    assert sorted(zip(df2["id"], df2["landmark_id"])) == sorted(zip(df["id"], df["landmark_id"]))


@pytest.mark.parametrize(
    "body, message",
    [
        ("id,landmark_id\n0123456789abcdef,1\n0123456789abcdef,2\n", r"line 3: duplicate id .* \(first on line 2\)"),
        ("id,landmark_id\n0123456789abcdef,1\n../../../etc/pass,2\n", "line 3: invalid image id"),
        ("id,landmark_id\n0123456789abcdef,x1\n", "line 2: landmark_id 'x1' is not an integer"),
        ("id,label\n0123456789abcdef,1\n", "expected columns"),
        ("landmark_id,images\n5,\n", "line 2: landmark 5 has no images"),
        ("", "not a readable CSV"),
    ],
)
def test_read_train_csv_errors_name_file_and_line(tmp_path, body, message):
    path = tmp_path / "train.csv"
    path.write_text(body)
    with pytest.raises(DataError, match=message):
        read_train_csv(path)


def test_load_image_applies_exif_rotation(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path = _save(img, tmp_path / "r.jpg", exif=exif.tobytes())
    out = load_image(path)
    assert out.size == (20, 40)  # portrait after transpose
    top = np.asarray(out)[:5].mean()
    bottom = np.asarray(out)[-5:].mean()
    assert top > 200 and bottom < 50


@pytest.mark.parametrize(
    "mode, fmt",
    [("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("P", "PNG"), ("I;16", "PNG"), ("LA", "PNG"), ("1", "PNG")],
)
def test_load_image_converts_modes_and_png_in_jpg(tmp_path, mode, fmt):
    img = Image.new(mode, (30, 20))
    path = _save(img, tmp_path / "x.jpg", fmt)  # PNG content behind a .jpg name too
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (30, 20)


def test_rgba_transparent_pixels_become_white(tmp_path):
    path = _save(Image.new("RGBA", (16, 16), (0, 0, 0, 0)), tmp_path / "t.jpg", "PNG")
    assert np.asarray(load_image(path)).min() == 255


def _jpeg_bytes(size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "content, reason",
    [
        (_jpeg_bytes()[:300], "corrupt or truncated"),
        (b"this is not an image at all", "not a recognised image format"),
        (b"", "empty file"),
        (_jpeg_bytes((4, 4)), "too small"),
    ],
)
def test_load_image_bad_files_raise_with_id_and_reason(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=reason) as info:
        load_image(path, image_id=GOOD)
    assert info.value.image_id == GOOD and GOOD in str(info.value)


def test_load_image_missing_file(tmp_path):
    with pytest.raises(ImageLoadError, match="cannot read file"):
        load_image(tmp_path / "nope.jpg", GOOD)


def test_load_image_refuses_decompression_bombs(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = _save(Image.new("RGB", (100, 100)), tmp_path / "big.jpg")
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(path)


def test_draft_mode_decodes_large_jpeg_smaller(tmp_path):
    path = _save(Image.new("RGB", (1600, 1200), (10, 20, 30)), tmp_path / "big.jpg")
    small = load_image(path, max_side=300)
    assert 300 <= max(small.size) < 1600


def test_dataset_skips_and_reports_bad_images(tmp_path):
    ids = [f"{i:016x}" for i in range(6)]
    for i in ids:
        _save(Image.new("RGB", (24, 24), (i.count("0") * 10, 0, 0)), image_path(tmp_path, "index", i))
    image_path(tmp_path, "index", ids[2]).write_bytes(b"garbage")
    image_path(tmp_path, "index", ids[4]).unlink()
    ds = ImageDataset(tmp_path, "index", ids, transform=lambda im: torch.from_numpy(np.asarray(im).copy()))
    seen, failed = [], []
    for batch, positions, bad in DataLoader(ds, batch_size=4, num_workers=1, collate_fn=collate_skip_bad):
        assert batch.shape[0] == len(positions)
        seen += positions.tolist()
        failed += bad
    assert seen == [0, 1, 3, 5]
    assert {f.image_id for f in failed} == {ids[2], ids[4]}
    assert all(f.reason for f in failed)


def test_dataset_rejects_bad_ids_up_front(tmp_path):
    with pytest.raises(DataError, match="position 1"):
        ImageDataset(tmp_path, "train", [GOOD, "../x"])
