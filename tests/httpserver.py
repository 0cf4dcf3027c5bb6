"""Helpers of the stage-00 download tests: the stage as a module, and a local HTTP server over a folder with
Range support (as S3 and the benchmark sites), a log of requests, and bodies cut or stalled on demand. Never
reaches the internet."""

from __future__ import annotations

import importlib.util
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stage00():
    """``stages/00_data.py`` as a module, so a test calls its ``main(argv)`` in-process."""
    spec = importlib.util.spec_from_file_location("stage00", ROOT / "stages" / "00_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Server:
    """ThreadingHTTPServer over a folder with Range support, a log of GET (path, Range) and HEAD requests, and
    paths whose next GET is cut after half the body."""

    def __init__(self, root: Path) -> None:
        self.gets: list[tuple[str, str | None]] = []
        self.heads: list[str] = []
        self.cut: set[str] = set()
        self.stall: set[str] = set()  # next GET sends half the body, then waits until `release` is set
        self.release = threading.Event()
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                server.heads.append(self.path)
                super().do_HEAD()

            def do_GET(self):
                server.gets.append((self.path, self.headers.get("Range")))
                path = Path(self.translate_path(self.path))
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
                if start >= len(data):
                    self.send_error(416)
                    return
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if self.path in server.stall:
                    server.stall.discard(self.path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    server.release.wait(60)
                    return
                if self.path in server.cut:
                    server.cut.discard(self.path)
                    body = body[: len(body) // 2]
                    self.close_connection = True
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()

    def tar_gets(self) -> list[tuple[str, str | None]]:
        return [g for g in self.gets if g[0].endswith(".tar")]
