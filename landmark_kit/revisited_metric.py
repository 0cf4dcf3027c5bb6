"""Revisited Oxford and Paris (ROxford5k / RParis6k): the ground truth and the Easy / Medium / Hard protocol.

Ground truth is the benchmark's ``gnd_<dataset>.pkl`` or ``gnd_<dataset>.mat``: database names (``imlist``),
query names (``qimlist``) and per query a box and three lists of database indices, ``easy``, ``hard`` and
``junk``. The ``.pkl`` is read by an unpickler that admits plain containers, numbers, strings and numpy
arrays only (any other global is refused, nothing runs); the ``.mat`` by :func:`scipy.io.loadmat`.

The scores are those of the benchmark's own ``compute_map`` (revisitop, ``python/evaluate.py``) with the
ground truth its example script builds: Easy counts ``easy`` as positives and ignores ``junk + hard``;
Medium counts ``easy + hard`` and ignores ``junk``; Hard counts ``hard`` and ignores ``junk + easy``.
Ignored images are taken out of the ranking, AP sums trapezoids of the precision-recall curve, mP@k is
precision at ``min(k, rank of the last positive)``, and a query without positives is left out of the mean.
"""

from __future__ import annotations

import csv
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .artifacts import atomic_path, write_bytes
from .data import DataError

PROTOCOLS = ("easy", "medium", "hard")
KAPPAS = (1, 5, 10)
INDEX_FIELDS = ("easy", "hard", "junk")
HEADER = ["id", "images"]


class _Refused(pickle.UnpicklingError):
    """A global outside the allow-list: the pickle would build or call something other than plain data."""


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """numpy's array reconstruction under the module names numpy 1.x and 2.x pickle it with."""
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol 0-2 pickles use it for bytes (latin-1 only: no other codec runs)."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1") or not isinstance(text, str):
        raise _Refused(f"_codecs.encode with {encoding!r}, not latin-1 bytes")
    return text.encode("latin-1")


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    **_numpy_globals(),
    **{(module, t.__name__): t for module in ("builtins", "__builtin__")
       for t in (set, frozenset, bytes, bytearray)},
    ("_codecs", "encode"): _latin1_encode,
}


class _GroundTruthUnpickler(pickle.Unpickler):
    """Unpickles plain containers, numbers, strings and numpy arrays; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"refused global {module}.{name}") from None


@dataclass
class GroundTruth:
    """One benchmark's ground truth; ``gnd[i]`` holds ``bbx`` (4 floats or None) and 0-based int64 arrays
    ``easy`` / ``hard`` / ``junk`` for query ``qimlist[i]``."""

    path: Path
    imlist: list[str]
    qimlist: list[str]
    gnd: list[dict]

    def protocol(self, i: int, protocol: str) -> tuple[np.ndarray, np.ndarray]:
        """(positives, junk) of query ``i`` under ``protocol``, as the benchmark's example script builds them."""
        g = self.gnd[i]
        if protocol == "easy":
            return g["easy"], np.concatenate([g["junk"], g["hard"]])
        if protocol == "medium":
            return np.concatenate([g["easy"], g["hard"]]), g["junk"]
        if protocol == "hard":
            return g["hard"], np.concatenate([g["junk"], g["easy"]])
        raise ValueError(f"unknown protocol {protocol!r}: expected one of {PROTOCOLS}")


def _names(path: Path, key: str, value: Any) -> list[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, np.ndarray)):
        raise DataError(f"{path}: {key} must be a list of names, found {type(value).__name__}")
    names = list(value)
    bad = next((n for n in names if not isinstance(n, str)), None)
    if bad is not None:
        raise DataError(f"{path}: {key} holds {bad!r} ({type(bad).__name__}), not a name")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"{path}: {key} lists {name!r} twice")
        seen.add(name)
    return [str(n) for n in names]


def _indices(where: str, key: str, value: Any, n: int, offset: int) -> np.ndarray:
    """A list of database indices as int64, 0-based (``offset`` 1 for the .mat), every one checked."""
    try:
        arr = np.asarray(value).ravel()
    except (TypeError, ValueError):
        arr = np.asarray(["?"])
    if arr.size and (arr.dtype.kind not in "iuf" or np.any(arr != np.round(arr))):
        raise DataError(f"{where}: {key} must be a list of integers, found {value!r}"[:300])
    wrong = ~((arr >= offset) & (arr < n + offset))
    if wrong.any():
        raw, base = arr[wrong][0], "1-based (.mat)" if offset else "0-based"
        shown = int(raw) if np.isfinite(raw) else raw
        raise DataError(f"{where}: {key} index {shown} out of range ({base}, imlist has {n} images)")
    return arr.astype(np.int64) - offset


def _bbx(where: str, value: Any) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    try:
        box = np.asarray(value, dtype=float).ravel()
    except (TypeError, ValueError):
        box = np.zeros(1)
    if box.size == 0:
        return None
    if box.size != 4 or not np.all(np.isfinite(box)):
        raise DataError(f"{where}: bbx must be [x1, y1, x2, y2], found {value!r}"[:300])
    return tuple(float(v) for v in box)


def _build(path: Path, raw: Mapping[str, Any], offset: int) -> GroundTruth:
    """Check a loaded ``{imlist, qimlist, gnd}`` and convert it; ``offset`` is 1 for 1-based indices."""
    missing = [k for k in ("imlist", "qimlist", "gnd") if k not in raw]
    if missing:
        raise DataError(f"{path}: no {', '.join(missing)} (expected imlist, qimlist and gnd)")
    imlist = _names(path, "imlist", raw["imlist"])
    qimlist = _names(path, "qimlist", raw["qimlist"])
    entries = raw["gnd"]
    if not isinstance(entries, (list, tuple)) or len(entries) != len(qimlist):
        count = len(entries) if isinstance(entries, (list, tuple)) else type(entries).__name__
        raise DataError(f"{path}: gnd must hold one entry per query ({len(qimlist)}), found {count}")
    gnd = []
    for i, (query, entry) in enumerate(zip(qimlist, entries)):
        where = f"{path}: gnd[{i}] (query {query})"
        if not isinstance(entry, Mapping):
            raise DataError(f"{where}: expected a dict with easy, hard, junk, found {type(entry).__name__}")
        absent = [k for k in INDEX_FIELDS if k not in entry]
        if absent:
            raise DataError(f"{where}: no {', '.join(absent)}")
        g: dict[str, Any] = {"bbx": _bbx(where, entry.get("bbx"))}
        g.update({k: _indices(where, k, entry[k], len(imlist), offset) for k in INDEX_FIELDS})
        gnd.append(g)
    return GroundTruth(path, imlist, qimlist, gnd)


def _read_pkl(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            raw = _GroundTruthUnpickler(fh).load()
    except _Refused as exc:
        raise DataError(f"{path}: {exc} (only plain containers and numpy arrays are unpickled)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError,
            UnicodeDecodeError, OverflowError) as exc:
        raise DataError(f"{path}: not a readable ground-truth pickle ({type(exc).__name__}: {exc})"[:300]) from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a dict with imlist, qimlist and gnd, found {type(raw).__name__}")
    return raw


def _mat_names(path: Path, key: str, value: np.ndarray) -> list[str]:
    """A cell array of strings (the official layout) or a char matrix (``savemat`` of a list of str)."""
    if value.dtype.kind == "U":
        return [str(s).rstrip(" \x00") for s in value.ravel()]
    names = []
    for cell in value.ravel():
        item = np.asarray(cell).ravel()
        if item.dtype.kind != "U" or item.size > 1:
            raise DataError(f"{path}: {key} must be a cell array of strings, found {cell!r}"[:300])
        names.append(str(item[0]) if item.size else "")
    return names


def _mat_record(path: Path, i: int, cell: Any) -> dict[str, Any]:
    """One query of a struct array (the official layout) or of a cell array of 1x1 structs."""
    rec = np.asarray(cell)
    while rec.dtype == object and rec.size == 1:
        rec = np.asarray(rec.ravel()[0])
    if rec.dtype.names is None or rec.size != 1:
        raise DataError(f"{path}: gnd({i + 1}) is not a struct with fields easy, hard, junk")
    rec = rec.ravel()[0]
    return {name: rec[name] for name in rec.dtype.names}


def _read_mat(path: Path) -> dict:
    import scipy.io  # only for .mat ground truth (stage 05 scores GLDv2 without it)

    try:
        mat = scipy.io.loadmat(path)
    except NotImplementedError as exc:  # MATLAB v7.3 (HDF5)
        raise DataError(f"{path}: {exc}; save it with -v7 (or use the .pkl)") from None
    except (ValueError, TypeError, OSError, EOFError, MemoryError) as exc:
        raise DataError(f"{path}: not a readable .mat file ({exc})"[:300]) from None
    missing = [k for k in ("imlist", "qimlist", "gnd") if k not in mat]
    if missing:
        raise DataError(f"{path}: no {', '.join(missing)} (expected imlist, qimlist and gnd)")
    gnd = np.asarray(mat["gnd"])
    return {"imlist": _mat_names(path, "imlist", np.asarray(mat["imlist"])),
            "qimlist": _mat_names(path, "qimlist", np.asarray(mat["qimlist"])),
            "gnd": [_mat_record(path, i, cell) for i, cell in enumerate(gnd.ravel())]}


def read_ground_truth(path: str | os.PathLike) -> GroundTruth:
    """``gnd_*.pkl`` (restricted unpickler) or ``gnd_*.mat`` (1-based indices, converted) by suffix.

    Raises DataError naming the file for a refused pickle global, a missing key, a name that is not a
    string or is listed twice, an index out of range (0 in a .mat) or a box that is not 4 numbers. A
    missing ``bbx`` reads as None; the scores do not use it.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".pkl", ".mat"):
        raise DataError(f"{path}: expected a .pkl or .mat ground truth")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return _build(path, _read_pkl(path), 0) if suffix == ".pkl" else _build(path, _read_mat(path), 1)


def read_distractors(path: str | os.PathLike) -> list[str]:
    """The distractor names of a list such as ``revisitop1m.txt`` (one path under ``jpg/`` a line, as ranks
    name them); DataError naming the file when missing or when a name is listed twice."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: distractor list not found (one image path under jpg/ a line)")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: a name is listed twice")
    return names


def with_distractors(gt: GroundTruth, names: Sequence[str], where: str = "distractors") -> GroundTruth:
    """``gt`` with ``names`` appended to its database: images that are nobody's positive or junk (+1M)."""
    clash = set(names) & set(gt.imlist)
    if clash:
        raise DataError(f"{where}: {len(clash)} name(s) also in {gt.path.name}'s database, e.g. {min(clash)}")
    return GroundTruth(gt.path, [*gt.imlist, *names], gt.qimlist, gt.gnd)


def write_ground_truth(path: str | os.PathLike, gt: GroundTruth | Mapping[str, Any]) -> Path:
    """Write ``gt`` (or a ``{imlist, qimlist, gnd}`` dict, checked as on reading) atomically as the benchmark's
    ``.pkl`` (plain lists, protocol 2) or ``.mat`` (cell arrays, a 1 x n_queries struct array, 1-based rows)."""
    path = Path(path)
    if path.suffix.lower() not in (".pkl", ".mat"):
        raise DataError(f"{path}: expected a .pkl or .mat ground truth")
    if not isinstance(gt, GroundTruth):
        gt = _build(path, gt, 0)
    if path.suffix.lower() == ".pkl":
        gnd = [{"bbx": list(g["bbx"]) if g["bbx"] is not None else None,
                **{k: [int(i) for i in g[k]] for k in INDEX_FIELDS}} for g in gt.gnd]
        return write_bytes(path, pickle.dumps({"imlist": gt.imlist, "qimlist": gt.qimlist, "gnd": gnd}, protocol=2))
    import scipy.io

    records = np.zeros((1, len(gt.gnd)), dtype=[(f, "O") for f in ("bbx", *INDEX_FIELDS)])
    for i, g in enumerate(gt.gnd):
        records[0, i]["bbx"] = np.asarray(g["bbx"] if g["bbx"] is not None else [], float)[None, :]
        for k in INDEX_FIELDS:
            records[0, i][k] = (np.asarray(g[k], float) + 1)[None, :]
    cells = {k: np.array(names, dtype=object).reshape(-1, 1) for k, names in (("imlist", gt.imlist),
                                                                               ("qimlist", gt.qimlist))}
    with atomic_path(path) as tmp:
        scipy.io.savemat(tmp, {**cells, "gnd": records})
    return path


def _query_scores(ranked: np.ndarray, positives: np.ndarray, junk: np.ndarray,
                  kappas: np.ndarray) -> tuple[float, np.ndarray]:
    """AP and precision at ``kappas`` of one ranking, as ``compute_map`` gives them (junk removed first)."""
    found = np.flatnonzero(np.isin(ranked, positives))
    ignored = np.flatnonzero(np.isin(ranked, junk))
    pos = found - np.searchsorted(ignored, found, side="left")
    j = np.arange(len(pos), dtype=float)
    before = np.divide(j, pos, out=np.ones_like(j), where=pos > 0)
    ap = float((before + (j + 1) / (pos + 1)).sum() / (2 * len(positives)))
    last = pos[-1] + 1 if len(found) == len(np.unique(positives)) else np.inf
    kq = np.minimum(last, kappas)
    return ap, (pos[None, :] + 1 <= kq[:, None]).sum(axis=1) / kq


def _score_rows(gt: GroundTruth, rows: Sequence[np.ndarray], kappas: Sequence[int]) -> dict[str, dict[str, float]]:
    ks = np.asarray(kappas, dtype=float)
    if ks.ndim != 1 or (ks < 1).any() or (ks != np.round(ks)).any():
        raise ValueError(f"kappas must be positive integers, found {kappas!r}")
    out = {}
    for protocol in PROTOCOLS:
        aps, prs = [], []
        for i, ranked in enumerate(rows):
            positives, junk = gt.protocol(i, protocol)
            if len(positives):
                ap, pr = _query_scores(ranked, positives, junk, ks)
                aps.append(ap)
                prs.append(pr)
        mean_pr = np.mean(prs, axis=0) if prs else np.full(len(ks), np.nan)
        out[protocol] = {"map": float(np.mean(aps)) if aps else math.nan,
                         **{f"mp@{int(k)}": float(p) for k, p in zip(ks, mean_pr)}}
    return out


def evaluate_indices(gt: GroundTruth, ranks: np.ndarray, kappas: Sequence[int] = KAPPAS) -> dict[str, dict[str, float]]:
    """mAP and mP@k per protocol (fractions) of ``ranks`` (n_queries, N): database indices in rank order.

    ``N`` may be below ``len(imlist)`` (top-N): a positive not listed counts as ranked after everything, so it
    adds nothing to AP (still divided by the number of positives) and mP@k, whose cut-off is then k itself,
    counts only the listed positives. With full rankings both equal the benchmark's ``compute_map`` exactly.
    A protocol where no query has positives scores NaN.
    """
    ranks = np.asarray(ranks)
    if ranks.ndim != 2 or ranks.shape[0] != len(gt.qimlist):
        raise ValueError(f"ranks must be (n_queries={len(gt.qimlist)}, N), found shape {ranks.shape}")
    if ranks.size and ranks.dtype.kind not in "iu":
        raise ValueError(f"ranks must hold integer database indices, found {ranks.dtype}")
    if ranks.size and (ranks.min() < 0 or ranks.max() >= len(gt.imlist)):
        raise ValueError(f"ranks must index imlist (0..{len(gt.imlist) - 1}), found {ranks.min()}..{ranks.max()}")
    ordered = np.sort(ranks, axis=1)
    twice = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
    if twice.any():
        row = int(np.flatnonzero(twice)[0])
        raise ValueError(f"ranks lists a database image twice for query {row} ({gt.qimlist[row]})")
    return _score_rows(gt, list(ranks.astype(np.int64, copy=False)), kappas)


def _lookup(gt: GroundTruth) -> tuple[np.ndarray, np.ndarray]:
    names = np.asarray(gt.imlist, dtype=str)
    order = np.argsort(names)
    return names[order], order


def _to_indices(lookup: tuple[np.ndarray, np.ndarray], names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Database indices of ``names`` and a mask of those not in ``imlist`` (binary search, no Python loop)."""
    sorted_names, order = lookup
    query = np.asarray(list(names), dtype=str)
    if not len(sorted_names):
        return np.zeros(len(query), np.int64), np.ones(len(query), bool)
    at = np.minimum(np.searchsorted(sorted_names, query), len(sorted_names) - 1)
    return order[at], sorted_names[at] != query


def _first_repeat(idx: np.ndarray) -> int | None:
    """Position of the first entry that repeats an earlier one, or None."""
    _, first = np.unique(idx, return_index=True)
    if len(first) == len(idx):
        return None
    seen_first = np.zeros(len(idx), bool)
    seen_first[first] = True
    return int(np.flatnonzero(~seen_first)[0])


def evaluate(gt: GroundTruth, ranks: Mapping[str, Sequence[str]],
             kappas: Sequence[int] = KAPPAS) -> dict[str, dict[str, float]]:
    """mAP and mP@k per protocol (fractions) of ``{query name: database names in rank order}``.

    Every query of ``gt`` must be there (a missing one raises DataError naming it, as the benchmark scores
    every query) and only those; rankings may be top-N, see :func:`evaluate_indices`.
    """
    queries = set(gt.qimlist)
    extra = next((q for q in ranks if q not in queries), None)
    if extra is not None:
        raise DataError(f"query {extra!r} is not a query of {gt.path.name}")
    absent = [q for q in gt.qimlist if q not in ranks]
    if absent:
        raise DataError(f"query {absent[0]!r} of {gt.path.name} has no ranking ({len(absent)} of "
                        f"{len(gt.qimlist)} missing); every query is scored")
    lookup = _lookup(gt)
    rows = []
    for query in gt.qimlist:
        names = list(ranks[query])
        idx, unknown = _to_indices(lookup, names)
        if unknown.any():
            raise DataError(f"query {query}: {names[int(np.flatnonzero(unknown)[0])]!r} "
                            f"is not a database image of {gt.path.name}")
        repeat = _first_repeat(idx)
        if repeat is not None:
            raise DataError(f"query {query}: {names[repeat]!r} is ranked twice")
        rows.append(idx)
    return _score_rows(gt, rows, kappas)


def read_ranks(path: str | os.PathLike, gt: GroundTruth) -> dict[str, list[str]]:
    """Read ``ranks.csv`` (``id,images``: query name, space-separated database names in rank order).

    Raises DataError naming file, line, name and why for: a wrong header, more fields than it, images
    without a query, a query not in ``gt`` or listed twice, an empty name (two spaces), a name not in
    ``imlist`` or ranked twice; then for the first query of ``gt`` without a row (the benchmark scores
    every query, so a missing one is a bug, not a zero). One trailing space is tolerated; rows may be top-N.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnicodeDecodeError, csv.Error, IsADirectoryError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None
    if not rows or [h.strip() for h in rows[0][:2]] != HEADER:
        raise DataError(f"{path}: header must be id,images, found {','.join(rows[0]) if rows else 'nothing'}")
    queries, lookup, out, lines = set(gt.qimlist), _lookup(gt), {}, {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or row == [""]:
            continue
        where = f"{path}, line {line}"
        if len(row) > 2:
            raise DataError(f"{where}: expected 2 fields, found {len(row)} (names are separated by spaces)")
        query, text = row[0], (row[1] if len(row) > 1 else "").removesuffix(" ")
        if not query:
            raise DataError(f"{where}: images {text[:40]!r} without a query id")
        if query in lines:
            raise DataError(f"{where}: query {query} is repeated (first on line {lines[query]})")
        if query not in queries:
            raise DataError(f"{where}: query {query!r} is not a query of {gt.path.name}")
        lines[query] = line
        names = text.split(" ") if text else []
        if "" in names:
            raise DataError(f"{where} (query {query}): empty name at position {names.index('') + 1} (two spaces?)")
        idx, unknown = _to_indices(lookup, names)
        if unknown.any():
            at = int(np.flatnonzero(unknown)[0])
            raise DataError(f"{where} (query {query}): {names[at]!r} at position {at + 1} is not a database "
                            f"image of {gt.path.name}")
        repeat = _first_repeat(idx)
        if repeat is not None:
            raise DataError(f"{where} (query {query}): {names[repeat]!r} is ranked twice (positions "
                            f"{names.index(names[repeat]) + 1} and {repeat + 1})")
        out[query] = names
    absent = [q for q in gt.qimlist if q not in out]
    if absent:
        raise DataError(f"{path}: query {absent[0]!r} of {gt.path.name} has no row ({len(absent)} of "
                        f"{len(gt.qimlist)} missing); every query is scored")
    return out


def format_report(scores: Mapping[str, Mapping[str, float]], title: str = "") -> str:
    """A fixed-width table in percent, as the papers report it: mAP and mP@k per protocol."""
    columns = list(next(iter(scores.values())).keys()) if scores else []
    heads = ["mAP" if c == "map" else c.replace("mp@", "mP@") for c in columns]
    lines = [title] if title else []
    lines.append(f"{'protocol':<9}" + "".join(f"{h:>8}" for h in heads))
    for protocol, row in scores.items():
        cells = ("n/a" if math.isnan(row[c]) else f"{100 * row[c]:.2f}" for c in columns)
        lines.append(f"{protocol:<9}" + "".join(f"{cell:>8}" for cell in cells))
    return "\n".join(lines)
