"""Learning-free baselines: nearest neighbour on colour histograms. An honest floor for every later stage."""

from __future__ import annotations

import json
import os
from functools import partial
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from .data import ImageDataset, read_train_csv, scan_split, split_ids
from .extract import extract_descriptors
from .recognition import nearest_neighbour_labels
from .retrieval import neighbour_lists
from .search import knn
from .submission import write_submissions


@dataclass
class HistogramConfig:
    """Colour-histogram descriptor: joint HSV bins over the image plus hue bins per cell of a grid."""

    hsv_bins: tuple[int, int, int] = (8, 4, 4)
    grid: int = 2
    grid_hue_bins: int = 8
    max_side: int = 256


def colour_histogram(img: Image.Image, cfg: HistogramConfig = HistogramConfig()) -> torch.Tensor:
    """Hellinger-normalised (sqrt, then L2) colour histogram of a PIL RGB image."""
    arr = np.asarray(img)
    scale = cfg.max_side / max(arr.shape[:2])
    if scale < 1:
        arr = cv2.resize(arr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(arr, cv2.COLOR_RGB2HSV)
    parts = [cv2.calcHist([hsv], [0, 1, 2], None, list(cfg.hsv_bins), [0, 180, 0, 256, 0, 256]).ravel()]
    h, w = hsv.shape[:2]
    for gy in range(cfg.grid):
        for gx in range(cfg.grid):
            cell = hsv[gy * h // cfg.grid : (gy + 1) * h // cfg.grid, gx * w // cfg.grid : (gx + 1) * w // cfg.grid]
            parts.append(cv2.calcHist([cell], [0], None, [cfg.grid_hue_bins], [0, 180]).ravel())
    vec = np.sqrt(np.concatenate([p / max(p.sum(), 1.0) for p in parts]))
    return torch.from_numpy((vec / max(np.linalg.norm(vec), 1e-12)).astype(np.float32))


def run_histogram_baseline(
    data_root: str | os.PathLike, out_dir: str | os.PathLike, workers: int = 2, cfg: HistogramConfig | None = None
) -> tuple[Path, Path]:
    """Recognition (label of the nearest train image) and retrieval (100 nearest index images) CSVs.

    Writes ``recognition.csv``, ``retrieval.csv`` and ``config.json`` into ``out_dir``, validated.
    """
    cfg = cfg or HistogramConfig()
    out_dir = Path(out_dir)
    train = read_train_csv(Path(data_root) / "train.csv")
    test_ids, index_ids = split_ids(data_root, "test"), scan_split(data_root, "index")

    def describe(split: str, ids: list[str]) -> np.ndarray:
        transform = partial(colour_histogram, cfg=cfg)
        ds = ImageDataset(data_root, split, ids, transform=transform, max_side=cfg.max_side)
        feats, _ = extract_descriptors(ds, lambda x: x, batch_size=64, workers=workers, desc=f"histograms {split}")
        return feats

    train_f = describe("train", train["id"].tolist())
    test_f, index_f = describe("test", test_ids), describe("index", index_ids)
    scores, nbrs = knn(test_f, train_f, 1)
    labels, conf = nearest_neighbour_labels(scores, nbrs, train["landmark_id"].to_numpy())
    _, nbrs = knn(test_f, index_f, min(100, len(index_ids)))
    rec, ret = write_submissions(out_dir, test_ids, labels, conf, neighbour_lists(nbrs, index_ids), index_ids)
    (out_dir / "config.json").write_text(
        json.dumps({"method": "colour-histogram-knn", "data_root": str(data_root), **asdict(cfg)}, indent=2)
    )
    return rec, ret
