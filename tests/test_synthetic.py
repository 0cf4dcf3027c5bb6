"""The synthetic competition: Kaggle layout, consistent tables, determinism, and views that verify."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pydegensac

from landmark_kit.data import image_path, load_image, read_train_csv, scan_split
from landmark_kit.submission import read_solution, validate_against
from landmark_kit.synthetic import SyntheticConfig, generate


def test_layout_and_tables_are_consistent(tiny_competition):
    root = tiny_competition
    gt = pd.read_csv(root / "ground_truth.csv")
    for split in ("train", "test", "index"):
        assert scan_split(root, split) == sorted(gt.loc[gt.split == split, "id"])
    train = read_train_csv(root / "train.csv")
    tr = gt[gt.split == "train"].set_index("id").loc[train["id"]]
    assert (train["landmark_id"].to_numpy() == tr["filed_landmark_id"].to_numpy()).all()
    # noise is flagged exactly where the filed label differs from the content
    assert (tr["noise"] == (tr["landmark_id"] != tr["filed_landmark_id"])).all()
    assert tr["noise"].any() and not tr.loc[~tr["noise"], "kind"].str.startswith("distractor").any()
    test = gt[gt.split == "test"]
    assert test["distractor"].any() and (~test["distractor"]).any()
    assert gt.loc[gt.split == "index", "distractor"].any()


def test_solutions_match_ground_truth(tiny_competition):
    root = tiny_competition
    gt = pd.read_csv(root / "ground_truth.csv").set_index("id")
    rec = read_solution(root / "recognition_solution.csv")
    ret = read_solution(root / "retrieval_solution.csv")
    assert rec.ids == set(gt.index[gt.split == "test"]) == ret.ids
    assert rec.public and rec.private
    index = gt[gt.split == "index"]
    for q, labels in rec.all.items():
        true = gt.at[q, "landmark_id"]
        assert labels == ([] if true < 0 else [true])
        if true >= 0:
            assert sorted(ret.all[q]) == sorted(index.index[index.landmark_id == true])
        else:
            assert q in ret.ignored


def test_sample_submissions_are_valid(tiny_competition):
    root = tiny_competition
    for name in ("recognition_sample_submission.csv", "retrieval_sample_submission.csv"):
        assert validate_against(root / name, data_root=root, train_csv=root / "train.csv") == []


def test_every_image_decodes_at_a_sane_size(tiny_competition):
    root = tiny_competition
    gt = pd.read_csv(root / "ground_truth.csv")
    for _, row in gt.iterrows():
        img = load_image(image_path(root, row.split, row.id), row.id)
        assert 100 <= max(img.size) <= 320


def _digest(root) -> str:
    h = hashlib.sha1()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "synthetic.json"):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_deterministic_across_worker_counts(tmp_path):
    cfg = dict(landmarks=3, seed=11, train_mean=4.0, min_side=160, max_side=200)
    generate(tmp_path / "a", SyntheticConfig(workers=1, **cfg), progress=False)
    generate(tmp_path / "b", SyntheticConfig(workers=2, **cfg), progress=False)
    generate(tmp_path / "c", SyntheticConfig(workers=1, **{**cfg, "seed": 12}), progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def _inliers(a: np.ndarray, b: np.ndarray, sift) -> int:
    ka, da = sift.detectAndCompute(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), None)
    kb, db = sift.detectAndCompute(cv2.cvtColor(b, cv2.COLOR_RGB2GRAY), None)
    if da is None or db is None or len(ka) < 8 or len(kb) < 8:
        return 0
    pairs = cv2.BFMatcher().knnMatch(da, db, k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < 0.8 * n.distance]
    if len(good) < 8:
        return 0
    src = np.float32([ka[m.queryIdx].pt for m in good])
    dst = np.float32([kb[m.trainIdx].pt for m in good])
    _, mask = pydegensac.findHomography(src, dst, 4.0)
    return int(np.sum(mask))


def test_local_features_and_ransac_verify_same_landmark_only(tiny_competition):
    """Two views of one building share many RANSAC inliers; views of different buildings do not."""
    root = tiny_competition
    gt = pd.read_csv(root / "ground_truth.csv")
    views = gt[(gt.kind == "exterior") & ~gt.hard]
    sift = cv2.SIFT_create(1000)
    same, diff = [], []
    landmarks = views.landmark_id.unique()
    for i, lm in enumerate(landmarks):
        rows = views[views.landmark_id == lm].head(2)
        other = views[views.landmark_id == landmarks[(i + 1) % len(landmarks)]].head(1)
        if len(rows) < 2 or other.empty:
            continue
        imgs = [np.asarray(load_image(image_path(root, r.split, r.id))) for r in [*rows.itertuples(), *other.itertuples()]]
        same.append(_inliers(imgs[0], imgs[1], sift))
        diff.append(_inliers(imgs[0], imgs[2], sift))
    print("inliers same", same, "different", diff)
    assert len(same) >= 3
    assert np.median(same) >= 25, same
    assert max(diff) < 20, diff
    assert np.median(same) > 3 * max(np.median(diff), 1)


def test_cli_writes_competition(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "landmark_kit.synthetic", "--out", str(tmp_path / "c"), "--landmarks", "2",
         "--train-mean", "4", "--max-side", "200", "--min-side", "160", "--workers", "1"],
        capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr
    assert '"landmarks": 2' in run.stdout
    for name in ("train.csv", "recognition_solution.csv", "retrieval_solution.csv", "ground_truth.csv",
                 "recognition_sample_submission.csv", "retrieval_sample_submission.csv", "synthetic.json"):
        assert (tmp_path / "c" / name).is_file()
