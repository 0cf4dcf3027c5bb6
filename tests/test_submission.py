"""Submission/solution IO and the validator: every problem is reported with its line."""

from __future__ import annotations

import pandas as pd
import pytest

from landmark_kit.data import DataError
from landmark_kit.submission import (
    detect_track,
    read_recognition,
    read_retrieval,
    read_solution,
    validate_submission,
    write_recognition,
    write_retrieval,
)

T = [f"{i:016x}" for i in range(1, 5)]
IDX = [f"{i:016x}" for i in range(100, 350)]


def test_recognition_round_trip_keeps_exact_scores(tmp_path):
    scores = [0.1 + 0.2, 1e-12, 3.0, 0.0]
    path = write_recognition(tmp_path / "r.csv", T, [5, 7, None, -1], scores)
    assert path.read_text().splitlines()[0] == "id,landmarks"
    df = read_recognition(path)
    assert df["id"].tolist() == T[:2]
    assert df["landmark_id"].tolist() == [5, 7]
    assert df["score"].tolist() == scores[:2]  # exact float round trip
    assert detect_track(path) == "recognition"


def test_retrieval_round_trip_and_cap(tmp_path):
    path = write_retrieval(tmp_path / "s.csv", T[:2], [IDX[:150], []])
    sub = read_retrieval(path)
    assert sub[T[0]].split() == IDX[:100]
    assert sub[T[1]] == ""
    assert detect_track(path) == "retrieval"


def test_write_is_atomic_no_temp_left(tmp_path):
    write_recognition(tmp_path / "r.csv", T, [1] * 4, [1.0] * 4)
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]


@pytest.mark.parametrize(
    "body, message",
    [
        ("id,landmarks\n{0},5 0.3 9\n", "line 2"),
        ("id,landmarks\n{0},five 0.3\n", "not an integer"),
        ("id,landmarks\n{0},5 abc\n", "not a number"),
        ("id,landmarks\n{0},5 1\n{0},6 1\n", "line 3: id .* is repeated"),
        ("id,foo\n", "header"),
    ],
)
def test_read_recognition_errors_name_the_line(tmp_path, body, message):
    path = tmp_path / "bad.csv"
    path.write_text(body.format(T[0]))
    with pytest.raises(DataError, match=message):
        read_recognition(path)


def test_validator_accepts_good_files(tmp_path):
    rec = write_recognition(tmp_path / "r.csv", T, [1, 2, None, 3], [0.5, 0.4, 0.0, 0.1])
    ret = write_retrieval(tmp_path / "s.csv", T, [IDX[:100], IDX[5:10], [], IDX[:1]])
    assert validate_submission(rec, T, known_labels=[1, 2, 3]) == []
    assert validate_submission(ret, T, IDX) == []


def test_validator_reports_each_problem_with_its_line(tmp_path):
    path = tmp_path / "bad.csv"
    lines = [
        "id,landmarks",
        f"{T[0]},1 0.5",
        f"{T[0]},1 0.5",  # duplicate
        f"{T[1]},1",  # malformed
        "0000000000000bad,1 0.5",  # not a test id
        f"{T[2]},99 0.1",  # unknown label
    ]
    path.write_text("\n".join(lines) + "\n")
    errors = validate_submission(path, T, known_labels=[1])
    joined = "\n".join(errors)
    assert "line 3: id" in joined and "already on line 2" in joined
    assert "line 4" in joined and "expected '<label> <score>'" in joined
    assert "line 5" in joined and "not a test image" in joined
    assert "line 6" in joined and "label 99 is not a train landmark" in joined
    assert f"1 test id(s) missing: {T[3]}" in joined


def test_validator_retrieval_limits(tmp_path):
    path = tmp_path / "bad.csv"
    rows = [
        "id,images",
        f"{T[0]},{' '.join(IDX[:101])}",
        f"{T[1]},{IDX[0]} {IDX[0]}",
        f"{T[2]},{IDX[0]}  {IDX[1]}",
        f"{T[3]},ffffffffffffffff",
    ]
    path.write_text("\n".join(rows) + "\n")
    joined = "\n".join(validate_submission(path, T, IDX))
    assert "line 2" in joined and "101 images, at most 100" in joined
    assert "line 3" in joined and "repeated index id" in joined
    assert "line 4" in joined and "empty token" in joined
    assert "line 5" in joined and "unknown index id" in joined


def test_validator_wrong_header_and_extra_fields(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(f"id,landmarks,extra\n{T[0]},1 0.5,x\n")
    errors = validate_submission(path, T[:1])
    assert any("header must be exactly id,landmarks" in e for e in errors)
    assert any("line 2: expected 2 fields" in e for e in errors)


def test_read_solution_splits_usage(tmp_path):
    path = tmp_path / "sol.csv"
    pd.DataFrame(
        {"id": T, "landmarks": ["1", "", "2 3", "4"], "Usage": ["Public", "Private", "Private", "Ignored"]}
    ).to_csv(path, index=False)
    sol = read_solution(path)
    assert sol.track == "recognition"
    assert sol.public == {T[0]: [1]}
    assert sol.private == {T[1]: [], T[2]: [2, 3]}
    assert sol.ignored == {T[3]}


def test_read_solution_rejects_bad_usage_and_repeats(tmp_path):
    path = tmp_path / "sol.csv"
    path.write_text(f"id,landmarks,Usage\n{T[0]},1,Secret\n")
    with pytest.raises(DataError, match="line 2: Usage 'Secret'"):
        read_solution(path)
    path.write_text(f"id,images,Usage\n{T[0]},{IDX[0]},Public\n{T[0]},{IDX[0]},Public\n")
    with pytest.raises(DataError, match="line 3: id .* is repeated"):
        read_solution(path)


ZERO = "0" * 16


@pytest.mark.parametrize("images, message", [
    (f"{IDX[0]};{IDX[1]}", f"token '{IDX[0]};{IDX[1]}' is not an image id (an image id is 16 lowercase hex"),
    (f"{IDX[0]} 0123456789ABCDEF", "token '0123456789ABCDEF' is not an image id"),
    (f"{IDX[0]} {IDX[1]} {IDX[0]}", f"repeated index id {IDX[0]}"),
    (f"{ZERO} {IDX[1]} {ZERO}", f"repeated index id {ZERO}"),
    (f"{IDX[0]}  {IDX[1]}", "empty token (double, leading or trailing space)"),
    (" ".join(IDX[:101]), "101 images, at most 100 allowed"),
], ids=["semicolon-joined", "not-lowercase-hex", "repeated", "repeated-zero-id", "double-space", "over-100"])
def test_read_retrieval_names_line_token_and_reason(tmp_path, images, message):
    path = tmp_path / "retrieval.csv"
    path.write_text(f"id,images\n{T[0]},{IDX[5]} {IDX[6]}\n{T[1]},{images}\n")
    with pytest.raises(DataError) as info:
        read_retrieval(path)
    assert str(info.value).startswith(f"{path}, line 3 (id {T[1]}): {message}")


def test_read_retrieval_checks_query_and_index_ids_when_known(tmp_path):
    path = tmp_path / "retrieval.csv"
    path.write_text(f"id,images\n{T[0]},{IDX[0]}\n{T[3]},{IDX[1]} {IDX[9]}\n")
    assert read_retrieval(path, T, IDX[:10]) == {T[0]: IDX[0], T[3]: f"{IDX[1]} {IDX[9]}"}
    with pytest.raises(DataError, match=f"line 3: id {T[3]} is not in the solution"):
        read_retrieval(path, T[:2])
    with pytest.raises(DataError, match=f"line 3 \\(id {T[3]}\\): 1 unknown index id\\(s\\), e.g. {IDX[9]}"):
        read_retrieval(path, T, IDX[:9])


def test_read_retrieval_accepts_edge_rows(tmp_path):
    path = tmp_path / "retrieval.csv"
    path.write_text(f"id,images\n{T[0]},{' '.join(IDX[:100])}\n{T[1]},{ZERO} {IDX[0]} \n{T[2]},\n\n")
    assert read_retrieval(path) == {T[0]: " ".join(IDX[:100]), T[1]: f"{ZERO} {IDX[0]}", T[2]: ""}


@pytest.mark.parametrize("reader, row, hint", [
    (read_recognition, f"{T[1]},4,0.9", "a prediction is '<label> <score>', separated by a space, not a comma"),
    (read_retrieval, f"{T[1]},{IDX[0]},{IDX[1]}", "index ids are separated by spaces, not commas"),
], ids=["recognition", "retrieval"])
def test_comma_separated_value_is_too_many_fields_quoting_the_line(tmp_path, reader, row, hint):
    path = tmp_path / "sub.csv"
    path.write_text(f"id,{'landmarks' if reader is read_recognition else 'images'}\n{T[0]},\n{row}\n")
    with pytest.raises(DataError) as info:
        reader(path)
    assert str(info.value) == f"{path}, line 3: expected 2 fields, found 3 in {row!r} ({hint})"
