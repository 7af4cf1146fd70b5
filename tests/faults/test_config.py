"""Broken configs against the real `rigwatch-detector serve` process.

At start-up every refusal is exit 2 with one line on stderr naming the dotted key (or the flag), and
never a traceback. Prometheus is an unused 127.0.0.1 port throughout: an unreachable source never
fails start-up (the good config below starts), only a config error does. At hot reload a broken
edit is refused the same way while the process keeps serving its running config.
"""
from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import requests

from harness.processes import free_port, wait_http_ok

DETECTOR = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "rigwatch-detector")
ONE = "detectors: [{name: a, query: up, model: robust_z}]\n"
THREE = ("detectors:\n  - {name: a, query: up, model: robust_z}\n  - {name: b, query: up, model: robust_z}\n"
         "  - {name: c, query: up, model: robust_z, min_duration: 1.0e+300}\n")

# (name, config text, extra flags, what stderr must name). STORE_FILE: a path that is a regular file.
CASES = [
    ("empty file", "", [], "detectors"),
    ("empty mapping", "{}\n", [], "detectors"),
    ("no detectors", "detectors: []\n", [], "detectors"),
    ("fit_every overflows", ONE + "schedule: {fit_every: 99999999999w}\n", [], "schedule.fit_every"),
    ("step 1e300", ONE + "schedule: {step: 1.0e+300}\n", [], "schedule.step"),
    ("lookback inf", ONE + "schedule: {lookback: .inf}\n", [], "schedule.lookback"),
    ("step over a day", ONE + "schedule: {step: 2d}\n", [], "schedule.step"),
    ("loki url a number", ONE + "loki: {url: 12}\n", [], "loki.url"),
    ("loki unknown key", ONE + "loki: {url: 'http://127.0.0.1:1', timout: 3}\n", [], "loki.timout"),
    ("logs negative window", ONE + "logs: {window_s: -5}\n", [], "logs.window_s"),
    ("logs miner type", ONE + "logs: {miner: {sim_threshold: x}}\n", [], "logs.miner.sim_threshold"),
    ("store path a file", ONE + "store: {path: STORE_FILE}\n", [], "store.path"),
    ("--store a file", ONE, ["--store", "STORE_FILE"], "--store"),
    ("retries huge", ONE + "prometheus: {retries: 1000000000000}\n", [], "prometheus.retries"),
    ("retries 1e12", ONE + "prometheus: {retries: 1e12}\n", [], "prometheus.retries"),
    ("header not a string", ONE + "prometheus: {headers: {X-Scope-OrgID: 12}}\n", [], "prometheus.headers.X-Scope-OrgID"),
    ("min_duration 1e300", THREE, [], "detectors[2].min_duration"),
    ("sensitivity nan", "detectors: [{name: a, query: up, model: robust_z, sensitivity: .nan}]\n", [],
     "detectors[0].sensitivity"),
    ("model param inf", "detectors: [{name: a, query: up, model: robust_z, params: {window: .inf}}]\n", [],
     "detectors[0].params.window"),
    ("listen port too big", ONE + "listen: '127.0.0.1:99999'\n", [], "listen"),
    ("--listen port too big", ONE, ["--listen", "127.0.0.1:70000"], "--listen"),
    ("--listen no port", ONE, ["--listen", "localhost"], "--listen"),
    ("invalid YAML", "detectors: [\n", [], "line 2"),
]


def _serve(tmp_path: Path, text: str, flags: list[str], prom_port: int, **kw) -> subprocess.Popen:
    store_file = tmp_path / "not-a-dir"
    store_file.write_text("a file where the model store should be")
    config = tmp_path / "detector.yml"
    config.write_text(text.replace("STORE_FILE", str(store_file)))
    flags = [str(store_file) if f == "STORE_FILE" else f for f in flags]
    if "--store" not in flags and "store:" not in text:
        flags += ["--store", str(tmp_path / "models")]
    if "--listen" not in flags and "listen:" not in text:
        flags += ["--listen", "127.0.0.1:0"]
    cmd = [DETECTOR, "serve", "--config", str(config), "--prometheus-url", f"http://127.0.0.1:{prom_port}", *flags]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, **kw)


@pytest.fixture(scope="module")
def prom_port():
    return free_port()  # nothing listens there: Prometheus is unreachable


@pytest.mark.parametrize("name, text, flags, key", CASES, ids=[c[0] for c in CASES])
def test_bad_config_exits_2_naming_the_key(tmp_path, prom_port, name, text, flags, key):
    proc = _serve(tmp_path, text, flags, prom_port)
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 2, (name, err[-2000:])
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # one line, the refusal
    # the key is named as the key, right after the config file's name or at the start
    assert re.search(rf"(: |error: ){re.escape(key)}: ", lines[0]), lines[0]


def _metric(url: str, name: str) -> float | None:
    for line in requests.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_good_config_starts_with_prometheus_unreachable_and_refuses_a_broken_reload(tmp_path, prom_port):
    port = free_port()
    # no retries: a score job waiting out backoffs on the unreachable Prometheus would delay the reload
    good = ONE + "schedule: {step: 1s, lookback: 1h, fit_every: 1h}\nprometheus: {retries: 0, timeout: 1s}\n"
    proc = _serve(tmp_path, good, ["--listen", f"127.0.0.1:{port}"], prom_port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(url + "/healthz", timeout=20, proc=proc)
        assert _metric(url, "rigwatch_detector_config_last_reload_successful") == 1
        config = tmp_path / "detector.yml"
        for broken, key in (("", "detectors"), (ONE + "schedule: {step: 1.0e+300}\n", "schedule.step"),
                            (ONE + "logs: {window_s: -5}\n", "logs.window_s")):
            config.write_text(broken)
            later = time.time_ns() + 10**9
            os.utime(config, ns=(later, later))  # a new mtime even within the file system's granularity
            deadline = time.monotonic() + 15
            while _metric(url, "rigwatch_detector_config_last_reload_successful") != 0:
                assert time.monotonic() < deadline, f"reload of {key} not refused"
                time.sleep(0.2)
            assert proc.poll() is None  # still serving the running config
            requests.get(url + "/healthz", timeout=5).raise_for_status()
            config.write_text(good)  # back to good before the next break
            later = time.time_ns() + 2 * 10**9
            os.utime(config, ns=(later, later))
            deadline = time.monotonic() + 15
            while _metric(url, "rigwatch_detector_config_last_reload_successful") != 1:
                assert time.monotonic() < deadline, "good config not reloaded"
                time.sleep(0.2)
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert "Traceback" not in err, err[-3000:]
    for key in ("detectors: nothing to detect", "schedule.step: ", "logs.window_s: "):
        assert f"config reload refused, keeping the running config: {config}: {key}" in err, err[-3000:]
