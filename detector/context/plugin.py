"""`gpu_busy_without_requests` as a detector plugin (detector/plugin.py): every scoring step, per GPU,
utilisation, the workloads holding its memory and the request activity of the inference servers
among them, from Prometheus (and request log lines from Loki for servers without request metrics).
Nothing is fitted: the decision is the rule in busy.py, so `fit` has nothing to store and the
detector is ready at once. Published as `rigwatch_anomaly_score{detector="gpu_busy_without_requests"}`
with the GPU's labels; the incident text names the servers, where their silence was read and the
models they hold. It publishes its own families, not `rigwatch_anomaly_score` (one alert,
GpuBusyWithoutRequests, whose text says what happened, rather than a generic MetricAnomaly):

  rigwatch_gpu_busy_without_requests{<GPU labels>}           1 while the busy run has lasted `hold`
  rigwatch_gpu_busy_without_requests_seconds{<GPU labels>}   how long the current busy run has lasted

It also reads the hosts' boot times for box restarts (restarts.py): one `box_restart` context event per
reboot, handed out through `context_events`, never an incident of its own.
It also knows what the GPUs hold (workload.py): the model loads and unloads it reads while scoring
or replaying are `model_change` context events (`context_events`), and `annotate` names the workload
on an incident's GPU and how many models changed on it during the incident.

Sharded (`--shard I/N`, detector/sharding.py) it runs on every shard: the busy rule judges only the
GPUs the shard owns (by uuid, as the metric side: a GPU's busy incident and its other incidents come
from one replica, and from one only), while restarts, model changes and annotations serve the
shard's own incidents, which need them wherever they are scored.
"""
from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict

import numpy as np
from prometheus_client.core import GaugeMetricFamily

from detector.config import Config
from detector.context.activity import Activity, ServerActivity, from_log_counts, from_metrics, merge
from detector.context.busy import GpuContext, scores, unexplained_busy
from detector.context.config import InferenceConfig
from detector.context.events import ContextEvent
from detector.context.restarts import BOOT_METRICS, BootSamples, Reboots, samples_from
from detector.context.workload import (
    MOVE_STEPS,
    ModelChange,
    change_events,
    describe,
    gpu_workloads,
    model_changes,
)
from detector.fetch import align_to_grid
from detector.incidents import IncidentPolicy, IncidentTracker
from detector.logs.loki import LokiClient, LokiError
from detector.plugin import BacktestPart, DetectorPlugin, ScorePass
from detector.promclient import PromClient, PromError, Series
from detector.scores import ScoreBatch
from detector.timefmt import iso

log = logging.getLogger(__name__)

NAME = "gpu_busy_without_requests"
LABEL_NAMES = ["gpu", "uuid", "name", "job", "instance"]
MODEL = "context"
UTIL_QUERY = "gpu_utilization_ratio"
WORKLOAD_QUERY = "gpu_workload_memory_used_bytes"
MODELS_QUERY = "inference_model_vram_bytes"
UP_QUERY = "inference_server_up"
# vLLM serves one model, named on its own metrics (model_name), not in the exporter's inference_model_*
VLLM_MODELS_QUERY = "vllm:num_requests_running"
# model changes kept for context_events: as long as GET /api/v1/anomalies asks for (a week), and never
# more than this many (a box swapping models every minute for a week is ~10k)
CHANGES_KEPT = 7 * 86400.0
MAX_CHANGES = 50_000
MAX_ANNOTATIONS = 4096  # incidents whose context is remembered (the live API asks on every GET)
# A workload that is no inference server explains a busy GPU only if it holds real memory: a desktop
# session (Xorg, a compositor: ~100-300 MiB) on a card that also serves models explains no compute.
EXPLAINS_MIN_BYTES = 512 * 1024**2
# an unexplained busy run is one incident even if a request or two blips through it
POLICY = IncidentPolicy(min_duration=60.0, merge_gap=600.0)
BACKTEST_CHUNK = 86400.0
# Reboots kept from live scoring: the last week, at most 100 (a box in a reboot loop must not grow it).
RESTARTS_KEEP_S = 7 * 86400.0
RESTARTS_KEEP_N = 100
# The first scoring pass looks this far back for a reboot: one just before the detector started
# (the detector on the same box restarts with it) is still an event.
RESTARTS_FIRST_LOOKBACK_S = 86400.0


def _gpu_key(labels: dict[str, str]) -> tuple[str, str]:
    return labels.get("instance", ""), labels.get("uuid") or labels.get("gpu", "")


class ContextPlugin(DetectorPlugin):
    fit_task = "context_fit"
    score_task = "context_score"
    publishes_scores = False

    def __init__(self, config: Config, client: PromClient, *, loki: LokiClient | None = None):
        self.settings: InferenceConfig = config.inference or InferenceConfig()
        self.shard = config.shard  # which GPUs' busy runs are this replica's to judge
        self.step = config.schedule.step
        self.latency_offset = config.prometheus.latency_offset  # the store's newest samples still hidden
        self.context = config.schedule.context
        self.warmup = config.schedule.warmup
        self.client = client
        self.loki = loki
        self.sources = ("prometheus", "loki") if loki is not None else ("prometheus",)
        self.last_t_: float | None = None
        self.latest_: dict[tuple, tuple[dict[str, str], float, float]] = {}  # gpu -> labels, run s, score
        self.reboots_ = Reboots()  # box restarts (restarts.py) seen in score() or backtest()
        self.boot_to_: float | None = None  # the boot times were read up to here
        # ModelChange.key() -> change, seen so far. Replaced whole, never changed in place: the API's
        # threads read it while the scheduler's scoring pass writes the next one
        self.model_changes_: dict[tuple, ModelChange] = {}
        self.annotations_: OrderedDict[tuple, dict] = OrderedDict()  # incident (id, times) -> its context
        self._annotations_lock = threading.Lock()  # the API answers on several threads
        self.annotate_failing_ = False  # Prometheus refused the last annotation (logged once per failure run)

    # -- protocol: nothing to fit or store ----------------------------------------------------------
    def detector_names(self) -> list[str]:
        return [NAME]

    def load(self) -> int:
        return 0

    def fit(self, now: float, only: set[str] | None = None) -> bool:
        return True

    def incident_policy(self) -> dict[str, IncidentPolicy]:
        return {NAME: POLICY}

    def reconfigure(self, config) -> list[str]:
        self.settings = config.inference or InferenceConfig()
        return []

    # models(): none — a rule over live context has no fitted model, version or registry to list

    # -- scoring -------------------------------------------------------------------------------------
    def score(self, now: float) -> ScorePass:
        end = math.floor((now - self.latency_offset) / self.step) * self.step
        first = end - self.context if self.last_t_ is None else max(self.last_t_ + self.step, end - self.context)
        if first > end:
            return ScorePass()
        self._score_restarts(end)
        try:
            batches = self.evaluate(first - self.settings.hold, end)
        except PromError as e:
            log.warning("%s: Prometheus: %s", NAME, e)
            return ScorePass(ok=False)
        self._scan_models(first, end, forget_before=end - CHANGES_KEPT - self.settings.model_change_settle)
        self.last_t_ = end
        self.latest_ = {_gpu_key(b.labels): (dict(b.labels), float(b.score[-1]) * self.settings.hold,
                                             float(b.score[-1])) for b in batches if len(b.t)}
        return ScorePass([_since(b, first) for b in batches])

    def families(self):
        flag = GaugeMetricFamily("rigwatch_gpu_busy_without_requests",
                                 "1 while the GPU has been busy for the detector's hold with every inference "
                                 "server on it reporting no request and no other workload on it.",
                                 labels=LABEL_NAMES)
        run = GaugeMetricFamily("rigwatch_gpu_busy_without_requests_seconds",
                                "How long the GPU's current busy run with no active request has lasted.",
                                labels=LABEL_NAMES)
        for labels, seconds, score in self.latest_.values():
            values = [labels.get(k, "") for k in LABEL_NAMES]
            flag.add_metric(values, 1.0 if score > 1 else 0.0)
            run.add_metric(values, seconds)
        yield flag
        yield run

    def evaluate(self, start: float, end: float, *, use_loki: bool = True) -> list[ScoreBatch]:
        """Scores of every GPU over the step grid [start, end] (each run counted from `start`)."""
        step, s = self.step, self.settings
        start = math.floor(start / step) * step
        grid = np.arange(start, end + step / 2, step)
        util = [u for u in self.client.query_range(UTIL_QUERY, start, end, step) if self.shard.owns(u.labels)]
        if not util:
            return []
        work = self.client.query_range(WORKLOAD_QUERY, start, end, step)
        activity = self._activity(grid, start, end, use_loki)
        models = self._models(end)
        out = []
        for u in util:
            ctx = self._gpu_context(grid, u, work)
            sc = scores(ctx, activity, busy_utilization=s.busy_utilization, hold=s.hold, step=step)
            expl = self._explain(ctx, activity, models, sc)
            nan = np.full(len(grid), np.nan)
            out.append(ScoreBatch(NAME, MODEL, dict(u.labels), grid, ctx.util, sc, nan, nan, nan, [expl]))
        return out

    def _activity(self, grid: np.ndarray, start: float, end: float, use_loki: bool) -> Activity:
        s = self.settings
        metric = from_metrics(grid, self.client.query_range(s.requests_query, start, end, self.step))
        logs: dict[str, ServerActivity] = {}
        if use_loki and self.loki is not None:
            for spec in s.servers:
                m = metric.get(spec.name)
                if spec.requests_log is None or (m is not None and m.known.all()):
                    continue
                try:
                    counts = self.loki.metric_query(f"count_over_time({spec.requests_log}[{self.step:g}s])",
                                                    start, end, self.step)
                    presence = self.loki.metric_query(
                        f"count_over_time({spec.stream_selector()}[{s.log_presence:g}s])", start, end, self.step)
                except LokiError as e:  # unknown, never zero: nothing is concluded for this server
                    log.warning("%s: Loki, request lines of %s: %s", NAME, spec.name, e)
                    continue
                logs[spec.name] = from_log_counts(grid, counts, presence)
        return merge(grid, metric, logs)

    def _models(self, at: float) -> dict[str, list[str]]:
        try:
            series = self.client.query(MODELS_QUERY, at)
        except PromError:
            return {}
        out: dict[str, list[str]] = {}
        for ser in series:
            if ser.labels.get("server") and ser.labels.get("model"):
                out.setdefault(ser.labels["server"], []).append(ser.labels["model"])
        return {k: sorted(v) for k, v in out.items()}

    def _gpu_context(self, grid: np.ndarray, util, work) -> GpuContext:
        key = _gpu_key(util.labels)
        n = len(grid)
        servers: list[set[str]] = [set() for _ in range(n)]
        others: list[set[str]] = [set() for _ in range(n)]
        for w in work:
            if _gpu_key(w.labels) != key:
                continue
            name = w.labels.get("workload", "")
            spec = self.settings.server_for(name)
            v = align_to_grid(grid, np.asarray(w.t, float), np.asarray(w.y, float))
            for i in np.nonzero(np.isfinite(v))[0]:
                if spec is not None:
                    servers[i].add(spec.name)
                elif v[i] >= EXPLAINS_MIN_BYTES:
                    others[i].add(name)
        return GpuContext(align_to_grid(grid, np.asarray(util.t, float), np.asarray(util.y, float)),
                          [frozenset(x) for x in servers], [frozenset(x) for x in others])

    def _explain(self, ctx: GpuContext, activity: Activity, models: dict[str, list[str]], sc: np.ndarray) -> str:
        """The text of the longest unexplained run in the batch (where its score peaks, the point an
        incident's summary is taken at), else of the newest step: which servers, read where."""
        i = int(np.argmax(sc)) if len(sc) and sc.max() > 0 else len(sc) - 1
        minutes = sc[i] * self.settings.hold / 60 if len(sc) else 0.0
        parts = []
        for server in sorted(ctx.servers[i]) if len(sc) else []:
            a = activity.get(server)
            how = "no request lines in its log" if a.read_in_logs(i) else "0 requests running"
            held = models.get(server)
            parts.append(f"{server}: {how}" + (f", holding {', '.join(held[:3])}" if held else ""))
        util = ctx.util[i] if len(sc) and np.isfinite(ctx.util[i]) else float("nan")
        return (f"GPU busy {util:.0%} for {minutes:.0f} min with no active requests "
                f"({'; '.join(parts) or 'no inference server on it'}): a hung kernel or a job nobody asked for")

    # -- backtest ------------------------------------------------------------------------------------
    def backtest(self, start: float, end: float, *, threshold: float, plot_dir: str | None = None,
                 progress=None) -> BacktestPart:
        tracker = IncidentTracker(threshold=threshold, policy=self.incident_policy(), step=self.step, keep=None)
        t = min(start + self.warmup, end)  # scored from where the report says scoring starts
        gpus: set[str] = set()
        while t < end:
            chunk_end = min(end, t + BACKTEST_CHUNK)
            for b in self.evaluate(t - self.settings.hold, chunk_end, use_loki=False):
                gpus.add(repr(_gpu_key(b.labels)))
                tracker.update(_since(b, t))
            self._scan_models(t, chunk_end)
            if progress is not None:
                progress.update((chunk_end - t) / 3600)
            t = chunk_end + self.step
        tracker.flush()
        self._backtest_restarts(start, end)
        return BacktestPart(detectors=[{"detector": NAME, "kind": MODEL, "series": len(gpus)}],
                            incidents=[i.to_dict(iso) for i in tracker.closed])

    # -- box restarts (restarts.py) ------------------------------------------------------------------
    def context_events(self, start: float, end: float) -> list[ContextEvent]:
        """The box's restarts and its GPUs' model loads/unloads seen so far, overlapping [start, end]."""
        return self._restart_events(start, end) + self._model_events(start, end)

    def _restart_events(self, start: float, end: float) -> list[ContextEvent]:
        """One `box_restart` event per boot of a host seen in score()/backtest(), overlapping [start, end]."""
        return self.reboots_.events(self.settings.restart_settle, start, end)

    def _score_restarts(self, end: float) -> None:
        """Read the boot times since the last pass; a Prometheus error is retried at the next pass
        (the range is kept) and never fails the busy rule's pass."""
        lo = self.boot_to_ if self.boot_to_ is not None else end - max(self.context, RESTARTS_FIRST_LOOKBACK_S)
        try:
            self.reboots_.add(self._boot_samples(lo, end))
        except PromError as e:
            log.warning("box restarts: Prometheus: %s", e)
            return
        self.boot_to_ = end
        self.reboots_.prune(end - RESTARTS_KEEP_S, RESTARTS_KEEP_N)

    def _backtest_restarts(self, start: float, end: float) -> None:
        """The reboots over the whole replayed range (warm-up included), in chunks like the replay;
        they replace what live scoring had seen: the report's events are the range's."""
        self.reboots_, self.boot_to_ = Reboots(), None
        t = start
        while t < end:
            chunk_end = min(end, t + BACKTEST_CHUNK)
            self.reboots_.add(self._boot_samples(t, chunk_end))
            t = chunk_end + self.step

    def _boot_samples(self, start: float, end: float) -> list[BootSamples]:
        start = math.floor(start / self.step) * self.step
        out = []
        for metric in BOOT_METRICS:
            values = self.client.query_range(metric, start, end, self.step)
            if values:  # node-exporter's is often not there
                stamps = self.client.query_range(f"timestamp({metric})", start, end, self.step)
                out += samples_from(metric, values, stamps)
        return out

    def backtest_hours(self, start: float, end: float) -> float:
        return max(0.0, end - min(start + self.warmup, end)) / 3600

    # -- what the GPUs hold: model changes as events, the workload of an incident's GPU ---------------
    def _fetch_changes(self, first: float, end: float) -> list[ModelChange]:
        """Model changes at the steps [first, end]: the step before `first` gives the state before, and
        MOVE_STEPS more the card whose memory moved (live, the steps after a change are not there yet)."""
        start = math.floor(first / self.step) * self.step - (1 + MOVE_STEPS) * self.step
        grid = np.arange(start, end + self.step / 2, self.step)
        models = self.client.query_range(MODELS_QUERY, start, end, self.step)
        if not models:
            return []
        up = self.client.query_range(UP_QUERY, start, end, self.step)
        work = self.client.query_range(WORKLOAD_QUERY, start, end, self.step)
        return [c for c in model_changes(grid, models, up, work, self.settings.server_for) if c.t >= first - 1e-9]

    def _scan_models(self, first: float, end: float, *, forget_before: float | None = None) -> None:
        """Remember the model changes of [first, end] (and forget those before `forget_before`, live);
        a failure loses only those (logged), never the pass."""
        try:
            changes = self._fetch_changes(first, end)
        except PromError as e:
            log.warning("%s: model changes over [%s, %s] not read: %s", NAME, iso(first), iso(end), e)
            changes = []
        old = self.model_changes_
        kept = [c for c in old.values() if forget_before is None or c.t >= forget_before]
        if not changes and len(kept) == len(old):
            return
        merged = {c.key(): c for c in kept}
        merged.update((c.key(), c) for c in changes)
        newest = sorted(merged.values(), key=lambda c: c.t)[-MAX_CHANGES:]
        self.model_changes_ = {c.key(): c for c in newest}

    def _model_events(self, start: float, end: float) -> list[ContextEvent]:
        events = change_events(self.model_changes_.values(), step=self.step, settle=self.settings.model_change_settle,
                               explains=self.settings.model_change_explains)
        return [e for e in events if e.end >= start and e.start <= end]

    def annotate(self, incidents: list[dict], to_time=None) -> None:
        """Each GPU incident (its series labels carry a uuid, whichever detector) gets `workload` (what
        held memory on the GPU at its peak: workload, server kind, memory, models, running requests)
        and `model_changes` (loads/unloads on the GPU from a step before its start to its end), and a
        clause on its summary. Remembered per incident, so the live API asks Prometheus once per
        incident and step; Prometheus failing leaves the rest unannotated (logged once)."""
        conv = to_time or (lambda x: x)
        for inc in incidents:
            labels = inc.get("series_labels") or {}
            uuid = labels.get("uuid")
            if not uuid or "workload" in inc:
                continue
            try:
                start, end = float(conv(inc["start"])), float(conv(inc["end"]))
                at = float(conv(inc["peak_time"])) if inc.get("peak_time") is not None else start
            except (KeyError, TypeError, ValueError):  # not an incident dict this can read: left as it is
                continue
            key = (inc.get("id"), uuid, start, end, at)
            with self._annotations_lock:
                got = self.annotations_.get(key)
            if got is None:
                try:
                    got = self._annotation(uuid, labels.get("instance"), start, end, at)
                except PromError as e:
                    if not self.annotate_failing_:
                        log.warning("%s: incidents left without their GPU's workload: %s", NAME, e)
                    self.annotate_failing_ = True
                    return  # one failure per call: the rest would wait on the same Prometheus
                self.annotate_failing_ = False
            with self._annotations_lock:
                self.annotations_[key] = got
                self.annotations_.move_to_end(key)
                while len(self.annotations_) > MAX_ANNOTATIONS:
                    self.annotations_.popitem(last=False)
            inc["workload"] = [dict(w) for w in got["workload"]]
            inc["model_changes"] = got["model_changes"]
            inc["summary"] = f"{inc.get('summary') or ''}; {got['text']}"

    def _annotation(self, uuid: str, instance: str | None, start: float, end: float, at: float) -> dict:
        work = self.client.query(WORKLOAD_QUERY, at)
        models = self.client.query(MODELS_QUERY, at)
        models += [Series({"server": "vllm", "model": s.labels["model_name"]}, s.t, s.y)
                   for s in self.client.query(VLLM_MODELS_QUERY, at) if s.labels.get("model_name")]
        requests = self.client.query(self.settings.requests_query, at)
        held = gpu_workloads(uuid, work, models, requests, self.settings.server_for,
                             min_bytes=EXPLAINS_MIN_BYTES, instance=instance)
        changes = {(c.t, c.server, c.model, c.action) for c in self._fetch_changes(start - self.step, end)
                   if c.uuid == uuid}
        return {"workload": held, "model_changes": len(changes), "text": describe(held, len(changes))}


def _since(b: ScoreBatch, first: float) -> ScoreBatch:
    keep = b.t >= first - 1e-9
    return ScoreBatch(b.detector, b.model, b.labels, b.t[keep], b.y[keep], b.score[keep], b.expected[keep],
                      b.lower[keep], b.upper[keep], b.explanation)


__all__ = ["NAME", "ContextPlugin", "unexplained_busy"]
