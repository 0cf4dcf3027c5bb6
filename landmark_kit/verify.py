"""Spatial verification: descriptor matching (mutual nearest neighbour + ratio test) then RANSAC.

Geometric models: ``homography`` (OpenCV USAC MAGSAC++, the default), ``affine`` (OpenCV
``estimateAffine2D`` + RANSAC, as in the 2019 paper), ``degensac-homography`` and ``degensac-fundamental``
(pydegensac). OpenCV's estimators seed every call identically, so a pair's inlier count does not depend on
which process or shard verified it; pydegensac draws from a process-wide generator, so its counts depend on
call order. The output of a pair is its inlier count. Matching is torch: on CPU pairs run in joblib
worker processes; with CUDA they are matched in padded batches on the GPU while the workers run RANSAC.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np
import torch
from joblib import Parallel, delayed
from threadpoolctl import threadpool_limits

from .checkpoint import resolve_device
from .local import Features, FeatureStore

MODELS = ("homography", "affine", "degensac-homography", "degensac-fundamental")


@dataclass
class VerifyConfig:
    """Matching and RANSAC settings."""

    model: str = "homography"
    ratio: float = 0.85  # Lowe's ratio test on descriptor distances
    mutual: bool = True
    threshold_px: float = 4.0
    confidence: float = 0.999
    max_iters: int = 2000
    min_matches: int = 8  # fewer tentative matches: 0 inliers, no RANSAC call
    workers: int = 2
    device: str = "auto"  # "cuda": batched matching on the GPU, RANSAC in CPU workers; "auto" picks it if present
    save_every: int = 20_000  # pairs verified between two saves of a resumable job's results (stages 01 and 04)
    gpu_batch: int = 32  # pairs per batched GPU product


def match_descriptors(a, b, ratio: float = 0.85, mutual: bool = True) -> np.ndarray:
    """Tentative matches ``(M, 2)`` (index in a, index in b): ratio test on L2 distances, optionally mutual.

    Descriptors are L2-normalised (RootSIFT is), so distances come from one matrix product (torch: 2-3x
    numpy's argpartition on CPU, and the same code runs on a GPU when given CUDA tensors).
    """
    return match_batch([(a, b)], ratio, mutual)[0]


def match_batch(pairs: Sequence[tuple], ratio: float = 0.85, mutual: bool = True, device: str = "cpu") -> list:
    """:func:`match_descriptors` of many descriptor pairs as one padded batched product on ``device``.

    Padding rows/columns are masked with -inf similarity, so every pair's matches equal the one-pair result.
    """
    out: list[np.ndarray] = [np.zeros((0, 2), np.int64)] * len(pairs)
    live = [n for n, (a, b) in enumerate(pairs) if len(a) >= 2 and len(b) >= 2]
    if not live:
        return out
    lens_a = torch.tensor([len(pairs[n][0]) for n in live])
    lens_b = torch.tensor([len(pairs[n][1]) for n in live])
    na, nb = int(lens_a.max()), int(lens_b.max())
    A, B = _padded([pairs[n][0] for n in live], na), _padded([pairs[n][1] for n in live], nb)
    if device != "cpu":  # one pinned host-to-device copy per side instead of one per pair
        A, B = A.pin_memory().to(device, non_blocking=True), B.pin_memory().to(device, non_blocking=True)
    valid_a = (torch.arange(na)[None] < lens_a[:, None]).to(device)
    valid_b = (torch.arange(nb)[None] < lens_b[:, None]).to(device)
    sim = torch.bmm(A, B.transpose(1, 2))
    sim.masked_fill_(~valid_b[:, None, :], -torch.inf)
    top = sim.topk(2, dim=2)
    dist = torch.sqrt(torch.clamp(2.0 - 2.0 * top.values, min=0.0))
    best = top.indices[..., 0]
    keep = (dist[..., 0] < ratio * dist[..., 1]) & valid_a
    if mutual:
        back = sim.masked_fill(~valid_a[:, :, None], -torch.inf).argmax(dim=1)
        keep &= torch.gather(back, 1, best) == torch.arange(na, device=device)[None]
    keep, best = keep.cpu().numpy(), best.cpu().numpy()
    for row, n in enumerate(live):
        idx = np.flatnonzero(keep[row])
        out[n] = np.stack([idx, best[row, idx]], axis=1).astype(np.int64)
    return out


def _padded(arrays: list[np.ndarray], rows: int) -> torch.Tensor:
    """``(len(arrays), rows, D)`` float32 tensor, zero-padded; a single full array is wrapped without a copy."""
    if len(arrays) == 1 and len(arrays[0]) == rows:
        return torch.from_numpy(np.ascontiguousarray(arrays[0], dtype=np.float32))[None]
    out = np.zeros((len(arrays), rows, arrays[0].shape[1]), np.float32)
    for row, a in enumerate(arrays):
        out[row, : len(a)] = a
    return torch.from_numpy(out)


def ransac_inliers(src: np.ndarray, dst: np.ndarray, cfg: VerifyConfig) -> int:
    """Inliers of the configured geometric model between matched points ``(M, 2)``."""
    return int(np.count_nonzero(ransac_mask(src, dst, cfg)))


def ransac_mask(src: np.ndarray, dst: np.ndarray, cfg: VerifyConfig) -> np.ndarray:
    """Which of the matched points ``(M, 2)`` are inliers of the configured geometric model (bool ``(M,)``)."""
    if len(src) < cfg.min_matches:
        return np.zeros(len(src), bool)
    if cfg.model == "affine":
        _, mask = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=cfg.threshold_px,
                                       maxIters=cfg.max_iters, confidence=cfg.confidence)
    elif cfg.model == "homography":
        _, mask = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, cfg.threshold_px, maxIters=cfg.max_iters,
                                     confidence=cfg.confidence)
    else:
        import pydegensac

        if cfg.model == "degensac-homography":
            _, mask = pydegensac.findHomography(src, dst, cfg.threshold_px, cfg.confidence, cfg.max_iters)
        elif cfg.model == "degensac-fundamental":
            _, mask = pydegensac.findFundamentalMatrix(src, dst, cfg.threshold_px, cfg.confidence, cfg.max_iters)
        else:
            raise ValueError(f"unknown geometric model {cfg.model!r}; choose one of {MODELS}")
    return np.zeros(len(src), bool) if mask is None else np.asarray(mask).ravel().astype(bool)


def verify_pair(a: Features, b: Features, cfg: VerifyConfig) -> int:
    """Inlier count of one image pair."""
    return len(inlier_points(a, b, cfg)[0])


def inlier_points(a: Features, b: Features, cfg: VerifyConfig) -> tuple[np.ndarray, np.ndarray]:
    """The inlier correspondences of one image pair: points ``(I, 2)`` in a and in b (drawn by the report)."""
    m = match_descriptors(a.descriptors, b.descriptors, cfg.ratio, cfg.mutual)
    src, dst = a.keypoints[m[:, 0], :2].astype(np.float64), b.keypoints[m[:, 1], :2].astype(np.float64)
    keep = ransac_mask(src, dst, cfg)
    return src[keep], dst[keep]


def _verify_chunk(pairs: Sequence[tuple[str, str]], feats, db_feats, cfg: VerifyConfig) -> list[int]:
    if isinstance(feats, str):  # feature-store folders: this chunk's images read in the worker, nothing pickled
        feats, db_feats = _chunk_features(pairs, _store(feats), _store(db_feats))
        torch.set_num_threads(1)  # one thread per worker process: the workers are the parallelism
    with threadpool_limits(1):
        return [verify_pair(feats[a], db_feats[b], cfg) for a, b in pairs]


def _ransac_chunk(points: Sequence[tuple[np.ndarray, np.ndarray]], cfg: VerifyConfig) -> list[int]:
    with threadpool_limits(1):
        return [ransac_inliers(src, dst, cfg) for src, dst in points]


@lru_cache(maxsize=4)
def _store(folder: str) -> FeatureStore:
    """One store object per folder and worker process, so its id index is built once."""
    return FeatureStore(folder)


def _chunk_features(pairs: Sequence[tuple[str, str]], feats: FeatureStore | dict, db_feats: FeatureStore | dict
                    ) -> tuple[dict, dict]:
    """The features of the first and of the second images of ``pairs`` (read from stores, or the dicts)."""
    def take(source, ids):
        return source.get(ids) if isinstance(source, FeatureStore) else source

    return take(feats, {a for a, _ in pairs}), take(db_feats, {b for _, b in pairs})


def _device(cfg: VerifyConfig) -> str:
    return str(resolve_device(cfg.device))


def _verify_gpu(pairs: Sequence[tuple[str, str]], feats, db_feats, cfg: VerifyConfig, device: str,
                chunk: int) -> list[list[int]]:
    """Batched matching on ``device`` in this process; RANSAC of the matched points in CPU worker processes.

    The chunks are produced lazily, so the workers run RANSAC on one chunk while the GPU matches the next;
    each chunk's features are read when it is matched.
    """
    def ransac_tasks():
        for start in range(0, len(pairs), chunk):
            a_feats, b_feats = _chunk_features(pairs[start: start + chunk], feats, db_feats)
            points = []
            for first in range(start, min(start + chunk, len(pairs)), cfg.gpu_batch):
                batch = pairs[first: min(first + cfg.gpu_batch, start + chunk)]
                matches = match_batch([(a_feats[a].descriptors, b_feats[b].descriptors) for a, b in batch],
                                      cfg.ratio, cfg.mutual, device)
                for (a, b), m in zip(batch, matches):
                    points.append((a_feats[a].keypoints[m[:, 0], :2].astype(np.float64),
                                   b_feats[b].keypoints[m[:, 1], :2].astype(np.float64)))
            yield delayed(_ransac_chunk)(points, cfg)

    return Parallel(n_jobs=max(cfg.workers, 1), pre_dispatch="2*n_jobs")(ransac_tasks())


def verify_pairs(
    pairs: Sequence[tuple[str, str]], feats: dict[str, Features] | FeatureStore, cfg: VerifyConfig,
    chunk: int = 512, db_feats: dict[str, Features] | FeatureStore | None = None,
) -> np.ndarray:
    """Inlier counts of many pairs of image ids, in parallel chunks; order of ``pairs`` kept. The second image
    of each pair is read from ``db_feats`` when given (another split's store), from ``feats`` otherwise.

    On CPU, give :class:`FeatureStore` s to run ``cfg.workers`` processes that read each chunk's features
    themselves (nothing large is pickled, memory follows the chunk); dicts of features run in threads. With a
    GPU (``cfg.device``), matching is batched on it and only matched coordinates go to the RANSAC workers.
    """
    if cfg.model not in MODELS:
        raise ValueError(f"unknown geometric model {cfg.model!r}; choose one of {MODELS}")
    if not pairs:
        return np.zeros(0, np.int64)
    db_feats = feats if db_feats is None else db_feats
    chunk = max(1, min(chunk, -(-len(pairs) // (4 * max(cfg.workers, 1)))))  # >= 4 chunks a worker: balanced
    device = _device(cfg)
    if device != "cpu":
        results = _verify_gpu(pairs, feats, db_feats, cfg, device, chunk)
        return np.fromiter((n for r in results for n in r), dtype=np.int64, count=len(pairs))
    chunks = [pairs[i: i + chunk] for i in range(0, len(pairs), chunk)]
    stores = isinstance(feats, FeatureStore) and isinstance(db_feats, FeatureStore)
    if stores:
        sources, backend = (str(feats.folder), str(db_feats.folder)), "processes"
    else:
        sources, backend = _chunk_features(pairs, feats, db_feats), "threads"
    if cfg.workers <= 1:
        results = [_verify_chunk(c, *sources, cfg) for c in chunks]
    else:
        results = Parallel(n_jobs=cfg.workers, prefer=backend)(delayed(_verify_chunk)(c, *sources, cfg)
                                                               for c in chunks)
    return np.fromiter((n for r in results for n in r), dtype=np.int64, count=len(pairs))
