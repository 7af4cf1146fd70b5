"""A metric detector's fit as a tracking FitRecord (detector.tracking): flat params, metrics, tags and
the per-series summary rows, built from what the fit and the store already produced."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from importlib import metadata as importlib_metadata
from typing import Any

from detector.config import Config
from detector.metric_detector import MetricDetector
from detector.registry import Decision
from detector.store import ModelStore, pack_state
from detector.tracking import FitRecord

MAX_PARAM = 500  # MLflow keeps params short (6000 characters); a long query is in the metadata artifact


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


def metric_fit_record(det: MetricDetector, meta: dict[str, Any], config: Config,
                      store: ModelStore | None = None, decision: Decision | None = None) -> FitRecord:
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
    tags = {"rigwatch.detector": cfg.name, "rigwatch.version": rigwatch_version()}
    if decision is not None:  # the promotion gate's verdict and what it measured (detector/gate.py)
        metrics.update({f"gate_{k}": v for k, v in decision.figures.items()})
        tags["rigwatch.gate_outcome"] = decision.outcome
    for tag, key in (("rigwatch.store_version", "version"), ("rigwatch.data_fingerprint", "data_fingerprint"),
                     ("rigwatch.state_version", "state_version")):
        if meta.get(key) is not None:
            tags[tag] = str(meta[key])
    rows = [{"series": sid, "model": sm.kind, "fit_points": sm.fit_points,
             "labels": json.dumps(sm.labels, sort_keys=True)} for sid, sm in sorted(det.series.items())]
    version = meta.get("version")
    state = stored_state(store, cfg.name, version) if store is not None and version is not None else None
    return FitRecord(cfg.name, version, params, {k: float(v) for k, v in metrics.items()},
                     tags, meta, rows, state)
