"""Local-feature cache: shards round-trip, and a killed extraction resumes without redoing work."""

from __future__ import annotations

import numpy as np
import pandas as pd

from landmark_kit.local import FeatureStore, LocalConfig, extract_local


def test_extraction_resumes_after_interruption(tiny_competition, tmp_path):
    ids = pd.read_csv(tiny_competition / "train.csv", dtype={"id": str})["id"].tolist()[:20]
    cfg = LocalConfig(shard_size=6, workers=0, max_keypoints=300)
    full = extract_local(cfg, tiny_competition, "train", ids, tmp_path / "a", progress=False)
    reference = full.load_all()
    assert set(reference) == set(ids) and len(full.shards()) == 4
    assert all(len(f.keypoints) == len(f.descriptors) > 20 for f in reference.values())
    # "kill" after two shards: extract the first 12 ids, then ask for all 20
    part = extract_local(cfg, tiny_competition, "train", ids[:12], tmp_path / "b", progress=False)
    stamps = [p.stat().st_mtime_ns for p in part.shards()]
    resumed = extract_local(cfg, tiny_competition, "train", ids, tmp_path / "b", progress=False)
    assert [p.stat().st_mtime_ns for p in resumed.shards()[:2]] == stamps
    again = FeatureStore(resumed.folder).load_all()
    for i in ids:
        assert np.allclose(again[i].keypoints, reference[i].keypoints)
        assert np.allclose(again[i].descriptors, reference[i].descriptors, atol=1e-3)  # float16 storage
    assert not list((tmp_path / "b").rglob(".*tmp*"))


def test_changed_config_gets_its_own_cache(tiny_competition, tmp_path):
    ids = pd.read_csv(tiny_competition / "train.csv", dtype={"id": str})["id"].tolist()[:3]
    a = extract_local(LocalConfig(workers=0, max_keypoints=100), tiny_competition, "train", ids, tmp_path)
    b = extract_local(LocalConfig(workers=0, max_keypoints=200), tiny_competition, "train", ids, tmp_path)
    assert a.folder != b.folder
    assert max(len(f.keypoints) for f in a.load_all().values()) <= 100
