"""Cleaning: candidate pairs, the keep rule, and stage 01 end to end on the tiny synthetic competition."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from landmark_kit.cleaning import CleanConfig, all_candidate_pairs, candidate_pairs, clean, decide, pair_counts
from landmark_kit.local import LocalConfig
from landmark_kit.verify import VerifyConfig

ROOT = Path(__file__).resolve().parents[1]


def test_candidate_pairs_keep_same_label_neighbours_once():
    labels = np.array([1, 1, 2, 1, 2])
    neighbours = np.array([[0, 3, 1, 2], [1, 0, 4, 3], [2, 4, 0, -1], [3, 0, 1, 4], [4, 2, 1, 0]])
    pairs = candidate_pairs(neighbours, labels, max_verify=1)
    # image 0's first same-label neighbour is 3, image 1's is 0, image 3's is 0, images 2/4 each other
    assert pairs.tolist() == [[0, 1], [0, 3], [2, 4]]
    assert len(candidate_pairs(neighbours, labels, max_verify=5)) == 4  # + (1, 3)
    assert candidate_pairs(neighbours[3:], labels, 1, first_row=3).tolist() == [[0, 3], [2, 4]]


def test_chunked_knn_gives_the_pairs_of_one_search():
    from landmark_kit.search import knn

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(50, 8)).astype(np.float32)
    labels = rng.integers(0, 4, 50)
    whole = candidate_pairs(knn(feats, feats, 11)[1], labels, 3)
    assert np.array_equal(all_candidate_pairs(feats, labels, 10, 3, chunk=7), whole) and len(whole) > 20


def test_keep_rule_thresholds_and_rare_labels():
    train = pd.DataFrame({"id": list("abcdef"), "landmark_id": [1, 1, 1, 1, 2, 2]})
    i, j = np.array([0, 0, 0, 1, 4]), np.array([1, 2, 3, 2, 5])  # a-b, a-c, a-d, b-c, e-f
    candidates, verified = pair_counts(6, i, j, np.array([50, 40, 10, 31, 29]), threshold=30)
    assert candidates.tolist() == [3, 2, 2, 1, 1, 1]
    out = decide(train, candidates, verified, CleanConfig(inlier_threshold=30, t_frequency=1, min_images_per_label=2))
    got = dict(zip(out["id"], out["verified"]))
    assert got == {"a": 2, "b": 2, "c": 2, "d": 0, "e": 0, "f": 0}
    assert out.set_index("id")["kept"].to_dict() == {"a": True, "b": True, "c": True, "d": False,
                                                      "e": False, "f": False}
    rare = decide(train, candidates, verified, CleanConfig(inlier_threshold=30, t_frequency=1,
                                                           min_images_per_label=4))
    assert not rare["kept"].any() and rare["dropped_rare_label"].sum() == 3


def _cfg(**kw) -> CleanConfig:
    return CleanConfig(inlier_threshold=15, t_frequency=0, local=LocalConfig(workers=0),
                       verify=VerifyConfig(workers=1), **kw)


def test_clean_end_to_end_removes_injected_noise(tiny_competition, tmp_path):
    report = clean(_cfg(), tiny_competition, tmp_path / "out")
    for name in ("train_clean.csv", "per_image.csv", "per_label.csv", "pairs.csv", "inliers.png", "removed.png",
                 "report.json", "recipe.yaml"):
        assert (tmp_path / "out" / name).is_file(), name
    truth = report["against_ground_truth"]
    print("tiny cleaning", truth)
    assert truth["noise_images"] > 0 and truth["recall"] >= 0.8
    kept = pd.read_csv(tmp_path / "out" / "train_clean.csv", dtype={"id": str})
    assert list(kept.columns) == ["id", "landmark_id"] and len(kept) == report["kept"]


def test_sharded_ranks_merge_to_the_single_process_result(tiny_competition, tmp_path):
    single = clean(_cfg(), tiny_competition, tmp_path / "single", workdir=tmp_path / "work")
    first = clean(_cfg(rank=0, world_size=2), tiny_competition, tmp_path / "sharded", workdir=tmp_path / "work")
    assert "waiting for the other ranks" in first["status"]
    merged = clean(_cfg(rank=1, world_size=2), tiny_competition, tmp_path / "sharded", workdir=tmp_path / "work")
    assert merged == single
    a = pd.read_csv(tmp_path / "single" / "pairs.csv").sort_values(["a", "b"]).reset_index(drop=True)
    b = pd.read_csv(tmp_path / "sharded" / "pairs.csv").sort_values(["a", "b"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_cli_resumes_verified_pairs(tiny_competition, tmp_path):
    args = [sys.executable, str(ROOT / "stages" / "01_clean.py"), "--data-root", str(tiny_competition),
            "--recipe", str(ROOT / "cleaning" / "synthetic.yaml"), "--out-root", str(tmp_path), "--name", "t"]
    first = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-2000:]
    part = next(next((tmp_path / "t").glob("pairs_*_rank000of001")).glob("part_*.npz"))
    stamp = part.stat().st_mtime_ns
    second = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert second.returncode == 0
    assert part.stat().st_mtime_ns == stamp  # nothing re-verified
    assert json.loads(second.stdout) == json.loads(first.stdout)
