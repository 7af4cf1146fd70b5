"""HTTP front of the exporter: `/metrics` and a small landing page at `/`.

`/metrics` is always the Prometheus text format 0.0.4, which every Prometheus accepts (it lists it in
its Accept header) and which the cached encoder writes quickly. rigwatch exports only gauges and
counters without exemplars, so OpenMetrics would add nothing but encoding time.
"""
from __future__ import annotations

import html
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry

from exporter.exposition import CONTENT_TYPE, CachedTextEncoder

log = logging.getLogger("rigwatch.exporter.http")

LANDING = """<!doctype html>
<html><head><title>rigwatch exporter</title></head>
<body><h1>rigwatch exporter</h1>
<p>GPU (NVML) and container metrics for Prometheus. Backend: {backend}.</p>
<p><a href="/metrics">/metrics</a></p>
</body></html>
"""


def parse_listen(listen: str) -> tuple[str, int]:
    """"HOST:PORT" (IPv6 as "[::1]:PORT") -> (host, port); raises ValueError naming the problem."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"--listen must be HOST:PORT, got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port_n = int(port)
    if not 0 <= port_n <= 65535:
        raise ValueError(f"--listen port out of range: {port_n}")
    return host, port_n


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive: Prometheus reuses its connection
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's delayed
    # ACK (~40 ms on Linux) on a kept-alive connection.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            try:
                body = self.server.encoder.encode(self.server.registry)
            except Exception as e:  # a collector bug must not kill the server thread
                log.exception("collect failed")
                self._send(500, "text/plain; charset=utf-8", f"collect failed: {e}\n".encode())
                return
            self._send(200, CONTENT_TYPE, body)
        elif path == "/":
            page = LANDING.format(backend=html.escape(self.server.backend))
            self._send(200, "text/html; charset=utf-8", page.encode())
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics\n")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:  # scrapes every 15 s would flood the log
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registry: CollectorRegistry
    encoder: CachedTextEncoder
    backend: str


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """Serves `registry` on host:port (port 0 picks a free one; see `.port`)."""

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 9842,
                 backend: str = "nvml"):
        server_cls = _Server6 if ":" in host else _Server
        self._httpd = server_cls((host, port), _Handler)
        self._httpd.registry = registry
        self._httpd.encoder = CachedTextEncoder()
        self._httpd.backend = backend
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = self._httpd.server_address[0]
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    def start(self) -> None:
        # A short poll interval only makes stop() quicker; requests are served as they arrive.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="rigwatch-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() waits for a serve_forever loop: only if one runs
            self._httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self._httpd.server_close()
