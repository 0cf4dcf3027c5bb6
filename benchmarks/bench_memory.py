"""Peak memory at GLDv2-like sizes, each job in its own process: its peak resident set from
``wait4`` (the largest single process of its tree) and the sampled peaks of its anonymous memory and its
file-backed pages (memory-mapped stores: page cache the kernel can drop), next to the sizes that bound them.

``search``: exact top-k of Q queries against an N x D float16 index memory-mapped from disk (the stage-03
store), default 200,000 x 1,000,000 x 512, k 100, at the default resident limit (the float32 copy of the
index is kept when it fits in 4 GiB) and, with ``--resident-gb 0``, streamed block by block.
``predict``: stage 04 with spatial verification of a 5-image shortlist, local re-ranking and every default
on a synthetic competition of at least ``--images`` images (stage 03 with a small zero-shot member first).

    python benchmarks/bench_memory.py search [--queries 200000 --database 1000000 --dim 512 --resident-gb 4]
    python benchmarks/bench_memory.py predict [--images 20000 --workdir runs/bench-memory]
    python benchmarks/bench_memory.py table   # benchmarks/results/memory.md from the --record runs
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from landmark_kit import ledger

ROOT = Path(__file__).resolve().parents[1]


def _status_kib(pid: int) -> dict[str, int]:
    """RssAnon / RssFile of a live process, KiB (empty once it has exited)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines) if k in ("RssAnon", "RssFile")}


def measured(cmd: list[str], every: float = 0.05) -> dict:
    """Run ``cmd`` (its output to stderr, so stdout stays this script's JSON): wall time, peak RSS from ``wait4``
    (MiB, the largest process of its tree), and the peaks
    of its own anonymous memory (what it allocated) and file-backed pages (memory-maps, page cache that the
    kernel can drop), sampled every ``every`` seconds from /proc."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=sys.stderr)
    peaks = {"RssAnon": 0, "RssFile": 0}
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        for key, value in _status_kib(proc.pid).items():
            peaks[key] = max(peaks[key], value)
        time.sleep(every)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({os.waitstatus_to_exitcode(status)})")
    return {"seconds": round(time.perf_counter() - start, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "peak_anon_mib": round(peaks["RssAnon"] / 1024, 1), "peak_file_mib": round(peaks["RssFile"] / 1024, 1)}


def _unit_rows(path: Path, rows: int, dim: int, seed: int) -> Path:
    """A float16 .npy of ``rows`` unit vectors, written in blocks (never all in memory)."""
    if path.is_file() and np.load(path, mmap_mode="r").shape == (rows, dim):
        return path
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(rows, dim))
    rng = np.random.default_rng(seed)
    for start in range(0, rows, 100_000):
        block = rng.standard_normal((min(100_000, rows - start), dim), dtype=np.float32)
        out[start: start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    out.flush()
    return path


SEARCH_JOB = """
import sys, numpy as np
from landmark_kit.search import knn
q = np.load(sys.argv[1], mmap_mode="r"); db = np.load(sys.argv[2], mmap_mode="r")
scores, ids = knn(q, db, int(sys.argv[3]), resident_bytes=int(float(sys.argv[4]) * 2**30))
assert ids.shape == (len(q), int(sys.argv[3])) and (ids >= 0).all()
"""


def search(args) -> dict:
    folder = Path(args.workdir)
    folder.mkdir(parents=True, exist_ok=True)
    q = _unit_rows(folder / f"queries_{args.queries}x{args.dim}.npy", args.queries, args.dim, 1)
    db = _unit_rows(folder / f"index_{args.database}x{args.dim}.npy", args.database, args.dim, 2)
    result = measured([sys.executable, "-c", SEARCH_JOB, str(q), str(db), str(args.k), str(args.resident_gb)])
    mib = 1 / 2**20
    return {"job": "search", "queries": args.queries, "database": args.database, "dim": args.dim, "k": args.k,
            "resident_gb": args.resident_gb, **result,
            "index_float16_mib": round(args.database * args.dim * 2 * mib, 1),
            "index_float32_mib": round(args.database * args.dim * 4 * mib, 1),
            "queries_float32_mib": round(args.queries * args.dim * 4 * mib, 1),
            "results_mib": round(args.queries * args.k * 12 * mib, 1)}


def predict(args) -> dict:
    from landmark_kit.data import scan_split
    from landmark_kit.synthetic import SyntheticConfig, generate

    work = Path(args.workdir)
    landmarks = max(8, math.ceil(args.images / 22))  # 22-23.5 images per landmark at the defaults
    data = work / f"synthetic-{landmarks}-landmarks"
    if not (data / "train.csv").is_file():
        generate(data, SyntheticConfig(landmarks=landmarks, min_side=256, max_side=320), progress=True)
    sizes = {split: len(scan_split(data, split)) for split in ("train", "test", "index")}
    if sum(sizes.values()) < args.images:
        raise SystemExit(f"{data} has {sum(sizes.values())} images, fewer than --images {args.images}")
    recipe, post = work / "bench-ensemble.yaml", work / "bench-verify.yaml"
    recipe.write_text("members:\n  - {name: small, backbone: test_efficientnet, image_size: 96}\n")
    post.write_text("k: 3\nverify_shortlist: 5\ninlier_floor: 5\nlocal_rerank: 5\n")
    run = work / f"run-{landmarks}-landmarks"  # its own caches: ids of another synthetic set may collide
    subprocess.run([sys.executable, str(ROOT / "stages" / "03_ensemble.py"), "--data-root", str(data), "--workdir",
                    str(run), "--ensemble", str(recipe)], cwd=ROOT, check=True, stdout=sys.stderr,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    result = measured([sys.executable, str(ROOT / "stages" / "04_predict.py"), "--data-root", str(data),
                       "--workdir", str(run), "--ensemble", str(recipe), "--recipe", str(post), "--out-root",
                       str(work / "submissions"), "--name", f"bench-{args.images}"])
    pairs = sum(len(np.load(p)["inliers"]) for p in (run / "local" / "pairs").rglob("part_*.npz"))
    return {"job": "predict", "images": sum(sizes.values()), **sizes, "pairs_verified": pairs, **result}


def _what(r: dict) -> str:
    if r["job"] == "search":
        resident = r["resident_gb"] * 1024 >= r["index_float32_mib"]
        return (f"search {r['queries']:,} x {r['database']:,} x {r['dim']} float16, k {r['k']}, "
                f"{'float32 index resident' if resident else 'index streamed'}")
    return f"stage 04 with verification, {r['images']:,} synthetic images ({r['pairs_verified']:,} pairs)"


COLUMNS = {"job": _what, "peak RSS": "peak_rss_mib", "peak anonymous": "peak_anon_mib",
           "peak file-backed": "peak_file_mib", "seconds": "seconds"}


TABLE = ledger.Table("memory", COLUMNS, "Peaks in MiB, each job in its own process.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("job", choices=["search", "predict", "table"])
    ap.add_argument("--workdir", default="runs/bench-memory")
    ap.add_argument("--queries", type=int, default=200_000)
    ap.add_argument("--database", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--resident-gb", type=float, default=4.0)
    ap.add_argument("--images", type=int, default=20_000)
    args = ledger.parse_args(ap, TABLE)
    if args.job == "table":
        print(TABLE.render())
        return
    ledger.publish(TABLE, [search(args) if args.job == "search" else predict(args)], args.record)


if __name__ == "__main__":
    main()
