"""An Alertmanager webhook target on 127.0.0.1 in this process: the receiver `make demo` prints
notifications from and the end-to-end tests assert on. A tiny ThreadingHTTPServer that keeps every
POSTed notification (Alertmanager's webhook JSON) and answers 400 to anything that is not one."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness.server_thread import ServerThread


class WebhookReceiver(ServerThread):
    """An Alertmanager webhook target on 127.0.0.1 collecting every POSTed notification (its JSON).

    `on_notification(payload)` is called for each one (from the server thread), e.g. to print it."""

    def __init__(self, on_notification: Callable[[dict], None] | None = None, path: str = "/alerts"):
        self.path = path
        self.notifications: list[dict] = []
        self.bad_requests = 0
        self._cond = threading.Condition()
        self._on = on_notification
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    payload = json.loads(body)
                    ok = self.path == receiver.path and isinstance(payload, dict)
                except ValueError:
                    ok = False
                # record before answering: whoever sees the answer sees the notification kept
                if ok:
                    with receiver._cond:
                        receiver.notifications.append(payload)
                        receiver._cond.notify_all()
                    if receiver._on is not None:
                        receiver._on(payload)
                else:
                    with receiver._cond:
                        receiver.bad_requests += 1
                self.send_response(200 if ok else 400)
                self.end_headers()

            def log_message(self, *args):  # keep the demo's and the test's output clean
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self.url = f"http://127.0.0.1:{server.server_address[1]}{path}"
        super().__init__(server, "webhook")

    def alerts(self) -> list[dict]:
        """Every alert of every notification received so far (status, labels, annotations...)."""
        with self._cond:
            return [a for n in self.notifications for a in n.get("alerts", [])]

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float) -> dict | None:
        """The first received alert matching predicate, waiting up to timeout seconds; None if none."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for n in self.notifications:
                    for a in n.get("alerts", []):
                        if predicate(a):
                            return a
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 1.0))
