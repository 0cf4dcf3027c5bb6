"""Spatial verification: descriptor matching (mutual nearest neighbour + ratio test) then RANSAC.

Geometric models: ``homography`` (OpenCV USAC MAGSAC++, the default), ``affine`` (OpenCV
``estimateAffine2D`` + RANSAC, as in the 2019 paper), ``degensac-homography`` and ``degensac-fundamental``
(pydegensac). OpenCV's estimators seed every call identically, so a pair's inlier count does not depend on
which process or shard verified it; pydegensac draws from a process-wide generator, so its counts depend on
call order. The output of a pair is its inlier count. Pairs run in parallel with joblib on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np
from joblib import Parallel, delayed
from threadpoolctl import threadpool_limits

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


def match_descriptors(a: np.ndarray, b: np.ndarray, ratio: float = 0.85, mutual: bool = True) -> np.ndarray:
    """Tentative matches ``(M, 2)`` (index in a, index in b): ratio test on L2 distances, optionally mutual.

    Descriptors are L2-normalised (RootSIFT is), so squared distances come from one matrix product.
    """
    if len(a) < 2 or len(b) < 2:
        return np.zeros((0, 2), np.int64)
    sim = a @ b.T
    dist = np.sqrt(np.maximum(2.0 - 2.0 * sim, 0.0))
    two = np.argpartition(dist, 1, axis=1)[:, :2]
    d2 = np.take_along_axis(dist, two, axis=1)
    order = np.argsort(d2, axis=1)
    best = np.take_along_axis(two, order, axis=1)[:, 0]
    d_sorted = np.take_along_axis(d2, order, axis=1)
    keep = d_sorted[:, 0] < ratio * d_sorted[:, 1]
    if mutual:
        keep &= dist.argmin(axis=0)[best] == np.arange(len(a))
    idx = np.flatnonzero(keep)
    return np.stack([idx, best[idx]], axis=1)


def ransac_inliers(src: np.ndarray, dst: np.ndarray, cfg: VerifyConfig) -> int:
    """Inliers of the configured geometric model between matched points ``(M, 2)``."""
    if len(src) < cfg.min_matches:
        return 0
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
    return 0 if mask is None else int(np.count_nonzero(mask))


def verify_pair(a: Features, b: Features, cfg: VerifyConfig) -> int:
    """Inlier count of one image pair."""
    matches = match_descriptors(a.descriptors, b.descriptors, cfg.ratio, cfg.mutual)
    if len(matches) < cfg.min_matches:
        return 0
    src = a.keypoints[matches[:, 0], :2].astype(np.float64)
    dst = b.keypoints[matches[:, 1], :2].astype(np.float64)
    return ransac_inliers(src, dst, cfg)


def _verify_chunk(pairs: Sequence[tuple[str, str]], feats, cfg: VerifyConfig) -> list[int]:
    if isinstance(feats, str):  # a feature-store folder: read (once per worker process) instead of pickling
        feats = _store_features(feats)
    with threadpool_limits(1):  # one BLAS thread per worker: the workers are the parallelism
        return [verify_pair(feats[a], feats[b], cfg) for a, b in pairs]


@lru_cache(maxsize=2)
def _store_features(folder: str) -> dict[str, Features]:
    return FeatureStore(folder).load_all()


def verify_pairs(
    pairs: Sequence[tuple[str, str]], feats: dict[str, Features] | FeatureStore, cfg: VerifyConfig,
    chunk: int = 512,
) -> np.ndarray:
    """Inlier counts of many pairs of image ids, in parallel chunks; order of ``pairs`` kept.

    Give a :class:`FeatureStore` to run ``cfg.workers`` processes that read the features themselves
    (nothing large is pickled); a dict of features runs in threads.
    """
    if cfg.model not in MODELS:
        raise ValueError(f"unknown geometric model {cfg.model!r}; choose one of {MODELS}")
    if not pairs:
        return np.zeros(0, np.int64)
    chunks = [pairs[i: i + chunk] for i in range(0, len(pairs), chunk)]
    if isinstance(feats, FeatureStore):
        source, backend = str(feats.folder), "processes"
    else:
        source, backend = feats, "threads"
    if cfg.workers <= 1:
        results = [_verify_chunk(c, source, cfg) for c in chunks]
    else:
        results = Parallel(n_jobs=cfg.workers, prefer=backend)(delayed(_verify_chunk)(c, source, cfg) for c in chunks)
    return np.fromiter((n for r in results for n in r), dtype=np.int64, count=len(pairs))
