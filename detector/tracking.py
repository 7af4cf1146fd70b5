"""Experiment tracking of fits (optional): the Tracker interface, the no-op default and the
background worker that keeps a slow or dead tracking server away from the fit.

    Tracker.log_fit(FitRecord)  called once per detector per fit cycle, after its version is saved;
                                returns at once, never raises
    Tracker.mirror_aliases(detector, champion, challenger)
                                called after each local registry decision (a proposal, a promotion
                                or rollback taking effect, start-up): the tracking registry's
                                aliases are set to these store versions; returns at once, never raises
    NullTracker                 tracking off (no `tracking:` section, no --mlflow-uri): does nothing
    BackgroundTracker(sink)     a bounded queue and one worker thread that calls `sink(record, attempt)`
                                with retries and backoff; a full queue or a record that fails every
                                try is skipped with a warning. Every failed try is counted in
                                rigwatch_detector_tracking_errors_total. Alias jobs go through the
                                same queue, so they follow the fits of their detector queued before.
    FitRecord.evaluate          optional work the worker does before logging (score the training
                                window, pick the series to plot): never in the fit path

This module imports no tracking library: the MLflow sink (detector.mlflow_tracking) is only imported
when tracking is configured, so a detector without it never loads mlflow.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger(__name__)


@dataclass
class FitRecord:
    """What one detector's fit cycle produced: enough to log a run without touching the detector."""
    detector: str
    version: int | None  # the store version saved (None: no store, e.g. a bench)
    params: dict[str, Any]  # flat: model kind and parameters, lookback, step, config hash
    metrics: dict[str, float]
    tags: dict[str, str]
    metadata: dict[str, Any]  # the version's metadata document, as saved
    series: list[dict[str, Any]] = field(default_factory=list)  # one row per series (the summary table)
    # the version's packed state (npz bytes), read when the worker logs it: the fit never waits on it
    state: Callable[[], bytes | None] | None = None
    # run by the worker before the sink, once: returns metrics to add and the series to plot (the
    # closure holds the training data, so the tracker drops it once run, or when too many points wait)
    evaluate: Callable[[], Evaluation] | None = None
    points: int = 0  # how many training points `evaluate` holds (the tracker's memory bound)
    plot: list[PlotSeries] = field(default_factory=list)  # filled by `evaluate`: the PNG's series


@dataclass
class PlotSeries:
    """One series drawn in a run's PNG: its training window as the fitted model scores it."""
    labels: dict[str, str]
    t: Any  # numpy arrays, all of one length
    y: Any
    score: Any
    expected: Any
    lower: Any
    upper: Any


@dataclass
class Evaluation:
    metrics: dict[str, float]
    plot: list[PlotSeries]


@dataclass(frozen=True)
class AliasJob:
    """The local registry's aliases of one detector, to mirror (None: the alias is unset)."""
    detector: str
    champion: int | None
    challenger: int | None


class Tracker(ABC):
    @abstractmethod
    def log_fit(self, record: FitRecord) -> None:
        """Hand a fit over for logging; returns at once and never raises."""

    def mirror_aliases(self, detector: str, champion: int | None, challenger: int | None) -> None:
        """Hand the local registry's aliases over for mirroring; returns at once, never raises."""
        return None  # no registry to mirror by default

    def families(self) -> Iterable[Metric]:
        return ()

    def close(self, timeout: float = 0.0) -> None:
        """Stop accepting records; wait up to `timeout` s for the queued ones."""
        return None  # nothing queued by default


class NullTracker(Tracker):
    def log_fit(self, record: FitRecord) -> None:
        pass


#: sink(record, attempt): logs the record; `attempt` is a dict kept across the retries of one record
#: (e.g. the run id already created, so a retry completes that run instead of starting a second one)
Sink = Callable[[FitRecord, dict], None]
#: mirror(job, attempt): sets the tracking registry's aliases to the job's versions
Mirror = Callable[[AliasJob, dict], None]


class BackgroundTracker(Tracker):
    def __init__(self, sink: Sink, *, mirror: Mirror | None = None, queue_size: int = 64, retries: int = 3,
                 backoff: float = 1.0, max_backoff: float = 30.0, max_pending_points: int = 5_000_000,
                 sleep: Callable[[float], Any] | None = None):
        """`mirror`: where alias jobs go (None: they are dropped). `max_pending_points`: the training
        points queued records may hold for their evaluation (~16 bytes each, plus features); a record
        over it is logged without the training anomaly rate and plot, with a warning."""
        self.sink = sink
        self.mirror = mirror
        self.max_pending_points = max_pending_points
        self._pending_points = 0
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._queue: queue.Queue[FitRecord | AliasJob | None] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait  # a close() cuts a backoff short
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.errors = 0
        self.logged = 0
        self.skipped = 0

    def _ensure_worker(self) -> None:
        # started at the first record, not in the constructor
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="rigwatch-tracking", daemon=True)
                self._thread.start()

    def log_fit(self, record: FitRecord) -> None:
        if self._stop.is_set():
            return
        with self._lock:
            if record.evaluate is not None and self._pending_points + record.points > self.max_pending_points:
                log.warning("tracking %s v%s: %d training points already wait for the worker; logged "
                            "without training anomaly rate and plot", record.detector, record.version,
                            self._pending_points)
                record.evaluate = None
            if record.evaluate is not None:
                self._pending_points += record.points
        if not self._put(record, f"{record.detector} v{record.version} not logged"):
            self._evaluated(record)

    def mirror_aliases(self, detector: str, champion: int | None, challenger: int | None) -> None:
        if self.mirror is None or self._stop.is_set():
            return
        self._put(AliasJob(detector, champion, challenger), f"aliases of {detector} not mirrored")

    def _put(self, item: FitRecord | AliasJob, lost: str) -> bool:
        self._ensure_worker()
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            self.skipped += 1
            log.warning("tracking: queue full (the tracking server is down or slow); %s", lost)
            return False

    def _evaluated(self, record: FitRecord) -> None:
        """Drop the record's hold on its training data."""
        with self._lock:
            if record.evaluate is not None:
                self._pending_points -= record.points
                record.evaluate = None

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            try:
                if record is None:
                    return
                if isinstance(record, AliasJob):
                    self._retry(record, self.mirror, f"aliases of {record.detector}")
                else:
                    self._evaluate(record)
                    self._retry(record, self.sink, f"{record.detector} v{record.version}")
            finally:
                self._queue.task_done()

    def _evaluate(self, record: FitRecord) -> None:
        """The record's own work (scoring its training window): once, before any try of the sink;
        its failure costs the record its figures, not its run."""
        evaluate = record.evaluate
        if evaluate is None:
            return
        try:
            ev = evaluate()
            record.metrics.update(ev.metrics)
            record.plot = ev.plot
        except Exception as e:
            log.warning("tracking %s v%s: training evaluation failed (%s: %s); logged without it",
                        record.detector, record.version, type(e).__name__, e)
        finally:
            self._evaluated(record)

    def _retry(self, item: FitRecord | AliasJob, sink: Callable[[Any, dict], None], what: str) -> None:
        attempt: dict = {}
        delay = self.backoff
        for i in range(self.retries + 1):
            try:
                sink(item, attempt)
            except Exception as e:  # whatever the tracking client raises: never the fit's problem
                self.errors += 1
                last = i == self.retries or self._stop.is_set()
                log.warning("tracking %s failed (%s: %s); %s", what,
                            type(e).__name__, str(e)[:300], "skipped" if last else f"retried in {delay:g}s")
                if last:
                    self.skipped += 1
                    return
                self._sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            if i:
                log.info("tracking %s logged late (try %d)", what, i + 1)
            self.logged += 1
            return

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued record is logged or skipped (tests, the bench); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def close(self, timeout: float = 0.0) -> None:
        if timeout > 0:
            self.flush(timeout)
        self._stop.set()
        if self._thread is not None:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass  # a daemon thread: it ends with the process
            self._thread.join(timeout=max(timeout, 0.1))

    def families(self) -> Iterable[Metric]:
        errors = CounterMetricFamily("rigwatch_detector_tracking_errors", "Failed attempts to log a fit "
                                     "(or mirror aliases) to the tracking server (each retry counts)")
        errors.add_metric([], self.errors)
        pending = GaugeMetricFamily("rigwatch_detector_tracking_queue", "Fits waiting to be logged to the "
                                    "tracking server")
        pending.add_metric([], self._queue.qsize())
        return (errors, pending)
