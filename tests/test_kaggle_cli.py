"""The real kaggle CLI (requirements.txt's, beside this Python) on what `build` writes, against a local stand-in.

kaggle 2.2.5 picks its endpoint from KAGGLE_API_ENVIRONMENT=LOCALHOST (``http://localhost/api/v1/<Service>/<Method>``);
the TEST value (kagglesdk's localhost:7777) is ignored by the CLI, which then calls api.kaggle.com. So every request
goes through an HTTP(S) proxy on a free loopback port: a server that answers like Kaggle and records what it got,
or a bound port that refuses connections (the dead endpoint). Nothing can leave the machine; nothing needs port 80.
The fake credentials live in a temporary HOME, so the user's ~/.kaggle is never read.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from landmark_kit import kaggle
from landmark_kit.data import scan_split

BIN = Path(sys.executable).parent
USER, KEY = "me", "0123456789abcdef0123456789abcdef"
API = "/api/v1/"


@dataclass
class Call:
    """One request the stand-in received: method, host it was meant for, path and body."""

    method: str
    host: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


class KaggleStandIn(ThreadingHTTPServer):
    """Kaggle's API as far as push and download use it, reached as an HTTP proxy; keeps every request in ``calls``.

    ``mode``: "new" (the dataset does not exist yet), "exists", "deny" (401 to everything), "reject-kernel"
    (SaveKernel answers with an error). ``files`` are served on GET /files/<name>."""

    def __init__(self, mode: str = "new", files: dict[str, bytes] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode, self.files = mode, files or {}
        self.calls: list[Call] = []
        self.blobs: dict[str, str] = {}  # upload token -> file name announced in StartBlobUpload

    def api(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.path == API + method]

    def answer(self, call: Call) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body for ``call``: minimal JSON of the shape the CLI parses."""
        if call.method == "CONNECT" or call.host != "localhost":
            return 403, {}, b""
        if self.mode == "deny" and call.path.startswith(API):
            return _json({"code": 401, "message": "Unauthenticated"}, 401)
        method = call.path.removeprefix(API)
        if method == "datasets.DatasetApiService/GetDatasetStatus":
            if self.mode == "new":
                return _json({"code": 404, "message": "Dataset not found"}, 404)
            return _json({"status": "READY"})
        if method == "blobs.BlobApiService/StartBlobUpload":
            token = f"blob-{len(self.blobs)}"
            self.blobs[token] = call.json()["name"]
            return _json({"token": token, "createUrl": f"http://localhost/upload/{token}"})
        if call.method == "PUT" and call.path.startswith("/upload/"):
            return _json({})
        if method in ("datasets.DatasetApiService/CreateDataset", "datasets.DatasetApiService/CreateDatasetVersion"):
            return _json({"ref": f"{USER}/bundle", "url": f"http://localhost/datasets/{USER}/bundle", "status": "ok"})
        if method == "kernels.KernelsApiService/SaveKernel":
            if self.mode == "reject-kernel":
                return _json({"error": "Notebook exceeds the size limit"})
            return _json({"ref": "/code/me/k", "url": "http://localhost/code/me/k", "versionNumber": 1})
        if method == "competitions.CompetitionApiService/DownloadDataFiles":
            name = f"{call.json()['competitionName']}.zip"
            return 302, {"Location": f"http://localhost/files/{name}"}, b""
        if call.method == "GET" and call.path.removeprefix("/files/") in self.files:
            return 200, {"Content-Type": "application/zip", "Last-Modified": formatdate(usegmt=True)}, \
                self.files[call.path.removeprefix("/files/")]
        return _json({"code": 404, "message": f"no {call.method} {call.path} here"}, 404)


def _json(payload: dict, status: int = 200) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(payload).encode()


class _Handler(BaseHTTPRequestHandler):
    """Records the request (absolute URL, as a proxy gets it) and sends the stand-in's answer."""

    server: KaggleStandIn

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        url = urlsplit(self.path) if self.command != "CONNECT" else urlsplit(f"//{self.path}")
        body = self._body() if self.command in ("POST", "PUT") else b""
        call = Call(self.command, url.hostname or "", url.path, dict(self.headers), body)
        self.server.calls.append(call)
        status, headers, payload = self.server.answer(call)
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(payload))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_CONNECT = _handle


@contextmanager
def stand_in(mode: str = "new", files: dict[str, bytes] | None = None) -> Iterator[KaggleStandIn]:
    server = KaggleStandIn(mode, files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def dead_endpoint() -> Iterator[int]:
    """A loopback port bound but not listening: every connection is refused, and no one else can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def cli_env(home: Path, proxy_port: int) -> dict[str, str]:
    """This environment without Kaggle or proxy settings, plus fake credentials in ``home`` and every request
    routed to the loopback ``proxy_port``; the venv's bin first on PATH so ``kaggle_cli()`` finds the real CLI."""
    drop = ("KAGGLE_", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "XDG_CONFIG_HOME", "VERBOSE")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(drop)}
    proxy = f"http://127.0.0.1:{proxy_port}"
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), KAGGLE_USERNAME=USER, KAGGLE_KEY=KEY, KAGGLE_API_ENVIRONMENT="LOCALHOST",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", NO_PROXY="", no_proxy="")
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        env[name] = env[name.upper()] = proxy
    return env


def the_cli(monkeypatch: pytest.MonkeyPatch) -> str:
    """``kaggle_cli()`` with PATH as the CLI runs get it: must be the executable beside this Python."""
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    found = kaggle.kaggle_cli()
    assert found == str(BIN / "kaggle"), f"requirements.txt's kaggle CLI not beside {sys.executable}: {found}"
    return found


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The folders `python -m landmark_kit.kaggle build` writes for user "me" (tiny ensemble, a recipe)."""
    root = tmp_path_factory.mktemp("kaggle-cli")
    ensemble = root / "tiny.yaml"
    ensemble.write_text("members:\n  - {name: z, backbone: test_efficientnet, image_size: 48}\nworkers: 0\n")
    out = root / "k"
    assert kaggle.main(["build", "--track", "recognition", "--out", str(out), "--ensemble", str(ensemble),
                        "--recipe", str(kaggle.REPO / "submissions" / "soft-vote.yaml"), "--user", USER,
                        "--no-dependency-wheels"]) == 0
    return out


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=kaggle.REPO, timeout=300)


def _push(out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "landmark_kit.kaggle", "push", str(out)], env)


def _assert_one_line(run: subprocess.CompletedProcess, command: str, after_uploads: bool = False) -> str:
    """Exit status 2 and one stderr line `error: <command> failed: ...`, no traceback; returns the line.
    ``after_uploads``: the upload progress bars of an earlier call that worked may come before it."""
    lines = run.stderr.strip().splitlines()
    if after_uploads:
        assert all("%|" in line or not line.strip() for line in lines[:-1]), run.stderr
        lines = lines[-1:]
    assert run.returncode == 2 and len(lines) == 1, (run.returncode, run.stderr)
    assert lines[0].startswith(f"error: {command} failed: "), lines[0]
    assert "Traceback" not in run.stderr and "ModuleNotFoundError" not in run.stderr
    return lines[0]


@pytest.mark.parametrize("script, flag, says", [("kaggle", "--version", r"^Kaggle CLI \d"),
                                                ("torchrun", "--help", r"usage: torchrun"),
                                                ("jupytext", "--version", r"^\d+\.\d+")])
def test_the_console_scripts_the_docs_name_start(script, flag, says, tmp_path):
    exe = BIN / script
    assert exe.is_file(), f"{exe} not found: pip install -r requirements.txt"
    run = subprocess.run([str(exe), flag], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HOME": str(tmp_path)})
    assert run.returncode == 0, f"{exe} {flag} failed:\n{run.stderr[-3000:]}"
    assert re.search(says, run.stdout, re.M), run.stdout[:500]


@pytest.mark.parametrize("mode", ["new", "exists"])
def test_push_sends_the_built_kernel_and_bundle_through_the_real_cli(mode, built, tmp_path, monkeypatch):
    the_cli(monkeypatch)
    with stand_in(mode) as server:
        run = _push(built, cli_env(tmp_path / "home", server.server_address[1]))
    assert run.returncode == 0, run.stdout + run.stderr
    calls = server.calls
    assert calls and all(c.host == "localhost" and c.method != "CONNECT" for c in calls), calls
    auth = f"Basic {base64.b64encode(f'{USER}:{KEY}'.encode()).decode()}"
    assert all(c.headers.get("Authorization") == auth for c in calls if c.path.startswith(API))
    dataset = built / "dataset"
    # the bundle: every file, folders zipped (--dir-mode zip), the metadata file itself not uploaded
    expected = {p.name for p in dataset.iterdir() if p.is_file() and p.name != "dataset-metadata.json"}
    expected |= {f"{p.name}.zip" for p in dataset.iterdir() if p.is_dir()}
    assert sorted(server.blobs.values()) == sorted(expected) and "wheels.zip" in expected
    starts = {c.json()["name"]: c.json() for c in server.api("blobs.BlobApiService/StartBlobUpload")}
    puts = {c.path.removeprefix("/upload/"): c.body for c in calls if c.method == "PUT"}
    assert sorted(puts) == sorted(server.blobs)
    for token, name in server.blobs.items():
        assert starts[name]["type"] == "DATASET" and int(starts[name]["contentLength"]) == len(puts[token])
        if (dataset / name).is_file():
            assert puts[token] == (dataset / name).read_bytes(), name
    wheels = next(puts[t] for t, n in server.blobs.items() if n == "wheels.zip")
    assert any(re.fullmatch(r"landmark_kit-.*\.whl", n) for n in zipfile.ZipFile(io.BytesIO(wheels)).namelist())
    meta = json.loads((dataset / "dataset-metadata.json").read_text())
    if mode == "new":
        (create,) = server.api("datasets.DatasetApiService/CreateDataset")
        body = create.json()
        assert f"{body['ownerSlug']}/{body['slug']}" == meta["id"] == f"{USER}/landmark-kit-recognition-bundle"
        assert body["title"] == meta["title"] and body["licenseName"] == "CC0-1.0" and body["isPrivate"] is True
        assert "Your private Dataset is being created" in run.stdout
    else:
        (version,) = server.api("datasets.DatasetApiService/CreateDatasetVersion")
        sent = version.json()
        body = sent["body"]
        assert f"{sent['ownerSlug']}/{sent['datasetSlug']}" == meta["id"]
        assert body["versionNotes"] == "landmark-kit build"
        assert "Dataset version is being created" in run.stdout
    assert sorted(f["token"] for f in body["files"]) == sorted(server.blobs)
    # the kernel: metadata as build wrote it, the notebook's cells as the source
    (save,) = server.api("kernels.KernelsApiService/SaveKernel")
    sent, kmeta = save.json(), json.loads((built / "kernel" / "kernel-metadata.json").read_text())
    assert sent["slug"] == kmeta["id"] == f"{USER}/landmark-kit-recognition" and sent["newTitle"] == kmeta["title"]
    assert (sent["language"], sent["kernelType"]) == ("python", "notebook")
    assert sent["isPrivate"] is True and sent["enableGpu"] is True and sent["enableInternet"] is False
    assert sent["datasetDataSources"] == kmeta["dataset_sources"] == [meta["id"]]
    assert sent["competitionDataSources"] == ["landmark-recognition-2021"]
    notebook = json.loads((built / "kernel" / kmeta["code_file"]).read_text())
    source = [c["source"] if isinstance(c["source"], str) else "".join(c["source"]) for c in notebook["cells"]]
    assert [c["source"] for c in json.loads(sent["text"])["cells"]] == source
    assert "Kernel version 1 successfully pushed" in run.stdout
    order = [c.path.removeprefix(API) for c in calls if c.path.startswith(API)]
    assert order[0] == "datasets.DatasetApiService/GetDatasetStatus" and order[-1].endswith("/SaveKernel")


def test_push_failures_are_one_line_and_exit_2(built, tmp_path, monkeypatch):
    the_cli(monkeypatch)
    status = f"kaggle datasets status {USER}/landmark-kit-recognition-bundle"
    with dead_endpoint() as port:  # network: nothing answers
        line = _assert_one_line(_push(built, cli_env(tmp_path / "home", port)), status)
    assert "Max retries exceeded" in line and "Connection refused" in line
    with stand_in("deny") as server:  # credentials: Kaggle says 401
        line = _assert_one_line(_push(built, cli_env(tmp_path / "home", server.server_address[1])), status)
    assert line.endswith("failed: Authentication required to call the Kaggle API.")
    assert [c.path for c in server.calls] == [API + "datasets.DatasetApiService/GetDatasetStatus"]  # stopped there
    with stand_in("reject-kernel") as server:  # the CLI exits 0 but prints the server's error
        line = _assert_one_line(_push(built, cli_env(tmp_path / "home", server.server_address[1])),
                                f"kaggle kernels push -p {built / 'kernel'}", after_uploads=True)
    assert line.endswith("failed: Kernel push error: Notebook exceeds the size limit")


def test_competition_download_through_the_real_cli_and_its_failures(tiny_competition, tmp_path,
                                                                   monkeypatch):
    the_cli(monkeypatch)
    served = tmp_path / "served"
    archive = shutil.make_archive(str(served / "landmark-test"), "zip", tiny_competition)
    stage = [sys.executable, "stages/00_data.py", "kaggle", "landmark-test", "--out", str(tmp_path / "comp")]
    with stand_in(files={"landmark-test.zip": Path(archive).read_bytes()}) as server:
        run = _run(stage, cli_env(tmp_path / "home", server.server_address[1]))
    assert run.returncode == 0, run.stdout + run.stderr
    (asked,) = server.api("competitions.CompetitionApiService/DownloadDataFiles")
    assert asked.json() == {"competitionName": "landmark-test"}
    counts = json.loads(run.stdout.strip().splitlines()[-1])
    assert counts["test"] == len(scan_split(tiny_competition, "test")) and counts["train.csv rows"] > 0
    assert not (tmp_path / "comp" / ".download").exists()
    download = f"kaggle competitions download -c landmark-test -p {tmp_path / 'dead' / '.download'}"
    stage[-1] = str(tmp_path / "dead")
    with dead_endpoint() as port:
        line = _assert_one_line(_run(stage, cli_env(tmp_path / "home", port)), download)
    assert "Max retries exceeded" in line and "Connection refused" in line
    with stand_in("deny") as server:
        line = _assert_one_line(_run(stage, cli_env(tmp_path / "home", server.server_address[1])), download)
    assert line.endswith("failed: Authentication required to call the Kaggle API.")
