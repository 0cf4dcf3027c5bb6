"""Recognition from nearest train neighbours: one label and a confidence per query."""

from __future__ import annotations

import numpy as np


def nearest_neighbour_labels(
    scores: np.ndarray, neighbours: np.ndarray, train_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Label of the most similar train image and its similarity as the score (kNN top-1).

    ``scores``/``neighbours``: ``(Q, k)`` from :func:`landmark_kit.search.knn`, best first.
    A query with no neighbour (index -1) gets label -1 (no prediction).
    """
    first = neighbours[:, 0]
    labels = np.where(first >= 0, train_labels[np.maximum(first, 0)], -1).astype(np.int64)
    return labels, scores[:, 0].astype(np.float64)


def soft_vote(
    scores: np.ndarray, neighbours: np.ndarray, train_labels: np.ndarray, k: int = 3,
    inliers: np.ndarray | None = None, t: float = 70.0,
) -> tuple[np.ndarray, np.ndarray]:
    """smlyaka 2019 soft-voting over the first ``k`` neighbours: label l scores
    sum over its neighbours of (1 - ||x_i - q||^2) + min(t, R_i) / t, with R_i the RANSAC inliers of
    neighbour i (``inliers``, same shape as ``neighbours``; omitted: global similarity only). For unit
    vectors 1 - ||x - q||^2 = 2 cos - 1. Returns the best label and its score per query (-1 when none).
    """
    k = min(k, neighbours.shape[1])
    nbrs, sims = neighbours[:, :k], scores[:, :k].astype(np.float64)
    votes = 2.0 * sims - 1.0
    if inliers is not None:
        votes = votes + np.minimum(inliers[:, :k], t) / t
    valid = nbrs >= 0
    labels = np.where(valid, train_labels[np.maximum(nbrs, 0)], -1)
    # per query, sum the votes of equal labels: compare each of the k slots with every other (k is small)
    same = (labels[:, :, None] == labels[:, None, :]) & valid[:, None, :]
    totals = np.where(valid, (same * votes[:, None, :]).sum(axis=2), -np.inf)
    best = totals.argmax(axis=1)
    rows = np.arange(len(nbrs))
    label = np.where(valid.any(axis=1), labels[rows, best], -1).astype(np.int64)
    return label, np.where(label >= 0, totals[rows, best], 0.0)


def suppress_frequent(labels: np.ndarray, scores: np.ndarray, max_count: int = 30) -> np.ndarray:
    """Distractor suppression (smlyaka 2019): a label predicted for more than ``max_count`` queries is
    taken for a non-landmark attractor, and its queries' scores become -(its frequency), ranking them last."""
    values, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    frequency = counts[inverse]
    return np.where((frequency > max_count) & (labels >= 0), -frequency.astype(np.float64), scores)


def verified_vote(
    scores: np.ndarray, neighbours: np.ndarray, train_labels: np.ndarray, inliers: np.ndarray, k: int = 3,
    t: float = 70.0, floor: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Soft-voting after spatial verification of a wider shortlist: every shortlisted neighbour i gets
    v_i = (1 - ||x_i - q||^2) + min(t, R_i - floor) / t, the ``k`` best by v_i vote (sum of v_i per label).
    ``floor`` removes the inliers unrelated images reach by chance (0 in the paper, whose DELF features had
    few; RootSIFT + MAGSAC gives unrelated real photos 5-10).

    The shortlist is ``neighbours``' width (``inliers`` has the same shape): with few images per landmark the
    right train image is often outside the global top ``k`` but has many inliers.
    """
    votes = 2.0 * scores.astype(np.float64) - 1.0 + np.clip(inliers - floor, 0, t) / t
    votes = np.where(neighbours >= 0, votes, -np.inf)
    order = np.argsort(-votes, axis=1, kind="stable")
    top = np.take_along_axis(neighbours, order, axis=1)
    top_votes = np.take_along_axis(votes, order, axis=1)
    # soft_vote adds (2 s - 1) back on top of its input: hand it s' with 2 s' - 1 = v, no inliers
    return soft_vote((top_votes + 1.0) / 2.0, top, train_labels, k)


def nonlandmark_penalty(scores: np.ndarray, pool_similarities: np.ndarray, weight: float = 1.0) -> np.ndarray:
    """GLR2020 1st place's use of out-of-domain images: each query's confidence minus ``weight`` x its mean
    similarity to its nearest images of a non-landmark pool (``pool_similarities`` ``(Q, k)`` from a kNN
    search of the pool, -1 padding columns ignored), so queries that look like the pool sink in the GAP
    ranking while their labels stay."""
    sims = np.where(pool_similarities > -1e30, pool_similarities, np.nan)
    return scores - weight * np.nan_to_num(np.nanmean(sims, axis=1), nan=0.0)
