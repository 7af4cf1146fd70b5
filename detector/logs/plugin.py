"""The log side as a detector plugin (detector/plugin.py): `log_fit` (templates + baselines over the
lookback, saved to the model store), `log_score` (new Loki lines each step) and the log metric
families:

  rigwatch_log_anomaly_score{detector, <stream or pattern labels>}   latest score per detector/labels
  rigwatch_log_template_rate{template_id}                            lines/s of the top training templates
  rigwatch_log_novel_templates_total                                 templates first seen after training

Anomalies above 1 go to the service's incident tracker (GET /api/v1/anomalies) with the template
and example lines as the explanation, never to rigwatch_anomaly_score. `serve` runs it when
detector.yml has a `loki:` section; `backtest --journal-file` replays a journal through it.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import numpy as np

from detector.config import Config
from detector.health import SourceHealth
from detector.incidents import IncidentPolicy
from detector.logs.backtest import gpu_map_from_prometheus, run_journal_backtest
from detector.logs.detector import INCIDENT_LABELS, LogDetector, LogDetectorConfig
from detector.logs.loki import LokiClient, LokiError
from detector.plugin import BacktestPart, DetectorPlugin, ScorePass
from detector.promclient import PromClient
from detector.registry import Registry
from detector.scores import ScoreBatch
from detector.store import BlobPersistence, ModelStore, stored_number

log = logging.getLogger(__name__)
STORE_NAME = "logs"
SOURCE = "loki"
DETECTOR_NAMES = ("log_pattern", "log_template", "log_rate", "log_sequence")
# a log anomaly is an event (a line, a window): an incident at its first pass, whatever the step
EVENT_POLICY = IncidentPolicy(min_duration=0.0, merge_gap=60.0)


# The miner's templates: one atomic blob in the model store, saved after every scoring step so a
# restart keeps templates learned since the last fit.
TEMPLATES_NAME = f"{STORE_NAME}/templates.json"
CURSOR_NAME = f"{STORE_NAME}/cursor.json"
CURSOR_VERSION = 1


def _line_key(entry) -> tuple[float, str, str]:
    """A line's identity for "already scored" (JSON-able, so it survives in the cursor)."""
    return entry.ts, json.dumps(entry.stream_key, separators=(",", ":")), entry.message


class LogPlugin(DetectorPlugin):
    """Fits and scores the log side. Where scoring stands (the last time scored and the detector's
    runtime state) is saved to the store after every pass, so a restart reads back the lines that
    reached Loki while the detector was down (at most `catch_up_s` of them) and keeps half-counted
    restart loops and repeats."""

    fit_task = "log_fit"
    score_task = "log_score"
    sources = (SOURCE,)
    required_sources = ()  # logs are an addition: the detector is ready without Loki
    publishes_scores = False  # rigwatch_log_anomaly_score (families()), never rigwatch_anomaly_score
    report_section = "logs"

    def __init__(self, config: Config, *, loki: LokiClient | None = None, prometheus: PromClient | None = None,
                 store: ModelStore | None = None, health: SourceHealth | None = None,
                 journal_file: str | None = None):
        """`loki` (serve) and `store` for the live side; `journal_file` for a backtest; `prometheus`
        maps Xid lines' PCI ids to the exporter's gpu index (through the configured client)."""
        self.config = LogDetectorConfig.from_dict(config.logs or {})
        self.loki = loki
        self.query = LokiClient.query_from_config(config.loki)
        self.prometheus = prometheus
        self.store = store
        self.health = health or SourceHealth()
        self.journal_file = journal_file
        schedule = config.schedule
        self.warmup_s = float(schedule.warmup)  # a backtest trains on this much before its start
        self.lookback_s = float(schedule.lookback)
        self.step_s = float(schedule.step)
        self.fit_every_s = float(schedule.fit_every)
        self.catch_up_s = self.config.catch_up_s
        self.catch_up_chunk_s = 900.0  # a backlog is read from Loki this much at a time
        self.fitted_at: float | None = None
        self.templates = BlobPersistence(store) if store is not None else None
        self.detector: LogDetector | None = None
        self.last_scored: float | None = None
        self.latest: dict[tuple, tuple[float, Any]] = {}  # (detector, labels) -> (t, LogAnomaly)
        # lines reach Loki after their timestamp (Promtail batches, journald, a slow shipper): each pass
        # re-reads this much before the last one and skips the lines it already scored
        self.ingest_slack_s = 30.0
        self._seen: set[tuple] = set()
        self._lock = threading.Lock()
        self._pending: list[ScoreBatch] = []

    # -- what the service asks --------------------------------------------------------------------
    def detector_names(self) -> list[str]:
        return list(DETECTOR_NAMES)

    def incident_policy(self) -> dict[str, IncidentPolicy]:
        return dict.fromkeys(DETECTOR_NAMES, EVENT_POLICY)

    def needs_fit(self, now: float) -> bool:
        return not self._fresh(now)

    def _fresh(self, now: float) -> bool:
        """A stored model recent enough: a restart needs no refit."""
        return self.detector is not None and self.fitted_at is not None and \
            now - self.fitted_at < 0.9 * self.fit_every_s

    # -- persistence ------------------------------------------------------------------------------
    def load(self) -> int:
        if self.store is None:
            return 0
        # the registry's champion (a promotion or rollback of `logs` with the CLI takes effect at restart)
        found = Registry(self.store).load(STORE_NAME, self._restore)
        if found is None:
            return 0  # nothing stored, or nothing usable: the first fit comes first
        self.detector, self.fitted_at = found[1]
        self._refresh_gpu_map(self.detector)
        self._load_cursor()
        return 1

    def _restore(self, stored) -> tuple[LogDetector, float | None]:
        """A stored version's detector and fit time; raises when the version is not usable."""
        window = stored.metadata.get("training_window") or {}
        fitted_at = stored_number(window.get("end") or None, "training_window.end", optional=True, time=True)
        try:
            return LogDetector.from_state(stored.state, self.templates, state_name=TEMPLATES_NAME), fitted_at
        except ValueError as e:
            error = e
        try:  # the version alone, without the templates saved since (one broken blob must not void every version)
            LogDetector.from_state(stored.state, None, state_name=TEMPLATES_NAME)
        except ValueError:
            raise ValueError(f"stored log model v{stored.version} not usable ({error})") from None
        log.warning("saved log templates %s not usable (%s): v%d's own templates are used",
                    self.store.persistence.describe(TEMPLATES_NAME), error, stored.version)
        self.templates.delete(TEMPLATES_NAME)
        return LogDetector.from_state(stored.state, self.templates, state_name=TEMPLATES_NAME), fitted_at

    def _load_cursor(self) -> None:
        """Resume from the saved cursor when it belongs to the loaded fit (template ids are the fit's);
        a cursor of another fit still says where scoring stopped, but its runtime state is dropped."""
        raw = self.store.read_blob(CURSOR_NAME)
        if raw is None:
            return
        try:
            cursor = json.loads(raw.decode("utf-8"))
            if not isinstance(cursor, dict):
                raise ValueError(f"a JSON {type(cursor).__name__}, not an object")
            if cursor.get("version") != CURSOR_VERSION:
                raise ValueError(f"unsupported version {cursor.get('version')!r}")
            last_scored = stored_number(cursor.get("last_scored"), "last_scored", time=True)
            seen = {(float(ts), str(stream), str(message)) for ts, stream, message in cursor.get("seen", [])}
            if cursor.get("fitted_at") == self.fitted_at:
                self.detector.set_runtime_state(cursor["runtime"])
        # AttributeError: a runtime part that is no mapping (set_runtime_state reads it before it assigns)
        except (AttributeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
            log.warning("log scoring cursor not usable (%s): scoring starts from now", e)
            return
        self.last_scored = last_scored
        self._seen = seen  # lines of the last ingestion slack, already scored before the restart
        log.info("log scoring resumes from %s", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last_scored)))

    def _save_cursor(self) -> None:
        if self.store is None:
            return
        cursor = {"version": CURSOR_VERSION, "fitted_at": self.fitted_at, "last_scored": self.last_scored,
                  "runtime": self.detector.get_runtime_state(), "seen": sorted(self._seen)}
        try:
            self.store.write_blob(CURSOR_NAME, json.dumps(cursor).encode("utf-8"))
        except OSError as e:  # a full disk must not stop scoring; the next pass tries again
            log.error("saving the log scoring cursor failed: %s", e)

    def _refresh_gpu_map(self, detector: LogDetector) -> None:
        """Xid lines name the GPU by PCI id: map it to the exporter's gpu index from gpu_info, so a log
        anomaly carries the same gpu label as the metrics. Indices can shift at boot: asked again at
        every fit; an unreachable Prometheus keeps the previous map."""
        mapping = gpu_map_from_prometheus(self.prometheus)
        if mapping:
            detector.gpu_by_pci = mapping
            detector.patterns_.gpu_by_pci = dict(mapping)

    # -- passes -----------------------------------------------------------------------------------
    def _read(self, start: float, end: float):
        try:
            entries = self.loki.query_range(self.query, start, end)
        except LokiError as e:
            self.health.set_up(SOURCE, False)
            log.warning("Loki read failed: %s", e)
            return None
        self.health.set_up(SOURCE, True)
        return entries

    def fit(self, now: float, only: set[str] | None = None) -> bool:
        if only is None and self._fresh(now):
            return True  # a stored model recent enough: a restart needs no refit
        if self.detector is not None and self.last_scored is not None and now - self.last_scored > self.step_s:
            # lines since the last pass (a restart's backlog) are scored, not trained on
            backlog = self.score(now).batches
            with self._lock:
                self._pending += backlog
        entries = self._read(now - self.lookback_s, now)
        if entries is None:
            log.warning("log fit skipped: Loki unreachable (retried at the next fit)")
            return False
        detector = LogDetector(self.config, persistence=self.templates, state_name=TEMPLATES_NAME).fit(entries)
        self._refresh_gpu_map(detector)
        metadata = {"training_window": {"start": now - self.lookback_s, "end": now}, "lines": len(entries),
                    "templates": len(detector.miner_.templates()), "params": self.config.__dict__}
        Registry(self.store).propose(STORE_NAME, self.store.save(STORE_NAME, detector.get_state(), metadata,
                                                                 prune=False).version)
        with self._lock:
            self.detector = detector
            self.fitted_at = now
            self.last_scored = now
            # the training lines the next pass re-reads (see ingest_slack_s) are no news
            self._seen = {_line_key(e) for e in entries if e.ts >= now - self.ingest_slack_s}
            self._save_cursor()
        return True

    def score(self, now: float) -> ScorePass:
        with self._lock:
            out = ScorePass(self._pending)
            self._pending = []
        if self.detector is None:
            return out  # nothing fitted yet: the fit task runs first
        last = self.last_scored if self.last_scored is not None else now - self.step_s
        if last < now - self.catch_up_s:
            log.warning("log scoring was %.0f s behind: lines older than %.0f s are not read back "
                        "(logs.catch_up_s)", now - last, self.catch_up_s)
            last = now - self.catch_up_s
        # a backlog (after a restart or a Loki outage) is read in chunks, so memory stays bounded
        # however chatty the box was, and each chunk is played in steps
        try:
            while last < now:
                end = min(now, last + max(self.catch_up_chunk_s, self.step_s))
                if not self._score_range(last, end, out.batches):
                    out.ok = False  # Loki unreachable: the window is retried next step
                    break
                last = end
        finally:
            self._save_cursor()
        return out

    def _score_range(self, last: float, end: float, batches: list[ScoreBatch]) -> bool:
        entries = self._read(last - self.ingest_slack_s, end)
        if entries is None:
            return False
        keys = [_line_key(e) for e in entries]
        fresh = [e for e, k in zip(entries, keys, strict=True) if k not in self._seen]
        horizon_seen = end - self.ingest_slack_s
        self._seen = {k for k in self._seen | set(keys) if k[0] >= horizon_seen}
        entries = sorted(fresh, key=lambda e: e.ts)
        # played in steps as the passes would have run, so rates and sequences see their own
        # windows and incidents keep their times; a normal pass is one step
        steps = [end] if end - last <= 2 * self.step_s else [
            *np.arange(last + self.step_s, end - self.step_s / 2, self.step_s).tolist(), end]
        index = 0
        for t in steps:
            batch = []
            while index < len(entries) and (entries[index].ts < t or t == end):
                batch.append(entries[index])
                index += 1
            with self._lock:
                results = self.detector.score(batch, t)
                self.last_scored = t
                for anomaly in results:
                    self.latest[(anomaly.detector, tuple(sorted(anomaly.labels.items())))] = (t, anomaly)
                horizon = t - max(10 * self.step_s, self.config.window_s)
                for key in [k for k, (seen, _a) in self.latest.items() if seen < horizon]:
                    del self.latest[key]
            batches.extend(self._batch(a, t) for a in results if a.score > 1)
        return True

    @staticmethod
    def _batch(anomaly, now: float) -> ScoreBatch:
        labels = {k: v for k, v in anomaly.labels.items() if k in INCIDENT_LABELS}
        explanation = [anomaly.summary] + ([f"template: {anomaly.template}"] if anomaly.template else []) + [
            f"example: {line}" for line in anomaly.examples]
        nan = np.array([np.nan])
        return ScoreBatch(anomaly.detector, "logs", labels, np.array([now]), nan, np.array([anomaly.score]),
                          nan, nan, nan, explanation)

    # -- backtest ---------------------------------------------------------------------------------
    def backtest(self, start: float, end: float, *, threshold: float, plot_dir: str | None = None,
                 progress=None) -> BacktestPart:
        """The journal file replayed: trained on its part before start + warmup (the metric side's
        training part), then scored step by step."""
        section = run_journal_backtest(self.journal_file, logs_config=self.config, start=start, end=end,
                                       warmup=self.warmup_s, threshold=threshold,
                                       gpu_by_pci=gpu_map_from_prometheus(self.prometheus))
        incidents = section.pop("incidents")
        return BacktestPart(incidents=incidents, section=section)

    # -- metrics ----------------------------------------------------------------------------------
    def families(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        score = GaugeMetricFamily("rigwatch_log_anomaly_score",
                                  "Log anomaly score per detector and stream (> 1 is anomalous)")
        rate = GaugeMetricFamily("rigwatch_log_template_rate",
                                 "Lines per second of the top training log templates over the last window",
                                 labels=["template_id"])
        novel = CounterMetricFamily("rigwatch_log_novel_templates_total",
                                    "Log templates first seen after training")
        with self._lock:
            for (_detector, _labels), (_t, anomaly) in sorted(self.latest.items()):
                labels = {"detector": anomaly.detector,
                          **{k: v for k, v in anomaly.labels.items() if v != "" and k != "detector"}}
                score.add_sample("rigwatch_log_anomaly_score", labels, float(anomaly.score))
            if self.detector is not None:
                for template_id, value in sorted(self.detector.template_rates().items()):
                    rate.add_metric([template_id], value)
                novel.add_metric([], float(self.detector.novel_templates_total_))
        return [score, rate, novel]
