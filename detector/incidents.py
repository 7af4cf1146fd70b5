"""Incidents: runs of anomalous scores (> threshold) merged per detector and series.

The same online tracker serves the live API (GET /api/v1/anomalies) and the backtest report, so
both say the same thing about the same data. A run starts at its first anomalous point and ends at
its last one (tight brackets: normal data around it is not part of the incident); runs closer than
`merge_gap` merge; a merged incident shorter than `min_duration` is dropped as a blip.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detector.engine import ScoreBatch, incident_labels, series_id, summarize


@dataclass
class Incident:
    detector: str
    model: str
    labels: dict[str, str]  # identifying values only (gpu="0", container="ollama")
    series_labels: dict[str, str]  # every source label (job, instance, uuid...)
    start: float
    end: float
    peak_score: float
    peak_t: float
    summary: str
    points: int = 1
    step: float = 60.0
    explanation: list[str] | None = None
    peak: dict[str, float | None] = field(default_factory=dict)  # value, expected, lower, upper at the peak

    def duration(self) -> float:
        return self.end - self.start + self.step

    def to_dict(self, fmt_time=None) -> dict[str, Any]:
        f = fmt_time or (lambda x: x)
        d = {"detector": self.detector, "model": self.model, "labels": dict(self.labels),
             "start": f(self.start), "end": f(self.end), "peak_score": _finite(self.peak_score),
             "peak_time": f(self.peak_t), "summary": self.summary, "points": self.points,
             "series_labels": dict(self.series_labels)}
        if self.peak:
            d["peak"] = {k: _finite(v) for k, v in self.peak.items()}
        if self.explanation:
            d["explanation"] = list(self.explanation)
        return d


def _finite(v) -> float | None:
    """JSON has no NaN/Infinity: a missing band is null, an unbounded score a very large number."""
    if v is None or v != v:
        return None
    v = float(v)
    if v in (float("inf"), float("-inf")):
        return 1e308 if v > 0 else -1e308
    return round(v, 6)


class IncidentTracker:
    """Feed ScoreBatches in time order per series; finished incidents land in `closed`."""

    def __init__(self, *, threshold: float = 1.0, min_duration: dict[str, float] | float = 60.0,
                 merge_gap: dict[str, float] | float = 300.0, step: float = 60.0, keep: int | None = 1000):
        self.threshold = threshold
        self._min_duration = min_duration
        self._merge_gap = merge_gap
        self.step = step
        self.open: dict[tuple[str, str], Incident] = {}
        self.closed: deque[Incident] | list[Incident] = deque(maxlen=keep) if keep else []
        # detectors whose anomalies are events (a log line, a log window): one scored point is the
        # whole incident, so no minimum duration applies (the log side adds its names here)
        self.events: set[str] = set()

    def _get(self, table, detector: str) -> float:
        return table.get(detector, 60.0) if isinstance(table, dict) else float(table)

    def _min_duration_of(self, detector: str) -> float:
        return 0.0 if detector in self.events else self._get(self._min_duration, detector)

    def update(self, batch: ScoreBatch) -> None:
        sid = series_id(batch.labels)
        key = (batch.detector, sid)
        gap = self._get(self._merge_gap, batch.detector)
        score = np.nan_to_num(batch.score, nan=0.0)
        for i in np.nonzero(score > self.threshold)[0]:
            t = float(batch.t[i])
            cur = self.open.get(key)
            if cur is not None and t - cur.end > gap + self.step * 0.5:
                self._close(key)
                cur = None
            if cur is None:
                cur = Incident(batch.detector, batch.model, incident_labels(batch.labels), dict(batch.labels),
                               t, t, float(score[i]), t, "", 0, self.step)
                self.open[key] = cur
            cur.end = t
            cur.points += 1
            if score[i] >= cur.peak_score or not cur.summary:
                cur.peak_score = float(score[i])
                cur.peak_t = t
                cur.model = batch.model
                expl = batch.explanation
                cur.explanation = expl
                cur.peak = {"value": float(batch.y[i]), "expected": float(batch.expected[i]),
                            "lower": float(batch.lower[i]), "upper": float(batch.upper[i])}
                cur.summary = summarize(batch.detector, batch.model, batch.labels, float(batch.y[i]),
                                        float(batch.expected[i]), float(batch.lower[i]),
                                        float(batch.upper[i]), float(score[i]), expl)
        # an open incident whose series has been quiet for longer than the merge gap is over
        cur = self.open.get(key)
        if cur is not None and len(batch.t) and float(batch.t[-1]) - cur.end > gap:
            self._close(key)

    def _close(self, key) -> None:
        inc = self.open.pop(key)
        if inc.duration() >= self._min_duration_of(inc.detector):
            self.closed.append(inc)

    def flush(self) -> None:
        for key in list(self.open):
            self._close(key)

    def recent(self, include_open: bool = True) -> list[Incident]:
        items = list(self.closed)
        if include_open:
            items += [i for i in self.open.values()
                      if i.duration() >= self._min_duration_of(i.detector)]
        return sorted(items, key=lambda i: i.start)
