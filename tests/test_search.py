"""faiss search returns exactly what brute-force numpy does."""

from __future__ import annotations

import numpy as np
import pytest

from landmark_kit.search import knn


@pytest.mark.parametrize("backend", ["torch", "faiss", "auto"])
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


def test_auto_backend_follows_a_measurement_or_the_recorded_choice(monkeypatch):
    """The slower backend loses whichever it is; the choice is kept for the process; a small search or a
    recorded choice ($LANDMARK_KIT_SEARCH_BACKEND) measures nothing."""
    import time

    import landmark_kit.search as search

    rng = np.random.default_rng(3)
    q, db = rng.normal(size=(20, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)
    monkeypatch.delenv(search.BACKEND_ENV, raising=False)
    monkeypatch.setattr(search, "_chosen", {})
    assert search.choose_backend(q, db, 5) == "torch" and search._chosen == {}  # too small to measure
    monkeypatch.setattr(search, "MEASURE_ABOVE", 0)
    torch_flat, faiss_flat = search._torch_flat, search._faiss_flat
    monkeypatch.setattr(search, "_torch_flat", lambda *a, **k: time.sleep(0.05) or torch_flat(*a, **k))
    assert search.choose_backend(q, db, 5) == "faiss"
    monkeypatch.setattr(search, "_torch_flat", torch_flat)
    assert search.choose_backend(q, db, 5) == "faiss"  # measured once per process
    monkeypatch.setattr(search, "_chosen", {})
    monkeypatch.setattr(search, "_faiss_flat", lambda *a, **k: time.sleep(0.05) or faiss_flat(*a, **k))
    assert search.choose_backend(q, db, 5) == "torch"
    monkeypatch.setenv(search.BACKEND_ENV, "faiss")
    assert search.choose_backend(q, db, 5) == "faiss"
    monkeypatch.setenv(search.BACKEND_ENV, "gpu")
    with pytest.raises(ValueError, match="choose torch or faiss"):
        knn(q, db, 5)


def test_an_exact_search_backend_is_one_decorated_function(monkeypatch):
    import landmark_kit.search as search

    monkeypatch.setattr(search, "BACKENDS", dict(search.BACKENDS))  # registrations of this test stay here
    calls = []

    @search.register_search_backend("numpy")
    def brute(queries, database, k, use_gpu, chunk, resident_bytes):
        calls.append(k)
        ids = np.argsort(-(queries @ database.T), axis=1)[:, :k]
        return np.take_along_axis(queries @ database.T, ids, 1), ids

    rng = np.random.default_rng(4)
    q, db = rng.normal(size=(6, 8)).astype(np.float32), rng.normal(size=(30, 8)).astype(np.float32)
    assert np.array_equal(knn(q, db, 4, backend="numpy")[1], knn(q, db, 4, backend="torch")[1]) and calls == [4]
    monkeypatch.setenv(search.BACKEND_ENV, "numpy")
    assert search.choose_backend(q, db, 4) == "numpy"
    with pytest.raises(ValueError, match="unknown search backend 'gpu'; choose auto, torch, faiss or numpy"):
        knn(q, db, 4, backend="gpu")
    with pytest.raises(ValueError, match="registered twice"):
        search.register_search_backend("numpy")(brute)
