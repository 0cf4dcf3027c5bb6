"""Stage 00 revisited against a local HTTP server holding tiny archives in the official layout (the Oxford
image archive, the two Paris archives with paris/<landmark>/<name>.jpg, the distractor tar.gz archives, the
ground-truth pickles and the image list), built by the test: download into the benchmark's layout, resume after
a cut body, a rerun that fetches nothing, a damaged archive refused by name, members outside the target folder
refused, images named by the ground truth but missing or unreadable listed by name."""

from __future__ import annotations

import csv
import io
import json
import pickle
import tarfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

from httpserver import Server, stage00
from landmark_kit.data import DataError
from landmark_kit.download import DownloadError, extract, safe_name
from landmark_kit.revisited_data import SOURCES, RevisitedConfig, download, file_name, mirrored, parse_archives

BROKEN = b"<html><head><title>302 Found</title></head></html>"  # what the known broken Paris images hold


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (seed * 37 % 256, seed * 91 % 256, 80)).save(buf, "JPEG")
    return buf.getvalue()


def _tar(files: dict[str, bytes], links: dict[str, str] | None = None, mode: str = "w:gz") -> bytes:
    """A tar archive of ``files`` (name -> bytes) and symbolic ``links`` (name -> target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def _served(root: Path, url: str) -> Path:
    """Where the server folder holds the file of an official URL (same relative path)."""
    return root / urlsplit(url).path.lstrip("/")


def _gnd(imlist: list[str], qimlist: list[str]) -> bytes:
    gnd = [{"bbx": [0.0, 0.0, 8.0, 6.0], "easy": [0], "hard": [1], "junk": []} for _ in qimlist]
    return pickle.dumps({"imlist": imlist, "qimlist": qimlist, "gnd": gnd})


OXFORD = {f"all_souls_{i:06d}": _jpeg(i) for i in range(1, 5)}
PARIS = [{"defense": ["paris_defense_000001", "paris_defense_000002"], "eiffel": ["paris_eiffel_000001"]},
         {"louvre": ["paris_louvre_000001", "paris_louvre_000002"], "triomphe": ["paris_triomphe_000001"]}]
DISTRACTORS = [[f"{n}{i}/{n}{i}{j:04d}.jpg" for i in "ab" for j in range(3)] for n in "xyz"]  # archives 1-3


@pytest.fixture()
def site(tmp_path):
    """The official files under their URL paths: roxford5k (one queried image an HTML page, one database name in
    no archive), rparis6k (a known-broken image the ground truth leaves out; members escaping the folder in
    paris_2), revisitop1m archives 1-3 (a ../ member in 1) and its list. Returns (root, the good archive bytes)."""
    root = tmp_path / "site"
    files: dict[str, bytes] = {}
    oxford = {f"{name}.jpg": data for name, data in OXFORD.items()}
    oxford["all_souls_000004.jpg"] = BROKEN
    files[SOURCES["roxford5k"].archives[0]] = _tar(oxford)
    files[SOURCES["roxford5k"].listing] = _gnd(["all_souls_000001", "all_souls_000002", "all_souls_000004",
                                                "oxford_gone_000001"], ["all_souls_000003"])
    for n, landmarks in enumerate(PARIS):
        members = {f"paris/{lm}/{name}.jpg": _jpeg(10 * n + i) for lm, names in landmarks.items()
                   for i, name in enumerate(names)}
        links = None
        if n == 1:
            members["paris/louvre/paris_louvre_000136.jpg"] = BROKEN
            members["../x.jpg"] = _jpeg(99)
            members[str(tmp_path / "abs.jpg")] = _jpeg(98)
            links = {"paris/louvre/link.jpg": "../../../../../../etc/passwd"}
        files[SOURCES["rparis6k"].archives[n]] = _tar(members, links)
    paris = [name for landmarks in PARIS for names in landmarks.values() for name in names]
    files[SOURCES["rparis6k"].listing] = _gnd(paris[1:], paris[:1])
    for n, names in enumerate(DISTRACTORS):
        members = {name: _jpeg(50 + i) for i, name in enumerate(names)}
        if n == 0:
            members["../escape.jpg"] = _jpeg(97)
        files[SOURCES["revisitop1m"].archives[n]] = _tar(members)
    files[SOURCES["revisitop1m"].listing] = "".join(f"{name}\n" for names in DISTRACTORS for name in names).encode()
    for url, data in files.items():
        _served(root, url).parent.mkdir(parents=True, exist_ok=True)
        _served(root, url).write_bytes(data)
    return root, files


@pytest.fixture()
def server(site):
    srv = Server(site[0])
    yield srv
    srv.close()


def _cfg(server: Server, **kw) -> RevisitedConfig:
    return RevisitedConfig(base_url=server.url, workers=2, backoff=0.0, **kw)


def _missing_csv(out: Path, dataset: str) -> dict[str, str]:
    with open(out / dataset / "missing.csv", newline="") as fh:
        return {row["name"]: row["reason"] for row in csv.DictReader(fh)}


def _gets(server: Server, url: str) -> list[str | None]:
    """The Range header of each GET of an official URL's file."""
    return [rng for path, rng in server.gets if path == urlsplit(url).path]


def test_table_matches_the_official_scripts_and_archive_ranges():
    assert [file_name(u) for u in SOURCES["roxford5k"].archives] == ["oxbuild_images-v1.tgz"]
    assert [file_name(u) for u in SOURCES["rparis6k"].archives] == ["paris_1-v1.tgz", "paris_2-v1.tgz"]
    assert [file_name(u) for u in SOURCES["revisitop1m"].archives] == [f"revisitop1m.{n}.tar.gz" for n in range(1, 101)]
    assert [file_name(SOURCES[d].listing) for d in SOURCES] == ["gnd_roxford5k.pkl", "gnd_rparis6k.pkl",
                                                                "revisitop1m.txt"]
    assert mirrored(SOURCES["roxford5k"].archives[0], "http://127.0.0.1:9/m/") == \
        "http://127.0.0.1:9/m/~vgg/data/oxbuildings/oxbuild_images-v1.tgz"
    assert mirrored(SOURCES["rparis6k"].listing, "") == SOURCES["rparis6k"].listing
    assert parse_archives("1-3,7", "revisitop1m") == [1, 2, 3, 7]
    assert parse_archives(None, "rparis6k") == [1, 2]
    for bad in ("0", "101", "3-1", "x"):
        with pytest.raises(DataError, match="--archives"):
            parse_archives(bad, "revisitop1m")
    with pytest.raises(DataError, match="unknown revisited dataset"):
        parse_archives(None, "oxford5k")


def test_roxford5k_layout_missing_listed_and_rerun_fetches_nothing(site, server, tmp_path, capsys):
    root, files = site
    out = tmp_path / "data"
    code = stage00().main(["revisited", "roxford5k", "--out", str(out), "--base-url", server.url, "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["completed"] == ["oxbuild_images-v1.tgz"] and not summary["failed"]
    jpg = out / "roxford5k" / "jpg"
    assert sorted(p.name for p in jpg.iterdir()) == [f"{name}.jpg" for name in OXFORD]
    assert (jpg / "all_souls_000001.jpg").read_bytes() == OXFORD["all_souls_000001"]
    assert (out / "roxford5k" / "gnd_roxford5k.pkl").read_bytes() == files[SOURCES["roxford5k"].listing]
    assert summary["expected"] == 5 and summary["missing_count"] == 2
    assert summary["missing"] == ["all_souls_000004", "oxford_gone_000001"]
    reasons = _missing_csv(out, "roxford5k")
    assert reasons["oxford_gone_000001"] == "missing" and reasons["all_souls_000004"].startswith("unreadable")
    work = out / ".revisited" / "roxford5k"
    assert sorted(p.name for p in work.iterdir()) == ["oxbuild_images-v1.tgz.json"]  # archive deleted

    server.gets.clear()
    server.heads.clear()
    again = download("roxford5k", out, cfg=_cfg(server), progress=False)
    assert again.skipped == ["oxbuild_images-v1.tgz"] and again.completed == [] and again.downloaded_mb == 0
    assert server.gets == [] and server.heads == []  # not a request: records and listing are on disk
    assert again.missing == summary["missing"]


def test_rparis6k_flattened_and_members_outside_the_folder_refused(site, server, tmp_path):
    out = tmp_path / "data"
    summary = download("rparis6k", out, cfg=_cfg(server), progress=False)
    assert summary.completed == ["paris_1-v1.tgz", "paris_2-v1.tgz"] and not summary.failed
    jpg = out / "rparis6k" / "jpg"
    names = [name for landmarks in PARIS for ns in landmarks.values() for name in ns]
    assert sorted(p.name for p in jpg.iterdir()) == sorted([f"{n}.jpg" for n in names] + ["paris_louvre_000136.jpg"])
    assert all(p.is_file() and not p.is_symlink() for p in jpg.iterdir())  # flattened, as `find -type f -exec mv`
    assert sorted(summary.refused_members["paris_2-v1.tgz"]) == sorted(
        ["../x.jpg", str(tmp_path / "abs.jpg"), "paris/louvre/link.jpg"])
    assert not (tmp_path / "abs.jpg").exists() and not (out / "rparis6k" / "x.jpg").exists()
    assert not (out / "x.jpg").exists() and not (jpg / "x.jpg").exists() and not (jpg / "link.jpg").exists()
    assert summary.expected == len(names) and summary.missing_count == 0  # the broken image is not in the gnd
    assert _missing_csv(out, "rparis6k") == {}


def test_revisitop1m_some_archives_paths_kept(site, server, tmp_path):
    out = tmp_path / "data"
    summary = download("revisitop1m", out, [1, 2], _cfg(server), progress=False)
    assert summary.completed == ["revisitop1m.1.tar.gz", "revisitop1m.2.tar.gz"] and not summary.failed
    jpg = out / "revisitop1m" / "jpg"
    assert sorted(str(p.relative_to(jpg)) for p in jpg.rglob("*.jpg")) == sorted(DISTRACTORS[0] + DISTRACTORS[1])
    assert summary.refused_members == {"revisitop1m.1.tar.gz": ["../escape.jpg"]}
    assert not (out / "revisitop1m" / "escape.jpg").exists()
    assert (out / "revisitop1m" / "revisitop1m.txt").exists()
    assert summary.expected == 18 and summary.missing == DISTRACTORS[2]  # archive 3 not fetched
    assert set(_missing_csv(out, "revisitop1m")) == set(DISTRACTORS[2])


def test_resume_after_a_cut_body(site, server, tmp_path):
    out = tmp_path / "data"
    url = SOURCES["rparis6k"].archives[1]
    server.cut.add(urlsplit(url).path)
    summary = download("rparis6k", out, cfg=_cfg(server, retries=1), progress=False)
    assert summary.completed == ["paris_1-v1.tgz"] and "received" in summary.failed["paris_2-v1.tgz"]
    work = out / ".revisited" / "rparis6k"
    part = work / "paris_2-v1.tgz.part"
    assert part.exists() and not (work / "paris_2-v1.tgz").exists() and not (work / "paris_2-v1.tgz.json").exists()
    assert not (out / "rparis6k" / "jpg" / "paris_louvre_000001.jpg").exists()
    assert summary.missing_count == 3  # paris_2's images, named by the gnd, not there yet
    size = part.stat().st_size
    assert 0 < size < len(site[1][url])

    summary = download("rparis6k", out, cfg=_cfg(server), progress=False)
    assert summary.completed == ["paris_2-v1.tgz"] and summary.skipped == ["paris_1-v1.tgz"] and not summary.failed
    assert _gets(server, url) == [None, f"bytes={size}-"]  # resumed from the .part, not restarted
    assert summary.missing_count == 0 and not part.exists()


@pytest.mark.parametrize("damage", ["crc", "flipped", "truncated"])
def test_damaged_archive_refused_by_name_others_complete(site, server, tmp_path, capsys, damage):
    root, files = site
    url = SOURCES["rparis6k"].archives[0]
    good = files[url]
    bad = bytearray(good)
    if damage == "crc":  # every member inflates; only the gzip trailer's CRC disagrees
        bad[-8] ^= 0xFF
    elif damage == "flipped":
        bad[len(bad) // 2] ^= 0xFF
    else:
        bad = bad[: len(bad) * 2 // 3]
    _served(root, url).write_bytes(bytes(bad))
    out = tmp_path / "data"
    argv = ["revisited", "rparis6k", "--out", str(out), "--base-url", server.url, "--no-progress"]
    assert stage00().main(argv) == 1
    captured = capsys.readouterr()
    assert "failed: paris_1-v1.tgz" in captured.err and "refused" in captured.err
    summary = json.loads(captured.out)
    assert summary["completed"] == ["paris_2-v1.tgz"] and list(summary["failed"]) == ["paris_1-v1.tgz"]
    work = out / ".revisited" / "rparis6k"
    assert sorted(p.name for p in work.iterdir()) == ["paris_2-v1.tgz.json"]  # no archive, .part, record, staging
    paris_1 = [name for names in PARIS[0].values() for name in names]
    assert not any((out / "rparis6k" / "jpg" / f"{name}.jpg").exists() for name in paris_1)
    assert set(_missing_csv(out, "rparis6k")) == set(paris_1)

    _served(root, url).write_bytes(good)
    assert stage00().main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["completed"] == ["paris_1-v1.tgz"] and summary["skipped"] == ["paris_2-v1.tgz"]
    assert summary["missing_count"] == 0


def test_a_damaged_header_mid_archive_is_not_a_short_archive(tmp_path):
    """tarfile ends its member list quietly at a bad header; extract reads on and refuses the archive."""
    data = bytearray(_tar({f"{i}.jpg": _jpeg(i) for i in range(3)}, mode="w"))
    second = 512 + (len(_jpeg(0)) + 511) // 512 * 512
    data[second:second + 5] = b"\xff" * 5  # its name, so its header checksum no longer matches
    archive = tmp_path / "a.tar"
    archive.write_bytes(bytes(data))
    with pytest.raises(DownloadError, match=r"a\.tar: unreadable archive"):
        extract(archive, lambda name: tmp_path / "out" / name, tmp_path / "staging")
    assert not (tmp_path / "out").exists() and not (tmp_path / "staging").exists()


@pytest.mark.parametrize("name, kind, expected", [
    ("./a/b.jpg", tarfile.REGTYPE, "a/b.jpg"), ("b.jpg", tarfile.REGTYPE, "b.jpg"),
    ("../x.jpg", tarfile.REGTYPE, None), ("a/../../x.jpg", tarfile.REGTYPE, None), ("/etc/x", tarfile.REGTYPE, None),
    ("a.jpg", tarfile.SYMTYPE, None), ("a.jpg", tarfile.LNKTYPE, None), ("dev", tarfile.CHRTYPE, None),
])
def test_safe_name(name, kind, expected):
    info = tarfile.TarInfo(name)
    info.type = kind
    assert safe_name(info) == expected
