"""The running detector: config + Prometheus client + model store + detectors + scheduler.

Jobs (APScheduler, one process, max one instance each) do all the work and then swap in a finished
`Snapshot`; the /metrics collector and the API only read the latest snapshot. Other detector kinds
(the log side) plug in with `register_task()` (their own job on the same scheduler),
`add_families()` (extra metric families served from their own cached state), `record()` (their
ScoreBatches join the incident tracker behind GET /api/v1/anomalies) and `self.store`.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC
from typing import Any

import numpy as np

from detector.config import Config, ConfigWatcher, DetectorConfig
from detector.engine import MetricDetector, ScoreBatch, fetch_series
from detector.incidents import IncidentTracker
from detector.persistence import FilePersistence
from detector.promclient import PromClient, PromError
from detector.store import ModelStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreSample:
    detector: str
    model: str
    labels: dict[str, str]
    t: float
    score: float
    expected: float
    lower: float
    upper: float
    value: float = float("nan")  # the observed value of the scored point (rigwatch_anomaly_value)


@dataclass(frozen=True)
class Snapshot:
    scores: tuple[ScoreSample, ...] = ()
    last_success: dict[str, float] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    source_up: dict[str, int] = field(default_factory=dict)
    source_errors: dict[str, int] = field(default_factory=dict)
    series_tracked: int = 0
    model_info: tuple[tuple[str, str, str], ...] = ()


class DetectorService:
    def __init__(self, config: Config, *, client: PromClient | None = None, store: ModelStore | None = None,
                 clock: Callable[[], float] = time.time, config_path: str | None = None):
        self.config = config
        self.clock = clock
        self._lock = threading.RLock()
        self._errors: dict[str, int] = {"prometheus": 0}
        self._up: dict[str, int] = {"prometheus": 0}
        self.client = client or self._make_client(config)
        self.client.on_error = self._count_error
        self.store = store or ModelStore(FilePersistence(config.store_path))
        self.watcher = ConfigWatcher(config_path) if config_path else None
        self.detectors: dict[str, MetricDetector] = {}
        self.tracker = self._make_tracker(config)
        self.snapshot = Snapshot(source_up=dict(self._up), source_errors=dict(self._errors))
        self._latest: dict[tuple[str, str], ScoreSample] = {}
        self._last_success: dict[str, float] = {}
        self._durations: dict[str, float] = {}
        self._extra_families: list[Callable[[], Iterable]] = []
        self._tasks: list[tuple[str, float, Callable[[float], Any]]] = []
        self.scheduler = None
        self._build_detectors(config)

    # -- construction -------------------------------------------------------------------------
    @staticmethod
    def _make_client(config: Config) -> PromClient:
        p = config.prometheus
        return PromClient(p.url, timeout=p.timeout, retries=p.retries, headers=p.headers)

    @staticmethod
    def _make_tracker(config: Config) -> IncidentTracker:
        return IncidentTracker(min_duration={d.name: d.min_duration for d in config.detectors},
                               merge_gap={d.name: d.merge_gap for d in config.detectors},
                               step=config.schedule.step)

    def _build_detectors(self, config: Config) -> None:
        dets = {}
        for d in config.detectors:
            if not d.enabled:
                continue
            old = self.detectors.get(d.name)
            if old is not None and _same_model(old.cfg, d):
                old.cfg = d
                dets[d.name] = old
            else:
                dets[d.name] = MetricDetector(d, config.schedule.step)
        self.detectors = dets

    def load_models(self) -> int:
        """Load the last good stored version of every detector; returns how many loaded."""
        n = 0
        for name, det in self.detectors.items():
            mv = self.store.load_latest(name)
            if mv is None:
                continue
            try:
                det.set_state(mv.state)
            except Exception as e:
                log.warning("stored model for %s v%d not usable (%s): will refit", name, mv.version, e)
                continue
            det.version = mv.version
            n += 1
            log.info("loaded %s v%d (%d series)", name, mv.version, len(det.series))
        self._publish()
        return n

    # -- bookkeeping ----------------------------------------------------------------------------
    def _count_error(self, exc: Exception, source: str = "prometheus") -> None:
        with self._lock:
            self._errors[source] = self._errors.get(source, 0) + 1

    def set_source_up(self, source: str, up: bool) -> None:
        with self._lock:
            self._up[source] = int(up)
            self._errors.setdefault(source, 0)

    def count_source_error(self, source: str) -> None:
        self._count_error(Exception(), source)

    def add_families(self, fn: Callable[[], Iterable]) -> None:
        self._extra_families.append(fn)

    def extra_families(self) -> Iterable:
        for fn in self._extra_families:
            yield from fn()

    def register_task(self, name: str, interval_seconds: float, fn: Callable[[float], Any]) -> None:
        """fn(now) runs every interval on the scheduler; success/duration are published per task."""
        self._tasks.append((name, interval_seconds, fn))
        if self.scheduler is not None:
            self._schedule_task(name, interval_seconds, fn)

    def record(self, batches: list[ScoreBatch], publish: bool = True) -> None:
        """Feed scored batches to the incident tracker (GET /api/v1/anomalies) and, with `publish`,
        to the rigwatch_anomaly_* gauges. The log side publishes its own family
        (rigwatch_log_anomaly_score) and records with publish=False: a log anomaly must not also
        show up as a metric anomaly (MetricAnomaly would fire twice for one Xid line)."""
        with self._lock:
            for b in batches:
                self.tracker.update(b)
                if publish and len(b.t):
                    i = len(b.t) - 1
                    from detector.engine import series_id

                    self._latest[(b.detector, series_id(b.labels))] = ScoreSample(
                        b.detector, b.model, dict(b.labels), float(b.t[i]), float(b.score[i]),
                        float(b.expected[i]), float(b.lower[i]), float(b.upper[i]), float(b.y[i]))

    def _publish(self) -> None:
        with self._lock:
            # a series that stopped being scored (vanished, detector removed) stops being published
            horizon = self.clock() - max(self.config.schedule.context, 10 * self.config.schedule.step)
            for k in [k for k, v in self._latest.items() if v.t < horizon]:
                del self._latest[k]
            info = tuple((name, d.cfg.kind, str(d.version or 0)) for name, d in self.detectors.items())
            self.snapshot = Snapshot(
                scores=tuple(self._latest.values()), last_success=dict(self._last_success),
                durations=dict(self._durations), source_up=dict(self._up), source_errors=dict(self._errors),
                series_tracked=sum(len(d.series) for d in self.detectors.values()), model_info=info)

    def _finish(self, task: str, started: float, ok: bool) -> None:
        with self._lock:
            self._durations[task] = time.perf_counter() - started
            if ok:
                self._last_success[task] = self.clock()
        self._publish()

    # -- jobs -----------------------------------------------------------------------------------
    def _grid_end(self, now: float) -> float:
        step = self.config.schedule.step
        # the newest step may still be waiting for its scrape: stay half a step behind
        return float(np.floor((now - step / 2) / step) * step)

    def fit(self, only: Iterable[str] | None = None) -> bool:
        started = time.perf_counter()
        now = self.clock()
        end = self._grid_end(now)
        sched = self.config.schedule
        ok = True
        names = list(only) if only else list(self.detectors)
        for name in names:
            det = self.detectors.get(name)
            if det is None:
                continue
            start = end - sched.lookback
            data = self._fetch("fit", det, start, end)
            if data is None:
                ok = False
                break
            with self._lock:
                det.fit(data, end)
                meta = det.fit_metadata(data, start, end)
            try:
                mv = self.store.save(name, det.get_state(), meta)
                det.version = mv.version
            except OSError as e:
                log.error("saving model %s failed: %s (the previous version stays current)", name, e)
                ok = False
        self._finish("fit", started, ok)
        return ok

    def _fetch(self, task: str, det, start: float, end: float):
        """The detector's series over [start, end], or None while Prometheus is unavailable (the
        outage is logged and shows in source_up; the caller ends this pass and the next one retries)."""
        try:
            data = fetch_series(self.client, det.cfg, start, end, self.config.schedule.step,
                                grid=det.cfg.rule == "series_vanished")
        except PromError as e:
            log.warning("%s %s: prometheus unavailable: %s", task, det.cfg.name, e)
            self.set_source_up("prometheus", False)
            return None
        self.set_source_up("prometheus", True)
        return data

    def score(self) -> bool:
        started = time.perf_counter()
        self._maybe_reload()
        now = self.clock()
        # never fitted (Prometheus was down at start-up) or a series still on its fallback model:
        # fit now rather than at the next regular fit hours away
        early = [n for n, d in self.detectors.items()
                 if (d.last_fit is None and not d.series)
                 or (d.last_fit is not None and d.needs_early_refit()
                     and now - d.last_fit >= self.config.schedule.fallback_refit)]
        if early:
            self.fit(only=early)
        now = self.clock()
        end = self._grid_end(now)
        sched = self.config.schedule
        ok = True
        for det in list(self.detectors.values()):
            if det.last_fit is None and not det.series:
                continue  # never fitted: the fit job (or a retrain) comes first
            # only what no model has seen yet (within `context`): a pass every step fetches ~1 point
            start = end - sched.context
            if det.series:
                start = max(start, min(sm.last_t for sm in det.series.values()) - sched.step)
            data = self._fetch("score", det, start, end)
            if data is None:
                ok = False
                break
            with self._lock:
                batches = det.score(data)
            self.record(batches)
        self._finish("score", started, ok)
        return ok

    def _maybe_reload(self) -> None:
        if self.watcher is None:
            return
        cfg = self.watcher.poll()
        if self.watcher.last_error:
            log.error("config reload refused, keeping the running config: %s", self.watcher.last_error)
        if cfg is None:
            return
        log.info("config changed: reloading %s", cfg.source)
        with self._lock:
            old_names = set(self.detectors)
            # The listener, Prometheus client, Loki section and store were built at start-up (from
            # the file plus CLI overrides): they keep their running values; detectors and schedule reload.
            self.config = replace(cfg, listen=self.config.listen, prometheus=self.config.prometheus,
                                  loki=self.config.loki, store_path=self.config.store_path)
            self._build_detectors(cfg)
            self.tracker._min_duration = {d.name: d.min_duration for d in cfg.detectors}
            self.tracker._merge_gap = {d.name: d.merge_gap for d in cfg.detectors}
        new = [n for n in self.detectors if n not in old_names or self.detectors[n].last_fit is None]
        if new:
            self.fit(only=new)

    # -- readiness ------------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, dict[str, Any]]:
        snap = self.snapshot
        not_loaded = [n for n, d in self.detectors.items() if d.last_fit is None and not d.series]
        up = snap.source_up.get("prometheus", 0) == 1
        return (up and not not_loaded), {"prometheus_up": up, "models_missing": not_loaded}

    # -- scheduler ------------------------------------------------------------------------------
    def start(self, *, fit_now: bool = True):
        from apscheduler.schedulers.background import BackgroundScheduler

        sched = self.config.schedule
        self.scheduler = BackgroundScheduler(daemon=True, job_defaults={"coalesce": True, "max_instances": 1,
                                                                         "misfire_grace_time": 30})
        loaded = self.load_models()
        log.info("loaded %d stored model(s) of %d detector(s)", loaded, len(self.detectors))
        first_fit = fit_now and any(d.last_fit is None for d in self.detectors.values())
        self.scheduler.add_job(self._safe(self.fit, "fit"), "interval", seconds=sched.fit_every, id="fit",
                               next_run_time=_dt(self.clock()) if first_fit else None)
        self.scheduler.add_job(self._safe(self.score, "score"), "interval", seconds=sched.step, id="score",
                               next_run_time=_dt(self.clock() + (5 if first_fit else 1)))
        for name, interval, fn in self._tasks:
            self._schedule_task(name, interval, fn)
        self.scheduler.start()
        return self.scheduler

    def _schedule_task(self, name, interval, fn):
        def run():
            started = time.perf_counter()
            ok = False
            try:
                fn(self.clock())
                ok = True
            finally:
                self._finish(name, started, ok)

        self.scheduler.add_job(self._safe(run, name), "interval", seconds=interval, id=f"task:{name}",
                               next_run_time=_dt(self.clock() + 1))

    def _safe(self, fn, task: str):
        def run():
            try:
                fn()
            except Exception:  # a job must never kill the scheduler thread
                log.exception("%s job failed", task)
        return run

    def retrain(self, only: list[str] | None = None) -> None:
        if self.scheduler is not None:
            self.scheduler.add_job(self._safe(lambda: self.fit(only), "fit"), id="retrain",
                                   replace_existing=True, next_run_time=_dt(self.clock()))
        else:
            self.fit(only)

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
            self.scheduler = None


def _dt(epoch: float):
    from datetime import datetime

    return datetime.fromtimestamp(epoch, tz=UTC)


def _same_model(a: DetectorConfig, b: DetectorConfig) -> bool:
    return (a.query, a.model, a.rule, a.params, a.features, a.join_on, a.heartbeat, a.direction,
            a.min_deviation, a.sensitivity) == (b.query, b.model, b.rule, b.params, b.features, b.join_on,
                                                b.heartbeat, b.direction, b.min_deviation, b.sensitivity)
