"""Stage 04: recognition and retrieval submissions from the neighbours stage 03 saved in a run directory."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .data import read_train_csv
from .ensemble import load_features
from .recognition import nearest_neighbour_labels
from .retrieval import neighbour_lists
from .submission import write_submissions


def neighbours_ready(workdir: str | os.PathLike) -> bool:
    """True when stage 03 has left both neighbour files in ``workdir``."""
    folder = Path(workdir) / "neighbours"
    return (folder / "test_train.npz").is_file() and (folder / "test_index.npz").is_file()


def predict(
    data_root: str | os.PathLike, workdir: str | os.PathLike, out_dir: str | os.PathLike, train_csv=None
) -> tuple[Path, Path]:
    """kNN top-1 recognition (label of the nearest train image, its similarity as score) and the 100
    nearest index images for retrieval; both CSVs written to ``out_dir`` and validated."""
    workdir = Path(workdir)
    feats = workdir / "features" / "ensemble"
    _, test_ids = load_features(feats, "test")
    _, train_ids = load_features(feats, "train")
    _, index_ids = load_features(feats, "index")
    train = read_train_csv(train_csv or Path(data_root) / "train.csv").set_index("id")
    train_labels = train.loc[train_ids, "landmark_id"].to_numpy(dtype=np.int64)
    rec_nn = np.load(workdir / "neighbours" / "test_train.npz")
    ret_nn = np.load(workdir / "neighbours" / "test_index.npz")
    labels, scores = nearest_neighbour_labels(rec_nn["scores"], rec_nn["indices"], train_labels)
    retrieved = neighbour_lists(ret_nn["indices"], index_ids)
    return write_submissions(out_dir, test_ids, labels, scores, retrieved, index_ids)
