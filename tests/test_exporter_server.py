"""The HTTP server and the rigwatch-exporter command line."""
import signal
import subprocess
import sys

import pytest
import requests
from prometheus_client import CollectorRegistry

from exporter.collector import RigCollector
from exporter.server import MetricsServer, parse_listen
from exporter.sim.fake_nvml import FakeGPU, FakeNVML
from harness.processes import free_port, wait_http_ok


@pytest.fixture
def served():
    registry = CollectorRegistry()
    registry.register(RigCollector(FakeNVML([FakeGPU(uuid="GPU-abc")])))
    server = MetricsServer(registry, "127.0.0.1", 0, backend="nvml")
    server.start()
    yield server
    server.stop()


def test_metrics_text_format(served):
    r = requests.get(served.url + "/metrics", timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    assert 'gpu_up{gpu="0",name="NVIDIA GeForce RTX 3090",uuid="GPU-abc"} 1.0' in r.text


def test_prometheus_accept_header_gets_the_text_format(served):
    # What Prometheus 2.42 sends: OpenMetrics preferred, text 0.0.4 accepted.
    accept = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
              "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    r = requests.get(served.url + "/metrics", timeout=5, headers={"Accept": accept})
    assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "gpu_exporter_up 1.0" in r.text


def test_landing_page_and_404(served):
    r = requests.get(served.url + "/", timeout=5)
    assert r.status_code == 200 and 'href="/metrics"' in r.text
    assert requests.get(served.url + "/nope", timeout=5).status_code == 404


@pytest.mark.parametrize("listen, expected", [
    ("127.0.0.1:9842", ("127.0.0.1", 9842)),
    ("0.0.0.0:80", ("0.0.0.0", 80)),
    ("[::1]:9842", ("::1", 9842)),
])
def test_parse_listen(listen, expected):
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9842", ":9842", "localhost:", "localhost:http", "h:70000"])
def test_parse_listen_rejects(listen):
    with pytest.raises(ValueError, match="listen"):
        parse_listen(listen)


def test_cli_rejects_a_bad_listen_address():
    out = subprocess.run([sys.executable, "-m", "exporter.cli", "--listen", "9842"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2
    assert "--listen must be HOST:PORT" in out.stderr


def test_cli_names_a_bad_sim_config(tmp_path):
    bad = tmp_path / "schedule.yml"
    bad.write_text("incidents:\n  - kind: nope\n    at: 1h\n    duration: 1h\n")
    out = subprocess.run([sys.executable, "-m", "exporter.cli", "--backend", "sim", "--sim-config", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "kind" in out.stderr and "nope" in out.stderr


def test_cli_sim_backend_serves_the_simulated_box():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "exporter.cli", "--listen", f"127.0.0.1:{port}",
                             "--backend", "sim", "--speed", "10"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/metrics", timeout=30, proc=proc)
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'name="NVIDIA GeForce RTX 3090"' in text and 'name="NVIDIA GeForce RTX 3060"' in text
        assert 'docker_container_running{container="ollama"' in text
        assert "gpu_exporter_up 1.0" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, output


def test_cli_without_nvml_or_docker_serves_and_stops_cleanly(tmp_path):
    """This machine has no NVIDIA driver: the real pynvml fails to initialise. The exporter must say
    so once, serve gpu_exporter_up 0, count the missing Docker socket, and exit 0 on SIGTERM."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "exporter.cli", "--listen", f"127.0.0.1:{port}",
                             "--backend", "nvml", "--docker-url", f"unix://{tmp_path}/docker.sock"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/metrics", timeout=20, proc=proc)
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert "gpu_exporter_up 0.0" in text
        assert 'gpu_exporter_read_errors_total{field="docker"}' in text
        assert "gpu_up" not in text
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, output
    assert output.count("NVML initialisation failed") == 1, output
