"""Incidents: runs of anomalous scores (> threshold) merged per detector and series.

The same online tracker serves the live API (GET /api/v1/anomalies) and the backtest report, so
both say the same thing about the same data. A run starts at its first anomalous point and ends at
its last one (tight brackets: normal data around it is not part of the incident); runs closer than
`merge_gap` merge; a merged incident shorter than `min_duration` is dropped as a blip. With a
detector's `onsets` (config `onsets:`), a run may only start at a point its series' OnsetFilter
passes, so one long episode that dips and rings on opens one incident, not one per ring.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detector.labels import incident_id
from detector.models import RULES, OnsetFilter
from detector.scores import ScoreBatch, incident_labels, series_id


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
    is_open: bool = True  # still being extended by new anomalous points

    def duration(self) -> float:
        return self.end - self.start + self.step

    @property
    def id(self) -> str:
        """What POST /api/v1/feedback names it by (stable while it grows, and across a restart)."""
        return incident_id(self.detector, series_id(self.series_labels), self.start)

    def to_dict(self, fmt_time=None) -> dict[str, Any]:
        f = fmt_time or (lambda x: x)
        d = {"id": self.id, "detector": self.detector, "model": self.model, "labels": dict(self.labels),
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


def summarize(detector: str, model: str, labels: dict[str, str], y: float, expected: float,
              lower: float, upper: float, score: float, explanation: list[str] | None = None) -> str:
    """One line a person reads: where, what happened against what was expected, and why."""
    who = ", ".join(f"{k}={v}" for k, v in sorted(incident_labels(labels).items()))
    where = f" ({who})" if who else ""
    if model in RULES:
        s = f"{detector}{where}: {RULES[model].describe(y, expected)} (score {score:.2f})"
    elif np.isfinite(expected):
        side = "above" if y > expected else "below"
        s = (f"{detector}{where}: {y:.4g} {side} expected {expected:.4g} "
             f"(band {lower:.4g}..{upper:.4g}, score {score:.2f}, model {model})")
    elif (not np.isfinite(y) or not np.isfinite(expected)) and explanation:
        # no value to show (a log anomaly is an event), or none to set it against (a rule in
        # context, e.g. busy with nobody asking): its own explanation says what happened
        return f"{detector}{where}: {explanation[0]} (score {score:.2f})"
    else:
        s = f"{detector}{where}: value {y:.4g}, score {score:.2f} (model {model})"
    if explanation:
        s += "; drivers: " + "; ".join(explanation[:3])
    return s


@dataclass(frozen=True)
class IncidentPolicy:
    """How the tracker merges one detector's anomalous scores into incidents."""

    min_duration: float = 60.0  # shorter merged runs are dropped as blips (0: an event is an incident)
    merge_gap: float = 60.0  # anomalous runs closer than this are one incident
    # OnsetFilter's keyword durations (config `onsets:`): an anomalous point opens a new incident only
    # when the series' filter passes it (a new high, or anomalous again after a quiet spell), so an
    # episode still ringing after its incident closed opens no second one; None: every point may open
    onsets: dict[str, float] | None = None


class IncidentTracker:
    """Feed ScoreBatches in time order per series; finished incidents land in `closed`.

    `policy` says per detector how runs merge (each plugin gives its detectors'); a detector not in
    it gets `default`. `quiet(detector, t)`: a mask of the points that open or extend no incident
    (maintenance windows); None: every point counts."""

    def __init__(self, *, threshold: float = 1.0, policy: dict[str, IncidentPolicy] | None = None,
                 default: IncidentPolicy = IncidentPolicy(), step: float = 60.0, keep: int | None = 1000,
                 quiet: Callable[[str, np.ndarray], np.ndarray] | None = None):
        self.quiet = quiet
        self.threshold = threshold
        self.policy = dict(policy or {})
        self.default = default
        self.step = step
        self.open: dict[tuple[str, str], Incident] = {}
        self._onsets: dict[tuple[str, str], OnsetFilter] = {}  # per (detector, series), created lazily
        self.closed: deque[Incident] | list[Incident] = deque(maxlen=keep) if keep else []

    def set_policy(self, policy: dict[str, IncidentPolicy]) -> None:
        """A reloaded config's policies (open incidents keep going under the new ones). A detector
        whose `onsets` changed starts its series' filters afresh under the new parameters."""
        changed = {d for d, _ in self._onsets
                   if self._policy(d).onsets != policy.get(d, self.default).onsets}
        self.policy = dict(policy)
        self._onsets = {k: f for k, f in self._onsets.items() if k[0] not in changed}

    def _policy(self, detector: str) -> IncidentPolicy:
        return self.policy.get(detector, self.default)

    def update(self, batch: ScoreBatch) -> None:
        sid = series_id(batch.labels)
        key = (batch.detector, sid)
        policy = self._policy(batch.detector)
        gap = policy.merge_gap
        score = np.asarray(batch.score, float)
        if self.quiet is not None and len(score):
            score = np.where(self.quiet(batch.detector, np.asarray(batch.t, float)), 0.0, score)
        onset = self._onset_mask(key, policy, batch.t, score)
        hot = np.nonzero(score > self.threshold)[0]  # NaN (no opinion) is never above it
        if len(hot):
            score = np.nan_to_num(score, nan=0.0)
        for i in hot:
            t = float(batch.t[i])
            cur = self.open.get(key)
            if cur is not None and t - cur.end > gap + self.step * 0.5:
                self._close(key)
                cur = None
            if cur is None:
                if onset is not None and not onset[i]:
                    continue  # no onset: the same episode still ringing opens nothing
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

    def _onset_mask(self, key: tuple[str, str], policy: IncidentPolicy, t, score: np.ndarray) -> np.ndarray | None:
        """Which points the series' onset filter passes (it sees every point, in order, NaN too);
        None when the detector has no `onsets`."""
        if policy.onsets is None:
            return None
        f = self._onsets.get(key)
        if f is None:
            f = self._onsets[key] = OnsetFilter(**policy.onsets, threshold=self.threshold)
        passed = f.filter(t, score)
        return np.nan_to_num(passed, nan=0.0) != 0.0

    def _close(self, key) -> None:
        inc = self.open.pop(key)
        inc.is_open = False
        if inc.duration() >= self._policy(inc.detector).min_duration:
            self.closed.append(inc)

    def flush(self) -> None:
        for key in list(self.open):
            self._close(key)

    def recent(self, include_open: bool = True) -> list[Incident]:
        items = list(self.closed)
        if include_open:
            items += [i for i in self.open.values()
                      if i.duration() >= self._policy(i.detector).min_duration]
        return sorted(items, key=lambda i: i.start)
