"""The metric side's data: a detector's PromQL queries fetched over a range and joined per series.

    fetch_series()  PromQL -> {series id: SeriesData} on the step grid; feature queries (multivariate
                    models, a rule's heartbeat) averaged per join key and aligned on the target's steps
    detector_queries()  every PromQL a detector runs, by its key in the detector's config section
    DetectorQueryError  one of them refused by Prometheus, naming which
    PrometheusSource  fetch_series over a client: the metric plugin's data source when live (an
                    exported dataset, detector.dataset.DatasetSource, stands in for it offline)
    MemorySource    series held in memory (benchmarks, tests) through the same seam
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from detector.config import DetectorConfig
from detector.models import kind_class
from detector.promclient import PromClient, PromError, PromQueryError, Series
from detector.scores import series_id


@dataclass
class SeriesData:
    labels: dict[str, str]
    t: np.ndarray
    y: np.ndarray
    X: np.ndarray | None = None  # (n, n_features) for multivariate models, aligned to t
    feature_names: list[str] = field(default_factory=list)

    def slice(self, mask: np.ndarray) -> SeriesData:
        return SeriesData(self.labels, self.t[mask], self.y[mask],
                          None if self.X is None else self.X[mask], self.feature_names)


def feature_queries(det: DetectorConfig) -> dict[str, str | None]:
    """The queries that build X: the detector's features, or its heartbeat for a kind that reads one
    (None when unset: the column stays empty)."""
    if kind_class(det.kind).heartbeat:
        return {"heartbeat": det.heartbeat}
    return dict(det.features)


def _feature_key(det: DetectorConfig, fname: str) -> str:
    """A feature query's key in the detector's config section."""
    return "heartbeat" if kind_class(det.kind).heartbeat else f"features.{fname}"


def detector_queries(det: DetectorConfig) -> dict[str, str]:
    """Every query the detector runs, keyed as in its config section: `query`, `features.NAME`,
    `heartbeat`."""
    extra = {_feature_key(det, fname): q for fname, q in feature_queries(det).items() if q}
    return {"query": det.query, **extra}


class DetectorQueryError(PromError):
    """Prometheus refused one of a detector's queries: the detector's fault, not the source's.
    A PromError still, so a caller that only knows PromError (a backtest) reports it as before."""

    def __init__(self, detector: str, key: str, error: PromQueryError):
        super().__init__(f"{detector}: {key} refused by prometheus ({error.error_type}): {error.reason}",
                         status=error.status, error_type=error.error_type, reason=error.reason)
        self.detector = detector
        self.key = key  # `query`, `features.NAME` or `heartbeat` within the detector's section
        self.error = error


def _query_range(client: PromClient, det: DetectorConfig, key: str, promql: str, start: float, end: float,
                 step: float) -> list[Series]:
    try:
        return client.query_range(promql, start, end, step)
    except PromQueryError as e:
        raise DetectorQueryError(det.name, key, e) from None


def align_to_grid(target_t: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Values of the samples (t, y) at the times `target_t` (a step grid), NaN where none falls."""
    out = np.full(len(target_t), np.nan)
    if len(t) == 0 or len(target_t) == 0:
        return out
    idx = np.searchsorted(t, target_t)
    idx_c = np.minimum(idx, len(t) - 1)
    hit = t[idx_c] == target_t
    out[hit] = y[idx_c[hit]]
    return out


def grid_end(now: float, step: float, latency_offset: float = 0.0) -> float:
    """The newest step-grid point a live pass may read at `now`. The newest step may still be
    waiting for its scrape: stay half a step behind; and behind what the store does not show yet
    (`prometheus.latency_offset`: VictoriaMetrics answers for its newest 30 s with an older value)."""
    behind = max(step / 2, latency_offset)
    return float(np.floor((now - behind) / step) * step)


def _join_key(labels: dict[str, str], join_on: list[str]) -> tuple:
    return tuple(labels.get(k) for k in join_on)


def fetch_series(client: PromClient, det: DetectorConfig, start: float, end: float, step: float,
                 *, grid: bool | None = None) -> dict[str, SeriesData]:
    """Run a detector's queries over [start, end] and return its series on the step grid.

    Feature queries (multivariate models, the vanish rule's heartbeat) are averaged per join key
    (e.g. several fans of one GPU) and aligned on the target's timestamps. `grid=True` reindexes each
    series onto the full step grid with NaN where Prometheus had nothing (the vanish rule needs to see
    the steps where a series is gone); None does what the detector's kind needs (a heartbeat rule).
    A query Prometheus refuses raises DetectorQueryError naming it; an unavailable source, PromError."""
    heartbeat = kind_class(det.kind).heartbeat
    if grid is None:
        grid = heartbeat
    main = _query_range(client, det, "query", det.query, start, end, step)
    queries = feature_queries(det)
    names = list(queries)
    feats: dict[str, list[Series]] = {
        fname: _query_range(client, det, _feature_key(det, fname), fq, start, end, step) if fq else []
        for fname, fq in queries.items()}
    by_key: dict[str, dict[tuple, list[Series]]] = {}
    for fname, sers in feats.items():
        d: dict[tuple, list[Series]] = {}
        for s in sers:
            d.setdefault(_join_key(s.labels, det.join_on), []).append(s)
        by_key[fname] = d
    full_grid = None
    if grid:
        g0 = np.floor(start / step) * step
        full_grid = np.arange(g0, np.floor(end / step) * step + step / 2, step)
    out: dict[str, SeriesData] = {}
    for s in main:
        t, y = s.t, s.y
        if full_grid is not None and len(t):
            y = align_to_grid(full_grid, t, y)
            t = full_grid
        X = None
        if names:
            X = np.full((len(t), len(names)), np.nan)
            key = _join_key(s.labels, det.join_on)
            for j, fname in enumerate(names):
                cols = [align_to_grid(t, f.t, f.y) for f in by_key.get(fname, {}).get(key, [])]
                if cols:
                    with np.errstate(all="ignore"), warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN steps stay NaN
                        X[:, j] = np.nanmean(np.vstack(cols), axis=0)
        sid = series_id(s.labels)
        if sid in out:  # two series collapsing to one identity (e.g. a label we ignore): keep the longer
            if len(out[sid].t) >= len(t):
                continue
        out[sid] = SeriesData(dict(s.labels), t, y, X, names)
    if heartbeat and full_grid is not None:
        # a series gone for longer than Prometheus's lookback is absent from the answer altogether;
        # its heartbeat (same GPU, same labels) still stands for it, with no sample of its own
        have = {_join_key(sd.labels, det.join_on) for sd in out.values()}
        for key, hbs in by_key.get("heartbeat", {}).items():
            if key in have or not hbs:
                continue
            hb = hbs[0]
            X = align_to_grid(full_grid, hb.t, hb.y)[:, None]
            out.setdefault(series_id(hb.labels), SeriesData(dict(hb.labels), full_grid,
                                                            np.full(len(full_grid), np.nan), X, names))
    return out


class SeriesSource(Protocol):
    """Where the metric plugin reads a detector's series: the one seam between the models and the
    data, so fitting from Prometheus and fitting from an exported dataset share every other line."""

    def fetch(self, det: DetectorConfig, start: float, end: float, step: float) -> dict[str, SeriesData]: ...

    def provenance(self) -> dict[str, Any]: ...


class PrometheusSource:
    """The live source: a detector's queries run against Prometheus (fetch_series)."""

    def __init__(self, client: PromClient):
        self.client = client

    def fetch(self, det: DetectorConfig, start: float, end: float, step: float) -> dict[str, SeriesData]:
        return fetch_series(self.client, det, start, end, step)

    def provenance(self) -> dict[str, Any]:
        return {"source": "prometheus"}


class MemorySource:
    """Series held in memory, by detector name then series id: a benchmark's or a test's data run
    through the service's own fit/score path (MetricPlugin, backtest) with no Prometheus. `fetch`
    answers what a query over [start, end] would: the detector's series cut to start <= t <= end
    (their own timestamps: no step grid is imposed)."""

    def __init__(self, data: dict[str, dict[str, SeriesData]]):
        self.data = data

    def fetch(self, det: DetectorConfig, start: float, end: float, step: float) -> dict[str, SeriesData]:
        out = {}
        for sid, sd in self.data.get(det.name, {}).items():
            cut = sd.slice((sd.t >= start) & (sd.t <= end))
            if len(cut.t):
                out[sid] = cut
        return out

    def provenance(self) -> dict[str, Any]:
        return {"source": "memory"}
