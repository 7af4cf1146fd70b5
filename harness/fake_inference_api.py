"""A small inference-server HTTP API on 127.0.0.1 answering the two calls rigwatch makes — Ollama's
`GET /api/ps` and ComfyUI's `GET /queue` — from documents the test sets, so the exporter's HTTP
sources are exercised over a real socket with the real requests client.

It can also misbehave on purpose: `answer_with("status", 500)`, `answer_with("garbage")` (a 200
that is not JSON) and `answer_with("hang")` (the request is held, unanswered, until `release()` or
`stop()`; `hung` is set while one is held, so a test can act while a poll is stuck).

Used by the exporter's inference tests.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness.server_thread import ServerThread

MAX_HANG_S = 60.0  # a held request gives up on its own, so a forgotten release never leaks a thread


class _Handler(BaseHTTPRequestHandler):
    # One request per connection, so a client never reuses a connection across modes.
    protocol_version = "HTTP/1.0"
    server: _Server

    def do_GET(self) -> None:  # noqa: N802
        srv = self.server
        path = self.path.split("?", 1)[0]
        srv.requests.append(path)
        mode, status = srv.mode
        if mode == "hang":
            srv.hung.set()
            srv.released.wait(MAX_HANG_S)
            return  # closes the connection without an answer
        if mode == "status":
            self._send(status, b'{"error": "injected failure"}')
        elif mode == "garbage":
            self._send(200, b"<html>not json</html>")
        elif path == "/api/ps" and srv.ollama_ps is not None:
            self._send(200, json.dumps(srv.ollama_ps).encode())
        elif path == "/queue" and srv.queue is not None:
            self._send(200, json.dumps(srv.queue).encode())
        else:
            self._send(404, b"404 page not found")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    ollama_ps: dict | None
    queue: dict | None
    mode: tuple[str, int]
    requests: list[str]
    hung: threading.Event
    released: threading.Event


class FakeInferenceAPI(ServerThread):
    """`with FakeInferenceAPI(ollama_ps={"models": [...]}, queue={...}) as api: api.url`. A document
    left None answers 404 on its path (the other server's API is not there)."""

    def __init__(self, ollama_ps: dict | None = None, queue: dict | None = None):
        server = _Server(("127.0.0.1", 0), _Handler)
        server.ollama_ps = ollama_ps
        server.queue = queue
        server.mode = ("json", 200)
        server.requests = []
        server.hung = threading.Event()
        server.released = threading.Event()
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        super().__init__(server, "fake-inference-api", poll_interval=0.05)

    # the documents served; set them between polls
    @property
    def ollama_ps(self) -> dict | None:
        return self._server.ollama_ps

    @ollama_ps.setter
    def ollama_ps(self, doc: dict | None) -> None:
        self._server.ollama_ps = doc

    @property
    def queue(self) -> dict | None:
        return self._server.queue

    @queue.setter
    def queue(self, doc: dict | None) -> None:
        self._server.queue = doc

    def answer_with(self, mode: str, status: int = 500) -> None:
        """"json" (the documents), "status" (that HTTP status), "garbage" or "hang"."""
        if mode not in ("json", "status", "garbage", "hang"):
            raise ValueError(f"unknown mode {mode!r}")
        self._server.released.clear()
        self._server.hung.clear()
        self._server.mode = (mode, status)

    @property
    def hung(self) -> threading.Event:
        """Set once a request is being held by "hang"."""
        return self._server.hung

    def release(self) -> None:
        """Let held requests go (they end without an answer)."""
        self._server.released.set()

    @property
    def requests(self) -> list[str]:
        return self._server.requests

    def stop(self) -> None:
        self.release()
        super().stop()
