"""Difficulty calibration of the default synthetic competition (design notes, section 4).

ImageNet EfficientNet-Lite0 + GeM zero-shot kNN top-1 must land in GAP 0.3-0.7 on average: neither
saturated nor hopeless, so every later stage has room to show its gain. A colour histogram must do worse.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landmark_kit.baselines import run_histogram_baseline
from landmark_kit.data import read_train_csv, scan_split
from landmark_kit.extract import describe_split
from landmark_kit.models import GlobalDescriptor, create_backbone
from landmark_kit.recognition import nearest_neighbour_labels
from landmark_kit.scoring import score_files
from landmark_kit.search import knn
from landmark_kit.submission import write_recognition
from landmark_kit.synthetic import SyntheticConfig, generate


def zero_shot_gap(root, out) -> float:
    torch.manual_seed(0)
    model = GlobalDescriptor(create_backbone("tf_efficientnet_lite0", weights="imagenet-lite"))
    train = read_train_csv(root / "train.csv")
    test_ids = scan_split(root, "test")
    train_f, _ = describe_split(model, root, "train", train["id"].tolist())
    test_f, _ = describe_split(model, root, "test", test_ids)
    labels, conf = nearest_neighbour_labels(*knn(test_f, train_f, 1), train["landmark_id"].to_numpy())
    write_recognition(out, test_ids, labels, conf)
    return score_files(root / "recognition_solution.csv", out)["scores"]["All"]["GAP"]


@pytest.mark.slow
def test_default_competition_is_neither_saturated_nor_hopeless(tmp_path):
    gaps, hist = [], []
    for seed in (0, 1):
        root = tmp_path / f"seed{seed}"
        generate(root, SyntheticConfig(seed=seed), progress=False)
        gaps.append(zero_shot_gap(root, tmp_path / f"lite0_{seed}.csv"))
        rec, _ = run_histogram_baseline(root, tmp_path / f"hist{seed}")
        hist.append(score_files(root / "recognition_solution.csv", rec)["scores"]["All"]["GAP"])
    print(f"lite0 zero-shot GAP per seed {gaps}, colour histogram GAP {hist}")
    assert 0.3 <= np.mean(gaps) <= 0.7
    assert all(0.2 <= g <= 0.8 for g in gaps)
    assert np.mean(hist) < np.mean(gaps)
