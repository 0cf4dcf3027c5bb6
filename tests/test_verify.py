"""Matching and RANSAC on a synthetic pair with a known homography: inliers found, outliers rejected."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from landmark_kit.local import rootsift
from landmark_kit.verify import VerifyConfig, _verify_gpu, match_batch, match_descriptors, verify_pair, verify_pairs


def _texture(seed: int, size=(360, 480)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((*size, 3), 128, np.uint8)
    for _ in range(120):
        c = tuple(int(v) for v in rng.integers(0, 255, 3))
        x, y = int(rng.integers(0, size[1])), int(rng.integers(0, size[0]))
        cv2.circle(img, (x, y), int(rng.integers(3, 20)), c, -1)
        cv2.rectangle(img, (x, y), (x + int(rng.integers(4, 30)), y + int(rng.integers(4, 30))), c[::-1], 2)
    return img


H = np.array([[0.9, 0.12, 20.0], [-0.08, 1.05, 10.0], [2e-4, -1e-4, 1.0]])


def test_known_homography_is_recovered_and_unrelated_image_rejected():
    a = _texture(0)
    b = cv2.warpPerspective(a, H, (a.shape[1], a.shape[0]))
    other = _texture(1)
    fa, fb, fo = (rootsift(Image.fromarray(x)) for x in (a, b, other))
    cfg = VerifyConfig(model="homography")
    assert verify_pair(fa, fb, cfg) >= 100
    assert verify_pair(fa, fo, cfg) < 15
    # the matches that survive are those the true homography maps onto each other
    m = match_descriptors(fa.descriptors, fb.descriptors)
    proj = cv2.perspectiveTransform(fa.keypoints[m[:, 0], None, :2].astype(np.float64), H)[:, 0]
    err = np.linalg.norm(proj - fb.keypoints[m[:, 1], :2], axis=1)
    assert np.mean(err < 4) > 0.7


@pytest.mark.parametrize("model", ["affine", "degensac-homography", "degensac-fundamental"])
def test_other_geometric_models(model):
    a = _texture(2)
    b = cv2.warpAffine(a, np.array([[0.95, 0.05, 12.0], [-0.05, 0.95, 8.0]]), (a.shape[1], a.shape[0]))
    fa, fb = rootsift(Image.fromarray(a)), rootsift(Image.fromarray(b))
    assert verify_pair(fa, fb, VerifyConfig(model=model)) >= 60


def test_mutual_ratio_matching_on_hand_made_descriptors():
    a = np.eye(4, 8, dtype=np.float32)
    b = np.eye(4, 8, dtype=np.float32)[[2, 0, 3, 1]]
    m = match_descriptors(a, b, ratio=0.9)
    assert sorted(map(tuple, m.tolist())) == [(0, 1), (1, 3), (2, 0), (3, 2)]
    # an ambiguous descriptor (equidistant to two) fails the ratio test
    b2 = np.vstack([b, b[0]])
    assert 2 not in match_descriptors(a, b2, ratio=0.9)[:, 0]


def _reference_matches(a: np.ndarray, b: np.ndarray, ratio: float) -> set:
    """Literal mutual-NN + ratio test, one descriptor at a time."""
    dist = np.linalg.norm(a[:, None] - b[None], axis=2)
    out = set()
    for i, row in enumerate(dist):
        j, k = np.argsort(row)[:2]
        if row[j] < ratio * row[k] and dist[:, j].argmin() == i:
            out.add((i, j))
    return out


def test_batched_matching_equals_reference_with_padding():
    rng = np.random.default_rng(0)
    pairs = []
    for na, nb in [(30, 50), (50, 20), (1, 10), (12, 12)]:
        a = rng.standard_normal((na, 16)).astype(np.float32)
        b = np.vstack([a[: min(na, nb) // 2] + 0.1 * rng.standard_normal((min(na, nb) // 2, 16)),
                       rng.standard_normal((nb - min(na, nb) // 2, 16))]).astype(np.float32)
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        pairs.append((a, b))
    batched = match_batch(pairs, ratio=0.85)
    for (a, b), m in zip(pairs, batched):
        assert set(map(tuple, m.tolist())) == _reference_matches(a, b, 0.85)
        assert set(map(tuple, match_descriptors(a, b, 0.85).tolist())) == set(map(tuple, m.tolist()))
    assert sum(len(m) for m in batched) > 10


def test_gpu_path_equals_cpu_path_on_cpu_tensors():
    """The batched-matching path (used with CUDA) gives the per-pair path's inliers; run here on CPU tensors."""
    feats = {f"{i:016x}": rootsift(Image.fromarray(_texture(i % 2, (200, 240)))) for i in range(4)}
    ids = list(feats)
    pairs = [(ids[i], ids[j]) for i in range(4) for j in range(i + 1, 4)]
    cfg = VerifyConfig(workers=1, gpu_batch=4)
    batched = [n for chunk in _verify_gpu(pairs, feats, feats, cfg, "cpu", chunk=2) for n in chunk]
    assert batched == verify_pairs(pairs, feats, VerifyConfig(workers=1, device="cpu")).tolist()


def test_parallel_equals_serial_and_unknown_model_refused():
    feats = {f"{i:016x}": rootsift(Image.fromarray(_texture(i % 2, (200, 240)))) for i in range(4)}
    ids = list(feats)
    pairs = [(ids[i], ids[j]) for i in range(4) for j in range(i + 1, 4)]
    serial = verify_pairs(pairs, feats, VerifyConfig(workers=1))
    assert np.array_equal(serial, verify_pairs(pairs, feats, VerifyConfig(workers=2), chunk=2))
    assert serial[pairs.index((ids[0], ids[2]))] > 50 and serial[pairs.index((ids[0], ids[1]))] < 15
    with pytest.raises(ValueError, match="unknown geometric model"):
        verify_pairs(pairs, feats, VerifyConfig(model="similarity"))


def test_two_stores_verify_in_worker_processes_like_the_dicts(tmp_path):
    """Queries in one split's store, database images in another: worker processes read each chunk's features
    from the memory-mapped shards and give the in-memory result; ids missing from a store are named."""
    from landmark_kit.local import FeatureStore

    feats = {f"{i:016x}": rootsift(Image.fromarray(_texture(i % 3, (200, 240)))) for i in range(6)}
    ids = list(feats)
    queries, database = FeatureStore(tmp_path / "test"), FeatureStore(tmp_path / "train")
    queries.write_shard(ids[:2], [feats[i] for i in ids[:2]])
    for start in (2, 4):  # two shards
        database.write_shard(ids[start: start + 2], [feats[i] for i in ids[start: start + 2]])
    pairs = [(a, b) for a in ids[:2] for b in ids[2:]]
    expected = verify_pairs(pairs, feats, VerifyConfig(workers=1))
    got = verify_pairs(pairs, queries, VerifyConfig(workers=2, device="cpu"), chunk=2, db_feats=database)
    assert np.array_equal(expected, got) and expected.max() > 50
    assert set(database.get([ids[3], ids[4]])) == {ids[3], ids[4]}
    with pytest.raises(KeyError, match=ids[0]):
        database.get([ids[0]])
