"""Damaged files in a run folder: every kind of cached artifact, cut to half its bytes as a full disk
or an interrupted copy leaves it, is named in a warning, removed and made again by the same run (exit 0, the
undamaged run's outputs); a damaged checkpoint, an input, is refused in one line naming it (exit 2)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from killrun import ROOT, env, run_stage
from landmark_kit.local import FeatureStore
from landmark_kit.train import TrainConfig, train

pytestmark = pytest.mark.slow


def _stage(script: str, *args) -> subprocess.CompletedProcess:
    """``stages/<script>`` to its end, whatever its exit status."""
    return subprocess.run([sys.executable, str(ROOT / "stages" / script), *map(str, args)], capture_output=True,
                          text=True, env=env(), cwd=ROOT, timeout=900)


def _truncate(path: Path) -> Path:
    """Keep the first half of ``path``'s bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _one(folder: Path, pattern: str) -> Path:
    """The one file of ``folder`` that matches ``pattern``."""
    (path,) = folder.glob(pattern)
    return path


def _arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a .npy (one, named "") or .npz file."""
    if path.suffix == ".npy":
        return {"": np.load(path)}
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _pairs(folder: Path) -> list[tuple]:
    """Every ``(query, database, inliers)`` of a stage-04 pair cache, sorted."""
    chunks = [_arrays(p) for p in sorted(folder.glob("part_*.npz"))]
    return sorted(zip(*(np.concatenate([c[k] for c in chunks]).tolist() for k in ("query", "database", "inliers"))))


def _same(a: Path, b: Path) -> None:
    """Files ``a`` and ``b`` hold the same arrays (.npy, .npz) or bytes (anything else)."""
    if a.suffix in (".npy", ".npz"):
        x, y = _arrays(a), _arrays(b)
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x), a
    else:
        assert a.read_bytes() == b.read_bytes(), a


def _repaired(done: subprocess.CompletedProcess, damaged: Path) -> None:
    """The run ended well, having warned about ``damaged`` by name."""
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"WARNING {damaged}: damaged file (" in done.stderr, done.stderr[-3000:]


@pytest.fixture(scope="module")
def predicted(tiny_competition, tmp_path_factory) -> dict:
    """An undamaged stage-04 run with a verified shortlist (pairs saved in several chunks) and its arguments."""
    base = tmp_path_factory.mktemp("predicted")
    ensemble, post = base / "zero-shot-tiny.yaml", base / "verify.yaml"
    ensemble.write_text("members:\n  - {name: tiny, backbone: test_efficientnet, image_size: 64}\nworkers: 0\n")
    post.write_text("k: 1\nverify_shortlist: 5\ninlier_floor: 5\nlocal: {max_keypoints: 300, workers: 0}\n"
                    "verify: {workers: 1, save_every: 30}\n")
    args = ["--data-root", tiny_competition, "--ensemble", ensemble, "--recipe", post, "--name", "run"]
    run_stage("04_predict.py", *args, "--workdir", base / "run", "--out-root", base / "subs")
    return {"base": base, "args": args, "ensemble": ensemble}


@pytest.mark.parametrize("damaged", ["features/ensemble/test.npy", "features/ensemble/index.ids",
                                     "neighbours/test_index.npz", "local/pairs/test-train-*/part_00001.npz"])
def test_stage_04_remakes_a_damaged_cache(predicted, tmp_path, damaged):
    """Descriptors, ids, neighbours or a chunk of verified pairs cut short: stage 04 names the file, makes it again
    and writes the undamaged run's submissions."""
    base, run = predicted["base"] / "run", tmp_path / "run"
    shutil.copytree(base, run)
    path = _truncate(_one(run, damaged))
    done = _stage("04_predict.py", *predicted["args"], "--workdir", run, "--out-root", tmp_path / "subs")
    _repaired(done, path)
    for name in ("recognition.csv", "retrieval.csv"):
        _same(predicted["base"] / "subs" / "run" / name, tmp_path / "subs" / "run" / name)
    if "pairs" in damaged:  # verified again into a new chunk: the same pairs and inliers
        assert _pairs(path.parent) == _pairs(_one(base, damaged).parent)
    else:
        _same(base / path.relative_to(run), path)


@pytest.mark.parametrize("damaged", ["features/tiny/test.npy", "features/tiny/train.ids"])
def test_stage_03_extracts_a_damaged_split_again(predicted, tiny_competition, tmp_path, damaged):
    """A member's descriptors or ids cut short: the split is not taken as done but extracted again, and every
    descriptor and neighbour file ends as in the undamaged run."""
    base, run = predicted["base"] / "run", tmp_path / "run"
    shutil.copytree(base, run)
    path = _truncate(run / damaged)
    done = _stage("03_ensemble.py", "--data-root", tiny_competition, "--ensemble", predicted["ensemble"],
                  "--workdir", run)
    _repaired(done, path)
    files = sorted(p.relative_to(base) for p in [*base.glob("features/*/*.np*"), *base.glob("features/*/*.ids"),
                                                 *base.glob("neighbours/*.npz")])
    assert len(files) >= 14
    for rel in files:
        _same(base / rel, run / rel)


@pytest.fixture(scope="module")
def cleaned(tiny_competition, tmp_path_factory) -> dict:
    """An undamaged stage-01 run (local features in 16-image shards, pairs saved 40 at a time) and its arguments."""
    base = tmp_path_factory.mktemp("cleaned")
    ensemble, recipe = base / "zero-shot-tiny.yaml", base / "clean.yaml"
    ensemble.write_text("members:\n  - {name: tiny, backbone: test_efficientnet, image_size: 64}\nworkers: 0\n")
    recipe.write_text(f"ensemble: {ensemble}\nk: 20\nmax_verify: 5\ninlier_threshold: 10\nt_frequency: 0\n"
                      "min_images_per_label: 2\nlocal: {backend: rootsift, max_keypoints: 300, shard_size: 16, "
                      "workers: 0}\nverify: {workers: 1, save_every: 40}\n")
    args = ["--data-root", tiny_competition, "--recipe", recipe, "--name", "run"]
    report = json.loads(run_stage("01_clean.py", *args, "--out-root", base).stdout)
    return {"base": base / "run", "args": args, "report": report}


@pytest.mark.parametrize("damaged", ["work/local/rootsift-*/train/shard_00001/descriptors.npy",
                                     "pairs_*_rank000of001/part_00001.npz"])
def test_stage_01_remakes_a_damaged_shard_or_chunk(cleaned, tmp_path, damaged):
    """A local-feature shard or a chunk of verified pairs cut short: stage 01 names the file, extracts or verifies
    its images again and ends with the undamaged run's files."""
    run = tmp_path / "run"
    shutil.copytree(cleaned["base"], run)
    path = _truncate(_one(run, damaged))
    done = _stage("01_clean.py", *cleaned["args"], "--out-root", tmp_path)
    _repaired(done, path)
    assert json.loads(done.stdout) == cleaned["report"]
    for name in ("pairs.csv", "per_image.csv", "train_clean.csv", "per_label.csv"):
        _same(cleaned["base"] / name, run / name)
    if "local" in damaged:  # the shard's images have their features again, the same ones
        stores = [FeatureStore(_one(r, "work/local/rootsift-*/train")).load_all() for r in (cleaned["base"], run)]
        assert stores[0].keys() == stores[1].keys()
        for image_id, feats in stores[0].items():
            again = stores[1][image_id]
            assert np.array_equal(feats.keypoints, again.keypoints) and feats.size == again.size
            assert np.array_equal(feats.descriptors, again.descriptors), image_id
    else:
        _same(_one(cleaned["base"], damaged), path)


TINY = TrainConfig(model="test_efficientnet", weights=None, epochs=1, image_size=64, batch_size=16, workers=0,
                   dim=32, checkpoint_every=2)


@pytest.fixture(scope="module")
def trained(tiny_competition, tmp_path_factory) -> Path:
    """A finished one-epoch training run (model.pt, last.pt)."""
    workdir = tmp_path_factory.mktemp("trained")
    train(TINY, tiny_competition, workdir, progress=False)
    return workdir


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def test_stage_02_remakes_a_damaged_model_or_resume_checkpoint(trained, tiny_competition, tmp_path, caplog):
    """A damaged model.pt is written again from last.pt; a damaged last.pt is named and training starts again
    from scratch: both end with the undamaged run's tensors."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    expected = _tensors(trained / "model.pt")
    for damaged in ("model.pt", "last.pt"):  # model.pt cut short; then last.pt, with no model.pt
        if damaged == "last.pt":
            (run / "model.pt").unlink()
        path = _truncate(run / damaged)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            train(TINY, tiny_competition, run, progress=False)
        assert f"{path}: damaged" in caplog.text
        got = _tensors(run / "model.pt")
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got), damaged


def test_a_damaged_checkpoint_is_refused_in_one_line(trained, tiny_competition, tmp_path):
    """A member's model.pt cut short: stage 04 stops with exit 2 and one line naming it, no traceback."""
    model = _truncate(Path(shutil.copy(trained / "model.pt", tmp_path / "model.pt")))
    recipe = tmp_path / "trained.yaml"
    recipe.write_text(f"members:\n  - {{name: tiny, checkpoint: {model}, image_size: 64}}\nworkers: 0\n")
    done = _stage("04_predict.py", "--data-root", tiny_competition, "--ensemble", recipe, "--workdir",
                  tmp_path / "run", "--out-root", tmp_path / "subs")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: {model}: damaged checkpoint (") and "stage 02" in line
