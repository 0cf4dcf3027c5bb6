"""Stage 00 gldv2 (download + md5 + extraction into a/b/c/<id>.jpg) against the bare download of the same
shards in the same run, from a local HTTP server (``python -m http.server`` in its own process) holding GLDv2-shaped shards built here (random
bytes named <id>.jpg: extraction does not decode). Then a rerun (every shard already complete) and a rerun
after forgetting two shards' completion records (only those two fetched again).

    python benchmarks/bench_gldv2.py [--shards 8 --images 100 --kb 256 --workers 4]

``--record`` appends the result to ``benchmarks/results/gldv2.jsonl`` and renders ``gldv2.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import tarfile
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from landmark_kit import ledger
from landmark_kit.gldv2 import Gldv2Config, download


def wait_until_up(url: str, seconds: float = 20.0) -> None:
    """Poll the server until it answers (it starts in another process)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(f"{url}/metadata/test.csv").close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def build_bucket(root: Path, shards: int, images: int, kb: int) -> int:
    """``shards`` test shards of ``images`` files of ``kb`` KiB, their md5 files and empty metadata; total bytes."""
    total = 0
    for s in range(shards):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for i in range(images):
                image_id = hashlib.sha1(f"{s}-{i}".encode()).hexdigest()[:16]
                info = tarfile.TarInfo(f"{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}.jpg")
                info.size = kb * 1024
                tar.addfile(info, io.BytesIO(os.urandom(info.size)))
        data = buf.getvalue()
        total += len(data)
        (root / "test").mkdir(parents=True, exist_ok=True)
        (root / "test" / f"images_{s:03d}.tar").write_bytes(data)
        (root / "md5sum" / "test").mkdir(parents=True, exist_ok=True)
        (root / "md5sum" / "test" / f"md5.images_{s:03d}.txt").write_text(f"{hashlib.md5(data).hexdigest()}  x\n")
    (root / "metadata").mkdir()
    (root / "metadata" / "test.csv").write_text("id\n")
    (root / "ground_truth").mkdir()
    for track, column in (("recognition", "landmarks"), ("retrieval", "images")):
        (root / "ground_truth" / f"{track}_solution_v2.1.csv").write_text(f"id,{column},Usage\n")
    return total


def bare_download(url: str, shards: int, workers: int) -> float:
    """Seconds to read every shard's body (no disk, no md5), ``workers`` at once."""
    def read(s: int) -> None:
        with urllib.request.urlopen(f"{url}/test/images_{s:03d}.tar") as response:
            while response.read1(1 << 20):
                pass

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(read, range(shards)))
    return time.perf_counter() - start


COLUMNS = {
    "shards": "shards", "MB": "mb", "workers": "workers", "bare read MB/s": "bare_download_mb_s",
    "stage MB/s": "stage_mb_s", "ratio": "ratio",
    "rerun": lambda r: f"{r['rerun_s']} s, {r['rerun_skipped']} skipped, {r['rerun_mb']} MB",
    "forgetting 2 records": lambda r: f"{', '.join(r['forgotten_two_refetched'])} re-fetched, {r['forgotten_two_mb']} MB",
}


TABLE = ledger.Table("gldv2", COLUMNS,
                     "Stage 00 gldv2 against a bare read of the same shards from a local HTTP server, then a rerun and a "
                     "rerun after forgetting two shards' completion records.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--images", type=int, default=100, help="files per shard")
    ap.add_argument("--kb", type=int, default=256, help="KiB per file (GLDv2 JPEGs average ~300)")
    ap.add_argument("--workers", type=int, default=4)
    args = ledger.parse_args(ap, TABLE)
    with tempfile.TemporaryDirectory() as tmp:
        bucket = Path(tmp) / "bucket"
        total = build_bucket(bucket, args.shards, args.images, args.kb)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                   "--directory", str(bucket)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url)
        cfg = Gldv2Config(base_url=url, workers=args.workers)
        bare = bare_download(url, args.shards, args.workers)
        out = Path(tmp) / "gld"
        first = download("test", out, list(range(args.shards)), cfg, progress=False)
        start = time.perf_counter()
        again = download("test", out, list(range(args.shards)), cfg, progress=False)
        rerun_s = time.perf_counter() - start
        for s in (0, 1):
            (out / ".gldv2" / "test" / f"images_{s:03d}.json").unlink()
        partial_run = download("test", out, list(range(args.shards)), cfg, progress=False)
        server.terminate()
        server.wait()
    mb = total / 1e6
    ledger.publish(TABLE, [{
        "shards": args.shards, "workers": args.workers, "mb": round(mb, 1), "images": first.images,
        "bare_download_mb_s": round(mb / bare, 1), "stage_mb_s": round(mb / first.seconds, 1),
        "ratio": round(bare / first.seconds, 3),
        "rerun_s": round(rerun_s, 2), "rerun_skipped": len(again.skipped), "rerun_mb": again.downloaded_mb,
        "forgotten_two_refetched": partial_run.completed, "forgotten_two_mb": partial_run.downloaded_mb,
        "failed": {**first.failed, **again.failed, **partial_run.failed},
    }], args.record)


if __name__ == "__main__":
    main()
