"""Stage 02 at full fidelity on an 8-landmark synthetic set with ``training/synthetic-tiny.yaml`` (sub-center
ArcFace + dynamic margins, aspect buckets, device augmentation, a final BN-frozen stage, validation): a run
SIGKILLed after a checkpoint and restarted ends with exactly the tensors of an uninterrupted run; torchrun
with two gloo processes trains to the end; bucketing and batches are pure functions of (seed, epoch)."""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from landmark_kit.synthetic import SyntheticConfig, generate
from landmark_kit.train import assign_buckets, bucket_shapes, epoch_batches, split_validation

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "training" / "synthetic-tiny.yaml"


@pytest.fixture(scope="module")
def syn8(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn8")
    generate(root, SyntheticConfig(landmarks=8), progress=False)
    return root


def _cmd(data: Path, workdir: Path) -> list[str]:
    return [sys.executable, str(ROOT / "stages" / "02_train.py"), "--data-root", str(data), "--workdir", str(workdir),
            "--recipe", str(RECIPE)]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}


def _losses(workdir: Path) -> list[tuple[str, str, str]]:
    rows = list(csv.DictReader(io.StringIO((workdir / "log.csv").read_text())))
    return [(r["loss"], r["accuracy"], r["val_gap"]) for r in rows]


@pytest.fixture(scope="module")
def uninterrupted(syn8, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("full")
    done = subprocess.run(_cmd(syn8, workdir), capture_output=True, text=True, env=_env(), cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir


def _kill_after_first_checkpoint(cmd: list[str], workdir: Path, env: dict) -> None:
    """Start ``cmd`` in its own process group and SIGKILL the whole group once ``last.pt`` appears."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT,
                            start_new_session=True)
    last = workdir / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists():  # the first checkpoint: step 3 of epoch 1
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (workdir / "model.pt").exists()
    state = torch.load(last, weights_only=True)
    assert (state["epoch"], state["step"]) < (4, 0)  # killed mid-run


def _assert_same_run(expected: Path, workdir: Path) -> None:
    """model.pt, every tensor of last.pt's module (head, sub-centres, BN statistics) and the log agree."""
    a = torch.load(expected / "model.pt", weights_only=True)["model"]
    b = torch.load(workdir / "model.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    full_state = torch.load(expected / "last.pt", weights_only=True)
    resumed_state = torch.load(workdir / "last.pt", weights_only=True)
    for key, value in full_state["module"].items():
        assert torch.equal(value, resumed_state["module"][key]), key
    assert _losses(expected) == _losses(workdir)  # the log has each epoch once, same figures


def test_killed_run_resumes_to_the_same_tensors(syn8, uninterrupted, tmp_path):
    workdir = tmp_path / "killed"
    _kill_after_first_checkpoint(_cmd(syn8, workdir), workdir, _env())
    done = subprocess.run(_cmd(syn8, workdir), capture_output=True, text=True, env=_env(), cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stderr
    _assert_same_run(uninterrupted, workdir)


def test_tiny_recipe_runs_every_feature(uninterrupted):
    rows = list(csv.DictReader(io.StringIO((uninterrupted / "log.csv").read_text())))
    assert [r["stage"] for r in rows] == ["main", "main", "main", "final"]
    assert all(r["val_gap"] != "" and 0 <= float(r["val_map100"]) <= 1 for r in rows)
    assert (uninterrupted / "curves.png").read_bytes()[:4] == b"\x89PNG"
    state = torch.load(uninterrupted / "last.pt", weights_only=True)
    margins = state["module"]["head.margins"]
    assert margins.min() >= 0.1 - 1e-6 and margins.max() <= 0.4 + 1e-6 and margins.max() > margins.min()
    assert state["module"]["head.weight"].shape[0] == 2 * len(margins)  # two sub-centres per class


def test_final_stage_keeps_batchnorm_statistics(syn8, tmp_path, monkeypatch):
    """Epoch 4 (final, BN frozen) leaves every running statistic where epoch 3 left it, and still trains."""
    import landmark_kit.train as T
    from landmark_kit.recipes import load_recipe

    work = tmp_path / "run"
    snapshot = tmp_path / "epoch3.pt"
    write_log = T.write_log

    def spy(history, workdir):  # at epoch 4's log, last.pt still holds the end of epoch 3
        if len(history) == 4:
            shutil.copy(workdir / "last.pt", snapshot)
        write_log(history, workdir)

    monkeypatch.setattr(T, "write_log", spy)
    T.train(load_recipe(T.TrainConfig, RECIPE, {"val_queries": 0, "workers": 0}), syn8, work, progress=False)
    before = torch.load(snapshot, weights_only=True)["module"]
    after = torch.load(work / "last.pt", weights_only=True)["module"]
    stats = [k for k in after if k.endswith(("running_mean", "running_var"))]
    assert len(stats) > 20 and "net.bn.running_mean" in stats
    for key in stats:
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["net.fc.weight"], after["net.fc.weight"])


def test_buckets_and_batches_are_pure():
    assert bucket_shapes([64, 80, 96]) == [(96, 64), (96, 80), (96, 96), (80, 96), (64, 96)]
    sizes = np.array([[200, 100], [100, 200], [120, 100], [100, 100], [300, 100]])
    buckets, shapes = assign_buckets(sizes, [64, 80, 96])
    assert [shapes[b] for b in buckets] == [(64, 96), (96, 64), (80, 96), (96, 96), (64, 96)]
    a = epoch_batches(np.array([0, 1, 0, 1, 0, 0, 1]), 2, seed=3, epoch=1)
    assert a == epoch_batches(np.array([0, 1, 0, 1, 0, 0, 1]), 2, seed=3, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(7))
    assert all(len({[0, 1, 0, 1, 0, 0, 1][i] for i in b}) == 1 for b in a)  # one bucket per batch
    assert a != epoch_batches(np.array([0, 1, 0, 1, 0, 0, 1]), 2, seed=3, epoch=2)
    held = split_validation(np.array([0, 0, 0, 1, 1, 2, 2, 2, 2]), 5, seed=0)
    assert len(held) == 2 and set(np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])[held]) == {0, 2}


@pytest.mark.slow
def test_torchrun_two_processes_train_and_resume_exactly(syn8, tmp_path):
    """Two gloo processes train to the end; the whole process group SIGKILLed after its first checkpoint and
    started again ends with exactly the tensors of the uninterrupted two-process run."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun not found beside the interpreter"

    def cmd(workdir: Path) -> list[str]:
        return [torchrun, "--standalone", "--nproc-per-node", "2", str(ROOT / "stages" / "02_train.py"),
                "--data-root", str(syn8), "--workdir", str(workdir), "--recipe", str(RECIPE)]

    env = {**_env(), "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "ddp", tmp_path / "ddp-killed"
    done = subprocess.run(cmd(full), capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(full / "last.pt", weights_only=True)
    assert len(state["rng"]) == 2 and state["epoch"] == 4
    assert (full / "model.pt").is_file() and len(_losses(full)) == 4
    _kill_after_first_checkpoint(cmd(killed), killed, env)
    done = subprocess.run(cmd(killed), capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stderr
    _assert_same_run(full, killed)


def test_validation_scores_distractors(syn8):
    """Non-landmark test images from the data root's recognition solution join the validation queries: they
    lower GAP (their predictions take ranks) and leave mAP@100 alone."""
    from landmark_kit.data import read_train_csv
    from landmark_kit.recipes import load_recipe
    from landmark_kit.submission import read_solution
    from landmark_kit.train import TrainConfig, build_model, validate, validation_distractors

    cfg = load_recipe(TrainConfig, RECIPE, {"workers": 0})
    distractors = validation_distractors(syn8, 6, cfg.seed)
    truth = read_solution(syn8 / "recognition_solution.csv").all
    assert len(distractors) == 6 and all(truth[i] == [] for i in distractors)
    assert validation_distractors(syn8 / "test", 6, cfg.seed) == []  # no solution there
    train = read_train_csv(syn8 / "train.csv")
    labels = np.unique(train["landmark_id"].to_numpy(), return_inverse=True)[1]
    ids = train["id"].tolist()
    torch.manual_seed(0)
    net, _ = build_model(cfg, np.bincount(labels))
    queries = split_validation(labels, 4, cfg.seed)
    plain = validate(net, cfg, syn8, ids, labels, queries, torch.device("cpu"), [96])
    with_distractors = validate(net, cfg, syn8, ids, labels, queries, torch.device("cpu"), [96], distractors)
    assert with_distractors["val_gap"] < plain["val_gap"]
    assert with_distractors["val_map100"] == plain["val_map100"]


def test_every_training_recipe_loads():
    import timm

    from landmark_kit.recipes import load_recipe
    from landmark_kit.train import TrainConfig, check_config

    recipes = sorted((ROOT / "training").rglob("*.yaml"))
    assert len(recipes) >= 10
    for path in recipes:
        cfg = check_config(load_recipe(TrainConfig, path))
        assert timm.is_model(cfg.model), f"{path}: {cfg.model}"
