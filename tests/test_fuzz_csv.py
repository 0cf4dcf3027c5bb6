"""The kit's CSV and recipe readers under hypothesis: train.csv / GLDv2-clean, solutions,
recognition and retrieval submissions, submission validation and YAML recipes. Whatever the bytes, a reader
returns a result that keeps its invariants or raises DataError / RecipeError naming the file; never another
exception, never a silently wrong frame. Byte-order marks and Windows line endings parse like plain files."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from landmark_kit.data import DataError, is_valid_id, read_train_csv
from landmark_kit.recipes import RecipeError, load_recipe
from landmark_kit.submission import read_recognition, read_retrieval, read_solution, validate_submission

IDS = [f"{i:016x}" for i in (1, 2, 3, 0xABCDEF)]
TOKENS = st.sampled_from([
    *IDS, "0123456789ABCDEF", "../../etc/passwd", "12345", "", " ", "nan", "NaN", "12", "-3", "1.5", "abc",
    "7 0.9", "7 nan", "7 abc", "7", "7 0.5 1", "1e309", '"', '"a,b"', " ".join(IDS), " ".join(IDS * 30),
    f"{IDS[0]} {IDS[0]}", "Public", "Private", "Ignored", "é", "\t",
])
HEADERS = st.sampled_from([
    "id,landmark_id", "id,landmark_id,url", "landmark_id,images", "id,landmarks", "id,images",
    "id,landmarks,Usage", "id,images,Usage", "id", "", "foo,bar", "id,id", "landmark_id,id", "ID,LANDMARK_ID",
])
ROWS = st.lists(st.lists(TOKENS, max_size=4).map(",".join), max_size=8)


@st.composite
def csv_bytes(draw) -> bytes:
    """A CSV-like file: optional BOM, a header (or none), rows of odd tokens, \\n or \\r\\n; or raw bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    lines = [draw(HEADERS), *draw(ROWS)]
    text = ("\ufeff" if draw(st.booleans()) else "") + eol.join(lines) + (eol if draw(st.booleans()) else "")
    return text.encode()


def _write(content: bytes) -> Path:
    path = Path(tempfile.mkdtemp()) / "fuzzed.csv"
    path.write_bytes(content)
    return path


def _named_error(path: Path, call):
    """``call()``'s result, or None when it raised a DataError / RecipeError naming ``path``."""
    try:
        return call()
    except (DataError, RecipeError) as exc:
        assert str(path) in str(exc), exc
        return None


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _train_frame_ok(df) -> None:
    assert list(df.columns) == ["id", "landmark_id"] and df["landmark_id"].dtype == np.int64
    assert all(is_valid_id(i) for i in df["id"]) and df["id"].is_unique


def _solution_ok(sol) -> None:
    assert not set(sol.public) & set(sol.private) and not (set(sol.public) | set(sol.private)) & sol.ignored
    if sol.track == "recognition":
        assert all(isinstance(v, int) for labels in sol.all.values() for v in labels)


def _recognition_ok(df) -> None:
    assert df["id"].is_unique and not df["score"].isna().any() and df["landmark_id"].dtype == np.int64


def _retrieval_ok(rows) -> None:
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in rows.items())


@pytest.mark.parametrize("reader, sound", [(read_train_csv, _train_frame_ok), (read_solution, _solution_ok),
                                           (read_recognition, _recognition_ok), (read_retrieval, _retrieval_ok)],
                         ids=["train_csv", "solution", "recognition", "retrieval"])
@FUZZ
@given(content=csv_bytes())
def test_reader_returns_a_sound_result_or_a_named_error(reader, sound, content):
    path = _write(content)
    result = _named_error(path, lambda: reader(path))
    if result is not None:
        sound(result)


@FUZZ
@given(csv_bytes())
def test_submission_validation_never_raises_and_names_lines(content):
    path = _write(content)
    errors = validate_submission(path, IDS[:2], IDS)
    assert all(str(path) in e for e in errors)


RECIPE_LINES = st.sampled_from([
    "epochs: 3", "epochs: three", "epochs: [1, 2]", "lr: 0.1", "lr: .nan", "sides: [64, 80]", "sides: 64",
    "head: arcface", "head: 3", "unknown_field: 1", "extends: nowhere.yaml", "- a list", "{",
    "!!python/object:os.system", "model: resnet50", "batch_size: -1", "", "# comment", "amp: maybe", "amp: true"])


@FUZZ
@given(st.one_of(st.binary(max_size=200), st.lists(RECIPE_LINES, max_size=6).map(lambda l: "\n".join(l).encode())))
def test_recipe_reader(content):
    from landmark_kit.checkpoint import TrainConfig

    path = _write(content)
    cfg = _named_error(path, lambda: load_recipe(TrainConfig, path))
    if cfg is not None:
        assert isinstance(cfg.epochs, int) and isinstance(cfg.sides, list) and isinstance(cfg.amp, bool)


GOOD_TRAIN = f"id,landmark_id\n{IDS[0]},7\n{IDS[1]},8\n"


@pytest.mark.parametrize("transform", [lambda t: "\ufeff" + t, lambda t: t.replace("\n", "\r\n")],
                         ids=["bom", "crlf"])
def test_bom_and_windows_line_endings_parse_like_plain_files(transform):
    plain = read_train_csv(_write(GOOD_TRAIN.encode()))
    assert read_train_csv(_write(transform(GOOD_TRAIN).encode())).equals(plain)
    sub = f"id,landmarks\n{IDS[0]},7 0.5\n{IDS[1]},\n"
    assert read_recognition(_write(transform(sub).encode())).equals(read_recognition(_write(sub.encode())))
    ret = f"id,images\n{IDS[0]},{IDS[2]} {IDS[3]}\n"
    assert read_retrieval(_write(transform(ret).encode())) == {IDS[0]: f"{IDS[2]} {IDS[3]}"}
    sol = f"id,landmarks,Usage\n{IDS[0]},7,Public\n{IDS[1]},,Private\n"
    assert read_solution(_write(transform(sol).encode())).all == {IDS[0]: [7], IDS[1]: []}
    assert validate_submission(_write(transform(sub).encode()), IDS[:2]) == []


@pytest.mark.parametrize("reader, content, message", [
    (read_train_csv, "", "not a readable CSV"),
    (read_train_csv, "id\n" + IDS[0] + "\n", "expected columns id,landmark_id"),
    (read_train_csv, f"id,landmark_id\n{IDS[0]},7\n{IDS[0]},8\n", "line 3: duplicate id"),
    (read_train_csv, f"id,landmark_id\n{IDS[0]},nan\n", "line 2: landmark_id 'nan' is not an integer"),
    (read_train_csv, "id,landmark_id\n../../etc/passwd,1\n", "line 2: invalid image id"),
    (read_recognition, "", "empty file"),
    (read_recognition, f"id,landmarks\n{IDS[0]},7 abc\n", "line 2 (id " + IDS[0] + "): score 'abc' is not a number"),
    (read_recognition, f"id,landmarks\n{IDS[0]},7 nan\n", "line 2 (id " + IDS[0] + "): score is NaN"),
    (read_recognition, f"id,landmarks\n{IDS[0]},7 0.5\n{IDS[0]},7 0.5\n", "line 3: id " + IDS[0] + " is repeated"),
    (read_solution, f"id,landmarks\n{IDS[0]},7\n", "needs a third column Usage"),
    (read_solution, f"id,landmarks,Usage\n{IDS[0]},x,Public\n", "line 2: landmarks 'x' are not integers"),
], ids=lambda v: v.__name__ if callable(v) else None)
def test_each_problem_is_a_clear_error_naming_file_and_line(reader, content, message):
    path = _write(content.encode())
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        reader(path)
    assert str(path) in str(info.value)


def test_more_than_100_retrieved_ids_and_extra_columns_are_reported():
    many = " ".join(f"{i:016x}" for i in range(101))
    errors = validate_submission(_write(f"id,images\n{IDS[0]},{many}\n".encode()), [IDS[0]])
    assert any("line 2" in e and "101 images, at most 100 allowed" in e for e in errors)
    extra = validate_submission(_write(f"id,landmarks,extra\n{IDS[0]},7 0.5,x\n".encode()), [IDS[0]])
    assert any("line 1: header must be exactly id,landmarks" in e for e in extra)
    assert any("line 2: expected 2 fields, found 3" in e for e in extra)
