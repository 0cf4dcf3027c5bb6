"""Competition metrics with the exact semantics of the GLDv2 reference code, vectorised.

Recognition: GAP (micro-AP) over predictions sorted by score descending, ties by id then label ascending;
top-1 accuracy over landmark images. Retrieval: mAP@100 (duplicates skipped, rank still advances, divided
by min(|gt|, 100), averaged over all solution queries), mean precision@k, mean/median rank of first hit.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

Labels = Mapping[str, Sequence[int]]


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


def _retrieval_matrices(
    predictions: Mapping[str, str | Sequence[str]], solution: Mapping[str, Sequence[str]], k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Factorise ids once; return (first-occurrence hit matrix, any-hit matrix, gt sizes), shapes (Q, k)."""
    queries = list(solution.keys())
    qpos = {q: i for i, q in enumerate(queries)}
    rows, texts = [], []
    for q, pred in predictions.items():
        if q not in qpos:
            raise ValueError(f"prediction for {q}, which is not in the solution")
        text = pred if isinstance(pred, str) else " ".join(pred)
        text = _strip_one_trailing_space(text)
        if text:
            rows.append(qpos[q])
            texts.append(text)
    counts = np.fromiter((t.count(" ") + 1 for t in texts), dtype=np.int64, count=len(texts))
    tokens = " ".join(texts).split(" ") if texts else []
    gt_sizes = np.fromiter((len(solution[q]) for q in queries), dtype=np.int64, count=len(queries))
    gt_tokens = [g for q in queries for g in solution[q]]
    codes, _ = pd.factorize(pd.Index(np.asarray(tokens + gt_tokens, dtype=object)))
    pred_codes, gt_codes = codes[: len(tokens)], codes[len(tokens) :]

    num_q = len(queries)
    pred_mat = np.full((num_q, k), -1, dtype=np.int64)
    if len(tokens):
        row_of_token = np.repeat(np.asarray(rows, dtype=np.int64), counts)
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        pos = np.arange(len(tokens), dtype=np.int64) - starts
        keep = pos < k
        pred_mat[row_of_token[keep], pos[keep]] = pred_codes[keep]

    # Duplicates inside a row: stable sort, neighbours equal -> later occurrence is a duplicate.
    order = np.argsort(pred_mat, axis=1, kind="stable")
    sorted_codes = np.take_along_axis(pred_mat, order, axis=1)
    dup_sorted = np.zeros_like(pred_mat, dtype=bool)
    dup_sorted[:, 1:] = (sorted_codes[:, 1:] == sorted_codes[:, :-1]) & (sorted_codes[:, 1:] >= 0)
    duplicate = np.zeros_like(dup_sorted)
    np.put_along_axis(duplicate, order, dup_sorted, axis=1)

    # Membership of (query, code) in the ground truth via one sorted key array.
    num_codes = int(codes.max()) + 1 if len(codes) else 1
    gt_keys = np.sort(np.repeat(np.arange(num_q, dtype=np.int64), gt_sizes) * num_codes + gt_codes)
    keys = np.arange(num_q, dtype=np.int64)[:, None] * num_codes + pred_mat
    if len(gt_keys):
        found = np.minimum(np.searchsorted(gt_keys, keys), len(gt_keys) - 1)
        in_gt = (pred_mat >= 0) & (gt_keys[found] == keys)
    else:
        in_gt = np.zeros_like(pred_mat, dtype=bool)
    return in_gt & ~duplicate, in_gt, gt_sizes


def retrieval_per_query(
    predictions: Mapping[str, str | Sequence[str]], solution: Mapping[str, Sequence[str]], max_predictions: int = 100
) -> dict[str, np.ndarray]:
    """Per solution query (in solution order): AP@k, precision at ranks 1..k and rank of the first hit.

    ``predictions`` maps a query id to its ranked index ids (a list or the raw space-separated string).
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
