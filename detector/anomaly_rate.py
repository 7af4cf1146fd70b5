"""Rolling anomaly rate per detector: the share of scored points with a score above 1.

A detector whose points are anomalous a large share of a whole day is noisy (mis-fitted, or the
world changed under it) rather than watching 24 h of incidents. Counts are kept in memory per
detector in BUCKET-second buckets by the scored point's own time, at most HORIZON back: bounded at
HORIZON / BUCKET + 1 buckets per detector whatever the number of series. A restart starts the
counts afresh (the rate is then over what was scored since).

    rigwatch_anomaly_rate{detector,window}   window = 1h | 24h; absent while nothing was scored
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
from prometheus_client.core import GaugeMetricFamily

BUCKET = 300.0
WINDOWS = {"1h": 3600.0, "24h": 86400.0}
HORIZON = max(WINDOWS.values())


class AnomalyRates:
    def __init__(self, clock: Callable[[], float], threshold: float = 1.0):
        self.clock = clock
        self.threshold = threshold
        self._buckets: dict[str, dict[int, list[int]]] = {}  # detector -> bucket -> [scored, anomalous]
        self._lock = threading.Lock()

    def add(self, detector: str, t: np.ndarray, score: np.ndarray) -> None:
        """Count scored points (a NaN score is no opinion and is not counted)."""
        t, score = np.asarray(t, dtype=float), np.asarray(score, dtype=float)
        ok = np.isfinite(score) & np.isfinite(t)
        if not ok.any():
            return
        keys = np.floor(t[ok] / BUCKET).astype(np.int64)
        hot = score[ok] > self.threshold
        oldest = int(np.floor((self.clock() - HORIZON) / BUCKET))
        with self._lock:
            buckets = self._buckets.setdefault(detector, {})
            for k in np.unique(keys):
                if k < oldest:
                    continue
                sel = keys == k
                n = buckets.setdefault(int(k), [0, 0])
                n[0] += int(sel.sum())
                n[1] += int(hot[sel].sum())
            for k in [k for k in buckets if k < oldest]:
                del buckets[k]

    def add_batches(self, batches) -> None:
        """`add` for scored batches (ScoreBatch), counted per detector at once: a live cycle hands
        over thousands of one-point batches."""
        per_detector: dict[str, list] = {}
        for b in batches:
            per_detector.setdefault(b.detector, []).append(b)
        for detector, group in per_detector.items():
            self.add(detector, np.concatenate([np.asarray(b.t, float) for b in group]),
                     np.concatenate([np.asarray(b.score, float) for b in group]))

    def forget(self, keep) -> None:
        keep = set(keep)
        with self._lock:
            for name in [n for n in self._buckets if n not in keep]:
                del self._buckets[name]

    def rates(self) -> dict[tuple[str, str], float]:
        """(detector, window) -> share anomalous; only windows with scored points."""
        now = self.clock()
        out = {}
        with self._lock:
            for name, buckets in self._buckets.items():
                for window, seconds in WINDOWS.items():
                    # whole buckets that end inside the window
                    first = int(np.floor((now - seconds) / BUCKET)) + 1
                    scored = anomalous = 0
                    for k, (n, a) in buckets.items():
                        if k >= first:
                            scored += n
                            anomalous += a
                    if scored:
                        out[(name, window)] = anomalous / scored
        return out

    def family(self) -> GaugeMetricFamily:
        fam = GaugeMetricFamily("rigwatch_anomaly_rate", "Share of the detector's scored points with a score "
                                "above 1 over the window (1h, 24h)", labels=["detector", "window"])
        for (name, window), rate in sorted(self.rates().items()):
            fam.add_metric([name, window], rate)
        return fam
