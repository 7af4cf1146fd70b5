"""A server of this process (a socketserver, http.server's included) served from a daemon thread:
the Loki stand-in, the webhook receiver and the fake Docker API share this lifecycle."""
from __future__ import annotations

import socketserver
import threading
from typing import Self


class ServerThread:
    """`start()` serves `_server` on a daemon thread, `stop()` shuts it down and closes it (also when it
    was never started); a context manager too."""

    def __init__(self, server: socketserver.BaseServer, name: str, poll_interval: float = 0.5):
        self._server = server
        self._thread_name = name
        self._poll_interval = poll_interval
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._server.serve_forever, name=self._thread_name,
                                        kwargs={"poll_interval": self._poll_interval}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
