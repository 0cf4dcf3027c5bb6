"""What a new user meets on real folders: a run folder belongs to one ensemble, recipes find the recipes they
name from any directory, cleaning runs on any labelled folder, and risky settings are warned about."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from landmark_kit.cleaning import CleanConfig, decide
from landmark_kit.ensemble import load_ensemble
from landmark_kit.predict import PredictConfig, RunData, recognition_steps
from landmark_kit.recipes import KIT_ROOT, RecipeError, load_recipe

MEMBER = "  - name: {name}\n    backbone: test_efficientnet\n    image_size: 64\n    seed: {seed}\n    weight: {weight}\n"


def stage(name: str, *args, cwd: Path = KIT_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(KIT_ROOT / "stages" / name), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


def ensemble(path: Path, *members: tuple[str, int, float]) -> Path:
    """An ensemble recipe of random-init ``test_efficientnet`` members ``(name, seed, weight)``, no workers."""
    path.write_text("members:\n" + "".join(MEMBER.format(name=n, seed=s, weight=w) for n, s, w in members)
                    + "workers: 0\n")
    return path


def test_neighbours_are_searched_for_the_ensemble_asked_for(tiny_competition, tmp_path):
    """Another ensemble on a run folder predicts exactly what a fresh folder gives (never the folder's old
    neighbours), says so, and keeps each member's descriptors; no --ensemble means the folder's own."""
    def predict(work: Path, recipe: Path | None, *more) -> subprocess.CompletedProcess:
        run = stage("04_predict.py", "--data-root", tiny_competition, "--workdir", work,
                    *(["--ensemble", recipe] if recipe else []), *more)
        assert run.returncode == 0, run.stderr[-2000:]
        return run

    def csvs(run: subprocess.CompletedProcess) -> list[str]:
        return [Path(p).read_text() for p in run.stdout.split()[-2:]]

    a = ensemble(tmp_path / "a.yaml", ("a", 0, 1.0), ("b", 1, 1.0))
    other = ensemble(tmp_path / "other.yaml", ("c", 2, 1.0))
    reweighted = ensemble(tmp_path / "reweighted.yaml", ("a", 0, 1.0), ("b", 1, 0.2))
    work = tmp_path / "w"
    first = predict(work, a)
    assert first.stdout.split()[-2] == str(work / "submissions" / "a" / "recognition.csv")
    switched = predict(work, other)
    assert f"{work} was searched for members a, b" in switched.stderr
    assert csvs(switched) == csvs(predict(tmp_path / "fresh-other", other)) != csvs(first)
    changed = predict(work, reweighted)
    assert "already extracted" in changed.stderr  # same members: descriptors kept, neighbours searched again
    assert csvs(changed) == csvs(predict(tmp_path / "fresh-reweighted", reweighted)) != csvs(first)
    assert csvs(predict(work, None, "--name", "own")) == csvs(changed)  # the folder's own: reweighted


def test_tune_on_the_data_root_is_warned_and_extracted_once(tiny_competition, tmp_path):
    a = ensemble(tmp_path / "a.yaml", ("a", 0, 1.0))
    space = tmp_path / "space.yaml"
    space.write_text("rounds: 1\nresamples: 50\nmember_weights: [1.0]\noptions:\n"
                     "  - {name: soft-voting k, track: recognition, values: [{k: 3}]}\n")
    run = stage("04_predict.py", "--data-root", tiny_competition, "--workdir", tmp_path / "w", "--ensemble", a,
                "--tune-on", tiny_competition, "--search", space)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "--tune-on is --data-root" in run.stderr and "optimistic" in run.stderr
    assert "member a: descriptors taken from" in run.stderr
    for split in ("train", "test", "index"):
        tuned, predicted = (tmp_path / "w" / sub / "features" / "a" / f"{split}.npy" for sub in ("tune", "."))
        assert tuned.stat().st_ino == predicted.stat().st_ino  # hard-linked, not extracted twice


def test_count_based_suppression_below_a_handful_of_queries_is_warned(tmp_path, caplog):
    n = 40
    labels = np.arange(n)
    run = RunData(tmp_path, [f"{q:016x}" for q in range(n)], [f"{10_000 + i:016x}" for i in labels],
                  ["0" * 16], labels, np.linspace(0.9, 0.5, n, dtype=np.float32)[:, None], labels[:, None],
                  np.ones((n, 1), np.float32), np.zeros((n, 1), np.int64))
    with caplog.at_level(logging.WARNING):
        list(recognition_steps(PredictConfig(suppress_fraction=0.05), run, tmp_path))
    assert "only 2 time(s) before it is suppressed" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        list(recognition_steps(PredictConfig(suppress_fraction=0.5), run, tmp_path))
    assert "suppress" not in caplog.text  # 20 queries: a cut-off a real landmark rarely reaches


def test_recipes_find_the_recipes_they_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_recipe(CleanConfig, "cleaning/synthetic-sift.yaml")  # the kit's own, found from elsewhere too
    assert Path(cfg.ensemble) == KIT_ROOT / "ensembles" / "calibration-lite0.yaml"
    assert load_ensemble(cfg.ensemble).members[0].name
    mine = tmp_path / "mine"
    mine.mkdir()
    ensemble(mine / "ens.yaml", ("beside", 0, 1.0))
    ensemble(tmp_path / "ens.yaml", ("cwd", 0, 1.0))  # the current directory's file of that name is not taken
    (mine / "clean.yaml").write_text("ensemble: ens.yaml\n")
    assert load_ensemble(load_recipe(CleanConfig, mine / "clean.yaml").ensemble).members[0].name == "beside"
    (mine / "child.yaml").write_text("extends: clean.yaml\nk: 5\n")  # resolved where it is stated
    assert load_recipe(CleanConfig, mine / "child.yaml").ensemble == str(mine / "ens.yaml")
    (mine / "bad.yaml").write_text("ensemble: nowhere.yaml\n")
    with pytest.raises(RecipeError, match="bad.yaml: names recipe 'nowhere.yaml'"):
        load_recipe(CleanConfig, mine / "bad.yaml")


def test_keep_rule_says_why_and_keeps_what_it_cannot_judge():
    train = pd.DataFrame({"id": list("abcdefgh"), "landmark_id": [1, 1, 1, 1, 2, 2, 3, 4]})
    candidates = np.array([3, 2, 2, 1, 1, 1, 0, 1])
    verified = np.array([2, 2, 2, 0, 0, 0, 0, 0])  # a-b-c verify, d does not; e-f do not; g alone; h no pair
    paper = decide(train, candidates, verified, CleanConfig(t_frequency=0, min_images_per_label=2))
    assert paper.set_index("id")["kept"].to_dict() == dict(zip("abcdefgh", [True] * 3 + [False] * 5))
    photos = decide(train, candidates, verified, CleanConfig(t_frequency=0, min_images_per_label=1,
                                                             keep_unjudged=True)).set_index("id")
    assert photos["kept"].to_dict() == dict(zip("abcdefgh", [True] * 3 + [False] + [True] * 4))
    assert photos.loc["d", "reason"].startswith("at most 0 verified")
    assert photos.loc["e", "reason"] == "kept, no pair of its label verified: cannot judge which images are wrong"
    assert photos.loc["g", "reason"] == "kept, only image of its label: cannot be verified"
    rare = decide(train, candidates, verified, CleanConfig(t_frequency=0, min_images_per_label=2,
                                                           keep_unjudged=True)).set_index("id")
    assert rare.loc["g", "dropped_rare_label"] and not rare.loc["g", "kept"]
    assert rare.loc["g", "reason"] == "label has fewer than 2 kept image(s)"


@pytest.mark.slow
def test_cleaning_runs_on_a_folder_of_labelled_photos(tiny_competition, tmp_path):
    """Stage 00 from-folders, then stage 01 with the photo recipe and with a synthetic one, from another
    directory: no ground-truth crash, every image given a reason, single-photo landmarks kept."""
    photos = tmp_path / "photos"
    train = pd.read_csv(tiny_competition / "train.csv", dtype=str)
    for label, group in list(train.groupby("landmark_id"))[:4]:
        (photos / f"l{label}").mkdir(parents=True)
        for image_id in group["id"].head(2 if label == train["landmark_id"].iloc[0] else 5):
            shutil.copy(next(tiny_competition.glob(f"train/*/*/*/{image_id}.jpg")), photos / f"l{label}")
    root = tmp_path / "R"
    assert stage("00_data.py", "from-folders", photos, "--out", root).returncode == 0
    for recipe in ("cleaning/photos.yaml", "cleaning/synthetic-sift.yaml"):
        run = stage("01_clean.py", "--data-root", root, "--recipe", recipe, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-2000:]
        out = tmp_path / "runs" / "cleaning" / Path(recipe).stem
        report = json.loads((out / "report.json").read_text())
        assert "against_ground_truth" not in report and sum(report["reasons"].values()) == report["images"]
        per_image = pd.read_csv(out / "per_image.csv")
        assert per_image["reason"].notna().all()
    photo_run = pd.read_csv(tmp_path / "runs" / "cleaning" / "photos" / "per_image.csv")
    alone = photo_run[photo_run["reason"] == "kept, only image of its label: cannot be verified"]
    assert len(alone) == 1 and alone["kept"].all()


@pytest.mark.parametrize("script, extra", [("01_clean.py", ["--recipe", "cleaning/photos.yaml", "--out-root", "out"]),
                                            ("04_predict.py", ["--workdir", "out"])])
def test_stages_01_and_04_name_a_missing_data_root_before_writing_anything(script, extra, tmp_path):
    run = stage(script, "--data-root", tmp_path / "nowhere", *extra, cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [f"error: data root {tmp_path / 'nowhere'}: not found"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()
