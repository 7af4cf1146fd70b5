"""The simulated box through the real exporter collector: determinism, physics sanity, incidents."""
from dataclasses import asdict

import pytest
from prometheus_client import CollectorRegistry

from exporter.collector import RigCollector
from exporter.sim.box import SimBox
from exporter.sim.fake_nvml import FakeGPU
from exporter.sim.model import RTX_3090, Faults, GPUPhysics, Load, make_fake_gpu
from exporter.sim.schedule import parse_schedule

START = 1_793_520_000.0  # 2026-11-01T08:00:00Z: the box's owner is awake
G0 = {"gpu": "0", "uuid": RTX_3090.uuid, "name": RTX_3090.name}


def box_with(*items, seed=7, start=START):
    return SimBox(parse_schedule({"incidents": list(items)}), seed=seed, start=start)


class Scraper:
    """The real collector stepped over sim time, the way the history writer drives it."""

    def __init__(self, box):
        self.box = box
        self.now = box.t
        self.collector = RigCollector(box.nvml, container_source=box.container_source,
                                      proc_root=box.proc_root, clock=lambda: self.now)
        self.registry = CollectorRegistry()
        self.registry.register(self.collector)

    def at(self, t):
        self.box.advance_to(t)
        self.now = t
        self.collector.refresh_slow()
        self.collector.refresh_containers()
        self.collector.poll_events(0)
        return self

    def get(self, metric, /, **labels):
        return self.registry.get_sample_value(metric, labels)


def trace(box, hours=3.0, every=60.0):
    out = []
    t = box.t
    while t < box.start_time + hours * 3600:
        t += every
        box.advance_to(t)
        out.append([asdict(g) for g in box.nvml.gpus])
    return out


def test_same_seed_same_box_different_seed_different_box(closing):
    a, b, c = box_with(seed=1), box_with(seed=1), box_with(seed=2)
    for x in (a, b, c):
        closing(x)
    ta, tb, tc = trace(a), trace(b), trace(c)
    assert ta == tb
    assert ta != tc
    assert a.journal.drain() == b.journal.drain()
    assert [s.__dict__ for s in a.container_source.snapshot()] == [s.__dict__ for s in b.container_source.snapshot()]


def test_box_is_busy_by_day_and_models_step_vram(closing):
    box = box_with()
    closing(box)
    tr = trace(box, hours=8)
    util0 = [s[0]["utilization_gpu"] for s in tr]
    vram0 = [s[0]["memory_used"] for s in tr]
    assert sum(u > 0 for u in util0) >= 10, "daytime chat should keep the 3090 busy now and then"
    assert max(vram0) > 5 * 2**30 and min(vram0) < 1 * 2**30, "models load and unload"
    # VRAM moves in steps (model loads), not in small increments
    steps = {abs(b - a) for a, b in zip(vram0, vram0[1:], strict=False) if a != b}
    assert min(steps) > 500 * 2**20


def test_temperature_lags_power_first_order():
    phys = GPUPhysics(RTX_3090, temperature=34.0)
    gpu = make_fake_gpu(RTX_3090)
    import random
    rng = random.Random(0)
    for _ in range(100):  # settle idle
        phys.step(5, Load(), Faults(), 23.0, rng, gpu, 0, [])
    idle_t, idle_p = phys.temperature, gpu.power_usage_mw
    phys.step(5, Load(busy=1.0, intensity=0.9), Faults(), 23.0, rng, gpu, 0, [])
    assert gpu.power_usage_mw > 5 * idle_p, "power follows utilisation at once"
    first = phys.temperature - idle_t
    for _ in range(200):
        phys.step(5, Load(busy=1.0, intensity=0.9), Faults(), 23.0, rng, gpu, 0, [])
    final = phys.temperature - idle_t
    assert 0 < first < 0.1 * final, "temperature lags power (thermal time constant ~90 s)"
    assert 65 < phys.temperature < 82 and gpu.fan_speeds[0] > 50


def test_power_limit_caps_power_and_drops_clocks():
    import random
    phys, gpu, rng = GPUPhysics(RTX_3090), make_fake_gpu(RTX_3090), random.Random(0)
    phys.step(5, Load(busy=1.0, intensity=0.7), Faults(), 23.0, rng, gpu, 0, [])
    free_clock = gpu.clock_sm_mhz
    assert gpu.clocks_event_reasons & phys_bits("SwPowerCap") == 0
    phys.step(5, Load(busy=1.0, intensity=1.2), Faults(), 23.0, rng, gpu, 0, [])
    assert gpu.clocks_event_reasons & phys_bits("SwPowerCap")
    assert gpu.power_usage_mw <= 350_000 * 1.05
    assert gpu.clock_sm_mhz < free_clock


def phys_bits(name):
    import pynvml
    return getattr(pynvml, f"nvmlClocksEventReason{name}")


def test_fan_failure_fan_reports_target_while_card_overheats():
    import random
    normal, failed = GPUPhysics(RTX_3090), GPUPhysics(RTX_3090)
    g1, g2 = make_fake_gpu(RTX_3090), make_fake_gpu(RTX_3090)
    r1, r2 = random.Random(0), random.Random(0)
    for _ in range(240):  # 20 min at 60 % duty
        load = Load(busy=0.6, intensity=0.85)
        normal.step(5, load, Faults(), 23.0, r1, g1, 0, [])
        failed.step(5, load, Faults(dead_fans=frozenset({0, 1})), 23.0, r2, g2, 0, [])
    assert g2.temperature >= g2.slowdown_temperature - 3 and g2.temperature > g1.temperature + 15
    # NVML reports the driver's intended speed: the dead fans "run" at the curve's target for that heat.
    assert g2.fan_speeds == [round(failed.fan_curve(failed.temperature) * 100)] * 2
    assert g2.fan_speeds[0] > g1.fan_speeds[0]
    assert g2.clocks_event_reasons & phys_bits("SwThermalSlowdown")


def test_fan_failure_through_the_collector(closing):
    box = box_with({"kind": "fan_failure", "at": "1h", "duration": "45m", "gpu": 0})
    closing(box)
    s = Scraper(box)
    before = [s.at(box.start_time + 3600 - 60 * k).get("gpu_temperature_celsius", **G0) for k in (20, 10, 1)]
    during = []
    for k in range(2, 40, 2):
        s.at(box.start_time + 3600 + 60 * k)
        temp = s.get("gpu_temperature_celsius", **G0)
        fan = s.get("gpu_fan_speed_ratio", fan="0", **G0)
        power = s.get("gpu_power_usage_watts", **G0)
        during.append((temp, fan, power))
        # the fan ratio is the curve's target for the current heat, never 0
        assert fan == pytest.approx(box.physics[0].fan_curve(box.physics[0].temperature), abs=0.011)
    hottest = max(d[0] for d in during[:5])  # within the first 10 minutes
    assert hottest > max(before) + 15


def test_gpu_lost_gpu_up_zero_series_vanish_xid_counted(closing):
    box = box_with({"kind": "gpu_lost", "at": "30m", "duration": "20m", "gpu": 1})
    closing(box)
    s = Scraper(box).at(box.start_time + 1500)
    g1 = {"gpu": "1", "uuid": box.specs[1].uuid, "name": box.specs[1].name}
    assert s.get("gpu_up", **g1) == 1 and s.get("gpu_temperature_celsius", **g1) is not None
    s.at(box.start_time + 1800 + 120)
    assert s.get("gpu_up", **g1) == 0
    assert s.get("gpu_temperature_celsius", **g1) is None
    assert s.get("gpu_power_usage_watts", **g1) is None
    assert s.get("gpu_xid_errors_total", xid="79", **g1) == 1
    assert s.get("gpu_up", **G0) == 1 and s.get("gpu_temperature_celsius", **G0) is not None
    msgs = [e["MESSAGE"] for e in box.journal.drain() if e["_TRANSPORT"] == "kernel"]
    assert any("NVRM: Xid (PCI:0000:02:00): 79," in m and "GPU has fallen off the bus." in m for m in msgs)


def test_vram_leak_grows_memory_of_the_ollama_runner(closing):
    box = box_with({"kind": "vram_leak", "at": "1h", "duration": "1h", "gpu": 0, "container": "ollama",
                    "rate_gib_per_hour": 8.0})
    closing(box)
    s = Scraper(box)
    used = []
    for k in range(5, 60, 5):
        s.at(box.start_time + 3600 + 60 * k)
        used.append(s.get("gpu_workload_memory_used_bytes", workload="ollama", workload_kind="container", **G0))
    assert None not in used
    assert used[-1] - used[0] > 4 * 2**30
    assert sum(b >= a for a, b in zip(used, used[1:], strict=False)) >= len(used) - 2


def test_gpu_stuck_and_power_brake(closing):
    box = box_with({"kind": "gpu_stuck", "at": "30m", "duration": "30m", "gpu": 0},
                   {"kind": "power_brake", "at": "2h", "duration": "20m", "gpu": 0})
    closing(box)
    s = Scraper(box)
    for k in range(3, 28, 4):
        assert s.at(box.start_time + 1800 + 60 * k).get("gpu_utilization_ratio", **G0) == 1.0
    s.at(box.start_time + 7200 + 300)
    assert s.get("gpu_clocks_event_reason_active", reason="hw_power_brake_slowdown", **G0) == 1
    assert s.get("gpu_clocks_event_reason_active", reason="hw_slowdown", **G0) == 1
    s.at(box.start_time + 7200 + 1500)
    assert s.get("gpu_clocks_event_reason_active", reason="hw_power_brake_slowdown", **G0) == 0


def test_full_power_hours_is_a_systemd_unit_at_the_power_cap(closing):
    box = box_with({"kind": "full_power_hours", "at": "10m", "duration": "2h", "gpu": 0})
    closing(box)
    s = Scraper(box).at(box.start_time + 3600)
    assert s.get("gpu_power_usage_watts", **G0) > 330
    assert s.get("gpu_clocks_event_reason_active", reason="sw_power_cap", **G0) == 1
    assert s.get("gpu_clocks_event_reason_active", reason="sw_thermal_slowdown", **G0) == 0
    assert 65 < s.get("gpu_temperature_celsius", **G0) < 85, "hot but normal for 350 W with working fans"
    assert s.get("gpu_workload_memory_used_bytes", workload="lora-train.service",
                 workload_kind="systemd_unit", **G0) > 16 * 2**30


def test_container_restart_loop_counts_restarts(closing):
    box = box_with({"kind": "container_restart_loop", "at": "10m", "duration": "20m", "container": "open-webui",
                    "period": "40s"})
    closing(box)
    s = Scraper(box).at(box.start_time + 590)
    labels = {"container": "open-webui", "image": "ghcr.io/open-webui/open-webui:v0.5.7"}
    assert s.get("docker_container_restarts_total", **labels) == 0
    s.at(box.start_time + 1800)
    assert s.get("docker_container_restarts_total", **labels) >= 10
    s.at(box.start_time + 2400)
    n = s.get("docker_container_restarts_total", **labels)
    s.at(box.start_time + 3600)
    assert s.get("docker_container_restarts_total", **labels) == n, "the loop ends with the window"
    assert s.get("docker_container_running", **labels) == 1


def test_planned_reboot_gap_counters_reset_new_boot_id(closing):
    box = box_with({"kind": "planned_reboot", "at": "1h", "duration": "4m"})
    closing(box)
    box.advance_to(box.start_time + 3600 - 5)
    energy_before = box.nvml.gpus[0].energy_mj
    boot_before = box.journal.boot_id
    box.advance_to(box.start_time + 3600 + 60)
    assert box.down
    assert all(not c.running for c in box.container_source.snapshot())
    box.advance_to(box.start_time + 3600 + 300)
    assert not box.down and box.boot_count == 1
    assert box.journal.boot_id != boot_before
    assert box.nvml.gpus[0].energy_mj < energy_before / 10
    assert all(c.running and c.restart_count == 0 for c in box.container_source.snapshot())


def test_planned_reboot_moves_the_host_boot_time_the_collector_reads(closing):
    """The sim serves /proc/stat's btime; the real collector publishes it, and a reboot moves it."""
    box = box_with({"kind": "planned_reboot", "at": "1h", "duration": "4m"})
    closing(box)
    s = Scraper(box).at(box.start_time + 600)
    before = s.get("gpu_exporter_host_boot_time_seconds")
    assert before == int(box.journal.boot_time) and before < box.start_time - 86400
    s.at(box.start_time + 3600 + 300)
    assert box.boot_count == 1
    after = s.get("gpu_exporter_host_boot_time_seconds")
    assert after == int(box.journal.boot_time) == int(box.start_time + 3600 + 240)


def test_proc_tree_maps_gpu_pids_to_cgroups(closing):
    box = box_with()
    closing(box)
    for _ in range(200):
        box.advance_to(box.t + 60)
        if box.nvml.gpus[0].compute_processes:
            break
    pid = box.nvml.gpus[0].compute_processes[0].pid
    from pathlib import Path
    root = Path(box.proc_root)
    ollama = {c.name: c.id for c in box.container_source.snapshot()}["ollama"]
    assert (root / str(pid) / "cgroup").read_text() == f"0::/system.slice/docker-{ollama}.scope\n"
    assert (root / str(pid) / "comm").read_text().strip() == "ollama_llama_se"


def test_live_mode_advances_at_speed(closing):
    import time
    box = box_with(start=None)
    closing(box)
    t0 = box.t
    box.speed = 600.0
    box.start()
    time.sleep(0.5)
    box.stop()
    assert 150 <= box.t - t0 <= 600, "0.5 s at 600x is about 300 sim seconds"
    assert isinstance(box.nvml.gpus[0], FakeGPU)


def test_from_config_validates_and_defaults(tmp_path, closing):
    from exporter.sim.schedule import KINDS, ScheduleError
    bad = tmp_path / "bad.yml"
    bad.write_text("incidents:\n  - {kind: container_restart_loop, at: 1h, container: nginx}\n")
    with pytest.raises(ScheduleError, match=r"incidents\[0\]\.container: unknown container 'nginx'"):
        SimBox.from_config(bad)
    box = SimBox.from_config(None, seed=3, start=START)
    closing(box)
    studio = SimBox.load_incidents(None, "studio")
    # The kinds only a vLLM card can play live in the studio's schedule; together they cover them all.
    assert {i.kind for i in box.incidents} | {i.kind for i in studio} == set(KINDS)
    assert set(KINDS) - {i.kind for i in box.incidents} == {"batch_at_power_cap", "model_swaps", "busy_request_log"}
    truth = box.truth()
    assert truth[0]["start"].endswith("Z") and all(isinstance(x["benign"], bool) for x in truth)


def test_live_journal_file(tmp_path, closing):
    import json
    import time
    path = tmp_path / "journal.jsonl"
    box = SimBox(parse_schedule({"incidents": [{"kind": "gpu_lost", "at": "2m", "duration": "5m", "gpu": 1}]}),
                 seed=1, speed=1200.0, journal_path=path)
    closing(box)
    box.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and box.t - box.start_time < 600:
        time.sleep(0.05)
    box.stop()
    entries = [json.loads(x) for x in path.read_text().splitlines()]
    assert any("Xid" in e["MESSAGE"] for e in entries)
