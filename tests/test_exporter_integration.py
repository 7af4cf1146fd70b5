"""A real Prometheus (Debian package) scrapes rigwatch exporters served over HTTP in-process; the
series are read back through Prometheus's HTTP API."""
import time

import pytest
from prometheus_client import CollectorRegistry

from exporter.collector import RigCollector
from exporter.server import MetricsServer
from exporter.sim.fake_nvml import FakeGPU, FakeNVML
from harness.servers import PrometheusServer

pytestmark = pytest.mark.integration

LOST_UUID = "GPU-0000dead-0000-0000-0000-000000000000"


def serve(collector):
    registry = CollectorRegistry()
    registry.register(collector)
    server = MetricsServer(registry, "127.0.0.1", 0)
    collector.start()
    server.start()
    return server


@pytest.fixture
def exporters():
    from exporter.sim.box import SimBox

    box = SimBox.from_config(None, seed=3, speed=30)
    sim = RigCollector(box.nvml, container_source=box.container_source, proc_root=box.proc_root,
                       slow_interval=0.5, container_interval=0.5)
    box.start()
    sim_server = serve(sim)
    # A second exporter over a plain FakeNVML whose first GPU falls off the bus mid-test.
    nvml = FakeNVML([FakeGPU(uuid=LOST_UUID), FakeGPU(uuid="GPU-0000beef-0000-0000-0000-000000000000")])
    fake = RigCollector(nvml, slow_interval=0.5, retry_interval=0.5)
    fake_server = serve(fake)
    yield sim_server, (fake_server, nvml)
    for server, collector in ((sim_server, sim), (fake_server, fake)):
        server.stop()
        collector.stop()
    box.close()


def config(sim_url: str, fake_url: str) -> str:
    return f"""
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
scrape_configs:
  - job_name: rigwatch-sim
    static_configs: [{{targets: ["{sim_url.split('//')[1]}"]}}]
  - job_name: rigwatch-fake
    static_configs: [{{targets: ["{fake_url.split('//')[1]}"]}}]
"""


def by(result, label):
    return {r["metric"][label]: float(r["value"][1]) for r in result}


def test_prometheus_scrapes_the_exporter(tmp_path, exporters):
    sim_server, (fake_server, nvml) = exporters
    with PrometheusServer(tmp_path, config(sim_server.url, fake_server.url)) as prom:
        up = prom.wait_for('up{job="rigwatch-sim"} == 1')
        assert len(up) == 1
        gpus = prom.wait_for('gpu_up{job="rigwatch-sim"}')
        assert {r["metric"]["name"]: r["metric"]["gpu"] for r in gpus} == {
            "NVIDIA GeForce RTX 3090": "0", "NVIDIA GeForce RTX 3060": "1"}
        assert all(r["metric"]["uuid"].startswith("GPU-") for r in gpus)
        power = by(prom.wait_for('gpu_power_usage_watts{job="rigwatch-sim"}'), "gpu")
        assert set(power) == {"0", "1"} and all(0 < w < 400 for w in power.values())
        assert len(prom.wait_for('gpu_energy_consumption_joules_total{job="rigwatch-sim"} > 0')) == 2
        running = by(prom.wait_for('docker_container_running{job="rigwatch-sim"}'), "container")
        assert running.get("ollama") == 1
        assert prom.wait_for('gpu_exporter_up{job="rigwatch-sim"} == 1')
        # rate() over the energy counter works: the _total name is a real counter to Prometheus
        prom.wait_for('rate(gpu_energy_consumption_joules_total{job="rigwatch-sim"}[5s]) > 0', timeout=20)

        # The fake exporter: GPU 0 is lost -> gpu_up 0, its value series go stale, Xid 79 counted.
        prom.wait_for('gpu_temperature_celsius{job="rigwatch-fake", gpu="0"}')
        nvml.gpus[0].lost = True
        nvml.push_xid(0, 79)
        prom.wait_for(f'gpu_up{{job="rigwatch-fake", uuid="{LOST_UUID}"}} == 0')
        xid = prom.wait_for(f'gpu_xid_errors_total{{job="rigwatch-fake", uuid="{LOST_UUID}", xid="79"}}')
        assert float(xid[0]["value"][1]) == 1
        deadline = time.monotonic() + 10
        while prom.query(f'gpu_temperature_celsius{{job="rigwatch-fake", uuid="{LOST_UUID}"}}'):
            assert time.monotonic() < deadline, "series of the lost GPU did not go stale"
            time.sleep(0.25)
        assert prom.query('gpu_temperature_celsius{job="rigwatch-fake", gpu="1"}')
