"""Onset filtering: turn a per-point anomaly score into anomaly *onsets*.

A detector that is anomalous for 30 minutes produces 30 anomalous points, but an operator (and
NAB's scoring) wants one report at the start: NAB credits only the first detection inside a window
and charges every detection outside one.  ``OnsetFilter`` passes a score through only when

* it beats every score seen in the trailing ``horizon`` seconds (a new high, not the same episode
  still ringing), or
* it is the first anomalous score (> ``threshold``) after at least ``quiet`` seconds without one
  (a new episode after a quiet period),

and no sooner than ``hold`` seconds after the last onset (one episode rings for a while: its
later, higher peaks are the same fault, not a new one), and otherwise outputs ``0``.  It is causal
and keeps O(horizon) state; the incident tracker runs one per series of a detector with `onsets:`.
"""
from __future__ import annotations

from collections import deque

import numpy as np


class OnsetFilter:
    """Causal onset filter over (t, score) pairs; see module docstring.

    ``horizon``: trailing window (s) a score must beat to count as a new onset (NaN scores ignored).
    ``quiet``: seconds without an anomalous (> threshold) score after which the next anomalous
    score is an onset even if it does not beat the trailing maximum; ``None`` disables the rule.
    ``threshold``: what "anomalous" means for the quiet rule (rigwatch's convention: > 1).
    ``hold``: seconds after an onset during which no other point is one (0: no hold).
    """

    def __init__(self, horizon: float = 86400.0, quiet: float | None = None, threshold: float = 1.0,
                 hold: float = 0.0):
        if horizon <= 0:
            raise ValueError(f"OnsetFilter: horizon must be > 0 seconds, got {horizon!r}")
        if quiet is not None and quiet <= 0:
            raise ValueError(f"OnsetFilter: quiet must be > 0 seconds or None, got {quiet!r}")
        self.horizon = float(horizon)
        self.quiet = None if quiet is None else float(quiet)
        self.threshold = float(threshold)
        if not hold >= 0:
            raise ValueError(f"OnsetFilter: hold must be >= 0 seconds, got {hold!r}")
        self.hold = float(hold)
        self._last_onset_t = -np.inf
        # monotonic deque of (t, score) with decreasing scores: its head is the trailing maximum
        self._maxq: deque[tuple[float, float]] = deque()
        self._last_anomalous_t = -np.inf

    def update(self, t: float, score: float) -> float:
        """Feed one point; return the score if it is an onset, else 0.0 (NaN stays NaN)."""
        if score != score:  # NaN
            return float("nan")
        q = self._maxq
        while q and q[0][0] <= t - self.horizon:
            q.popleft()
        trailing_max = q[0][1] if q else -np.inf
        onset = score > trailing_max
        if not onset and self.quiet is not None and score > self.threshold:
            onset = (t - self._last_anomalous_t) >= self.quiet
        if onset and t - self._last_onset_t < self.hold:
            onset = False
        if onset and score > self.threshold:
            self._last_onset_t = t
        if score > self.threshold:
            self._last_anomalous_t = t
        while q and q[-1][1] <= score:
            q.pop()
        q.append((t, score))
        return float(score) if onset else 0.0

    def filter(self, t, scores) -> np.ndarray:
        t = np.asarray(t, float)
        scores = np.asarray(scores, float)
        if len(t) != len(scores):
            raise ValueError(f"t and scores differ in length ({len(t)} != {len(scores)})")
        return np.array([self.update(ti, si) for ti, si in zip(t.tolist(), scores.tolist(), strict=True)])

    def get_state(self) -> dict:
        arr = np.array(self._maxq, float).reshape(-1, 2)
        return {"horizon": self.horizon, "quiet": self.quiet, "threshold": self.threshold,
                "hold": self.hold, "maxq": arr, "last_anomalous_t": float(self._last_anomalous_t),
                "last_onset_t": float(self._last_onset_t)}

    @classmethod
    def from_state(cls, d: dict) -> OnsetFilter:
        f = cls(horizon=d["horizon"], quiet=d["quiet"], threshold=d["threshold"], hold=d.get("hold", 0.0))
        f._maxq = deque((float(a), float(b)) for a, b in np.asarray(d["maxq"], float).reshape(-1, 2))
        f._last_anomalous_t = float(d["last_anomalous_t"])
        f._last_onset_t = float(d.get("last_onset_t", -np.inf))
        return f
