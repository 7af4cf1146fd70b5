"""Feedback and maintenance windows: the label store, their API, and what they change (training data,
incidents). The store is a real ModelStore on files; the service is the serve-time one."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import responses

from detector.api import create_app
from detector.config import ConfigError, load_config
from detector.fetch import SeriesData
from detector.labels import FEEDBACK_BLOB, MAINTENANCE_BLOB, Exclusions, LabelStore, maintenance_window
from detector.metric_detector import MetricDetector
from detector.metric_plugin import replay_detector
from detector.persistence import FilePersistence
from detector.scores import ScoreBatch
from detector.store import ModelStore
from detector.timefmt import iso
from tests.test_detector_api import CFG, GPU, NOW, PROM, matrix_handler, metric_side, service_for, temps

TOKEN = {"Authorization": "Bearer s3cret"}
ENV = {"RIGWATCH_API_TOKEN": "s3cret"}


def file_store(path) -> ModelStore:
    return ModelStore(FilePersistence(path))


# -- the label store ------------------------------------------------------------------------------

def test_label_store_adds_lists_and_survives_reopen(tmp_path):
    labels = LabelStore(file_store(tmp_path), clock=lambda: NOW)
    assert labels.feedback() == [] and labels.maintenance() == []
    tp = labels.add_feedback("gpu_temperature", "true_positive", NOW, NOW + 300, series={"gpu": "0"},
                             incident="abc", note="fan died")
    fp = labels.add_feedback("gpu_temperature", "false_positive", NOW + 3600, NOW + 3660)
    other = labels.add_feedback("gpu_xid", "true_positive", NOW, NOW + 60)
    window = labels.add_maintenance(maintenance_window(
        {"start": iso(NOW), "end": iso(NOW + 7200), "detectors": ["gpu_temperature"]}, "", source="api"))
    assert (tmp_path / FEEDBACK_BLOB).is_file() and (tmp_path / MAINTENANCE_BLOB).is_file()

    reopened = LabelStore(file_store(tmp_path))
    assert reopened.feedback() == [tp, fp, other]
    assert reopened.maintenance() == [window]
    # the gate's read: one detector, the labels overlapping a range
    assert reopened.labels_for("gpu_temperature", NOW - 60, NOW + 100) == [tp]
    assert reopened.labels_for("gpu_temperature", NOW, NOW + 4000) == [tp, fp]
    assert reopened.labels_for("gpu_temperature", NOW + 4000, NOW + 5000) == []
    # a changed verdict on the same incident replaces the first
    again = reopened.add_feedback("gpu_temperature", "false_positive", NOW, NOW + 300, incident="abc")
    assert [f.label for f in LabelStore(file_store(tmp_path)).labels_for("gpu_temperature", NOW, NOW)] == \
        ["false_positive"] and again.id == tp.id
    assert reopened.delete_maintenance(window.id) and not reopened.delete_maintenance(window.id)
    assert LabelStore(file_store(tmp_path)).maintenance() == []


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b"[1, 2]", b'{"items": [{"id": 1}]}',
                                     b'{"items": [{"id": "x", "detector": "d", "label": "maybe", '
                                     b'"start": 1, "end": 2}]}'])
def test_corrupt_labels_file_is_a_warning_and_no_labels(tmp_path, caplog, content):
    store = file_store(tmp_path)
    store.write_blob(FEEDBACK_BLOB, content)
    store.write_blob(MAINTENANCE_BLOB, content)
    with caplog.at_level(logging.WARNING, logger="detector.labels"):
        labels = LabelStore(store)
        assert labels.feedback() == [] and labels.maintenance() == []
    assert "corrupt" in caplog.text and FEEDBACK_BLOB in caplog.text
    # and it is usable: the next write replaces the corrupt file
    labels.add_feedback("d", "true_positive", NOW, NOW + 60)
    assert len(LabelStore(file_store(tmp_path)).feedback()) == 1


def test_corrupt_labels_file_does_not_stop_a_start_up(tmp_path):
    store = file_store(tmp_path)
    store.write_blob(FEEDBACK_BLOB, b"\x00garbage")
    svc = service_for(load_config(text=CFG), store, lambda: NOW)
    assert svc.labels.feedback() == [] and svc.load_models() == 0


def test_maintenance_config_errors_name_the_key():
    base = "detectors: [{name: a, query: up, model: robust_z}]\n"
    for bad, key in [("maintenance: [{start: 2026-12-01T10:00:00Z}]", "maintenance[0].end"),
                     ("maintenance: [{start: 2026-12-01 10:00, end: 2026-12-01T11:00:00Z}]", "maintenance[0].start"),
                     ("maintenance: [{start: 2026-12-01T10:00:00Z, end: 2026-12-01T09:00:00Z}]", "maintenance[0].end"),
                     ("maintenance: [{start: 2020-12-01T10:00:00Z, end: 2026-12-01T09:00:00Z}]", "maintenance[0].end"),
                     ("maintenance: [{start: 2026-12-01T10:00:00Z, end: 2026-12-01T11:00:00Z, detectors: []}]",
                      "maintenance[0].detectors"),
                     ("maintenance: [{start: 2026-12-01T10:00:00Z, end: 2026-12-01T11:00:00Z, when: x}]",
                      "maintenance[0].when"),
                     ("maintenance: {start: 2026-12-01T10:00:00Z}", "maintenance")]:
        with pytest.raises(ConfigError) as e:
            load_config(text=base + bad)
        assert e.value.key == key, bad
    cfg = load_config(text=base + "maintenance:\n  - {start: 2026-12-01T10:00:00Z, end: '2026-12-01T14:00:00+02:00'}")
    (w,) = cfg.maintenance
    assert (w.start, w.end - w.start, w.detectors, w.source) == (1796119200.0, 7200.0, None, "config")


# -- what they change: training data --------------------------------------------------------------

def spiky_series():
    """Six hours of a steady 40 C with a 90 C half hour at 5 h: what maintenance or a real incident
    looks like."""
    t = np.arange(0, 6 * 3600, 60.0)
    y = 40 + np.random.default_rng(0).normal(0, 0.5, len(t))
    y[(t >= 5 * 3600) & (t < 5.5 * 3600)] = 90.0
    return t, {"s": SeriesData({"gpu": "0", "uuid": "GPU-a"}, t, y)}


def band_after_fit(exclusions):
    det = MetricDetector(load_config(text="detectors: [{name: gpu_temperature, query: q, model: robust_z}]")
                         .detectors[0], 60)
    t, data = spiky_series()
    det.fit(data, t[-1], exclusions)
    (b,) = det.score({"s": SeriesData({"gpu": "0", "uuid": "GPU-a"}, np.array([t[-1] + 60]), np.array([41.0]))})
    return det, b


@pytest.mark.parametrize("labelled", ["maintenance", "true_positive"])
def test_maintenance_and_true_positive_points_are_not_trained_on(tmp_path, labelled):
    labels = LabelStore(file_store(tmp_path))
    if labelled == "maintenance":
        labels.add_maintenance(maintenance_window({"start": iso(5 * 3600), "end": iso(5.5 * 3600 - 1)}, "",
                                                  source="api"))
    else:
        labels.add_feedback("gpu_temperature", "true_positive", 5 * 3600, 5.5 * 3600 - 1, series={"gpu": "0"})
    plain, b_plain = band_after_fit(None)
    masked, b_masked = band_after_fit(Exclusions.current((), labels))
    assert plain.fit_metrics["excluded_points"] == 0 and masked.fit_metrics["excluded_points"] == 30
    assert masked.series["s"].fit_points == plain.series["s"].fit_points - 30
    # trained on the spike, the band stretches up to it; without it, the band is the normal 40 C
    assert b_plain.upper[0] > 80
    assert b_masked.upper[0] < 50 and abs(b_masked.expected[0] - 40) < 1


def test_false_positive_and_other_series_stay_in_training(tmp_path):
    labels = LabelStore(file_store(tmp_path))
    labels.add_feedback("gpu_temperature", "false_positive", 5 * 3600, 5.5 * 3600 - 1)
    labels.add_feedback("gpu_temperature", "true_positive", 5 * 3600, 5.5 * 3600 - 1, series={"gpu": "1"})
    labels.add_feedback("gpu_xid", "true_positive", 5 * 3600, 5.5 * 3600 - 1)
    det, b = band_after_fit(Exclusions.current((), labels))
    assert det.fit_metrics["excluded_points"] == 0 and b.upper[0] > 80


def test_backtest_replay_leaves_a_window_out_of_its_fits():
    cfg = load_config(text="schedule: {step: 60s, lookback: 6h, warmup: 6h, fit_every: 1h}\n"
                           "detectors: [{name: gpu_temperature, query: q, model: robust_z}]\n"
                           "maintenance: [{start: 1970-01-01T05:00:00Z, end: 1970-01-01T05:29:59Z}]")
    t, data = spiky_series()

    def replay(exclusions):
        from detector.incidents import IncidentTracker

        det = MetricDetector(cfg.detectors[0], 60)
        replay_detector(det, data, 0.0, float(t[-1]), cfg, IncidentTracker(keep=None), exclusions=exclusions)
        return det

    assert replay(Exclusions.current(cfg.maintenance, None)).fit_metrics["excluded_points"] == 30
    assert replay(None).fit_metrics["excluded_points"] == 0


# -- what they change: incidents ------------------------------------------------------------------

def hot_batch(t):
    return ScoreBatch("gpu_temperature", "robust_z", GPU, t, np.full(len(t), 90.0), np.full(len(t), 5.0),
                      np.full(len(t), 40.0), np.full(len(t), 30.0), np.full(len(t), 50.0))


def test_no_incident_inside_a_maintenance_window_but_scores_published(tmp_path):
    store = file_store(tmp_path)
    svc = service_for(load_config(text=CFG), store, lambda: NOW + 600)
    svc.labels.add_maintenance(maintenance_window(
        {"start": iso(NOW), "end": iso(NOW + 600), "detectors": ["gpu_temperature"]}, "", source="api"))
    svc.record([hot_batch(NOW + 60 * np.arange(5))])
    svc._publish()
    assert svc.incidents() == []
    (sample,) = svc.snapshot.scores
    assert sample.score == 5.0 and sample.detector == "gpu_temperature"
    # another detector is not in the window; after the window the same detector's scores count again
    svc.record([ScoreBatch("gpu_xid", "counter_increase", GPU, NOW + 60 * np.arange(5), np.ones(5),
                           np.full(5, 5.0), np.zeros(5), np.zeros(5), np.zeros(5))])
    assert [i.detector for i in svc.incidents()] == ["gpu_xid"]
    svc.record([hot_batch(NOW + 660 + 60 * np.arange(5))])
    assert sorted(i.detector for i in svc.incidents()) == ["gpu_temperature", "gpu_xid"]
    (inc,) = [i for i in svc.incidents() if i.detector == "gpu_temperature"]
    assert inc.start == NOW + 660


def test_config_window_silences_incidents_too(tmp_path):
    cfg = load_config(text=CFG + f"maintenance: [{{start: '{iso(NOW)}', end: '{iso(NOW + 3600)}'}}]")
    svc = service_for(cfg, file_store(tmp_path), lambda: NOW)
    svc.record([hot_batch(NOW + 60 * np.arange(5))])
    assert svc.incidents() == []


# -- the API --------------------------------------------------------------------------------------

@pytest.fixture
def svc(tmp_path):
    return service_for(load_config(text=CFG), file_store(tmp_path), lambda: NOW + 600)


def test_label_api_needs_the_token(svc):
    c = create_app(svc, environ=ENV).test_client()
    body = {"detector": "gpu_temperature", "label": "true_positive", "start": iso(NOW), "end": iso(NOW + 60)}
    for path, payload in [("/api/v1/feedback", body), ("/api/v1/maintenance", {"start": iso(NOW), "end": iso(NOW + 60)})]:
        r = c.post(path, json=payload)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        r = c.post(path, json=payload, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 403 and r.get_json() == {"error": "invalid token", "status": 403}
    assert c.delete("/api/v1/maintenance/x").status_code == 401
    r = create_app(svc, environ={}).test_client().post("/api/v1/feedback", json=body)
    assert r.status_code == 503 and "RIGWATCH_API_TOKEN" in r.get_json()["error"]
    assert svc.labels.feedback() == [] and svc.labels.maintenance() == []


def test_feedback_api_validation(svc):
    c = create_app(svc, environ=ENV).test_client()
    ok = {"detector": "gpu_temperature", "label": "true_positive", "start": iso(NOW), "end": iso(NOW + 60)}
    for change, status, field in [({"label": "maybe"}, 400, "label"), ({"detector": 3}, 400, "detector"),
                                  ({"start": "yesterday"}, 400, "start"), ({"end": iso(NOW - 60)}, 400, "end"),
                                  ({"end": None}, 400, "end"), ({"series": {"gpu": 0}}, 400, "series"),
                                  ({"color": "red"}, 400, "body"), ({"note": 5}, 400, "note"),
                                  ({"incident": "abc"}, 400, "incident"),
                                  ({"detector": "nope"}, 404, "detector")]:
        payload = {k: v for k, v in {**ok, **change}.items() if v is not None}
        r = c.post("/api/v1/feedback", json=payload, headers=TOKEN)
        assert r.status_code == status, change
        assert r.get_json()["status"] == status and r.get_json()["error"].startswith(field), (change, r.get_json())
    r = c.post("/api/v1/feedback", json={"detector": "gpu_temperature", "label": "false_positive",
                                         "incident": "0123456789abcdef"}, headers=TOKEN)
    assert r.status_code == 404 and r.get_json()["error"].startswith("incident")
    r = c.post("/api/v1/feedback", data="[1]", content_type="application/json", headers=TOKEN)
    assert r.status_code == 400 and r.get_json()["error"].startswith("body")
    assert c.get("/api/v1/feedback?when=now").status_code == 400
    r = c.get("/api/v1/feedback?detector=nope")
    assert r.status_code == 404 and r.get_json()["error"].startswith("detector")
    assert svc.labels.feedback() == []


def test_feedback_on_an_incident_from_the_anomalies_api(svc, tmp_path):
    svc.record([hot_batch(NOW + 60 * np.arange(5))])
    c = create_app(svc, environ=ENV).test_client()
    (a,) = c.get("/api/v1/anomalies").get_json()["anomalies"]
    r = c.post("/api/v1/feedback", json={"detector": "gpu_temperature", "incident": a["id"],
                                         "label": "true_positive", "note": "fan failed"}, headers=TOKEN)
    assert r.status_code == 201, r.get_json()
    f = r.get_json()
    assert (f["incident"], f["start"], f["end"], f["series"]) == (a["id"], a["start"], a["end"], {"gpu": "0"})
    # the incident's id is the same after more points extend it
    svc.record([hot_batch(NOW + 300 + 60 * np.arange(2))])
    assert c.get("/api/v1/anomalies").get_json()["anomalies"][0]["id"] == a["id"]
    listed = c.get("/api/v1/feedback?detector=gpu_temperature").get_json()
    assert listed["count"] == 1 and listed["feedback"][0]["note"] == "fan failed"
    assert c.get(f"/api/v1/feedback?since={iso(NOW + 7200)}").get_json()["count"] == 0
    # stored beside the models: a new service over the same directory has it
    again = service_for(load_config(text=CFG), file_store(tmp_path), lambda: NOW)
    assert [x.label for x in again.labels.feedback()] == ["true_positive"]


def test_maintenance_api(svc, tmp_path):
    c = create_app(svc, environ=ENV).test_client()
    for payload, status, field in [({"start": iso(NOW)}, 400, "end"), ({"start": "x", "end": iso(NOW)}, 400, "start"),
                                   ({"start": iso(NOW), "end": iso(NOW + 60), "detectors": "all"}, 400, "detectors"),
                                   ({"start": iso(NOW), "end": iso(NOW + 60), "why": "x"}, 400, "why"),
                                   ({"start": iso(NOW), "end": iso(NOW + 60), "detectors": ["nope"]}, 404, "detectors")]:
        r = c.post("/api/v1/maintenance", json=payload, headers=TOKEN)
        assert r.status_code == status and r.get_json()["error"].startswith(field), (payload, r.get_json())
    r = c.post("/api/v1/maintenance", json={"start": iso(NOW), "end": iso(NOW + 3600),
                                            "detectors": ["gpu_temperature"], "note": "driver upgrade"}, headers=TOKEN)
    assert r.status_code == 201
    w = r.get_json()
    listed = c.get("/api/v1/maintenance").get_json()
    assert listed["maintenance"] == [w] and w["source"] == "api" and w["detectors"] == ["gpu_temperature"]
    assert [x.id for x in LabelStore(file_store(tmp_path)).maintenance()] == [w["id"]]
    assert c.delete("/api/v1/maintenance/nope", headers=TOKEN).status_code == 404
    assert c.delete(f"/api/v1/maintenance/{w['id']}", headers=TOKEN).status_code == 200
    assert c.get("/api/v1/maintenance").get_json()["count"] == 0


@responses.activate
def test_a_window_posted_to_the_api_is_left_out_of_the_next_fit(svc):
    responses.add_callback(responses.GET, PROM + "/api/v1/query_range", callback=matrix_handler(temps))
    c = create_app(svc, environ=ENV).test_client()
    assert svc.fit()
    assert metric_side(svc).detectors["gpu_temperature"].fit_metrics["excluded_points"] == 0
    r = c.post("/api/v1/maintenance", json={"start": iso(NOW - 1200), "end": iso(NOW - 600)}, headers=TOKEN)
    assert r.status_code == 201
    assert svc.fit()
    assert metric_side(svc).detectors["gpu_temperature"].fit_metrics["excluded_points"] == 11


# -- what they publish ----------------------------------------------------------------------------

def scrape(svc):
    """The served /metrics registry of `svc` (the collector with the service's own families)."""
    return create_app(svc, environ=ENV).config["registry"]


def test_feedback_and_maintenance_metrics_follow_the_labels(tmp_path):
    cfg = load_config(text=CFG + f"maintenance: [{{start: '{iso(NOW - 3600)}', end: '{iso(NOW - 60)}'}}, "
                                 f"{{start: '{iso(NOW + 3600)}', end: '{iso(NOW + 7200)}'}}]")
    clock = [NOW]
    svc = service_for(cfg, file_store(tmp_path), lambda: clock[0])
    reg = scrape(svc)

    def fb(label, detector="gpu_temperature"):
        return reg.get_sample_value("rigwatch_feedback_labels", {"detector": detector, "label": label})

    def windows(state):
        return reg.get_sample_value("rigwatch_maintenance_windows", {"state": state})

    # nothing stored: a zero per configured detector and verdict, not an absent series
    assert (fb("true_positive"), fb("false_positive")) == (0, 0)
    assert (windows("active"), windows("scheduled")) == (0, 1)  # the first config window is over
    c = create_app(svc, environ=ENV).test_client()
    for label, start in (("true_positive", NOW - 600), ("false_positive", NOW - 1200), ("false_positive", NOW - 1800)):
        r = c.post("/api/v1/feedback", json={"detector": "gpu_temperature", "label": label,
                                             "start": iso(start), "end": iso(start + 60)}, headers=TOKEN)
        assert r.status_code == 201
    # a changed verdict on the same range replaces the old one: counted once
    c.post("/api/v1/feedback", json={"detector": "gpu_temperature", "label": "true_positive",
                                     "start": iso(NOW - 1800), "end": iso(NOW - 1740)}, headers=TOKEN)
    assert (fb("true_positive"), fb("false_positive")) == (2, 1)
    assert fb("true_positive", "gpu_xid") == 0
    r = c.post("/api/v1/maintenance", json={"start": iso(NOW - 60), "end": iso(NOW + 600)}, headers=TOKEN)
    assert r.status_code == 201
    assert (windows("active"), windows("scheduled")) == (1, 1)
    clock[0] = NOW + 4000  # the stored window is over, the config's second one is in force
    assert (windows("active"), windows("scheduled")) == (1, 0)
    # fresh per scrape from the store: a restarted service publishes the same counts
    again = scrape(service_for(cfg, file_store(tmp_path), lambda: NOW))
    assert again.get_sample_value("rigwatch_feedback_labels",
                                  {"detector": "gpu_temperature", "label": "true_positive"}) == 2
