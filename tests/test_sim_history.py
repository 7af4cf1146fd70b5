"""`rigwatch-sim history`: OpenMetrics from the real collector, journal, truth; backfilled into a real
Prometheus with promtool and read back through its HTTP API."""
import json
import re

import pytest

from exporter.sim.cli import main as sim_main
from harness.processes import backfill_openmetrics
from harness.servers import PrometheusServer

START = "2026-11-01T08:00:00Z"
T0 = 1_793_520_000
SCHEDULE = """
incidents:
  - {kind: gpu_lost, at: 1h, duration: 30m, gpu: 1}
  - {kind: planned_reboot, at: 2h, duration: 4m}
  - {kind: ssh_scanner_noise, at: 20m, duration: 10m}
"""


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    d = tmp_path_factory.mktemp("hist")
    (d / "s.yml").write_text(SCHEDULE)
    rc = sim_main(["history", "--out", str(d / "out"), "--start", START, "--days", "0.125", "--step", "60s",
                   "--seed", "11", "--schedule", str(d / "s.yml")])
    assert rc == 0
    return d / "out"


def test_openmetrics_shape(history):
    text = (history / "metrics.om").read_text()
    assert text.endswith("# EOF\n")
    families, current, seen_samples = [], None, set()
    for line in text.splitlines()[:-1]:
        if line.startswith("# TYPE "):
            current = line.split()[2]
            assert current not in families, f"family {current} split in two blocks"
            families.append(current)
        elif not line.startswith("#"):
            name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
            assert name == current or name == current + "_total", (name, current)
            assert 'job="rigwatch-exporter"' in line and 'instance="aibox:9842"' in line
            ts = int(line.rsplit(" ", 1)[1])
            assert T0 <= ts < T0 + 3 * 3600 and (ts - T0) % 60 == 0
            seen_samples.add(name)
    for contract in ("gpu_up", "gpu_temperature_celsius", "gpu_power_usage_watts", "gpu_fan_speed_ratio",
                     "gpu_energy_consumption_joules_total", "gpu_memory_used_bytes", "gpu_info",
                     "gpu_clocks_event_reason_active", "gpu_xid_errors_total", "docker_container_running",
                     "gpu_workload_memory_used_bytes", "gpu_exporter_host_boot_time_seconds", "up"):
        assert contract in seen_samples, contract
    assert "gpu_exporter_collect_duration_seconds" not in seen_samples  # wall-clock, not simulated


def test_truth_and_journal(history):
    truth = json.loads((history / "truth.json").read_text())
    assert truth["start"] == START and truth["end"] == "2026-11-01T11:00:00Z"
    kinds = {i["kind"]: i for i in truth["incidents"]}
    assert kinds["gpu_lost"] == {"kind": "gpu_lost", "start": "2026-11-01T09:00:00Z",
                                 "end": "2026-11-01T09:30:00Z", "labels": {"gpu": "1"}, "benign": False}
    assert kinds["planned_reboot"]["benign"] is True
    lines = (history / "journal.jsonl").read_text().splitlines()
    entries = [json.loads(x) for x in lines]
    stamps = [int(e["__REALTIME_TIMESTAMP"]) for e in entries]
    assert stamps == sorted(stamps) and T0 * 10**6 <= stamps[0] and stamps[-1] < (T0 + 3 * 3600) * 10**6
    assert any("Xid (PCI:0000:02:00): 79" in e["MESSAGE"] for e in entries)


def test_same_seed_same_bytes(history, tmp_path):
    (tmp_path / "s.yml").write_text(SCHEDULE)
    sim_main(["history", "--out", str(tmp_path / "again"), "--start", START, "--days", "0.125",
              "--seed", "11", "--schedule", str(tmp_path / "s.yml")])
    for name in ("metrics.om", "journal.jsonl", "truth.json"):
        assert (tmp_path / "again" / name).read_bytes() == (history / name).read_bytes(), name


def test_bad_schedule_exits_nonzero_naming_the_key(tmp_path, capsys):
    (tmp_path / "bad.yml").write_text("incidents:\n  - {kind: gpu_lost, at: 1h, gpu: 7}\n")
    assert sim_main(["history", "--out", str(tmp_path / "o"), "--schedule", str(tmp_path / "bad.yml")]) == 2
    assert "incidents[0].gpu" in capsys.readouterr().err
    assert not (tmp_path / "o" / "metrics.om").exists()


def test_check_schedule_lists_default(capsys):
    from exporter.sim.schedule import default_schedule_path
    assert sim_main(["check-schedule", str(default_schedule_path())]) == 0
    assert "gpu_lost" in capsys.readouterr().out


def test_counters_reset_after_reboot(history):
    series = 'gpu_energy_consumption_joules_total{gpu="0"'
    points = [(int(ln.rsplit(" ", 1)[1]), float(ln.rsplit(" ", 2)[1]))
              for ln in (history / "metrics.om").read_text().splitlines() if ln.startswith(series)]
    reboot = T0 + 2 * 3600
    before = [v for t, v in points if t < reboot]
    after = [v for t, v in points if t > reboot]
    assert after[0] < before[-1] / 100
    gap = [t for t, _ in points if reboot < t < reboot + 240]
    assert not gap, "no GPU samples while the box is down"


@pytest.mark.integration
def test_backfilled_into_real_prometheus_and_queried_back(history, tmp_path):
    storage = tmp_path / "tsdb"
    backfill_openmetrics(history / "metrics.om", storage)
    with PrometheusServer(tmp_path / "prom", "global: {scrape_interval: 1m}\nscrape_configs: []\n",
                          storage=storage) as prom:
        t = T0 + 30 * 60
        temps = prom.query('gpu_temperature_celsius{job="rigwatch-exporter"}', t)
        assert sorted(r["metric"]["gpu"] for r in temps) == ["0", "1"]
        assert all(20 < float(r["value"][1]) < 95 for r in temps)
        assert {r["metric"]["instance"] for r in temps} == {"aibox:9842"}
        lost = T0 + 3600 + 20 * 60
        assert float(prom.query('gpu_up{gpu="1"}', lost)[0]["value"][1]) == 0
        assert prom.query('gpu_temperature_celsius{gpu="1"}', lost) == []  # the value series vanished
        assert float(prom.query('gpu_xid_errors_total{gpu="1",xid="79"}', lost)[0]["value"][1]) == 1
        assert float(prom.query("up", T0 + 2 * 3600 + 120)[0]["value"][1]) == 0
        rng = prom.query('count_over_time(gpu_power_usage_watts{gpu="0"}[3h])', T0 + 3 * 3600 - 1)
        assert 170 <= float(rng[0]["value"][1]) <= 176  # 180 scrapes less the reboot gap
