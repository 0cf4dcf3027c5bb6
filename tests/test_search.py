"""faiss search returns exactly what brute-force numpy does."""

from __future__ import annotations

import numpy as np

from landmark_kit.search import knn


def test_knn_equals_numpy_brute_force_in_chunks():
    rng = np.random.default_rng(0)
    db = rng.normal(size=(500, 32)).astype(np.float32)
    q = rng.normal(size=(77, 32)).astype(np.float32)
    scores, ids = knn(q, db, 10, chunk=16)
    sims = q @ db.T
    expected = np.argsort(-sims, axis=1)[:, :10]
    assert np.array_equal(ids, expected)
    assert np.allclose(scores, np.take_along_axis(sims, expected, 1), atol=1e-4)


def test_knn_pads_when_database_is_small():
    scores, ids = knn(np.ones((2, 4), np.float32), np.eye(4, dtype=np.float32)[:3], 5)
    assert (ids[:, 3:] == -1).all() and set(ids[0, :3]) == {0, 1, 2}
