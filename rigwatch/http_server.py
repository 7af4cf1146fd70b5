"""The one HTTP server of rigwatch's processes: waitress with bounded connections, body, headers and
idle time, and JSON answers for the requests it refuses itself.

waitress's defaults suit a public web app, not a loopback sidecar: a 1 GiB request body (spooled to a
temp file above 512 KiB), 100 connections with a 120 s idle timeout (so 100 idle sockets lock out a
Prometheus scrape), and text/plain error pages. Here every limit is a named constant below, a
request over them is refused before its body is read, and nothing a client sends is ever written to
disk (`inbuf_overflow` is above the largest body waitress will buffer).

`BoundedServer(app, host, port)` binds (so a port in use fails at once) but starts nothing;
`start()` listens and serves from a thread, `stop()` closes every connection and joins it.
"""
from __future__ import annotations

import json
import logging
import math
import socket
import sys
import threading
import time
from dataclasses import dataclass

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher

# -- the limits, in one place ---------------------------------------------------------------------
# The detector's API takes tiny JSON ({"detectors": [...]}); the exporter takes no body at all.
MAX_BODY_BYTES = 64 * 1024
# Prometheus and curl send well under 1 KiB of headers; 16 KiB leaves room for a long bearer token.
MAX_HEADER_BYTES = 16 * 1024
# Above this, waitress spools a request body to a temp file. A body is refused once it reaches
# MAX_BODY_BYTES, but waitress checks after each recv (up to RECV_BYTES), so the buffer can hold up to
# MAX_BODY_BYTES + RECV_BYTES (chunked framing included) before the check: keep the threshold above that.
RECV_BYTES = 8192
INBUF_OVERFLOW_BYTES = MAX_BODY_BYTES + 2 * RECV_BYTES
# Open connections the server accepts before it stops accepting (the rest wait in the backlog).
CONNECTION_LIMIT = 500
# Connections waiting to be accepted; the kernel caps it at net.core.somaxconn (4096 on Linux >= 5.4).
BACKLOG = 1024
# Seconds an idle connection (no request in progress) is kept (whole seconds, rounded up). Short: a
# scraper reconnects cheaply, and idle sockets cannot pile up to the connection limit.
IDLE_TIMEOUT_S = 10
# How often idle connections are looked for: an idle one is closed within IDLE_TIMEOUT_S + this
# (+ one wake-up of the loop, 1 s at most).
CLEANUP_INTERVAL_S = 1
THREADS = 4
# After refusing a request the server still reads (and drops) what the client sends for a moment
# before closing: closing a socket with unread input makes the kernel answer RST, and a client that
# is still sending then sees "connection reset" instead of the 413/431 (Apache's "lingering close").
LINGER_S = 2.0
LINGER_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What a server accepts; the defaults are the constants above."""

    max_body_bytes: int = MAX_BODY_BYTES
    max_header_bytes: int = MAX_HEADER_BYTES
    connection_limit: int = CONNECTION_LIMIT
    backlog: int = BACKLOG
    idle_timeout_s: float = IDLE_TIMEOUT_S
    threads: int = THREADS

    def adjustments(self, host: str, port: int, ident: str) -> Adjustments:
        if self.connection_limit < 1 or self.threads < 1 or self.idle_timeout_s <= 0:
            raise ValueError("connection_limit and threads must be >= 1, idle_timeout_s > 0")
        return Adjustments(
            host=host, port=port, ident=ident, threads=self.threads,
            max_request_body_size=self.max_body_bytes, max_request_header_size=self.max_header_bytes,
            inbuf_overflow=max(INBUF_OVERFLOW_BYTES, self.max_body_bytes + 2 * RECV_BYTES),
            recv_bytes=RECV_BYTES, connection_limit=self.connection_limit, backlog=self.backlog,
            # waitress takes whole seconds here (and for the loop timeout): round up, never to 0
            channel_timeout=max(1, math.ceil(self.idle_timeout_s)),
            cleanup_interval=CLEANUP_INTERVAL_S,
            # poll(), not select(): select() cannot watch a descriptor numbered above 1024
            asyncore_use_poll=True,
            # the loop wakes at least this often (whole seconds: 0 would make it spin) for the idle check
            asyncore_loop_timeout=1,
        )


# -- refused requests answer JSON -------------------------------------------------------------------

class JsonErrorTask(ErrorTask):
    """waitress's own refusals (400 malformed, 413 body, 431 headers, 501 transfer encoding, 500 when
    the app fails before answering) as `{"error": ..., "status": N}`, the API's error shape."""

    def execute(self):
        e = self.request.error
        body = json.dumps({"error": f"{e.reason}: {e.body}", "status": e.code}).encode()
        self.status = f"{e.code} {e.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()  # the rest of what the client sends is never parsed
        self.channel.linger = True
        self.content_length = len(body)
        self.write(body)


def _is_disconnect(msg, kwargs) -> bool:
    if str(msg).startswith("Client disconnected"):
        return True
    if kwargs.get("exc_info"):
        exc = sys.exc_info()[1]
        return isinstance(exc, ConnectionError | TimeoutError)
    return False


class _ChannelLog(logging.LoggerAdapter):
    """waitress's channel logger, with a client that hangs up mid-answer logged at debug and without
    a traceback: that is the client's business, not an error of the server."""

    def log(self, level, msg, *args, **kwargs):
        if level > logging.DEBUG and _is_disconnect(msg, kwargs):
            exc = sys.exc_info()[1]
            kwargs.pop("exc_info", None)
            msg = f"client disconnected: {msg}" + (f" ({type(exc).__name__})" if exc is not None else "")
            level = logging.DEBUG
        super().log(level, msg, *args, **kwargs)


class BoundedChannel(HTTPChannel):
    """waitress's channel with JSON refusals, quiet disconnects and a lingering close after a refusal."""

    error_task_class = JsonErrorTask
    logger = _ChannelLog(logging.getLogger("waitress"), {})
    linger = False  # set by JsonErrorTask
    _linger_deadline: float | None = None
    _linger_left = 0

    def handle_close(self):
        if self.linger and self._linger_deadline is None and self.connected:
            self.linger = False
            try:
                self.socket.shutdown(socket.SHUT_WR)  # the answer is out: FIN after it
            except OSError:
                pass
            else:
                self._linger_deadline = time.monotonic() + LINGER_S
                self._linger_left = LINGER_BYTES
                self.will_close = self.close_when_flushed = False
                return
        self._linger_deadline = None
        super().handle_close()

    def readable(self):
        if self._linger_deadline is None:
            return super().readable()
        if time.monotonic() >= self._linger_deadline:
            self.handle_close()
            return False
        return True

    def writable(self):
        return False if self._linger_deadline is not None else super().writable()

    def handle_read(self):
        if self._linger_deadline is None:
            return super().handle_read()
        try:
            data = self.socket.recv(65536)
        except OSError:
            data = b""
        self._linger_left -= len(data)
        if not data or self._linger_left <= 0:
            self.handle_close()


class _TcpServer(TcpWSGIServer):
    channel_class = BoundedChannel


# -- the server -------------------------------------------------------------------------------------

class BoundedServer:
    """A WSGI app on host:port under `limits` (port 0 picks a free one; see `.port`)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, *, limits: Limits = Limits(),
                 ident: str = "rigwatch", name: str = "rigwatch-http"):
        self.limits = limits
        self.name = name
        adj = limits.adjustments(host.strip("[]"), port, ident)
        self._map: dict = {}
        self._dispatcher = ThreadedTaskDispatcher()
        # _start=False: bind now, listen in start() (a constructor starts nothing)
        self._servers = [_TcpServer(app, self._map, False, dispatcher=self._dispatcher, adj=adj,
                                    sockinfo=sockinfo) for sockinfo in adj.listen]
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._servers[0].effective_port)

    @property
    def host(self) -> str:
        return str(self._servers[0].effective_host)

    @property
    def url(self) -> str:
        host = self.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    def start(self) -> None:
        self._dispatcher.set_thread_count(self.limits.threads)
        for server in self._servers:
            server.accept_connections()
        adj = self._servers[0].adj
        self._thread = threading.Thread(
            target=wasyncore.loop, name=self.name, daemon=True,
            kwargs={"timeout": adj.asyncore_loop_timeout, "map": self._map, "use_poll": adj.asyncore_use_poll})
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Closes the listening sockets and every connection, then stops the worker threads."""
        if self._thread is not None and self._thread.is_alive():
            # closed from inside the loop's own thread: the loop is never polling a closed descriptor,
            # and it ends when its map is empty
            self._servers[0].trigger.pull_trigger(lambda: wasyncore.close_all(self._map, ignore_all=True))
            self._thread.join(timeout)
        else:
            wasyncore.close_all(self._map, ignore_all=True)
        self._thread = None
        self._dispatcher.shutdown(cancel_pending=True, timeout=timeout)
