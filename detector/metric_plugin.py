"""The metric side as a detector plugin: one `MetricDetector` per configured PromQL query.

    fit     every schedule.fit_every: each detector fitted on its lookback window (less the gate's
            held-out hours when it has a champion), saved to the store and proposed to the model
            registry, whose gate (detector/gate.py) promotes it or keeps it a rejected challenger
    score   every schedule.step: with the registry's champion (a promotion or rollback is picked
            up here); only what no model has seen yet; a detector never fitted (Prometheus
            down at start-up) or with series still on their fallback is refitted first
    a query Prometheus refuses pauses only its own detector (rigwatch_detector_query_ok 0, its
            errors counted, a log line naming `detectors[N].<key>`); the others go on, the source
            stays up, and the paused one is retried every pass: fixing its data brings it back.
            Only an unavailable source (transport errors, 5xx) ends a pass.
    drift   at each fit, before refitting, what came since the model's training against the reference
            stored with its version (detector/drift_book.py); with refit_on_drift, also checked
            hourly between fits, and a drift held at two checks refits at once
    backtest  each detector's data for the whole range fetched once, then replayed: the first fit at
            start + schedule.warmup, a refit every fit_every over the lookback window, every point
            scored once, in order, by the model fitted before it (causal)
    sharded (config.shard I/N, detector/sharding.py) the source answers only the series this shard
            owns, so every pass above sees the same set; a stored state's models of series it does
            not own are dropped when loaded, and after a change of N the owned series without a
            model (moved here from another shard) are fitted at the first scoring pass, alone:
            the series that stayed keep their models (fit_window's `missing_only`)
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from detector.config import Config, DetectorConfig
from detector.drift_book import DRIFT_WINDOW, DriftBook
from detector.drift_book import STATE_KEY as DRIFT_KEY
from detector.fetch import (
    DetectorQueryError,
    PrometheusSource,
    SeriesData,
    SeriesSource,
    feature_queries,
    grid_end,
)
from detector.fit_records import metric_fit_record
from detector.gate import evaluate
from detector.gate_book import GateBook
from detector.health import QueryHealth, SourceHealth
from detector.incident_plots import plot_incidents
from detector.incidents import Incident, IncidentTracker
from detector.labels import Exclusions, LabelStore
from detector.metric_detector import MetricDetector
from detector.models import kind_class
from detector.plugin import BacktestPart, DetectorPlugin, IncidentPolicy, ScorePass
from detector.promclient import PromClient, PromError
from detector.registry import Decision, Gate, Registry
from detector.replay import replay_detector
from detector.sharding import ShardedSource
from detector.store import ModelStore, stored_number
from detector.timefmt import iso
from detector.tracking import NullTracker, Tracker

log = logging.getLogger(__name__)
SOURCE = "prometheus"


class MetricPlugin(DetectorPlugin):
    fit_task = "fit"
    score_task = "score"
    sources = (SOURCE,)
    required_sources = (SOURCE,)
    publishes_scores = True

    def __init__(self, config: Config, client: PromClient | None, *, store: ModelStore | None = None,
                 health: SourceHealth | None = None, registry: Registry | None = None,
                 labels: LabelStore | None = None, source: SeriesSource | None = None,
                 tracker: Tracker | None = None):
        """`store` None (a backtest): models stay in memory. `registry` (default: one over `store`
        with no gate) says which stored version scores. `labels`: stored feedback and maintenance
        windows, left out of fits (the config's windows always are). `source`: where the series
        come from (default: Prometheus over `client`; an exported dataset for `fit --dataset`).
        `tracker`: where each saved fit is logged (detector.tracking; None: nowhere)."""
        self.labels = labels
        self.config = config
        self.client = client
        self.source = source if source is not None else PrometheusSource(client)
        self.shard = config.shard  # fixed for the process: it chose the store (a reload keeps it)
        if self.shard.sharded:
            self.source = ShardedSource(self.source, self.shard)
        # sharded detectors loaded from the store: their owned series without a model (moved here
        # when N changed) are fitted at the first scoring pass (score())
        self._reown: set[str] = set()
        self.store = store
        self.registry = registry or (Registry(store) if store is not None else None)
        self._unfollowable: dict[str, int] = {}  # champion versions that failed to load (warned once)
        self.health = health or SourceHealth()
        self.queries = QueryHealth()
        self.drift = DriftBook()  # training references and drift measured at each fit
        self.tracker = tracker or NullTracker()
        self.gate_book = GateBook()  # the gate's decisions and last figures, published
        self._attempted: dict[str, float] = {}  # newest training end of a fit, promoted or not
        self.detectors: dict[str, MetricDetector] = {}
        self._lock = threading.RLock()
        self._build(config)

    def _build(self, config: Config) -> None:
        dets, same = {}, set()
        for d in config.detectors:
            if not d.enabled:
                continue
            old = self.detectors.get(d.name)
            if old is not None and _same_model(old.cfg, d):
                old.cfg = d
                dets[d.name] = old
                same.add(d.name)
            else:
                dets[d.name] = MetricDetector(d, config.schedule.step)
        self.detectors = dets
        self.drift.forget(same)  # a removed detector, or a new model of it: its reference is void
        self.gate_book.forget(dets)

    # -- what the service asks ----------------------------------------------------------------
    def detector_names(self) -> list[str]:
        return list(self.detectors)

    def incident_policy(self) -> dict[str, IncidentPolicy]:
        return {d.name: IncidentPolicy(d.min_duration, d.merge_gap, d.onsets) for d in self.config.detectors}

    def needs_fit(self, now: float) -> bool:
        return any(d.last_fit is None for d in self.detectors.values())

    def _never_fitted(self) -> list[str]:
        return [n for n, d in self.detectors.items() if d.last_fit is None and not d.series]

    def models_missing(self) -> list[str]:
        # a detector whose query Prometheus refuses is paused, not missing: it must not hold every
        # other detector's readiness hostage (its own gauge and alert tell of it)
        failing = self.queries.failing()
        return [n for n in self._never_fitted() if n not in failing]

    def families(self) -> Iterable[Metric]:
        failing, errors = self.queries.failing(), self.queries.errors()
        ok = GaugeMetricFamily("rigwatch_detector_query_ok", "1 if Prometheus accepted the detector's queries "
                               "last time, 0 while it refuses one (the detector is paused)", labels=["detector"])
        refused = CounterMetricFamily("rigwatch_detector_query_errors", "Queries of the detector that "
                                      "Prometheus refused (bad_data, execution errors)", labels=["detector"])
        fitted = GaugeMetricFamily("rigwatch_detector_model_fit_timestamp_seconds", "Unix time the model the "
                                   "detector scores with was fitted (what DetectorChampionStale watches)",
                                   labels=["detector"])
        for name in self.detector_names():
            ok.add_metric([name], 0 if name in failing else 1)
            refused.add_metric([name], errors.get(name, 0))
            last_fit = self.detectors[name].last_fit if name in self.detectors else None
            if last_fit is not None:
                fitted.add_metric([name], last_fit)
        every = GaugeMetricFamily("rigwatch_detector_fit_interval_seconds", "The configured refit cadence "
                                  "(schedule.fit_every)", value=self.config.schedule.fit_every)
        owned = GaugeMetricFamily("rigwatch_detector_shard_series", "Series of the detector this replica holds "
                                  "a model or rule state for (with --shard I/N: the series its shard owns; "
                                  "summed over the shards, every series once)", labels=["detector"])
        with self._lock:
            for name, det in self.detectors.items():
                owned.add_metric([name], len(det.series))
        return (ok, refused, fitted, every, owned, *self.drift.families(), self._challenger_family(), *self.gate_book.families(self.detector_names()),
                *self.tracker.families())

    def drift_report(self) -> list[dict[str, Any]]:
        return self.drift.report(self.detector_names())

    def _challenger_family(self) -> Metric:
        fam = GaugeMetricFamily("rigwatch_detector_challenger_info", "1 per challenger version present "
                                "(state: challenger under evaluation, or rejected); the model that scores "
                                "is rigwatch_detector_model_info", labels=["detector", "version", "state"])
        if self.registry is None:
            return fam
        for name in self.detector_names():
            rec = self.registry.record(name)
            v = rec["challenger"]
            if v is not None and v in self.store.versions(name):
                fam.add_metric([name, str(v), self.registry.state_of(rec, v) or "challenger"], 1)
        return fam

    def reconfigure(self, config: Config) -> list[str]:
        with self._lock:
            old_names = set(self.detectors)
            self.config = config
            self._build(config)
        return [n for n in self.detectors if n not in old_names or self.detectors[n].last_fit is None]

    def models(self) -> list[dict[str, Any]]:
        out = []
        with self._lock:
            for name, det in self.detectors.items():
                kinds: dict[str, int] = {}
                for sm in det.series.values():
                    kinds[sm.kind] = kinds.get(sm.kind, 0) + 1
                out.append({"detector": name, "model": det.cfg.kind, "query": det.cfg.query,
                            "version": det.version, "last_fit": iso(det.last_fit) if det.last_fit else None,
                            "series": len(det.series), "series_by_model": kinds,
                            "fit_metrics": det.fit_metrics, **self._registry_fields(name, det.version)})
        return out

    def _registry_fields(self, name: str, version: int | None) -> dict[str, Any]:
        """The scoring version's aliases and state, and the detector's aliased versions."""
        if self.registry is None:
            return {"aliases": [], "state": None, "reason": None, "champion": None, "challenger": None,
                    "rollback_target": None, "decision": None}
        rec = self.registry.record(name)
        champion, target = self.registry.champion(name, rec), self.registry.rollback_target(name, rec)
        aliases = [a for a, v in (("champion", champion), ("challenger", rec["challenger"]),
                                  ("rollback", target)) if version is not None and v == version]
        entry = rec["versions"].get(str(version), {}) if version is not None else {}
        # the newest decision, also when it kept its version from scoring (a rejected challenger)
        last = rec["decisions"][-1] if rec["decisions"] else None
        decision = None if last is None else {
            "version": last.get("version"), "outcome": last.get("outcome"), "reason": last.get("reason"),
            "figures": last.get("figures") or {}, "at": iso(last["at"]) if last.get("at") else None}
        return {"aliases": aliases,
                "state": self.registry.state_of(rec, version) if version is not None else None,
                "reason": entry.get("reason"),
                "champion": champion, "challenger": rec["challenger"], "rollback_target": target,
                "decision": decision}

    def model_info(self) -> list[tuple[str, str, str]]:
        return [(name, d.cfg.kind, str(d.version or 0)) for name, d in self.detectors.items()]

    def series_tracked(self) -> int:
        return sum(len(d.series) for d in self.detectors.values())

    # -- stored models ------------------------------------------------------------------------
    def load(self) -> int:
        if self.store is None:
            return 0
        n = 0
        for name, det in self.detectors.items():
            found = self.registry.load(name, lambda mv, det=det: self._restore(det, mv.state))
            if found is None:
                continue  # nothing stored, or nothing usable: the first fit comes first
            det.version = found[0].version
            n += 1
            log.info("loaded %s v%d (%d series)", name, det.version, len(det.series))
            if self.shard.sharded:
                # N may have changed since this version was fitted (its metadata's `shard` says under
                # which; a version loaded under another N and never refitted still says the old one,
                # so that is no test): whatever this shard owns without a model is fitted first
                self._reown.add(name)
            self._mirror(name)  # start-up: the tracking registry's aliases follow the local record
        return n

    def _restore(self, det: MetricDetector, state: dict) -> None:
        """Apply a stored state to `det` once a copy has scored a point with every series: a state
        with an array of the wrong shape or a value of the wrong type passes set_state but would fail
        every scoring pass after (logged per series, never refitted). Raises when it is not usable;
        `det` is changed only when it is."""
        _check_document(state)
        if self.shard.sharded:  # a version fitted under another N: models of series now elsewhere go
            state = {**state, "series": {sid: s for sid, s in state["series"].items()
                                         if self.shard.owns(s["labels"])}}
        probe = MetricDetector(det.cfg, self.config.schedule.step)
        probe.set_state(state)
        names = list(feature_queries(det.cfg))
        heartbeat = kind_class(det.cfg.kind).heartbeat
        for sid, sm in probe.series.items():
            t = np.array([(sm.last_t if np.isfinite(sm.last_t) else 0.0) + self.config.schedule.step])
            X = t[:, None] if heartbeat else (np.ones((1, len(names))) if names else None)
            if not probe.score({sid: SeriesData(sm.labels, t, np.ones(1), X, names)}):
                raise ValueError(f"series {sid} cannot be scored with it")
        det.set_state(state)  # assigns only once the whole state is read
        self.drift.restore(det.cfg.name, state.get(DRIFT_KEY))

    def exclusions(self) -> Exclusions:
        """What a fit leaves out now: the running config's windows, the stored labels."""
        return Exclusions.current(self.config.maintenance, self.labels)

    # -- live passes --------------------------------------------------------------------------
    def _grid_end(self, now: float) -> float:
        return grid_end(now, self.config.schedule.step, self.config.prometheus.latency_offset)

    def _fetch(self, task: str, det: MetricDetector, start: float, end: float) -> dict[str, SeriesData] | None:
        """The detector's series over [start, end]; None when Prometheus refused one of its queries
        (recorded against this detector alone; the pass goes on). Raises PromError while Prometheus
        is unavailable (the outage is logged and shows in source_up; the caller ends this pass and
        the next one retries)."""
        try:
            data = self.source.fetch(det.cfg, start, end, self.config.schedule.step)
        except DetectorQueryError as e:
            self.health.set_up(SOURCE, True)  # it answered: the query is wrong, not the source
            # an error when the detector pauses; every pass's retry after that only at debug level
            level = logging.DEBUG if self.queries.failing().get(det.cfg.name) == e.key else logging.ERROR
            self.queries.refused(det.cfg.name, e.key)
            log.log(level, "%s %s: prometheus refuses %s (%s): %s; detector paused, retried every pass", task,
                    det.cfg.name, self._config_key(det.cfg.name, e.key), e.error_type, e.reason)
            return None
        except PromError as e:
            log.warning("%s %s: prometheus unavailable: %s", task, det.cfg.name, e)
            self.health.set_up(SOURCE, False)
            raise
        self.health.set_up(SOURCE, True)
        if det.cfg.name in self.queries.failing():
            log.info("%s %s: prometheus accepts its queries again; detector resumed", task, det.cfg.name)
            self.queries.answered(det.cfg.name)
        return data

    def _config_key(self, name: str, key: str) -> str:
        """`detectors[N].<key>` of the detector in the running config."""
        index = next((i for i, d in enumerate(self.config.detectors) if d.name == name), None)
        return f"detectors[{index}].{key}" if index is not None else key

    def fit(self, now: float, only: set[str] | None = None, missing_only: Collection[str] = ()) -> bool:
        end = self._grid_end(now)
        return self.fit_window(end - self.config.schedule.lookback, end, only, missing_only)

    def fit_window(self, start: float, end: float, only: set[str] | None = None,
                   missing_only: Collection[str] = ()) -> bool:
        """Fit every detector (or `only` these) on its series over [start, end]: the live fit's
        lookback window, or an exported dataset's whole range (`fit --dataset`). Each fit is a new
        object (the challenger); the scoring detector takes it over only once the registry promotes
        it. With a champion to compare and `gate.enabled`, the challenger is fitted without the
        newest holdout hours and the gate (detector/gate.py) replays both on them.

        `missing_only`: detectors whose challenger fits only the series the scoring detector holds
        no model for (a shard's gain after N changed) and carries every other model as it is; its
        version is saved and gated like any fit (fit_metrics count the series fitted), the drift
        reference is taken over all its series. Nothing to fit: no version."""
        ok = True
        for name in [n for n in self.detectors if only is None or n in only]:
            det = self.detectors.get(name)
            if det is None:
                continue
            try:
                data = self._fetch("fit", det, start, end)
            except PromError:
                return False
            if data is None:
                continue
            fit_ids = set(data)
            if name in missing_only:
                with self._lock:
                    fit_ids -= set(det.series)
                if not fit_ids:
                    continue
                log.info("%s: fitting the %d series shard %s owns without a model (moved here); the "
                         "other %d keep theirs", name, len(fit_ids), self.shard, len(data) - len(fit_ids))
            self.drift.measure(det.cfg, data, end)  # the model fitted so far against what came since
            gated = self.store is not None and self.config.gate.enabled
            # held out only when there is a champion to compare with (a first fit trains on it all)
            compare = gated and self.registry.champion(name) is not None
            holdout = self.config.gate.holdout_for(end - start) if compare else 0.0
            train_end = end - holdout
            train_all = {sid: sd.slice(sd.t <= train_end) for sid, sd in data.items()} if holdout else data
            # in the source's order, as a whole fit: the training-data fingerprint hashes in that order
            train = train_all if len(fit_ids) == len(data) else {s: sd for s, sd in train_all.items() if s in fit_ids}
            exclusions = self.exclusions()
            with self._lock:
                challenger = _challenger_of(det)
            challenger.fit(train, train_end, exclusions)
            # the time of the fit (what DetectorChampionStale and the refit cadence read), not the end of
            # its training data: each series' fitted_at says that
            challenger.last_fit = end
            meta = challenger.fit_metadata(train, start, train_end)
            meta["training_data"].update(self.source.provenance())
            if self.shard.sharded:  # under which N this version was fitted, for the reader of its
                # metadata (load() cannot rely on it to see a change of N: see there)
                meta["shard"] = str(self.shard)
            reference = self.drift.train(det.cfg, train_all, train_end, install=False)
            if self.store is None:
                self._adopt(det, challenger, reference, None)
                continue
            with self._lock:  # series carried over from the scoring detector may be scoring now
                state = challenger.get_state()
            if reference is not None:
                state[DRIFT_KEY] = reference
            gate = self._gate(det.cfg, state, data, start, end, holdout, exclusions) if gated else None
            self._attempted[name] = end
            try:
                mv = self.store.save(name, state, meta, prune=False)
                decision = self.registry.propose(name, mv.version, gate=gate)
            except OSError as e:
                log.error("saving model %s failed: %s (the previous version stays current)", name, e)
                ok = False
                continue
            self.gate_book.record(decision)
            if decision.outcome == "promoted":
                self._adopt(det, challenger, reference, mv.version)
                log.info("%s v%d promoted: %s", name, mv.version, decision.reason)
            else:  # the fitted state stays a challenger; the champion scores on, untouched
                log.warning("%s v%d not promoted (%s): %s", name, mv.version, decision.outcome, decision.reason)
            self._track(challenger, mv.metadata, decision, (state, train))
            self._mirror(name)  # queued after the fit's record, so its version is registered first
        return ok

    def _gate(self, cfg: DetectorConfig, state: dict, data: dict[str, SeriesData], start: float, end: float,
              holdout: float, exclusions: Exclusions) -> Gate:
        """The gate of this fit for Registry.propose: it has the data, the challenger's state and the
        labels; the registry gives it the champion to compare with."""
        step = self.config.schedule.step

        def gate(detector: str, version: int, champion: int | None) -> Decision:
            if champion is None:
                return Decision(detector, version, "promoted", "no champion to compare")
            champ = MetricDetector(cfg, step)
            try:
                champ.set_state(self.store.load(detector, champion).state)
            except Exception as e:  # stored content is untrusted: no champion to compare with
                return Decision(detector, version, "promoted", f"champion v{champion} not loadable "
                                f"({type(e).__name__}: {e}): no champion to compare")
            chall = MetricDetector(cfg, step)
            chall.set_state(state)  # a copy of what was saved: what is judged is what scores
            labels = self.labels.labels_for(detector, start, end) if self.labels is not None else []
            return evaluate(detector, version, champ, chall, data, start=start, end=end, holdout=holdout,
                            labels=labels, rule=self.config.gate, policy=self.incident_policy(),
                            quiet=exclusions.maintenance_mask, step=step)
        return gate

    def _adopt(self, det: MetricDetector, challenger: MetricDetector, reference: dict | None,
               version: int | None) -> None:
        """The scoring detector takes over a promoted fit. Points it scored meanwhile stay scored,
        and series that appeared meanwhile keep their models."""
        with self._lock:
            for sid, sm in det.series.items():
                new = challenger.series.get(sid)
                if new is None:
                    challenger.series[sid] = sm
                elif new is not sm:
                    new.last_t = max(new.last_t, sm.last_t)
            det.series, det.last_fit, det.fit_metrics = challenger.series, challenger.last_fit, challenger.fit_metrics
            det.started = True
            if version is not None:
                det.version = version
            if reference is not None:  # the promoted fit's drift reference (a rule has none)
                self.drift.install(det.cfg.name, reference)

    def _follow_champions(self) -> None:
        """Score with the registry's champion: a promotion or rollback (API, CLI) takes effect here,
        at the next scoring step, and is mirrored to the tracking registry's aliases. A champion that
        does not load is warned about once and the current model scores on."""
        if self.registry is None:
            return
        for name, det in list(self.detectors.items()):
            champion = self.registry.record(name)["champion"]
            if champion is None or champion == det.version or self._unfollowable.get(name) == champion:
                continue
            with self._lock:
                try:
                    self._restore(det, self.store.load(name, champion).state)
                except Exception as e:  # stored content is untrusted (see _restore)
                    self._unfollowable[name] = champion
                    log.warning("%s: champion v%d not loaded, v%s scores on: %s: %s", name, champion,
                                det.version, type(e).__name__, e)
                    continue
                det.version = champion
            log.info("%s now scores with v%d (the registry's champion)", name, champion)
            self._mirror(name)

    def _mirror(self, name: str) -> None:
        """The local registry's champion and challenger of `name`, to the tracking registry."""
        if self.registry is None or isinstance(self.tracker, NullTracker):
            return
        try:
            rec = self.registry.record(name)
            self.tracker.mirror_aliases(name, self.registry.champion(name, rec), rec["challenger"])
        except Exception as e:  # tracking is optional: never the fit's or the scoring pass's problem
            log.warning("tracking %s: aliases not mirrored: %s", name, e)

    def _track(self, det: MetricDetector, meta: dict, decision: Decision | None = None,
               training: tuple[dict, dict[str, SeriesData]] | None = None) -> None:
        if isinstance(self.tracker, NullTracker):
            return
        try:  # tracking is optional: a record it cannot build never fails the fit
            self.tracker.log_fit(metric_fit_record(det, meta, self.config, self.store, decision, training))
        except Exception as e:
            log.warning("tracking %s: %s (fit kept, not logged)", det.cfg.name, e)

    def score(self, now: float) -> ScorePass:
        sched = self.config.schedule
        # never fitted (Prometheus was down at start-up) or a series still on its fallback model:
        # fit now rather than at the next regular fit hours away
        early = set(self._never_fitted()) | {
            n for n, d in self.detectors.items()
            if d.last_fit is not None and d.needs_early_refit()
            # a refit the gate rejected counts as an attempt: not retried at every pass
            and now - max(d.last_fit, self._attempted.get(n, d.last_fit)) >= sched.fallback_refit}
        early |= self._drift_refits(now)
        self._follow_champions()
        reown = self._reown & set(self.detectors)
        if reown and self.fit(now, only=reown, missing_only=reown):
            self._reown -= reown
            early -= reown  # their fallback series were the moved ones, fitted just now
        if early:
            self.fit(now, only=early)
        end = self._grid_end(now)
        out = ScorePass()
        for det in list(self.detectors.values()):
            if det.last_fit is None and not det.series:
                continue  # never fitted: the fit job (or a retrain) comes first
            # only what no model has seen yet (within `context`): a pass every step fetches ~1 point
            start = end - sched.context
            if det.series:
                start = max(start, min(sm.last_t for sm in det.series.values()) - sched.step)
            try:
                data = self._fetch("score", det, start, end)
            except PromError:
                out.ok = False
                break
            if data is None:
                continue
            with self._lock:
                out.batches.extend(det.score(data))
        return out

    def _drift_refits(self, now: float) -> set[str]:
        """Detectors with `refit_on_drift` whose drift, checked hourly between fits on what came
        since their model's training, has held high (drift_book.HOLD_CHECKS checks in a row)."""
        out = set()
        end = self._grid_end(now)
        for name, det in list(self.detectors.items()):
            if not det.cfg.refit_on_drift or det.last_fit is None or not self.drift.check_due(name, now):
                continue
            try:
                data = self._fetch("drift", det, max(det.last_fit, end - DRIFT_WINDOW), end)
            except PromError:
                break  # the scoring pass that follows meets the same outage
            if data is not None and self.drift.check(det.cfg, data, end):
                log.info("%s: drift held high at consecutive checks: refitting now (refit_on_drift)", name)
                out.add(name)
        return out

    # -- backtest -----------------------------------------------------------------------------
    def backtest_hours(self, start: float, end: float) -> float:
        first_fit = min(start + self.config.schedule.warmup, end)
        return round((end - first_fit) * len(self.detectors) / 3600, 1)

    def backtest(self, start: float, end: float, *, threshold: float, plot_dir: str | None = None,
                 progress=None) -> BacktestPart:
        config = self.config
        exclusions = self.exclusions()
        tracker = IncidentTracker(threshold=threshold, policy=self.incident_policy(),
                                  step=config.schedule.step, keep=None, quiet=exclusions.maintenance_mask)
        traces: dict | None = {} if plot_dir else None
        part = BacktestPart()
        for det in self.detectors.values():
            if progress is not None:
                progress.set_postfix_str(det.cfg.name)
            t0 = time.perf_counter()
            data = self.source.fetch(det.cfg, start, end, config.schedule.step)
            info = replay_detector(det, data, start, end, config, tracker, traces, progress, exclusions)
            info.update({"detector": det.cfg.name, "kind": det.cfg.kind,
                         "seconds": round(time.perf_counter() - t0, 3)})
            part.detectors.append(info)
        tracker.flush()
        incidents: list[Incident] = sorted(tracker.closed, key=lambda i: (i.start, i.detector))
        part.incidents = [i.to_dict(iso) for i in incidents]
        if plot_dir and traces is not None:
            part.plots = plot_incidents(incidents, traces, Path(plot_dir), threshold)
        return part


def _challenger_of(det: MetricDetector) -> MetricDetector:
    """A new detector to fit, apart from the scoring one: it starts with the scoring one's series
    (a fit replaces each series it has data for with a new model, and keeps the others, as an
    in-place fit did), so the live models are never changed by it."""
    new = MetricDetector(det.cfg, det.step)
    new.series = dict(det.series)
    new.started = det.started
    return new


def _check_document(state: Any) -> None:
    """The fields of a stored engine state that set_state takes on trust (it checks the kind and
    each model's own state) but the service reads later: a wrong type there would fail scoring
    passes and GET /api/v1/models instead of this one load."""
    if not isinstance(state, dict) or not isinstance(state.get("series"), dict):
        raise ValueError("no engine state document (series by id)")
    stored_number(state.get("last_fit"), "last_fit", optional=True, time=True)
    for sid, s in state["series"].items():
        if not isinstance(s, dict):
            raise ValueError(f"series {sid}: a {type(s).__name__}, not a document")
        labels, kind = s.get("labels"), s.get("kind")
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in [*labels, *labels.values()]):
            raise ValueError(f"series {sid}: labels {labels!r} are not names to strings")
        if not isinstance(kind, str):
            raise ValueError(f"series {sid}: kind {kind!r} is no name")
        stored_number(s.get("last_t"), f"series {sid}: last_t")  # -inf: a series never scored yet
        stored_number(s.get("fitted_at"), f"series {sid}: fitted_at", optional=True, time=True)
        stored_number(s.get("y_floor"), f"series {sid}: y_floor", optional=True)


def _same_model(a: DetectorConfig, b: DetectorConfig) -> bool:
    return (a.query, a.model, a.rule, a.params, a.features, a.join_on, a.heartbeat, a.direction,
            a.min_deviation, a.sensitivity) == (b.query, b.model, b.rule, b.params, b.features, b.join_on,
                                                b.heartbeat, b.direction, b.min_deviation, b.sensitivity)
