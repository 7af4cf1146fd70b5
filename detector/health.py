"""Source health: is each data source (Prometheus, Loki) answering, and how many requests failed.

One instance is shared by the clients (their `on_error` counts every failed attempt), the plugins
(which say up or down after each read) and the service (which publishes
rigwatch_detector_source_up / rigwatch_detector_source_errors from `snapshot()`).
"""
from __future__ import annotations

import threading


class SourceHealth:
    def __init__(self, sources: tuple[str, ...] = ()):
        self._lock = threading.Lock()
        self._up: dict[str, int] = {}
        self._errors: dict[str, int] = {}
        for source in sources:
            self.declare(source)

    def declare(self, source: str) -> None:
        """A source that is read: published as down with 0 errors until its first answer."""
        with self._lock:
            self._up.setdefault(source, 0)
            self._errors.setdefault(source, 0)

    def set_up(self, source: str, up: bool) -> None:
        with self._lock:
            self._up[source] = int(up)
            self._errors.setdefault(source, 0)

    def count_error(self, source: str) -> None:
        with self._lock:
            self._errors[source] = self._errors.get(source, 0) + 1
            self._up.setdefault(source, 0)

    def counter(self, source: str):
        """A client's on_error callback counting into `source`."""
        return lambda _exc: self.count_error(source)

    def is_up(self, source: str) -> bool:
        with self._lock:
            return self._up.get(source, 0) == 1

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        with self._lock:
            return dict(self._up), dict(self._errors)


class QueryHealth:
    """Per detector: is Prometheus accepting its queries, and how many it refused.

    A refused query (a typo such as `rate(x[5m`, a feature query gone wrong) pauses only its own
    detector; the source stays up. The plugin publishes this as rigwatch_detector_query_ok /
    rigwatch_detector_query_errors_total{detector}."""

    def __init__(self):
        self._lock = threading.Lock()
        self._failing: dict[str, str] = {}  # detector -> the key of its refused query
        self._errors: dict[str, int] = {}

    def refused(self, detector: str, key: str) -> None:
        with self._lock:
            self._failing[detector] = key
            self._errors[detector] = self._errors.get(detector, 0) + 1

    def answered(self, detector: str) -> None:
        with self._lock:
            self._failing.pop(detector, None)

    def failing(self) -> dict[str, str]:
        with self._lock:
            return dict(self._failing)

    def errors(self) -> dict[str, int]:
        with self._lock:
            return dict(self._errors)
