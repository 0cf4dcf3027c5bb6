"""Stage 04: recognition and retrieval submissions from the neighbours stage 03 saved in a run directory."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import read_train_csv
from .ensemble import load_features
from .local import LocalConfig, extract_local
from .recognition import nearest_neighbour_labels, soft_vote, suppress_frequent, verified_vote
from .retrieval import discriminative_rerank, neighbour_lists
from .search import knn
from .submission import write_submissions
from .verify import VerifyConfig, verify_pairs


@dataclass
class PredictConfig:
    """Stage 04 recipe (``submissions/*.yaml``); the defaults are plain kNN top-1 recognition."""

    k: int = 1  # train neighbours that vote: 1 = nearest neighbour; > 1 = smlyaka 2019 soft-voting
    suppress_over: int = 0  # labels predicted for more than this many test images score -frequency (0 = off)
    verify_shortlist: int = 0  # > 0: RANSAC-verify this many train neighbours per query, then vote (k best)
    inlier_cap: float = 70.0  # t in min(t, inliers - floor) / t
    inlier_floor: float = 0.0  # chance-level inliers subtracted first (0 in the paper)
    local: LocalConfig = field(default_factory=LocalConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    retrieval_k: int = 100
    rerank: bool = False  # discriminative re-ranking: index images of the query's predicted label move ahead
    append_positives: bool = True  # with rerank: then add that label's index images not yet retrieved


def shortlist_inliers(cfg: PredictConfig, data_root, workdir, test_ids: list[str], train_ids: list[str],
                      neighbours: np.ndarray) -> np.ndarray:
    """RANSAC inliers between each test query and its shortlisted train neighbours ``(Q, S)``; local features
    of both splits cached (resumable) under ``workdir/local``."""
    rows, cols = np.nonzero(neighbours >= 0)
    pairs = [(test_ids[q], train_ids[neighbours[q, j]]) for q, j in zip(rows, cols)]
    needed = sorted({b for _, b in pairs})
    feats = extract_local(cfg.local, data_root, "test", test_ids, Path(workdir) / "local").load_all()
    feats.update(extract_local(cfg.local, data_root, "train", needed, Path(workdir) / "local").load_all())
    inliers = np.zeros(neighbours.shape, np.int64)
    inliers[rows, cols] = verify_pairs(pairs, feats, cfg.verify)
    return inliers


def index_predictions(feats: Path, train_labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Predicted label and confidence of every index image from its train neighbours (soft-voting over k)."""
    index, _ = load_features(feats, "index")
    train, _ = load_features(feats, "train")
    scores, neighbours = knn(index, train, max(k, 1))
    return soft_vote(scores, neighbours, train_labels, max(k, 1))


def neighbours_ready(workdir: str | os.PathLike) -> bool:
    """True when stage 03 has left both neighbour files in ``workdir``."""
    folder = Path(workdir) / "neighbours"
    return (folder / "test_train.npz").is_file() and (folder / "test_index.npz").is_file()


def predict(
    data_root: str | os.PathLike, workdir: str | os.PathLike, out_dir: str | os.PathLike, train_csv=None,
    cfg: PredictConfig | None = None,
) -> tuple[Path, Path]:
    """Recognition from the train neighbours (kNN top-1, or soft-voting over ``cfg.k`` with optional
    distractor suppression) and the ``retrieval_k`` nearest index images; both CSVs written to ``out_dir``
    and validated."""
    cfg = cfg or PredictConfig()
    workdir = Path(workdir)
    feats = workdir / "features" / "ensemble"
    _, test_ids = load_features(feats, "test")
    _, train_ids = load_features(feats, "train")
    _, index_ids = load_features(feats, "index")
    train = read_train_csv(train_csv or Path(data_root) / "train.csv").set_index("id")
    train_labels = train.loc[train_ids, "landmark_id"].to_numpy(dtype=np.int64)
    rec_nn = np.load(workdir / "neighbours" / "test_train.npz")
    ret_nn = np.load(workdir / "neighbours" / "test_index.npz")
    if cfg.verify_shortlist > 0:
        shortlist = rec_nn["indices"][:, : cfg.verify_shortlist]
        inliers = shortlist_inliers(cfg, data_root, workdir, test_ids, train_ids, shortlist)
        labels, scores = verified_vote(rec_nn["scores"][:, : cfg.verify_shortlist], shortlist, train_labels, inliers,
                                       cfg.k, cfg.inlier_cap, cfg.inlier_floor)
    elif cfg.k > 1:
        labels, scores = soft_vote(rec_nn["scores"], rec_nn["indices"], train_labels, cfg.k)
    else:
        labels, scores = nearest_neighbour_labels(rec_nn["scores"], rec_nn["indices"], train_labels)
    if cfg.suppress_over > 0:
        scores = suppress_frequent(labels, scores, cfg.suppress_over)
    rows = ret_nn["indices"]
    if cfg.rerank:
        index_labels, index_confidence = index_predictions(feats, train_labels, cfg.k)
        rows = discriminative_rerank(rows, labels, index_labels, index_confidence, cfg.retrieval_k,
                                     cfg.append_positives)
    retrieved = neighbour_lists(rows, index_ids, cfg.retrieval_k)
    return write_submissions(out_dir, test_ids, labels, scores, retrieved, index_ids)
