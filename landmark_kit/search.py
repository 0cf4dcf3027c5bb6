"""k-nearest-neighbour search by inner product, exact or approximate, in bounded memory.

``index="Flat"`` is exact. Its default backend is a blocked torch matrix product + top-k (CUDA when present):
on the 2-core dev machine that runs at ~160 GFLOP/s where the faiss-cpu wheel's flat index reaches ~50
(``benchmarks/bench_search.py``); ``backend="faiss"`` uses faiss's flat index instead (all GPUs with
faiss-gpu). Any other faiss factory string (``"IVF1024,PQ64"``, ``"IVF4096,Flat"``, ...) builds an
approximate faiss index trained on (a sample of) the database and searched with ``nprobe`` lists, for
databases that do not fit in memory as float32.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its INFO lines list every missing SIMD build
RESIDENT_BYTES = 4 << 30  # exact search keeps a float32 database up to this size in memory, streams beyond


def _index(dim: int, use_gpu: bool | None, spec: str = "Flat"):
    import faiss

    index = faiss.IndexFlatIP(dim) if spec == "Flat" else faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpus and use_gpu is not False:
        index = faiss.index_cpu_to_all_gpus(index)
    return index


def _torch_flat(queries: np.ndarray, database: np.ndarray, k: int, use_gpu: bool | None,
                query_block: int | None = None, db_block: int = 131072,
                resident_bytes: int = RESIDENT_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by blocks: a (query_block x db_block) product at a time, merged into a running top-k.
    Database rows travel to the device in their stored dtype (float16 stores: half the PCIe bytes) and are
    widened there; a GPU takes 4096 queries per block (a 2 GB score buffer), a CPU 1024. A database whose
    float32 copy fits in ``resident_bytes`` is widened once and kept on the device; a larger one is read from
    its (memory-mapped) array block by block for every query block, so memory stays at two blocks."""
    device = "cuda" if torch.cuda.is_available() and use_gpu is not False else "cpu"
    query_block = query_block or (4096 if device == "cuda" else 1024)
    kk = min(k, len(database))
    starts = range(0, len(database), db_block)

    def load(s: int) -> torch.Tensor:  # read-only memory-maps are copied, one block at a time
        return torch.from_numpy(np.require(database[s: s + db_block], requirements="CW")).to(device).float()

    resident = [load(s) for s in starts] if database.shape[0] * database.shape[1] * 4 <= resident_bytes else None
    scores = np.full((len(queries), k), -np.finfo(np.float32).max, np.float32)
    ids = np.full((len(queries), k), -1, np.int64)
    # One score buffer reused for every block: a fresh 0.5 GB product per block costs more in page faults than
    # the top-k selection (bench_search: ratio 0.8 -> 0.95 on the 2-core dev machine).
    buffer = torch.empty(min(query_block, len(queries)) * min(db_block, len(database)), device=device)
    for start in range(0, len(queries), query_block):
        q = torch.from_numpy(np.ascontiguousarray(queries[start: start + query_block], dtype=np.float32)).to(device)
        best_s = torch.empty((len(q), 0), device=device)
        best_i = torch.empty((len(q), 0), dtype=torch.long, device=device)
        offset = 0
        for block in resident if resident is not None else map(load, starts):
            product = torch.mm(q, block.T, out=buffer[: len(q) * len(block)].view(len(q), len(block)))
            s, i = product.topk(min(kk, len(block)), dim=1)
            best_s, order = torch.cat([best_s, s], 1).topk(min(kk, best_s.shape[1] + s.shape[1]), dim=1)
            best_i = torch.gather(torch.cat([best_i, i + offset], 1), 1, order)
            offset += len(block)
        scores[start: start + len(q), :kk] = best_s.cpu().numpy()
        ids[start: start + len(q), :kk] = best_i.cpu().numpy()
    return scores, ids


def knn(
    queries: np.ndarray, database: np.ndarray, k: int, chunk: int = 65536, use_gpu: bool | None = None,
    index: str = "Flat", nprobe: int = 16, train_size: int = 262144, seed: int = 0, backend: str = "torch",
    resident_bytes: int = RESIDENT_BYTES,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` database rows by inner product for every query: (scores, indices), each ``(Q, k)``.

    With fewer than ``k`` database rows the extra columns hold index -1 and a very low score (faiss's padding).
    Queries are searched and the database added in chunks (a float16 memory-map is converted chunk by chunk),
    so memory stays bounded for 100k+ queries; with a compressed index the float32 database never exists. The
    exact torch search streams databases whose float32 copy exceeds ``resident_bytes`` (a GLDv2 train set of
    six members: 1.6M x 3072 floats = 20 GB) block by block from their memory map.
    """
    if queries.ndim != 2 or database.ndim != 2 or queries.shape[1] != database.shape[1]:
        raise ValueError(f"shape mismatch: queries {queries.shape}, database {database.shape}")
    if backend not in ("torch", "faiss"):
        raise ValueError(f"unknown search backend {backend!r}; choose torch or faiss")
    if index == "Flat" and backend == "torch":
        return _torch_flat(queries, database, k, use_gpu, resident_bytes=resident_bytes)
    spec = index
    index = _index(database.shape[1], use_gpu, spec)
    if not index.is_trained:
        rows = np.arange(len(database))
        if len(database) > train_size:
            rows = np.sort(np.random.default_rng(seed).choice(len(database), train_size, replace=False))
        index.train(np.ascontiguousarray(database[rows], dtype=np.float32))
    if spec != "Flat":
        import faiss

        faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)
    for start in range(0, len(database), chunk):
        index.add(np.ascontiguousarray(database[start: start + chunk], dtype=np.float32))
    scores = np.empty((len(queries), k), np.float32)
    ids = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), chunk):
        s, i = index.search(np.ascontiguousarray(queries[start: start + chunk], dtype=np.float32), k)
        scores[start : start + chunk], ids[start : start + chunk] = s, i
    return scores, ids
