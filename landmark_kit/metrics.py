"""Competition metrics with the exact semantics of the GLDv2 reference code, vectorised.

Recognition: GAP (micro-AP) over predictions sorted by score descending, ties by id then label ascending;
top-1 accuracy over landmark images. Retrieval: mAP@100 (duplicates skipped, rank still advances, divided
by min(|gt|, 100), averaged over all solution queries), mean precision@k, mean/median rank of first hit.
"""

from __future__ import annotations

import operator
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from typing import Callable, Mapping, Sequence, TypeVar

import numpy as np
import pandas as pd

Labels = Mapping[str, Sequence[int]]
T = TypeVar("T")


@dataclass(frozen=True)
class EncodedRetrieval:
    """Parsed retrieval predictions: per row its query id and number of ids; every id (16 hex chars) as uint64."""

    queries: list[str]
    counts: np.ndarray
    tokens: np.ndarray

    def select(self, keep: np.ndarray) -> EncodedRetrieval:
        """The rows where ``keep`` is True, with their ids."""
        if keep.all():
            return self
        return EncodedRetrieval([q for q, k in zip(self.queries, keep) if k], self.counts[keep],
                                self.tokens[np.repeat(keep, self.counts)])


def _correct_flags(ids: np.ndarray, labels: np.ndarray, solution: Labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per prediction: is the label right, does the image have any ground truth at all, and its position in
    ``solution``. Vectorised: images found through a hash index, each (image, label) pair one int64 key."""
    keys = list(solution)
    position = pd.Index(np.asarray(keys, dtype=object)).get_indexer(np.asarray(ids, dtype=object))
    if (position < 0).any():
        raise ValueError(f"prediction for {ids[np.argmax(position < 0)]}, which is not in the solution")
    values = list(solution.values())
    sizes = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    has_gt = sizes[position] > 0
    gt_labels = np.array(list(chain.from_iterable(values)))
    if not len(gt_labels):
        return np.zeros(len(position), dtype=bool), has_gt, position
    if gt_labels.dtype.kind != "i":  # not all int64 labels: compare as Python does, one by one
        gt = [values[i] for i in position.tolist()]
        return np.fromiter(map(operator.contains, gt, labels.tolist()), dtype=bool, count=len(gt)), has_gt, position
    codes, _ = pd.factorize(np.concatenate([gt_labels, labels]))  # labels numbered jointly: keys stay small
    width = int(codes.max()) + 1
    gt_keys = np.repeat(np.arange(len(values), dtype=np.int64), sizes) * width + codes[:len(gt_labels)]
    return np.isin(position * width + codes[len(gt_labels):], gt_keys), has_gt, position


def _gap_in_rank_order(correct: np.ndarray, num_positives: int) -> float:
    """GAP of predictions already in rank order (``correct`` per prediction)."""
    ranks = np.arange(1, len(correct) + 1, dtype=np.float64)
    hits = np.cumsum(correct)
    return float(np.sum((hits / ranks)[correct]) / num_positives)


def global_average_precision(
    predictions: pd.DataFrame, solution: Labels, ignore_non_landmarks: bool = False
) -> float:
    """GAP of one-label-per-image predictions (columns ``id, landmark_id, score``) against ``solution``.

    Images without a prediction count as wrong; predictions on non-landmark images (empty ground truth)
    take ranks and hurt, unless ``ignore_non_landmarks``.
    """
    num_positives = sum(1 for v in solution.values() if len(v) > 0)
    if num_positives == 0 or len(predictions) == 0:
        return 0.0
    ids, labels, scores = _prediction_columns(predictions)
    correct, has_gt, _ = _correct_flags(ids, labels, solution)
    order = np.lexsort((labels, ids, -scores))
    correct = correct[order]
    if ignore_non_landmarks:
        correct = correct[has_gt[order]]
    return _gap_in_rank_order(correct, num_positives)


def _prediction_columns(predictions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = predictions["id"].to_numpy(dtype=str)
    labels = predictions["landmark_id"].to_numpy(dtype=np.int64)
    scores = predictions["score"].to_numpy(dtype=np.float64)
    if np.isnan(scores).any():
        raise ValueError("NaN score in predictions")
    return ids, labels, scores


def recognition_parts(predictions: pd.DataFrame, solution: Labels,
                      parts: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Images, landmark images, GAP, GAP ignoring non-landmark images and top-1 of each part of ``solution``
    (a boolean mask in its order), each part's predictions scored against it alone: the figures
    :func:`global_average_precision` and :func:`top1_accuracy` give for that part. The predictions (one per
    image) are matched and ranked once; a part's predictions keep their rank order."""
    landmark = np.fromiter(map(len, solution.values()), dtype=np.int64, count=len(solution)) > 0
    if len(predictions):
        ids, labels, scores = _prediction_columns(predictions)
        correct, has_gt, position = _correct_flags(ids, labels, solution)
        order = np.lexsort((labels, ids, -scores))
        correct, has_gt, position = correct[order], has_gt[order], position[order]
    else:
        correct = has_gt = np.zeros(0, dtype=bool)
        position = np.zeros(0, dtype=np.int64)
    out = {}
    for name, rows in parts.items():
        positives = int(np.count_nonzero(landmark & rows))
        mine = rows[position]
        right, wanted = correct[mine], has_gt[mine]
        scored = positives > 0 and len(right) > 0
        out[name] = {
            "images": int(np.count_nonzero(rows)),
            "landmark_images": positives,
            "GAP": _gap_in_rank_order(right, positives) if scored else 0.0,
            "GAP_landmarks_only": _gap_in_rank_order(right[wanted], positives) if scored else 0.0,
            "top1": int(np.count_nonzero(right)) / positives if positives else 0.0,
        }
    return out


def top1_accuracy(predictions: pd.DataFrame, solution: Labels) -> float:
    """Fraction of landmark images (non-empty ground truth) whose predicted label is right."""
    pred = dict(zip(predictions["id"].tolist(), predictions["landmark_id"].tolist()))
    landmark_ids = [k for k, v in solution.items() if len(v) > 0]
    if not landmark_ids:
        return 0.0
    return sum(1 for k in landmark_ids if k in pred and pred[k] in solution[k]) / len(landmark_ids)


def _strip_one_trailing_space(text: str) -> str:
    return text[:-1] if text.endswith(" ") else text


_HEX_TABLE = bytes(
    [b"0123456789abcdef".index(c) if c in b"0123456789abcdef" else (16 if c == ord(" ") else 255) for c in range(256)]
)


def _hex_ids(joined: str, count: int) -> np.ndarray | None:
    """``count`` space-separated 16-hex-char ids as uint64, without Python objects; None if any is not hex.
    The text is encoded and translated once (no copy with a trailing space): 12M ids in about a second."""
    if not joined.isascii() or len(joined) + 1 != 17 * count:
        return None
    nibbles = np.frombuffer(joined.encode("ascii").translate(_HEX_TABLE), np.uint8)
    digits = np.lib.stride_tricks.as_strided(nibbles, shape=(count, 16), strides=(17, 1), writeable=False)
    spaces = nibbles[16::17]
    if (len(spaces) and (spaces.min() != 16 or spaces.max() != 16)) or digits.max() > 15:
        return None
    return pack_hex(digits)


def pack_hex(digits: np.ndarray) -> np.ndarray:
    """Rows of 16 hex digit values (0-15, ``uint8``, most significant first) as one uint64 each."""
    packed = np.empty((len(digits), 8), np.uint8)  # little-endian bytes of each id: its last hex pair first

    def pack(lo: int, hi: int) -> None:
        np.left_shift(digits[lo:hi, 14::-2], 4, out=packed[lo:hi])
        packed[lo:hi] |= digits[lo:hi, 15::-2]

    _in_two(pack, len(digits))
    return packed.view("<u8").ravel().astype(np.uint64, copy=False)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _in_two(work: Callable[[int, int], T], n: int, at_least: int = 1 << 20) -> list[T]:
    """``work(lo, hi)`` over ``range(n)``: in two halves, the first in a second thread, when ``n`` is large
    and two cores are usable (numpy releases the GIL in the loops it runs; no result depends on the split)."""
    if n < at_least or _cores() < 2:
        return [work(0, n)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(work, 0, n // 2)
        second = work(n // 2, n)
        return [first.result(), second]


def _encode(joined: str, count: int, vocabulary: pd.Index | None = None,
            as_int: np.ndarray | None = None) -> tuple[np.ndarray, pd.Index]:
    """Codes of ``count`` space-separated ids in ``vocabulary`` (-1 if absent); builds it when None.

    Kaggle ids (16 hex chars) are hashed as uint64 without creating Python strings (``as_int``: already done);
    anything else goes through pandas' string hashing.
    """
    if as_int is None:
        as_int = _hex_ids(joined, count) if count else np.zeros(0, np.uint64)
    if vocabulary is None:
        vocabulary = pd.Index(pd.unique(as_int) if as_int is not None else pd.unique(np.array(joined.split(" "), dtype=object)))
    if count == 0:
        return np.zeros(0, np.int64), vocabulary
    if as_int is not None and vocabulary.dtype == np.uint64:
        return vocabulary.get_indexer(as_int).astype(np.int64), vocabulary
    if vocabulary.dtype == np.uint64:  # these tokens are not all hex ids: compare as text
        vocabulary = pd.Index(np.char.mod("%016x", vocabulary.to_numpy()).astype(object))
    tokens = joined.split(" ") if joined else np.char.mod("%016x", as_int)
    return vocabulary.get_indexer(np.array(tokens, dtype=object)).astype(np.int64), vocabulary


ABSENT = np.uint64(2**64 - 1)  # the code of a predicted id in no ground truth (codes are < 2**32)


def _row_keys(rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """One uint64 a (row, id): the row in the high 32 bits, the id's low 32 bits below it."""
    return (rows.astype(np.uint64) << np.uint64(32)) | (ids & np.uint64(0xFFFFFFFF))


FILTER_BITS = 25  # a 32 MB table of hashed (row, id) pairs of the ground truth: ~5% of misses reach the search


def _mix(rows: np.ndarray, counts: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """A FILTER_BITS-bit hash of each (row, id), ``counts[i]`` ids per row ``rows[i]`` (multiply-xor-shift;
    uint64 products wrap). The rows are multiplied before they are repeated: 12M ids cost four passes."""
    mixed = np.repeat(rows.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15), counts)
    mixed ^= ids
    mixed *= np.uint64(0xBF58476D1CE4E5B9)
    mixed >>= np.uint64(64 - FILTER_BITS)
    return mixed.view(np.int64)


def _row_members(gt_sizes: np.ndarray, gt_ids: np.ndarray, rows: np.ndarray, counts: np.ndarray,
                 ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The positions in ``ids`` (``counts[i]`` ids of row ``rows[i]`` per line i) whose (row, id) occurs in the
    ground truth (``gt_sizes[r]`` ids of row r, rows in order), and the line of each. A table of hashed
    ground-truth pairs drops most pairs with one lookup; the rest take a sorted search of packed keys, each
    match checked on the full id. Two ids of one row with the same low 32 bits (never seen in Kaggle data)
    are resolved by comparing every id of that row instead."""
    none = np.zeros(0, dtype=np.int64)
    if not len(gt_ids) or not len(ids):
        return none, none
    every_row = np.arange(len(gt_sizes), dtype=np.int64)
    table = np.zeros(1 << FILTER_BITS, dtype=bool)
    table[_mix(every_row, gt_sizes, gt_ids)] = True
    ends = np.cumsum(counts)

    def lookup(lo: int, hi: int) -> np.ndarray:  # lines lo..hi
        start = int(ends[lo - 1]) if lo else 0
        return np.flatnonzero(table[_mix(rows[lo:hi], counts[lo:hi], ids[start:ends[hi - 1] if hi else 0])]) + start

    candidates = np.concatenate(_in_two(lookup, len(rows), at_least=10_000))
    line = np.searchsorted(ends, candidates, side="right")
    rows_c, ids_c = rows[line], ids[candidates]
    gt_rows = np.repeat(every_row, gt_sizes)
    keys = _row_keys(gt_rows, gt_ids)
    order = np.argsort(keys, kind="stable")
    keys, sorted_ids = keys[order], gt_ids[order]
    wanted = _row_keys(rows_c, ids_c)
    position = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    found = (keys[position] == wanted) & (sorted_ids[position] == ids_c)
    clash = (keys[1:] == keys[:-1]) & (sorted_ids[1:] != sorted_ids[:-1])
    if clash.any():  # rare: decide the clashing keys' rows exactly (an id the filter dropped is in no row)
        doubtful = np.isin(rows_c, gt_rows[order][1:][clash])
        for r in np.unique(rows_c[doubtful]):
            at = doubtful & (rows_c == r)
            found[at] = np.isin(ids_c[at], gt_ids[gt_rows == r])
    return candidates[found], line[found]


Predictions = Mapping[str, str | Sequence[str]] | EncodedRetrieval
Truth = Mapping[str, Sequence[str]] | EncodedRetrieval


def _retrieval_matrices(
    predictions: Predictions, solution: Truth, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(relevant and first occurrence, relevant, gt sizes), the matrices ``(Q, k)`` in solution order.

    Ids are encoded against the ground-truth vocabulary only: an id in no ground truth can never be
    relevant, so its duplicates need no tracking.
    """
    encoded_truth = isinstance(solution, EncodedRetrieval)
    queries = solution.queries if encoded_truth else list(solution.keys())
    if isinstance(predictions, EncodedRetrieval):  # the rows found by pandas' string hashing, in C
        rows = pd.Index(np.asarray(queries, dtype=object)).get_indexer(np.asarray(predictions.queries, dtype=object))
        if (rows < 0).any():
            raise ValueError(f"prediction for {predictions.queries[int(np.argmax(rows < 0))]}, which is not in "
                             "the solution")
        counts, joined, as_int = predictions.counts, "", predictions.tokens
    else:
        qpos = {q: i for i, q in enumerate(queries)}
        unknown = next((q for q in predictions if q not in qpos), None)
        if unknown is not None:
            raise ValueError(f"prediction for {unknown}, which is not in the solution")
        rows, texts = [], []
        for q, pred in predictions.items():
            text = _strip_one_trailing_space(pred if isinstance(pred, str) else " ".join(pred))
            if text:
                rows.append(qpos[q])
                texts.append(text)
        counts = np.fromiter((t.count(" ") + 1 for t in texts), dtype=np.int64, count=len(texts))
        joined, as_int = " ".join(texts), None
    num_q = len(queries)
    if encoded_truth:
        gt_sizes, gt_int, gt_joined = solution.counts.astype(np.int64), solution.tokens, None
    else:
        values = list(solution.values())
        gt_sizes = np.fromiter(map(len, values), dtype=np.int64, count=num_q)
        gt_joined = " ".join(chain.from_iterable(values))
    gt_count, count = int(gt_sizes.sum()), int(counts.sum())
    if gt_joined is not None:
        gt_int = _hex_ids(gt_joined, gt_count) if gt_count else np.zeros(0, np.uint64)
    if as_int is None:
        as_int = _hex_ids(joined, count) if count else np.zeros(0, np.uint64)
    if gt_int is None or as_int is None:  # some id is not a Kaggle id: codes in the ground-truth vocabulary
        if gt_joined is None:
            gt_joined = " ".join(np.char.mod("%016x", gt_int).tolist())
        gt_codes, vocabulary = _encode(gt_joined, gt_count)
        pred_codes, _ = _encode(joined, count, vocabulary, as_int)
        gt_int, as_int = gt_codes.astype(np.uint64), pred_codes.astype(np.uint64)
        as_int[pred_codes < 0] = ABSENT
    rel = np.zeros((num_q, k), dtype=bool)
    in_gt = np.zeros((num_q, k), dtype=bool)
    if count and counts.max() > k:  # ids beyond rank k never count
        kept = np.arange(count) - np.repeat(np.cumsum(counts) - counts, counts) < k
        counts, as_int = np.minimum(counts, k), as_int[kept]
    rows = np.asarray(rows, dtype=np.int64)
    hits, line = _row_members(gt_sizes, gt_int, rows, counts, as_int)
    hit_rows = rows[line]
    flat = hit_rows * k + hits - (np.cumsum(counts) - counts)[line]  # each hit's rank in its row
    in_gt.ravel()[flat] = True
    ids = as_int[hits]
    order = np.lexsort((flat, ids, hit_rows))  # each (query, id) together, its first rank first
    flat, ids = flat[order], ids[order]
    first = np.ones(len(flat), dtype=bool)
    first[1:] = (flat[1:] // k != flat[:-1] // k) | (ids[1:] != ids[:-1])
    rel.ravel()[flat[first]] = True
    return rel, in_gt, gt_sizes


def _sum_at_hits(rel: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Per row, the sum of ``precision`` where ``rel``: bit for bit ``np.where(rel, precision, 0).sum(axis=1)``
    without the dense pass. A row with one or two hits sums them in any order alike; a row with more is summed
    densely, as numpy's pairwise row sum associates them."""
    rows, cols = np.nonzero(rel)
    total = np.bincount(rows, weights=precision[rows, cols], minlength=len(rel))
    many = np.flatnonzero(np.bincount(rows, minlength=len(rel)) > 2)
    if len(many):
        total[many] = np.where(rel[many], precision[many], 0.0).sum(axis=1)
    return total


def retrieval_per_query(
    predictions: Predictions, solution: Truth, max_predictions: int = 100
) -> dict[str, np.ndarray]:
    """Per solution query (in solution order): AP@k, precision at ranks 1..k and rank of the first hit.

    ``predictions`` maps a query id to its ranked index ids (a list or the raw space-separated string), or is
    an :class:`EncodedRetrieval` (a checked submission file, see ``submission.read_retrieval_encoded``); so
    may ``solution`` be (its rows the queries, in order, their ground truth as uint64).
    A query without predictions scores 0; the first-hit rank is k+1 when nothing relevant is retrieved.
    """
    if not (solution.queries if isinstance(solution, EncodedRetrieval) else solution):
        raise ValueError("empty retrieval solution")
    rel, any_hit, gt_sizes = _retrieval_matrices(predictions, solution, max_predictions)
    ranks = np.arange(1, max_predictions + 1, dtype=np.float64)
    # hits so far at each rank: counted in int8 (8x less memory than the default int64) while k allows it
    precision = np.cumsum(rel, axis=1, dtype=np.int8 if max_predictions < 128 else np.int32) / ranks
    ap = _sum_at_hits(rel, precision) / np.maximum(np.minimum(gt_sizes, max_predictions), 1)
    first = np.where(any_hit.any(axis=1), any_hit.argmax(axis=1) + 1, max_predictions + 1).astype(np.float64)
    return {"ap": ap, "precision": precision, "first_hit": first}


def summarise_retrieval(per_query: dict[str, np.ndarray], rows: np.ndarray | None = None,
                        precision_at: int = 10) -> dict[str, object]:
    """mAP@k, mean precision@1..precision_at, mean/median first-hit rank over ``rows`` (default all)."""
    sel = slice(None) if rows is None else rows
    ap, first = per_query["ap"][sel], per_query["first_hit"][sel]
    precision = per_query["precision"][:, :precision_at][sel]  # only the columns reported are copied
    k = per_query["precision"].shape[1]
    return {
        f"mAP@{k}": float(ap.mean()),
        "precision@k": [float(x) for x in precision.mean(axis=0)],
        "mean_first_hit": float(first.mean()),
        "median_first_hit": float(np.median(first)),
    }


def retrieval_metrics(
    predictions: Mapping[str, str | Sequence[str]],
    solution: Mapping[str, Sequence[str]],
    max_predictions: int = 100,
    precision_at: int = 10,
) -> dict[str, object]:
    """mAP@k (GLDv2 semantics), mean precision@1..precision_at and mean/median rank of the first hit."""
    return summarise_retrieval(retrieval_per_query(predictions, solution, max_predictions), None, precision_at)
