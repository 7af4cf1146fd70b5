"""The running detector: config + detector plugins + incident tracker + scheduler.

Each plugin (see detector/plugin.py) gets two jobs on one APScheduler (one process, max one instance
each): its fit every schedule.fit_every and its score every schedule.step. Jobs do all the work and
then swap in a finished `Snapshot`; the /metrics collector and the API only read the latest
snapshot (and the plugins' own cached families). Scores a plugin returns go to the incident tracker
(GET /api/v1/anomalies) and, when it `publishes_scores`, to the rigwatch_anomaly_* gauges.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from detector.anomaly_rate import AnomalyRates
from detector.config import Config, ConfigWatcher
from detector.context.events import fold
from detector.health import SourceHealth
from detector.incidents import Incident, IncidentPolicy, IncidentTracker
from detector.label_metrics import label_families
from detector.labels import Exclusions, LabelStore
from detector.plugin import DetectorPlugin
from detector.scores import ScoreBatch, series_id

log = logging.getLogger(__name__)
EVENTS_KEPT = 7 * 86400.0  # how far back GET /api/v1/anomalies asks the plugins for box events


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
    config_reload_ok: int = 1  # the last hot reload was taken (or there was none since start-up)
    config_reload_success_time: float = 0.0  # when the running config was loaded


class DetectorService:
    def __init__(self, config: Config, plugins: Sequence[DetectorPlugin], *, health: SourceHealth | None = None,
                 clock: Callable[[], float] = time.time, watcher: ConfigWatcher | None = None,
                 labels: LabelStore | None = None):
        """`watcher`: hot reload of the config file (None: the config never changes). `labels`:
        feedback and maintenance windows (None: only the config's windows, no feedback API)."""
        self.labels = labels
        self.config = config
        self.plugins = list(plugins)
        self.clock = clock
        self.health = health or SourceHealth()
        for plugin in self.plugins:
            for source in plugin.sources:
                self.health.declare(source)
        self._lock = threading.RLock()
        self._reload_lock = threading.Lock()
        self.watcher = watcher
        self._loaded_at = clock()
        self.tracker = IncidentTracker(policy=self._policy(), step=config.schedule.step, quiet=self._in_maintenance)
        self.rates = AnomalyRates(clock)  # rigwatch_anomaly_rate{detector,window}
        self._latest: dict[tuple[str, str], ScoreSample] = {}
        self._last_success: dict[str, float] = {}
        self._durations: dict[str, float] = {}
        self.scheduler = None
        self.snapshot = Snapshot()
        self._publish()

    def _policy(self) -> dict[str, IncidentPolicy]:
        policy: dict[str, IncidentPolicy] = {}
        for plugin in self.plugins:
            policy.update(plugin.incident_policy())
        return policy

    def _in_maintenance(self, detector: str, t):
        # scores inside a window are still published; they only open no incident
        return Exclusions.current(self.config.maintenance, self.labels).maintenance_mask(detector, t)

    # -- what the API reads -------------------------------------------------------------------
    def detector_names(self) -> list[str]:
        return [name for plugin in self.plugins for name in plugin.detector_names()]

    def models(self) -> list[dict[str, Any]]:
        return [m for plugin in self.plugins for m in plugin.models()]

    def registry_for(self, detector: str):
        """The model registry keeping `detector`'s versions; None when no plugin keeps one for it."""
        for plugin in self.plugins:
            if plugin.registry is not None and detector in plugin.detector_names():
                return plugin.registry
        return None

    def drift_report(self) -> list[dict[str, Any]]:
        return [d for plugin in self.plugins for d in plugin.drift_report()]

    def incidents(self) -> list[Incident]:
        """Recent incidents, oldest first, open ones included (`is_open` says which)."""
        with self._lock:
            return self.tracker.recent(include_open=True)

    def incidents_in_context(self, items: list[Incident]) -> tuple[list[tuple[Incident, dict]], list[dict]]:
        """`items` in the plugins' context: each plugin annotates their dicts (epoch times) and the box
        events the plugins saw (a restart, a model load) fold the incidents they explain. Returns the
        incidents no event explains, each with its annotated dict, and the events (epoch times), each
        with what it explains. A plugin failing here costs its context, never the answer."""
        dicts = [inc.to_dict() for inc in items]
        events = []
        for plugin in self.plugins:
            try:
                plugin.annotate(dicts)
                events += plugin.context_events(self.clock() - EVENTS_KEPT, self.clock())
            except Exception:  # noqa: BLE001 — one plugin's context never breaks the API
                log.exception("context of incidents: %s", type(plugin).__name__)
        kept, explained = fold(dicts, events, step=self.config.schedule.step)
        by_dict = {id(d): inc for d, inc in zip(dicts, items, strict=True)}
        return [(by_dict[id(d)], d) for d in kept], explained

    def extra_families(self) -> Iterable:
        yield self.config.shard.info_family()  # rigwatch_detector_shard_info{shard,shards}
        for plugin in self.plugins:
            yield from plugin.families()
        yield self.rates.family()
        yield from label_families(self.labels, self.config.maintenance, self.detector_names(), self.clock())

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        snap = self.snapshot
        missing = [n for plugin in self.plugins for n in plugin.models_missing()]
        required = sorted({s for plugin in self.plugins for s in plugin.required_sources})
        up = {f"{s}_up": snap.source_up.get(s, 0) == 1 for s in required}
        return (all(up.values()) and not missing), {**up, "models_missing": missing}

    # -- bookkeeping ----------------------------------------------------------------------------
    def record(self, batches: list[ScoreBatch], publish: bool = True) -> None:
        """Feed scored batches to the incident tracker (GET /api/v1/anomalies) and, with `publish`,
        to the rigwatch_anomaly_* gauges. A plugin that publishes its own score family records with
        publish=False: its anomaly must not also show up as a metric anomaly (MetricAnomaly would
        fire a second alert for it)."""
        with self._lock:
            for b in batches:
                self.tracker.update(b)
                if publish and len(b.t):
                    i = len(b.t) - 1
                    self._latest[(b.detector, series_id(b.labels))] = ScoreSample(
                        b.detector, b.model, dict(b.labels), float(b.t[i]), float(b.score[i]),
                        float(b.expected[i]), float(b.lower[i]), float(b.upper[i]), float(b.y[i]))
            self.rates.add_batches(batches)

    def _publish(self) -> None:
        with self._lock:
            # a series that stopped being scored (vanished, detector removed) stops being published
            horizon = self.clock() - max(self.config.schedule.context, 10 * self.config.schedule.step)
            for k in [k for k, v in self._latest.items() if v.t < horizon]:
                del self._latest[k]
            up, errors = self.health.snapshot()
            reload_ok, loaded_at = ((self.watcher.successful, self.watcher.last_success_time)
                                    if self.watcher is not None else (True, self._loaded_at))
            self.snapshot = Snapshot(
                config_reload_ok=int(reload_ok), config_reload_success_time=loaded_at,
                scores=tuple(self._latest.values()), last_success=dict(self._last_success),
                durations=dict(self._durations), source_up=up, source_errors=errors,
                series_tracked=sum(p.series_tracked() for p in self.plugins),
                model_info=tuple(i for p in self.plugins for i in p.model_info()))

    def _finish(self, task: str, started: float, ok: bool) -> None:
        with self._lock:
            self._durations[task] = time.perf_counter() - started
            if ok:
                self._last_success[task] = self.clock()
        self._publish()

    # -- jobs -----------------------------------------------------------------------------------
    def load_models(self) -> int:
        """Every plugin's last good stored state; returns how many detectors loaded."""
        n = sum(plugin.load() for plugin in self.plugins)
        self._publish()
        return n

    def fit(self, only: Iterable[str] | None = None) -> bool:
        """Every plugin's fit (only=None: the scheduled fit; else a retrain of those detectors)."""
        wanted = None if only is None else set(only)
        ok = True
        for plugin in self.plugins:
            if wanted is not None and not wanted & set(plugin.detector_names()):
                continue
            ok = self._fit(plugin, wanted) and ok
        return ok

    def _fit(self, plugin: DetectorPlugin, only: set[str] | None = None) -> bool:
        started = time.perf_counter()
        ok = False
        try:
            ok = plugin.fit(self.clock(), None if only is None else only & set(plugin.detector_names()))
        finally:
            self._finish(plugin.fit_task, started, ok)
        return ok

    def score(self) -> bool:
        ok = True
        for plugin in self.plugins:
            ok = self._score(plugin) and ok
        return ok

    def _score(self, plugin: DetectorPlugin) -> bool:
        self._maybe_reload()
        started = time.perf_counter()
        ok = False
        try:
            result = plugin.score(self.clock())
            self.record(result.batches, publish=plugin.publishes_scores)
            ok = result.ok
        finally:
            self._finish(plugin.score_task, started, ok)
        return ok

    def _maybe_reload(self) -> None:
        if self.watcher is None:
            return
        with self._reload_lock:  # two plugins' score jobs may ask at once
            cfg = self.watcher.poll()  # a refused edit is logged there, once, and kept out
            if cfg is None:
                return
            log.info("config changed: reloading %s", cfg.source)
            cfg = cfg.reloaded_over(self.config)
            with self._lock:
                self.config = cfg
                refit = {plugin: plugin.reconfigure(cfg) for plugin in self.plugins}
                self.tracker.set_policy(self._policy())
                self.rates.forget(self.detector_names())  # a removed detector's rate goes with it
        for plugin, names in refit.items():
            if names:
                self._fit(plugin, set(names))

    def retrain(self, only: list[str] | None = None) -> None:
        """Refit now, off the request thread: `only` those detectors, or every one."""
        names = set(only) if only else set(self.detector_names())
        if self.scheduler is not None:
            self.scheduler.add_job(self._safe(lambda: self.fit(names), "fit"), id="retrain",
                                   replace_existing=True, next_run_time=_dt(self.clock()))
        else:
            self.fit(names)

    # -- scheduler ------------------------------------------------------------------------------
    def start(self, *, fit_now: bool = True):
        from apscheduler.schedulers.background import BackgroundScheduler

        sched = self.config.schedule
        self.scheduler = BackgroundScheduler(daemon=True, job_defaults={"coalesce": True, "max_instances": 1,
                                                                         "misfire_grace_time": 30})
        loaded = self.load_models()
        log.info("loaded %d stored model(s) of %d detector(s)", loaded, len(self.detector_names()))
        for plugin in self.plugins:
            first_fit = fit_now and plugin.needs_fit(self.clock())
            self.scheduler.add_job(self._safe(lambda p=plugin: self._fit(p), plugin.fit_task), "interval",
                                   seconds=sched.fit_every, id=plugin.fit_task,
                                   next_run_time=_dt(self.clock()) if first_fit else None)
            self.scheduler.add_job(self._safe(lambda p=plugin: self._score(p), plugin.score_task), "interval",
                                   seconds=sched.step, id=plugin.score_task,
                                   next_run_time=_dt(self.clock() + (5 if first_fit else 1)))
        self.scheduler.start()
        return self.scheduler

    def _safe(self, fn, task: str):
        def run():
            try:
                fn()
            except Exception:  # a job must never kill the scheduler thread
                log.exception("%s job failed", task)
        return run

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
            self.scheduler = None


def _dt(epoch: float):
    from datetime import datetime

    return datetime.fromtimestamp(epoch, tz=UTC)
