"""Promote and rollback through the API (token, 4xx JSON), taking effect at the next scoring step
of the running service and surviving a restart; the challenger metric; a gate's seam."""
from __future__ import annotations

import pytest
import responses

from detector.api import create_app
from detector.config import load_config
from detector.persistence import FilePersistence
from detector.registry import Decision, Registry
from detector.store import ModelStore
from tests.test_detector_api import CFG, NOW, PROM, matrix_handler, metric_side, service_for, temps

D = "gpu_temperature"
AUTH = {"Authorization": "Bearer s3cret"}


@pytest.fixture
def store(tmp_path):
    return ModelStore(FilePersistence(tmp_path / "store"))


def fitted_twice(store, clock):
    """A service whose gpu_temperature has v1 and v2 (v2 champion, v1 its rollback target)."""
    svc = service_for(load_config(text=CFG), store, lambda: clock[0])
    responses.add_callback(responses.GET, PROM + "/api/v1/query_range", callback=matrix_handler(temps))
    clock[0] = NOW - 7200
    assert svc.fit()
    clock[0] = NOW - 1800
    assert svc.fit()
    return svc


def client(svc):
    return create_app(svc, environ={"RIGWATCH_API_TOKEN": "s3cret"}).test_client()


@responses.activate
def test_models_api_shows_aliases_and_states_beside_the_existing_fields(store):
    svc = fitted_twice(store, [0.0])
    (m,) = [m for m in client(svc).get("/api/v1/models").get_json()["models"] if m["detector"] == D]
    assert m["version"] == 2 and m["model"] == "robust_z" and "fit_metrics" in m  # unchanged fields
    assert (m["aliases"], m["state"], m["champion"], m["challenger"], m["rollback_target"]) == \
        (["champion"], "champion", 2, None, 1)
    # why it is champion, and the registry's newest decision (what `make demo` prints)
    # (the refit went through the promotion gate, detector/gate.py: its reason and figures)
    assert m["reason"].startswith("0 incidents vs champion 0 (+1 allowed)")
    assert {k: m["decision"][k] for k in ("version", "outcome", "reason")} == \
        {"version": 2, "outcome": "promoted", "reason": m["reason"]}
    assert m["decision"]["figures"]["champion_incidents"] == m["decision"]["figures"]["challenger_incidents"] == 0


@responses.activate
def test_rollback_takes_effect_at_the_next_scoring_step_and_survives_a_restart(store):
    clock = [0.0]
    svc = fitted_twice(store, clock)
    v1_fit = store.load(D, 1).state["last_fit"]
    det = metric_side(svc).detectors[D]
    assert det.version == 2 and det.last_fit != v1_fit
    r = client(svc).post(f"/api/v1/models/{D}/rollback", headers=AUTH)
    assert r.status_code == 200 and r.get_json()["champion"] == 1
    assert det.version == 2  # not yet: the scoring step picks it up
    clock[0] = NOW
    assert svc.score()
    assert det.version == 1 and det.last_fit == v1_fit
    metrics = client(svc).get("/metrics").text
    assert f'rigwatch_detector_model_info{{detector="{D}",model="robust_z",version="1"}} 1.0' in metrics
    # a service rebuilt on the same store directory scores with v1 too, without a refit
    fresh = service_for(svc.config, ModelStore(FilePersistence(store.persistence.root)), lambda: clock[0])
    assert fresh.load_models() == 2
    assert metric_side(fresh).detectors[D].version == 1 and not metric_side(fresh).needs_fit(NOW)
    # and a promotion back to v2 likewise
    r = client(fresh).post(f"/api/v1/models/{D}/promote", headers=AUTH, json={"version": 2})
    assert r.status_code == 200
    assert fresh.score() and metric_side(fresh).detectors[D].version == 2


@responses.activate
def test_promote_and_rollback_need_the_token_and_answer_4xx_json(store):
    svc = fitted_twice(store, [0.0])
    c = client(svc)
    url = f"/api/v1/models/{D}"
    r = create_app(svc, environ={}).test_client().post(url + "/rollback")
    assert r.status_code == 503 and "RIGWATCH_API_TOKEN" in r.get_json()["error"]
    r = c.post(url + "/rollback")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    r = c.post(url + "/promote", headers={"Authorization": "Bearer wrong"}, json={"version": 1})
    assert r.status_code == 403 and r.get_json() == {"error": "invalid token", "status": 403}
    for body in ("[1]", '{"version": "1"}', '{"version": true}', '{"version": 0}', '{"versoin": 1}', "x"):
        r = c.post(url + "/promote", headers=AUTH, data=body, content_type="application/json")
        assert r.status_code == 400 and r.get_json()["status"] == 400, body
    assert "version" in c.post(url + "/promote", headers=AUTH, json={"version": "1"}).get_json()["error"]
    r = c.post(url + "/promote", headers=AUTH, json={"version": 9})
    assert r.status_code == 404 and "unknown version 9" in r.get_json()["error"]
    r = c.post("/api/v1/models/nope/promote", headers=AUTH, json={"version": 1})
    assert r.status_code == 404 and "unknown detector 'nope'" in r.get_json()["error"]
    assert c.post("/api/v1/models/nope/rollback", headers=AUTH).status_code == 404
    assert c.post(url + "/rollback", headers=AUTH, data="[]", content_type="application/json").status_code == 400
    assert c.post(url + "/rollback", headers=AUTH).status_code == 200      # to v1
    r = c.post(url + "/rollback", headers=AUTH)                            # nothing before v1
    assert r.status_code == 409 and "no rollback target" in r.get_json()["error"]
    assert c.get(url + "/promote").status_code == 405
    # nothing refused changed the record
    assert Registry(store).record(D)["champion"] == 1


@responses.activate
def test_a_gate_that_rejects_keeps_the_champion_scoring_and_publishes_the_challenger(store):
    clock = [NOW - 7200]
    svc = service_for(load_config(text=CFG), store, lambda: clock[0])
    responses.add_callback(responses.GET, PROM + "/api/v1/query_range", callback=matrix_handler(temps))
    assert svc.fit()
    v1_fit = metric_side(svc).detectors[D].last_fit
    decisions = []

    def gate(detector, version, champion):
        decisions.append((detector, version, champion))
        return Decision(detector, version, "rejected", "raises alarms on a false-positive window")

    metric_side(svc).registry = Registry(store, gate=gate)  # the seam a gate plugs into
    clock[0] = NOW - 1800
    assert svc.fit()
    assert (D, 2, 1) in decisions
    det = metric_side(svc).detectors[D]
    assert det.version == 1 and det.last_fit == v1_fit  # the rejected fit does not score
    clock[0] = NOW
    assert svc.score()
    metrics = client(svc).get("/metrics").text
    assert f'rigwatch_detector_challenger_info{{detector="{D}",state="rejected",version="2"}} 1.0' in metrics
    assert f'rigwatch_detector_model_info{{detector="{D}",model="robust_z",version="1"}} 1.0' in metrics
    (m,) = [m for m in client(svc).get("/api/v1/models").get_json()["models"] if m["detector"] == D]
    assert (m["version"], m["champion"], m["challenger"]) == (1, 1, 2)
    assert (m["decision"]["version"], m["decision"]["outcome"], m["decision"]["reason"]) == \
        (2, "rejected", "raises alarms on a false-positive window")
    # a restart does not revive it
    fresh = service_for(svc.config, ModelStore(FilePersistence(store.persistence.root)), lambda: clock[0])
    fresh.load_models()
    assert metric_side(fresh).detectors[D].version == 1


@responses.activate
def test_without_a_gate_no_challenger_is_published(store):
    svc = fitted_twice(store, [0.0])
    metrics = client(svc).get("/metrics").text
    assert "# TYPE rigwatch_detector_challenger_info gauge" in metrics
    assert "rigwatch_detector_challenger_info{" not in metrics
