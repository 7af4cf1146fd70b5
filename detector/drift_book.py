"""The metric side's drift bookkeeping: training references kept with each model version, the drift
measured at each fit, and what is published of it.

When it runs: at every fit of a detector, before the refit, on the data that fit fetched anyway
(no extra query): the points the current model has not been trained on (after its reference's
`trained_until`, at most the last DRIFT_WINDOW) against that model's reference at the same hours
of the day. Scoring passes run every step and must stay cheap; fits run every fit_every (6 h by
default) or sooner on a retrain, which is often enough for a slow signal that alerts after hours.
The figures stay those of the last fit until the next one.

What is measured per series: "value" (what the model is fitted on) and, for a multivariate kind
that reads features (not a heartbeat), each feature by its name. Rule detectors fit no model and
are left out.

Published with bounded cardinality (no per-series labels):
    rigwatch_feature_drift{detector,feature,statistic}   the worst series' PSI / Wasserstein
    rigwatch_drifted_series{detector}                     series over a threshold on any feature
A detector whose model version has no reference (stored before drift existed, or nothing fitted
yet) publishes neither: unknown, never zero. Per-series figures: `report()` (GET /api/v1/drift).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client.core import GaugeMetricFamily, Metric

from detector import drift
from detector.config import DetectorConfig
from detector.fetch import SeriesData
from detector.models import kind_class
from detector.timefmt import iso

log = logging.getLogger(__name__)
STATE_KEY = "drift_reference"  # beside the engine state in the version's npz; set_state ignores it
DRIFT_WINDOW = 86400.0  # the recent window compared: at most the last 24 h
# refit_on_drift: between fits, drift is checked every CHECK_EVERY; HOLD_CHECKS drifted checks in a
# row refit at once (one check over may be a passing burst that the scores already report)
CHECK_EVERY = 3600.0
HOLD_CHECKS = 2
VALUE = "value"


@dataclass
class _Measured:
    computed_at: float
    trained_until: float
    series: dict[str, dict[str, Any]] = field(default_factory=dict)  # sid -> labels, features, drifted


def features(cfg: DetectorConfig, sd: SeriesData) -> dict[str, np.ndarray]:
    """The columns whose drift is measured: the fitted value and each real feature."""
    out = {VALUE: sd.y}
    if sd.X is not None and not kind_class(cfg.kind).heartbeat:
        for i, name in enumerate(sd.feature_names):
            out[name] = sd.X[:, i]
    return out


class DriftBook:
    def __init__(self):
        self._refs: dict[str, tuple[dict[str, dict[str, drift.Reference]], float]] = {}
        self._measured: dict[str, _Measured] = {}
        self._checked: dict[str, float] = {}  # refit_on_drift: last check (or fit)
        self._held: dict[str, int] = {}  # refit_on_drift: drifted checks in a row
        self._lock = threading.Lock()

    # -- the fit cycle ------------------------------------------------------------------------
    def measure(self, cfg: DetectorConfig, data: dict[str, SeriesData], now: float, *,
                keep_known: bool = False) -> int | None:
        """Drift of `data` since the current model's training against its reference; how many series
        drifted (None: unknown, and the detector's figures are dropped unless `keep_known`)."""
        with self._lock:
            held = self._refs.get(cfg.name)
        if held is None:
            with self._lock:
                self._measured.pop(cfg.name, None)
            return None
        refs, trained_until = held
        since = max(trained_until, now - DRIFT_WINDOW)
        out = _Measured(now, trained_until)
        for sid, sd in data.items():
            recent = sd.t > since
            if not recent.any():
                continue
            stats = {}
            for feature, x in features(cfg, sd).items():
                ref = refs.get(feature, {}).get(sid)
                s = drift.drift(ref, sd.t[recent], x[recent]) if ref is not None else None
                if s is not None:
                    stats[feature] = s
            if stats:
                out.series[sid] = {"labels": dict(sd.labels), "features": stats,
                                   "drifted": any(drift.drifted(s) for s in stats.values())}
        if not out.series and keep_known:
            return None
        with self._lock:
            self._measured[cfg.name] = out
        return sum(s["drifted"] for s in out.series.values()) if out.series else None

    def check_due(self, name: str, now: float) -> bool:
        with self._lock:
            return name in self._refs and now - self._checked.get(name, -np.inf) >= CHECK_EVERY

    def check(self, cfg: DetectorConfig, data: dict[str, SeriesData], now: float) -> bool:
        """refit_on_drift's check between fits (it also refreshes the published figures when it
        measured something): True once drift has held HOLD_CHECKS checks in a row."""
        drifted = self.measure(cfg, data, now, keep_known=True)
        with self._lock:
            self._checked[cfg.name] = now
            held = self._held[cfg.name] = self._held.get(cfg.name, 0) + 1 if drifted else 0
        return held >= HOLD_CHECKS

    def train(self, cfg: DetectorConfig, data: dict[str, SeriesData], trained_until: float, *,
              install: bool = True) -> dict[str, Any] | None:
        """The reference of a fit on `data` (kept for the next `measure` unless `install` is False: a
        challenger's is installed once promoted), as the document stored with the version; None for
        a rule detector."""
        if cfg.rule:
            return None
        refs: dict[str, dict[str, drift.Reference]] = {}
        for sid, sd in data.items():
            for feature, x in features(cfg, sd).items():
                ref = drift.reference(sd.t, x)
                if ref is not None:
                    refs.setdefault(feature, {})[sid] = ref
        if not install:
            return drift.pack(refs, trained_until)
        with self._lock:
            self._refs[cfg.name] = (refs, trained_until)
            self._checked[cfg.name], self._held[cfg.name] = trained_until, 0
        return drift.pack(refs, trained_until)

    def install(self, name: str, doc: Any) -> None:
        """A promoted fit's reference (as `train` installs its own): checks start again from it."""
        found = drift.unpack(doc)  # our own document, just packed
        with self._lock:
            if found is None:
                self._refs.pop(name, None)
            else:
                self._refs[name] = found
                self._checked[name], self._held[name] = found[1], 0

    def restore(self, name: str, doc: Any) -> None:
        """A loaded version's reference; a version without one (or an unreadable one: the model
        itself is still good) leaves drift unknown until the next fit stores one."""
        try:
            found = drift.unpack(doc)
        except ValueError as e:
            log.warning("%s: stored drift reference ignored (%s); drift unknown until the next fit", name, e)
            found = None
        with self._lock:
            self._measured.pop(name, None)
            if found is None:
                self._refs.pop(name, None)
            else:
                self._refs[name] = found

    def forget(self, keep: Iterable[str]) -> None:
        """Drop detectors no longer configured."""
        keep = set(keep)
        with self._lock:
            for d in (self._refs, self._measured, self._checked, self._held):
                for name in [n for n in d if n not in keep]:
                    del d[name]

    # -- what is read -------------------------------------------------------------------------
    def families(self) -> Iterable[Metric]:
        worst = GaugeMetricFamily("rigwatch_feature_drift", "Drift of a detector's feature since its model's "
                                  "training window, at the same hours of the day, of the worst series (PSI; "
                                  "Wasserstein in training standard deviations)",
                                  labels=["detector", "feature", "statistic"])
        count = GaugeMetricFamily("rigwatch_drifted_series", "Series of the detector whose drift exceeds "
                                  "a threshold (PSI > 0.25 or Wasserstein > 1) on any feature",
                                  labels=["detector"])
        with self._lock:
            measured = dict(self._measured)
        for name, m in sorted(measured.items()):
            by_feature: dict[tuple[str, str], float] = {}
            for s in m.series.values():
                for feature, stats in s["features"].items():
                    for stat in drift.STATISTICS:
                        key = (feature, stat)
                        by_feature[key] = max(by_feature.get(key, 0.0), stats[stat])
            for (feature, stat), v in sorted(by_feature.items()):
                worst.add_metric([name, feature, stat], v)
            if m.series:
                count.add_metric([name], sum(s["drifted"] for s in m.series.values()))
        return (worst, count)

    def report(self, names: Iterable[str]) -> list[dict[str, Any]]:
        """GET /api/v1/drift entries: per detector, every series' figures (known false: no figures)."""
        with self._lock:
            measured = dict(self._measured)
        out = []
        for name in names:
            m = measured.get(name)
            entry: dict[str, Any] = {
                "detector": name, "known": m is not None and bool(m.series),
                "thresholds": {"psi": drift.PSI_THRESHOLD, "wasserstein": drift.WASSERSTEIN_THRESHOLD},
                "computed_at": iso(m.computed_at) if m else None,
                "trained_until": iso(m.trained_until) if m else None,
                "drifted_series": sum(s["drifted"] for s in m.series.values()) if m else None,
                "series": [{"labels": s["labels"], "drifted": s["drifted"], "features": s["features"]}
                           for _, s in sorted(m.series.items())] if m else []}
            out.append(entry)
        return out
