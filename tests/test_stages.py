"""Stages 02-05 as a user runs them: tiny timm model, one epoch, the tiny synthetic competition."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from landmark_kit.checkpoint import TrainConfig, load_trained
from landmark_kit.ensemble import load_ensemble, run_ensemble
from landmark_kit.recipes import RecipeError
from landmark_kit.train import train

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN = ["--model", "test_efficientnet", "--weights", "none", "--epochs", "1", "--image-size", "64",
              "--batch-size", "16", "--workers", "0", "--dim", "32"]


def run_stage(name: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "stages" / name), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def stage(name: str, *args) -> subprocess.CompletedProcess:
    run = run_stage(name, *args)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def trained(tiny_competition, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("train")
    run = stage("02_train.py", "--data-root", tiny_competition, "--workdir", workdir, *TINY_TRAIN)
    assert run.stdout.strip().splitlines()[-1] == str(workdir / "model.pt")
    return workdir


def tiny_recipe(tmp_path: Path, trained: Path, more_members: str = "") -> Path:
    """An ensemble recipe with the trained tiny model as member ``tiny`` (plus ``more_members`` YAML), no workers."""
    recipe = tmp_path / "e.yaml"
    recipe.write_text(f"members:\n  - name: tiny\n    checkpoint: {trained / 'model.pt'}\n    image_size: 64\n"
                      f"{more_members}workers: 0\n")
    return recipe

def test_train_writes_checkpoint_config_and_log(trained):
    model, cfg = load_trained(trained / "model.pt")
    assert cfg.model == "test_efficientnet" and cfg.dim == 32 and cfg.weights is None
    assert (trained / "config.yaml").is_file() and (trained / "last.pt").is_file()
    (row,) = csv.DictReader(io.StringIO((trained / "log.csv").read_text()))
    assert row["epoch"] == "1" and row["stage"] == "main" and float(row["loss"]) > 0 and float(row["img_s"]) > 0
    assert (trained / "curves.png").read_bytes()[:4] == b"\x89PNG"
    with torch.no_grad():
        out = model.describe(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 32) and torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)


def test_train_refuses_a_different_config_in_the_same_workdir(trained, tiny_competition):
    with pytest.raises(RecipeError, match="different config"):
        train(TrainConfig(model="test_efficientnet", weights=None, epochs=2), tiny_competition, trained)


def test_train_resumes_from_last_checkpoint(tiny_competition, tmp_path):
    cfg = TrainConfig(model="test_efficientnet", weights=None, epochs=2, image_size=64, batch_size=16,
                      workers=0, dim=32, checkpoint_every=2)
    full = train(cfg, tiny_competition, tmp_path / "full", progress=False)
    # simulate a kill after epoch 1: keep last.pt from a one-epoch run of the same config
    part = tmp_path / "part"
    train(TrainConfig(**{**cfg.__dict__, "epochs": 1}), tiny_competition, part, progress=False)
    state = torch.load(part / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    (part / "model.pt").unlink()
    (part / "config.yaml").unlink()
    resumed = train(cfg, tiny_competition, part, progress=False)
    assert len((part / "log.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs, 1 not trained again
    assert torch.load(resumed, weights_only=True)["classes"].tolist() == \
        torch.load(full, weights_only=True)["classes"].tolist()


def test_ensemble_predict_score_end_to_end(trained, tiny_competition, tmp_path):
    recipe = tiny_recipe(tmp_path, trained)
    work = tmp_path / "run"
    run = stage("04_predict.py", "--data-root", tiny_competition, "--workdir", work, "--ensemble", recipe,
                "--out-root", tmp_path / "subs")
    rec, ret = run.stdout.strip().splitlines()[-2:]
    assert rec == str(tmp_path / "subs" / "e" / "recognition.csv")
    assert ret == str(tmp_path / "subs" / "e" / "retrieval.csv")
    for f in ("ensemble.yaml", "features/tiny/train.npy", "features/tiny/test.ids", "features/ensemble/index.npy",
              "neighbours/test_train.npz", "neighbours/test_index.npz"):
        assert (work / f).is_file(), f
    out = stage("05_score.py", "--solution", tiny_competition / "retrieval_solution.csv", "--submission", ret)
    assert "mAP@100" in out.stdout


def test_rerun_skips_finished_extraction(trained, tiny_competition, tmp_path):
    recipe = tiny_recipe(tmp_path, trained)
    cfg = load_ensemble(recipe)
    run_ensemble(cfg, tiny_competition, tmp_path / "w")
    feats = tmp_path / "w" / "features" / "tiny" / "train.npy"
    stamp = feats.stat().st_mtime_ns
    run_ensemble(cfg, tiny_competition, tmp_path / "w")
    assert feats.stat().st_mtime_ns == stamp
    assert not list((tmp_path / "w").rglob(".*tmp*"))  # no temporary files left behind


def test_concatenation_weights_and_renormalisation(trained, tiny_competition, tmp_path):
    recipe = tmp_path / "e.yaml"
    recipe.write_text(
        "members:\n"
        f"  - {{name: a, checkpoint: {trained / 'model.pt'}, image_size: 64, weight: 1.0}}\n"
        "  - {name: b, backbone: test_efficientnet, image_size: 64, weight: 0.5}\n"
        "workers: 0\n"
    )
    run_ensemble(load_ensemble(recipe), tiny_competition, tmp_path / "w")
    f = tmp_path / "w" / "features"
    a, b, e = (np.load(f / m / "test.npy") for m in ("a", "b", "ensemble"))
    expected = np.concatenate([a, 0.5 * b], axis=1)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(e, expected, atol=1e-3)  # float16 storage


def test_ensemble_recipe_errors(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("members:\n  - {name: a, backbone: x, checkpoint: y}\n")
    with pytest.raises(RecipeError, match="exactly one of checkpoint or backbone"):
        load_ensemble(recipe)
    recipe.write_text("members: []\n")
    with pytest.raises(RecipeError, match="at least one member"):
        load_ensemble(recipe)
    recipe.write_text("members:\n  - {name: a, backbone: x}\ndecode: gpu\n")
    with pytest.raises(RecipeError, match="decode must be one of auto, cpu, device"):
        load_ensemble(recipe)


def test_ensemble_cli_with_flag_overrides(trained, tiny_competition, tmp_path):
    recipe = tmp_path / "e.yaml"
    recipe.write_text(f"members:\n  - name: tiny\n    checkpoint: {trained / 'model.pt'}\n    image_size: 64\n")
    run = stage("03_ensemble.py", "--data-root", tiny_competition, "--workdir", tmp_path / "w", "--ensemble", recipe,
                "--workers", "0", "--k-train", "3")
    assert "test -> train neighbours" in run.stdout
    nn = np.load(tmp_path / "w" / "neighbours" / "test_train.npz")
    assert nn["indices"].shape[1] == 3
    assert "k_train: 3" in (tmp_path / "w" / "ensemble.yaml").read_text()


def test_warmup_cosine_schedule():
    from landmark_kit.train import warmup_cosine

    factors = [warmup_cosine(s, warmup=4, total=20) for s in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and all(a >= b for a, b in zip(factors[4:], factors[5:]))
    assert factors[-1] < 0.01
    assert warmup_cosine(0, warmup=0, total=10) == 1.0


def test_predict_recipe_soft_vote_through_the_cli(trained, tiny_competition, tmp_path):
    recipe = tiny_recipe(tmp_path, trained)
    base = ["--data-root", tiny_competition, "--workdir", tmp_path / "w", "--ensemble", recipe,
            "--out-root", tmp_path / "subs"]
    top1 = stage("04_predict.py", *base, "--name", "top1").stdout.strip().splitlines()[-2]
    voted = stage("04_predict.py", *base, "--name", "voted", "--recipe", ROOT / "submissions" / "soft-vote.yaml",
                  "--suppress-fraction", "0.001").stdout.strip().splitlines()[-2]
    a = Path(top1).read_text().splitlines()
    b = Path(voted).read_text().splitlines()
    assert len(a) == len(b) and a != b
    scores = [float(line.split(",")[1].split()[1]) for line in b[1:] if line.split(",")[1]]
    assert any(s < 0 for s in scores)  # labels predicted more than once were suppressed to -frequency


def test_predict_with_verified_shortlist(trained, tiny_competition, tmp_path):
    recipe = tiny_recipe(tmp_path, trained)
    post = tmp_path / "p.yaml"
    post.write_text("k: 1\nverify_shortlist: 5\ninlier_floor: 5\nlocal: {max_keypoints: 300, workers: 0}\n"
                    "verify: {workers: 1}\n")
    out = stage("04_predict.py", "--data-root", tiny_competition, "--workdir", tmp_path / "w", "--ensemble", recipe,
                "--out-root", tmp_path / "subs", "--recipe", post).stdout.strip().splitlines()
    assert Path(out[-2]).is_file() and list((tmp_path / "w" / "local").glob("rootsift-*/test/shard_*"))
    scores = [float(line.split(",")[1].split()[1]) for line in Path(out[-2]).read_text().splitlines()[1:]
              if line.split(",")[1]]
    assert max(scores) > 1.0  # a verified neighbour adds its inlier term on top of 2 cos - 1 <= 1


def test_predict_with_rerank_keeps_retrieved_sets_valid(trained, tiny_competition, tmp_path):
    from landmark_kit.predict import PredictConfig, predict

    recipe = tiny_recipe(tmp_path, trained)
    run_ensemble(load_ensemble(recipe), tiny_competition, tmp_path / "w")
    _, plain = predict(tiny_competition, tmp_path / "w", tmp_path / "a")
    _, reranked = predict(tiny_competition, tmp_path / "w", tmp_path / "b", cfg=PredictConfig(k=3, rerank=True))
    a, b = (p.read_text().splitlines() for p in (plain, reranked))
    assert a != b and len(a) == len(b)
    for x, y in zip(a[1:], b[1:]):
        ids_a, ids_b = x.split(",")[1].split(), y.split(",")[1].split()
        assert len(set(ids_b)) == len(ids_b) and set(ids_a) <= set(ids_b) | set(ids_a[len(ids_b):])


def test_predict_ablate_scores_every_step_and_writes_the_last(trained, tiny_competition, tmp_path):
    from landmark_kit.scoring import score_files

    recipe = tiny_recipe(tmp_path, trained, "  - name: random\n    backbone: tf_efficientnet_lite0\n    image_size: 64\n")
    post = tmp_path / "all.yaml"
    post.write_text("k: 3\nverify_shortlist: 5\ninlier_floor: 5\nnonlandmark_pool: index\nsuppress_fraction: 0.001\n"
                    "dba_k: 1\nqe_k: 1\nlocal_rerank: 5\nsoft_rerank: true\nrerank: true\n"
                    "local: {max_keypoints: 300, workers: 0}\nverify: {workers: 1}\n")
    out = stage("04_predict.py", "--data-root", tiny_competition, "--workdir", tmp_path / "w", "--ensemble", recipe,
                "--out-root", tmp_path / "subs", "--recipe", post, "--ablate").stdout.strip().splitlines()
    tables = tmp_path / "w" / "ablation" / "all"
    rec, ret = (pd.read_csv(tables / f"{t}.csv") for t in ("recognition", "retrieval"))
    assert rec["method"].tolist()[0].startswith("Single best model (") and rec["method"].tolist()[1:-1] == [
        "+ Ensemble 2 models (kNN top-1)", "+ soft-voting (k=3)",
        "+ spatial verification (rootsift, shortlist 5, sum of 3)", "+ non-landmark penalty (index, k=10)"]
    assert rec["method"].iloc[-1].startswith("+ distractor suppression (> 0.001 of queries = ")
    assert ret["method"].tolist()[1:] == [
        "+ Ensemble 2 models (kNN)", "+ DBA (k=1), alpha-QE (k=1) (alpha=3)",
        "+ local-feature re-ranking (rootsift, top 5)", "+ soft up/down re-ranking (up 1, down 1)",
        "+ discriminative re-ranking", "+ appended positives"]
    assert (tables / "recognition.md").read_text().startswith("| method | GAP Public")
    # the best-member row is the better member's own score; the submission written is the chain's last row
    members = [score_files(tiny_competition / "recognition_solution.csv", p)["scores"]["All"]["GAP"]
               for p in sorted((tables / "recognition" / "members").glob("*.csv"))]
    assert len(members) == 2 and rec["All"].iloc[0] == round(max(members), 4)
    final = score_files(tiny_competition / "retrieval_solution.csv", out[-1])["scores"]["All"]["mAP@100"]
    assert ret["All"].iloc[-1] == round(final, 4)
    assert rec["queries_per_s"].iloc[3] > 0 and pd.isna(rec["queries_per_s"].iloc[1])


def test_frozen_stages_keep_their_weights_and_batchnorm_statistics(tiny_competition, tmp_path):
    from landmark_kit.train import build_model, seed_everything

    cfg = TrainConfig(model="test_efficientnet", weights=None, epochs=1, image_size=64, batch_size=16,
                      workers=0, dim=32, freeze_stages=2)
    trained = torch.load(train(cfg, tiny_competition, tmp_path / "run", progress=False), weights_only=True)
    seed_everything(cfg.seed)  # the initial weights train() started from
    initial = build_model(cfg, np.ones(len(trained["classes"])))[0].state_dict()
    frozen = ("backbone.conv_stem.", "backbone.bn1.", "backbone.blocks.0.", "backbone.blocks.1.")
    for key, value in trained["model"].items():
        if key.startswith(frozen):
            assert torch.equal(value, initial[key]), key
    assert not torch.equal(trained["model"]["backbone.blocks.2.0.conv_exp.weight"],
                           initial["backbone.blocks.2.0.conv_exp.weight"])
    with pytest.raises(RecipeError, match="whole backbone"):
        train(TrainConfig(**{**cfg.__dict__, "freeze_stages": 99}), tiny_competition, tmp_path / "all", progress=False)


def assert_refused(run: subprocess.CompletedProcess, *named: Path) -> None:
    """Exit 2 and one stderr line, ``error: ...`` naming every path in ``named``; no traceback."""
    assert run.returncode == 2, run.stderr[-3000:]
    (line,) = run.stderr.splitlines()
    assert line.startswith("error: ") and all(str(p) in line for p in named), line


def test_train_missing_inputs_write_nothing_and_the_corrected_command_trains(tiny_competition, tmp_path):
    workdir = tmp_path / "run"
    assert_refused(run_stage("02_train.py", "--data-root", tmp_path / "nowhere", "--workdir", workdir, *TINY_TRAIN),
                   tmp_path / "nowhere")
    assert_refused(run_stage("02_train.py", "--data-root", tmp_path, "--workdir", workdir, *TINY_TRAIN),
                   tmp_path / "train.csv", tmp_path / "train")
    assert_refused(run_stage("02_train.py", "--data-root", tiny_competition, "--workdir", workdir,
                             "--train-csv", tmp_path / "clean.csv", *TINY_TRAIN), tmp_path / "clean.csv")
    assert not workdir.exists()
    run = stage("02_train.py", "--data-root", tiny_competition, "--workdir", workdir,
                "--train-csv", tiny_competition / "train.csv", *TINY_TRAIN)
    assert run.stdout.strip().splitlines()[-1] == str(workdir / "model.pt")


def test_ensemble_missing_inputs_write_nothing_and_the_corrected_command_runs(trained, tiny_competition, tmp_path):
    recipe, workdir = tiny_recipe(tmp_path, trained), tmp_path / "run"
    (tmp_path / "gone").mkdir()
    lost = tiny_recipe(tmp_path / "gone", tmp_path / "gone")
    for args, named in [
        (("--data-root", tmp_path / "nowhere", "--ensemble", recipe), [tmp_path / "nowhere"]),
        (("--data-root", tmp_path / "gone", "--ensemble", recipe),
         [tmp_path / "gone" / "train.csv", tmp_path / "gone" / "train", tmp_path / "gone" / "test"]),
        (("--data-root", tiny_competition, "--ensemble", recipe, "--train-csv", tmp_path / "clean.csv"),
         [tmp_path / "clean.csv"]),
        (("--data-root", tiny_competition, "--ensemble", tmp_path / "missing.yaml"), [tmp_path / "missing.yaml"]),
        (("--data-root", tiny_competition, "--ensemble", lost), [tmp_path / "gone" / "model.pt"]),
    ]:
        assert_refused(run_stage("03_ensemble.py", "--workdir", workdir, *args), *named)
        assert not workdir.exists()
    run = stage("03_ensemble.py", "--data-root", tiny_competition, "--workdir", workdir, "--ensemble", recipe)
    assert (workdir / "neighbours" / "test_train.npz").is_file() and "neighbours" in run.stdout


def test_score_missing_inputs_are_one_line(tiny_competition, tmp_path):
    solution = tiny_competition / "retrieval_solution.csv"
    submission = tiny_competition / "retrieval_sample_submission.csv"
    assert_refused(run_stage("05_score.py", "--solution", tmp_path / "s.csv", "--submission", submission),
                   tmp_path / "s.csv")
    assert_refused(run_stage("05_score.py", "--solution", solution, "--submission", tmp_path / "p.csv"),
                   tmp_path / "p.csv")
    assert_refused(run_stage("05_score.py", "--solution", solution, "--submission", submission,
                             "--data-root", tmp_path), tmp_path / "index")
    assert_refused(run_stage("05_score.py", "--validate", submission, "--data-root", tmp_path), tmp_path / "test")
    stage("05_score.py", "--solution", solution, "--submission", submission, "--data-root", tiny_competition)
