"""The real-photo dev set as a Kaggle-layout folder, and the zero-shot path on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from landmark_kit.data import read_train_csv, scan_split
from landmark_kit.realdev import build, photo_id, plan_split
from landmark_kit.submission import read_solution, validate_against

ROOT = Path(__file__).resolve().parents[1]
REALDEV = ROOT.parent / "shared" / "realdev"


def test_split_rules():
    names = ["a__1.jpg", "a__2.jpg", "a__3.jpg", "b__1.png", "distractor__x.jpg", "distractor__y.png",
             "distractor__z.jpg"]
    plan = plan_split(names)
    by = {s: set(plan.loc[plan.split == s, "file"]) for s in ("train", "test", "index")}
    assert by["train"] == {"a__1.jpg", "b__1.png"}  # first half, at least one
    assert by["test"] == {"a__2.jpg", "a__3.jpg", "distractor__x.jpg", "distractor__z.jpg"}
    assert by["index"] == {"a__1.jpg", "b__1.png", "distractor__y.png"}
    assert plan.loc[plan.file == "a__1.jpg", "id"].iloc[0] == photo_id("a__1.jpg")
    with pytest.raises(ValueError, match="expected '<landmark>__<photo>'"):
        plan_split(["nolabel.jpg"])


def test_build_writes_kaggle_layout(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name in ["a__1.jpg", "a__2.png", "b__1.jpg", "b__2.jpg", "distractor__x.png", "distractor__y.jpg"]:
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(src / name)
    out = tmp_path / "out"
    summary = build(src, out)
    assert summary["landmarks"] == 2
    assert len(scan_split(out, "test")) == 3 and len(scan_split(out, "index")) == 3
    for split in ("train", "test", "index"):
        for i in scan_split(out, split):
            with Image.open(out / split / i[0] / i[1] / i[2] / f"{i}.jpg") as im:
                assert im.format == "JPEG"
    rec = read_solution(out / "recognition_solution.csv")
    ret = read_solution(out / "retrieval_solution.csv")
    assert len(ret.ignored) == 1 and sum(1 for v in rec.all.values() if not v) == 1
    assert validate_against(out / "retrieval_sample_submission.csv", data_root=out) == []
    assert sorted(read_train_csv(out / "train.csv")["landmark_id"]) == [0, 1]


@pytest.mark.slow
@pytest.mark.skipif(not REALDEV.is_dir(), reason="shared/realdev not present")
def test_zero_shot_path_on_real_photos(tmp_path):
    """`04_predict.py` on an empty workdir extracts, predicts and prints the two CSV paths; then score."""
    data = tmp_path / "realdev"
    build(REALDEV, data)
    run = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "04_predict.py"), "--data-root", data, "--workdir", tmp_path / "w",
         "--ensemble", ROOT / "ensembles" / "imagenet-lite0.yaml", "--out-root", tmp_path / "subs"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    rec, ret = run.stdout.strip().splitlines()[-2:]
    scores = {}
    for track, path in (("recognition", rec), ("retrieval", ret)):
        out = subprocess.run([sys.executable, str(ROOT / "stages" / "05_score.py"), "--solution",
                              data / f"{track}_solution.csv", "--submission", path, "--json"],
                             capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        scores[track] = json.loads(out.stdout)["scores"]["All"]
    print("realdev zero-shot", scores["recognition"]["GAP"], scores["retrieval"]["mAP@100"])
    # yardstick for plain ImageNet lite0 + GeM + kNN top-1: about GAP 0.77 / mAP@100 0.82
    assert scores["recognition"]["GAP"] > 0.65
    assert scores["retrieval"]["mAP@100"] > 0.7
