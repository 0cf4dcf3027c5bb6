"""Stage 00 gldv2 against a local HTTP server holding GLDv2-shaped shards the test builds itself: download,
md5 check, extraction into the Kaggle layout, CSVs, resume without re-downloading, a corrupted shard refused by
name, an interrupted download never treated as complete."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from httpserver import Server, stage00
from landmark_kit.data import DataError, image_path, read_train_csv, scan_split
from landmark_kit.gldv2 import Gldv2Config, download, parse_shards
from landmark_kit.submission import read_solution

ROOT = Path(__file__).resolve().parents[1]


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()


def _ids(prefix: str, n: int) -> list[str]:
    return [hashlib.sha1(f"{prefix}{i}".encode()).hexdigest()[:16] for i in range(n)]


def _tar(ids: list[str], extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for n, image_id in enumerate(ids):
            data = _jpeg(n)
            info = tarfile.TarInfo(f"{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture()
def bucket(tmp_path):
    """A GLDv2-layout bucket: train shards 0-1 (4 images each), test shards 0-2 (3 each), md5 files,
    metadata and v2.1 ground truth. Returns (root, ids per split and shard)."""
    root = tmp_path / "bucket"
    ids = {"train": [_ids(f"tr{s}-", 4) for s in range(2)], "test": [_ids(f"te{s}-", 3) for s in range(3)]}
    for split, shards in ids.items():
        for s, shard_ids in enumerate(shards):
            extra = {"../evil.jpg": b"x", "README.txt": b"x"} if (split, s) == ("train", 1) else None
            data = _tar(shard_ids, extra)
            (root / split).mkdir(parents=True, exist_ok=True)
            (root / split / f"images_{s:03d}.tar").write_bytes(data)
            (root / "md5sum" / split).mkdir(parents=True, exist_ok=True)
            (root / "md5sum" / split / f"md5.images_{s:03d}.txt").write_text(
                f"{hashlib.md5(data).hexdigest()}  images_{s:03d}.tar\n")
    train = [i for shard in ids["train"] for i in shard]
    (root / "metadata").mkdir()
    (root / "metadata" / "train.csv").write_text(
        "id,url,landmark_id\n" + "".join(f"{i},http://x/{i}.jpg,{n % 3}\n" for n, i in enumerate(train))
        + "ffffffffffffffff,http://x/missing.jpg,7\n")  # listed but in no downloaded shard
    (root / "metadata" / "train_clean.csv").write_text(
        "landmark_id,images\n0 ," + " ".join(train[0::3]) + "\n1," + " ".join(train[1::3]) + "\n")
    test = [i for shard in ids["test"] for i in shard]
    (root / "metadata" / "test.csv").write_text("id\n" + "".join(f"{i}\n" for i in test))
    (root / "ground_truth").mkdir()
    (root / "ground_truth" / "recognition_solution_v2.1.csv").write_text(
        "id,landmarks,Usage\n" + "".join(f"{i},{'1' if n % 2 else ''},{'Public' if n % 3 else 'Private'}\n"
                                         for n, i in enumerate(test)))
    (root / "ground_truth" / "retrieval_solution_v2.1.csv").write_text(
        "id,images,Usage\n" + "".join(f"{i},{train[0] if n % 2 else 'None'},{'Private' if n % 2 else 'Ignored'}\n"
                                      for n, i in enumerate(test)))
    return root, ids


@pytest.fixture()
def server(bucket):
    srv = Server(bucket[0])
    yield srv
    srv.close()


def _cfg(server: Server, **kw) -> Gldv2Config:
    return Gldv2Config(base_url=server.url, workers=2, backoff=0.0, **kw)


def test_parse_shards():
    assert parse_shards("0-2,5", "test") == [0, 1, 2, 5]
    assert parse_shards(None, "index") == list(range(100))
    for bad in ("3-1", "20", "x", "1-"):
        with pytest.raises(DataError, match="--shards"):
            parse_shards(bad, "test")
    with pytest.raises(DataError, match="unknown GLDv2 split"):
        parse_shards("0", "val")


def test_download_extract_csvs_and_resume(bucket, server, tmp_path):
    _, ids = bucket
    out = tmp_path / "gld"
    summary = download("train", out, [0, 1], _cfg(server), progress=False)
    assert summary.completed == ["images_000", "images_001"] and not summary.failed
    assert summary.images == 8 and summary.bad_members == 2  # ../evil.jpg and README.txt never written
    assert not (out / "evil.jpg").exists() and not (out / "train" / "README.txt").exists()
    on_disk = scan_split(out, "train")
    assert on_disk == sorted(i for shard in ids["train"] for i in shard)
    assert image_path(out, "train", on_disk[0]).read_bytes()[:2] == b"\xff\xd8"
    train = read_train_csv(out / "train.csv")
    assert sorted(train["id"]) == on_disk  # the listed-but-absent image is left out
    clean = read_train_csv(out / "train_clean.csv")
    assert set(clean["id"]) < set(on_disk) and len(clean) == 6
    assert not list((out / ".gldv2" / "train").glob("*.tar"))  # extracted tars deleted by default
    record = json.loads((out / ".gldv2" / "train" / "images_001.json").read_text())
    assert sorted(record["bad_members"]) == ["../evil.jpg", "README.txt"]

    before = len(server.gets)
    again = download("train", out, [0, 1], _cfg(server), progress=False)
    assert again.skipped == ["images_000", "images_001"] and again.completed == [] and again.downloaded_mb == 0
    assert not [g for g in server.gets[before:] if g[0].endswith(".tar") and g[0] != "HEAD"]


def test_test_split_solutions_score(bucket, server, tmp_path):
    _, ids = bucket
    out = tmp_path / "gld"
    summary = download("test", out, [0, 2], _cfg(server, keep_tars=True), progress=False)
    assert summary.completed == ["images_000", "images_002"]
    assert (out / ".gldv2" / "test" / "images_000.tar").exists()
    present = set(ids["test"][0] + ids["test"][2])
    rec = read_solution(out / "recognition_solution.csv")
    ret = read_solution(out / "retrieval_solution.csv")
    assert rec.ids == present and ret.ids == present  # rows of shard 1 (not downloaded) dropped
    assert ret.ignored and all(v == [] or v == [1] for v in rec.all.values())


def test_corrupted_shard_refused_by_name_others_finished(bucket, server, tmp_path, capsys):
    root, ids = bucket
    (root / "md5sum" / "test" / "md5.images_001.txt").write_text("0" * 32 + "  images_001.tar\n")
    out = tmp_path / "gld"
    code = stage00().main(["gldv2", "--split", "test", "--out", str(out), "--base-url", server.url,
                            "--workers", "2", "--shards", "0-2", "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "images_001" in err and "does not match" in err
    assert not (out / ".gldv2" / "test" / "images_001.json").exists()
    assert not (out / ".gldv2" / "test" / "images_001.tar").exists()
    on_disk = set(scan_split(out, "test"))
    assert on_disk == set(ids["test"][0] + ids["test"][2])  # nothing of the refused shard extracted
    summary = json.loads((out / ".gldv2" / "test.summary.json").read_text())
    assert summary["completed"] == ["images_000", "images_002"] and list(summary["failed"]) == ["images_001"]


def test_interrupted_download_never_complete_then_resumed(bucket, server, tmp_path):
    _, ids = bucket
    out = tmp_path / "gld"
    server.cut.add("/test/images_000.tar")
    summary = download("test", out, [0], _cfg(server, retries=1), progress=False)
    assert "images_000" in summary.failed and "received" in summary.failed["images_000"]
    work = out / ".gldv2" / "test"
    assert (work / "images_000.tar.part").exists() and not (work / "images_000.tar").exists()
    assert not (work / "images_000.json").exists() and not (out / "test").exists()
    part = (work / "images_000.tar.part").stat().st_size

    summary = download("test", out, [0], _cfg(server), progress=False)
    assert summary.completed == ["images_000"] and not summary.failed
    assert server.tar_gets()[-1] == ("/test/images_000.tar", f"bytes={part}-")  # resumed, not restarted
    assert set(scan_split(out, "test")) == set(ids["test"][0])

    server.cut.add("/test/images_001.tar")  # cut once, retried within the same run
    summary = download("test", out, [1], _cfg(server), progress=False)
    assert summary.completed == ["images_001"]


def test_missing_shard_reported(bucket, server, tmp_path):
    root, _ = bucket
    (root / "test" / "images_002.tar").unlink()
    summary = download("test", tmp_path / "gld", [1, 2], _cfg(server), progress=False)
    assert summary.completed == ["images_001"] and "404" in summary.failed["images_002"]


def test_killed_mid_download_resumes_from_the_part(bucket, server, tmp_path):
    _, ids = bucket
    out = tmp_path / "gld"
    part = out / ".gldv2" / "test" / "images_000.tar.part"
    server.stall.add("/test/images_000.tar")
    cmd = [sys.executable, str(ROOT / "stages" / "00_data.py"), "gldv2", "--split", "test", "--out", str(out),
           "--shards", "0", "--base-url", server.url, "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (part.exists() and part.stat().st_size > 0):
        assert proc.poll() is None and time.monotonic() < deadline, "the download never started"
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert not (out / "test").exists() and not (out / ".gldv2" / "test" / "images_000.json").exists()
    size = part.stat().st_size
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["completed"] == ["images_000"]
    assert server.tar_gets()[-1] == ("/test/images_000.tar", f"bytes={size}-")
    assert set(scan_split(out, "test")) == set(ids["test"][0])
