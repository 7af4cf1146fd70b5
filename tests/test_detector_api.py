"""Flask API and /metrics collector over a DetectorService whose Prometheus is served by `responses`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import responses
from prometheus_client import CollectorRegistry

from detector.api import create_app
from detector.config import load_config
from detector.health import SourceHealth
from detector.metric_plugin import MetricPlugin
from detector.metrics import DetectorCollector
from detector.persistence import MemoryPersistence
from detector.plugins import build_service
from detector.promclient import PromClient
from detector.scores import ScoreBatch
from detector.store import ModelStore

PROM = "http://prom.test:9090"
CFG = """
prometheus: {url: http://prom.test:9090, retries: 1}
schedule: {step: 60s, lookback: 1h, context: 30m}
detectors:
  - {name: gpu_temperature, query: gpu_temperature_celsius, model: robust_z, params: {min_periods: 5}}
  - {name: gpu_xid, query: gpu_xid_errors_total, rule: counter_increase}
"""
NOW = 1_800_000_000.0
GPU = {"gpu": "0", "uuid": "GPU-a", "name": "RTX 3090", "job": "rigwatch-exporter", "instance": "aibox:9842"}


def matrix_handler(values_for):
    def handler(request):
        from urllib.parse import parse_qs, urlparse

        q = parse_qs(urlparse(request.url).query)
        start, end, step = float(q["start"][0]), float(q["end"][0]), float(q["step"][0])
        ts = np.arange(start, end + 1, step)
        result = values_for(q["query"][0], ts)
        return 200, {}, json.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}})

    return handler


def temps(query, ts):
    if query == "gpu_temperature_celsius":
        y = 40 + (ts % 120 == 0)  # 40/41 alternating
        y = np.where(ts >= NOW - 300, 90, y)  # a spike in the last 5 minutes
        return [{"metric": {"__name__": query, **GPU}, "values": [[t, str(v)] for t, v in zip(ts, y, strict=False)]}]
    return []


@pytest.fixture
def clock():
    return [NOW - 1800]


@pytest.fixture
def store():
    return ModelStore(MemoryPersistence())


def service_for(cfg, store, clock, retries=0, **kwargs):
    """The serve-time service over a client whose failed attempts are counted, as serve's is."""
    health = SourceHealth()
    client = PromClient(PROM, retries=retries, sleep=lambda s: None, on_error=health.counter("prometheus"))
    return build_service(cfg, client=client, health=health, store=store, clock=clock, **kwargs)


@pytest.fixture
def service(clock, store):
    return service_for(load_config(text=CFG), store, lambda: clock[0], retries=1)


def metric_side(svc):
    (plugin,) = [p for p in svc.plugins if isinstance(p, MetricPlugin)]
    return plugin


def registry_for(svc):
    reg = CollectorRegistry(auto_describe=False)
    reg.register(DetectorCollector(lambda: svc.snapshot))
    return reg


@responses.activate
def test_fit_score_publish_and_self_metrics(service, clock, store):
    responses.add_callback(responses.GET, PROM + "/api/v1/query_range", callback=matrix_handler(temps))
    assert service.fit()
    clock[0] = NOW + 30
    assert service.score()
    reg = registry_for(service)
    labels = {**GPU, "detector": "gpu_temperature", "model": "robust_z"}
    assert reg.get_sample_value("rigwatch_anomaly_score", labels) > 1
    assert reg.get_sample_value("rigwatch_anomaly_expected", labels) == pytest.approx(40.5, abs=0.6)
    assert reg.get_sample_value("rigwatch_anomaly_upper", labels) > 41
    # the observed value beside its band: the alert descriptions quote it
    assert reg.get_sample_value("rigwatch_anomaly_value", labels) == 90.0
    assert reg.get_sample_value("rigwatch_detector_source_up", {"source": "prometheus"}) == 1
    assert reg.get_sample_value("rigwatch_detector_source_errors_total", {"source": "prometheus"}) == 0
    assert reg.get_sample_value("rigwatch_detector_last_success_timestamp_seconds", {"task": "score"}) == NOW + 30
    assert reg.get_sample_value("rigwatch_detector_task_duration_seconds", {"task": "fit"}) >= 0
    assert reg.get_sample_value("rigwatch_detector_series_tracked") == 1
    assert reg.get_sample_value("rigwatch_detector_model_info",
                                {"detector": "gpu_temperature", "model": "robust_z", "version": "1"}) == 1
    # the model store got version 1 with its metadata
    meta = store.load_latest("gpu_temperature").metadata
    assert meta["training_window"]["end"] <= NOW - 1800 and meta["data_fingerprint"]


@responses.activate
def test_prometheus_down_is_reported_and_survived(service, clock, store):
    import requests

    responses.add_callback(responses.GET, PROM + "/api/v1/query_range", callback=matrix_handler(temps))
    service.fit()
    responses.replace(responses.GET, PROM + "/api/v1/query_range", body=requests.ConnectionError("refused"))
    clock[0] = NOW
    assert service.score() is False
    reg = registry_for(service)
    assert reg.get_sample_value("rigwatch_detector_source_up", {"source": "prometheus"}) == 0
    assert reg.get_sample_value("rigwatch_detector_source_errors_total", {"source": "prometheus"}) == 2
    assert reg.get_sample_value("rigwatch_detector_last_success_timestamp_seconds", {"task": "score"}) is None


def test_metrics_endpoint_serves_snapshot_without_scoring(service):
    # no Prometheus answers anything here: /metrics must not query or score
    service.record([ScoreBatch("gpu_temperature", "robust_z", GPU, np.array([NOW]), np.array([90.0]),
                               np.array([3.0]), np.array([40.0]), np.array([30.0]), np.array([50.0]))])
    service._publish()
    client = create_app(service, environ={}).test_client()
    r = client.get("/metrics")
    assert r.status_code == 200
    line = next(x for x in r.text.splitlines() if x.startswith("rigwatch_anomaly_score{"))
    assert 'detector="gpu_temperature"' in line and 'uuid="GPU-a"' in line and 'job="rigwatch-exporter"' in line
    assert line.endswith(" 3.0")


def test_anomalies_api_and_bad_requests(service):
    t = NOW + 60 * np.arange(5)
    service.record([ScoreBatch("gpu_temperature", "robust_z", GPU, t, np.full(5, 90.0), np.full(5, 3.0),
                               np.full(5, 40.0), np.full(5, 30.0), np.full(5, 50.0))])
    c = create_app(service, environ={}).test_client()
    r = c.get("/api/v1/anomalies")
    assert r.status_code == 200
    (a,) = r.get_json()["anomalies"]
    assert a["detector"] == "gpu_temperature" and a["labels"] == {"gpu": "0"}
    assert a["series_labels"]["uuid"] == "GPU-a" and "above expected 40" in a["summary"]
    assert c.get("/api/v1/anomalies?detector=gpu_temperature&min_score=2.5&since=2027-01-15T08:00:00Z").status_code == 200
    for query, status, text in [("limit=0", 400, "limit"), ("limit=x", 400, "bad number"),
                                ("since=yesterday", 400, "since"), ("min_score=-1", 400, "min_score"),
                                ("detector=nope", 404, "unknown detector"), ("foo=1", 400, "unknown query")]:
        r = c.get("/api/v1/anomalies?" + query)
        assert r.status_code == status, query
        body = r.get_json()
        assert body["status"] == status and text in body["error"], (query, body)
    r = c.get("/nope")
    assert r.status_code == 404 and r.get_json()["status"] == 404


def test_models_health_ready(service):
    c = create_app(service, environ={}).test_client()
    assert c.get("/healthz").get_json() == {"status": "ok"}
    r = c.get("/readyz")
    assert r.status_code == 503 and r.get_json()["models_missing"] == ["gpu_temperature", "gpu_xid"]
    models = c.get("/api/v1/models").get_json()["models"]
    assert [m["detector"] for m in models] == ["gpu_temperature", "gpu_xid"]


def test_retrain_needs_configured_token(service):
    c = create_app(service, environ={}).test_client()
    r = c.post("/api/v1/retrain")
    assert r.status_code == 503 and "RIGWATCH_API_TOKEN" in r.get_json()["error"]


def test_retrain_auth_and_body_validation(service, monkeypatch):
    called = []
    monkeypatch.setattr(service, "retrain", lambda names=None: called.append(names))
    c = create_app(service, environ={"RIGWATCH_API_TOKEN": "s3cret"}).test_client()
    r = c.post("/api/v1/retrain")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    r = c.post("/api/v1/retrain", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403 and r.get_json()["error"] == "invalid token"
    auth = {"Authorization": "Bearer s3cret"}
    assert c.post("/api/v1/retrain", headers=auth, data="[1]", content_type="application/json").status_code == 400
    assert c.post("/api/v1/retrain", headers=auth, json={"detectors": ["nope"]}).status_code == 404
    assert c.post("/api/v1/retrain", headers=auth, json={"detectorz": []}).status_code == 400
    assert c.get("/api/v1/retrain").status_code == 405
    r = c.post("/api/v1/retrain", headers=auth, json={"detectors": ["gpu_xid"]})
    assert r.status_code == 202 and called == [["gpu_xid"]]
    assert c.post("/api/v1/retrain", headers=auth).status_code == 202 and called[-1] is None


@responses.activate
def test_restart_loads_last_good_models_without_refit(service, clock, store):
    responses.add_callback(responses.GET, PROM + "/api/v1/query_range", callback=matrix_handler(temps))
    service.fit()
    fresh = service_for(service.config, store, service.clock)
    assert fresh.load_models() == 2
    assert fresh.readiness()[1]["models_missing"] == []
    assert metric_side(fresh).detectors["gpu_temperature"].version == 1


@responses.activate
def test_prometheus_down_at_startup_fits_on_next_pass(service):
    import requests

    responses.add(responses.GET, PROM + "/api/v1/query_range", body=requests.ConnectionError("refused"))
    assert service.fit() is False
    assert service.readiness()[0] is False
    responses.reset()  # Prometheus is back
    responses.add_callback(responses.GET, PROM + "/api/v1/query_range", callback=matrix_handler(temps))
    assert service.score()  # the never-fitted detectors are fitted first, not hours later
    assert service.readiness() == (True, {"prometheus_up": True, "models_missing": []})


@responses.activate
def test_hot_reload_adds_detector_and_keeps_config_on_bad_edit(tmp_path):
    import os

    responses.add_callback(responses.GET, PROM + "/api/v1/query_range", callback=matrix_handler(temps))
    path = tmp_path / "detector.yml"
    path.write_text(CFG)
    svc = service_for(load_config(path), ModelStore(MemoryPersistence()), lambda: NOW, config_path=str(path))
    svc.fit()
    path.write_text(CFG + "  - {name: gpu_temp_2, query: gpu_temperature_celsius, model: robust_z}\n")
    os.utime(path, ns=(int(NOW) * 10**9, int(NOW) * 10**9 + 10**9))
    svc.score()
    assert set(metric_side(svc).detectors) == {"gpu_temperature", "gpu_xid", "gpu_temp_2"}
    assert metric_side(svc).detectors["gpu_temp_2"].last_fit is not None  # fitted straight away
    assert metric_side(svc).detectors["gpu_temperature"].version == 1  # unchanged detectors keep their models
    path.write_text("detectors: [{name: x, query: up, model: nonsense}]")
    os.utime(path, ns=(int(NOW) * 10**9, int(NOW) * 10**9 + 2 * 10**9))
    svc.score()
    assert "gpu_temp_2" in metric_side(svc).detectors and "detectors[0].model" in svc.watcher.last_error


@responses.activate
def test_hot_reload_keeps_command_line_overrides(tmp_path):
    import os

    from detector.config import apply_overrides

    responses.add_callback(responses.GET, PROM + "/api/v1/query_range", callback=matrix_handler(temps))
    path = tmp_path / "detector.yml"
    path.write_text(CFG)
    cfg = apply_overrides(load_config(path), prometheus_url=PROM, loki_url="http://loki.test:3100",
                          store=str(tmp_path / "models"))
    svc = service_for(cfg, ModelStore(MemoryPersistence()), lambda: NOW, config_path=str(path))
    svc.fit()
    path.write_text(CFG + "  - {name: gpu_temp_2, query: gpu_temperature_celsius, model: robust_z}\n")
    os.utime(path, ns=(int(NOW) * 10**9, int(NOW) * 10**9 + 10**9))
    svc.score()
    assert "gpu_temp_2" in metric_side(svc).detectors  # the file's change took effect...
    assert svc.config.prometheus.url == PROM  # ...and the flags given at start-up still hold
    assert svc.config.loki == {"url": "http://loki.test:3100"}
    assert svc.config.store_path == str(tmp_path / "models")
