"""RigCollector against an injected FakeNVML and the fixture /proc tree; asserts via the registry."""
import logging
import time
from pathlib import Path

import pynvml
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporter.collector import RigCollector
from exporter.containers import ContainerState
from exporter.docker_source import DockerContainerSource
from exporter.sim.fake_nvml import FakeGPU, FakeNVML, FakeProcess

PROC = Path(__file__).parent / "fixtures" / "proc"
OLLAMA_ID = "9e0c6a49e01e3e519a4f5bb9663075b4299ec2175e6e7f5e0bf0a210cb7faf77"  # pid 1001 (v2 systemd)
COMFY_ID = "e84ade0d7fe5abb67038ae7dc67ffbf36cf819bcd0a39ebb0b4acad87a134f33"   # pid 1004 (private ns)
U0 = "GPU-11111111-1111-1111-1111-111111111111"
U1 = "GPU-22222222-2222-2222-2222-222222222222"


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class ListSource:
    def __init__(self, containers):
        self.containers = containers

    def snapshot(self):
        return list(self.containers)


def rtx3090(**kw) -> FakeGPU:
    base = dict(name="NVIDIA GeForce RTX 3090", uuid=U0, pci_bus_id="00000000:01:00.0")
    return FakeGPU(**{**base, **kw})


def rtx3060(**kw) -> FakeGPU:
    base = dict(name="NVIDIA GeForce RTX 3060", uuid=U1, pci_bus_id="00000000:02:00.0",
                memory_total=12 * 1024**3, power_limit_mw=170_000)
    return FakeGPU(**{**base, **kw})


def make(gpus, source=None, **kw):
    nvml = kw.pop("nvml", None) or FakeNVML(gpus)
    kw.setdefault("clock", Clock())
    kw.setdefault("proc_root", PROC)
    collector = RigCollector(nvml, container_source=source, **kw)
    registry = CollectorRegistry()
    registry.register(collector)
    return nvml, collector, registry


def g(index, gpu: FakeGPU, **extra):
    return {"gpu": str(index), "uuid": gpu.uuid, "name": gpu.name, **extra}


def test_fast_and_slow_readings_in_contract_units():
    gpu = rtx3090(memory_used=10 * 1024**3, utilization_gpu=87, utilization_memory=41, temperature=71,
                  power_usage_mw=312_500, energy_mj=123_456_789, fan_speeds=[55, 104], fan_rpms=[1650, 1700],
                  clock_sm_mhz=1905, clock_mem_mhz=9501, clock_graphics_mhz=1905, performance_state=2,
                  pcie_tx_kbps=2000, pcie_rx_kbps=150_000, pcie_replays=3, pcie_link_gen=3, pcie_link_width=8,
                  ecc_corrected=5, ecc_uncorrected=1, remapped_rows=(2, 1, True, False))
    _, c, reg = make([gpu])
    c.refresh_slow()
    v = reg.get_sample_value
    lab = g(0, gpu)
    assert v("gpu_info", {**lab, "driver_version": "580.95.05", "pci_bus_id": "00000000:01:00.0",
                          "vbios_version": "94.02.42.00.A9"}) == 1
    assert v("gpu_up", lab) == 1
    assert v("gpu_utilization_ratio", lab) == pytest.approx(0.87)
    assert v("gpu_memory_utilization_ratio", lab) == pytest.approx(0.41)
    assert v("gpu_memory_used_bytes", lab) == 10 * 1024**3
    assert v("gpu_memory_free_bytes", lab) == 14 * 1024**3
    assert v("gpu_memory_total_bytes", lab) == 24 * 1024**3
    assert v("gpu_temperature_celsius", lab) == 71
    assert v("gpu_temperature_slowdown_threshold_celsius", lab) == 90
    assert v("gpu_power_usage_watts", lab) == 312.5
    assert v("gpu_power_limit_watts", lab) == 350
    assert v("gpu_energy_consumption_joules_total", lab) == pytest.approx(123_456.789)
    assert v("gpu_fan_speed_ratio", {**lab, "fan": "0"}) == pytest.approx(0.55)
    assert v("gpu_fan_speed_ratio", {**lab, "fan": "1"}) == pytest.approx(1.04)  # may exceed 1
    assert v("gpu_fan_speed_rpm", {**lab, "fan": "0"}) == 1650
    assert v("gpu_fan_speed_rpm", {**lab, "fan": "1"}) == 1700
    assert v("gpu_clock_hertz", {**lab, "clock": "sm"}) == 1905e6
    assert v("gpu_clock_hertz", {**lab, "clock": "memory"}) == 9501e6
    assert v("gpu_clock_hertz", {**lab, "clock": "graphics"}) == 1905e6
    assert v("gpu_performance_state", lab) == 2
    assert v("gpu_pcie_tx_bytes_per_second", lab) == 2000 * 1024
    assert v("gpu_pcie_rx_bytes_per_second", lab) == 150_000 * 1024
    assert v("gpu_pcie_replays_total", lab) == 3
    assert v("gpu_pcie_link_generation", lab) == 3
    assert v("gpu_pcie_link_width", lab) == 8
    assert v("gpu_ecc_errors_total", {**lab, "error_type": "corrected"}) == 5
    assert v("gpu_ecc_errors_total", {**lab, "error_type": "uncorrected"}) == 1
    assert v("gpu_remapped_rows", {**lab, "cause": "correctable"}) == 2
    assert v("gpu_remapped_rows", {**lab, "cause": "uncorrectable"}) == 1
    assert v("gpu_exporter_up") == 1
    assert v("gpu_exporter_collect_duration_seconds") > 0
    assert v("gpu_exporter_read_errors_total", {"field": "power_usage"}) is None


def test_slow_readings_stay_off_the_scrape_path():
    nvml, c, reg = make([rtx3090(), rtx3060()])
    assert reg.get_sample_value("gpu_energy_consumption_joules_total", g(0, rtx3090())) is None
    c.refresh_slow()
    before = {fn: nvml.calls.get(fn, 0) for fn in ("nvmlDeviceGetPcieThroughput",
                                                   "nvmlDeviceGetTotalEnergyConsumption",
                                                   "nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetName",
                                                   "nvmlDeviceGetMaxClockInfo")}
    for _ in range(5):
        generate_latest(reg)
    assert {fn: nvml.calls.get(fn, 0) for fn in before} == before
    assert nvml.calls["nvmlDeviceGetUtilizationRates"] >= 10  # the fast reads are per scrape


def test_clocks_event_reasons_snake_case():
    bits = pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown
    gpu = rtx3090(clocks_event_reasons=bits)
    _, _, reg = make([gpu])
    active = {r: reg.get_sample_value("gpu_clocks_event_reason_active", g(0, gpu, reason=r))
              for r in ("gpu_idle", "sw_power_cap", "hw_slowdown", "sw_thermal_slowdown",
                        "hw_thermal_slowdown", "hw_power_brake_slowdown")}
    assert active == {"gpu_idle": 0, "sw_power_cap": 1, "hw_slowdown": 0, "sw_thermal_slowdown": 0,
                      "hw_thermal_slowdown": 0, "hw_power_brake_slowdown": 1}


def test_throttle_reasons_fallback_on_older_bindings():
    nvml = FakeNVML([rtx3090(clocks_event_reasons=pynvml.nvmlClocksEventReasonHwSlowdown)])
    nvml.nvmlDeviceGetCurrentClocksEventReasons = None  # as if the binding predates the rename
    _, _, reg = make(None, nvml=nvml)
    assert reg.get_sample_value("gpu_clocks_event_reason_active", g(0, rtx3090(), reason="hw_slowdown")) == 1
    assert nvml.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 1


def test_not_supported_is_omitted_and_never_asked_again():
    gpu = rtx3060(unsupported={"nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetRemappedRows",
                               "nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetPowerUsage"})
    nvml, c, reg = make([gpu])
    for _ in range(3):
        c.refresh_slow()
        generate_latest(reg)
    lab = g(0, gpu)
    v = reg.get_sample_value
    assert v("gpu_ecc_errors_total", {**lab, "error_type": "corrected"}) is None
    assert v("gpu_remapped_rows", {**lab, "cause": "correctable"}) is None
    assert v("gpu_energy_consumption_joules_total", lab) is None
    assert v("gpu_power_usage_watts", lab) is None
    assert v("gpu_fan_speed_rpm", {**lab, "fan": "0"}) is None  # fan_rpms None: no RPM from driver
    assert nvml.calls["nvmlDeviceGetTotalEccErrors"] == 2  # corrected + uncorrected, once each
    assert nvml.calls["nvmlDeviceGetRemappedRows"] == 1
    assert nvml.calls["nvmlDeviceGetTotalEnergyConsumption"] == 1
    assert nvml.calls["nvmlDeviceGetPowerUsage"] == 1
    assert nvml.calls["nvmlDeviceGetFanSpeedRPM"] == 2  # fan 0 and fan 1, once each
    assert v("gpu_temperature_celsius", lab) == 40  # the rest is still there
    assert c.gpus.unsupported[(U1, "energy")] == "NOT_SUPPORTED"
    # Not an error: a GeForce board refusing ECC is normal.
    assert v("gpu_exporter_read_errors_total", {"field": "energy"}) is None


def test_fanless_h100_has_no_fan_series_and_is_not_asked():
    h100 = FakeGPU(name="NVIDIA H100 80GB HBM3", uuid=U0, fan_speeds=[], memory_total=80 * 1024**3)
    nvml, _, reg = make([h100])
    text = generate_latest(reg).decode()
    assert "gpu_fan_speed" not in text
    assert "nvmlDeviceGetFanSpeed_v2" not in nvml.calls
    assert "nvmlDeviceGetFanSpeedRPM" not in nvml.calls
    assert reg.get_sample_value("gpu_up", g(0, h100)) == 1


def test_fan_that_does_not_exist_is_not_asked_again():
    # NumFans says 2, but the driver knows RPM for one fan only and refuses fan 1's speed (as some
    # boards do): INVALID_ARGUMENT on a fan index is permanent, not a read error.
    gpu = rtx3090(fan_speeds=[40, 40], fan_rpms=[1200])
    nvml = FakeNVML([gpu])
    real_v2 = nvml.nvmlDeviceGetFanSpeed_v2
    refused = []

    def fan_speed_v2(handle, fan):
        if fan == 1:
            refused.append(fan)
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return real_v2(handle, fan)

    nvml.nvmlDeviceGetFanSpeed_v2 = fan_speed_v2
    _, _, reg = make(None, nvml=nvml)
    for _ in range(3):
        generate_latest(reg)
    assert nvml.calls["nvmlDeviceGetFanSpeedRPM"] == 3 + 1  # fan 0 every scrape, fan 1 once
    assert nvml.calls["nvmlDeviceGetFanSpeed_v2"] == 3 and refused == [1]
    v = reg.get_sample_value
    assert v("gpu_fan_speed_ratio", g(0, gpu, fan="0")) == pytest.approx(0.4)
    assert v("gpu_fan_speed_ratio", g(0, gpu, fan="1")) is None
    assert v("gpu_fan_speed_rpm", g(0, gpu, fan="0")) == 1200
    assert v("gpu_fan_speed_rpm", g(0, gpu, fan="1")) is None
    assert "gpu_exporter_read_errors_total" not in generate_latest(reg).decode()


def test_other_nvml_errors_are_counted_and_the_series_omitted():
    nvml = FakeNVML([rtx3090()])

    def broken(handle):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)

    _, _, reg = make(None, nvml=nvml)
    nvml.nvmlDeviceGetPowerUsage = broken
    # Each get_sample_value is a scrape, and counts its own failed read.
    assert reg.get_sample_value("gpu_power_usage_watts", g(0, rtx3090())) is None
    assert reg.get_sample_value("gpu_exporter_read_errors_total", {"field": "power_usage"}) == 2
    # unlike NOT_SUPPORTED, a transient error is asked again next scrape
    assert reg.get_sample_value("gpu_exporter_read_errors_total", {"field": "power_usage"}) == 3


def test_lost_gpu_withdraws_its_series_keeps_xid_and_is_found_again_by_uuid():
    a, b = rtx3090(), rtx3060()
    clock = Clock()
    nvml, c, reg = make([a, b], clock=clock, retry_interval=30)
    c.refresh_slow()
    v = reg.get_sample_value
    assert v("gpu_energy_consumption_joules_total", g(0, a)) == 0

    a.lost = True
    nvml.push_xid(0, 79)
    assert c.poll_events() == 1
    assert v("gpu_up", g(0, a)) == 0
    assert v("gpu_xid_errors_total", g(0, a, xid="79")) == 1  # kept while lost
    for series in ("gpu_temperature_celsius", "gpu_memory_used_bytes", "gpu_power_usage_watts",
                   "gpu_energy_consumption_joules_total", "gpu_pcie_rx_bytes_per_second"):
        assert v(series, g(0, a)) is None, series
    assert v("gpu_up", g(1, b)) == 1  # the other GPU is still served
    assert v("gpu_temperature_celsius", g(1, b)) == 40
    assert v("gpu_exporter_up") == 1  # NVML itself still works
    assert v("gpu_exporter_read_errors_total", {"field": "gpu_lost"}) == 1

    # No re-enumeration before the retry interval.
    count_calls = nvml.calls["nvmlDeviceGetCount"]
    c.refresh_slow()
    assert nvml.calls["nvmlDeviceGetCount"] == count_calls

    # After a reboot the card comes back in the other slot: its index shifts, its uuid does not.
    a.lost = False
    nvml.gpus = [b, a]
    clock.t += 31
    c.refresh_slow()
    assert v("gpu_up", g(1, a)) == 1
    assert v("gpu_up", g(0, a)) is None
    assert v("gpu_temperature_celsius", g(1, a)) == 40
    assert v("gpu_energy_consumption_joules_total", g(1, a)) == 0
    assert v("gpu_xid_errors_total", g(1, a, xid="79")) == 1
    assert v("gpu_up", g(0, b)) == 1


def test_gpu_lost_at_start_is_found_later():
    a, b = rtx3090(lost=True), rtx3060()
    clock = Clock()
    _, c, reg = make([a, b], clock=clock, retry_interval=10)
    assert reg.get_sample_value("gpu_up", g(1, b)) == 1
    assert reg.get_sample_value("gpu_up", g(0, a)) is None  # never seen: no uuid to label it with
    a.lost = False
    clock.t += 11
    c.refresh_slow()
    assert reg.get_sample_value("gpu_up", g(0, a)) == 1


def test_nvml_init_failure_serves_containers_and_recovers(caplog):
    nvml = FakeNVML([rtx3090()], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    clock = Clock()
    source = ListSource([ContainerState(OLLAMA_ID, "ollama", "ollama/ollama:0.5.7", True, 0, 1.7e9, False, None)])
    with caplog.at_level(logging.ERROR):
        _, c, reg = make(None, source=source, nvml=nvml, clock=clock, retry_interval=60)
    assert "NVML initialisation failed" in caplog.text
    c.refresh_slow()
    c.refresh_containers()
    v = reg.get_sample_value
    assert v("gpu_exporter_up") == 0
    assert v("gpu_up", g(0, rtx3090())) is None
    assert v("docker_container_running", {"container": "ollama", "image": "ollama/ollama:0.5.7"}) == 1
    assert v("gpu_exporter_read_errors_total", {"field": "nvml_init"}) == 1  # no retry yet

    nvml.init_error = None  # the driver got loaded
    clock.t += 61
    c.refresh_slow()
    assert v("gpu_exporter_up") == 1
    assert v("gpu_up", g(0, rtx3090())) == 1


def test_nvml_module_missing_is_not_a_crash():
    collector = RigCollector(None, proc_root=PROC)
    reg = CollectorRegistry()
    reg.register(collector)
    collector.refresh_slow()
    assert reg.get_sample_value("gpu_exporter_up") == 0


def test_docker_socket_missing(tmp_path):
    source = DockerContainerSource(f"unix://{tmp_path}/no-such-docker.sock", timeout=1)
    _, c, reg = make([rtx3090()], source=source)
    c.refresh_containers()
    c.refresh_containers()
    text = generate_latest(reg).decode()
    assert "docker_container" not in text
    assert reg.get_sample_value("gpu_exporter_read_errors_total", {"field": "docker"}) == 2
    assert reg.get_sample_value("gpu_up", g(0, rtx3090())) == 1


def test_host_boot_time_from_proc_stat_and_a_missing_file_is_counted(tmp_path):
    """btime from <proc root>/stat, read with the container refresh; unreadable: no sample, counted."""
    _, c, reg = make([rtx3090()])  # the fixture tree's stat says btime 1793000000
    assert reg.get_sample_value("gpu_exporter_host_boot_time_seconds") is None  # not read yet
    c.refresh_containers()
    assert reg.get_sample_value("gpu_exporter_host_boot_time_seconds") == 1_793_000_000
    assert reg.get_sample_value("gpu_exporter_read_errors_total", {"field": "boot_time"}) is None

    (tmp_path / "stat").write_text("cpu  1 2 3 4\nbtime 1793086400\nprocesses 9\n")
    _, c, reg = make([rtx3090()], proc_root=tmp_path)
    c.refresh_containers()
    assert reg.get_sample_value("gpu_exporter_host_boot_time_seconds") == 1_793_086_400
    (tmp_path / "stat").unlink()
    c.refresh_containers()
    c.refresh_containers()
    assert reg.get_sample_value("gpu_exporter_host_boot_time_seconds") is None
    assert reg.get_sample_value("gpu_exporter_read_errors_total", {"field": "boot_time"}) == 2
    (tmp_path / "stat").write_text("cpu  1 2 3 4\nbtime garbage\n")  # no usable btime: the same
    c.refresh_containers()
    assert reg.get_sample_value("gpu_exporter_host_boot_time_seconds") is None
    assert reg.get_sample_value("gpu_exporter_read_errors_total", {"field": "boot_time"}) == 3
    assert reg.get_sample_value("gpu_up", g(0, rtx3090())) == 1


def test_container_metrics():
    source = ListSource([
        ContainerState(OLLAMA_ID, "ollama", "ollama/ollama:0.5.7", True, 3, 1_767_000_000.5, False, "healthy"),
        ContainerState(COMFY_ID, "comfyui", "", False, 0, None, True, None),
    ])
    _, c, reg = make([], source=source)
    c.refresh_containers()
    v = reg.get_sample_value
    ollama = {"container": "ollama", "image": "ollama/ollama:0.5.7"}
    comfy = {"container": "comfyui", "image": "unknown"}  # never an empty label value
    assert v("docker_container_running", ollama) == 1
    assert v("docker_container_restarts_total", ollama) == 3
    assert v("docker_container_last_start_timestamp_seconds", ollama) == 1_767_000_000.5
    assert v("docker_container_oom_killed", ollama) == 0
    assert v("docker_container_health_status", {**ollama, "status": "healthy"}) == 1
    assert v("docker_container_health_status", {**ollama, "status": "unhealthy"}) == 0
    assert v("docker_container_running", comfy) == 0
    assert v("docker_container_oom_killed", comfy) == 1
    assert v("docker_container_last_start_timestamp_seconds", comfy) is None  # never started
    assert v("docker_container_health_status", {**comfy, "status": "healthy"}) is None  # no healthcheck


def test_workload_attribution_through_proc_and_container_names():
    gpu = rtx3090(
        compute_processes=[FakeProcess(1001, 8 * 1024**3),       # docker-<id>.scope -> "ollama" container
                           FakeProcess(1005, 1 * 1024**3),       # ollama.service
                           FakeProcess(1006, 2 * 1024**3),       # ollama.service (cgroup v1)
                           FakeProcess(1007, 3 * 1024**3),       # H100-style /process_api: a process
                           FakeProcess(1004, None)],             # private-ns container, memory unknown
        graphics_processes=[FakeProcess(1008, 512 * 1024**2),    # desktop app
                            FakeProcess(1001, 8 * 1024**3)])     # same PID on both lists: once
    source = ListSource([ContainerState(OLLAMA_ID, "ollama", "ollama/ollama:0.5.7", True, 0, None, False, None)])
    _, c, reg = make([gpu], source=source)
    c.refresh_containers()
    v = reg.get_sample_value

    def w(name, kind):
        return g(0, gpu, workload=name, workload_kind=kind)

    assert v("gpu_process_count", g(0, gpu)) == 6
    assert v("gpu_workload_memory_used_bytes", w("ollama", "container")) == 8 * 1024**3
    assert v("gpu_workload_processes", w("ollama", "container")) == 1
    assert v("gpu_workload_memory_used_bytes", w("ollama.service", "systemd_unit")) == 3 * 1024**3
    assert v("gpu_workload_processes", w("ollama.service", "systemd_unit")) == 2
    assert v("gpu_workload_memory_used_bytes", w("python", "process")) == 3 * 1024**3
    assert v("gpu_workload_memory_used_bytes", w("blender", "process")) == 512 * 1024**2
    # A container the source does not know (yet): its short id; unknown memory is omitted, not 0.
    assert v("gpu_workload_processes", w(COMFY_ID[:12], "container")) == 1
    assert v("gpu_workload_memory_used_bytes", w(COMFY_ID[:12], "container")) is None
    # Per-PID series are opt-in.
    assert "gpu_process_memory_used_bytes" not in generate_latest(reg).decode()


def test_process_count_is_zero_on_an_idle_gpu():
    gpu = rtx3060()
    _, _, reg = make([gpu])
    assert reg.get_sample_value("gpu_process_count", g(0, gpu)) == 0
    assert "gpu_workload_" not in generate_latest(reg).decode()


def test_per_pid_series_behind_the_flag():
    gpu = rtx3090(compute_processes=[FakeProcess(1005, 1024**3)])
    _, _, reg = make([gpu], per_pid=True)
    assert reg.get_sample_value("gpu_process_memory_used_bytes", g(
        0, gpu, pid="1005", workload="ollama.service", workload_kind="systemd_unit")) == 1024**3


def test_no_empty_label_values():
    gpu = rtx3090(name="", compute_processes=[FakeProcess(1013, 1)])  # no /proc entry, no name
    _, c, reg = make([gpu], source=ListSource([ContainerState(OLLAMA_ID, "", "", True, 0, None, False, None)]))
    c.refresh_slow()
    c.refresh_containers()
    samples = [s for fam in reg.collect() for s in fam.samples]
    assert samples
    for s in samples:
        assert all(value != "" for value in s.labels.values()), s
    assert reg.get_sample_value("gpu_workload_processes", {
        "gpu": "0", "uuid": U0, "name": "unknown", "workload": "unknown", "workload_kind": "process"}) == 1


def test_xid_counts_per_code_and_gpu():
    a, b = rtx3090(), rtx3060()
    nvml, c, reg = make([a, b])
    assert "gpu_xid_errors_total" not in generate_latest(reg).decode()  # only once a code is seen
    nvml.push_xid(1, 13)
    nvml.push_xid(1, 13)
    nvml.push_xid(0, 31)
    assert c.poll_events() == 3
    assert c.poll_events() == 0
    v = reg.get_sample_value
    assert v("gpu_xid_errors_total", g(1, b, xid="13")) == 2
    assert v("gpu_xid_errors_total", g(0, a, xid="31")) == 1
    assert v("gpu_xid_errors_total", g(0, a, xid="13")) is None


def test_live_mode_threads_sample_and_count_xids():
    gpu = rtx3090(energy_mj=5000)
    nvml, c, reg = make([gpu], slow_interval=0.05, container_interval=0.05)
    c.start()
    try:
        assert reg.get_sample_value("gpu_energy_consumption_joules_total", g(0, gpu)) == 5  # sync first pass
        gpu.energy_mj = 9000
        nvml.push_xid(0, 79)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if (reg.get_sample_value("gpu_energy_consumption_joules_total", g(0, gpu)) == 9
                    and reg.get_sample_value("gpu_xid_errors_total", g(0, gpu, xid="79")) == 1):
                break
            time.sleep(0.02)
        assert reg.get_sample_value("gpu_energy_consumption_joules_total", g(0, gpu)) == 9
        assert reg.get_sample_value("gpu_xid_errors_total", g(0, gpu, xid="79")) == 1
    finally:
        c.stop()
