"""A metric detector's fit as a tracking FitRecord (detector.tracking): flat params, metrics, tags and
the per-series summary rows, built from what the fit and the store already produced; the gate's
decision (figures as `gate_<key>` metrics, outcome and reason as tags); and the evaluation the
tracking worker runs later: the fitted version scored on its training window (the training anomaly
rate, and the most anomalous series for the run's PNG)."""
from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
from importlib import metadata as importlib_metadata
from typing import Any

import numpy as np

from detector.config import Config
from detector.fetch import SeriesData
from detector.metric_detector import MetricDetector
from detector.models import model_from_state
from detector.registry import Decision
from detector.store import ModelStore, pack_state
from detector.tracking import Evaluation, FitRecord, PlotSeries

MAX_PARAM = 500  # MLflow keeps params short (6000 characters); a long query is in the metadata artifact
MAX_TAG = 500
PLOT_SERIES = 4  # the run's PNG: this many of the most anomalous series of the training window
RATE_SERIES = 100  # the training anomaly rate over at most this many series (~10 s of robust_z, 24 h)
PLOT_CANDIDATES = 16  # and this many more, the most outlying, scored as candidates for the PNG


def rigwatch_version() -> str:
    try:
        return importlib_metadata.version("rigwatch")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def config_hash(det: MetricDetector, config: Config) -> str:
    """What the model depends on: the detector's config plus the schedule's step and lookback."""
    doc = {"detector": dataclasses.asdict(det.cfg), "step": config.schedule.step,
           "lookback": config.schedule.lookback}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flat(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}", v, out)
    elif value is not None:
        out[prefix] = str(value)[:MAX_PARAM]


def stored_state(store: ModelStore, detector: str, version: int):
    """The saved version's packed state, read back from the store (immutable, checksummed) by the
    tracking worker; None once pruned."""
    def read() -> bytes | None:
        try:
            return pack_state(store.load(detector, version).state)
        except Exception:
            return None
    return read


def _score(model_state: dict[str, Any], sd: SeriesData) -> tuple[np.ndarray, Any]:
    model = model_from_state(model_state)
    if model.multivariate:
        frame = model.score(sd.t, type(model).design_matrix(sd.y, sd.X), sd.y)
    else:
        frame = model.score(sd.t, sd.y)
    return np.asarray(frame.score, float), frame


def _outlyingness(y: np.ndarray) -> float:
    """The largest robust z of a series (median and MAD of its own values): cheap, vectorised, no
    model; it only picks which series the model scores as candidates for the plot."""
    y = y[np.isfinite(y)]
    if not len(y):
        return -np.inf
    med = np.median(y)
    mad = np.median(np.abs(y - med))
    return float(np.max(np.abs(y - med)) / (mad + 1e-9 * (abs(med) + 1)))


def training_evaluation(state: dict[str, Any], data: dict[str, SeriesData], top: int = PLOT_SERIES,
                        sample: int = RATE_SERIES, candidates: int = PLOT_CANDIDATES) -> Evaluation:
    """The saved state scored on the data it was fitted on, by fresh models built from it (the live
    detector's models are never touched). Models score point by point (as they do live), so the
    whole training window of thousands of series would cost the worker minutes: the rate is taken
    over `sample` series spread evenly over the detector (all of them when fewer), and the plot's
    `top` series are the most anomalous (most points above 1, then the highest score) among those
    and the `candidates` series that stand out most by a cheap robust z. Runs in the tracking worker."""
    sids = [sid for sid in state.get("series", {}) if sid in data and len(data[sid].t)]
    picked = sids if len(sids) <= sample else [sids[i] for i in np.unique(
        np.linspace(0, len(sids) - 1, sample).round().astype(int))]
    rest = [sid for sid in sids if sid not in set(picked)]
    standouts = heapq.nlargest(candidates, rest, key=lambda sid: _outlyingness(np.asarray(data[sid].y, float)))
    in_sample = set(picked)
    above = scored = 0
    best: list[tuple[tuple[int, float], int, PlotSeries]] = []  # a min-heap of the `top` highest
    for n, sid in enumerate([*picked, *standouts]):
        sd = data[sid]
        score, frame = _score(state["series"][sid]["model"], sd)
        finite = np.isfinite(score)
        if sid in in_sample:
            scored += int(finite.sum())
            above += int((score[finite] > 1).sum())
        if not finite.any():
            continue
        # most anomalous: the most points above 1, then the highest score (scores of some models
        # saturate, so the peak alone ties)
        peak = (int((score[finite] > 1).sum()), float(score[finite].max()))
        if len(best) < top or peak > best[0][0]:
            entry = (peak, -n, PlotSeries(dict(sd.labels), np.asarray(sd.t, float), np.asarray(sd.y, float), score,
                                          *(np.asarray(getattr(frame, c), float) for c in ("expected", "lower", "upper"))))
            (heapq.heappush if len(best) < top else heapq.heapreplace)(best, entry)
    metrics = {"training_anomaly_rate": above / scored, "training_anomaly_rate_series": float(len(picked))} \
        if scored else {}
    return Evaluation(metrics, [p for _, _, p in sorted(best, key=lambda e: e[:2], reverse=True)])


def decision_fields(decision: Decision | None) -> tuple[dict[str, float], dict[str, str]]:
    """The gate's figures as metrics `gate_<key>`, its outcome and reason as tags."""
    if decision is None:
        return {}, {}
    metrics = {f"gate_{k}": float(v) for k, v in decision.figures.items()}
    return metrics, {"rigwatch.gate_outcome": decision.outcome, "rigwatch.gate_reason": decision.reason[:MAX_TAG]}


def metric_fit_record(det: MetricDetector, meta: dict[str, Any], config: Config,
                      store: ModelStore | None = None, decision: Decision | None = None,
                      training: tuple[dict[str, Any], dict[str, SeriesData]] | None = None) -> FitRecord:
    """`decision`: what the registry made of the version. `training`: the saved state and the data
    it was fitted on, held (not copied) until the tracking worker evaluates them."""
    cfg = det.cfg
    params: dict[str, str] = {"config_hash": config_hash(det, config), "model": cfg.kind,
                              "lookback": str(config.schedule.lookback), "step": str(config.schedule.step)}
    for key in ("rule", "direction", "sensitivity", "min_deviation", "query"):
        _flat(key, getattr(cfg, key, None), params)
    _flat("params", cfg.params or {}, params)
    fm = det.fit_metrics
    series, fitted, baseline = fm.get("series", 0), fm.get("fitted", 0), fm.get("baseline", 0)
    metrics = {"series": series, "series_fitted": fitted, "series_baseline": baseline,
               "series_failed": fm.get("failed", 0), "series_skipped": max(series - fitted - baseline, 0),
               "fit_seconds": fm.get("seconds", 0.0)}
    gate_metrics, gate_tags = decision_fields(decision)
    metrics.update(gate_metrics)
    tags = {"rigwatch.detector": cfg.name, "rigwatch.version": rigwatch_version(), **gate_tags,
            **config.shard.tracking_tags()}
    for tag, key in (("rigwatch.store_version", "version"), ("rigwatch.data_fingerprint", "data_fingerprint"),
                     ("rigwatch.state_version", "state_version")):
        if meta.get(key) is not None:
            tags[tag] = str(meta[key])
    rows = [{"series": sid, "model": sm.kind, "fit_points": sm.fit_points,
             "labels": json.dumps(sm.labels, sort_keys=True)} for sid, sm in sorted(det.series.items())]
    version = meta.get("version")
    state = stored_state(store, cfg.name, version) if store is not None and version is not None else None
    rec = FitRecord(cfg.name, version, params, {k: float(v) for k, v in metrics.items()},
                    tags, meta, rows, state)
    if training is not None:
        fitted, data = training
        rec.evaluate = lambda: training_evaluation(fitted, data)
        rec.points = sum(len(sd.t) for sd in data.values())
    return rec
