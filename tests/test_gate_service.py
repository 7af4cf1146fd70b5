"""The promotion gate through the real fit path (service, store, registry, labels, API; Prometheus
served by `responses`): a good refit is promoted and the champion alias moves; a refit trained on a
stretch where the sensor stood still alarms all over the held-out hour and is rejected, the champion
scoring on untouched, published as a rejected challenger, never revived by a restart; a refit that
raises an incident on a window marked false positive is rejected; POST /api/v1/retrain yields a
gate decision shown by GET /api/v1/models."""
from __future__ import annotations

import numpy as np
import pytest
import responses

from detector.api import create_app
from detector.config import load_config
from detector.persistence import FilePersistence
from detector.store import ModelStore
from detector.timefmt import iso
from tests import test_detector_drift_service as drift_tests
from tests.test_detector_api import GPU, metric_side

D = "gpu_temperature"
AUTH = {"Authorization": "Bearer s3cret"}
# tail_factor / relative_floor 0: the band is the rolling MAD alone, so a model that only saw a
# sensor standing still has no band at all
CFG = """
prometheus: {url: http://prom.test:9090, retries: 1}
schedule: {step: 60s, lookback: 8h, context: 30m, fit_every: 6h}
gate: {holdout: 1h, max_extra_incidents: 1, max_extra_alarm: 30m}
detectors:
  - {name: gpu_temperature, query: gpu_temperature_celsius, model: robust_z,
     params: {min_periods: 5, tail_factor: 0, relative_floor: 0}}
"""
T0 = 1_800_000_000.0  # first fit (no champion)
T1 = T0 + 6 * 3600  # the refit the gate judges; its held-out hour is (T1 - 1h, T1]


def noise(ts):
    return 40 + 4 * ((np.sin(ts * 12.9898) * 43758.5453) % 1.0 - 0.5)  # 40 +- 2, the same for the same t


def temperatures(stuck: tuple[float, float] | None = None, spike: tuple[float, float] | None = None):
    def values(query, ts):
        if query != "gpu_temperature_celsius":
            return []
        y = noise(ts)
        if stuck is not None:
            y = np.where((ts > stuck[0]) & (ts <= stuck[1]), 40.0, y)
        if spike is not None:
            y = np.where((ts > spike[0]) & (ts <= spike[1]), y + 30, y)
        return [{"metric": {"__name__": query, **GPU}, "values": [[t, str(v)] for t, v in zip(ts, y, strict=True)]}]
    return values


@pytest.fixture
def store(tmp_path):
    return ModelStore(FilePersistence(tmp_path / "store"))


def serve(store, clock, data, cfg=CFG):
    """A service over the stubbed Prometheus answering with `data` (the drift tests' helper)."""
    return drift_tests.serve(store, clock, data, cfg)


published = drift_tests.registry  # the service's published metrics


def client(svc):
    return create_app(svc, environ={"RIGWATCH_API_TOKEN": "s3cret"}).test_client()


def record(svc):
    return metric_side(svc).registry.record(D)


@responses.activate
def test_a_good_refit_is_promoted_through_the_gate_and_the_champion_alias_moves(store):
    clock = [T0]
    svc = serve(store, clock, temperatures())
    assert svc.fit()
    assert record(svc)["decisions"][-1]["reason"] == "no champion to compare"
    clock[0] = T1
    assert svc.fit()
    rec = record(svc)
    last = rec["decisions"][-1]
    assert (rec["champion"], rec["challenger"], last["outcome"]) == (2, None, "promoted")
    assert last["reason"].startswith("0 incidents vs champion 0 (+1 allowed)")
    assert last["figures"]["holdout_seconds"] == 3600
    det = metric_side(svc).detectors[D]
    assert det.version == 2 and det.last_fit == pytest.approx(T1, abs=60)
    # trained without the held-out hour: that is what was judged and what scores
    (series,) = store.load(D, 2).state["series"].values()
    assert series["fitted_at"] == pytest.approx(T1 - 3600, abs=60)
    assert store.load(D, 2).metadata["training_window"]["end"] == pytest.approx(T1 - 3600, abs=60)
    reg = published(svc)
    assert reg.get_sample_value("rigwatch_detector_gate_decisions_total", {"detector": D, "outcome": "promoted"}) == 1
    assert reg.get_sample_value("rigwatch_detector_gate_incidents", {"detector": D, "model": "challenger"}) == 0


@responses.activate
def test_a_worse_refit_is_rejected_the_champion_scores_on_and_a_restart_does_not_revive_it(store):
    clock = [T0]
    svc = serve(store, clock, temperatures())
    assert svc.fit()
    det = metric_side(svc).detectors[D]
    champion_fit, champion_model = det.last_fit, det.series[next(iter(det.series))].model
    # from just after the first fit until the held-out hour the sensor stood still at 40: a model
    # trained on that has no band, and the noise of the held-out hour alarms all of it
    clock[0] = T1
    svc = serve(store, clock, temperatures(stuck=(T0, T1 - 3600)))
    assert svc.fit()
    rec = record(svc)
    last = rec["decisions"][-1]
    assert (rec["champion"], rec["challenger"], last["outcome"], last["version"]) == (1, 2, "rejected", 2)
    assert rec["versions"]["2"]["state"] == "rejected"
    assert "alarm" in last["reason"] and "vs champion 0m00s (+30m00s allowed)" in last["reason"]
    assert last["figures"]["challenger_alarm_seconds"] > 1800 and last["figures"]["champion_alarm_seconds"] == 0
    det = metric_side(svc).detectors[D]
    assert det.version == 1 and det.last_fit == champion_fit
    reg = published(svc)
    assert reg.get_sample_value("rigwatch_detector_challenger_info", {"detector": D, "version": "2",
                                                                      "state": "rejected"}) == 1
    assert reg.get_sample_value("rigwatch_detector_gate_decisions_total", {"detector": D, "outcome": "rejected"}) == 1
    assert reg.get_sample_value("rigwatch_detector_gate_alarm_seconds", {"detector": D, "model": "challenger"}) > 1800
    assert reg.get_sample_value("rigwatch_detector_model_info", {"detector": D, "model": "robust_z", "version": "1"}) == 1
    # the champion scores on, with its own model
    clock[0] = T1 + 120
    assert svc.score()
    assert det.version == 1 and type(det.series[next(iter(det.series))].model) is type(champion_model)
    assert det.last_fit == champion_fit
    # a restart loads the champion; the rejected challenger stays what it is
    restarted = serve(store, clock, temperatures())
    assert metric_side(restarted).detectors[D].version == 1
    assert published(restarted).get_sample_value("rigwatch_detector_challenger_info",
                                                  {"detector": D, "version": "2", "state": "rejected"}) == 1
    # the next good refit is promoted and supersedes the rejected challenger
    clock[0] = T1 + 6 * 3600
    assert restarted.fit()
    rec = record(restarted)
    assert (rec["champion"], rec["challenger"], rec["versions"]["2"]["state"]) == (3, None, "rejected")


@responses.activate
def test_an_incident_on_a_window_marked_false_positive_rejects_the_refit(store):
    clock = [T0]
    spike = (T1 - 1800, T1 - 1200)  # 10 minutes at +30 in the held-out hour
    svc = serve(store, clock, temperatures(spike=spike))
    assert svc.fit()
    r = client(svc).post("/api/v1/feedback", headers=AUTH, json={
        "detector": D, "label": "false_positive", "start": iso(spike[0] - 60), "end": iso(spike[1] + 60), "series": {"gpu": "0"}})
    assert r.status_code in (200, 201), r.get_json()
    clock[0] = T1
    assert svc.fit()
    last = record(svc)["decisions"][-1]
    assert last["outcome"] == "rejected" and "on windows marked false positive" in last["reason"]
    assert last["figures"]["false_positive_hits"] == 1


@responses.activate
def test_retrain_through_the_api_goes_through_the_gate_and_models_shows_the_decision(store):
    clock = [T0]
    svc = serve(store, clock, temperatures())
    assert svc.fit()
    clock[0] = T1
    c = client(svc)
    assert c.post("/api/v1/retrain", json={"detectors": [D]}).status_code == 401
    r = c.post("/api/v1/retrain", headers=AUTH, json={"detectors": [D]})
    assert r.status_code in (200, 202), r.get_json()
    (m,) = [m for m in c.get("/api/v1/models").get_json()["models"] if m["detector"] == D]
    assert (m["champion"], m["version"]) == (2, 2)
    d = m["decision"]
    assert (d["version"], d["outcome"]) == (2, "promoted") and d["reason"].startswith("0 incidents vs champion 0")
    assert d["figures"]["holdout_seconds"] == 3600 and "gate_seconds" in d["figures"]


@responses.activate
def test_gate_disabled_promotes_as_before_on_the_whole_lookback(store):
    clock = [T0]
    cfg = CFG.replace("gate: {holdout: 1h,", "gate: {enabled: false, holdout: 1h,")
    svc = serve(store, clock, temperatures(), cfg)
    assert svc.fit()
    clock[0] = T1
    svc = serve(store, clock, temperatures(stuck=(T0, T1 - 3600)), cfg)
    assert svc.fit()
    rec = record(svc)
    assert (rec["champion"], rec["decisions"][-1]["reason"]) == (2, "no gate configured")
    (series,) = store.load(D, 2).state["series"].values()
    assert series["fitted_at"] == pytest.approx(T1, abs=60)
    reg = published(svc)  # counted from 0, no evaluation figures
    assert reg.get_sample_value("rigwatch_detector_gate_decisions_total", {"detector": D, "outcome": "promoted"}) == 0
    assert reg.get_sample_value("rigwatch_detector_gate_incidents", {"detector": D, "model": "champion"}) is None


@responses.activate
def test_the_gate_section_reloads(store):
    clock = [T0]
    svc = serve(store, clock, temperatures())
    assert svc.fit()
    metric_side(svc).reconfigure(load_config(text=CFG.replace("gate: {holdout: 1h,", "gate: {enabled: false, holdout: 1h,")))
    clock[0] = T1
    assert svc.fit()
    assert record(svc)["decisions"][-1]["reason"] == "no gate configured"
    metric_side(svc).reconfigure(load_config(text=CFG.replace("max_extra_alarm: 30m", "max_extra_alarm: 0")))
    clock[0] = T1 + 6 * 3600
    assert svc.fit()
    assert "(+0m00s allowed)" in record(svc)["decisions"][-1]["reason"]
