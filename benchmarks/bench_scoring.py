"""Scoring speed at competition size: a 120k-row recognition and a 120k x 100 retrieval submission.

Reports seconds per track and the ratio to reading the same file with pandas (the I/O floor measured in
the same run). Requirement: each track scores in < 10 s on the 2-core dev machine.

    python benchmarks/bench_scoring.py [--queries 120000 --index 760000 --out /tmp/bench_scoring] [--record]

``--record`` appends one row per track to ``benchmarks/results/scoring.jsonl`` and renders ``scoring.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from landmark_kit import ledger
from landmark_kit.scoring import score_files
from landmark_kit.submission import write_recognition, write_retrieval


def _hex_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    raw = rng.integers(0, 2**63, n, dtype=np.int64)
    return np.char.mod("%016x", raw)


def make_files(out: Path, queries: int, index: int, seed: int = 0) -> dict[str, Path]:
    """Random but realistic solution + submission pairs for both tracks."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    test_ids = _hex_ids(rng, queries)
    index_ids = _hex_ids(rng, index)
    usage = np.where(rng.random(queries) < 1 / 3, "Public", "Private")
    labels = rng.integers(0, 200_000, queries)
    is_lm = rng.random(queries) < 0.3
    pd.DataFrame({"id": test_ids, "landmarks": np.where(is_lm, labels.astype(str), ""), "Usage": usage}).to_csv(
        out / "rec_solution.csv", index=False
    )
    pred = np.where(rng.random(queries) < 0.5, labels, rng.integers(0, 200_000, queries))
    write_recognition(out / "rec_submission.csv", test_ids, pred, rng.random(queries))
    gt_pos = [rng.integers(0, index, s) for s in rng.integers(1, 30, queries)]
    gt = [" ".join(index_ids[p]) for p in gt_pos]
    # every query scored (none Ignored), so all 120k x 100 predicted ids go through the metric
    pd.DataFrame({"id": test_ids, "images": gt, "Usage": usage}).to_csv(out / "ret_solution.csv", index=False)
    first = np.array([p[0] for p in gt_pos])
    # 100 distinct index ids per query (a valid row), none its first positive: sorted draw + rank, shifted past it
    retrieved = np.sort(rng.integers(0, index - 100, (queries, 100)), axis=1) + np.arange(100)
    retrieved = rng.permuted(retrieved + (retrieved >= first[:, None]), axis=1)
    hit = rng.random(queries) < 0.5  # half the queries find one of their positives at a random rank
    retrieved[hit, rng.integers(0, 100, hit.sum())] = first[hit]
    write_retrieval(out / "ret_submission.csv", test_ids, index_ids[retrieved].tolist())
    return {"rec": out / "rec_submission.csv", "ret": out / "ret_submission.csv"}


COLUMNS = {"track": "track", "queries": "queries", "index ids": "index", "scoring s": "seconds",
           "pandas read s": "pandas_read_seconds", "ratio": "ratio_to_read",
           "< 10 s": lambda r: "yes" if r["within_10s"] else "no"}


TABLE = ledger.Table("scoring", COLUMNS,
                     "Scoring a submission file against a solution file; the limit is reading both with pandas in the same "
                     "run.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--queries", type=int, default=120_000)
    ap.add_argument("--index", type=int, default=760_000)
    ap.add_argument("--out", default="/tmp/bench_scoring")
    args = ledger.parse_args(ap, TABLE)
    out = Path(args.out)
    make_files(out, args.queries, args.index)
    results = []
    for track, name in (("rec", "recognition"), ("ret", "retrieval")):
        t0 = time.perf_counter()
        pd.read_csv(out / f"{track}_submission.csv", dtype=str, keep_default_na=False)
        pd.read_csv(out / f"{track}_solution.csv", dtype=str, keep_default_na=False)
        io_floor = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = score_files(out / f"{track}_solution.csv", out / f"{track}_submission.csv")
        seconds = time.perf_counter() - t0
        results.append({
            "track": name, "queries": args.queries, "index": args.index,
            "seconds": round(seconds, 2),
            "pandas_read_seconds": round(io_floor, 2),
            "ratio_to_read": round(seconds / io_floor, 2),
            "within_10s": seconds < 10,
            "score_all": {k: v for k, v in result["scores"]["All"].items() if k != "precision@k"},
        })
    ledger.publish(TABLE, results, args.record)


if __name__ == "__main__":
    main()
