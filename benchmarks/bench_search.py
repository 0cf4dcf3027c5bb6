"""Exact inner-product search (``landmark_kit.search.knn``) against a dense matrix product of the same shapes.

The limit: ``queries @ database.T`` with torch (the BLAS floor for the same FLOPs, 2 Q N D); search adds the
top-k selection and the blocking. Reported: GFLOP/s of the product, of ``knn``'s torch backend and of
faiss's flat index, their ratios to the product (target >= 0.9), the backend ``knn(backend="auto")`` picks
here (``search.choose_backend``: a short measurement of both), and, with ``--index``, an
approximate faiss index's time and recall@k against the exact result. The database is clustered (centres +
noise), as descriptors of landmark photos are; uniform random vectors make every IVF/PQ index look useless.

    python benchmarks/bench_search.py [--queries 4096 --database 100000 --dim 512 --k 100 --index IVF1024,PQ64]

``--record`` appends the result to ``benchmarks/results/search.jsonl`` and renders ``search.md``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from landmark_kit import ledger
from landmark_kit.search import choose_backend, knn


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """Shortest of ``repeat`` wall-clock timings of ``fn()``: the least disturbed by other load."""
    times = []
    for _ in range(max(repeat, 1)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


COLUMNS = {
    "device": "device", "shape (Q x N x D, k)": lambda r: f"{r['queries']:,} x {r['database']:,} x {r['dim']}, {r['k']}",
    "store": "store_dtype", "product GFLOP/s (limit)": "matmul_gflops", "`knn` GFLOP/s": "knn_gflops",
    "ratio": "ratio", "faiss flat GFLOP/s": "faiss_flat_gflops", "`auto` picks": "auto_backend",
    "approximate index": lambda r: (f"{r['index']} nprobe {r['nprobe']}: {r['index_s']} s, recall@k "
                                    f"{r['recall_at_k']}") if r.get("index") else "",
}


TABLE = ledger.Table("search", COLUMNS,
                     "Exact search against a plain torch product of the same shapes, best of `--repeat` timings each "
                     "(target ratio >= 0.9).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=4096)
    ap.add_argument("--database", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--index", help="also time an approximate faiss index, e.g. IVF1024,PQ64")
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--store-dtype", default="float16", choices=["float16", "float32"],
                    help="dtype of the database as knn receives it (stage 03 stores float16 by default)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N timings for each contender (shared machines)")
    args = ledger.parse_args(ap, TABLE)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((max(args.database // 50, 1), args.dim), dtype=np.float32)
    db = centres[rng.integers(0, len(centres), args.database)]
    db += 0.5 * rng.standard_normal(db.shape, dtype=np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = db[rng.integers(0, args.database, args.queries)] + 0.1 * rng.standard_normal((args.queries, args.dim),
                                                                                      dtype=np.float32)
    flops = 2.0 * args.queries * args.database * args.dim
    stored = db.astype(args.store_dtype)  # what knn reads; the limit multiplies the same values in float32
    db = stored.astype(np.float32)

    device = "cuda" if torch.cuda.is_available() else "cpu"  # where knn's torch backend runs
    qt, dbt = torch.from_numpy(q).to(device), torch.from_numpy(db).to(device)
    torch.mm(qt[:256], dbt.T).sum().item()  # warm-up

    block = 4096 if device == "cuda" else 1024  # the query blocks knn uses; bounded memory

    def product() -> None:
        for s in range(0, args.queries, block):
            torch.mm(qt[s: s + block], dbt.T)
        if device == "cuda":
            torch.cuda.synchronize()

    matmul = best_of(product, args.repeat)
    search = best_of(lambda: knn(q, stored, args.k, backend="torch"), args.repeat)
    _, exact = knn(q, stored, args.k, backend="torch")
    faiss_flat = best_of(lambda: knn(q, db, args.k, backend="faiss"), args.repeat)
    report = {"queries": args.queries, "database": args.database, "dim": args.dim, "k": args.k,
              "device": device, "store_dtype": args.store_dtype, "repeat": args.repeat,
              "threads": torch.get_num_threads(), "matmul_gflops": round(flops / matmul / 1e9, 1),
              "knn_gflops": round(flops / search / 1e9, 1), "ratio": round(matmul / search, 3),
              "faiss_flat_gflops": round(flops / faiss_flat / 1e9, 1), "faiss_ratio": round(matmul / faiss_flat, 3),
              "auto_backend": choose_backend(q, stored, args.k)}
    if args.index:
        start = time.perf_counter()
        _, approx = knn(q, db, args.k, index=args.index, nprobe=args.nprobe)
        report.update({"index": args.index, "nprobe": args.nprobe, "index_s": round(time.perf_counter() - start, 2),
                       "flat_s": round(search, 2),
                       "recall_at_k": round(float(np.mean([len(set(a) & set(b)) / args.k
                                                            for a, b in zip(approx, exact)])), 4)})
    ledger.publish(TABLE, [report], args.record)


if __name__ == "__main__":
    main()
