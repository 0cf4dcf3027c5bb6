"""The colour-histogram baseline and the demo job (generate, train, extract, predict, score), end to end."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd

from landmark_kit.baselines import run_histogram_baseline
from landmark_kit.scoring import score_files


def test_histogram_baseline_writes_valid_scored_submissions(tiny_competition, tmp_path):
    rec, ret = run_histogram_baseline(tiny_competition, tmp_path / "sub", workers=0)
    assert (tmp_path / "sub" / "config.json").is_file()
    r = score_files(tiny_competition / "recognition_solution.csv", rec)["scores"]["All"]
    s = score_files(tiny_competition / "retrieval_solution.csv", ret)["scores"]["All"]
    assert 0.0 <= r["GAP"] <= 1.0 and 0.0 < s["mAP@100"] <= 1.0


def _demo(workdir) -> str:
    run = subprocess.run(
        [sys.executable, "-m", "landmark_kit.demo", "--workdir", str(workdir), "--landmarks", "4",
         "--epochs", "1", "--image-size", "64"],
        capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def test_demo_job_prints_both_tables_and_the_same_numbers_twice(tmp_path):
    out = _demo(tmp_path / "a")
    table = out[out.index("method"):]
    for row in ("colour histogram", "random init", "ImageNet zero-shot", "fine-tuned", "cleaned list", "ensemble"):
        assert row in table
    # then stage 04's ablation tables for both tracks, every step of submissions/full.yaml, with intervals
    for row in ("| method | GAP Public", "+ spatial verification", "+ distractor suppression",
                "| method | mAP@100 Public", "delta All [95% CI]",
                "+ local-feature re-ranking", "+ appended positives"):
        assert row in table
    # the same command in a fresh folder: the same scores (only the queries/s may differ)
    _demo(tmp_path / "b")
    assert (tmp_path / "a" / "demo.md").read_text() == (tmp_path / "b" / "demo.md").read_text()
    for track in ("recognition", "retrieval"):
        a, b = (pd.read_csv(tmp_path / d / "ensemble" / "synthetic-ensemble" / "ablation" / "full" / f"{track}.csv")
                for d in ("a", "b"))
        assert a.drop(columns="queries_per_s").equals(b.drop(columns="queries_per_s"))
