"""k-nearest-neighbour search by inner product, exact or approximate, in bounded memory.

``index="Flat"`` is exact, by one of two backends: a blocked torch matrix product + top-k (CUDA when present)
or faiss's flat index (all GPUs with faiss-gpu, see requirements-gpu.txt). Which is faster depends on the
machine and its BLAS (``benchmarks/bench_search.py``: faiss-cpu's flat index ran at 0.24 of the product on
one 2-core host and 1.05 on another), so ``backend="auto"`` (the default) takes a recorded choice from
``$LANDMARK_KIT_SEARCH_BACKEND`` or measures both once per process on a sample of the first large search.
Any other faiss factory string (``"IVF1024,PQ64"``, ``"IVF4096,Flat"``, ...) builds an approximate faiss index
trained on (a sample of) the database and searched with ``nprobe`` lists, for databases that do not fit in
memory as float32.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from typing import Callable

import numpy as np
import torch

from .recipes import add_plugin

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its INFO lines list every missing SIMD build
log = logging.getLogger(__name__)
RESIDENT_BYTES = 4 << 30  # exact search keeps a float32 database up to this size in memory, streams beyond
BACKEND_ENV = "LANDMARK_KIT_SEARCH_BACKEND"  # torch or faiss: a recorded choice instead of the measurement
MEASURE_ABOVE = 2e10  # FLOP of a search (2 Q N D) from which "auto" measures; smaller ones take torch
FAISS_MARGIN = 1.25  # faiss is chosen only when this much faster: a near tie keeps the default path
_chosen: dict[str, str] = {}  # device -> backend measured in this process


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


def _faiss_flat(queries: np.ndarray, database: np.ndarray, k: int, use_gpu: bool | None) -> None:
    index = _index(database.shape[1], use_gpu)
    index.add(np.ascontiguousarray(database, dtype=np.float32))
    index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def _faiss_search(queries: np.ndarray, database: np.ndarray, k: int, use_gpu: bool | None, spec: str, chunk: int,
                  nprobe: int = 16, train_size: int = 262144, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top-k through a faiss index built from the factory string ``spec`` (trained on a sample of up to
    ``train_size`` rows when it needs training), the database added and the queries searched in chunks."""
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


ExactSearch = Callable[[np.ndarray, np.ndarray, int, "bool | None", int, int], tuple[np.ndarray, np.ndarray]]
BACKENDS: dict[str, ExactSearch] = {}  # exact-search backends by name, in registration order


def register_search_backend(name: str) -> Callable[[ExactSearch], ExactSearch]:
    """Decorator: ``search(queries, database, k, use_gpu, chunk, resident_bytes) -> (scores, ids)`` becomes the
    exact-search backend ``name`` (``knn(backend=name)``, ``$LANDMARK_KIT_SEARCH_BACKEND``)."""
    def add(search: ExactSearch) -> ExactSearch:
        add_plugin(BACKENDS, name, search, "search backend")
        return search

    return add


@register_search_backend("torch")
def _torch_exact(queries: np.ndarray, database: np.ndarray, k: int, use_gpu: bool | None, chunk: int,
                 resident_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    return _torch_flat(queries, database, k, use_gpu, resident_bytes=resident_bytes)


@register_search_backend("faiss")
def _faiss_exact(queries: np.ndarray, database: np.ndarray, k: int, use_gpu: bool | None, chunk: int,
                 resident_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    return _faiss_search(queries, database, k, use_gpu, "Flat", chunk)


def _choices(*names: str) -> str:
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


def choose_backend(queries: np.ndarray, database: np.ndarray, k: int, use_gpu: bool | None = None) -> str:
    """The exact backend for this search: ``$LANDMARK_KIT_SEARCH_BACKEND`` when set, torch for a small search
    or without faiss, else the faster of torch and faiss on a sample of it (up to 512 queries x 32768 rows,
    best of two runs each), measured once per process and device; faiss must win by ``FAISS_MARGIN``."""
    recorded = os.environ.get(BACKEND_ENV, "").strip()
    if recorded:
        if recorded not in BACKENDS:
            raise ValueError(f"${BACKEND_ENV}={recorded!r}: choose {_choices(*BACKENDS)}")
        return recorded
    device = "cuda" if torch.cuda.is_available() and use_gpu is not False else "cpu"
    if device in _chosen:
        return _chosen[device]
    if 2.0 * len(queries) * len(database) * database.shape[1] < MEASURE_ABOVE:
        return "torch"
    if importlib.util.find_spec("faiss") is None:
        _chosen[device] = "torch"
        return "torch"
    q = np.ascontiguousarray(queries[:512], dtype=np.float32)
    db = np.ascontiguousarray(database[:32768], dtype=np.float32)
    kk = min(k, len(db))
    seconds = {}
    for name, run in (("torch", lambda: _torch_flat(q, db, kk, use_gpu)), ("faiss", lambda: _faiss_flat(q, db, kk, use_gpu))):
        times = []
        for _ in range(2):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        seconds[name] = min(times)
    _chosen[device] = "faiss" if seconds["faiss"] * FAISS_MARGIN < seconds["torch"] else "torch"
    log.info("exact search backend on %s: %s (torch %.3f s, faiss %.3f s on %d x %d x %d)", device, _chosen[device],
             seconds["torch"], seconds["faiss"], len(q), len(db), db.shape[1])
    return _chosen[device]


def knn(
    queries: np.ndarray, database: np.ndarray, k: int, chunk: int = 65536, use_gpu: bool | None = None,
    index: str = "Flat", nprobe: int = 16, train_size: int = 262144, seed: int = 0, backend: str = "auto",
    resident_bytes: int = RESIDENT_BYTES,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` database rows by inner product for every query: (scores, indices), each ``(Q, k)``.

    With fewer than ``k`` database rows the extra columns hold index -1 and a very low score (faiss's padding).
    Queries are searched and the database added in chunks (a float16 memory-map is converted chunk by chunk),
    so memory stays bounded for 100k+ queries; with a compressed index the float32 database never exists. The
    exact torch search streams databases whose float32 copy exceeds ``resident_bytes`` (a GLDv2 train set of
    six members: 1.6M x 3072 floats = 20 GB) block by block from their memory map. ``backend`` (exact search):
    a registered one (``torch``, ``faiss``: :func:`register_search_backend`) or ``auto`` (:func:`choose_backend`).

    Args:
        queries: ``(Q, D)`` descriptors (L2-normalised for cosine similarity).
        database: ``(N, D)`` descriptors, an array or a memory map.
        k: neighbours per query.
        chunk: queries (and database rows) per block.
        use_gpu: search on CUDA (default: when present).
        index: ``Flat`` (exact) or a faiss factory string such as ``IVF4096,PQ64`` (approximate).
        nprobe: lists visited per query by an IVF index.
        train_size: database rows sampled to train a compressed index.
        seed: the sampling seed for that training.
        backend: the exact search's backend (see above).
        resident_bytes: the largest float32 database held in memory; larger ones stream from the map.
    """
    if queries.ndim != 2 or database.ndim != 2 or queries.shape[1] != database.shape[1]:
        raise ValueError(f"shape mismatch: queries {queries.shape}, database {database.shape}")
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"unknown search backend {backend!r}; choose {_choices('auto', *BACKENDS)}")
    if index != "Flat":
        return _faiss_search(queries, database, k, use_gpu, index, chunk, nprobe, train_size, seed)
    if backend == "auto":
        backend = choose_backend(queries, database, k, use_gpu)
    return BACKENDS[backend](queries, database, k, use_gpu, chunk, resident_bytes)
