"""Kaggle kernels: build (notebook + bundle), push --dry-run, run-local on the synthetic competition, scored."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from landmark_kit import kaggle
from landmark_kit.data import scan_split
from landmark_kit.scoring import score_files


@pytest.fixture(scope="module")
def tiny_ensemble(tmp_path_factory):
    path = tmp_path_factory.mktemp("kaggle") / "tiny.yaml"
    path.write_text("members:\n  - {name: z, backbone: test_efficientnet, image_size: 48}\nworkers: 0\n")
    return path


@pytest.mark.parametrize("track", kaggle.TRACKS)
def test_build_and_run_local_write_a_scored_submission(track, tiny_ensemble, tiny_competition, tmp_path, capsys):
    out = tmp_path / "k"
    assert kaggle.main(["build", "--track", track, "--out", str(out), "--ensemble", str(tiny_ensemble),
                        "--recipe", "submissions/soft-vote.yaml", "--user", "me", "--no-dependency-wheels"]) == 0
    meta = json.loads((out / "kernel" / "kernel-metadata.json").read_text())
    assert meta["id"] == f"me/landmark-kit-{track}" and meta["enable_internet"] is False
    assert meta["kernel_type"] == "notebook" and meta["language"] == "python"
    assert meta["dataset_sources"] == [f"me/landmark-kit-{track}-bundle"]
    assert meta["competition_sources"] == [f"landmark-{track}-2021"]
    assert (out / "kernel" / meta["code_file"]).is_file()
    assert json.loads((out / "dataset" / "dataset-metadata.json").read_text())["id"] == meta["dataset_sources"][0]
    assert list((out / "dataset" / "wheels").glob("landmark_kit-*.whl"))
    assert (out / "dataset" / "recipe.yaml").is_file() and (out / "dataset" / "ensemble.yaml").is_file()
    capsys.readouterr()
    cores = os.sched_getaffinity(0)
    capped = ["--cpus", "1"] if track == "retrieval" else []  # one track runs like Kaggle's few-CPU kernels
    assert kaggle.main(["run-local", str(out), "--competition-root", str(tiny_competition), *capped]) == 0
    assert os.sched_getaffinity(0) == cores  # this process gets its CPUs back
    executed = (out / "local" / meta["code_file"]).read_text()
    assert ("1 CPU(s): loader and verification workers capped to 1" in executed) == bool(capped)
    submission = capsys.readouterr().out.strip().splitlines()[-1]
    test_ids = scan_split(tiny_competition, "test")
    scores = score_files(tiny_competition / f"{track}_solution.csv", submission)["scores"]["All"]
    assert 0 < scores["GAP" if track == "recognition" else "mAP@100"] <= 1
    assert sorted(pd.read_csv(submission, dtype=str)["id"]) == test_ids  # every test image has a row
    assert (out / "local" / meta["code_file"]).is_file()  # the executed notebook, with its outputs


def test_a_failing_stage_still_writes_every_test_id(tiny_ensemble, tiny_competition, tmp_path, capsys):
    out = tmp_path / "k"
    kaggle.build(kaggle.KernelConfig(ensemble=str(tiny_ensemble), dependency_wheels=False), out)
    (out / "dataset" / "ensemble.yaml").write_text("members:\n  - {name: z, checkpoint: checkpoints/missing.pt}\n")
    inputs = tmp_path / "input"
    inputs.mkdir()
    (inputs / "competition").symlink_to(tiny_competition)
    (inputs / "bundle").symlink_to(out / "dataset")
    submission = kaggle.run_kernel("recognition", inputs, tmp_path / "working")
    assert "checkpoint not found" in capsys.readouterr().err
    frame = submission.read_text().splitlines()
    assert frame[0] == "id,landmarks" and sorted(r.split(",")[0] for r in frame[1:]) == scan_split(tiny_competition,
                                                                                                   "test")
    assert all(r.endswith(",") for r in frame[1:])


def test_push_dry_run_prints_the_kaggle_commands_and_missing_credentials_are_named(tiny_ensemble, tmp_path, capsys,
                                                                                   monkeypatch):
    out = tmp_path / "k"
    kaggle.build(kaggle.KernelConfig(track="retrieval", ensemble=str(tiny_ensemble), user="me",
                                     dependency_wheels=False), out)
    assert kaggle.main(["push", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert f"kaggle datasets create -p {out / 'dataset'}" in printed
    assert f"kaggle datasets version -p {out / 'dataset'}" in printed
    assert f"kaggle kernels push -p {out / 'kernel'}" in printed
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    assert kaggle.main(["push", str(out)]) == 2
    assert "no Kaggle credentials" in capsys.readouterr().err
    assert kaggle.main(["push", str(tmp_path / "nothing")]) == 2
    assert "run `python -m landmark_kit.kaggle build` first" in capsys.readouterr().err


def test_bundled_descriptors_of_public_splits_are_used_and_change_nothing(tiny_ensemble, tiny_competition, tmp_path,
                                                                          capsys):
    from landmark_kit.ensemble import load_ensemble, run_ensemble

    run_ensemble(load_ensemble(tiny_ensemble), tiny_competition, tmp_path / "stage03")
    submissions = {}
    for name, source in (("plain", None), ("bundled", str(tmp_path / "stage03"))):
        out = tmp_path / name
        kaggle.build(kaggle.KernelConfig(ensemble=str(tiny_ensemble), dependency_wheels=False,
                                         descriptors_from=source), out)
        inputs = tmp_path / f"{name}-input"
        inputs.mkdir()
        (inputs / "competition").symlink_to(tiny_competition)
        (inputs / "bundle").symlink_to(out / "dataset")
        capsys.readouterr()
        submissions[name] = kaggle.run_kernel("recognition", inputs, tmp_path / f"{name}-working").read_text()
        printed = capsys.readouterr().out
        bundled = sorted(p.name for p in (out / "dataset" / "features" / "z").glob("*.npy")) if source else []
        assert bundled == (["index.npy", "train.npy"] if source else [])
        assert ("member z: 2 split(s) of descriptors from the bundle" in printed) == bool(source)
    assert submissions["plain"] == submissions["bundled"]
    with pytest.raises(RuntimeError, match="no finished train/index descriptors of member"):
        kaggle.build(kaggle.KernelConfig(ensemble=str(tiny_ensemble), dependency_wheels=False,
                                         descriptors_from=str(tmp_path / "nothing")), tmp_path / "bad")


def test_estimate_counts_each_step_and_measures_rates_here(tiny_ensemble, tiny_competition, tmp_path, capsys):
    from landmark_kit.ensemble import load_ensemble
    from landmark_kit.estimate import Rates, estimate, measure
    from landmark_kit.predict import PredictConfig

    ensemble = load_ensemble(tiny_ensemble)
    recipe = PredictConfig(verify_shortlist=10, local_rerank=5, rerank=True)
    rates = Rates(forward={"48px": 100.0}, decode=50.0, local=10.0, verify=20.0, search_gflops=1.0)
    rows = estimate(ensemble, recipe, rates, test=1000, index=2000, train=3000, dim=64, limit_hours=0.4)
    hours = {r["step"].split(" (")[0]: r["hours"] for r in rows}
    assert hours["extract 48px"] == pytest.approx(6000 / 50 / 3600)  # decode-bound: the slower of the two
    assert hours["exact search"] == pytest.approx(2 * 64 * (1000 * 5000 + 2000 * 3000) / 1e9 / 3600)
    assert hours["local features"] == pytest.approx((1000 + 3000 + 2000) / 10 / 3600)
    assert hours["spatial verification"] == pytest.approx(1000 * 15 / 20 / 3600)
    assert rows[-1]["hours"] == pytest.approx(sum(r["hours"] for r in rows[:-1]))
    assert rows[-1]["fits"] == "no (limit 0.4 h)"  # 0.409 h
    assert estimate(ensemble, recipe, rates, 1000, 2000, 3000, 64, 0.5)[-1]["fits"] == "yes (limit 0.5 h)"
    bundled = estimate(ensemble, recipe, rates, 1000, 2000, 3000, 64, 0.4, bundled=("train", "index"))
    assert bundled[0]["hours"] == pytest.approx(1000 / 50 / 3600)  # only the test images are extracted
    assert bundled[1]["hours"] == rows[1]["hours"]  # the bundled splits are still searched
    no_index = {r["step"]: r["hours"] for r in estimate(ensemble, recipe, rates, 1000, 0, 3000, 64)}
    assert no_index["exact search (test x train)"] == pytest.approx(2 * 64 * 1000 * 3000 / 1e9 / 3600)
    assert no_index["spatial verification (shortlist 10, re-ranking 0)"] == pytest.approx(1000 * 10 / 20 / 3600)
    measured = measure(ensemble, recipe, tiny_competition, images=8, batch=4)
    assert measured.forward["48px"] > 0 and measured.decode > 0 and measured.local > 0 and measured.verify > 0
    saved = tmp_path / "rates.yaml"
    assert kaggle.main(["estimate", "--ensemble", str(tiny_ensemble), "--test", "1000", "--sample-root",
                        str(tiny_competition), "--save-rates", str(saved)]) == 0
    first = capsys.readouterr().out
    assert "| total |" in first and saved.is_file()
    assert kaggle.main(["estimate", "--ensemble", str(tiny_ensemble), "--test", "1000", "--rates", str(saved)]) == 0
    assert capsys.readouterr().out == first  # the same rates give the same table
    assert kaggle.main(["estimate", "--ensemble", str(tiny_ensemble), "--test", "1000", "--rates", str(saved),
                        "--dim", "6400", "--train", "1000000"]) == 0
    assert "12.8 TFLOP" in capsys.readouterr().out  # 2 x 1000 x 1e6 x 6400: --dim is the width searched


def test_member_weight_files_travel_with_the_bundle(tiny_competition, tmp_path):
    import timm
    import torch

    from landmark_kit.ensemble import load_ensemble

    torch.manual_seed(3)
    weights = tmp_path / "elsewhere" / "backbone.pth"
    weights.parent.mkdir()
    torch.save(timm.create_model("test_efficientnet").state_dict(), weights)
    recipe = tmp_path / "e.yaml"
    recipe.write_text(f"members:\n  - {{name: w, backbone: test_efficientnet, weights: {weights}, image_size: 48}}\n"
                      "workers: 0\n")
    out = tmp_path / "k"
    kaggle.build(kaggle.KernelConfig(ensemble=str(recipe), dependency_wheels=False), out)
    bundled = load_ensemble(out / "dataset" / "ensemble.yaml").members[0]
    assert bundled.weights == "weights/w.pth" and (out / "dataset" / "weights" / "w.pth").is_file()
    weights.unlink()  # the kernel must not need the original file
    inputs = tmp_path / "input"
    inputs.mkdir()
    (inputs / "competition").symlink_to(tiny_competition)
    (inputs / "bundle").symlink_to(out / "dataset")
    submission = kaggle.run_kernel("recognition", inputs, tmp_path / "working")
    assert score_files(tiny_competition / "recognition_solution.csv", submission)["scores"]["All"]["GAP"] > 0


def test_competition_download_unzips_and_checks_through_the_kaggle_cli(tiny_competition, tmp_path, monkeypatch):
    """A fake ``kaggle`` on PATH zips the synthetic competition as Kaggle serves it."""
    import shutil
    import subprocess
    import sys

    served = tmp_path / "served"
    shutil.make_archive(str(served / "landmark-test"), "zip", tiny_competition)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "kaggle"
    fake.write_text(f"#!{sys.executable}\nimport shutil, sys\nargs = sys.argv[1:]\n"
                    "assert args[:2] == ['competitions', 'download'], args\n"
                    f"shutil.copy({str(served / 'landmark-test.zip')!r}, args[args.index('-p') + 1])\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("KAGGLE_USERNAME", "me")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    stage = [sys.executable, "stages/00_data.py", "kaggle", "landmark-test", "--out", str(tmp_path / "comp")]
    run = subprocess.run(stage, capture_output=True, text=True, cwd=kaggle.REPO)
    assert run.returncode == 0, run.stderr
    counts = json.loads(run.stdout.strip().splitlines()[-1])
    assert counts["test"] == len(scan_split(tiny_competition, "test")) and counts["train.csv rows"] > 0
    assert not (tmp_path / "comp" / ".download").exists()
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.setenv("HOME", str(tmp_path))
    run = subprocess.run(stage, capture_output=True, text=True, cwd=kaggle.REPO)
    assert run.returncode == 2 and "no Kaggle credentials" in run.stderr


def test_kernel_limits_pin_cpus_cap_threads_and_hide_gpus():
    env, cores = kaggle.kernel_limits(1, gpu=False)
    assert env["OMP_NUM_THREADS"] == env[kaggle.CPUS_ENV] == "1" and env["CUDA_VISIBLE_DEVICES"] == ""
    assert cores == {min(os.sched_getaffinity(0))}
    assert kaggle.kernel_limits(None, gpu=True) == ({}, None)
    with pytest.raises(RuntimeError, match="--cpus 0"):
        kaggle.kernel_limits(0, gpu=True)
    with pytest.raises(RuntimeError, match="may use"):
        kaggle.kernel_limits(len(os.sched_getaffinity(0)) + 1, gpu=True)


def test_build_takes_the_user_from_kaggle_json(tmp_path, monkeypatch):
    """As Kaggle's CLI: $KAGGLE_USERNAME first, else username in ~/.kaggle/kaggle.json (or $KAGGLE_CONFIG_DIR)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_CONFIG_DIR", raising=False)
    assert kaggle.KernelConfig().owner() == "your-kaggle-username"
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "kaggle.json").write_text('{"username": "from-json", "key": "k"}')
    assert kaggle.KernelConfig().owner() == "from-json"
    assert kaggle.KernelConfig(user="flag").owner() == "flag"
    monkeypatch.setenv("KAGGLE_USERNAME", "from-env")
    assert kaggle.KernelConfig().owner() == "from-env"
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "elsewhere"))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "kaggle.json").write_text("not json")
    with pytest.raises(RuntimeError, match="not a Kaggle token"):
        kaggle.KernelConfig().owner()
