"""HTTP front of the exporter: `/metrics` and a small landing page at `/`.

`/metrics` is always the Prometheus text format 0.0.4, which every Prometheus accepts (it lists it in
its Accept header) and which the cached encoder writes quickly. rigwatch exports only gauges and
counters without exemplars, so OpenMetrics would add nothing but encoding time.
"""
from __future__ import annotations

import html
import logging

from prometheus_client import CollectorRegistry

from exporter.exposition import CONTENT_TYPE, CachedTextEncoder
from rigwatch.http_server import BoundedServer, Limits

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


class MetricsApp:
    """The exporter's WSGI app: GET /metrics, GET / and 404 for anything else; other methods 501."""

    def __init__(self, registry: CollectorRegistry, backend: str):
        self.registry = registry
        self.encoder = CachedTextEncoder()
        self.backend = backend

    def __call__(self, environ, start_response):
        status, content_type, body = self._answer(environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/"))
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]

    def _answer(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method != "GET":  # as http.server answered before: only GET is served
            return "501 Not Implemented", "text/plain; charset=utf-8", f"unsupported method {method}\n".encode()
        if path == "/metrics":
            try:
                return "200 OK", CONTENT_TYPE, self.encoder.encode(self.registry)
            except Exception as e:  # a collector bug must not kill the server thread
                log.exception("collect failed")
                return "500 Internal Server Error", "text/plain; charset=utf-8", f"collect failed: {e}\n".encode()
        if path == "/":
            page = LANDING.format(backend=html.escape(self.backend))
            return "200 OK", "text/html; charset=utf-8", page.encode()
        return "404 Not Found", "text/plain; charset=utf-8", b"not found: try /metrics\n"


class MetricsServer:
    """Serves `registry` on host:port (port 0 picks a free one; see `.port`) on the bounded server of
    rigwatch.http_server: capped connections and threads, idle connections closed after
    `limits.idle_timeout_s`, a client hanging up logged at debug. Binds here, serves from `start()`."""

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 9842,
                 backend: str = "nvml", limits: Limits | None = None):
        self.app = MetricsApp(registry, backend)
        self._server = BoundedServer(self.app, host, port, limits=limits or Limits(), ident="rigwatch-exporter")

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return self._server.url

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()
