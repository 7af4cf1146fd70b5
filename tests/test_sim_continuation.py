"""History, then live, from one simulated box (`rigwatch-exporter --sim-history`): the live exporter
continues the history's counters, so a backfilled TSDB and the live scrapes meet without a reset."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import requests
from prometheus_client import CollectorRegistry

from exporter.collector import RigCollector
from exporter.sim.history import box_with_history
from exporter.sim.schedule import Incident
from harness.processes import free_port, wait_http_ok

T = 1_790_000_000.0


def last_samples(text: str, name: str) -> dict[str, float]:
    """{gpu: value} of the last sample of each `name` series in an OpenMetrics history (samples with
    timestamps) or a /metrics page (without)."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            series, rest = line.rsplit("}", 1)
            gpu = series.split('gpu="', 1)[1].split('"', 1)[0]
            out[gpu] = float(rest.split()[0])
    return out


def test_the_live_box_continues_the_history_counters_and_shifts_the_schedule(tmp_path):
    lost = Incident("gpu_lost", at=30.0, duration=600.0, gpu=1)
    box, result = box_with_history(tmp_path, hours=1.0, step=60.0, incidents=[lost], seed=5, clock=lambda: T)
    try:
        history_energy = last_samples((tmp_path / "metrics.om").read_text(), "gpu_energy_consumption_joules_total")
        assert set(history_energy) == {"0", "1"} and result.steps == 60
        collector = RigCollector(box.nvml, container_source=box.container_source, proc_root=box.proc_root)
        collector.refresh_slow()  # energy is a slow read, taken off the scrape path
        registry = CollectorRegistry()
        registry.register(collector)
        for gpu, last in history_energy.items():
            live = registry.get_sample_value("gpu_energy_consumption_joules_total",
                                             {"gpu": gpu, "uuid": box.specs[int(gpu)].uuid, "name": box.specs[int(gpu)].name})
            # no reset, and no jump: at most the last scrape interval's energy at the card's power limit
            assert last <= live <= last + 60 * box.specs[int(gpu)].power_limit_w, (gpu, last, live)
        # the history is clean; the schedule's offsets now count from the live start (= T, on a tick)
        assert json.loads((tmp_path / "truth.json").read_text())["incidents"] == []
        assert "Xid" not in (tmp_path / "journal.jsonl").read_text()
        assert T - box.tick < box.t <= T
        assert [i.at for i in box.incidents] == [box.t - box.start_time + 30.0]
    finally:
        box.close()


def test_exporter_cli_writes_history_then_serves_the_same_box(tmp_path):
    port = free_port()
    history = tmp_path / "history"
    proc = subprocess.Popen([sys.executable, "-m", "exporter.cli", "--listen", f"127.0.0.1:{port}", "--backend", "sim",
                             "--sim-history", str(history), "--sim-history-hours", "0.5", "--sim-history-step", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/metrics", timeout=60, proc=proc)
        om = (history / "metrics.om").read_text()
        assert om.rstrip().endswith("# EOF") and f'instance="127.0.0.1:{port}"' in om and 'job="rigwatch-exporter"' in om
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        live = last_samples(text, "gpu_energy_consumption_joules_total")
        for gpu, last in last_samples(om, "gpu_energy_consumption_joules_total").items():
            assert last <= live[gpu] <= last + 30 * 400, (gpu, last, live[gpu])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_exporter_cli_sim_history_needs_the_sim_backend(tmp_path):
    out = subprocess.run([sys.executable, "-m", "exporter.cli", "--sim-history", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--sim-history needs --backend sim" in out.stderr


def test_exporter_cli_serves_the_studio_box_with_its_vllm_families(tmp_path):
    port = free_port()
    history = tmp_path / "history"
    proc = subprocess.Popen([sys.executable, "-m", "exporter.cli", "--listen", f"127.0.0.1:{port}", "--backend", "sim",
                             "--box", "studio", "--sim-history", str(history), "--sim-history-hours", "0.25",
                             "--sim-history-step", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/metrics", timeout=60, proc=proc)
        assert json.loads((history / "truth.json").read_text())["box"] == "studio"
        assert "vllm:num_requests_running{" in (history / "metrics.om").read_text()
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert 'name="NVIDIA GeForce RTX 4090"' in text and 'name="NVIDIA RTX A4000"' in text
        assert 'vllm:num_requests_running{model_name="Qwen/Qwen2.5-14B-Instruct-AWQ"}' in text
        assert "vllm:generation_tokens_total{" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_history_incidents_play_in_the_history_and_run_on_into_live(tmp_path):
    """--sim-history-config: an incident under way when the history ends is still under way live."""
    now = [1_790_000_000.0]
    stuck = Incident(kind="gpu_stuck", at=1200.0, duration=1800.0, gpu=0)  # 20 min in, 10 min into live
    box, _ = box_with_history(tmp_path, 0.5, 30.0, clock=lambda: now[0], history_incidents=[stuck],
                              incidents=[Incident(kind="fan_failure", at=60.0, duration=600.0, gpu=1)])
    try:
        truth = json.loads((tmp_path / "truth.json").read_text())
        assert [i["kind"] for i in truth["incidents"]] == ["gpu_stuck"]
        assert [i.kind for i in box.incidents] == ["gpu_stuck", "fan_failure"]
        assert box.incidents[0].active(box.t - box.start_time)  # still on as live begins
        box.advance_to(box.t + 300)
        assert box.nvml.gpus[0].utilization_gpu >= 90
        box.advance_to(box.start_time + stuck.end + 60)
        assert not box.incidents[0].active(box.t - box.start_time)
    finally:
        box.close()


def test_exporter_cli_sim_history_config_needs_sim_history_and_a_valid_file(tmp_path):
    out = subprocess.run([sys.executable, "-m", "exporter.cli", "--backend", "sim", "--sim-history-config",
                          str(tmp_path / "x.yml")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--sim-history-config needs --sim-history" in out.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text("incidents:\n  - {kind: gpu_stuck, at: 1h, gpu: 7}\n")
    out = subprocess.run([sys.executable, "-m", "exporter.cli", "--backend", "sim", "--sim-history", str(tmp_path / "h"),
                          "--sim-history-config", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--sim-history-config" in out.stderr and "incidents[0].gpu" in out.stderr, out.stderr
