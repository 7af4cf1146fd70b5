"""The detector plugin protocol: a third, tiny family handed to the real DetectorService is fitted,
scored, published, stored, loaded after a restart and backtested — with no change to the service,
the API or the backtest (which know only the protocol)."""
from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from detector.api import create_app
from detector.backtest import run_backtest
from detector.config import parse_config
from detector.context.events import ContextEvent
from detector.incidents import IncidentTracker
from detector.metrics import DetectorCollector
from detector.persistence import MemoryPersistence
from detector.plugin import BacktestPart, DetectorPlugin, ScorePass
from detector.scores import ScoreBatch
from detector.service import DetectorService
from detector.store import ModelStore
from detector.timefmt import iso

T0 = 1_800_000_000.0
LABELS = {"disk": "nvme0", "instance": "aibox"}


class DiskFullness(DetectorPlugin):
    """A level detector over an injected reading: fit learns the mean, score says how far a new
    reading is from it in units of `tolerance`."""

    fit_task = "disk_fit"
    score_task = "disk_score"
    sources = ("disk",)
    report_section = "disk"

    def __init__(self, readings: dict[float, float], store: ModelStore | None = None, tolerance: float = 10.0):
        self.readings = readings
        self.store = store
        self.tolerance = tolerance
        self.mean_: float | None = None
        self.version_: int | None = None
        self.last_t_ = -np.inf

    def detector_names(self):
        return ["disk_fullness"]

    def needs_fit(self, now):
        return self.mean_ is None

    def models_missing(self):
        return [] if self.mean_ is not None else ["disk_fullness"]

    def load(self):
        mv = self.store.load_latest("disk_fullness") if self.store else None
        if mv is None:
            return 0
        self.mean_, self.last_t_, self.version_ = float(mv.state["mean"][0]), float(mv.state["last_t"]), mv.version
        return 1

    def _fit_until(self, now):
        ts = np.array(sorted(t for t in self.readings if t <= now))
        self.mean_ = float(np.mean([self.readings[t] for t in ts]))
        self.last_t_ = float(ts[-1])

    def fit(self, now, only=None):
        self._fit_until(now)
        if self.store is not None:
            self.version_ = self.store.save("disk_fullness", {"mean": np.array([self.mean_]), "last_t": self.last_t_},
                                            {"training_window": {"end": now}}).version
        return True

    def _score_until(self, now):
        ts = np.array(sorted(t for t in self.readings if self.last_t_ < t <= now))
        if not len(ts):
            return []
        y = np.array([self.readings[t] for t in ts])
        self.last_t_ = float(ts[-1])
        expected = np.full(len(ts), self.mean_)
        return [ScoreBatch("disk_fullness", "level", dict(LABELS), ts, y, np.abs(y - expected) / self.tolerance,
                           expected, expected - self.tolerance, expected + self.tolerance)]

    def score(self, now):
        return ScorePass(self._score_until(now))

    def families(self):
        yield GaugeMetricFamily("disk_fullness_fitted_mean", "Mean the tiny plugin learnt", value=self.mean_ or 0)

    def model_info(self):
        return [("disk_fullness", "level", str(self.version_ or 0))]

    def backtest(self, start, end, *, threshold, plot_dir=None, progress=None):
        tracker = IncidentTracker(threshold=threshold, keep=None)
        self._fit_until(start)
        for b in self._score_until(end):
            tracker.update(b)
        tracker.flush()
        return BacktestPart(detectors=[{"detector": "disk_fullness", "kind": "level"}],
                            incidents=[i.to_dict(iso) for i in tracker.closed], section={"mean": self.mean_})


def readings():
    r = {T0 - 3600 + 60 * k: 50.0 + (k % 3) for k in range(60)}  # an hour around 51 % full
    r.update({T0 + 60 * k: 95.0 for k in range(1, 6)})  # then a jump to 95 %
    return r


def test_a_third_plugin_is_fitted_scored_published_stored_and_loaded():
    config = parse_config({"detectors": []})
    store = ModelStore(MemoryPersistence())
    now = [T0]
    service = DetectorService(config, [DiskFullness(readings(), store)], clock=lambda: now[0])
    assert service.readiness() == (False, {"models_missing": ["disk_fullness"]})
    assert service.fit() and store.versions("disk_fullness") == [1]
    now[0] = T0 + 300
    assert service.score()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DetectorCollector(lambda: service.snapshot, service.extra_families))
    labels = {**LABELS, "detector": "disk_fullness", "model": "level"}
    assert registry.get_sample_value("rigwatch_anomaly_score", labels) > 4
    assert registry.get_sample_value("rigwatch_anomaly_expected", labels) == 51.0
    assert registry.get_sample_value("disk_fullness_fitted_mean") == 51.0
    assert registry.get_sample_value("rigwatch_detector_model_info",
                                     {"detector": "disk_fullness", "model": "level", "version": "1"}) == 1
    assert registry.get_sample_value("rigwatch_detector_last_success_timestamp_seconds", {"task": "disk_score"})
    assert registry.get_sample_value("rigwatch_detector_source_up", {"source": "disk"}) == 0  # declared
    client = create_app(service, environ={}).test_client()
    body = client.get("/api/v1/anomalies?detector=disk_fullness").get_json()
    assert body["count"] == 1 and body["anomalies"][0]["labels"] == {"disk": "nvme0"}, body
    assert service.readiness()[0]

    # a restart: a fresh plugin on the same store loads the fitted level instead of refitting
    restarted = DiskFullness({}, store)
    fresh = DetectorService(config, [restarted], clock=lambda: now[0])
    assert fresh.load_models() == 1 and restarted.mean_ == 51.0 and not restarted.needs_fit(now[0])


def test_a_third_plugin_is_backtested_into_the_one_report():
    config = parse_config({"detectors": []})
    report = run_backtest(config, [DiskFullness(readings())], T0, T0 + 600, show_progress=False)
    (incident,) = report["incidents"]
    assert incident["detector"] == "disk_fullness" and incident["labels"] == {"disk": "nvme0"}
    assert report["summary"]["by_detector"] == {"disk_fullness": 1}
    assert report["detectors"] == [{"detector": "disk_fullness", "kind": "level"}]
    assert report["disk"] == {"mean": 51.0}


class DiskSwap(DiskFullness):
    """The same plugin, knowing the disk was swapped during the jump: an event that explains it,
    and an annotation the API and the report carry."""

    def context_events(self, start, end):
        ev = ContextEvent("disk_swap", T0, T0 + 600, "nvme0 swapped for a bigger one", scope={"disk": "nvme0"})
        return [ev] if ev.end >= start and ev.start <= end else []

    def annotate(self, incidents, to_time=None):
        for d in incidents:
            d["disk_model"] = "WD SN850X"


def test_a_plugins_event_folds_the_incident_it_explains_live_and_in_the_report():
    config = parse_config({"detectors": []})
    now = [T0]
    service = DetectorService(config, [DiskSwap(readings())], clock=lambda: now[0])
    service.fit()
    now[0] = T0 + 300
    service.score()
    body = create_app(service, environ={}).test_client().get("/api/v1/anomalies").get_json()
    assert body["count"] == 0 and body["anomalies"] == [], body
    (event,) = body["events"]
    assert event["kind"] == "disk_swap" and event["start"] == iso(T0), event
    (explained,) = event["explains"]
    assert explained["detector"] == "disk_fullness" and "disk_fullness" in explained["summary"]

    report = run_backtest(config, [DiskSwap(readings())], T0, T0 + 600, show_progress=False)
    assert report["incidents"] == [] and report["summary"]["explained_by_events"] == 1
    assert report["events"][0]["explains"][0]["detector"] == "disk_fullness"


def test_an_incident_outside_the_event_stays_and_carries_the_annotation():
    r = readings()
    r.update({T0 + 900 + 60 * k: 95.0 for k in range(1, 6)})  # a second jump after the swap's window
    config = parse_config({"detectors": []})
    report = run_backtest(config, [DiskSwap(r)], T0, T0 + 1500, show_progress=False)
    (incident,) = report["incidents"]
    assert incident["start"] == iso(T0 + 960) and incident["disk_model"] == "WD SN850X", incident
    assert len(report["events"][0]["explains"]) == 1
