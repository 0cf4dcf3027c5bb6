"""Kaggle submission and solution CSVs: write, read (strictly, naming the line of every problem), validate.

Recognition: ``id,landmarks`` with ``"<label> <score>"`` or empty. Retrieval: ``id,images`` with at most 100
distinct index ids separated by single spaces, each 16 lowercase hex characters (the Kaggle / GLDv2 id, the
only id the data layer accepts). Solutions add ``Usage`` (Public / Private / Ignored).
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Iterable, Sequence

import numpy as np
import pandas as pd

from .artifacts import atomic_path
from .data import DataError, is_valid_id
from .metrics import _HEX_TABLE, EncodedRetrieval, _hex_ids, pack_hex

RECOGNITION = "recognition"
RETRIEVAL = "retrieval"
HEADERS = {RECOGNITION: ["id", "landmarks"], RETRIEVAL: ["id", "images"]}
MAX_RETRIEVED = 100
HEADER_LINE = b"id,images\n"  # a retrieval file's first line as the byte-level reader expects it
USAGES = ("Public", "Private", "Ignored")
ID_RULE = "an image id is 16 lowercase hex characters; ids are separated by single spaces"
FIELD_HINTS = {RECOGNITION: "a prediction is '<label> <score>', separated by a space, not a comma",
               RETRIEVAL: "index ids are separated by spaces, not commas"}


def _atomic_rows(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[str]]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return Path(path)


def format_score(score: float) -> str:
    """Shortest text that reads back as the same float, so ties and order survive the round trip."""
    return repr(float(score))


def write_recognition(
    path: str | os.PathLike, ids: Sequence[str], labels: Sequence[int | None], scores: Sequence[float]
) -> Path:
    """Write a recognition submission atomically; a label of None (or < 0) writes an empty prediction."""
    rows = []
    for image_id, label, score in zip(ids, labels, scores, strict=True):
        if label is None or int(label) < 0:
            rows.append((image_id, ""))
        else:
            rows.append((image_id, f"{int(label)} {format_score(score)}"))
    return _atomic_rows(path, HEADERS[RECOGNITION], rows)


def write_retrieval(path: str | os.PathLike, ids: Sequence[str], retrieved: Sequence[Sequence[str]]) -> Path:
    """Write a retrieval submission atomically; each list is cut to the first 100 ids."""
    rows = [(q, " ".join(list(r)[:MAX_RETRIEVED])) for q, r in zip(ids, retrieved, strict=True)]
    return _atomic_rows(path, HEADERS[RETRIEVAL], rows)


def _read_rows(path: str | os.PathLike) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # a BOM (Excel) is not part of the header
            rows = list(csv.reader(fh))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None
    if not rows:
        raise DataError(f"{path}: empty file, expected a header line")
    return [h.strip() for h in rows[0]], rows[1:]


def _read_header(path: str | os.PathLike) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # a BOM (Excel) is not part of the header
            first = next(csv.reader(fh), None)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None
    if first is None:
        raise DataError(f"{path}: empty file, expected a header line")
    return [h.strip() for h in first]


def detect_track(path: str | os.PathLike) -> str:
    """``recognition`` or ``retrieval`` from the header of a submission or solution file."""
    header = _read_header(path)
    if len(header) >= 2 and header[1] == "landmarks":
        return RECOGNITION
    if len(header) >= 2 and header[1] == "images":
        return RETRIEVAL
    raise DataError(f"{path}: header {','.join(header)!r} is neither id,landmarks nor id,images")


def parse_recognition_field(text: str) -> tuple[int, float] | None:
    """``"<label> <score>"`` -> (label, score); empty -> None; anything else raises ValueError."""
    tokens = text.split(" ")
    if tokens and tokens[-1] == "":
        tokens = tokens[:-1]
    if not tokens:
        return None
    if len(tokens) != 2:
        raise ValueError(f"expected '<label> <score>', found {len(tokens)} token(s) in {text!r}")
    try:
        label = int(tokens[0])
    except ValueError:
        raise ValueError(f"label {tokens[0]!r} is not an integer") from None
    try:
        score = float(tokens[1])
    except ValueError:
        raise ValueError(f"score {tokens[1]!r} is not a number") from None
    if math.isnan(score):
        raise ValueError("score is NaN")
    return label, score


def _fields_problem(where: str, row: Sequence[str], expected: int, track: str) -> str:
    """``expected N fields, found M``; a row with too many quotes itself and says how a value is written."""
    message = f"{where}: expected {expected} fields, found {len(row)}"
    return message + (f" in {','.join(row)!r} ({FIELD_HINTS[track]})" if len(row) > expected else "")


def read_recognition(path: str | os.PathLike, query_ids: Collection[str] | None = None) -> pd.DataFrame:
    """Read a recognition submission into ``id, landmark_id, score`` (rows without prediction dropped).

    Raises DataError naming the line for a wrong header, more fields than it, a malformed prediction, a
    repeated id or (given ``query_ids``, e.g. a solution's ids) an id not among them.
    """
    header, rows = _read_rows(path)
    if header[:2] != HEADERS[RECOGNITION]:
        raise DataError(f"{path}: header must be id,landmarks, found {','.join(header)}")
    ids, labels, scores, seen = [], [], [], set()
    for line, row in enumerate(rows, start=2):
        if not row:
            continue
        image_id = row[0]
        if len(row) > len(header):
            raise DataError(_fields_problem(f"{path}, line {line}", row, len(header), RECOGNITION))
        if image_id in seen:
            raise DataError(f"{path}, line {line}: id {image_id} is repeated")
        seen.add(image_id)
        if query_ids is not None and image_id not in query_ids:
            raise DataError(f"{path}, line {line}: id {image_id} is not in the solution")
        try:
            parsed = parse_recognition_field(row[1] if len(row) > 1 else "")
        except ValueError as exc:
            raise DataError(f"{path}, line {line} (id {image_id}): {exc}") from None
        if parsed is not None:
            ids.append(image_id)
            labels.append(parsed[0])
            scores.append(parsed[1])
    return pd.DataFrame(
        {"id": ids, "landmark_id": np.asarray(labels, dtype=np.int64), "score": np.asarray(scores, dtype=float)}
    )


def _retrieval_frame(path: str | os.PathLike) -> tuple[pd.Series, pd.Series]:
    """Query ids and images (one trailing space dropped, as the metric does) of every line after the header.

    Uses pandas' C parser (a 120k x 100 file is ~200 MB); blank lines are kept so line numbers stay exact.
    """
    header = _read_header(path)
    if header[:2] != HEADERS[RETRIEVAL]:
        raise DataError(f"{path}: header must be id,images, found {','.join(header)}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False, encoding="utf-8-sig")
    except pd.errors.ParserError as exc:  # a line with more fields than the header: find it (slow path)
        _, rows = _read_rows(path)
        line, row = next(((n, r) for n, r in enumerate(rows, start=2) if len(r) > len(header)), (0, []))
        if row:
            raise DataError(_fields_problem(f"{path}, line {line}", row, len(header), RETRIEVAL)) from None
        raise DataError(f"{path}: not a readable CSV ({exc})") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None
    df = df.iloc[:, :2].fillna("")
    return df.iloc[:, 0], df.iloc[:, 1].str.removesuffix(" ")


def _has_repeats(tokens: np.ndarray, counts: np.ndarray) -> bool:
    """Whether a row holds an id twice: rows padded with 0 to MAX_RETRIEVED columns and sorted, no Python loop."""
    if (counts == MAX_RETRIEVED).all():  # full rows (the usual file): no padding to place
        mat = np.sort(tokens.reshape(len(counts), MAX_RETRIEVED), axis=1)
    else:
        mat = np.zeros((len(counts), MAX_RETRIEVED), np.uint64)
        mat[np.arange(MAX_RETRIEVED) < counts[:, None]] = tokens
        mat.sort(axis=1)
    real_zeros = np.count_nonzero(mat == 0, axis=1) - (MAX_RETRIEVED - counts)  # id 0000000000000000
    return bool(((mat[:, 1:] == mat[:, :-1]) & (mat[:, 1:] != 0)).any() or (real_zeros > 1).any())


def _index_codes(index_ids: Iterable[str]) -> np.ndarray:
    valid = [i for i in index_ids if is_valid_id(i)]
    return _hex_ids(" ".join(valid), len(valid)) if valid else np.zeros(0, np.uint64)


def _encode_rows(ids: pd.Series, texts: pd.Series, query_ids: Collection[str] | None,
                 index_ids: Iterable[str] | None) -> EncodedRetrieval | None:
    """The rows' ids as uint64, or None when some row breaks a rule (vectorised; the caller then names it)."""
    if ids.duplicated().any() or (query_ids is not None and not ids.isin(query_ids).all()):
        return None
    lengths = texts.str.len().to_numpy(dtype=np.int64)
    counts = (lengths + 1) // 17  # every id takes 16 characters and a space
    if ((lengths > 0) & ((lengths + 1) % 17 != 0)).any() or (counts > MAX_RETRIEVED).any():
        return None
    total = int(counts.sum())
    tokens = _hex_ids(" ".join(texts[lengths > 0].tolist()), total) if total else np.zeros(0, np.uint64)
    return None if tokens is None else _checked_tokens(ids.tolist(), counts, tokens, index_ids)


def _checked_tokens(queries: list[str], counts: np.ndarray, tokens: np.ndarray,
                    index_ids: Iterable[str] | None) -> EncodedRetrieval | None:
    """The rows, or None when one names an id twice or (with ``index_ids``) an id outside the index."""
    if _has_repeats(tokens, counts):
        return None
    if index_ids is not None and not np.isin(tokens, _index_codes(index_ids)).all():
        return None
    return EncodedRetrieval(queries, counts, tokens)


_CELL_ENDS = np.zeros(256, dtype=bool)
_CELL_ENDS[[ord(","), ord(" "), ord("\n")]] = True


def _encode_cells(path: str | os.PathLike, query_ids: Collection[str] | None,
                  index_ids: Iterable[str] | None) -> EncodedRetrieval | None:
    """The usual retrieval file read from its bytes, without pandas or Python strings per id: with 16-hex-char
    query ids, no empty row, no trailing space, no quotes and ``\\n`` line ends, everything after the header is
    17-byte cells (``<query>,`` then ``<id> `` ... ``<id>\\n``). None for any other file (the general reader
    takes it) and for a row that breaks a rule (the general reader names its line)."""
    data = Path(path).read_bytes()
    start = len(HEADER_LINE) + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
    if data[start - len(HEADER_LINE): start] != HEADER_LINE or len(data) == start or (len(data) - start) % 17:
        return None
    cells = np.frombuffer(data, np.uint8, offset=start).reshape(-1, 17)
    ends = cells[:, 16]
    query = ends == ord(",")
    # a cell ends in ',' (a query), ' ' (an id, more follow) or a newline (a row's last id); a row follows a newline
    if not (_CELL_ENDS[ends].all() and query[0] and ends[-1] == ord("\n")
            and np.array_equal(query[1:], ends[:-1] == ord("\n"))):
        return None
    digits = np.frombuffer(data.translate(_HEX_TABLE), np.uint8, offset=start).reshape(-1, 17)[:, :16]
    if digits.max() > 15:
        return None
    rows = np.flatnonzero(query)
    queries = [data[start + 17 * r: start + 17 * r + 16].decode("ascii") for r in rows.tolist()]
    counts = np.diff(np.append(rows, len(cells))) - 1
    if (counts > MAX_RETRIEVED).any() or len(set(queries)) < len(queries):
        return None
    if query_ids is not None and not all(q in query_ids for q in queries):
        return None
    return _checked_tokens(queries, counts, pack_hex(digits)[~query], index_ids)  # pack all: rows select slowly


def _first_retrieval_problem(path: str | os.PathLike, ids: list[str], texts: list[str],
                             query_ids: Collection[str] | None, index_ids: Iterable[str] | None) -> str:
    """The first line that breaks a rule, with the offending id or token and why (a loop: error path only)."""
    index_set = set(index_ids) if index_ids is not None else None
    seen: dict[str, int] = {}
    for line, (query, text) in enumerate(zip(ids, texts), start=2):
        where = f"{path}, line {line}"
        if not query:
            if text:
                return f"{where}: index ids {text[:40]!r} without a query id"
            continue
        if query in seen:
            return f"{where}: id {query} is repeated (first on line {seen[query]})"
        seen[query] = line
        if query_ids is not None and query not in query_ids:
            return f"{where}: id {query} is not in the solution"
        problems = _retrieval_problems(text, index_set)
        if problems:
            return f"{where} (id {query}): {problems[0]}"
    return f"{path}: not a valid retrieval submission"


def _read_checked(path: str | os.PathLike, query_ids: Collection[str] | None,
                  index_ids: Iterable[str] | None) -> tuple[pd.Series, EncodedRetrieval]:
    """The images of the lines with a query id, and those rows encoded; the first broken rule raises DataError."""
    ids, texts = _retrieval_frame(path)
    named = (ids != "").to_numpy()
    encoded = None
    if not (~named & (texts != "").to_numpy()).any():
        encoded = _encode_rows(ids[named], texts[named], query_ids, index_ids)
    if encoded is None:
        raise DataError(_first_retrieval_problem(path, ids.tolist(), texts.tolist(), query_ids, index_ids))
    return texts[named], encoded


def read_retrieval_encoded(path: str | os.PathLike, query_ids: Collection[str] | None = None,
                           index_ids: Iterable[str] | None = None) -> EncodedRetrieval:
    """A retrieval submission, every row checked, its ids as uint64 for the scorer; see :func:`read_retrieval`.
    The usual file takes the byte-level reader (:func:`_encode_cells`), any other the general one."""
    if index_ids is not None:
        index_ids = list(index_ids)  # may be an iterator: both readers need it
    fast = _encode_cells(path, query_ids, index_ids)
    return fast if fast is not None else _read_checked(path, query_ids, index_ids)[1]


def read_retrieval(path: str | os.PathLike, query_ids: Collection[str] | None = None,
                   index_ids: Iterable[str] | None = None) -> dict[str, str]:
    """Read a retrieval submission into ``{query id: space-separated index ids}`` (empty rows kept).

    Raises DataError naming the line, the id or token and why, for the first row with more fields than the
    header, a repeated query id, a query id not in ``query_ids`` (when given), a token that is not an image
    id (``;`` / ``,``-joined, not 16 lowercase hex), an empty token, a repeated index id, more than 100 ids,
    or an id not in ``index_ids`` (when given). One trailing space is tolerated, as by the metric.
    """
    texts, encoded = _read_checked(path, query_ids, index_ids)
    return dict(zip(encoded.queries, texts.tolist()))


@dataclass
class Solution:
    """Ground truth of one track, split by Usage. Recognition values are label lists, retrieval id lists."""

    track: str
    public: dict[str, list] = field(default_factory=dict)
    private: dict[str, list] = field(default_factory=dict)
    ignored: set[str] = field(default_factory=set)

    @property
    def all(self) -> dict[str, list]:
        return {**self.public, **self.private}

    @property
    def ids(self) -> set[str]:
        return set(self.public) | set(self.private) | self.ignored


def solution_columns(path: str | os.PathLike) -> tuple[pd.Series, pd.Series, pd.Series] | None:
    """A solution's id, value and Usage columns read by pandas' C parser, or None when the file breaks a rule
    a vectorised check sees (unreadable, no Usage column, duplicate ids, unknown Usage): the line-by-line
    reader then names the problem."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError):
        return None
    if df.shape[1] < 3 or df.columns[2].strip() != "Usage":
        return None
    ids, values, usage = (df.iloc[:, i] for i in range(3))
    if ids.duplicated().any() or not usage.isin(USAGES).all():
        return None
    return ids, values, usage


def _solution_fast(path: str | os.PathLike, track: str) -> Solution | None:
    """The solution read by pandas' C parser with vectorised checks; None when any row breaks a rule (the
    line-by-line reader then names it). A 120k-row retrieval solution: ~3x faster than the loop."""
    columns = solution_columns(path)
    if columns is None:
        return None
    ids, values, usage = (c.to_numpy(dtype=object) for c in columns)
    try:
        parsed = [[int(t) for t in v.split()] for v in values] if track == RECOGNITION else [v.split() for v in values]
    except ValueError:
        return None
    sol = Solution(track)
    sol.ignored.update(ids[usage == "Ignored"].tolist())
    for part, name in ((sol.public, "Public"), (sol.private, "Private")):
        rows = np.flatnonzero(usage == name)
        part.update(zip(ids[rows].tolist(), [parsed[i] for i in rows]))
    return sol


def read_solution(path: str | os.PathLike) -> Solution:
    """Read a solution CSV (``id,landmarks,Usage`` or ``id,images,Usage``)."""
    track = detect_track(path)
    fast = _solution_fast(path, track)
    if fast is not None:
        return fast
    header, rows = _read_rows(path)
    if len(header) < 3 or header[2] != "Usage":
        raise DataError(f"{path}: solution needs a third column Usage, found {','.join(header)}")
    sol = Solution(track)
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) < 3:
            raise DataError(f"{path}, line {line}: expected 3 fields, found {len(row)}")
        image_id, value, usage = row[0], row[1], row[2]
        if image_id in seen:
            raise DataError(f"{path}, line {line}: id {image_id} is repeated")
        seen.add(image_id)
        if usage == "Ignored":
            sol.ignored.add(image_id)
            continue
        if usage not in USAGES:
            raise DataError(f"{path}, line {line}: Usage {usage!r} is not Public, Private or Ignored")
        tokens = value.split()
        if track == RECOGNITION:
            try:
                gt = [int(t) for t in tokens]
            except ValueError:
                raise DataError(f"{path}, line {line}: landmarks {value!r} are not integers") from None
        else:
            gt = tokens
        (sol.public if usage == "Public" else sol.private)[image_id] = gt
    return sol


def _errors_summary(path: str | os.PathLike, errors: list[str], limit: int = 30) -> list[str]:
    if len(errors) > limit:
        return errors[:limit] + [f"{path}: ... and {len(errors) - limit} more problem(s)"]
    return errors


def validate_submission(
    path: str | os.PathLike,
    test_ids: Iterable[str],
    index_ids: Iterable[str] | None = None,
    known_labels: Iterable[int] | None = None,
) -> list[str]:
    """Every problem in a submission, each naming its line; an empty list means it is valid.

    Checks the header, that every test id appears exactly once and no other id does, the
    ``"<label> <score>"`` format (and labels known, if given), and for retrieval at most 100 known index
    ids per row with no duplicates or empty tokens.
    """
    try:
        track = detect_track(path)
        header, rows = _read_rows(path)
    except DataError as exc:
        return [str(exc)]
    errors: list[str] = []
    if header != HEADERS[track]:
        errors.append(f"{path}, line 1: header must be exactly {','.join(HEADERS[track])}")
    expected = set(test_ids)
    index_set = set(index_ids) if index_ids is not None else None
    label_set = set(known_labels) if known_labels is not None else None
    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        where = f"{path}, line {line}"
        if len(row) != 2:
            errors.append(_fields_problem(where, row, 2, track))
            continue
        image_id, value = row
        if image_id in seen:
            errors.append(f"{where}: id {image_id} already on line {seen[image_id]}")
            continue
        seen[image_id] = line
        if image_id not in expected:
            errors.append(f"{where}: id {image_id!r} is not a test image")
            continue
        if track == RECOGNITION:
            try:
                parsed = parse_recognition_field(value)
            except ValueError as exc:
                errors.append(f"{where} (id {image_id}): {exc}")
                continue
            if parsed and label_set is not None and parsed[0] not in label_set:
                errors.append(f"{where} (id {image_id}): label {parsed[0]} is not a train landmark")
        else:
            errors.extend(f"{where} (id {image_id}): {p}" for p in _retrieval_problems(value, index_set))
    missing = sorted(expected - set(seen))
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        errors.append(f"{path}: {len(missing)} test id(s) missing: {shown}")
    return _errors_summary(path, errors)


def _retrieval_problems(value: str, index_set: set[str] | None) -> list[str]:
    """What is wrong with one row's index ids, most telling first (the validator lists all, readers the first)."""
    if not value:
        return []
    tokens = value.split(" ")
    problems = []
    bad = next((t for t in tokens if t and not is_valid_id(t)), None)
    if bad is not None:
        problems.append(f"token {bad!r} is not an image id ({ID_RULE})")
    if "" in tokens:
        problems.append("empty token (double, leading or trailing space)")
    if len(tokens) > MAX_RETRIEVED:
        problems.append(f"{len(tokens)} images, at most {MAX_RETRIEVED} allowed")
    repeated = next((t for t, n in Counter(tokens).items() if t and n > 1), None)
    if repeated is not None:
        problems.append(f"repeated index id {repeated}")
    if bad is None and index_set is not None:
        unknown = [t for t in tokens if t and t not in index_set]
        if unknown:
            problems.append(f"{len(unknown)} unknown index id(s), e.g. {unknown[0]}")
    return problems


def validate_against(
    path: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    solution_path: str | os.PathLike | None = None,
    train_csv: str | os.PathLike | None = None,
) -> list[str]:
    """Validate with test/index ids from a Kaggle folder (preferred) or test ids from a solution CSV."""
    from .data import read_train_csv, scan_split, split_ids

    if data_root is None and solution_path is None:
        raise DataError("validation needs --data-root or --solution to know the test ids")
    index_ids = None
    if data_root is not None:
        test_ids = split_ids(data_root, "test")  # a sample submission's ids without a file count too
        if detect_track(path) == RETRIEVAL:
            index_ids = scan_split(data_root, "index")
    else:
        test_ids = read_solution(solution_path).ids
    labels = read_train_csv(train_csv)["landmark_id"].unique().tolist() if train_csv else None
    return validate_submission(path, test_ids, index_ids, labels)


def write_submissions(
    out_dir: str | os.PathLike,
    test_ids: Sequence[str],
    labels: Sequence[int | None],
    scores: Sequence[float],
    retrieved: Sequence[Sequence[str]],
    index_ids: Sequence[str],
) -> tuple[Path, Path]:
    """Write ``recognition.csv`` and ``retrieval.csv`` into ``out_dir`` and validate both (raises if invalid)."""
    out_dir = Path(out_dir)
    rec = write_recognition(out_dir / "recognition.csv", test_ids, labels, scores)
    ret = write_retrieval(out_dir / "retrieval.csv", test_ids, retrieved)
    errors = validate_submission(rec, test_ids) + validate_submission(ret, test_ids, index_ids)
    if errors:
        raise RuntimeError("invalid submission written:\n" + "\n".join(errors))
    return rec, ret


def write_competition_files(
    out: str | os.PathLike, test: pd.DataFrame, index: pd.DataFrame, usage: Sequence[str]
) -> None:
    """Solutions and sample submissions of a competition folder from its ground truth.

    ``test`` and ``index`` have columns ``id`` and ``landmark_id`` (-1 = no landmark); ``usage`` is Public or
    Private per test row. A test image's retrieval ground truth is the index images of its landmark;
    queries with none are Ignored, as in the GLDv2 retrieval solution.
    """
    from .artifacts import atomic_write_csv

    out = Path(out)
    ids = test["id"].tolist()
    labels = test["landmark_id"].tolist()
    atomic_write_csv(pd.DataFrame({"id": ids, "landmarks": [str(x) if x >= 0 else "" for x in labels],
                                   "Usage": list(usage)}), out / "recognition_solution.csv")
    positives = index[index["landmark_id"] >= 0].groupby("landmark_id")["id"].apply(lambda s: " ".join(sorted(s)))
    images = [positives.get(x, "") if x >= 0 else "" for x in labels]
    atomic_write_csv(pd.DataFrame({"id": ids, "images": images,
                                   "Usage": [u if im else "Ignored" for u, im in zip(usage, images)]}),
                     out / "retrieval_solution.csv")
    write_recognition(out / "recognition_sample_submission.csv", ids, [None] * len(ids), [0.0] * len(ids))
    write_retrieval(out / "retrieval_sample_submission.csv", ids, [[] for _ in ids])
