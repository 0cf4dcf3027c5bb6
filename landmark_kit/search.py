"""Exact k-nearest-neighbour search by inner product with faiss (GPU when available), chunked queries."""

from __future__ import annotations

import logging

import numpy as np

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its INFO lines list every missing SIMD build


def _index(dim: int, use_gpu: bool | None):
    import faiss

    index = faiss.IndexFlatIP(dim)
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpus and use_gpu is not False:
        index = faiss.index_cpu_to_all_gpus(index)
    return index


def knn(
    queries: np.ndarray, database: np.ndarray, k: int, chunk: int = 65536, use_gpu: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` database rows by inner product for every query: (scores, indices), each ``(Q, k)``.

    With fewer than ``k`` database rows the extra columns hold index -1 and a very low score (faiss's padding).
    Queries are searched in chunks so memory stays bounded for 100k+ queries.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    database = np.ascontiguousarray(database, dtype=np.float32)
    if queries.ndim != 2 or database.ndim != 2 or queries.shape[1] != database.shape[1]:
        raise ValueError(f"shape mismatch: queries {queries.shape}, database {database.shape}")
    index = _index(database.shape[1], use_gpu)
    index.add(database)
    scores = np.empty((len(queries), k), np.float32)
    ids = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), chunk):
        s, i = index.search(queries[start : start + chunk], k)
        scores[start : start + chunk], ids[start : start + chunk] = s, i
    return scores, ids
