"""Drift and anomaly rate through the real service, store and API (Prometheus served by `responses`):
rigwatch_feature_drift / rigwatch_drifted_series / rigwatch_anomaly_rate with their labels, the
reference kept with the model version across a restart, an old version without one, GET /api/v1/drift."""
from __future__ import annotations

import numpy as np
import pytest
import responses
from prometheus_client import CollectorRegistry

from detector.anomaly_rate import AnomalyRates
from detector.api import create_app
from detector.config import load_config
from detector.drift_book import STATE_KEY
from detector.metrics import DetectorCollector
from detector.persistence import MemoryPersistence
from detector.registry import Registry, record_name
from detector.scores import ScoreBatch
from detector.store import ModelStore
from tests.test_detector_api import GPU, PROM, matrix_handler, service_for

CFG = """
prometheus: {url: http://prom.test:9090, retries: 1}
schedule: {step: 2m, lookback: 2d, context: 30m, fit_every: 6h}
detectors:
  - {name: gpu_temperature, query: gpu_temperature_celsius, model: robust_z, params: {min_periods: 5}}
  - {name: gpu_xid, query: gpu_xid_errors_total, rule: counter_increase}
"""
REFIT_CFG = CFG.replace("params: {min_periods: 5}}", "params: {min_periods: 5}, refit_on_drift: true}")
T0 = 1_800_000_000.0  # the first fit
LATER = T0 + 6 * 3600  # the next fit


def temperatures(shift_after: float | None):
    """40 +- 2 (uniform noise, a hash of the time: the same answer for the same point), +20 from
    `shift_after` on."""
    def values(query, ts):
        if query == "gpu_temperature_celsius":
            y = 40 + 4 * ((np.sin(ts * 12.9898) * 43758.5453) % 1.0 - 0.5)
            if shift_after is not None:
                y = np.where(ts > shift_after, y + 20, y)
            return [{"metric": {"__name__": query, **GPU}, "values": [[t, str(v)] for t, v in zip(ts, y, strict=True)]}]
        if query == "gpu_xid_errors_total":
            return [{"metric": {"__name__": query, **GPU, "xid": "13"}, "values": [[t, "0"] for t in ts]}]
        return []
    return values


def serve(store, clock, data, cfg=CFG):
    responses.reset()  # this Prometheus now answers with `data`
    responses.add_callback(responses.GET, PROM + "/api/v1/query_range", callback=matrix_handler(data))
    svc = service_for(load_config(text=cfg), store, lambda: clock[0])
    svc.load_models()
    return svc


def registry(svc):
    reg = CollectorRegistry(auto_describe=False)
    reg.register(DetectorCollector(lambda: svc.snapshot, svc.extra_families))
    return reg


def drift_value(reg, stat, detector="gpu_temperature"):
    return reg.get_sample_value("rigwatch_feature_drift", {"detector": detector, "feature": "value", "statistic": stat})


@pytest.fixture
def store():
    return ModelStore(MemoryPersistence())


@responses.activate
@pytest.mark.parametrize("shift, drifted", [(True, 1), (False, 0)])
def test_drift_measured_at_the_next_fit_against_the_reference_stored_before_a_restart(store, shift, drifted):
    clock = [T0]
    first = serve(store, clock, temperatures(None))
    assert first.fit()
    reg = registry(first)
    # one model, no reference before it: unknown, never zero
    assert drift_value(reg, "psi") is None
    assert reg.get_sample_value("rigwatch_drifted_series", {"detector": "gpu_temperature"}) is None
    assert STATE_KEY in store.load_latest("gpu_temperature").state

    clock[0] = LATER
    restarted = serve(store, clock, temperatures(T0 if shift else None))  # the reference comes from the store
    assert restarted.fit()
    reg = registry(restarted)
    psi, w = drift_value(reg, "psi"), drift_value(reg, "wasserstein")
    assert reg.get_sample_value("rigwatch_drifted_series", {"detector": "gpu_temperature"}) == drifted
    if shift:
        assert psi > 0.25 and w > 1.0
    else:
        assert psi < 0.25 and w < 0.5
    # a rule detector fits no model: no drift of it at all
    assert drift_value(reg, "psi", "gpu_xid") is None
    assert reg.get_sample_value("rigwatch_detector_model_fit_timestamp_seconds", {"detector": "gpu_temperature"}) \
        == pytest.approx(LATER, abs=300)
    assert reg.get_sample_value("rigwatch_detector_fit_interval_seconds") == 6 * 3600

    api = create_app(restarted, registry=CollectorRegistry()).test_client()
    body = api.get("/api/v1/drift/gpu_temperature").get_json()
    (entry,) = body["detectors"]
    assert entry["known"] and entry["drifted_series"] == drifted
    assert entry["thresholds"] == {"psi": 0.25, "wasserstein": 1.0}
    (series,) = entry["series"]
    assert series["labels"] == GPU and series["drifted"] is bool(drifted)
    assert series["features"]["value"]["psi"] == pytest.approx(psi)
    every = api.get("/api/v1/drift").get_json()["detectors"]
    assert {e["detector"] for e in every} == {"gpu_temperature", "gpu_xid"}
    assert next(e for e in every if e["detector"] == "gpu_xid")["known"] is False


@responses.activate
def test_a_version_stored_before_drift_existed_loads_with_drift_unknown(store):
    clock = [T0]
    assert serve(store, clock, temperatures(None)).fit()
    old = store.load_latest("gpu_temperature")
    state = dict(old.state)
    del state[STATE_KEY]
    store.save("gpu_temperature", state, old.metadata)  # as an older rigwatch wrote it:
    store.persistence.delete(record_name("gpu_temperature"))  # no registry record: the newest scores

    clock[0] = LATER
    svc = serve(store, clock, temperatures(T0))
    assert svc.fit()  # scores and refits as before ...
    reg = registry(svc)
    assert drift_value(reg, "psi") is None  # ... but says nothing of drift it cannot know
    assert reg.get_sample_value("rigwatch_drifted_series", {"detector": "gpu_temperature"}) is None
    api = create_app(svc, registry=CollectorRegistry()).test_client()
    assert api.get("/api/v1/drift/gpu_temperature").get_json()["detectors"][0]["known"] is False
    # the refit stored a reference: the fit after it measures again
    clock[0] = LATER + 6 * 3600
    assert svc.fit()
    assert drift_value(registry(svc), "psi") is not None


@responses.activate
def test_an_unreadable_reference_leaves_the_model_usable_and_drift_unknown(store, caplog):
    clock = [T0]
    assert serve(store, clock, temperatures(None)).fit()
    old = store.load_latest("gpu_temperature")
    state = dict(old.state)
    state[STATE_KEY] = {**state[STATE_KEY], "features": {"value": {"series": ["x"], "edges": np.ones(3)}}}
    v2 = store.save("gpu_temperature", state, old.metadata).version
    Registry(store).promote("gpu_temperature", v2)  # the champion's reference is the broken one
    svc = serve(store, clock, temperatures(None))  # loads v2
    assert [m["version"] for m in svc.models() if m["detector"] == "gpu_temperature"] == [2]
    assert "stored drift reference ignored" in caplog.text
    clock[0] = LATER
    assert svc.fit()
    assert drift_value(registry(svc), "psi") is None


@responses.activate
def test_drift_api_refuses_what_it_does_not_know(store):
    svc = serve(store, [T0], temperatures(None))
    api = create_app(svc, registry=CollectorRegistry()).test_client()
    r = api.get("/api/v1/drift/nope")
    assert r.status_code == 404 and "nope" in r.get_json()["error"]
    r = api.get("/api/v1/drift?detector=x")
    assert r.status_code == 400 and "detector" in r.get_json()["error"]


@responses.activate
def test_anomaly_rate_published_per_detector_and_window(store):
    clock = [T0]

    def spiky(query, ts):
        out = temperatures(None)(query, ts)
        if out and query == "gpu_temperature_celsius":
            # the last 10 minutes' points far outside the band
            out[0]["values"] = [[t, "95" if t > T0 + 3000 else v] for t, v in out[0]["values"]]
        return out

    svc = serve(store, clock, spiky)
    assert svc.fit()
    clock[0] = T0 + 3600
    assert svc.score()
    reg = registry(svc)
    hour = reg.get_sample_value("rigwatch_anomaly_rate", {"detector": "gpu_temperature", "window": "1h"})
    day = reg.get_sample_value("rigwatch_anomaly_rate", {"detector": "gpu_temperature", "window": "24h"})
    assert 0 < hour < 1 and day == pytest.approx(hour)
    assert reg.get_sample_value("rigwatch_anomaly_rate", {"detector": "gpu_xid", "window": "1h"}) == 0.0


def test_anomaly_rates_count_by_point_time_and_forget_what_left_the_window():
    now = [100_000.0]
    rates = AnomalyRates(lambda: now[0])
    assert rates.rates() == {}
    t = now[0] - 1 - np.arange(12) * 300.0  # one point per 5-minute bucket over the last hour
    rates.add("d", t, np.array([2.0] * 3 + [0.5] * 9))
    rates.add("d", t[:2], np.array([np.nan, np.nan]))  # no opinion: not counted
    assert rates.rates()[("d", "1h")] == pytest.approx(3 / 12)
    rates.add("d", np.array([now[0] - 20 * 3600]), np.array([0.1]))  # 20 h ago: in the day only
    assert rates.rates()[("d", "24h")] == pytest.approx(3 / 13)
    assert rates.rates()[("d", "1h")] == pytest.approx(3 / 12)
    now[0] += 2 * 3600  # the hour moved on: nothing scored in it
    assert ("d", "1h") not in rates.rates() and rates.rates()[("d", "24h")] == pytest.approx(3 / 13)
    now[0] += 86400
    rates.add("d", np.array([now[0]]), np.array([0.0]))  # prunes the old buckets
    assert rates.rates() == {("d", "1h"): 0.0, ("d", "24h"): 0.0}
    assert len(rates._buckets["d"]) == 1
    rates.forget([])
    assert rates.rates() == {}



@responses.activate
@pytest.mark.parametrize("shift", [True, False])
def test_refit_on_drift_refits_once_drift_held_at_two_hourly_checks(store, shift):
    clock = [T0]
    svc = serve(store, clock, temperatures(T0 if shift else None), REFIT_CFG)
    assert svc.config.detectors[0].refit_on_drift
    assert svc.fit()
    assert store.versions("gpu_temperature") == [1]
    clock[0] = T0 + 4 * 3600  # 120 new points: the first check measures
    assert svc.score()
    assert store.versions("gpu_temperature") == [1]  # once over is not yet "held"
    if shift:
        assert registry(svc).get_sample_value("rigwatch_drifted_series", {"detector": "gpu_temperature"}) == 1
    clock[0] = T0 + 4.5 * 3600
    assert svc.score()  # not due: checked half an hour ago
    assert store.versions("gpu_temperature") == [1]
    clock[0] = T0 + 5 * 3600
    assert svc.score()
    assert store.versions("gpu_temperature") == ([1, 2] if shift else [1])


@pytest.mark.parametrize("detector, message", [
    ("{name: a, query: up, model: robust_z, refit_on_drift: 'yes'}", "detectors[0].refit_on_drift"),
    ("{name: a, query: up, rule: counter_increase, refit_on_drift: true}", "detectors[0].refit_on_drift: a rule"),
])
def test_refit_on_drift_is_validated(detector, message):
    from detector.config_values import ConfigError

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(text=f"detectors:\n  - {detector}\n")
    assert load_config(text="defaults: {refit_on_drift: true}\ndetectors:\n"
                            "  - {name: a, query: up, model: robust_z}\n").detectors[0].refit_on_drift


def test_anomaly_rates_from_a_cycle_of_one_point_batches_count_per_detector():
    now = [100_000.0]
    rates = AnomalyRates(lambda: now[0])
    t = np.array([now[0] - 30.0])
    batches = [ScoreBatch(det, "m", {"s": str(i)}, t, t, np.array([score]), t, t, t)
               for i, (det, score) in enumerate([("a", 2.0), ("a", 0.5), ("a", np.nan), ("b", 3.0), ("a", 1.5)])]
    rates.add_batches(batches)
    assert rates.rates()[("a", "1h")] == pytest.approx(2 / 3)  # the NaN is no opinion
    assert rates.rates()[("b", "1h")] == 1.0
    rates.add_batches([])
    assert rates.rates()[("a", "24h")] == pytest.approx(2 / 3)
