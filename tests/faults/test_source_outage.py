"""Prometheus goes away and comes back; a bad query belongs to its detector.

Against a real Prometheus holding a few backfilled hours. The service runs in-process with an
injected clock (so "later" is a chosen time, not a sleep), the start-up checks as the real
`rigwatch-detector serve` process.

Prometheus stopped mid-run and restarted on the same port and data dir: here in-process, and with
the real serve process in tests/test_detector_integration.py::
test_serve_publishes_and_survives_prometheus_outage.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from detector.api import create_app
from detector.config import ConfigError, load_config
from detector.health import SourceHealth
from detector.persistence import MemoryPersistence
from detector.plugins import build_service, prometheus_client
from detector.promclient import PromClient, PromError, PromQueryError
from detector.query_check import QueryChecker
from detector.store import ModelStore
from harness.processes import backfill_openmetrics, free_port, wait_http_ok
from harness.servers import PrometheusServer

pytestmark = pytest.mark.integration

STEP = 60
HOURS = 3
LAB = 'gpu="0",uuid="GPU-aaaa",job="exp",instance="box:9842"'


def _history(path: Path, end: float) -> None:
    """GPU 0's temperature and power for HOURS; from end-90m to end-60m a second power series with
    the same gpu label makes `temperature / on(gpu) power` an execution error (many-to-many)."""
    ts = range(int(end - HOURS * 3600), int(end) + 1, STEP)
    temp = [f"gpu_temperature_celsius{{{LAB}}} {45 + (t // STEP) % 3} {t}" for t in ts]
    power = [f"gpu_power_watts{{{LAB}}} {100 + (t // STEP) % 5} {t}" for t in ts]
    power += [f'gpu_power_watts{{gpu="0",uuid="GPU-aaaa",job="exp",instance="other:9842"}} 90 {t}'
              for t in ts if end - 90 * 60 <= t <= end - 60 * 60]
    path.write_text("# TYPE gpu_temperature_celsius gauge\n" + "\n".join(temp) + "\n"
                    "# TYPE gpu_power_watts gauge\n" + "\n".join(power) + "\n# EOF\n")


@pytest.fixture(scope="module")
def prom(tmp_path_factory):
    d = tmp_path_factory.mktemp("outage")
    end = float(int(time.time() // STEP * STEP) - 2 * STEP)
    _history(d / "history.om", end)
    backfill_openmetrics(d / "history.om", d / "tsdb")
    with PrometheusServer(d / "prom", "global: {scrape_interval: 1h}\n", storage=d / "tsdb") as server:
        yield server, end


CONFIG = """
prometheus: {{url: "{url}", retries: 0, timeout: 3s}}
schedule: {{step: 60s, fit_every: 1h, lookback: 30m, context: 10m, warmup: 30m}}
detectors:
  - {{name: temp, query: gpu_temperature_celsius, model: robust_z}}
  - {{name: typo, query: "rate(gpu_temperature_celsius[5m", model: robust_z}}
  - {{name: per_watt, query: "gpu_temperature_celsius / on(gpu) gpu_power_watts", model: robust_z}}
  - {{name: power, query: gpu_power_watts, model: robust_z}}
  - {{name: vanished, query: timestamp(gpu_temperature_celsius), rule: series_vanished,
      heartbeat: "timestamp(gpu_up{{", params: {{max_age: 150s}}}}
"""


def _good_config(url: str) -> str:
    """CONFIG without its bad queries."""
    return "\n".join(line for line in CONFIG.format(url=url).splitlines()
                     if "typo" not in line and "vanished" not in line and "heartbeat" not in line)


def _service(clock, *, text: str | None = None, path: Path | None = None):
    """The serve-time service (hot reload of `path` if given) and a test client of its API."""
    cfg = load_config(path, text=text)
    health = SourceHealth()
    client = prometheus_client(cfg, health)
    svc = build_service(cfg, client=client, health=health, store=ModelStore(MemoryPersistence()), clock=clock,
                        config_path=str(path) if path else None)
    return svc, create_app(svc).test_client()


def _metric(client, name: str, **labels) -> float | None:
    text = client.get("/metrics").get_data(as_text=True)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def test_prometheus_tells_a_refused_query_from_an_unavailable_source(prom):
    server, end = prom
    errors: list[PromError] = []
    client = PromClient(server.url, retries=0, on_error=errors.append)
    with pytest.raises(PromQueryError) as refused:
        client.query_range("rate(gpu_temperature_celsius[5m", end - 600, end, STEP)
    assert refused.value.status == 400 and refused.value.error_type == "bad_data"
    with pytest.raises(PromQueryError) as failed:  # a range vector is no range query
        client.query_range("gpu_temperature_celsius[5m]", end - 600, end, STEP)
    assert failed.value.error_type == "bad_data"
    with pytest.raises(PromQueryError) as execution:  # data-dependent: two power series for one gpu
        client.query_range("gpu_temperature_celsius / on(gpu) gpu_power_watts", end - 80 * 60, end - 70 * 60, STEP)
    assert execution.value.status == 422 and execution.value.error_type == "execution"
    assert errors == []  # none of these is the source's error
    with pytest.raises(PromError) as down:
        PromClient(f"http://127.0.0.1:{free_port()}", retries=0, on_error=errors.append).query("up")
    assert not isinstance(down.value, PromQueryError) and len(errors) == 1


def test_a_refused_query_pauses_only_its_detector(prom, caplog):
    server, end = prom
    now = [end - 100 * 60]  # before the duplicate power series: per_watt's query still runs
    svc, api = _service(lambda: now[0], text=CONFIG.format(url=server.url))
    caplog.set_level(logging.ERROR, logger="detector.metric_plugin")
    assert svc.fit() is True  # typo and vanished (bad heartbeat) fail; the pass goes on
    now[0] += 3 * STEP
    assert svc.score() is True
    fitted = {m["detector"] for m in svc.models() if m["last_fit"]}
    assert fitted == {"temp", "per_watt", "power"}  # the detectors after the bad ones too
    scored = {s.detector for s in svc.snapshot.scores}
    assert scored == {"temp", "per_watt", "power"}
    assert _metric(api, "rigwatch_detector_source_up", source="prometheus") == 1
    assert _metric(api, "rigwatch_detector_source_errors_total", source="prometheus") == 0
    assert api.get("/readyz").status_code == 200
    assert _metric(api, "rigwatch_detector_query_ok", detector="typo") == 0
    assert _metric(api, "rigwatch_detector_query_ok", detector="vanished") == 0
    assert _metric(api, "rigwatch_detector_query_ok", detector="temp") == 1
    typo_errors = _metric(api, "rigwatch_detector_query_errors_total", detector="typo")
    assert typo_errors >= 1 and _metric(api, "rigwatch_detector_query_errors_total", detector="temp") == 0
    assert "typo" in caplog.text and "detectors[1].query" in caplog.text
    assert "vanished" in caplog.text and "detectors[4].heartbeat" in caplog.text
    assert "unavailable" not in caplog.text

    svc.score()  # paused, not dropped: retried every pass (logged once)
    assert _metric(api, "rigwatch_detector_query_errors_total", detector="typo") > typo_errors
    assert caplog.text.count("detectors[1].query") == 1

    # later the data makes per_watt's query fail (two power series for one GPU): it alone pauses
    now[0] = end - 80 * 60
    assert svc.score() is True
    assert _metric(api, "rigwatch_detector_query_ok", detector="per_watt") == 0
    assert _metric(api, "rigwatch_detector_source_up", source="prometheus") == 1
    assert {s.detector for s in svc.snapshot.scores if s.t > end - 90 * 60} == {"temp", "power"}
    assert "detectors[2].query" in caplog.text and "execution" in caplog.text

    # the duplicate is gone from its window: it resumes on its own
    now[0] = end - 40 * 60
    assert svc.score() is True
    assert _metric(api, "rigwatch_detector_query_ok", detector="per_watt") == 1
    assert "per_watt" in {s.detector for s in svc.snapshot.scores if s.t > end - 50 * 60}
    assert api.get("/readyz").status_code == 200


def test_query_check_names_the_refused_key(prom):
    server, end = prom
    checker = QueryChecker(PromClient(server.url, retries=0), clock=lambda: end)
    good = "detectors:\n  - {name: temp, query: gpu_temperature_celsius, model: robust_z}\n"
    assert checker.check(load_config(text=good)) is True
    cases = {
        "detectors[1].query": "  - {name: t2, query: 'gpu_temperature_celsius[5m]', model: robust_z}\n",
        "detectors[1].features.power": "  - {name: th, query: gpu_temperature_celsius, model: thermal,"
                                       " features: {power: 'rate(gpu_power_watts[5m'}}\n",
        "detectors[1].heartbeat": "  - {name: v, query: timestamp(gpu_temperature_celsius), "
                                  "rule: series_vanished, heartbeat: 'timestamp(gpu_up{'}\n",
    }
    for key, det in cases.items():
        with pytest.raises(ConfigError) as e:
            checker.check(load_config(text="detectors:\n  - {name: temp, query: up, model: robust_z}\n" + det))
        assert e.value.key == key and "bad_data" in str(e.value)
    disabled = "  - {name: unused, query: 'rate(x[5m', model: robust_z, enabled: false}\n"
    assert checker.check(load_config(text="detectors:\n" + disabled)) is True  # disabled: not run, not checked
    unreachable = QueryChecker(PromClient(f"http://127.0.0.1:{free_port()}", retries=0))
    assert unreachable.check(load_config(text=good + "  - {name: b, query: 'rate(x[5m', model: robust_z}\n")) \
        is False  # not checked, no error: start-up goes on


def _serve(cfg: Path, port: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "detector.cli", "serve", "--config", str(cfg), "--listen",
                             f"127.0.0.1:{port}", "--store", str(cfg.parent / "store")],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def test_serve_refuses_a_query_prometheus_refuses(prom, tmp_path):
    server, _ = prom
    cfg = tmp_path / "detector.yml"
    cfg.write_text(CONFIG.format(url=server.url))
    out = subprocess.run([sys.executable, "-m", "detector.cli", "serve", "--config", str(cfg),
                          "--listen", f"127.0.0.1:{free_port()}", "--store", str(tmp_path / "store")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "detectors[1].query" in out.stderr and "bad_data" in out.stderr
    assert "Traceback" not in out.stderr


def test_serve_starts_while_prometheus_is_unreachable(tmp_path):
    cfg = tmp_path / "detector.yml"
    cfg.write_text(CONFIG.format(url=f"http://127.0.0.1:{free_port()}"))  # typo and all: not checkable now
    port = free_port()
    serve = _serve(cfg, port, tmp_path / "serve.log")
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", proc=serve)
        assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=3).status_code == 503
        assert serve.poll() is None
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=20)
    log = (tmp_path / "serve.log").read_text()
    assert serve.returncode == 0, log[-3000:]
    assert "not checked" in log and "Traceback" not in log


def _rewrite(path: Path, text: str, tick: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(tick * 10**9, tick * 10**9))  # a new mtime even within one clock tick


def test_hot_reload_refuses_what_start_up_refuses(prom, tmp_path, caplog):
    server, end = prom
    now = [end - 10 * 60]
    good = _good_config(server.url)
    path = tmp_path / "detector.yml"
    path.write_text(good)
    svc, api = _service(lambda: now[0], path=path)
    assert svc.fit() and not svc.readiness()[1]["models_missing"]
    assert _metric(api, "rigwatch_detector_config_last_reload_successful") == 1
    assert _metric(api, "rigwatch_detector_config_last_reload_success_timestamp_seconds") == end - 10 * 60
    running = set(svc.detector_names())
    caplog.set_level(logging.ERROR, logger="detector.config")

    now[0] += STEP
    _rewrite(path, "", 1)  # emptied: every detector would go
    svc.score()
    assert set(svc.detector_names()) == running and api.get("/readyz").status_code == 200
    assert _metric(api, "rigwatch_detector_config_last_reload_successful") == 0
    assert _metric(api, "rigwatch_detector_config_last_reload_success_timestamp_seconds") == end - 10 * 60

    now[0] += STEP
    _rewrite(path, good + "\n  - {name: typo, query: 'rate(gpu_temperature_celsius[5m', model: robust_z}\n", 2)
    svc.score()
    assert set(svc.detector_names()) == running
    assert _metric(api, "rigwatch_detector_config_last_reload_successful") == 0
    assert "detectors[3].query" in caplog.text and "bad_data" in caplog.text
    assert caplog.text.count("detectors[3].query") == 1  # logged once, not on every pass

    now[0] += STEP
    _rewrite(path, good + "\n  - {name: temp2, query: gpu_temperature_celsius, model: robust_z}\n", 3)
    svc.score()
    assert set(svc.detector_names()) == running | {"temp2"}
    assert _metric(api, "rigwatch_detector_config_last_reload_successful") == 1
    assert _metric(api, "rigwatch_detector_config_last_reload_success_timestamp_seconds") == now[0]


def test_prometheus_outage_is_the_sources_not_the_detectors(prom):
    server, end = prom
    now = [end - 10 * 60]  # the lookback clear of the duplicate power series
    svc, api = _service(lambda: now[0], text=_good_config(server.url))
    assert svc.fit()
    server.stop()  # mid-run
    try:
        now[0] += 2 * STEP
        assert svc.score() is False  # survived: the pass ends, nothing raises
        assert _metric(api, "rigwatch_detector_source_up", source="prometheus") == 0
        assert _metric(api, "rigwatch_detector_source_errors_total", source="prometheus") >= 1
        assert api.get("/readyz").status_code == 503
        # an outage is no detector's fault: none is paused, none counts a query error
        for name in ("temp", "per_watt", "power"):
            assert _metric(api, "rigwatch_detector_query_ok", detector=name) == 1
            assert _metric(api, "rigwatch_detector_query_errors_total", detector=name) == 0
    finally:
        server.start()  # same port, same data dir
    now[0] += 2 * STEP
    assert svc.score() is True  # recovered on its own
    assert _metric(api, "rigwatch_detector_source_up", source="prometheus") == 1
    assert api.get("/readyz").status_code == 200
    assert {s.detector for s in svc.snapshot.scores if s.t > now[0] - 3 * STEP} == {"temp", "per_watt", "power"}
