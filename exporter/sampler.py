"""Background threads that call a function every N seconds, off the scrape path."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("rigwatch.exporter.sampler")


class PeriodicThread:
    """Calls `fn` every `interval` seconds (first call at once unless `wait_first`) until stopped. An exception is logged and the
    loop goes on: a failing Docker daemon must not stop the NVML sampler, and neither may crash."""

    def __init__(self, name: str, interval: float, fn: Callable[[], object], wait_first: bool = False):
        if interval <= 0:
            raise ValueError(f"{name}: interval must be > 0, got {interval}")
        self.name = name
        self.interval = interval
        self.fn = fn
        self.wait_first = wait_first
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"rigwatch-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self.wait_first:
            self._stop.wait(self.interval)
        while not self._stop.is_set():
            try:
                self.fn()
            except Exception:  # keep sampling; the reason is in the log
                log.exception("%s failed", self.name)
            self._stop.wait(self.interval)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
