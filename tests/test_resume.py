"""Shard-level resume of every long stage: each stage is SIGKILLed mid-way (tests/killrun.py),
restarted with the same command, and must end with exactly the outputs of an uninterrupted run, having kept
the pieces finished before the kill."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from killrun import run_killed, run_stage


def _ensemble(tmp_path: Path) -> Path:
    recipe = tmp_path / "zero-shot-tiny.yaml"
    recipe.write_text("members:\n  - {name: tiny, backbone: test_efficientnet, image_size: 64}\nworkers: 0\n")
    return recipe


def _same_arrays(a: Path, b: Path, pattern: str) -> int:
    """Every file matching ``pattern`` under ``a`` exists under ``b`` with equal content; returns the count."""
    files = sorted(p.relative_to(a) for p in a.glob(pattern) if p.is_file())
    assert files, f"nothing matches {pattern} in {a}"
    for rel in files:
        x, y = a / rel, b / rel
        if rel.suffix == ".npy":
            assert np.array_equal(np.load(x), np.load(y)), rel
        elif rel.suffix == ".npz":
            with np.load(x) as zx, np.load(y) as zy:
                assert zx.files == zy.files and all(np.array_equal(zx[k], zy[k]) for k in zx.files), rel
        else:
            assert x.read_bytes() == y.read_bytes(), rel
    return len(files)


def test_extraction_resumes_within_a_split(tiny_competition, tmp_path):
    """Stage 03 with 16-image pieces, killed after two pieces of the train split: the rerun keeps them and
    ends with the uninterrupted run's descriptors and neighbours."""
    recipe = _ensemble(tmp_path)
    args = ["--data-root", tiny_competition, "--ensemble", recipe, "--shard-size", "16"]
    run_stage("03_ensemble.py", *args, "--workdir", tmp_path / "full")
    killed = tmp_path / "killed"
    run_killed("03_ensemble.py", "landmark_kit.ensemble:save_features", 2, *args, "--workdir", killed)
    features = killed / "features" / "tiny"
    pieces = sorted(p.name for p in features.glob("train.piece*.ids"))
    assert len(pieces) == 2 and not (features / "train.npy").exists()
    resumed = run_stage("03_ensemble.py", *args, "--workdir", killed)
    for piece in pieces:  # kept, not extracted again
        assert f"{piece[:-4]} already extracted" in resumed.stderr
    assert not list(features.glob("*.piece*"))
    assert _same_arrays(tmp_path / "full", killed, "features/tiny/*") >= 9
    assert _same_arrays(tmp_path / "full", killed, "neighbours/*.npz") == 2


def test_cleaning_resumes_local_features_and_verification(tiny_competition, tmp_path):
    """Stage 01 killed once in local-feature extraction (after two shards) and once in verification (after two
    saved chunks of pairs); the third start finishes with the uninterrupted run's files."""
    recipe = tmp_path / "clean.yaml"
    recipe.write_text(f"ensemble: {_ensemble(tmp_path)}\nk: 20\nmax_verify: 5\ninlier_threshold: 10\n"
                      "t_frequency: 0\nmin_images_per_label: 2\n"
                      "local: {backend: rootsift, max_keypoints: 300, shard_size: 16, workers: 0}\n"
                      "verify: {workers: 1, save_every: 40}\n")
    args = ["--data-root", tiny_competition, "--recipe", recipe, "--out-root", tmp_path, "--train-csv",
            tiny_competition / "train.csv"]
    full = json.loads(run_stage("01_clean.py", *args, "--name", "full").stdout)
    run_killed("01_clean.py", "landmark_kit.local:FeatureStore.write_shard", 2, *args, "--name", "killed")
    shards = sorted((tmp_path / "killed" / "work" / "local").glob("rootsift-*/train/shard_*"))
    assert len(shards) == 2
    stamps = [s.stat().st_mtime_ns for s in shards]
    run_killed("01_clean.py", "landmark_kit.cleaning:verify_pairs", 2, *args, "--name", "killed")
    assert [s.stat().st_mtime_ns for s in shards] == stamps  # kept, not extracted again
    (rank,) = (tmp_path / "killed").glob("pairs_*_rank000of001")
    assert len(list(rank.glob("part_*.npz"))) == 2 and not (rank / "complete.json").exists()
    resumed = json.loads(run_stage("01_clean.py", *args, "--name", "killed").stdout)
    assert resumed == full and full["pairs_verified"] > 80
    for name in ("pairs.csv", "per_image.csv", "train_clean.csv", "per_label.csv"):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "killed" / name).read_bytes(), name


def test_prediction_resumes_its_verification(tiny_competition, tmp_path):
    """Stage 04 with a verified shortlist, killed after one saved chunk of pairs: the rerun verifies only the
    rest and writes the uninterrupted run's submissions."""
    post = tmp_path / "p.yaml"
    post.write_text("k: 1\nverify_shortlist: 5\ninlier_floor: 5\nlocal: {max_keypoints: 300, workers: 0}\n"
                    "verify: {workers: 1, save_every: 30}\n")
    args = ["--data-root", tiny_competition, "--ensemble", _ensemble(tmp_path), "--recipe", post, "--out-root",
            tmp_path / "subs"]
    run_stage("04_predict.py", *args, "--workdir", tmp_path / "full", "--name", "full")
    run_killed("04_predict.py", "landmark_kit.predict:verify_pairs", 1, *args, "--workdir", tmp_path / "killed",
               "--name", "killed")
    (cache,) = (tmp_path / "killed" / "local" / "pairs").glob("test-train-*")
    assert [p.name for p in cache.glob("part_*.npz")] == ["part_00000.npz"]
    run_stage("04_predict.py", *args, "--workdir", tmp_path / "killed", "--name", "killed")
    assert len(list(cache.glob("part_*.npz"))) > 2
    for name in ("recognition.csv", "retrieval.csv"):
        a, b = (tmp_path / "subs" / run / name for run in ("full", "killed"))
        assert a.read_bytes() == b.read_bytes(), name
