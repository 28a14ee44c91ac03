"""A real HTTP server on 127.0.0.1 for tests that download: no mocks of the network layer.

Serves one directory over HTTP/1.1 with byte-range support (``206 Partial Content``, ``416``)
so resumable downloads can be exercised, and injects the faults real servers produce:

    with LoopbackServer(tmp_path) as srv:
        srv.truncate("/a.tar", after=1000)     # send 1000 body bytes, then close (once)
        srv.drop("/a.tar")                      # close without any response (once)
        srv.fail("/b.tar", 404, times=None)     # always 404
        srv.fail("/b.tar", 500, times=2)        # 500 twice, then serve normally
        srv.ignore_range = True                 # answer Range requests with a full 200
        srv.add_header("/c.tgz", "Content-Encoding", "gzip")  # Apache's .tgz mistake
        requests.get(srv.url("/a.tar"))
        srv.requests_for("/a.tar")              # what the client actually sent

Import it from a test as ``from loopback import LoopbackServer`` (pytest puts ``tests/`` on
``sys.path``). Faults are consumed in the order they were added; ``path="*"`` matches any path.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class Fault:
    """One injected misbehaviour; ``times=None`` means forever."""

    path: str
    kind: str  # "truncate" | "drop" | "status"
    times: int | None = 1
    after: int = 0
    status: int = 500


@dataclass
class Request:
    """What the server saw: enough to assert that a client resumed with a Range request."""

    method: str
    path: str
    range: str | None
    status: int | None
    headers: dict[str, str] = field(default_factory=dict)


class LoopbackServer:
    """Threaded ``http.server`` on an ephemeral loopback port; use as a context manager."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.ignore_range = False
        self.requests: list[Request] = []
        self._faults: list[Fault] = []
        self._headers: dict[str, list[tuple[str, str]]] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> LoopbackServer:
        handler = _make_handler(self)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """Absolute URL of ``path`` (relative to the served directory)."""
        return f"{self.base_url}/{path.lstrip('/')}"

    # -- fault switches --------------------------------------------------------------------
    def truncate(self, path: str, after: int, times: int | None = 1) -> None:
        """Announce the full length but send only ``after`` body bytes, then close."""
        self._add(Fault(_norm(path), "truncate", times=times, after=after))

    def drop(self, path: str, times: int | None = 1) -> None:
        """Read the request and close the connection without answering."""
        self._add(Fault(_norm(path), "drop", times=times))

    def fail(self, path: str, status: int, times: int | None = None) -> None:
        """Answer with an error status (404, 500, 503...) instead of the file."""
        self._add(Fault(_norm(path), "status", times=times, status=status))

    def add_header(self, path: str, name: str, value: str) -> None:
        """Add a response header to every answer for ``path`` (e.g. a bogus Content-Encoding)."""
        with self._lock:
            self._headers.setdefault(_norm(path), []).append((name, value))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._headers.clear()
        self.ignore_range = False

    # -- inspection ------------------------------------------------------------------------
    def requests_for(self, path: str) -> list[Request]:
        path = _norm(path)
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def range_requests(self, path: str) -> list[Request]:
        return [r for r in self.requests_for(path) if r.range]

    # -- internals -------------------------------------------------------------------------
    def _add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.path in (path, "*") and (fault.times is None or fault.times > 0):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    def _record(self, req: Request) -> None:
        with self._lock:
            self.requests.append(req)

    def _extra_headers(self, path: str) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._headers.get(path, [])) + list(self._headers.get("*", []))


def _norm(path: str) -> str:
    return path if path == "*" else "/" + path.lstrip("/")


def _make_handler(server: LoopbackServer) -> type[SimpleHTTPRequestHandler]:
    class Handler(SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(server.directory), **kwargs)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # keep test output clean

        def do_HEAD(self) -> None:  # noqa: N802
            self._serve(body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path = _norm(unquote(urlsplit(self.path).path))
            rng = self.headers.get("Range")
            req = Request(self.command, path, rng, None, dict(self.headers.items()))
            server._record(req)

            fault = server._take_fault(path)
            if fault is not None and fault.kind == "drop":
                self.close_connection = True
                return
            if fault is not None and fault.kind == "status":
                req.status = fault.status
                self._empty(fault.status)
                return

            fs_path = Path(self.translate_path(path))
            if not fs_path.is_file():
                req.status = 404
                self._empty(404)
                return
            data = fs_path.read_bytes()
            total = len(data)
            start, end, status = 0, total - 1, 200
            if rng and not server.ignore_range:
                m = _RANGE.match(rng.strip())
                if m and (m.group(1) or m.group(2)):
                    if m.group(1):
                        start = int(m.group(1))
                        end = min(int(m.group(2)), total - 1) if m.group(2) else total - 1
                    else:  # suffix range: last N bytes
                        start, end = max(total - int(m.group(2)), 0), total - 1
                    if start >= total or start > end:
                        req.status = 416
                        self._empty(416, [("Content-Range", f"bytes */{total}")])
                        return
                    status = 206
            payload = data[start : end + 1]
            req.status = status
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
            for name, value in server._extra_headers(path):
                self.send_header(name, value)
            if fault is not None and fault.kind == "truncate":
                self.send_header("Connection", "close")
            self.end_headers()
            if not body:
                return
            if fault is not None and fault.kind == "truncate":
                payload = payload[: fault.after]
                self.close_connection = True
            try:
                self.wfile.write(payload)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _empty(self, status: int, headers: list[tuple[str, str]] | None = None) -> None:
            self.send_response(status, HTTPStatus(status).phrase)
            for name, value in headers or []:
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler
