"""Issue 16's bad-input matrix through every stage that reads images (01 clean, 02 train, 03 extract, 04
predict with local features): truncated / corrupt / empty files, PNG / GIF / WebP behind .jpg, CMYK, 16-bit,
grayscale, RGBA, EXIF rotation, 1x1, a 20000 x 20000 bomb, a missing file and a folder in its place planted
in every split, and (separately) files without read permission. Each stage finishes; decodable files get
descriptors; the others are listed with id and reason; every test id still gets a submission row."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from badinputs import CASES, copy_competition, plant
from killrun import run_stage
from landmark_kit.data import image_path, scan_split
from landmark_kit.submission import validate_against

SKIPPED = {name for name, (_, ok, _) in CASES.items() if not ok}


@pytest.fixture(scope="module")
def bad(tiny_competition, tmp_path_factory):
    """The tiny competition with the matrix planted in train, test and index; id -> case per split."""
    root = copy_competition(tiny_competition, tmp_path_factory.mktemp("bad") / "competition")
    planted = {split: plant(root, split, sorted(scan_split(tiny_competition, split))[:len(CASES)])
               for split in ("train", "test", "index")}
    return root, planted


@pytest.fixture(scope="module")
def ensemble_recipe(tmp_path_factory):
    recipe = tmp_path_factory.mktemp("recipes") / "zero-shot-tiny.yaml"
    recipe.write_text("members:\n  - {name: tiny, backbone: test_efficientnet, image_size: 64}\nworkers: 1\n")
    return recipe


NOT_FILES = {"missing", "unreadable"}  # no image file: the index split (a folder scan) cannot know these ids


def _expect(planted: dict[str, str], split: str = "train") -> dict[str, str]:
    """id -> the reason fragment of every planted file that must be skipped. Train ids come from train.csv
    and test ids from the sample submission too, so a missing file there is listed; the index is its folder."""
    return {i: CASES[name][2] for i, name in planted.items()
            if name in SKIPPED and not (split == "index" and name in NOT_FILES)}


def _check_listed(listed: pd.DataFrame, planted: dict[str, str], split: str = "train", every: bool = True) -> None:
    """The listed ids are the unreadable planted files (all of them unless ``every`` is off: a job that read
    only some images), each with its reason."""
    expected = _expect(planted, split)
    if every:
        assert set(listed["id"]) == set(expected), (set(listed["id"]) ^ set(expected))
    assert set(listed["id"]) <= set(expected) and len(listed), set(listed["id"]) - set(expected)
    for image_id, reason in zip(listed["id"], listed["reason"]):
        assert expected[image_id] in reason, (planted[image_id], reason)


def _check_every_test_id_has_a_row(submissions: Path, test_ids: set[str]) -> None:
    """Both submission CSVs in ``submissions`` have exactly one row per test id."""
    for name in ("recognition.csv", "retrieval.csv"):
        rows = pd.read_csv(submissions / name, dtype=str, keep_default_na=False)
        assert set(rows["id"]) == test_ids and len(rows) == len(test_ids), name


@pytest.mark.parametrize("decode", ["cpu", "device"])
def test_extraction_lists_exactly_the_unreadable_files(bad, ensemble_recipe, tmp_path, decode):
    from landmark_kit.ensemble import load_features

    root, planted = bad
    run_stage("03_ensemble.py", "--data-root", root, "--workdir", tmp_path, "--ensemble", ensemble_recipe,
              "--decode", decode)
    for split in ("train", "test", "index"):
        folder = tmp_path / "features" / "tiny"
        _check_listed(pd.read_csv(folder / f"{split}.failed.csv", dtype=str), planted[split], split)
        feats, ids = load_features(folder, split)
        norms = dict(zip(ids, np.linalg.norm(np.asarray(feats, np.float32), axis=1)))
        for image_id, name in planted[split].items():
            if split == "index" and name in NOT_FILES:
                assert image_id not in norms
                continue
            assert (norms[image_id] > 0.99) == CASES[name][1], (split, name, norms[image_id])


def test_prediction_with_local_features_gives_every_test_id_a_row(bad, ensemble_recipe, tmp_path):
    root, planted = bad
    post = tmp_path / "p.yaml"
    post.write_text("k: 3\nverify_shortlist: 5\ninlier_floor: 5\nlocal_rerank: 5\n"
                    "local: {max_keypoints: 200, workers: 1}\nverify: {workers: 1}\n")
    out = run_stage("04_predict.py", "--data-root", root, "--workdir", tmp_path / "w", "--ensemble", ensemble_recipe,
                    "--recipe", post, "--out-root", tmp_path, "--name", "s")
    assert "unreadable image(s)" in out.stderr
    test_ids = set(pd.read_csv(root / "recognition_sample_submission.csv", dtype=str)["id"])
    assert len(test_ids) == 30 and set(planted["test"]) <= test_ids  # missing files included
    _check_every_test_id_has_a_row(tmp_path / "s", test_ids)
    for name in ("recognition.csv", "retrieval.csv"):
        assert validate_against(tmp_path / "s" / name, data_root=root) == []  # stage 05 --validate agrees
    skipped = pd.read_csv(tmp_path / "s" / "skipped.csv", dtype=str)
    for split in ("train", "test", "index"):
        for step, listed in skipped[skipped["split"] == split].groupby("step"):  # local features: shortlists only
            _check_listed(listed, planted[split], split, every=not step.startswith("local:"))
    steps = skipped.groupby("split")["step"].agg(set)
    assert all("tiny" in steps[split] for split in ("train", "test", "index"))
    assert any(s.startswith("local:") for s in steps["test"])


def test_cleaning_lists_unreadable_train_images_and_never_keeps_them(bad, ensemble_recipe, tmp_path):
    root, planted = bad
    recipe = tmp_path / "clean.yaml"
    recipe.write_text(f"ensemble: {ensemble_recipe}\nk: 20\nmax_verify: 5\ninlier_threshold: 10\nt_frequency: 0\n"
                      "min_images_per_label: 2\nlocal: {max_keypoints: 200, workers: 1}\nverify: {workers: 1}\n")
    report = json.loads(run_stage("01_clean.py", "--data-root", root, "--recipe", recipe, "--out-root", tmp_path,
                                  "--name", "c").stdout)
    expected = _expect(planted["train"])
    assert report["unreadable_images"] == len(expected)
    skipped = pd.read_csv(tmp_path / "c" / "skipped.csv", dtype=str)
    for _, listed in skipped.groupby("step"):
        _check_listed(listed, planted["train"])
    kept = set(pd.read_csv(tmp_path / "c" / "train_clean.csv", dtype=str)["id"])
    assert not kept & set(expected)


def test_training_skips_and_lists_unreadable_train_images(bad, tmp_path):
    root, planted = bad
    run_stage("02_train.py", "--data-root", root, "--workdir", tmp_path, "--model", "test_efficientnet",
              "--weights", "none", "--epochs", "1", "--sides", "48", "64", "--batch-size", "8", "--workers", "1",
              "--dim", "16")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(state["skipped"]) == set(_expect(planted["train"]))


NOBODY = 65534


@pytest.fixture
def shared_tmp():
    """A folder every user may enter (pytest's own is root-only): for a stage run as another user."""
    folder = Path(tempfile.mkdtemp(prefix="lk-perm-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder)


def test_files_without_read_permission_are_listed_and_test_ids_keep_rows(tiny_competition, ensemble_recipe,
                                                                          shared_tmp):
    """A file the process may not read (mode 000) is skipped with its id and 'Permission denied', in every
    split, and its test id still gets a row. Root reads any file, so under root the stage runs as nobody."""
    root = copy_competition(tiny_competition, shared_tmp / "competition")
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        folder.chmod(0o755)  # copied from pytest's root-only folder
    locked = {split: sorted(scan_split(root, split))[1] for split in ("train", "test", "index")}
    for split, image_id in locked.items():
        image_path(root, split, image_id).chmod(0)
    work = shared_tmp / "work"
    work.mkdir(mode=0o777)
    work.chmod(0o777)
    recipe = Path(shutil.copy(ensemble_recipe, shared_tmp))
    post = shared_tmp / "p.yaml"
    post.write_text("k: 3\nverify_shortlist: 5\ninlier_floor: 5\nlocal: {max_keypoints: 200, workers: 1}\n"
                    "verify: {workers: 1}\n")
    as_user = ()
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root, which reads any file, and no setpriv (util-linux) to run as nobody")
        as_user = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
    run_stage("04_predict.py", "--data-root", root, "--workdir", work / "w", "--ensemble", recipe, "--recipe", post,
              "--out-root", work, "--name", "s", prefix=as_user,
              extra_env={"HOME": str(work), "MPLCONFIGDIR": str(work / "mpl")})
    skipped = pd.read_csv(work / "s" / "skipped.csv", dtype=str)
    for split, image_id in locked.items():
        rows = skipped[(skipped["split"] == split) & (skipped["id"] == image_id)]
        assert len(rows) and rows["reason"].str.contains("Permission denied").all(), (split, skipped)
    assert set(skipped["id"]) == set(locked.values())
    _check_every_test_id_has_a_row(work / "s", set(scan_split(tiny_competition, "test")))
