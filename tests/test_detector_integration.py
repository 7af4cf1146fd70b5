"""The detector against a real Prometheus holding backfilled synthetic history (written here as
OpenMetrics and loaded with promtool): `backtest` finds the injected incidents, `serve` publishes
scores, and survives Prometheus being stopped and restarted."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from harness.processes import backfill_openmetrics, free_port, wait_http_ok, wait_until
from harness.servers import PrometheusServer

pytestmark = pytest.mark.integration

STEP = 60
HOURS = 4
GPUS = [("0", "GPU-aaaa", "NVIDIA GeForce RTX 3090"), ("1", "GPU-bbbb", "NVIDIA GeForce RTX 3060")]
JOB = 'job="exp",instance="box:9842"'


def write_history(path: Path, end: float) -> dict:
    """A few hours of two GPUs and two containers, with injected incidents; returns their times."""
    rng = np.random.default_rng(7)
    ts = np.arange(end - HOURS * 3600, end + 1, STEP)
    n = len(ts)
    spike = (n - 80, n - 70)  # GPU 0 runs 30 degC hot for 10 minutes
    xid_at = n - 60  # GPU 1 reports Xid 79 (the series appears already at 1)...
    gone = (n - 58, n - 40)  # ...and its value series vanish for 18 minutes while gpu_up stays
    burst = (n - 30, n - 25)  # ollama restarts 5 times in 5 minutes
    fam: dict[str, list[str]] = {k: [] for k in ("gpu_temperature_celsius", "gpu_up", "gpu_xid_errors",
                                                 "docker_container_restarts")}
    for gpu, uuid, name in GPUS:
        lab = f'gpu="{gpu}",uuid="{uuid}",name="{name}",{JOB}'
        temp = 45 + rng.normal(0, 0.7, n)
        if gpu == "0":
            temp[spike[0]:spike[1]] += 30
        for i, t in enumerate(ts):
            lost = gpu == "1" and gone[0] <= i < gone[1]
            if not lost:
                fam["gpu_temperature_celsius"].append(f"gpu_temperature_celsius{{{lab}}} {temp[i]:.1f} {t:.0f}")
            fam["gpu_up"].append(f"gpu_up{{{lab}}} {0 if lost else 1} {t:.0f}")
            if gpu == "1" and i >= xid_at:
                fam["gpu_xid_errors"].append(f'gpu_xid_errors_total{{{lab},xid="79"}} 1 {t:.0f}')
    for container in ("ollama", "open-webui"):
        count = 0
        for i, t in enumerate(ts):
            if container == "ollama" and burst[0] <= i < burst[1]:
                count += 1
            fam["docker_container_restarts"].append(
                f'docker_container_restarts_total{{container="{container}",image="x",{JOB}}} {count} {t:.0f}')
    types = {"gpu_temperature_celsius": "gauge", "gpu_up": "gauge", "gpu_xid_errors": "counter",
             "docker_container_restarts": "counter"}
    with path.open("w") as f:
        for name, lines in fam.items():
            f.write(f"# TYPE {name} {types[name]}\n")
            f.write("\n".join(lines) + "\n")
        f.write("# EOF\n")
    return {"spike": ts[spike[0]], "xid": ts[xid_at], "gone": ts[gone[0]], "burst": ts[burst[0]],
            "start": ts[0], "end": ts[-1]}


CONFIG = """
prometheus: {{url: {url}, retries: 1, timeout: 3s}}
store: {{path: {store}}}
schedule: {{step: {step}, fit_every: 1h, lookback: 6h, context: 30m, warmup: 1h}}
detectors:
  - {{name: gpu_temperature, query: gpu_temperature_celsius, model: robust_z, direction: up, min_deviation: 5}}
  - {{name: gpu_xid, query: gpu_xid_errors_total, rule: counter_increase, params: {{window: 10m}}}}
  - {{name: gpu_vanished, query: timestamp(gpu_temperature_celsius), rule: series_vanished,
      heartbeat: timestamp(gpu_up), params: {{max_age: 150s}}}}
  - {{name: container_restarts, query: docker_container_restarts_total, rule: counter_increase,
      params: {{window: 15m, min_increase: 3}}}}
"""


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    d = tmp_path_factory.mktemp("history")
    end = float(int(time.time() // STEP * STEP) - 2 * STEP)
    truth = write_history(d / "history.om", end)
    backfill_openmetrics(d / "history.om", d / "tsdb")
    return d, truth


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _run(args, **kw):
    return subprocess.run([sys.executable, "-m", "detector.cli", *args], capture_output=True, text=True,
                          timeout=300, **kw)


def test_backtest_finds_injected_incidents_with_labels(history, tmp_path):
    d, truth = history
    with PrometheusServer(tmp_path / "prom", "global: {scrape_interval: 1h}\n", storage=d / "tsdb") as prom:
        cfg = tmp_path / "detector.yml"
        cfg.write_text(CONFIG.format(url=prom.url, store=tmp_path / "store", step="60s"))
        out = _run(["backtest", "--prometheus-url", prom.url, "--start", _iso(truth["start"]),
                    "--end", _iso(truth["end"] + 60), "--output", str(tmp_path / "r.json"), "--config", str(cfg),
                    "--plot", str(tmp_path / "plots")])
        assert out.returncode == 0, out.stderr
        assert "backtest" in out.stderr  # the progress bar
        report = json.loads((tmp_path / "r.json").read_text())
        # the same range with the built-in preset (no --config) runs too and exits 0
        out2 = _run(["backtest", "--prometheus-url", prom.url, "--start", _iso(truth["start"]),
                     "--end", _iso(truth["end"]), "--output", str(tmp_path / "r2.json"), "--no-progress"])
        assert out2.returncode == 0, out2.stderr
        preset = json.loads((tmp_path / "r2.json").read_text())
    inc = {(i["detector"], tuple(sorted(i["labels"].items()))): i for i in report["incidents"]}
    from detector.backtest import parse_rfc3339

    def check(detector, labels, at, max_delay=600):
        i = inc.get((detector, tuple(sorted(labels.items()))))
        assert i is not None, (detector, labels, report["incidents"])
        assert at <= parse_rfc3339(i["start"]) <= at + max_delay, (i, _iso(at))
        return i

    spike = check("gpu_temperature", {"gpu": "0"}, truth["spike"])
    assert parse_rfc3339(spike["end"]) <= truth["spike"] + 10 * 60  # tight: 10 bad minutes, no more
    check("gpu_xid", {"gpu": "1", "xid": "79"}, truth["xid"])  # first appearance at 1 counts
    check("gpu_vanished", {"gpu": "1"}, truth["gone"])
    check("container_restarts", {"container": "ollama"}, truth["burst"])
    assert len(report["incidents"]) == 4, report["incidents"]
    assert len(report["plots"]) == 4 and all(Path(p).stat().st_size > 1000 for p in report["plots"])
    for key in ("generated_at", "range", "params", "summary"):
        assert key in report
    found = {(i["detector"], i["labels"].get("gpu"), i["labels"].get("container")) for i in preset["incidents"]}
    assert ("gpu_xid", "1", None) in found and ("container_restarts", None, "ollama") in found


def test_backtest_usage_errors_exit_2(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("detectors: [{name: a, query: up, model: prophet}]")
    base = ["backtest", "--prometheus-url", "http://127.0.0.1:1", "--output", str(tmp_path / "r.json")]
    out = _run([*base, "--start", "2026-01-01T00:00:00Z", "--end", "2026-01-02T00:00:00Z", "--config", str(bad)])
    assert out.returncode == 2 and "detectors[0].model" in out.stderr
    out = _run([*base, "--start", "yesterday", "--end", "2026-01-02T00:00:00Z"])
    assert out.returncode == 2 and "--start" in out.stderr
    out = _run(["backtest", "--start", "2026-01-01T00:00:00Z"])
    assert out.returncode == 2 and "required" in out.stderr
    assert not (tmp_path / "r.json").exists()


def _metric(text: str, name: str, **labels) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


_wait = wait_until


def test_serve_publishes_and_survives_prometheus_outage(history, tmp_path):
    d, truth = history
    port = free_port()
    prom = PrometheusServer(tmp_path / "prom", "global: {scrape_interval: 1h}\n", storage=d / "tsdb")
    prom.start()
    cfg = tmp_path / "detector.yml"
    cfg.write_text(CONFIG.format(url=prom.url, store=tmp_path / "store", step="5s"))
    log = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen([sys.executable, "-m", "detector.cli", "serve", "--config", str(cfg), "--listen",
                              f"127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, "RIGWATCH_API_TOKEN": "t0ken"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(url + "/healthz", proc=serve)
        _wait(lambda: requests.get(url + "/readyz", timeout=2).status_code == 200, what="/readyz")
        text = _wait(lambda: (lambda t: t if _metric(t, "rigwatch_detector_last_success_timestamp_seconds",
                                                     task="score") else None)(
            requests.get(url + "/metrics", timeout=2).text), what="a scoring pass")
        assert _metric(text, "rigwatch_anomaly_score", detector="gpu_temperature", gpu="0", uuid="GPU-aaaa",
                       job="exp", instance="box:9842", model="robust_z") is not None
        assert _metric(text, "rigwatch_detector_source_up", source="prometheus") == 1
        assert _metric(text, "rigwatch_detector_series_tracked") >= 4
        models = requests.get(url + "/api/v1/models", timeout=2).json()["models"]
        assert {m["detector"] for m in models} == {"gpu_temperature", "gpu_xid", "gpu_vanished",
                                                    "container_restarts"}
        assert all(m["version"] == 1 for m in models)
        assert requests.post(url + "/api/v1/retrain", timeout=2).status_code == 401
        r = requests.post(url + "/api/v1/retrain", headers={"Authorization": "Bearer t0ken"}, timeout=2)
        assert r.status_code == 202
        assert requests.get(url + "/api/v1/anomalies?limit=0", timeout=2).status_code == 400

        prom.stop()  # the outage
        down = _wait(lambda: (lambda t: t if _metric(t, "rigwatch_detector_source_up", source="prometheus") == 0
                              else None)(requests.get(url + "/metrics", timeout=2).text), what="source_up 0")
        errors = _metric(down, "rigwatch_detector_source_errors_total", source="prometheus")
        assert errors >= 1
        assert requests.get(url + "/readyz", timeout=2).status_code == 503
        assert serve.poll() is None
        before = _metric(down, "rigwatch_detector_last_success_timestamp_seconds", task="score")

        prom.start()  # same port, same storage
        back = _wait(lambda: (lambda t: t if _metric(t, "rigwatch_detector_source_up", source="prometheus") == 1
                              and _metric(t, "rigwatch_detector_last_success_timestamp_seconds", task="score")
                              > before else None)(requests.get(url + "/metrics", timeout=2).text),
                     what="recovery")
        assert _metric(back, "rigwatch_detector_source_errors_total", source="prometheus") >= errors
        assert requests.get(url + "/readyz", timeout=2).status_code == 200
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=20)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
        log.close()
        prom.stop()
    assert serve.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
    # the fitted models were saved with their metadata: a restart would not need a refit
    metas = list((tmp_path / "store").glob("*/v*.json"))
    assert metas and all("training_window" in json.loads(p.read_text()) for p in metas)
