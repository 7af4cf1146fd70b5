"""One configured metric detector (a query + a model or rule) over all the series its query returns.

    fit()    every fit_every: each series' model fitted on its lookback window; a series with less
             history than its model needs gets the fallback (robust_z) instead
    score()  every step: only points newer than the series' last scored point go to the model
             (models are causal and stateful: each point is scored exactly once)
A series first seen between fits gets a self-warming fallback (or, for a rule, a fresh rule that
counts a counter's first appearance) until the next fit. What differs between kinds (X or not,
the features' names, explanations, extrapolation guard) is asked of the model classes.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from detector.config import DetectorConfig
from detector.fetch import SeriesData
from detector.labels import Exclusions
from detector.models import (
    RULES,
    NoOpinion,
    ScoreFrame,
    UnivariateModel,
    kind_class,
    make_model,
    model_from_state,
)
from detector.models.batch import can_score_points, score_point_batch
from detector.scores import ScoreBatch
from detector.store import fingerprint_arrays, sha256_arrays

log = logging.getLogger(__name__)
ENGINE_STATE_VERSION = 1


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
    def _model_params(self, kind: str) -> dict:
        params = dict(self.cfg.params) if kind == self.cfg.model else {}
        common = {k: getattr(self.cfg, k) for k in ("direction", "min_deviation")
                  if getattr(self.cfg, k) is not None}
        if self.cfg.sensitivity is not None and kind == self.cfg.model:
            common["sensitivity"] = self.cfg.sensitivity
        cls = kind_class(kind)
        valid = set(cls._param_names())
        for k, v in common.items():
            if k in valid and k not in params:
                params[k] = v
        if cls.takes_features and "feature_names" in valid and "feature_names" not in params:
            params["feature_names"] = cls.input_names(list(self.cfg.features))
        return params

    @staticmethod
    def model_X(model, sd: SeriesData) -> np.ndarray | None:
        """The model's X for these points (None for a model of y alone)."""
        return type(model).design_matrix(sd.y, sd.X) if model.multivariate else None

    def new_model(self, kind: str, *, appeared: bool = False):
        if kind == NoOpinion.kind:
            return NoOpinion()
        if self.cfg.rule:
            return RULES[self.cfg.rule].create(dict(self.cfg.params), appeared=appeared)
        return make_model(kind, **self._model_params(kind))

    def _fits_real_model(self, model, n_valid: int) -> bool:
        try:
            need = int(model.min_history(self.step))
        except Exception:  # a model that cannot say: trust it
            need = 0
        return n_valid >= max(need, 1)

    # -- fit --------------------------------------------------------------------------------
    def fit(self, data: dict[str, SeriesData], now: float, exclude: Exclusions | None = None) -> dict[str, Any]:
        """Fit every series on its data up to `now` (the caller passes the lookback window).
        `exclude`: labels whose points are left out (maintenance, confirmed incidents). The one place
        every fit passes through (serve, retrain, backtest), so all of them respect the labels."""
        started = time.perf_counter()
        n_real = n_fallback = n_failed = n_excluded = 0
        for sid, sd in data.items():
            keep = sd.t <= now
            sd = sd.slice(keep)
            if len(sd.t) == 0:
                continue
            if exclude is not None:
                out = exclude.training_mask(self.cfg.name, sd.labels, sd.t)
                if out.any():
                    # a gap, as a missed scrape: every model already fits around missing values,
                    # and the time grid (seasonal phase) stays as it was
                    sd = SeriesData(sd.labels, sd.t, np.where(out, np.nan, sd.y), sd.X, sd.feature_names)
                    n_excluded += int(out.sum())
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
            if prev is not None and prev.kind == kind and kind == self.cfg.kind and prev.fitted_at is not None \
                    and isinstance(model, UnivariateModel):
                model.carry(prev.model, now - prev.fitted_at)  # e.g. the ensemble's fading extremes
            last_t = float(sd.t[-1])
            if prev is not None and prev.last_t > last_t:
                last_t = prev.last_t
            floor = float(np.nanpercentile(sd.y, 0.5)) if model.guards_extrapolation and valid.any() else None
            self.series[sid] = SeriesModel(sd.labels, kind, model, last_t, now, int(valid.sum()), floor)
        self.started = True
        self.last_fit = now
        self.fit_metrics = {"series": len(data), "fitted": n_real, "baseline": n_fallback,
                            "failed": n_failed, "excluded_points": n_excluded, "seconds": round(time.perf_counter() - started, 4)}
        return self.fit_metrics

    def needs_early_refit(self) -> bool:
        """Some series is still on its fallback (too little history, or a fit that explained too
        little): worth refitting before the regular schedule."""
        return not self.cfg.rule and any(sm.kind != self.cfg.kind for sm in self.series.values())

    def _fit_one(self, model, kind: str, sd: SeriesData) -> None:
        if model.multivariate:
            model.fit(sd.t, self.model_X(model, sd), sd.y)
        else:
            model.fit(sd.t, sd.y)

    # -- score ------------------------------------------------------------------------------
    def score(self, data: dict[str, SeriesData]) -> list[ScoreBatch]:
        """Score each series' points newer than what it has already seen."""
        todo: list[tuple[str, SeriesModel, SeriesData, np.ndarray | None]] = []
        for sid, sd in data.items():
            sm = self.series.get(sid)
            if sm is None:
                if len(sd.t) == 0:
                    continue
                sm = self._appeared(sd)
                self.series[sid] = sm
            new = sd.t > sm.last_t
            if new.any():
                part = sd.slice(new)
                sm.labels = part.labels
                todo.append((sid, sm, part, self.model_X(sm.model, part)))
        self.started = True
        frames = self._score_new_points(todo)
        out: list[ScoreBatch] = []
        for (_, sm, part, X), frame in zip(todo, frames, strict=True):
            if frame is None:
                continue
            sm.last_t = float(part.t[-1])
            if sm.y_floor is not None:
                self._no_opinion_below_floor(frame, sm.y_floor)
            explanation = sm.model.explain_batch(X, np.asarray(frame.score, float))
            out.append(ScoreBatch(self.cfg.name, sm.kind, part.labels, part.t, part.y,
                                  np.asarray(frame.score, float), np.asarray(frame.expected, float),
                                  np.asarray(frame.lower, float), np.asarray(frame.upper, float),
                                  explanation))
        return out

    def _appeared(self, sd: SeriesData) -> SeriesModel:
        """A series first seen since the last fit: a fresh rule, or the self-warming fallback."""
        kind = self.cfg.kind if self.cfg.rule else self.cfg.fallback
        model = self.new_model(kind, appeared=self.started)
        empty = np.zeros(0)
        if model.multivariate:  # a rule reading a heartbeat (fallback models are univariate)
            model.fit(empty, np.zeros((0, 1)), empty)
        else:
            model.fit(empty, empty)
        return SeriesModel(sd.labels, kind, model, -np.inf)

    def _score_new_points(self, todo: list[tuple[str, SeriesModel, SeriesData, np.ndarray | None]]
                          ) -> list[ScoreFrame | None]:
        """Each series' frame (None where its model failed). The live cycle's usual case, one new
        point at the same time for many univariate series, is scored in one batch per time
        (batch.py: thousands of series in milliseconds); a batch that is refused, and every other
        case, is scored series by series, so one bad series never costs the others their scores."""
        frames: list[ScoreFrame | None] = [None] * len(todo)
        alone = []
        together: dict[float, list[int]] = {}
        for i, (_, sm, part, _) in enumerate(todo):
            if len(part.t) == 1 and can_score_points(sm.model):
                together.setdefault(float(part.t[0]), []).append(i)
            else:
                alone.append(i)
        for t, idx in together.items():
            try:
                frame = score_point_batch([todo[i][1].model for i in idx], t, [todo[i][2].y[0] for i in idx])
            except Exception as e:  # checked before any state moved: each series on its own instead
                log.debug("%s: batch of %d series refused (%s); scoring them one by one", self.cfg.name, len(idx), e)
                alone.extend(idx)
                continue
            for j, i in enumerate(idx):
                frames[i] = frame.take(slice(j, j + 1))
        for i in sorted(alone):
            sid, sm, part, X = todo[i]
            try:
                if sm.model.multivariate:
                    frames[i] = sm.model.score(part.t, X, part.y)
                else:
                    frames[i] = sm.model.score(part.t, part.y)
            except Exception as e:
                log.warning("%s: scoring %s failed: %s", self.cfg.name, sid, e)
        return frames

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
        series = {}
        for sid, s in state["series"].items():
            model = model_from_state(s["model"])
            series[sid] = SeriesModel(s["labels"], s["kind"], model, float(s["last_t"]),
                                      s.get("fitted_at"), int(s.get("fit_points", 0)), s.get("y_floor"))
        self.series = series
        self.last_fit = state.get("last_fit")
        self.started = True

    def fit_metadata(self, data: dict[str, SeriesData], start: float, end: float) -> dict[str, Any]:
        ys = [sd.y for sd in data.values()]
        return {"training_window": {"start": start, "end": end},
                "data_fingerprint": fingerprint_arrays(*ys) if ys else None,
                "training_data": training_data(data, end),
                "params": {"model": self.cfg.model, "rule": self.cfg.rule, "query": self.cfg.query,
                           "features": self.cfg.features, "params": self.cfg.params,
                           "direction": self.cfg.direction, "min_deviation": self.cfg.min_deviation,
                           "sensitivity": self.cfg.sensitivity},
                "fit_metrics": dict(self.fit_metrics)}




def training_data(data: dict[str, SeriesData], end: float) -> dict[str, Any]:
    """What a fit was given, as a fingerprint that changes with any value, timestamp or series
    identity: sha256 over each series' id, t, y and X (the points up to `end`, in fit order)."""
    arrays: list[Any] = []
    points = 0
    for sid, sd in data.items():
        keep = sd.t <= end
        arrays += [np.frombuffer(sid.encode(), np.uint8), sd.t[keep], sd.y[keep]]
        if sd.X is not None:
            arrays.append(sd.X[keep])
        points += int(keep.sum())
    return {"fingerprint": sha256_arrays(*arrays), "series": len(data), "points": points}
