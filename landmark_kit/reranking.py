"""Training-free re-ranking of each query's retrieval shortlist with global descriptors only (no labels,
no local features), so it holds up on any index:

- k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding",
  CVPR 2017): an image ranks high when the query and it are in each other's k nearest neighbours; here the
  neighbourhoods are taken within the query's shortlist (the query plus its first ``m`` images), so the cost
  follows the shortlist, not the index;
- SuperGlobal's re-ranking (Shao et al., "Global Features are All You Need for Image Retrieval and
  Reranking", ICCV 2023): MDescAug refines each of the first ``m`` images' descriptors with its ``k`` nearest
  images among them, then the query, expanded by the element-wise maximum of its ``k`` best refined
  neighbours, re-scores them (the mean of both similarities);
- diffusion (Iscen et al., "Efficient Diffusion on Region Manifolds: Recovering Small Objects with Compact CNN
  Representations", CVPR 2017): the query's relevance spreads over the reciprocal k-nearest-neighbour graph of
  the query and its first ``m`` images, so an image reached through a chain of mutual neighbours can rank
  above a closer image that nothing else leads to.

Each re-sorts the first ``m`` entries of each row and keeps the rest behind them; -1 padding stays last.
"""

from __future__ import annotations

import numpy as np

CHUNK = 256  # queries per block: a block holds (CHUNK, m + 1, m + 1) similarities


def _shortlist(rows: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``m`` entries of each row, whether each is a real image, and the remaining columns."""
    top = rows[:, :m]
    return top, top >= 0, rows[:, m:]


def _resort(rows: np.ndarray, scores: np.ndarray, m: int, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose first ``m`` entries are re-sorted by ``key`` (descending, stable), the rest kept after."""
    n = key.shape[1]
    order = np.argsort(-key, axis=1, kind="stable")
    order = np.concatenate([order, np.broadcast_to(np.arange(n, rows.shape[1]), (len(rows), rows.shape[1] - n))], 1)
    return np.take_along_axis(rows, order, axis=1), np.take_along_axis(scores, order, axis=1)


def kreciprocal_rerank(rows: np.ndarray, scores: np.ndarray, queries: np.ndarray, index: np.ndarray, m: int = 50,
                       k1: int = 10, lam: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """k-reciprocal re-ranking of the first ``m`` entries of each row: among the query and those images, each
    one's k-reciprocal set (in the other's ``k1`` nearest and it in theirs) is encoded with weights
    exp(similarity - 1); an image's distance to the query is ``(1 - lam)`` x the Jaccard distance of their
    encodings plus ``lam`` x (1 - similarity). Returns the rows and their original similarities in the new
    order."""
    top, valid, _ = _shortlist(rows, m)
    width = top.shape[1]
    key = np.full(top.shape, -np.inf)
    k1 = max(1, min(k1, width + 1))
    for start in range(0, len(rows), CHUNK):
        block, ok = top[start: start + CHUNK], valid[start: start + CHUNK]
        nodes = np.concatenate([np.asarray(queries[start: start + CHUNK], np.float32)[:, None],
                                np.asarray(index, np.float32)[np.maximum(block, 0)]], axis=1)  # (B, width+1, D)
        present = np.concatenate([np.ones((len(block), 1), bool), ok], axis=1)
        sim = nodes @ np.swapaxes(nodes, 1, 2)
        sim = np.where(present[:, :, None] & present[:, None, :], sim, -np.inf)
        kth = -np.sort(-sim, axis=2)[:, :, k1 - 1: k1]  # each node's k1-th best similarity (itself first)
        near = sim >= kth  # j among i's k1 nearest
        reciprocal = near & np.swapaxes(near, 1, 2)
        weights = np.where(reciprocal, np.exp(np.minimum(sim, 1.0) - 1.0), 0.0)
        weights /= np.maximum(weights.sum(axis=2, keepdims=True), 1e-12)
        query, images = weights[:, :1], weights[:, 1:]  # (B, 1, n) and (B, width, n)
        jaccard = 1.0 - np.minimum(query, images).sum(axis=2) / np.maximum(np.maximum(query, images).sum(axis=2),
                                                                           1e-12)
        distance = (1 - lam) * jaccard + lam * (1.0 - sim[:, 0, 1:])
        key[start: start + CHUNK] = np.where(ok, -distance, -np.inf)
    return _resort(rows, scores, width, key)


def superglobal_rerank(rows: np.ndarray, scores: np.ndarray, queries: np.ndarray, index: np.ndarray, m: int = 50,
                       k: int = 9, beta: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """SuperGlobal's MDescAug + re-ranking of the first ``m`` entries of each row: each image's descriptor
    becomes the weighted mean of itself (weight 1) and its ``k`` nearest among the ``m`` (weight ``beta`` x
    similarity); an image's score is the mean of the query's similarity to its refined descriptor and the
    similarity of the element-wise maximum of the query's ``k + 1`` best refined images to it. Returns the
    rows and their original similarities in the new order."""
    top, valid, _ = _shortlist(rows, m)
    width = top.shape[1]
    key = np.full(top.shape, -np.inf)
    kk = max(1, min(k + 1, width))
    for start in range(0, len(rows), CHUNK):
        block, ok = top[start: start + CHUNK], valid[start: start + CHUNK]
        q = np.asarray(queries[start: start + CHUNK], np.float32)
        feats = np.asarray(index, np.float32)[np.maximum(block, 0)]  # (B, width, D)
        sim = feats @ np.swapaxes(feats, 1, 2)
        sim = np.where(ok[:, :, None] & ok[:, None, :], sim, -np.inf)
        order = np.argsort(-sim, axis=2, kind="stable")[:, :, :kk]  # itself first
        value = np.take_along_axis(sim, order, axis=2)
        weight = np.where(np.isfinite(value), np.maximum(value, 0.0) * beta, 0.0)
        weight[:, :, 0] = 1.0
        mix = np.zeros(sim.shape, np.float32)  # (B, width, width): each image's neighbours and their weights
        np.put_along_axis(mix, order, weight.astype(np.float32), axis=2)
        refined = (mix @ feats) / mix.sum(axis=2, keepdims=True)
        first = np.where(ok, (refined @ q[:, :, None])[:, :, 0], -np.inf)
        best = np.argsort(-first, axis=1, kind="stable")[:, :kk]
        chosen = np.take_along_axis(refined, best[..., None], axis=1)
        usable = np.take_along_axis(ok, best, axis=1)
        expanded = np.where(usable[..., None], chosen, -np.inf).max(axis=1)  # (B, D)
        expanded = np.where(np.isfinite(expanded), expanded, 0.0)
        second = (refined @ expanded[:, :, None])[:, :, 0]
        key[start: start + CHUNK] = np.where(ok, (first + second) / 2, -np.inf)
    return _resort(rows, scores, width, key)


def diffusion_rerank(rows: np.ndarray, scores: np.ndarray, queries: np.ndarray, index: np.ndarray, m: int = 50,
                     k: int = 10, alpha: float = 0.99, gamma: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Diffusion re-ranking of the first ``m`` entries of each row, truncated to the query's shortlist: the
    nodes are the query and those images; two nodes are joined when each is among the other's ``k`` nearest
    (itself excluded), with affinity max(similarity, 0)^``gamma``; with A those affinities (zero diagonal) and
    S = D^-1/2 A D^-1/2 (D the degrees, a node without edges left at zero), the images are ranked by f, the
    solution of (I - ``alpha`` S) f = y. y is the query node's indicator, as the paper does (after Zhou et
    al.'s ranking on data manifolds) for a query that is a point of the graph; its other y, the similarities
    of a query outside the graph to its nearest images, is not needed, since here the query is a node and its
    similarities enter through A. Images out of the query's connected part get f = 0 and keep their order
    behind the others. Returns the rows and their original similarities in the new order."""
    top, valid, _ = _shortlist(rows, m)
    width = top.shape[1]
    key = np.full(top.shape, -np.inf)
    n = width + 1
    kk = max(1, min(k, n - 1))
    eye = np.eye(n, dtype=bool)
    for start in range(0, len(rows), CHUNK):
        block, ok = top[start: start + CHUNK], valid[start: start + CHUNK]
        nodes = np.concatenate([np.asarray(queries[start: start + CHUNK], np.float32)[:, None],
                                np.asarray(index, np.float32)[np.maximum(block, 0)]], axis=1)  # (B, n, D)
        present = np.concatenate([np.ones((len(block), 1), bool), ok], axis=1)
        sim = (nodes @ np.swapaxes(nodes, 1, 2)).astype(np.float64)
        sim = np.where(present[:, :, None] & present[:, None, :] & ~eye, sim, -np.inf)
        kth = -np.sort(-sim, axis=2)[:, :, kk - 1: kk]  # each node's k-th best other node
        near = (sim >= kth) & np.isfinite(sim)  # j among i's k nearest
        affinity = np.where(near & np.swapaxes(near, 1, 2), np.maximum(sim, 0.0) ** gamma, 0.0)
        degree = affinity.sum(axis=2)
        scale = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-300)), 0.0)
        system = eye - alpha * scale[:, :, None] * affinity * scale[:, None, :]
        y = np.zeros((len(block), n, 1))
        y[:, 0] = 1.0
        f = np.linalg.solve(system, y)[:, 1:, 0]  # (B, width)
        key[start: start + CHUNK] = np.where(ok, f, -np.inf)
    return _resort(rows, scores, width, key)
