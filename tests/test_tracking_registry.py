"""The MLflow registry mirroring the local one (aliases `champion` / `challenger` of
rigwatch-<detector>), and what a run carries besides its params: the training anomaly rate, the
gate's figures and decision, a PNG of the most anomalous series. Against a real MLflow: a SQLite
backend through the Python API, and the session's `mlflow server` (tests/mlflow_server.py)."""
from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import pytest
import responses

from detector.config import TrackingConfig, load_config
from detector.fetch import SeriesData
from detector.fit_records import training_evaluation
from detector.metric_detector import MetricDetector
from detector.mlflow_tracking import MlflowSink, mlflow_tracker
from detector.models import model_from_state
from detector.persistence import FilePersistence
from detector.registry import Decision
from detector.store import ModelStore, pack_state
from detector.tracking import AliasJob, BackgroundTracker, Evaluation, FitRecord
from tests.mlflow_server import mlflow_server  # noqa: F401  (the session fixture)
from tests.test_detector_api import CFG, GPU, NOW, PROM, matrix_handler, metric_side, service_for
from tests.test_registry_api import AUTH, client
from tests.test_tracking import _registry

D = "gpu_temperature"
MODEL = f"rigwatch-{D}"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# robust_z's band is as wide as the 0.999 quantile of its training deviations by default, so its own
# training spikes score below 1; a lower quantile lets them show in the training anomaly rate
CFG_T = CFG.replace("params: {min_periods: 5}", "params: {min_periods: 5, tail_quantile: 0.9}")
assert CFG_T != CFG


def spiky(query, ts):
    """40/41 alternating with a spike to 90 every 20 minutes: a training window with anomalies."""
    if query == "gpu_temperature_celsius":
        y = np.where(ts % 1200 == 0, 90.0, 40.0 + (ts % 120 == 0))
        return [{"metric": {"__name__": query, **GPU}, "values": [[t, str(v)] for t, v in zip(ts, y, strict=True)]}]
    return []


def holding_gate(figures):
    """A gate that keeps every proposal a challenger (the real gate is built elsewhere)."""
    return lambda det, version, champion: Decision(det, version, "challenger", "held: test gate", dict(figures))


# -- the evaluation, without MLflow ---------------------------------------------------------------
def test_training_evaluation_scores_copies_and_keeps_the_most_anomalous_series():
    cfg = load_config(text=CFG).detectors[0]
    det = MetricDetector(cfg, 60.0)
    t = NOW - 3600 + 60 * np.arange(60)
    rng = np.random.default_rng(1)
    data = {}
    for i in range(6):
        y = 40 + rng.normal(0, 0.5, 60)
        y[7:7 + 4 * i:4] += 10  # series i: i spikes
        data[f"s{i}"] = SeriesData({"gpu": str(i)}, t, y)
    det.fit(data, float(t[-1]))
    state = det.get_state()
    before = pack_state(det.get_state())
    ev = training_evaluation(state, data)
    # the rate, counted independently from each stored model scoring its training points
    per = {sd.labels["gpu"]: model_from_state(state["series"][sid]["model"]).score(sd.t, sd.y).score
           for sid, sd in data.items()}
    scores = np.concatenate(list(per.values()))
    finite = scores[np.isfinite(scores)]
    assert ev.metrics["training_anomaly_rate"] == pytest.approx((finite > 1).mean())
    assert 0 < ev.metrics["training_anomaly_rate"] < 0.2
    # four series, the most anomalous first: most points above 1, then the highest score; never the
    # series without a spike
    ranked = sorted(per, key=lambda g: (int((per[g] > 1).sum()), np.nanmax(per[g])), reverse=True)
    assert [p.labels["gpu"] for p in ev.plot] == ranked[:4]
    assert "0" not in ranked[:4]
    np.testing.assert_array_equal(ev.plot[0].score, per[ranked[0]])
    assert all(len(p.t) == len(p.y) == len(p.score) == len(p.upper) == 60 for p in ev.plot)
    # the live detector's models were not advanced by the evaluation
    assert pack_state(det.get_state()) == before
    assert ev.metrics["training_anomaly_rate_series"] == 6
    assert training_evaluation(state, {}).metrics == {}  # nothing scored: no rate rather than 0

    # a larger detector: the rate over series spread evenly (here 2 of 6: the first and the last),
    # the plot's candidates also from the series that stand out (s2, given a huge spike)
    data["s2"] = SeriesData(data["s2"].labels, t, np.where(np.arange(60) == 30, 500.0, data["s2"].y))
    small = training_evaluation(state, data, sample=2, candidates=1)
    both = np.concatenate([per["0"], per["5"]])
    assert small.metrics == {"training_anomaly_rate": (both[np.isfinite(both)] > 1).mean(),
                             "training_anomaly_rate_series": 2.0}
    assert sorted(p.labels["gpu"] for p in small.plot) == ["0", "2", "5"]


def test_worker_evaluates_before_logging_and_bounds_the_points_it_holds():
    gate, seen = threading.Event(), []

    def sink(rec, attempt):
        gate.wait(5)
        seen.append((rec.version, dict(rec.metrics), len(rec.plot)))

    t = BackgroundTracker(sink, max_pending_points=150)
    made = []
    for v in range(3):  # 100 points each: the first is taken by the worker, the second waits, the third is over
        rec = FitRecord("d", v, {}, {"series": 1.0}, {}, {})
        rec.evaluate, rec.points = (lambda v=v: made.append(v) or Evaluation({"training_anomaly_rate": 0.5}, [])), 100
        t.log_fit(rec)
        time.sleep(0.1)
    gate.set()
    assert t.flush(5)
    assert made == [0, 1]
    assert [(v, "training_anomaly_rate" in m) for v, m, _ in seen] == [(0, True), (1, True), (2, False)]
    assert t._pending_points == 0
    t.close()


def test_alias_jobs_run_after_the_fits_queued_before_and_failures_are_counted():
    order = []
    down = [True]

    def mirror(job, attempt):
        if down[0]:
            raise ConnectionError("refused")
        order.append(("alias", job.champion, job.challenger))

    t = BackgroundTracker(lambda rec, a: order.append(("fit", rec.version)), mirror=mirror, retries=1, backoff=0.01)
    t.log_fit(FitRecord("d", 1, {}, {}, {}, {}))
    t.mirror_aliases("d", 1, None)  # refused twice: skipped, counted, never raised here
    assert t.flush(5)
    down[0] = False
    t.log_fit(FitRecord("d", 2, {}, {}, {}, {}))
    t.mirror_aliases("d", 1, 2)
    assert t.flush(5)
    assert order == [("fit", 1), ("fit", 2), ("alias", 1, 2)]
    assert (t.errors, t.skipped) == (2, 1)
    t.close()
    BackgroundTracker(lambda r, a: None).mirror_aliases("d", 1, None)  # no mirror: nothing happens


# -- a real MLflow -------------------------------------------------------------------------------
def _aliases(uri):
    """The registered model's aliases, as the store versions their model versions are tagged with."""
    from mlflow.tracking import MlflowClient

    mc = MlflowClient(tracking_uri=uri)
    model = mc.get_registered_model(MODEL)
    store_version = {v.version: int(v.tags["rigwatch.store_version"])
                     for v in mc.search_model_versions(f"name = '{MODEL}'")}
    return {a: store_version[n] for a, n in model.aliases.items()}


def _run_of(uri, version, experiment="rigwatch"):
    from mlflow.tracking import MlflowClient

    mc = MlflowClient(tracking_uri=uri)
    exp = mc.get_experiment_by_name(experiment)
    (run,) = mc.search_runs([exp.experiment_id], f"tags.`rigwatch.detector` = '{D}' and "
                                                 f"tags.`rigwatch.store_version` = '{version}'")
    return mc, run


def _champion_scores_like(uri, store, version, monkeypatch):
    """models:/rigwatch-<d>@champion loads and scores a DataFrame as the stored `version` does."""
    import mlflow.pyfunc
    import pandas as pd

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # models:/ reads the process's tracking URI
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    (sid,) = store.load(D, version).state["series"]
    t, y = NOW + 60 * np.arange(3), np.array([40.0, 41.0, 95.0])
    got = model.predict(pd.DataFrame({"series": [sid] * 3, "t": t, "y": y}))
    ref = model_from_state(store.load(D, version).state["series"][sid]["model"]).score(t, y)
    np.testing.assert_allclose(got["score"], ref.score)
    np.testing.assert_allclose(got["upper"], ref.upper)
    assert got["score"].iloc[-1] > 1


def _service(uri, store, clock, experiment="rigwatch", **kw):
    tracker = mlflow_tracker(TrackingConfig(uri, experiment), **kw)
    return service_for(load_config(text=CFG_T), store, lambda: clock[0], tracker=tracker), tracker


@pytest.mark.integration
@responses.activate
def test_aliases_follow_the_local_registry_and_runs_carry_figures_and_png_sqlite(tmp_path, monkeypatch):
    responses.add_callback(responses.GET, PROM + "/api/v1/query_range", callback=matrix_handler(spiky))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store, clock = ModelStore(FilePersistence(tmp_path / "store")), [NOW - 7200]
    svc, tracker = _service(uri, store, clock)
    assert svc.fit()  # v1: no gate, promoted
    assert tracker.flush(60)
    assert _aliases(uri) == {"champion": 1}
    _champion_scores_like(uri, store, 1, monkeypatch)

    # v2 held as challenger by the gate: a new registered version, champion unmoved
    figures = {"incidents_challenger": 3.0, "incidents_champion": 1.0, "alarm_seconds_challenger": 900.0}
    metric_side(svc).registry.gate = holding_gate(figures)
    clock[0] = NOW - 3600
    assert svc.fit()
    assert tracker.flush(60)
    assert _aliases(uri) == {"champion": 1, "challenger": 2}
    mc, run = _run_of(uri, 2)
    m, tags = run.data.metrics, run.data.tags
    assert {k: m[f"gate_{k}"] for k in figures} == figures
    assert (tags["rigwatch.gate_outcome"], tags["rigwatch.gate_reason"]) == ("challenger", "held: test gate")
    # three spikes (every 20 min) in a 61-point window scored by the model fitted on it
    assert 0 < m["training_anomaly_rate"] < 0.2
    _, run1 = _run_of(uri, 1)
    assert run1.data.tags["rigwatch.gate_outcome"] == "promoted" and not any(
        k.startswith("gate_") for k in run1.data.metrics)  # no gate: no figures, but the decision
    png = open(mc.download_artifacts(run.info.run_id, "anomalous_series.png", str(tmp_path)), "rb").read()
    assert png.startswith(PNG_MAGIC)
    import matplotlib.image

    img = matplotlib.image.imread(str(tmp_path / "anomalous_series.png"))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 500

    # an operator's promotion through the API: mirrored when it takes effect (the next scoring step)
    assert client(svc).post(f"/api/v1/models/{D}/promote", headers=AUTH, json={"version": 2}).status_code == 200
    assert tracker.flush(60) and _aliases(uri) == {"champion": 1, "challenger": 2}
    clock[0] = NOW - 3000
    assert svc.score() and tracker.flush(60)
    assert _aliases(uri) == {"champion": 2}
    _champion_scores_like(uri, store, 2, monkeypatch)
    # and a rollback: the champion alias moves back to v1, which loads and scores again
    assert client(svc).post(f"/api/v1/models/{D}/rollback", headers=AUTH).get_json()["champion"] == 1
    clock[0] = NOW - 2900
    assert svc.score() and tracker.flush(60)
    assert _aliases(uri) == {"champion": 1}
    _champion_scores_like(uri, store, 1, monkeypatch)

    # a registration alone never moves an alias: only a registry decision does
    sink = MlflowSink(TrackingConfig(uri))
    sink(FitRecord(D, 2, {}, {}, {"rigwatch.detector": D, "rigwatch.store_version": "2"}, {"version": 2},
                   state=lambda: pack_state(store.load(D, 2).state)), {})
    assert _aliases(uri) == {"champion": 1}
    # a store version never registered: the alias is left unset (warned), not pointed elsewhere
    sink.mirror_aliases(AliasJob(D, 1, 99), {})
    assert _aliases(uri) == {"champion": 1}
    # without artifacts no version is registered, and no alias is touched
    MlflowSink(TrackingConfig(uri, artifacts=False)).mirror_aliases(AliasJob(D, None, None), {})
    assert _aliases(uri) == {"champion": 1}
    tracker.close()

    # start-up mirrors the local record: aliases a hand moved in MLflow are put back
    mc.set_registered_model_alias(MODEL, "champion", max(int(v.version) for v in mc.search_model_versions(
        f"name = '{MODEL}'")))
    fresh, tracker2 = _service(uri, ModelStore(FilePersistence(tmp_path / "store")), clock)
    assert fresh.load_models() == 2
    assert tracker2.flush(60)
    assert _aliases(uri) == {"champion": 1}
    tracker2.close()


@pytest.mark.integration
@responses.activate
def test_aliases_over_http_and_a_stopped_server_never_blocks_promotion(mlflow_server, monkeypatch):  # noqa: F811
    url = mlflow_server.url
    responses.add_passthru(url)
    responses.add_callback(responses.GET, PROM + "/api/v1/query_range", callback=matrix_handler(spiky))
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with contextlib.suppress(MlflowException):  # the session's server is shared: start with no such model
        MlflowClient(tracking_uri=url).delete_registered_model(MODEL)
    store, clock = ModelStore(FilePersistence(mlflow_server.root / "store-aliases")), [NOW - 7200]
    # an experiment of its own: the server's "rigwatch" one belongs to test_tracking
    svc, tracker = _service(url, store, clock, "rigwatch-aliases", retries=1, backoff=0.05)
    assert svc.fit()
    clock[0] = NOW - 3600
    assert svc.fit()
    assert tracker.flush(60)
    assert _aliases(url) == {"champion": 2}
    _champion_scores_like(url, store, 2, monkeypatch)
    assert client(svc).post(f"/api/v1/models/{D}/rollback", headers=AUTH).status_code == 200
    clock[0] = NOW - 3000
    assert svc.score() and tracker.flush(60)
    assert _aliases(url) == {"champion": 1}
    _champion_scores_like(url, store, 1, monkeypatch)
    reg = _registry(svc)
    assert reg.get_sample_value("rigwatch_detector_tracking_errors_total") == 0

    with mlflow_server.down():
        # a promotion taking effect while the server is down: the alias job fails in the background
        r = client(svc).post(f"/api/v1/models/{D}/promote", headers=AUTH, json={"version": 2})
        assert r.status_code == 200
        clock[0] = NOW - 2900
        started = time.perf_counter()
        assert svc.score()
        assert metric_side(svc).detectors[D].version == 2  # the promotion took effect
        assert time.perf_counter() - started < 2
        assert tracker.flush(30)
        assert reg.get_sample_value("rigwatch_detector_tracking_errors_total") == 2  # two tries, refused
    # the mirror lags until the next decision (it never moved on its own), then follows again
    assert mlflow_server.url == url  # started again: wait until it answers
    assert _aliases(url) == {"champion": 1}
    clock[0] = NOW - 1800
    assert svc.fit()
    assert tracker.flush(60)
    assert _aliases(url) == {"champion": 3}
    _, run = _run_of(url, 3, "rigwatch-aliases")
    assert 0 < run.data.metrics["training_anomaly_rate"] < 0.2
    tracker.close()
