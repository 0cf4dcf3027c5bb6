"""Competition metrics with the exact semantics of the GLDv2 reference code, vectorised.

Recognition: GAP (micro-AP) over predictions sorted by score descending, ties by id then label ascending;
top-1 accuracy over landmark images. Retrieval: mAP@100 (duplicates skipped, rank still advances, divided
by min(|gt|, 100), averaged over all solution queries), mean precision@k, mean/median rank of first hit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

Labels = Mapping[str, Sequence[int]]


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


def _correct_flags(ids: np.ndarray, labels: np.ndarray, solution: Labels) -> tuple[np.ndarray, np.ndarray]:
    """Per prediction: is the label right, and does the image have any ground truth at all."""
    correct = np.zeros(len(ids), dtype=bool)
    has_gt = np.zeros(len(ids), dtype=bool)
    for i, (image_id, label) in enumerate(zip(ids.tolist(), labels.tolist())):
        if image_id not in solution:
            raise ValueError(f"prediction for {image_id}, which is not in the solution")
        gt = solution[image_id]
        has_gt[i] = len(gt) > 0
        correct[i] = label in gt
    return correct, has_gt


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
    ids = predictions["id"].to_numpy(dtype=str)
    labels = predictions["landmark_id"].to_numpy(dtype=np.int64)
    scores = predictions["score"].to_numpy(dtype=np.float64)
    if np.isnan(scores).any():
        raise ValueError("NaN score in predictions")
    correct, has_gt = _correct_flags(ids, labels, solution)
    order = np.lexsort((labels, ids, -scores))
    correct = correct[order]
    if ignore_non_landmarks:
        correct = correct[has_gt[order]]
    ranks = np.arange(1, len(correct) + 1, dtype=np.float64)
    hits = np.cumsum(correct)
    return float(np.sum((hits / ranks)[correct]) / num_positives)


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
    """``count`` space-separated 16-hex-char ids as uint64, without Python objects; None if any is not hex."""
    if not joined.isascii() or len(joined) + 1 != 17 * count:
        return None
    nibbles = np.frombuffer((joined + " ").encode("ascii").translate(_HEX_TABLE), np.uint8).reshape(count, 17)
    if (nibbles[:, 16] != 16).any() or (nibbles[:, :16] > 15).any():
        return None
    packed = (nibbles[:, 0:16:2] << 4) | nibbles[:, 1:16:2]
    return np.ascontiguousarray(packed).view(">u8").ravel().astype(np.uint64)


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


Predictions = Mapping[str, str | Sequence[str]] | EncodedRetrieval


def _retrieval_matrices(
    predictions: Predictions, solution: Mapping[str, Sequence[str]], k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(relevant and first occurrence, relevant, gt sizes), the matrices ``(Q, k)`` in solution order.

    Ids are encoded against the ground-truth vocabulary only: an id in no ground truth can never be
    relevant, so its duplicates need no tracking.
    """
    queries = list(solution.keys())
    qpos = {q: i for i, q in enumerate(queries)}
    unknown = next((q for q in (predictions.queries if isinstance(predictions, EncodedRetrieval) else predictions)
                    if q not in qpos), None)
    if unknown is not None:
        raise ValueError(f"prediction for {unknown}, which is not in the solution")
    if isinstance(predictions, EncodedRetrieval):
        rows = [qpos[q] for q in predictions.queries]
        counts, joined, as_int = predictions.counts, "", predictions.tokens
    else:
        rows, texts = [], []
        for q, pred in predictions.items():
            text = _strip_one_trailing_space(pred if isinstance(pred, str) else " ".join(pred))
            if text:
                rows.append(qpos[q])
                texts.append(text)
        counts = np.fromiter((t.count(" ") + 1 for t in texts), dtype=np.int64, count=len(texts))
        joined, as_int = " ".join(texts), None
    num_q = len(queries)
    gt_sizes = np.fromiter((len(solution[q]) for q in queries), dtype=np.int64, count=num_q)
    gt_codes, vocabulary = _encode(" ".join(g for q in queries for g in solution[q]), int(gt_sizes.sum()))
    pred_codes, _ = _encode(joined, int(counts.sum()), vocabulary, as_int)

    pred_mat = np.full((num_q, k), -1, dtype=np.int64)
    if len(pred_codes):
        row_of_token = np.repeat(np.asarray(rows, dtype=np.int64), counts)
        pos = np.arange(len(pred_codes), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        keep = pos < k
        pred_mat[row_of_token[keep], pos[keep]] = pred_codes[keep]

    in_gt = np.zeros((num_q, k), dtype=bool)
    rel = np.zeros((num_q, k), dtype=bool)
    if len(gt_codes):
        width = int(gt_codes.max()) + 1
        gt_keys = np.sort(np.repeat(np.arange(num_q, dtype=np.int64), gt_sizes) * width + gt_codes)
        cand = np.flatnonzero(pred_mat >= 0)  # row-major: ranks increase within a row
        keys = cand // k * width + pred_mat.ravel()[cand]
        found = gt_keys[np.minimum(np.searchsorted(gt_keys, keys), len(gt_keys) - 1)] == keys
        cand, keys = cand[found], keys[found]
        in_gt.ravel()[cand] = True
        _, first = np.unique(keys, return_index=True)  # stable: the first occurrence of each (query, id)
        rel.ravel()[cand[first]] = True
    return rel, in_gt, gt_sizes


def retrieval_per_query(
    predictions: Predictions, solution: Mapping[str, Sequence[str]], max_predictions: int = 100
) -> dict[str, np.ndarray]:
    """Per solution query (in solution order): AP@k, precision at ranks 1..k and rank of the first hit.

    ``predictions`` maps a query id to its ranked index ids (a list or the raw space-separated string), or is
    an :class:`EncodedRetrieval` (a checked submission file, see ``submission.read_retrieval_encoded``).
    A query without predictions scores 0; the first-hit rank is k+1 when nothing relevant is retrieved.
    """
    if not solution:
        raise ValueError("empty retrieval solution")
    rel, any_hit, gt_sizes = _retrieval_matrices(predictions, solution, max_predictions)
    ranks = np.arange(1, max_predictions + 1, dtype=np.float64)
    precision = np.cumsum(rel, axis=1) / ranks
    ap = np.where(rel, precision, 0.0).sum(axis=1) / np.maximum(np.minimum(gt_sizes, max_predictions), 1)
    first = np.where(any_hit.any(axis=1), any_hit.argmax(axis=1) + 1, max_predictions + 1).astype(np.float64)
    return {"ap": ap, "precision": precision, "first_hit": first}


def summarise_retrieval(per_query: dict[str, np.ndarray], rows: np.ndarray | None = None,
                        precision_at: int = 10) -> dict[str, object]:
    """mAP@k, mean precision@1..precision_at, mean/median first-hit rank over ``rows`` (default all)."""
    sel = slice(None) if rows is None else rows
    ap, precision, first = per_query["ap"][sel], per_query["precision"][sel], per_query["first_hit"][sel]
    k = per_query["precision"].shape[1]
    return {
        f"mAP@{k}": float(ap.mean()),
        "precision@k": [float(x) for x in precision[:, :precision_at].mean(axis=0)],
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
