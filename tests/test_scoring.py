"""The scorer end to end: files in, Public/Private/All figures out, plus the stage-05 CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from landmark_kit.data import DataError
from landmark_kit.scoring import format_report, score_files
from landmark_kit.submission import write_recognition, write_retrieval

ROOT = Path(__file__).resolve().parents[1]
A, B, C, D, E = (f"{i:016x}" for i in range(5))


@pytest.fixture()
def files(tmp_path):
    pd.DataFrame(
        {"id": [A, B, C, D, E], "landmarks": ["0 12", "100 200 300", "1", "", ""],
         "Usage": ["Public", "Public", "Private", "Private", "Public"]}
    ).to_csv(tmp_path / "rec_sol.csv", index=False)
    write_recognition(tmp_path / "rec.csv", [A, B, C, D, E], [None, 0, 1, 150, None], [0, 0.01, 10.0, 15.0, 0])
    i1, i2, i3 = (f"{i:016x}" for i in range(100, 103))
    pd.DataFrame(
        {"id": [A, B, C], "images": [f"{i1} {i2}", i3, ""], "Usage": ["Public", "Private", "Ignored"]}
    ).to_csv(tmp_path / "ret_sol.csv", index=False)
    write_retrieval(tmp_path / "ret.csv", [A, B, C], [[i3, i1], [i3], [i1]])
    return tmp_path


def test_recognition_all_part_reproduces_reference_case(files):
    result = score_files(files / "rec_sol.csv", files / "rec.csv")
    assert result["track"] == "recognition"
    full = result["scores"]["All"]
    assert full["GAP"] == pytest.approx(1 / 6)
    assert full["GAP_landmarks_only"] == pytest.approx(1 / 3)
    assert full["top1"] == pytest.approx(1 / 3)
    # Public: A, B landmark images, E non-landmark; only B predicted (wrong) -> 0
    assert result["scores"]["Public"]["GAP"] == 0.0
    # Private: C right (rank 2 behind D's wrong prediction), 1 positive -> 0.5
    assert result["scores"]["Private"]["GAP"] == pytest.approx(0.5)
    assert "Public" in format_report(result)


def test_retrieval_parts_and_ignored(files):
    result = score_files(files / "ret_sol.csv", files / "ret.csv")
    s = result["scores"]
    assert s["Public"]["mAP@100"] == pytest.approx(0.5 / 2)  # i1 found at rank 2 of 2 gt
    assert s["Private"]["mAP@100"] == pytest.approx(1.0)
    assert s["All"]["queries"] == 2
    assert "mAP@100" in format_report(result)


def test_track_mismatch_and_unknown_ids(files, tmp_path):
    with pytest.raises(DataError, match="retrieval submission but"):
        score_files(files / "rec_sol.csv", files / "ret.csv")
    write_recognition(tmp_path / "x.csv", ["ffffffffffffffff"], [1], [1.0])
    with pytest.raises(DataError, match="not in the solution"):
        score_files(files / "rec_sol.csv", tmp_path / "x.csv")


def _stage(*args):
    return subprocess.run([sys.executable, str(ROOT / "stages" / "05_score.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def test_cli_score_json_and_validate(files):
    run = _stage("--solution", files / "rec_sol.csv", "--submission", files / "rec.csv", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["scores"]["All"]["GAP"] == pytest.approx(1 / 6)
    run = _stage("--validate", files / "rec.csv", "--solution", files / "rec_sol.csv")
    assert run.returncode == 0 and "valid" in run.stdout
    (files / "broken.csv").write_text(f"id,landmarks\n{A},oops\n")
    run = _stage("--validate", files / "broken.csv", "--solution", files / "rec_sol.csv")
    assert run.returncode == 1 and "line 2" in run.stdout
    run = _stage("--solution", files / "rec_sol.csv", "--submission", files / "broken.csv")
    assert run.returncode == 2 and "line 2" in run.stderr


I1, I2 = f"{100:016x}", f"{101:016x}"


@pytest.mark.parametrize("row, message", [
    (f"{B},{I1};{I2}", f"line 3 (id {B}): token '{I1};{I2}' is not an image id (an image id is 16 lowercase hex"),
    (f"{B},{I1} not-an-id", f"line 3 (id {B}): token 'not-an-id' is not an image id"),
    (f"{B},{I1},{I2}", f"line 3: expected 2 fields, found 3 in '{B},{I1},{I2}' (index ids are separated by spaces"),
    (f"{D},{I1}", f"line 3: id {D} is not in the solution"),
], ids=["semicolon-joined", "not-hex", "comma-joined", "unknown-query"])
def test_cli_refuses_a_malformed_retrieval_row_naming_line_and_token(files, row, message):
    (files / "bad.csv").write_text(f"id,images\n{A},{I1}\n{row}\n")
    run = _stage("--solution", files / "ret_sol.csv", "--submission", files / "bad.csv")
    assert run.returncode == 2 and run.stdout == "" and len(run.stderr.splitlines()) == 1
    assert run.stderr.startswith(f"error: {files / 'bad.csv'}, {message}")


def test_recognition_comma_separated_prediction_is_named(files):
    (files / "bad.csv").write_text(f"id,landmarks\n{A},4 0.5\n{B},4,0.9\n")
    with pytest.raises(DataError, match=f"line 3: expected 2 fields, found 3 in '{B},4,0.9' \\(a prediction is"):
        score_files(files / "rec_sol.csv", files / "bad.csv")


def test_retrieval_index_ids_checked_when_known(files):
    index = [f"{i:016x}" for i in range(100, 103)]
    assert score_files(files / "ret_sol.csv", files / "ret.csv", index)["scores"]["All"]["queries"] == 2
    with pytest.raises(DataError, match=f"line 2 \\(id {A}\\): 1 unknown index id\\(s\\), e.g. {index[2]}"):
        score_files(files / "ret_sol.csv", files / "ret.csv", index[:2])


def test_recognition_parts_are_the_metrics_of_each_part(files):
    """Matched and ranked once for the three parts: the same figures as the metrics run part by part."""
    from landmark_kit.metrics import global_average_precision, top1_accuracy
    from landmark_kit.submission import read_recognition, read_solution

    solution = read_solution(files / "rec_sol.csv")
    pred = read_recognition(files / "rec.csv")
    scores = score_files(files / "rec_sol.csv", files / "rec.csv")["scores"]
    for part, truth in (("Public", solution.public), ("Private", solution.private), ("All", solution.all)):
        mine = pred[pred["id"].isin(list(truth))]
        assert scores[part]["GAP"] == global_average_precision(mine, truth)
        assert scores[part]["GAP_landmarks_only"] == global_average_precision(mine, truth, True)
        assert scores[part]["top1"] == top1_accuracy(mine, truth)


def test_retrieval_solution_of_other_ids_takes_the_general_reader(files):
    """A ground-truth id that is not a Kaggle id sends the solution to read_solution (ids compared as text):
    the same figures as a solution of Kaggle ids only, which the uint64 reader takes."""
    i1, i2, i3 = (f"{i:016x}" for i in range(100, 103))
    for name, other in (("kaggle", i2), ("text", "not-a-kaggle-id")):
        pd.DataFrame({"id": [A, B, C], "images": [f"{i1} {other}", i3, ""], "Usage": ["Public", "Private", "Ignored"]}
                     ).to_csv(files / f"{name}.csv", index=False)
    kaggle = score_files(files / "kaggle.csv", files / "ret.csv")["scores"]
    assert kaggle["Public"]["mAP@100"] == pytest.approx(0.5 / 2)
    assert score_files(files / "text.csv", files / "ret.csv")["scores"] == kaggle
