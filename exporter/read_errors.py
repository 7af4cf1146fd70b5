"""Thread-safe tally of failed reads, exported as `gpu_exporter_read_errors_total{field}`."""
from __future__ import annotations

import threading


class ReadErrors:
    """Counts failures per field name. Shared by the NVML reader, the Xid watcher, the container
    refresher and the /proc attributor, which run on different threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def inc(self, field: str) -> None:
        with self._lock:
            self._counts[field] = self._counts.get(field, 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
