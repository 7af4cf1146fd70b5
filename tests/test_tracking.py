"""Experiment tracking of fits (detector.tracking, detector.mlflow_tracking) against a real MLflow:
a SQLite backend in a temp folder, and one `mlflow server` shared by the session (tests/mlflow_server.py).
Prometheus is served by `responses`, as in test_detector_api; the MLflow server's URL passes through."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import responses
from prometheus_client import CollectorRegistry

from detector.cli import main as cli_main
from detector.config import TrackingConfig, apply_overrides, load_config
from detector.config_values import ConfigError
from detector.metrics import DetectorCollector
from detector.mlflow_tracking import mlflow_tracker
from detector.models import model_from_state
from detector.persistence import MemoryPersistence
from detector.store import ModelStore
from detector.tracking import BackgroundTracker, FitRecord
from tests.mlflow_server import mlflow_server  # noqa: F401  (the session fixture)
from tests.test_detector_api import CFG, NOW, PROM, matrix_handler, service_for, temps

DETECTORS = ("gpu_temperature", "gpu_xid")


def record(name="d", version=1):
    return FitRecord(name, version, {"model": "robust_z"}, {"series": 1.0}, {}, {"version": version})


# -- config -------------------------------------------------------------------------------------
def test_tracking_section_and_flag():
    assert load_config(text=CFG).tracking is None
    cfg = load_config(text=CFG + "tracking: {uri: 'sqlite:///tmp/m.db', experiment: lab, timeout: 30s, "
                                 "artifacts: false}\n")
    assert cfg.tracking == TrackingConfig("sqlite:///tmp/m.db", "lab", 30.0, False)
    # the flag overrides the uri and keeps the rest; without a section it adds one
    assert apply_overrides(cfg, mlflow_uri="http://mlflow:5000").tracking == \
        TrackingConfig("http://mlflow:5000", "lab", 30.0, False)
    assert apply_overrides(load_config(text=CFG), mlflow_uri="sqlite:///x.db").tracking.uri == "sqlite:///x.db"


@pytest.mark.parametrize("section, key", [
    ("{experiment: x}", "tracking.uri"),
    ("{uri: 'file:///tmp/mlruns'}", "tracking.uri"),  # the deprecated file store
    ("{uri: 'sqlite:///'}", "tracking.uri"),
    ("{uri: 'sqlite:///m.db', timeout: 0s}", "tracking.timeout"),
    ("{uri: 'sqlite:///m.db', timeout: 2h}", "tracking.timeout"),
    ("{uri: 'sqlite:///m.db', artifacts: maybe}", "tracking.artifacts"),
    ("{uri: 'sqlite:///m.db', experiment: ''}", "tracking.experiment"),
    ("{uri: 'sqlite:///m.db', url: x}", "tracking.url"),
])
def test_bad_tracking_config_names_the_key(section, key):
    with pytest.raises(ConfigError) as e:
        load_config(text=CFG + f"tracking: {section}\n")
    assert e.value.key == key


def test_serve_refuses_a_bad_mlflow_uri(capsys):
    assert cli_main(["serve", "--mlflow-uri", "ftp://user:secret@host/x"]) == 2
    err = capsys.readouterr().err
    assert "--mlflow-uri" in err and "secret" not in err


def test_without_tracking_mlflow_is_never_imported():
    code = textwrap.dedent("""
        import sys, responses
        import detector.cli
        from detector.config import load_config
        from detector.persistence import MemoryPersistence
        from detector.store import ModelStore
        from tests.test_detector_api import CFG, NOW, PROM, matrix_handler, service_for, temps
        with responses.RequestsMock() as r:
            r.add_callback(responses.GET, PROM + "/api/v1/query_range", callback=matrix_handler(temps))
            svc = service_for(load_config(text=CFG), ModelStore(MemoryPersistence()), lambda: NOW)
            assert svc.fit()
            assert svc.plugins[0].store.versions("gpu_temperature") == [1]
        print("mlflow" in sys.modules, any(m.startswith("mlflow") for m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


# -- the background worker ----------------------------------------------------------------------
def test_worker_retries_one_run_then_skips_and_never_blocks():
    calls = []

    def flaky(rec, attempt):
        calls.append(dict(attempt))
        attempt.setdefault("run_id", f"run-{len(calls)}")
        if len(calls) < 3:
            raise ConnectionError("down")

    t = BackgroundTracker(flaky, retries=3, backoff=0.01)
    t.log_fit(record())
    assert t.flush(5)
    assert (t.errors, t.logged, t.skipped) == (2, 1, 0)
    assert calls[1:] == [{"run_id": "run-1"}, {"run_id": "run-1"}]  # retries complete the first run
    t.close()

    gate = threading.Event()
    stuck = BackgroundTracker(lambda rec, attempt: gate.wait(5), queue_size=1, retries=0)
    started = time.perf_counter()
    for v in range(5):  # one in the sink, one queued, three skipped: none of it waits
        stuck.log_fit(record(version=v))
        time.sleep(0.02)
    assert time.perf_counter() - started < 1
    assert stuck.skipped == 3
    gate.set()
    assert stuck.flush(5) and stuck.logged == 2
    stuck.close(1)


# -- a real MLflow --------------------------------------------------------------------------------
def _tracked_service(uri, store, clock, **kw):
    tracker = mlflow_tracker(TrackingConfig(uri), **kw)
    return service_for(load_config(text=CFG), store, lambda: clock[0], tracker=tracker), tracker


def _runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("rigwatch")
    return client, client.search_runs([exp.experiment_id], max_results=1000)


@pytest.mark.integration
@responses.activate
def test_each_fit_cycle_logs_one_run_per_detector_sqlite(tmp_path, monkeypatch):
    responses.add_callback(responses.GET, PROM + "/api/v1/query_range", callback=matrix_handler(temps))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store, clock = ModelStore(MemoryPersistence()), [NOW - 1800]
    svc, tracker = _tracked_service(uri, store, clock)
    assert svc.fit()
    clock[0] += 3600
    assert svc.fit()
    assert tracker.flush(60)
    tracker.close()
    client, runs = _runs(uri)
    by = {(r.data.tags["rigwatch.detector"], r.data.tags["rigwatch.store_version"]): r for r in runs}
    assert sorted(by) == [(d, v) for d in sorted(DETECTORS) for v in ("1", "2")]  # exactly one each
    run = by[("gpu_temperature", "2")]
    assert run.info.status == "FINISHED"
    meta = store.load(run.data.tags["rigwatch.detector"], 2).metadata
    p = run.data.params
    assert (p["model"], p["params.min_periods"], float(p["lookback"]), float(p["step"])) == ("robust_z", "5", 3600, 60)
    assert len(p["config_hash"]) == 16 and p["config_hash"] == by[("gpu_temperature", "1")].data.params["config_hash"]
    m = run.data.metrics
    assert (m["series"], m["series_fitted"], m["series_failed"], m["series_skipped"]) == (1, 1, 0, 0)
    assert m["fit_seconds"] >= 0
    # the refit went through the gate: its verdict and figures are on the run (the first fit had none)
    assert m["gate_holdout_seconds"] == 900 and m["gate_gate_seconds"] >= 0
    assert run.data.tags["rigwatch.gate_outcome"] == store_record_outcome(store, "gpu_temperature", 2)
    first = by[("gpu_temperature", "1")].data  # no champion to compare: promoted, nothing measured
    assert first.tags["rigwatch.gate_outcome"] == "promoted" and "gate_holdout_seconds" not in first.metrics
    assert run.data.tags["rigwatch.data_fingerprint"] == meta["data_fingerprint"]
    assert run.data.tags["rigwatch.version"]
    assert by[("gpu_xid", "1")].data.metrics["series"] == 0
    # artifacts: the version's metadata as saved, the per-series table (one artifact per version)
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == [
        "anomalous_series.png", "metadata.json", "model", "series.csv"]
    # a detector with no series has nothing to plot
    assert "anomalous_series.png" not in {a.path for a in client.list_artifacts(by[("gpu_xid", "1")].info.run_id)}
    assert 0 <= run.data.metrics["training_anomaly_rate"] <= 1
    got = json.loads(open(client.download_artifacts(run.info.run_id, "metadata.json", str(tmp_path))).read())
    assert got == json.loads(json.dumps(meta, default=str))
    rows = list(csv.DictReader(io.StringIO(open(client.download_artifacts(run.info.run_id, "series.csv",
                                                                          str(tmp_path))).read())))
    assert [(r["model"], json.loads(r["labels"])["uuid"]) for r in rows] == [("robust_z", "GPU-a")]
    # the embedded default keeps artifacts beside the database, not in the working directory
    assert (tmp_path / "mlartifacts").is_dir()
    # the version as a models-from-code pyfunc: it scores like the stored model it was built from
    import mlflow.pyfunc
    import pandas as pd

    # every fit a version of the registered model rigwatch-<detector>, pointing at its run
    versions = client.search_model_versions("name='rigwatch-gpu_temperature'")
    assert sorted((v.tags["rigwatch.store_version"], v.run_id) for v in versions) == \
        sorted((v, by[("gpu_temperature", v)].info.run_id) for v in ("1", "2"))
    # models:/ reads the process's tracking URI (MLflow's default is ./mlflow.db in the working directory)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # version 1: trained on the quiet 40/41 history, before the spike
    (number,) = [v.version for v in versions if v.tags["rigwatch.store_version"] == "1"]
    model = mlflow.pyfunc.load_model(f"models:/rigwatch-gpu_temperature/{number}")
    sid = rows[0]["series"]
    t = NOW + 60 * np.arange(3)
    y = np.array([40.0, 41.0, 95.0])
    got = model.predict(pd.DataFrame({"series": [sid] * 3, "t": t, "y": y}))
    ref = model_from_state(store.load("gpu_temperature", 1).state["series"][sid]["model"]).score(t, y)
    np.testing.assert_allclose(got["score"], ref.score)
    np.testing.assert_allclose(got["upper"], ref.upper)
    assert got["score"].iloc[-1] > 3 > got["score"].iloc[:2].max()  # the spike scores, the usual values do not
    with pytest.raises(ValueError, match="not in this version"):
        model.predict(pd.DataFrame({"series": ["nope"], "t": [NOW], "y": [1.0]}))


def store_record_outcome(store, detector, version):
    from detector.registry import Registry

    return [d["outcome"] for d in Registry(store).record(detector)["decisions"] if d["version"] == version][-1]


def _registry(svc):
    reg = CollectorRegistry(auto_describe=False)
    reg.register(DetectorCollector(lambda: svc.snapshot, svc.extra_families))
    return reg


@pytest.mark.integration
@responses.activate
def test_fit_tracked_over_http_and_survives_the_server_stopping(mlflow_server):  # noqa: F811
    url = mlflow_server.url
    responses.add_passthru(url)
    responses.add_callback(responses.GET, PROM + "/api/v1/query_range", callback=matrix_handler(temps))
    store, clock = ModelStore(MemoryPersistence()), [NOW - 1800]
    svc, tracker = _tracked_service(url, store, clock, retries=2, backoff=0.05)
    assert svc.fit()
    assert tracker.flush(60)
    client, runs = _runs(url)
    assert sorted(r.data.tags["rigwatch.detector"] for r in runs) == sorted(DETECTORS)
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id)} >= {"metadata.json", "model", "series.csv"}
    reg = _registry(svc)
    assert reg.get_sample_value("rigwatch_detector_tracking_errors_total") == 0

    with mlflow_server.down():
        clock[0] += 3600
        started = time.perf_counter()
        assert svc.fit()  # the fit neither fails nor waits for the tracking server
        assert time.perf_counter() - started < 2
        assert store.versions("gpu_temperature") == [1, 2]
        assert tracker.flush(30)
    # two detectors, a record and an alias job each, three tries each, every one refused; all skipped, counted
    assert reg.get_sample_value("rigwatch_detector_tracking_errors_total") == 12
    assert reg.get_sample_value("rigwatch_detector_tracking_queue") == 0
    assert (tracker.skipped, tracker.logged) == (4, 4)
    tracker.close()


def test_compose_mlflow_service_is_optional_local_and_on_a_volume():
    from tests.test_stack_compose import compose

    doc = compose()
    svc = doc["services"]["mlflow"]
    assert svc["profiles"] == ["tracking"]  # optional: the base stack is unchanged
    assert svc["image"].rsplit(":", 1)[1].startswith("v3.")
    args = dict(a.split("=", 1) for a in svc["command"][2:])
    assert args["--backend-store-uri"].startswith("sqlite:////mlflow/")  # not the deprecated file store
    assert args["--artifacts-destination"].startswith("/mlflow/")
    assert "mlflow:5000" in args["--allowed-hosts"].split(",")  # the detector reaches it by that name
    assert svc["volumes"] == ["mlflow-data:/mlflow"] and "mlflow-data" in doc["volumes"]
    assert all(str(p).startswith("127.0.0.1:") for p in svc["ports"])
