"""The log side inside `rigwatch-detector serve`: `attach(service)` (called by detector/cli.py) adds
two scheduled tasks — `log_fit` (templates + baselines over the lookback, saved to the model store)
and `log_score` (new Loki lines each step) — and the log metric families:

  rigwatch_log_anomaly_score{detector, <stream or pattern labels>}   latest score per detector/labels
  rigwatch_log_template_rate{template_id}                            lines/s of the top training templates
  rigwatch_log_novel_templates_total                                 templates first seen after training

Anomalies above 1 go into the service's incident tracker (GET /api/v1/anomalies) with the template
and example lines as the explanation. Enabled when detector.yml has a `loki:` section.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import numpy as np

from detector.logs.backtest import gpu_map_from_prometheus
from detector.logs.detector import INCIDENT_LABELS, LogDetector, LogDetectorConfig
from detector.logs.loki import LokiClient, LokiError
from detector.store import BlobPersistence

log = logging.getLogger(__name__)
STORE_NAME = "logs"
DETECTOR_NAMES = ("log_pattern", "log_template", "log_rate", "log_sequence")


# The miner's templates: one atomic blob in the model store, saved after every scoring step so a
# restart keeps templates learned since the last fit.
TEMPLATES_NAME = f"{STORE_NAME}/templates.json"
CURSOR_NAME = f"{STORE_NAME}/cursor.json"
CURSOR_VERSION = 1


def _line_key(entry) -> tuple[float, str, str]:
    """A line's identity for "already scored" (JSON-able, so it survives in the cursor)."""
    return entry.ts, json.dumps(entry.stream_key, separators=(",", ":")), entry.message


class LogService:
    """Fits and scores the log side on the service's scheduler. Where scoring stands (the last time
    scored and the detector's runtime state) is saved to the store after every pass, so a restart
    reads back the lines that reached Loki while the detector was down (at most `catch_up_s` of
    them) and keeps half-counted restart loops and repeats."""

    def __init__(self, service, loki: LokiClient, query: str, config: LogDetectorConfig,
                 lookback_s: float, step_s: float, fit_every_s: float = 6 * 3600.0,
                 catch_up_s: float = 6 * 3600.0):
        self.service = service
        self.loki = loki
        self.query = query
        self.config = config
        self.lookback_s = lookback_s
        self.step_s = step_s
        self.fit_every_s = fit_every_s
        self.catch_up_s = catch_up_s
        self.catch_up_chunk_s = 900.0  # a backlog is read from Loki this much at a time
        self.fitted_at: float | None = None
        self.templates = BlobPersistence(service.store)
        self.detector: LogDetector | None = None
        self.last_scored: float | None = None
        self.latest: dict[tuple, tuple[float, Any]] = {}  # (detector, labels) -> (t, LogAnomaly)
        # lines reach Loki after their timestamp (Promtail batches, journald, a slow shipper): each pass
        # re-reads this much before the last one and skips the lines it already scored
        self.ingest_slack_s = 30.0
        self._seen: set[tuple] = set()
        self._lock = threading.Lock()

    # -- persistence ------------------------------------------------------------------------------
    def load(self) -> bool:
        stored = self.service.store.load_latest(STORE_NAME)
        if stored is None:
            return False
        try:
            self.detector = LogDetector.from_state(stored.state, self.templates, state_name=TEMPLATES_NAME)
            self.fitted_at = float(stored.metadata.get("training_window", {}).get("end") or 0) or None
        except (KeyError, ValueError, AttributeError) as e:
            log.warning("stored log model v%s not usable (%s): will refit", stored.version, e)
            return False
        self._refresh_gpu_map(self.detector)
        self._load_cursor()
        return True

    def _load_cursor(self) -> None:
        """Resume from the saved cursor when it belongs to the loaded fit (template ids are the fit's);
        a cursor of another fit still says where scoring stopped, but its runtime state is dropped."""
        raw = self.service.store.read_blob(CURSOR_NAME)
        if raw is None:
            return
        try:
            cursor = json.loads(raw.decode("utf-8"))
            if cursor.get("version") != CURSOR_VERSION:
                raise ValueError(f"unsupported version {cursor.get('version')!r}")
            last_scored = float(cursor["last_scored"])
            seen = {(float(ts), str(stream), str(message)) for ts, stream, message in cursor.get("seen", [])}
            if cursor.get("fitted_at") == self.fitted_at:
                self.detector.set_runtime_state(cursor["runtime"])
        except (KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
            log.warning("log scoring cursor not usable (%s): scoring starts from now", e)
            return
        self.last_scored = last_scored
        self._seen = seen  # lines of the last ingestion slack, already scored before the restart
        log.info("log scoring resumes from %s", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last_scored)))

    def _save_cursor(self) -> None:
        cursor = {"version": CURSOR_VERSION, "fitted_at": self.fitted_at, "last_scored": self.last_scored,
                  "runtime": self.detector.get_runtime_state(), "seen": sorted(self._seen)}
        try:
            self.service.store.write_blob(CURSOR_NAME, json.dumps(cursor).encode("utf-8"))
        except OSError as e:  # a full disk must not stop scoring; the next pass tries again
            log.error("saving the log scoring cursor failed: %s", e)

    def _refresh_gpu_map(self, detector: LogDetector) -> None:
        """Xid lines name the GPU by PCI id: map it to the exporter's gpu index from gpu_info, so a log
        anomaly carries the same gpu label as the metrics. Indices can shift at boot: asked again at
        every fit; an unreachable Prometheus keeps the previous map."""
        url = getattr(getattr(self.service, "client", None), "base_url", None)
        mapping = gpu_map_from_prometheus(url) if url else {}
        if mapping:
            detector.gpu_by_pci = mapping
            detector.patterns_.gpu_by_pci = dict(mapping)

    # -- tasks ------------------------------------------------------------------------------------
    def _read(self, start: float, end: float):
        try:
            entries = self.loki.query_range(self.query, start, end)
        except LokiError as e:
            self.service.set_source_up("loki", False)
            log.warning("Loki read failed: %s", e)
            return None
        self.service.set_source_up("loki", True)
        return entries

    def fit(self, now: float) -> None:
        if self.detector is not None and self.fitted_at is not None and now - self.fitted_at < 0.9 * self.fit_every_s:
            return  # a stored model recent enough: a restart needs no refit
        if self.detector is not None and self.last_scored is not None and now - self.last_scored > self.step_s:
            self.score(now)  # lines since the last pass (a restart's backlog) are scored, not trained on
        entries = self._read(now - self.lookback_s, now)
        if entries is None:
            raise LokiError("log fit skipped: Loki unreachable")
        detector = LogDetector(self.config, persistence=self.templates, state_name=TEMPLATES_NAME).fit(entries)
        self._refresh_gpu_map(detector)
        metadata = {"training_window": {"start": now - self.lookback_s, "end": now}, "lines": len(entries),
                    "templates": len(detector.miner_.templates()), "params": self.config.__dict__}
        self.service.store.save(STORE_NAME, detector.get_state(), metadata)
        with self._lock:
            self.detector = detector
            self.fitted_at = now
            self.last_scored = now
            # the training lines the next pass re-reads (see ingest_slack_s) are no news
            self._seen = {_line_key(e) for e in entries if e.ts >= now - self.ingest_slack_s}
            self._save_cursor()

    def score(self, now: float) -> None:
        if self.detector is None:
            return  # nothing fitted yet: the fit task runs first
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
                self._score_range(last, end)
                last = end
        finally:
            self._save_cursor()

    def _score_range(self, last: float, end: float) -> None:
        entries = self._read(last - self.ingest_slack_s, end)
        if entries is None:
            raise LokiError("log scoring skipped: Loki unreachable")  # the window is retried next step
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
            self.service.record([self._batch(a, t) for a in results if a.score > 1], publish=False)

    @staticmethod
    def _batch(anomaly, now: float):
        from detector.engine import ScoreBatch

        labels = {k: v for k, v in anomaly.labels.items() if k in INCIDENT_LABELS}
        explanation = [anomaly.summary] + ([f"template: {anomaly.template}"] if anomaly.template else []) + [
            f"example: {line}" for line in anomaly.examples]
        nan = np.array([np.nan])
        return ScoreBatch(anomaly.detector, "logs", labels, np.array([now]), nan, np.array([anomaly.score]),
                          nan, nan, nan, explanation)

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


def attach(service) -> LogService | None:
    config = service.config
    if getattr(config, "loki", None) is None:
        return None  # the log side is opt-in: a `loki:` section in detector.yml turns it on
    logs_config = LogDetectorConfig.from_dict(getattr(config, "logs", None) or {})
    loki_section = dict(config.loki)
    loki = LokiClient.from_config({k: v for k, v in loki_section.items() if k != "query"},
                                  on_error=lambda _e: service.count_source_error("loki"))
    schedule = config.schedule
    logs = LogService(service, loki, LokiClient.query_from_config(loki_section), logs_config,
                      lookback_s=float(schedule.lookback), step_s=float(schedule.step),
                      fit_every_s=float(schedule.fit_every), catch_up_s=logs_config.catch_up_s)
    logs.load()
    service.set_source_up("loki", False)
    service.add_families(logs.families)
    service.register_task("log_fit", float(schedule.fit_every), logs.fit)
    service.register_task("log_score", float(schedule.step), logs.score)
    service.extra_detector_names = tuple(getattr(service, "extra_detector_names", ())) + DETECTOR_NAMES
    service.tracker.events.update(DETECTOR_NAMES)  # a log anomaly is an event: confirmed at its first pass
    service.log_side = logs
    return logs
