"""Fit and score jobs for metric detectors: one `MetricDetector` per configured query.

Data flow (identical for the live service and the backtest, which only differ in where time
comes from):
    fetch_series()  PromQL -> {series id: SeriesData} on the step grid (features joined on join_on)
    fit()           every fit_every: each series' model fitted on its lookback window; a series with
                    less history than its model needs gets the robust baseline (robust_z) instead
    score()         every step: only points newer than the series' last scored point go to the
                    model (models are causal and stateful: each point is scored exactly once)
A series first seen between fits gets a self-warming robust baseline (or, for a rule, a fresh rule
that counts a counter's first appearance) until the next fit.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detector.config import MULTIVARIATE_KINDS, DetectorConfig
from detector.promclient import PromClient, Series
from detector.rules import RULES, make_rule
from detector.store import fingerprint_arrays

log = logging.getLogger(__name__)

# labels that say *where* a series came from or describe it, rather than identify it: kept in
# metrics, dropped from incident labels (an incident says gpu="0", container="ollama").
LOCATION_LABELS = ("job", "instance", "uuid", "name", "image")
ENGINE_STATE_VERSION = 1


def series_id(labels: dict[str, str]) -> str:
    """Stable identity of a source series. GPUs are keyed on uuid: an index can shift at boot."""
    items = {k: v for k, v in labels.items() if not ("uuid" in labels and k in ("gpu", "name"))}
    return ",".join(f"{k}={items[k]}" for k in sorted(items))


def incident_labels(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k not in LOCATION_LABELS}


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


@dataclass
class ScoreBatch:
    """Scored points of one series (arrays of equal length) plus what the model was."""

    detector: str
    model: str
    labels: dict[str, str]
    t: np.ndarray
    y: np.ndarray
    score: np.ndarray
    expected: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    explanation: list[str] | None = None


def _align(target_t: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = np.full(len(target_t), np.nan)
    if len(t) == 0 or len(target_t) == 0:
        return out
    idx = np.searchsorted(t, target_t)
    idx_c = np.minimum(idx, len(t) - 1)
    hit = t[idx_c] == target_t
    out[hit] = y[idx_c[hit]]
    return out


def _join_key(labels: dict[str, str], join_on: list[str]) -> tuple:
    return tuple(labels.get(k) for k in join_on)


def fetch_series(client: PromClient, det: DetectorConfig, start: float, end: float, step: float,
                 *, grid: bool = False) -> dict[str, SeriesData]:
    """Run a detector's queries over [start, end] and return its series on the step grid.

    Feature queries (multivariate models, the vanish rule's heartbeat) are averaged per join key
    (e.g. several fans of one GPU) and aligned on the target's timestamps. `grid=True` reindexes each
    series onto the full step grid with NaN where Prometheus had nothing (the vanish rule needs to see
    the steps where a series is gone)."""
    main = client.query_range(det.query, start, end, step)
    feats: dict[str, list[Series]] = {}
    names = list(det.features)
    if det.rule == "series_vanished":
        names = ["heartbeat"]
        feats["heartbeat"] = client.query_range(det.heartbeat, start, end, step) if det.heartbeat else []
    else:
        for fname, fq in det.features.items():
            feats[fname] = client.query_range(fq, start, end, step)
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
            y = _align(full_grid, t, y)
            t = full_grid
        X = None
        if names:
            X = np.full((len(t), len(names)), np.nan)
            key = _join_key(s.labels, det.join_on)
            for j, fname in enumerate(names):
                cols = [_align(t, f.t, f.y) for f in by_key.get(fname, {}).get(key, [])]
                if cols:
                    with np.errstate(all="ignore"), _quiet_nanmean():
                        X[:, j] = np.nanmean(np.vstack(cols), axis=0)
        sid = series_id(s.labels)
        if sid in out:  # two series collapsing to one identity (e.g. a label we ignore): keep the longer
            if len(out[sid].t) >= len(t):
                continue
        out[sid] = SeriesData(dict(s.labels), t, y, X, names)
    if det.rule == "series_vanished" and full_grid is not None:
        # a series gone for longer than Prometheus's lookback is absent from the answer altogether;
        # its heartbeat (same GPU, same labels) still stands for it, with no sample of its own
        have = {_join_key(sd.labels, det.join_on) for sd in out.values()}
        for key, hbs in by_key.get("heartbeat", {}).items():
            if key in have or not hbs:
                continue
            hb = hbs[0]
            X = _align(full_grid, hb.t, hb.y)[:, None]
            out.setdefault(series_id(hb.labels), SeriesData(dict(hb.labels), full_grid,
                                                            np.full(len(full_grid), np.nan), X, names))
    return out


class _quiet_nanmean:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


class NoOpinion:
    """Stand-in model for `fallback: none`: scores NaN (no data is not normal data)."""

    kind = "none"

    def fit(self, t, *args):
        return self

    def score(self, t, *args):
        from detector.models.base import ScoreFrame

        return ScoreFrame.empty(len(t))

    def min_history(self, step_seconds=60.0):
        return 0

    def get_state(self):
        return {"kind": "none"}


@dataclass
class SeriesModel:
    labels: dict[str, str]
    kind: str  # the model actually used (robust_z while a series lacks history)
    model: Any
    last_t: float  # last point fitted or scored
    fitted_at: float | None = None
    fit_points: int = 0
    y_floor: float | None = None  # lowest target seen in training (regression models)


class MetricDetector:
    """One configured detector (a query + a model or rule) over all the series its query returns."""

    def __init__(self, cfg: DetectorConfig, step: float):
        self.cfg = cfg
        self.step = float(step)
        self.series: dict[str, SeriesModel] = {}
        self.started = False  # has seen data once: later-appearing series are new, not pre-existing
        self.version: int | None = None
        self.last_fit: float | None = None
        self.fit_metrics: dict[str, Any] = {}

    # -- construction -----------------------------------------------------------------------
    @property
    def multivariate(self) -> bool:
        return self.cfg.model in MULTIVARIATE_KINDS or self.cfg.rule == "series_vanished"

    def _model_params(self, kind: str) -> dict:
        from detector.models import model_class

        params = dict(self.cfg.params) if kind == self.cfg.model else {}
        common = {k: getattr(self.cfg, k) for k in ("direction", "min_deviation")
                  if getattr(self.cfg, k) is not None}
        if self.cfg.sensitivity is not None and kind == self.cfg.model:
            common["sensitivity"] = self.cfg.sensitivity
        valid = set(model_class(kind)._param_names())
        for k, v in common.items():
            if k in valid and k not in params:
                params[k] = v
        if kind in MULTIVARIATE_KINDS and "feature_names" in valid and "feature_names" not in params:
            params["feature_names"] = self.feature_names(kind)
        return params

    def feature_names(self, kind: str) -> list[str]:
        # Isolation Forest sees the watched value itself beside the features; the thermal model
        # explains the value *from* the features.
        names = list(self.cfg.features)
        return ["value", *names] if kind == "iforest" else names

    def model_X(self, kind: str, sd: SeriesData) -> np.ndarray:
        if kind == "iforest":
            return np.column_stack([sd.y, sd.X]) if sd.X is not None else sd.y[:, None]
        return sd.X

    def new_model(self, kind: str, *, appeared: bool = False):
        if kind == "none":
            return NoOpinion()
        if self.cfg.rule:
            params = dict(self.cfg.params)
            if self.cfg.rule == "counter_increase":
                params["appeared"] = appeared
            return make_rule(self.cfg.rule, **params)
        from detector.models import make_model

        return make_model(kind, **self._model_params(kind))

    def _fits_real_model(self, model, n_valid: int) -> bool:
        try:
            need = int(model.min_history(self.step))
        except Exception:  # a model that cannot say: trust it
            need = 0
        return n_valid >= max(need, 1)

    # -- fit --------------------------------------------------------------------------------
    def fit(self, data: dict[str, SeriesData], now: float) -> dict[str, Any]:
        """Fit every series on its data up to `now` (the caller passes the lookback window)."""
        started = time.perf_counter()
        n_real = n_fallback = n_failed = 0
        for sid, sd in data.items():
            keep = sd.t <= now
            sd = sd.slice(keep)
            if len(sd.t) == 0:
                continue
            valid = np.isfinite(sd.y)
            kind = self.cfg.kind
            model = self.new_model(kind)
            fallback = self.cfg.fallback
            if not self.cfg.rule and not self._fits_real_model(model, int(valid.sum())):
                kind = fallback
                model = self.new_model(kind)
            try:
                self._fit_one(model, kind, sd)
                r2 = getattr(model, "r2_", None)
                if kind == self.cfg.kind and self.cfg.min_fit_r2 is not None and r2 is not None \
                        and not r2 >= self.cfg.min_fit_r2:
                    # e.g. a GPU that only idled so far: its features explain nothing yet, and a
                    # regression fitted on them extrapolates wildly at the first load
                    log.info("%s: %s fit explains too little (r2 %.2f < %.2f); using %s", self.cfg.name,
                             sid, r2, self.cfg.min_fit_r2, fallback)
                    kind = fallback
                    model = self.new_model(kind)
                    self._fit_one(model, kind, sd)
            except Exception as e:
                log.warning("%s: fit of %s with %s failed (%s); using %s", self.cfg.name, sid, kind, e, fallback)
                n_failed += 1
                kind = fallback
                model = self.new_model(kind)
                try:
                    model.fit(sd.t, sd.y)
                except Exception as e2:
                    log.warning("%s: robust fallback for %s failed too (%s)", self.cfg.name, sid, e2)
                    continue
            if kind == self.cfg.kind:
                n_real += 1
            else:
                n_fallback += 1
            prev = self.series.get(sid)
            last_t = float(sd.t[-1])
            if prev is not None and prev.last_t > last_t:
                last_t = prev.last_t
            floor = float(np.nanpercentile(sd.y, 0.5)) if kind in MULTIVARIATE_KINDS and valid.any() else None
            self.series[sid] = SeriesModel(sd.labels, kind, model, last_t, now, int(valid.sum()), floor)
        self.started = True
        self.last_fit = now
        self.fit_metrics = {"series": len(data), "fitted": n_real, "baseline": n_fallback,
                            "failed": n_failed, "seconds": round(time.perf_counter() - started, 4)}
        return self.fit_metrics

    def needs_early_refit(self) -> bool:
        """Some series is still on its fallback (too little history, or a fit that explained too
        little): worth refitting before the regular schedule."""
        return not self.cfg.rule and any(sm.kind != self.cfg.kind for sm in self.series.values())

    def _fit_one(self, model, kind: str, sd: SeriesData) -> None:
        multivariate = kind in MULTIVARIATE_KINDS or getattr(model, "multivariate", False)
        if multivariate:
            model.fit(sd.t, self.model_X(kind, sd), sd.y)
        else:
            model.fit(sd.t, sd.y)

    # -- score ------------------------------------------------------------------------------
    def score(self, data: dict[str, SeriesData]) -> list[ScoreBatch]:
        """Score each series' points newer than what it has already seen."""
        out: list[ScoreBatch] = []
        for sid, sd in data.items():
            sm = self.series.get(sid)
            if sm is None:
                if len(sd.t) == 0:
                    continue
                kind = self.cfg.kind if self.cfg.rule else self.cfg.fallback
                model = self.new_model(kind, appeared=self.started)
                if self.cfg.rule:
                    empty = np.zeros(0)
                    if self.multivariate:
                        model.fit(empty, np.zeros((0, 1)), empty)
                    else:
                        model.fit(empty, empty)
                else:
                    model.fit(np.zeros(0), np.zeros(0))
                sm = SeriesModel(sd.labels, kind, model, -np.inf)
                self.series[sid] = sm
            new = sd.t > sm.last_t
            if not new.any():
                continue
            part = sd.slice(new)
            sm.labels = part.labels
            try:
                if self.multivariate and (sm.kind in MULTIVARIATE_KINDS or self.cfg.rule):
                    frame = sm.model.score(part.t, self.model_X(sm.kind, part), part.y)
                else:
                    frame = sm.model.score(part.t, part.y)
            except Exception as e:
                log.warning("%s: scoring %s failed: %s", self.cfg.name, sid, e)
                continue
            sm.last_t = float(part.t[-1])
            if sm.y_floor is not None:
                self._no_opinion_below_floor(frame, sm.y_floor)
            explanation = None
            if sm.kind == "iforest" and hasattr(sm.model, "explain"):
                explanation = self._explain(sm.model, self.model_X(sm.kind, part), frame.score)
            out.append(ScoreBatch(self.cfg.name, sm.kind, part.labels, part.t, part.y,
                                  np.asarray(frame.score, float), np.asarray(frame.expected, float),
                                  np.asarray(frame.lower, float), np.asarray(frame.upper, float),
                                  explanation))
        self.started = True
        return out

    @staticmethod
    def _no_opinion_below_floor(frame, floor: float) -> None:
        """A regression extrapolating outside what it was trained on (sustained full power when it
        only saw bursts, say) can expect a temperature below anything ever observed — even below
        zero. Such an expectation is no basis for a score: no opinion there instead of a false alarm.
        `floor` is the 0.5th percentile of the training target, below the idle level by the noise."""
        exp = np.asarray(frame.expected, float)
        bad = exp < floor
        if bad.any():
            frame.score[bad] = np.nan

    @staticmethod
    def _explain(model, X: np.ndarray, score: np.ndarray) -> list[str] | None:
        """The features that drove the strongest point of the batch, largest share first."""
        s = np.nan_to_num(score)
        if not (s > 1).any():
            return None
        try:
            (shares,) = model.explain(X[[int(np.argmax(s))]])
        except Exception:
            return None
        return [f"{name} {share:.0%}" for name, share in list(shares.items())[:3]]

    # -- persistence ------------------------------------------------------------------------
    def get_state(self) -> dict:
        return {"engine_state_version": ENGINE_STATE_VERSION, "detector": self.cfg.name,
                "kind": self.cfg.kind, "last_fit": self.last_fit,
                "series": {sid: {"labels": sm.labels, "kind": sm.kind, "last_t": sm.last_t,
                                 "fitted_at": sm.fitted_at, "fit_points": sm.fit_points,
                                 "y_floor": sm.y_floor,
                                 "model": sm.model.get_state()}
                           for sid, sm in self.series.items()}}

    def set_state(self, state: dict) -> None:
        if state.get("engine_state_version") != ENGINE_STATE_VERSION or state.get("kind") != self.cfg.kind:
            raise ValueError(f"{self.cfg.name}: stored state is for {state.get('kind')!r} "
                             f"(engine v{state.get('engine_state_version')}), not {self.cfg.kind!r}")
        from detector.models import model_from_state

        series = {}
        for sid, s in state["series"].items():
            m = s["model"]
            if m.get("kind") == "none":
                model = NoOpinion()
            elif m.get("kind") in RULES:
                model = RULES[m["kind"]].from_state(m)
            else:
                model = model_from_state(m)
            series[sid] = SeriesModel(s["labels"], s["kind"], model, float(s["last_t"]),
                                      s.get("fitted_at"), int(s.get("fit_points", 0)), s.get("y_floor"))
        self.series = series
        self.last_fit = state.get("last_fit")
        self.started = True

    def fit_metadata(self, data: dict[str, SeriesData], start: float, end: float) -> dict[str, Any]:
        ys = [sd.y for sd in data.values()]
        return {"training_window": {"start": start, "end": end},
                "data_fingerprint": fingerprint_arrays(*ys) if ys else None,
                "params": {"model": self.cfg.model, "rule": self.cfg.rule, "query": self.cfg.query,
                           "features": self.cfg.features, "params": self.cfg.params,
                           "direction": self.cfg.direction, "min_deviation": self.cfg.min_deviation,
                           "sensitivity": self.cfg.sensitivity},
                "fit_metrics": dict(self.fit_metrics)}


def summarize(detector: str, model: str, labels: dict[str, str], y: float, expected: float,
              lower: float, upper: float, score: float, explanation: list[str] | None = None) -> str:
    who = ", ".join(f"{k}={v}" for k, v in sorted(incident_labels(labels).items()))
    where = f" ({who})" if who else ""
    if model in RULES:
        text = {"counter_increase": "counter increased", "held_active": "held active beyond its hold time",
                "series_vanished": "series stopped reporting while its exporter is alive",
                "steady_increase": f"keeps growing (now {y:.4g}, {y - expected:+.4g} over the window)"}[model]
        s = f"{detector}{where}: {text} (score {score:.2f})"
    elif np.isfinite(expected):
        side = "above" if y > expected else "below"
        s = (f"{detector}{where}: {y:.4g} {side} expected {expected:.4g} "
             f"(band {lower:.4g}..{upper:.4g}, score {score:.2f}, model {model})")
    elif not np.isfinite(y) and explanation:
        # no value to show (a log anomaly is an event): its own explanation says what happened
        return f"{detector}{where}: {explanation[0]} (score {score:.2f})"
    else:
        s = f"{detector}{where}: value {y:.4g}, score {score:.2f} (model {model})"
    if explanation:
        s += "; drivers: " + "; ".join(explanation[:3])
    return s
