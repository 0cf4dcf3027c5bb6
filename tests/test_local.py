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


def test_kornia_sift_backend_matches_a_known_homography():
    import cv2

    from landmark_kit.local import kornia_sift_batch
    from landmark_kit.verify import VerifyConfig, verify_pair
    from test_verify import H, _texture

    a = cv2.cvtColor(_texture(0, (240, 320)), cv2.COLOR_RGB2GRAY)
    b = cv2.warpPerspective(a, H, (a.shape[1], a.shape[0]))
    fa, fb = kornia_sift_batch([a, b], 300, "cpu")
    assert fa.keypoints.shape[1] == 4 and fa.descriptors.shape == (len(fa.keypoints), 128)
    assert np.allclose(np.linalg.norm(fa.descriptors, axis=1), 1, atol=1e-3)  # RootSIFT is unit-norm
    assert verify_pair(fa, fb, VerifyConfig()) >= 50


def test_kornia_backend_through_the_cache(tiny_competition, tmp_path):
    ids = pd.read_csv(tiny_competition / "train.csv", dtype={"id": str})["id"].tolist()[:2]
    store = extract_local(LocalConfig(backend="kornia-sift", max_keypoints=100, max_side=256, device="cpu"),
                          tiny_competition, "train", ids, tmp_path, progress=False)
    feats = store.load_all()
    assert set(feats) == set(ids) and all(0 < len(f.keypoints) <= 100 for f in feats.values())


def test_asift_survives_a_grazing_view():
    """A facade squeezed to a quarter of its width (~75 degrees): plain SIFT barely matches, ASIFT does."""
    import cv2
    from PIL import Image

    from landmark_kit.local import rootsift
    from landmark_kit.verify import VerifyConfig, verify_pair
    from test_verify import _texture

    a = _texture(0, (300, 400))
    corners = np.float32([[0, 0], [400, 0], [400, 300], [0, 300]])
    squeezed = np.float32([[130, 10], [250, 60], [250, 240], [130, 290]])
    b = cv2.warpPerspective(a, cv2.getPerspectiveTransform(corners, squeezed), (400, 300))
    cfg = VerifyConfig(device="cpu")
    plain = verify_pair(rootsift(Image.fromarray(a)), rootsift(Image.fromarray(b)), cfg)
    asift = verify_pair(rootsift(Image.fromarray(a), affine_tilts=2), rootsift(Image.fromarray(b), affine_tilts=2), cfg)
    assert plain < 30 and asift >= 50


def test_kornia_backend_refuses_asift():
    import pytest

    with pytest.raises(ValueError, match="affine_tilts"):
        extract_local(LocalConfig(backend="kornia-sift", affine_tilts=2), ".", "train", [], "/tmp/unused")


def test_cache_key_holds_only_what_changes_the_features(tmp_path):
    base = LocalConfig()
    assert LocalConfig(scales=(1.0,), workers=7, device="cpu").cache_key() == base.cache_key()  # delg / runtime
    assert LocalConfig(affine_tilts=2).cache_key() != base.cache_key()
    assert LocalConfig(backend="kornia-sift", contrast_threshold=0.01).cache_key() == \
        LocalConfig(backend="kornia-sift").cache_key()
    model = tmp_path / "model.pt"
    model.write_bytes(b"one")
    first = LocalConfig(backend="delg", checkpoint=str(model)).cache_key()
    model.write_bytes(b"two")  # same path, new weights: a new cache
    assert LocalConfig(backend="delg", checkpoint=str(model)).cache_key() != first


def test_a_backend_is_one_decorated_function_and_unknown_names_list_the_registered(tiny_competition, tmp_path,
                                                                                      monkeypatch):
    import importlib

    import pytest

    from landmark_kit import local

    monkeypatch.setattr(local, "BACKENDS", dict(local.BACKENDS))  # registrations of this test stay here

    @local.register_backend("corners", key=lambda cfg: {"grid": 4})
    def corners(cfg, data_root, split, todo, store, progress, source=None):
        kp = np.array([[0, 0, 1, 0], [10, 10, 1, 0]], np.float32)
        store.write_shard(todo, [local.Features(kp, np.eye(2, 128, dtype=np.float32), (20, 20)) for _ in todo], {})
        return store

    ids = pd.read_csv(tiny_competition / "train.csv", dtype={"id": str})["id"].tolist()[:3]
    store = extract_local(LocalConfig(backend="corners"), tiny_competition, "train", ids, tmp_path)
    assert store.folder.parent.name.startswith("corners-") and len(store.load_all()[ids[0]].keypoints) == 2
    assert LocalConfig(backend="corners").cache_key()["grid"] == 4
    with pytest.raises(ValueError, match="registered twice"):
        local.register_backend("corners")(corners)
    with pytest.raises(ValueError, match=r"unknown local-feature backend 'nope'; choose one of \[.*'corners'.*"
                                         r"'rootsift'"):
        LocalConfig(backend="nope").cache_key()
    imported = []

    def fake_import(name):  # a module landmark_kit/local_<name>.py registering itself on import
        imported.append(name)
        local.register_backend("lazy")(corners)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    assert local.backend("lazy").extract is corners and imported == ["landmark_kit.local_lazy"]
