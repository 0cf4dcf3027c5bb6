"""The mAP-vs-index-size curve: positives always kept, distractors added in nested subsets, scored exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd

from landmark_kit.ensemble import save_features
from landmark_kit.index_growth import map_vs_index_size, write_report


def test_distractors_can_only_push_positives_down(tiny_competition, tmp_path):
    """Hand-made descriptors: every query's positives sit at similarity 0.9, distractors at random below or
    above, so the full-index mAP is at most the positives-only mAP (which is 1)."""
    truth = pd.read_csv(tiny_competition / "ground_truth.csv", dtype={"id": str})
    sol = pd.read_csv(tiny_competition / "retrieval_solution.csv", dtype={"id": str}).fillna("")
    index = truth[truth["split"] == "index"]
    test_ids = truth.loc[truth["split"] == "test", "id"].tolist()
    index_ids = index["id"].tolist()
    rng = np.random.default_rng(0)
    dim = 64
    basis = np.eye(dim, dtype=np.float32)
    test = np.zeros((len(test_ids), dim), np.float32)
    idx = rng.standard_normal((len(index_ids), dim)).astype(np.float32) * 0.6
    position = {i: n for n, i in enumerate(index_ids)}
    groups: dict[str, int] = {}  # queries of one landmark share their positives: one direction per landmark
    for qid, images in zip(sol["id"], sol["images"]):
        direction = basis[groups.setdefault(images, len(groups))]
        test[test_ids.index(qid)] = direction
        for image in images.split():
            idx[position[image]] = direction
    save_features(tmp_path / "features" / "ensemble", "test", test, test_ids)
    save_features(tmp_path / "features" / "ensemble", "index", idx, index_ids)
    table = map_vs_index_size(tiny_competition, tmp_path, steps=3)
    assert table["distractors"].tolist()[0] == 0 and table["index_size"].is_monotonic_increasing
    assert table["index_size"].iloc[-1] == len(index_ids)
    assert np.isclose(table["mAP@100"].iloc[0], 1.0)
    assert (np.diff(table["mAP@100"]) <= 1e-9).all() and table["mAP@100"].iloc[-1] < 1.0
    write_report(table, tmp_path, "test")
    assert (tmp_path / "index_growth.png").stat().st_size > 1000
    assert "| distractors |" in (tmp_path / "index_growth.md").read_text()
