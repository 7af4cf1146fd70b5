"""Reproducible data stages against a real Prometheus holding a simulated day (`rigwatch-sim history`,
backfilled with promtool), with the built-in preset (robust, seasonal, thermal regression, isolation
forest and rules): `dataset export` writes the stages and a manifest whose hashes hold; `fit --dataset`
gives the very model state the live fit from Prometheus gives over the same window; a changed file is
refused; every version records the fingerprint of what it was fitted on."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from detector.config import load_config
from detector.fetch import fetch_series
from detector.metric_detector import training_data
from detector.metric_plugin import MetricPlugin
from detector.persistence import FilePersistence
from detector.plugins import prometheus_client
from detector.store import ModelStore
from detector.timefmt import iso
from harness.processes import backfill_openmetrics
from harness.servers import PrometheusServer

pytestmark = pytest.mark.integration
DAY = 86400


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "detector.cli", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A simulated day in a real Prometheus, the live fit's window over it exported, and the live fit
    itself (the preset's 7-day lookback ending at the day's end) into its own store."""
    d = tmp_path_factory.mktemp("dataset")
    day0 = (int(time.time()) // DAY) * DAY - 2 * DAY
    out = subprocess.run([sys.executable, "-m", "exporter.sim.cli", "history", "--out", str(d / "h"),
                          "--days", "1", "--seed", "5", "--start", iso(day0)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    backfill_openmetrics(d / "h" / "metrics.om", d / "tsdb")
    cfg = load_config(None)
    end = float(day0 + DAY - 1800)  # on the step grid, inside the day
    start = end - cfg.schedule.lookback
    with PrometheusServer(d / "prom", "global: {scrape_interval: 1h}\n", storage=d / "tsdb") as prom:
        r = _cli("dataset", "export", "--prometheus-url", prom.url, "--start", iso(start), "--end", iso(end),
                 "--out", str(d / "ds"))
        assert r.returncode == 0, r.stderr[-3000:]
        client = prometheus_client(cfg, url=prom.url)
        live = MetricPlugin(cfg, client, store=ModelStore(FilePersistence(d / "live")))
        # the live fit's window ends on the last full step before `now`: exactly `end`
        assert live._grid_end(end + cfg.schedule.step * 0.75) == end
        assert live.fit(end + cfg.schedule.step * 0.75)
        direct = {det.name: fetch_series(client, det, start, end, cfg.schedule.step)
                  for det in cfg.detectors if det.enabled}
        thermal = next(det for det in cfg.detectors if det.name == "gpu_thermal")
        answer = client.query_range(thermal.query, start, end, cfg.schedule.step)
        r = _cli("backtest", "--prometheus-url", prom.url, "--start", iso(start), "--end", iso(end),
                 "--output", str(d / "report.json"), "--no-progress")
        assert r.returncode == 0, r.stderr[-3000:]
    return {"dir": d, "ds": d / "ds", "cfg": cfg, "start": start, "end": end, "direct": direct,
            "thermal_answer": answer, "report": json.loads((d / "report.json").read_text())}


def test_export_writes_three_stages_and_a_manifest_whose_hashes_hold(exported):
    ds, cfg = exported["ds"], exported["cfg"]
    manifest = json.loads((ds / "manifest.json").read_text())
    on_disk = {str(p.relative_to(ds)) for p in ds.rglob("*.parquet")}
    assert set(manifest["files"]) == on_disk
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((ds / rel).read_bytes()).hexdigest() == digest, rel
    assert manifest["fingerprint"] == hashlib.sha256("\n".join(sorted(manifest["files"].values())).encode()).hexdigest()
    assert manifest["step"] == cfg.schedule.step
    assert (manifest["range"]["start"], manifest["range"]["end"]) == (exported["start"], exported["end"])
    assert manifest["rigwatch_version"] and len(manifest["config_sha256"]) == 64
    enabled = [det for det in cfg.detectors if det.enabled]
    assert set(manifest["detectors"]) == {det.name for det in enabled}
    for det in enabled:
        assert manifest["detectors"][det.name]["queries"]["query"] == det.query
        for stage in ("processed", "features"):
            assert f"{stage}/{det.name}.parquet" in on_disk
        assert f"ingested/{det.name}/query.parquet" in on_disk
    assert sum(m["series"] for m in manifest["detectors"].values()) > 10  # the sim's GPUs and containers


def test_stages_hold_what_prometheus_answered_and_the_models_are_fed(exported):
    ds = exported["ds"]
    # ingested: the query's answer as read
    ing = pd.read_parquet(ds / "ingested/gpu_thermal/query.parquet")
    answer = exported["thermal_answer"]
    assert len(answer) >= 2 and len(ing) == sum(len(s.t) for s in answer)
    np.testing.assert_array_equal(ing["t"].to_numpy(), np.concatenate([s.t for s in answer]))
    np.testing.assert_array_equal(ing["y"].to_numpy(), np.concatenate([s.y for s in answer]))
    # processed: the detector's series (features joined on the target's steps), bit for bit
    proc = pd.read_parquet(ds / "processed/gpu_joint.parquet")
    direct = exported["direct"]["gpu_joint"]
    assert list(proc["series"].unique()) == list(direct)
    for sid, sd in direct.items():
        rows = proc[proc["series"] == sid]
        np.testing.assert_array_equal(rows["t"].to_numpy(), sd.t)
        np.testing.assert_array_equal(rows["y"].to_numpy(), sd.y)
        np.testing.assert_array_equal(rows[[f"X.{n}" for n in sd.feature_names]].to_numpy(), sd.X)
    # features: the isolation forest's design (the value beside its features)
    feats = pd.read_parquet(ds / "features/gpu_joint.parquet")
    design = feats[[c for c in feats.columns if c.startswith("design.")]].to_numpy()
    assert [c for c in feats.columns if c.startswith("design.")][0] == "design.value"
    expect = np.vstack([np.column_stack([sd.y, sd.X]) for sd in direct.values()])
    np.testing.assert_array_equal(design, expect)
    # the vanish rule's series on the full step grid, gaps as NaN
    vanished = pd.read_parquet(ds / "processed/gpu_vanished.parquet")
    for _, g in vanished.groupby("series"):
        assert np.all(np.diff(g["t"].to_numpy()) == exported["cfg"].schedule.step)


def _states(store_dir: Path) -> dict[str, tuple[dict, dict]]:
    store = ModelStore(FilePersistence(store_dir))
    out = {}
    for det in sorted(p.name for p in store_dir.iterdir() if p.is_dir()):
        mv = store.load_latest(det)
        out[det] = (mv.state, mv.metadata)
    return out


def _assert_same(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0, equal_nan=True, err_msg=where)
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b), where
    else:
        assert a == b, where


def test_fit_from_dataset_gives_the_live_fits_model_state(exported, tmp_path):
    r = _cli("fit", "--dataset", str(exported["ds"]), "--store", str(tmp_path / "offline"))
    assert r.returncode == 0, r.stderr[-3000:]
    live, offline = _states(exported["dir"] / "live"), _states(tmp_path / "offline")
    assert set(live) == set(offline) == {det.name for det in exported["cfg"].detectors if det.enabled}
    fitted = 0
    for name in live:
        _assert_same(live[name][0], offline[name][0], name)
        fitted += len(live[name][0]["series"])
        (lm, om) = live[name][1], offline[name][1]
        assert lm["training_data"]["fingerprint"] == om["training_data"]["fingerprint"]
        assert lm["data_fingerprint"] == om["data_fingerprint"]
        assert lm["training_window"] == om["training_window"]
    assert fitted > 10
    # every version records what it was fitted on, and where that came from
    fp = json.loads((exported["ds"] / "manifest.json").read_text())["fingerprint"]
    for name in live:
        assert live[name][1]["training_data"]["source"] == "prometheus"
        assert offline[name][1]["training_data"]["source"] == "dataset"
        assert offline[name][1]["training_data"]["dataset_fingerprint"] == fp
        assert len(offline[name][1]["training_data"]["fingerprint"]) == 64


def test_fit_refuses_a_dataset_changed_after_export(exported, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(exported["ds"], ds)
    target = ds / "processed/gpu_thermal.parquet"
    df = pd.read_parquet(target)
    df.loc[df.index[3], "y"] += 1.0  # one reading changed: a valid Parquet file, other data
    df.to_parquet(target, index=False)
    r = _cli("fit", "--dataset", str(ds), "--store", str(tmp_path / "store"))
    assert r.returncode == 2
    assert str(target) in r.stderr and "sha256" in r.stderr
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())
    target.unlink()
    r = _cli("fit", "--dataset", str(ds), "--store", str(tmp_path / "store"))
    assert r.returncode == 2 and str(target) in r.stderr and "missing" in r.stderr


def test_fit_refuses_a_config_asking_for_other_data(exported, tmp_path):
    preset = (Path(__file__).parents[1] / "detector/default_preset.yml").read_text()
    other = tmp_path / "other.yml"
    other.write_text(preset.replace("step: 60s", "step: 30s", 1))
    r = _cli("fit", "--dataset", str(exported["ds"]), "--store", str(tmp_path / "s"), "--config", str(other))
    assert r.returncode == 2 and "schedule.step" in r.stderr
    other.write_text(preset.replace("query: gpu_temperature_celsius", "query: gpu_temperature_celsius * 2", 1))
    r = _cli("fit", "--dataset", str(exported["ds"]), "--store", str(tmp_path / "s"), "--config", str(other))
    assert r.returncode == 2 and "queries differ" in r.stderr, r.stderr


def test_export_usage_errors_exit_2(tmp_path):
    r = _cli("dataset", "export", "--prometheus-url", "127.0.0.1:9090", "--start", "2026-11-20T00:00:00Z",
             "--end", "2026-11-21T00:00:00Z", "--out", str(tmp_path / "ds"))
    assert r.returncode == 2 and "--prometheus-url" in r.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    r = _cli("dataset", "export", "--prometheus-url", "http://127.0.0.1:9", "--start", "2026-11-20T00:00:00Z",
             "--end", "2026-11-21T00:00:00Z", "--out", str(tmp_path / "full"))
    assert r.returncode == 2 and "--out" in r.stderr
    r = _cli("fit", "--dataset", str(tmp_path / "nothing"), "--store", str(tmp_path / "s"))
    assert r.returncode == 2 and "manifest.json" in r.stderr


def test_training_fingerprint_follows_every_value_time_and_series():
    from detector.fetch import SeriesData

    t = np.arange(5.0) * 60
    base = {"a": SeriesData({"gpu": "0"}, t, np.arange(5.0), np.ones((5, 1)), ["f"])}
    fp = training_data(base, t[-1])["fingerprint"]
    assert fp == training_data({"a": SeriesData({"gpu": "0"}, t.copy(), np.arange(5.0), np.ones((5, 1)), ["f"])},
                               t[-1])["fingerprint"]
    changed = [
        {"a": SeriesData({}, t, np.arange(5.0) + np.eye(5)[2], np.ones((5, 1)), ["f"])},
        {"a": SeriesData({}, t + 60, np.arange(5.0), np.ones((5, 1)), ["f"])},
        {"b": SeriesData({}, t, np.arange(5.0), np.ones((5, 1)), ["f"])},
        {"a": SeriesData({}, t, np.arange(5.0), np.zeros((5, 1)), ["f"])},
    ]
    for data in changed:
        assert training_data(data, t[-1] + 60)["fingerprint"] != fp


def test_explore_notebook_runs_on_an_exported_sim_dataset(exported, monkeypatch):
    """notebooks/explore.ipynb through nbclient on the dataset: every cell runs, the band is drawn, and
    the incidents it finds from the dataset alone are the backtest's from Prometheus."""
    import nbformat
    from nbclient import NotebookClient

    root = Path(__file__).parents[1]
    nb = nbformat.read(root / "notebooks/explore.ipynb", as_version=4)
    monkeypatch.setenv("RIGWATCH_DATASET", str(exported["ds"]))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(root)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    manifest = json.loads((exported["ds"] / "manifest.json").read_text())
    assert f"series in total: {sum(d['series'] for d in manifest['detectors'].values())}" in text
    assert "bands drawn: 2" in text  # the sim's two GPUs
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert f"incidents: {len(exported['report']['incidents'])}\n" in text, text


def test_export_with_loki_adds_the_log_lines_as_read(tmp_path):
    """--loki-url: the range's log lines (the config's loki query) in ingested/logs.parquet, hashed in
    the manifest like every other file; lines outside the range are not exported."""
    import requests

    from harness.loki_standin import LokiTestServer

    t0 = 1_790_000_000
    lines = [(t0 + 10, "ssh.service", "Failed password for root from 203.0.113.7 port 22 ssh2"),
             (t0 + 20, "ollama.service", 'level=ERROR msg="CUDA error: out of memory"'),
             (t0 + 30, "ssh.service", "Accepted publickey for admin"),
             (t0 + 7200, "ssh.service", "after the range")]
    with LokiTestServer() as loki, PrometheusServer(tmp_path / "prom", "global: {scrape_interval: 1h}\n") as prom:
        streams = [{"stream": {"job": "systemd-journal", "unit": unit}, "values": [[str(t * 10**9), msg]]}
                   for t, unit, msg in lines]
        assert requests.post(loki.url + "/loki/api/v1/push", json={"streams": streams}, timeout=5).status_code == 204
        r = _cli("dataset", "export", "--prometheus-url", prom.url, "--loki-url", loki.url, "--start", iso(t0),
                 "--end", iso(t0 + 3600), "--out", str(tmp_path / "ds"))
        assert r.returncode == 0, r.stderr[-3000:]
        bad = _cli("dataset", "export", "--prometheus-url", prom.url, "--loki-url", "loki:3100", "--start",
                   iso(t0), "--end", iso(t0 + 3600), "--out", str(tmp_path / "ds2"))
        assert bad.returncode == 2 and "--loki-url" in bad.stderr and "loki.url" in bad.stderr
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["logs"]["lines"] == 3 and manifest["logs"]["loki_url"] == loki.url
    assert manifest["files"]["ingested/logs.parquet"] == \
        hashlib.sha256((tmp_path / "ds/ingested/logs.parquet").read_bytes()).hexdigest()
    df = pd.read_parquet(tmp_path / "ds/ingested/logs.parquet")
    assert list(df["t"]) == [t for t, *_ in lines[:3]]
    assert list(df["message"]) == [m for *_, m in lines[:3]]
    assert [json.loads(x)["unit"] for x in df["labels"]] == [u for _, u, _ in lines[:3]]
