"""Operator labels: feedback on incidents (true or false positive) and maintenance windows.

Both are side state of the model store (`feedback/labels.json`, `feedback/maintenance.json`, read
and written through ModelStore.read_blob/write_blob: atomic, beside the models, surviving a
restart). A file that does not parse is logged and read as an empty list: labels never stop a
start-up. Windows may also come from the config (`maintenance:`); those are not stored.

What they change:
- training: points inside a maintenance window, and a confirmed true positive's points on its
  series, are left out of a fit (`Exclusions.training_mask`); a false positive stays in (it was
  normal behaviour the model should learn).
- incidents: scores inside a maintenance window open no incident (`Exclusions.maintenance_mask`);
  the scores themselves are still published.
- the gate reads the labels of a detector over a time range with `LabelStore.labels_for`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from detector import config_values as cv
from detector.config_values import ConfigError
from detector.store import ModelStore

log = logging.getLogger(__name__)

VERDICTS = ("true_positive", "false_positive")
FEEDBACK_BLOB = "feedback/labels.json"
MAINTENANCE_BLOB = "feedback/maintenance.json"
_NOTE_MAX = 1000  # a note is a line for a person, not a document


def incident_id(detector: str, series: str, start: float) -> str:
    """A stable id for an incident: its detector, series and first anomalous point never change
    while it grows, and survive a restart of the tracker that found it."""
    return hashlib.sha256(f"{detector}\n{series}\n{int(start)}".encode()).hexdigest()[:16]


def _item_id(*parts: Any) -> str:
    return hashlib.sha256("\n".join(map(str, parts)).encode()).hexdigest()[:12]


def _series_matches(want: dict[str, str] | None, labels: dict[str, str]) -> bool:
    """A label names series by some of their labels (gpu="0"); none named: every series."""
    return not want or all(labels.get(k) == v for k, v in want.items())


@dataclass(frozen=True)
class Feedback:
    id: str
    detector: str
    label: str  # one of VERDICTS
    start: float
    end: float
    series: dict[str, str] | None = None  # the series it is about (an incident's labels); None: all
    incident: str | None = None  # the incident id it was given for, when it was
    note: str = ""
    created_at: float = 0.0

    def covers(self, detector: str, labels: dict[str, str], t: np.ndarray) -> np.ndarray:
        if detector != self.detector or not _series_matches(self.series, labels):
            return np.zeros(len(t), bool)
        return (t >= self.start) & (t <= self.end)


@dataclass(frozen=True)
class MaintenanceWindow:
    id: str
    start: float
    end: float
    detectors: tuple[str, ...] | None = None  # None: every detector
    note: str = ""
    source: str = "api"  # "api" (stored) or "config" (detector.yml)

    def covers(self, detector: str, t: np.ndarray) -> np.ndarray:
        if self.detectors is not None and detector not in self.detectors:
            return np.zeros(len(t), bool)
        return (t >= self.start) & (t <= self.end)


def _note(raw: dict, key: str) -> str:
    note = raw.get("note", "")
    if note == "":
        return ""
    note = cv.string(note, f"{key}note")
    if len(note) > _NOTE_MAX:
        raise ConfigError(f"{key}note", f"longer than {_NOTE_MAX} characters ({len(note)})")
    return note


def time_range(raw: dict, key: str, limit: str | None = None) -> tuple[float, float]:
    """`start` and `end` of a mapping (RFC3339), end after start; errors name `<key>start`..."""
    if "start" not in raw:
        raise ConfigError(f"{key}start", "missing (an RFC3339 time such as 2026-12-01T10:00:00Z)")
    if "end" not in raw:
        raise ConfigError(f"{key}end", "missing (an RFC3339 time such as 2026-12-01T12:00:00Z)")
    start = cv.timestamp(raw["start"], f"{key}start")
    end = cv.timestamp(raw["end"], f"{key}end")
    if end <= start:
        raise ConfigError(f"{key}end", "must be after start")
    if limit is not None:
        cv.duration(end - start, f"{key}end", limit)
    return start, end


def maintenance_window(raw: Any, key: str, *, source: str) -> MaintenanceWindow:
    """One window, from the config (`maintenance[2]`) or the API body (key ""), checked key by key."""
    d = cv.mapping(raw, key or "body")
    cv.check_keys(d, {"start", "end", "detectors", "note"}, key)
    prefix = f"{key}." if key else ""
    start, end = time_range(d, prefix, "maintenance[].duration")
    detectors = None
    if d.get("detectors") is not None:
        detectors = tuple(cv.labels(d["detectors"], f"{prefix}detectors", empty=False))
    note = _note(d, prefix)
    return MaintenanceWindow(_item_id(source, start, end, detectors, note), start, end, detectors, note, source)


def maintenance_config(raw: Any) -> tuple[MaintenanceWindow, ...]:
    """The config's `maintenance:` list."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("maintenance", f"expected a list of windows (got {type(raw).__name__})")
    return tuple(maintenance_window(w, f"maintenance[{i}]", source="config") for i, w in enumerate(raw))


class LabelStore:
    """Feedback and stored maintenance windows of one model store. Read once, then served from
    memory: the serving process is the store's only writer, so its copy stays the truth."""

    def __init__(self, store: ModelStore, *, clock: Callable[[], float] = time.time):
        self.store = store
        self.clock = clock
        self._lock = threading.Lock()
        self._feedback: list[Feedback] | None = None
        self._windows: list[MaintenanceWindow] | None = None

    def _read(self, name: str, build: Callable[[dict], Any]) -> list:
        try:
            raw = self.store.read_blob(name)
        except (OSError, ValueError) as e:
            log.warning("labels %s unreadable (%s): starting with none", name, e)
            return []
        if raw is None:
            return []
        try:
            doc = json.loads(raw)
            items = doc["items"] if isinstance(doc, dict) else None
            if not isinstance(items, list):
                raise ValueError("no list of items")
            return [build(item) for item in items]
        except (ValueError, KeyError, TypeError) as e:  # UnicodeDecodeError included
            log.warning("labels file %s is corrupt (%s: %s): ignoring it, starting with none",
                        self.store.persistence.describe(name), type(e).__name__, e)
            return []

    def _write(self, name: str, items: Iterable[Any]) -> None:
        doc = {"format": 1, "items": [asdict(i) for i in items]}
        self.store.write_blob(name, json.dumps(doc, indent=1).encode())

    def _loaded(self) -> None:
        if self._feedback is None:
            self._feedback = self._read(FEEDBACK_BLOB, _feedback_from)
        if self._windows is None:
            self._windows = self._read(MAINTENANCE_BLOB, _window_from)

    # -- feedback -------------------------------------------------------------------------------
    def feedback(self) -> list[Feedback]:
        with self._lock:
            self._loaded()
            return list(self._feedback)

    def add_feedback(self, detector: str, label: str, start: float, end: float, *,
                     series: dict[str, str] | None = None, incident: str | None = None,
                     note: str = "") -> Feedback:
        """Store a verdict; a newer one on the same incident (or the same range and series)
        replaces the older one: an operator may change their mind."""
        if label not in VERDICTS:
            raise ValueError(f"label must be one of {', '.join(VERDICTS)}")
        key = incident or _item_id(detector, start, end, sorted((series or {}).items()))
        item = Feedback(_item_id("feedback", detector, key), detector, label, float(start), float(end),
                        dict(series) if series else None, incident, note, self.clock())
        with self._lock:
            self._loaded()
            items = [f for f in self._feedback if f.id != item.id] + [item]
            self._write(FEEDBACK_BLOB, items)  # first: a failed write changes nothing in memory
            self._feedback = items
        return item

    def labels_for(self, detector: str, start: float, end: float) -> list[Feedback]:
        """The detector's feedback overlapping [start, end], oldest first (what the gate reads)."""
        return sorted((f for f in self.feedback()
                       if f.detector == detector and f.end >= start and f.start <= end),
                      key=lambda f: (f.start, f.created_at))

    # -- maintenance ----------------------------------------------------------------------------
    def maintenance(self) -> list[MaintenanceWindow]:
        with self._lock:
            self._loaded()
            return list(self._windows)

    def add_maintenance(self, window: MaintenanceWindow) -> MaintenanceWindow:
        with self._lock:
            self._loaded()
            items = [w for w in self._windows if w.id != window.id] + [window]
            self._write(MAINTENANCE_BLOB, items)
            self._windows = items
        return window

    def delete_maintenance(self, window_id: str) -> bool:
        with self._lock:
            self._loaded()
            items = [w for w in self._windows if w.id != window_id]
            if len(items) == len(self._windows):
                return False
            self._write(MAINTENANCE_BLOB, items)
            self._windows = items
        return True


def _feedback_from(d: dict) -> Feedback:
    f = Feedback(**d)
    if f.label not in VERDICTS or not isinstance(f.detector, str):
        raise ValueError(f"feedback {f.id!r}: label {f.label!r}")
    cv.number(f.start, "start", cv.Limit(0, 2.0 ** 35))
    cv.number(f.end, "end", cv.Limit(0, 2.0 ** 35))
    return f


def _window_from(d: dict) -> MaintenanceWindow:
    d = dict(d)
    if d.get("detectors") is not None:
        d["detectors"] = tuple(d["detectors"])
    w = MaintenanceWindow(**d)
    cv.number(w.start, "start", cv.Limit(0, 2.0 ** 35))
    cv.number(w.end, "end", cv.Limit(0, 2.0 ** 35))
    return w


@dataclass(frozen=True)
class Exclusions:
    """The labels in force at one moment (the config's windows plus the stored ones, and the
    confirmed true positives), as masks over a series' timestamps."""

    windows: tuple[MaintenanceWindow, ...] = ()
    true_positives: tuple[Feedback, ...] = ()

    @classmethod
    def current(cls, config_windows: Iterable[MaintenanceWindow], labels: LabelStore | None) -> Exclusions:
        if labels is None:
            return cls(tuple(config_windows))
        return cls(tuple(config_windows) + tuple(labels.maintenance()),
                   tuple(f for f in labels.feedback() if f.label == "true_positive"))

    def maintenance_mask(self, detector: str, t: np.ndarray) -> np.ndarray:
        """True where a point lies inside a maintenance window of `detector`."""
        t = np.asarray(t, float)
        mask = np.zeros(len(t), bool)
        for w in self.windows:
            mask |= w.covers(detector, t)
        return mask

    def training_mask(self, detector: str, labels: dict[str, str], t: np.ndarray) -> np.ndarray:
        """True where a point must not be trained on: maintenance, or a confirmed incident."""
        t = np.asarray(t, float)
        mask = self.maintenance_mask(detector, t)
        for f in self.true_positives:
            mask |= f.covers(detector, labels, t)
        return mask
