"""Any labelled photo folder as a Kaggle-layout competition (stages/00_data.py from-folders)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from landmark_kit.data import DataError, read_train_csv, scan_split
from landmark_kit.folders import build, collect, photo_id, plan_items
from landmark_kit.submission import read_solution, validate_against

ROOT = Path(__file__).resolve().parents[1]
REALDEV = ROOT.parent / "shared" / "realdev"


def _photo(path: Path, mode: str = "RGB", fmt: str | None = None, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path, fmt)


def _tree(root: Path) -> Path:
    """Two landmarks (one with a nested folder, a PNG and a grayscale JPEG) and a distractors/ folder."""
    for i, name in enumerate(["eiffel/a.jpg", "eiffel/b.png", "eiffel/more/c.jpg", "eiffel/d.jpg",
                              "big ben/x.jpg", "big ben/y.jpg", "distractors/p.jpg", "distractors/q.png"]):
        _photo(root / name, "L" if name == "eiffel/d.jpg" else "RGB", seed=i)
    return root


def test_folder_layout_becomes_a_scored_competition(tmp_path):
    src = _tree(tmp_path / "src")
    assert ("eiffel/more/c.jpg", "eiffel") in collect(src) and ("distractors/q.png", "") in collect(src)
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(ROOT / "stages" / "00_data.py"), "from-folders", str(src),
                          "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    train = read_train_csv(out / "train.csv")
    assert sorted(train["landmark_id"]) == [0, 1, 1]  # "big ben" = 0 (1 of 2 photos), "eiffel" = 1 (2 of 4)
    assert set(train["id"]) == {photo_id("big ben/x.jpg"), photo_id("eiffel/a.jpg"), photo_id("eiffel/b.png")}
    assert len(scan_split(out, "test")) == 4 and len(scan_split(out, "index")) == 4
    for split in ("train", "test", "index"):
        for i in scan_split(out, split):
            with Image.open(out / split / i[0] / i[1] / i[2] / f"{i}.jpg") as im:
                assert im.format == "JPEG"
    rec, ret = read_solution(out / "recognition_solution.csv"), read_solution(out / "retrieval_solution.csv")
    assert len(ret.ignored) == 1 and sum(1 for v in rec.all.values() if not v) == 1
    assert validate_against(out / "recognition_sample_submission.csv", data_root=out) == []


def test_seed_shuffles_the_split_reproducibly_and_halves_swap():
    items = [(f"l/{i}.jpg", "l") for i in range(10)] + [(f"d/{i}.jpg", "") for i in range(4)]
    plain = plan_items(items)
    assert set(plain.loc[plain.split == "train", "file"]) == {f"l/{i}.jpg" for i in range(5)}
    a, b, c = plan_items(items, seed=1), plan_items(items, seed=1), plan_items(items, seed=2)
    assert a.equals(b) and not a.equals(c)
    second = plan_items(items, half="second")
    queries = plain[(plain.split == "test") & (plain.landmark != "")]
    assert set(second.loc[second.split == "train", "file"]) == set(queries["file"])
    assert set(second.loc[second.split == "index", "file"]) - set(plain.loc[plain.split == "index", "file"]) == \
        set(queries["file"]) | {"d/0.jpg", "d/2.jpg"}  # the distractors swap test and index too


def test_bad_sources_are_named(tmp_path):
    mixed = tmp_path / "mixed"
    _photo(mixed / "a__1.jpg")
    _photo(mixed / "eiffel" / "1.jpg")
    with pytest.raises(DataError, match="use one layout"):
        collect(mixed)
    (tmp_path / "empty" / "eiffel").mkdir(parents=True)
    with pytest.raises(DataError, match="label folder without photos"):
        collect(tmp_path / "empty")
    broken = _tree(tmp_path / "broken")
    (broken / "eiffel" / "z.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="z.jpg: not a readable image"):
        build(broken, tmp_path / "out")
    only = tmp_path / "only"
    _photo(only / "distractors" / "1.jpg")
    with pytest.raises(DataError, match="no landmark photos"):
        build(only, tmp_path / "out2")


@pytest.mark.skipif(not REALDEV.is_dir(), reason="shared/realdev not present")
def test_realdev_is_the_flat_layout_with_the_default_split(tmp_path):
    from landmark_kit.realdev import build as realdev_build

    realdev_build(REALDEV, tmp_path / "a")
    build(REALDEV, tmp_path / "b")
    for name in ("train.csv", "recognition_solution.csv", "retrieval_solution.csv"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    assert scan_split(tmp_path / "a", "test") == scan_split(tmp_path / "b", "test")
