"""Credentials never reach a log line or a report: rigwatch.redact and where it is applied."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detector.cli import main as detector_main
from detector.config import load_config
from detector.promclient import PromClient, PromError
from detector.query_check import QueryChecker
from harness.processes import free_port, wait_http_ok
from harness.servers import PrometheusServer
from rigwatch.redact import redact_text, redact_url

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("url, expected", [
    ("http://user:pass@host:9090", "http://user:***@host:9090"),
    ("https://user:pass@host:9090/prom/api?x=1", "https://user:***@host:9090/prom/api?x=1"),
    ("http://user:p@ss@host:9090", "http://user:***@host:9090"),  # an unescaped '@' in the password
    ("http://user:@host", "http://user:***@host"),
    ("http://s3cr3ttoken@host:3100", "http://***@host:3100"),  # a lone user name is a token
    ("http://u:pw@[::1]:9090/", "http://u:***@[::1]:9090/"),
    ("http://host:9090/api?token=abc&query=up", "http://host:9090/api?token=***&query=up"),
    ("http://host/?password=a&api_key=b&access_token=c&key=d&monkey=e",
     "http://host/?password=***&api_key=***&access_token=***&key=***&monkey=e"),
    ("http://host:9090", "http://host:9090"),
    ("http://host:9090/path@v2", "http://host:9090/path@v2"),  # '@' after the host is not userinfo
    ("127.0.0.1:9843", "127.0.0.1:9843"),
    ("", ""),
])
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def test_redact_text_finds_urls_inside_messages():
    text = ("ConnectionError: HTTPConnectionPool(host='h', port=9090): Max retries exceeded with url: "
            "/api/v1/query?query=up&token=t0k (Caused by NewConnectionError) at http://admin:hunter2@h:9090/x, "
            "'https://bob:pw@loki:3100'; see http://plain:9090")
    out = redact_text(text)
    assert "hunter2" not in out and "t0k" not in out and ":pw@" not in out
    assert "http://admin:***@h:9090/x," in out and "'https://bob:***@loki:3100'" in out
    assert "query=up&token=***" in out and "see http://plain:9090" in out


def test_prometheus_errors_carry_no_password():
    """The client's own errors (an unreachable source: requests puts the URL into its message)."""
    url = f"http://rwuser:hunter2@127.0.0.1:{free_port()}"
    client = PromClient(url, retries=0, timeout=2)
    with pytest.raises(PromError) as e:
        client.query("up")
    assert "hunter2" not in str(e.value) and "rwuser:***@127.0.0.1" in str(e.value)


def test_query_check_warning_carries_no_password(caplog):
    url = f"http://rwuser:hunter2@127.0.0.1:{free_port()}"
    cfg = load_config(text=f"prometheus: {{url: '{url}', retries: 0}}\n"
                           "detectors:\n  - {name: temp, query: gpu_temperature_celsius, model: robust_z}\n")
    with caplog.at_level(logging.WARNING):
        assert QueryChecker(PromClient(url, retries=0, timeout=2)).check(cfg) is False
    assert "prometheus unavailable" in caplog.text
    assert "hunter2" not in caplog.text and "rwuser:***@" in caplog.text


@pytest.mark.integration
def test_serve_logs_no_password(tmp_path):
    """The real serve process, its Prometheus URL with a password and nothing listening there: the
    start-up line, the query check and the failing fits all name the URL without the password."""
    port, prom_port = free_port(), free_port()
    config = tmp_path / "detector.yml"
    config.write_text(f"prometheus: {{url: 'http://rwuser:hunter2@127.0.0.1:{prom_port}', retries: 0, timeout: 2s}}\n"
                      f"store: {{path: {tmp_path / 'store'}}}\n"
                      "detectors:\n  - {name: temp, query: gpu_temperature_celsius, model: robust_z}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIGWATCH_API_TOKEN")}
    proc = subprocess.Popen([str(BIN / "rigwatch-detector"), "serve", "--config", str(config),
                             "--listen", f"127.0.0.1:{port}"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=proc)
        time.sleep(3)  # the first fit runs and fails against the unreachable Prometheus
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert "rigwatch-detector serving on" in stderr, stderr
    assert f"prometheus http://rwuser:***@127.0.0.1:{prom_port}" in stderr, stderr
    assert "hunter2" not in stderr, stderr


@pytest.mark.integration
def test_backtest_report_has_the_redacted_url(tmp_path):
    prom_dir = tmp_path / "prom"
    with PrometheusServer(prom_dir, "global: {scrape_interval: 1h}\n") as prom:
        url = prom.url.replace("http://", "http://rwuser:hunter2@")  # Prometheus ignores the basic auth
        end = int(time.time()) // 60 * 60
        rc = detector_main(["backtest", "--prometheus-url", url, "--start", _iso(end - 3600), "--end", _iso(end),
                            "--output", str(tmp_path / "report.json"), "--no-progress"])
    assert rc == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["source"]["prometheus_url"] == url.replace("hunter2", "***")
    assert "hunter2" not in (tmp_path / "report.json").read_text()


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
