"""End to end on the simulated AI box: `rigwatch-sim history` (every incident kind and the benign
look-alikes, compressed into 3 days, on seed 3 — a seed not used while tuning the preset) is
backfilled into a real Prometheus with promtool; `backtest` with the built-in preset must report
every injected incident with its gpu/container label within 10 minutes of its start, at most one
false incident per simulated day and nothing on the look-alikes; `serve` fits on the same history
and publishes per-GPU scores."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from detector.evaluation import evaluate
from harness.processes import backfill_openmetrics, free_port, wait_http_ok
from harness.servers import PrometheusServer

pytestmark = pytest.mark.integration

SEED = 3
DAYS = 3
SCHEDULE = """
incidents:
  - {kind: ssh_scanner_noise, at: 6h, duration: 30m, attempts: 4}
  - {kind: fan_failure, at: 15h, duration: 45m, gpu: 0}
  - {kind: big_model_load, at: 20h, duration: 40m, gpu: 0, model: "gemma2:27b"}
  - {kind: planned_reboot, at: 26h, duration: 4m}
  - {kind: vram_leak, at: 31h, duration: 90m, gpu: 0, container: ollama, rate_gib_per_hour: 5.0}
  - {kind: container_restart_loop, at: 36h, duration: 25m, container: open-webui, period: 40s}
  - {kind: full_power_hours, at: 39h, duration: 4h, gpu: 0}
  - {kind: power_brake, at: 44h, duration: 30m, gpu: 0}
  - {kind: gpu_lost, at: 47h, duration: 1h, gpu: 1}
  - {kind: unit_failure_at_boot, at: 50h, duration: 3m}
  - {kind: degraded_cooling, at: 52h, duration: 3h, gpu: 1, factor: 1.8}
  - {kind: gpu_stuck, at: 57h, duration: 1h, gpu: 0}
  - {kind: hw_slowdown, at: 60h, duration: 30m, gpu: 1}
  - {kind: container_restart_loop, at: 63h, duration: 20m, container: ollama, period: 60s}
  - {kind: fan_failure, at: 66h, duration: 40m, gpu: 1}
"""


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@pytest.fixture(scope="module")
def sim_history(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    (d / "schedule.yml").write_text(SCHEDULE)
    # midnight UTC: the simulated daily rhythm then lines up the same way whenever the test runs
    start = (int(time.time()) // 86400) * 86400 - DAYS * 86400
    out = subprocess.run([sys.executable, "-m", "exporter.sim.cli", "history", "--out", str(d / "h"),
                          "--days", str(DAYS), "--seed", str(SEED), "--start", _iso(start),
                          "--schedule", str(d / "schedule.yml")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    backfill_openmetrics(d / "h" / "metrics.om", d / "tsdb")
    return d


def test_backtest_finds_every_injected_incident_on_unseen_seed(sim_history, tmp_path):
    d = sim_history
    truth = json.loads((d / "h" / "truth.json").read_text())
    with PrometheusServer(tmp_path / "prom", "global: {scrape_interval: 1h}\n", storage=d / "tsdb") as prom:
        out = subprocess.run([sys.executable, "-m", "detector.cli", "backtest", "--prometheus-url", prom.url,
                              "--start", truth["start"], "--end", truth["end"], "--output",
                              str(tmp_path / "report.json"), "--no-progress"],
                             capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    result = evaluate(report, truth)
    (tmp_path / "evaluation.json").write_text(json.dumps(result, indent=1))
    s = result["summary"]
    assert s["injected"] == 10  # every non-benign kind, all after the warm-up
    assert result["missed"] == [], json.dumps(result["missed"], indent=1)
    assert all(f["delay_seconds"] <= 600 for f in result["found"])
    assert result["on_benign"] == [], json.dumps(result["on_benign"], indent=1)
    assert s["false"] <= s["days"], json.dumps(result["false"], indent=1)
    for inc in report["incidents"]:  # identifying labels only, never uuids
        assert "uuid" not in inc["labels"] and "job" not in inc["labels"]


def test_serve_fits_on_sim_history_and_publishes(sim_history, tmp_path):
    d = sim_history
    port = free_port()
    with PrometheusServer(tmp_path / "prom", "global: {scrape_interval: 1h}\n", storage=d / "tsdb") as prom:
        proc = subprocess.Popen([sys.executable, "-m", "detector.cli", "serve", "--prometheus-url", prom.url,
                                 "--listen", f"127.0.0.1:{port}", "--store", str(tmp_path / "store")],
                                stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT,
                                env={k: v for k, v in os.environ.items() if k != "RIGWATCH_API_TOKEN"})
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http_ok(url + "/healthz", proc=proc)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and requests.get(url + "/readyz", timeout=5).status_code != 200:
                time.sleep(1)
            assert requests.get(url + "/readyz", timeout=5).status_code == 200, \
                (tmp_path / "serve.log").read_text()[-3000:]
            models = {m["detector"]: m for m in requests.get(url + "/api/v1/models", timeout=5).json()["models"]}
            assert models["gpu_thermal"]["series_by_model"].get("thermal") == 2
            assert models["gpu_thermal"]["version"] == 1
            text = requests.get(url + "/metrics", timeout=5).text
            assert 'rigwatch_detector_model_info{detector="gpu_thermal",model="thermal",version="1"} 1.0' in text
            assert 'rigwatch_detector_source_up{source="prometheus"} 1.0' in text
            # no token configured: retrain is refused with a hint, never open
            r = requests.post(url + "/api/v1/retrain", timeout=5)
            assert r.status_code == 503 and "RIGWATCH_API_TOKEN" in r.json()["error"]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    assert proc.returncode == 0
