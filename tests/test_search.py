"""faiss search returns exactly what brute-force numpy does."""

from __future__ import annotations

import numpy as np
import pytest

from landmark_kit.search import knn


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_knn_equals_numpy_brute_force_in_chunks(backend, monkeypatch):
    import landmark_kit.search as search

    rng = np.random.default_rng(0)
    db = rng.normal(size=(500, 32)).astype(np.float32)
    q = rng.normal(size=(77, 32)).astype(np.float32)
    blocked = search._torch_flat
    monkeypatch.setattr(search, "_torch_flat", lambda *a, **k: blocked(*a, **k, query_block=16, db_block=64))
    scores, ids = knn(q, db, 10, chunk=16, backend=backend)
    sims = q @ db.T
    expected = np.argsort(-sims, axis=1)[:, :10]
    assert np.array_equal(ids, expected)
    assert np.allclose(scores, np.take_along_axis(sims, expected, 1), atol=1e-4)


def test_a_database_over_the_resident_limit_is_streamed_from_its_memory_map(tmp_path, monkeypatch):
    """float16 store memory-mapped, float32 copy over ``resident_bytes``: blocks are read per query block
    (never all at once) and the neighbours are the resident search's."""
    import landmark_kit.search as search

    rng = np.random.default_rng(1)
    np.save(tmp_path / "db.npy", rng.normal(size=(300, 16)).astype(np.float16))
    db = np.load(tmp_path / "db.npy", mmap_mode="r")
    q = rng.normal(size=(40, 16)).astype(np.float32)
    reads = []
    original = search.np.require
    monkeypatch.setattr(search.np, "require", lambda a, **k: reads.append(len(a)) or original(a, **k))
    resident = search._torch_flat(q, db, 7, False, query_block=16, db_block=128)
    assert reads == [128, 128, 44]  # widened once
    reads.clear()
    streamed = search._torch_flat(q, db, 7, False, query_block=16, db_block=128, resident_bytes=0)
    assert reads == [128, 128, 44] * 3  # three query blocks, each reading the database again
    assert np.array_equal(resident[1], streamed[1]) and np.array_equal(resident[0], streamed[0])


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_knn_pads_when_database_is_small(backend):
    scores, ids = knn(np.ones((2, 4), np.float32), np.eye(4, dtype=np.float32)[:3], 5, backend=backend)
    assert (ids[:, 3:] == -1).all() and set(ids[0, :3]) == {0, 1, 2}


def test_ivf_with_every_list_probed_is_exact_and_pq_keeps_most_neighbours():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(40, 32)).astype(np.float32)
    db = (centres[rng.integers(0, 40, 4000)] + 0.3 * rng.normal(size=(4000, 32))).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = db[:50] + 0.05 * rng.normal(size=(50, 32)).astype(np.float32)
    _, exact = knn(q, db, 10)
    half = db.astype(np.float16)  # a float16 store is converted chunk by chunk, same result as converted whole
    assert np.array_equal(knn(q, half, 10, chunk=1000)[1], knn(q, half.astype(np.float32), 10)[1])
    _, ivf = knn(q, db, 10, index="IVF16,Flat", nprobe=16)
    assert np.array_equal(np.sort(ivf, 1), np.sort(exact, 1))
    _, pq = knn(q, db, 10, index="IVF16,PQ16x8", nprobe=16)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(pq, exact)])
    assert 0.5 < recall <= 1.0
