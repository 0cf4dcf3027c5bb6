"""Retrieval lists from nearest index neighbours."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def neighbour_lists(neighbours, index_ids: Sequence[str], k: int = 100) -> list[list[str]]:
    """The first ``k`` index ids of each query's neighbour row (an array or a list of rows), dropping the
    -1 padding."""
    ids = np.asarray(index_ids, dtype=object)
    return [ids[row[row >= 0][:k]].tolist() for row in neighbours]


def per_entry(table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``table``'s value for each entry of ``rows`` (index positions, -1 read as 0): a table over the index
    images ``(N,)``, or one per query ``(Q, N)`` (every-photo tuning, where an image's label depends on which
    photo is the query)."""
    safe = np.maximum(rows, 0)
    return table[safe] if table.ndim == 1 else np.take_along_axis(table, safe, axis=1)


def discriminative_rerank(
    neighbours: np.ndarray, query_labels: np.ndarray, index_labels: np.ndarray, index_confidence: np.ndarray,
    k: int = 100, append: bool = True, own: np.ndarray | None = None,
) -> list[np.ndarray]:
    """smlyaka 2019 retrieval post-processing, on index positions: in each query's neighbour row, the index
    images whose predicted label equals the query's move ahead of the others (order kept inside both
    groups); with ``append``, index images of that label not yet retrieved follow them, most confident
    first, and the list is cut at ``k``. Queries without a label (-1) keep their row. ``own``: each query's own
    index row (-1 none), never appended; ``index_labels`` / ``index_confidence`` may be per-query tables
    ``(Q, N)`` (every-photo-a-query tuning, :func:`per_entry`)."""
    by_label: dict[int, np.ndarray] = {}
    if index_labels.ndim == 1:
        order = np.argsort(-index_confidence, kind="stable")
        for label in np.unique(query_labels[query_labels >= 0]):
            by_label[int(label)] = order[index_labels[order] == label]
    out = []
    own = np.full(len(query_labels), -1) if own is None else own
    for q, (row, label, mine) in enumerate(zip(neighbours, query_labels, own)):
        row = row[row >= 0]
        if label < 0:
            out.append(row[:k])
            continue
        labels = index_labels if index_labels.ndim == 1 else index_labels[q]
        same = labels[row] == label
        parts = [row[same]]
        if append:
            if index_labels.ndim == 1:
                extra = by_label[int(label)]
            else:
                extra = np.flatnonzero(labels == label)
                extra = extra[np.argsort(-index_confidence[q, extra], kind="stable")]
            parts.append(extra[~np.isin(extra, row) & (extra != mine)])
        parts.append(row[~same])
        out.append(np.concatenate(parts)[:k])
    return out


def _weighted_means(base: np.ndarray, database: np.ndarray, scores: np.ndarray, rows: np.ndarray, alpha: float,
                    chunk: int = 8192) -> np.ndarray:
    """L2-normalised ``base + sum_j max(s_j, 0)^alpha x_j`` over each row's neighbours, chunked for memory."""
    out = np.empty_like(base, dtype=np.float32)
    for start in range(0, len(base), chunk):
        idx = rows[start: start + chunk]
        weights = np.where(idx >= 0, np.maximum(scores[start: start + chunk], 0.0) ** alpha, 0.0).astype(np.float32)
        summed = base[start: start + chunk] + np.einsum("nk,nkd->nd", weights, database[np.maximum(idx, 0)])
        out[start: start + chunk] = summed / np.maximum(np.linalg.norm(summed, axis=1, keepdims=True), 1e-12)
    return out


def database_augment(database: np.ndarray, k: int, alpha: float = 3.0) -> np.ndarray:
    """Database-side augmentation (alpha-DBA, Radenovic et al. 2018): every database descriptor replaced by
    itself plus its ``k`` nearest other database descriptors weighted by similarity^alpha, re-normalised."""
    from .search import knn

    database = np.asarray(database, np.float32)
    scores, rows = knn(database, database, min(k + 1, len(database)))
    self_hit = rows == np.arange(len(database))[:, None]  # the row itself is already the base term
    return _weighted_means(database, database, np.where(self_hit, 0.0, scores), np.where(self_hit, -1, rows), alpha)


def query_expand(queries: np.ndarray, database: np.ndarray, scores: np.ndarray, rows: np.ndarray, k: int,
                 alpha: float = 3.0) -> np.ndarray:
    """alpha-query expansion: each query plus its ``k`` best database neighbours (``scores``/``rows`` from a
    first search) weighted by similarity^alpha, re-normalised; search again with the result."""
    return _weighted_means(np.asarray(queries, np.float32), np.asarray(database, np.float32), scores[:, :k],
                           rows[:, :k], alpha)


def local_rerank(rows: np.ndarray, scores: np.ndarray, inliers: np.ndarray, fusion: float = 0.0, half: float = 10.0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Local-feature re-ranking (blog post "Metric Learning for Landmark Image Recognition"): the first
    ``inliers.shape[1]`` neighbours of each row re-sorted by similarity x sqrt(inliers) (stable), the rest kept
    behind them in their order; with ``fusion`` > 0 by similarity + fusion x inliers / (inliers + half)
    instead: the inlier bonus saturates (at most ``fusion``), so one noisy match count cannot overturn a
    confident global ranking. Returns the rows and their similarities in the new order."""
    n = inliers.shape[1]
    count = np.maximum(inliers, 0).astype(np.float64)
    fused = scores[:, :n] + fusion * count / (count + max(half, 1e-9)) if fusion > 0 else scores[:, :n] * np.sqrt(count)
    head = np.where(rows[:, :n] >= 0, fused, -np.inf)
    order = np.argsort(-head, axis=1, kind="stable")
    order = np.concatenate([order, np.broadcast_to(np.arange(n, rows.shape[1]), (len(rows), rows.shape[1] - n))], 1)
    return np.take_along_axis(rows, order, axis=1), np.take_along_axis(scores, order, axis=1)


def soft_rerank(rows: np.ndarray, scores: np.ndarray, query_labels: np.ndarray, index_labels: np.ndarray,
                index_confidence: np.ndarray, up: float = 1.0, down: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Soft up/down re-ranking (GLR2021 winners' variant of discriminative re-ranking): a retrieved image's
    similarity rises by ``up`` x its label confidence when its predicted label is the query's and falls by
    ``down`` x that confidence otherwise; each row is re-sorted by the result (stable). Unlike the hard
    partition, a confident same-label image can still rank behind a much closer one. Queries without a label
    (-1) keep their row. ``index_labels`` / ``index_confidence`` may be per-query tables (:func:`per_entry`).
    Returns the rows and their original similarities in the new order."""
    valid = rows >= 0
    labels = np.where(valid, per_entry(index_labels, rows), -2)
    confidence = np.where(valid, per_entry(index_confidence, rows), 0.0)
    same = labels == query_labels[:, None]
    adjusted = scores + np.where(same, up, -down) * confidence * (query_labels[:, None] >= 0)
    order = np.argsort(-np.where(valid, adjusted, -np.inf), axis=1, kind="stable")
    return np.take_along_axis(rows, order, axis=1), np.take_along_axis(scores, order, axis=1)


def partition_rerank(rows: np.ndarray, scores: np.ndarray, query_labels: np.ndarray, index_labels: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The hard partition of discriminative re-ranking on fixed-width rows: index images whose predicted label
    is the query's move ahead, order kept in both groups (-1 padding stays last). Returns rows and their
    similarities in the new order, so other re-rankers can follow it. ``index_labels`` may be a per-query
    table (:func:`per_entry`)."""
    valid = rows >= 0
    same = valid & (np.where(valid, per_entry(index_labels, rows), -2) == query_labels[:, None])
    order = np.argsort(np.where(same, 0, np.where(valid, 1, 2)), axis=1, kind="stable")
    return np.take_along_axis(rows, order, axis=1), np.take_along_axis(scores, order, axis=1)
