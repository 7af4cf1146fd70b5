"""Check rigwatch-exporter against the real GPUs of this machine.

Runs the exporter in-process on real NVML (nvidia-ml-py), serves it on a loopback port, scrapes it
over HTTP and checks every metric of the published contract: present, or deliberately absent with
the reason (the driver answered NOT_SUPPORTED, the board has no fans, no Xid seen yet...). Prints a
table, the fields the driver refused and the scrape time.

    .venv/bin/python scripts/gpu_check.py            # real NVML; exit 2 if NVML is unusable
    .venv/bin/python scripts/gpu_check.py --fake     # the same checks against FakeNVML (no GPU needed)

Exit status: 0 all contract metrics accounted for, 1 some are missing without a reason, 2 no NVML.
"""
from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from exporter.collector import RigCollector  # noqa: E402
from exporter.docker_source import DEFAULT_DOCKER_URL, DockerContainerSource  # noqa: E402
from exporter.server import MetricsServer  # noqa: E402

# Per-GPU contract metrics -> the reader fields whose NVML answer explains an absence.
GPU_METRICS: dict[str, tuple[str, ...]] = {
    "gpu_info": (),
    "gpu_up": (),
    "gpu_utilization_ratio": ("utilization",),
    "gpu_memory_utilization_ratio": ("utilization",),
    "gpu_memory_used_bytes": ("memory_info",),
    "gpu_memory_free_bytes": ("memory_info",),
    "gpu_memory_total_bytes": ("memory_info",),
    "gpu_temperature_celsius": ("temperature",),
    "gpu_temperature_slowdown_threshold_celsius": ("temperature_threshold_slowdown",),
    "gpu_power_usage_watts": ("power_usage",),
    "gpu_power_limit_watts": ("power_limit",),
    "gpu_energy_consumption_joules_total": ("energy",),
    "gpu_fan_speed_ratio": ("num_fans", "fan_speed", "fan_speed_0"),
    "gpu_fan_speed_rpm": ("fan_speed_rpm_0",),
    "gpu_clock_hertz": ("clock_graphics", "clock_sm", "clock_memory"),
    "gpu_performance_state": ("performance_state",),
    "gpu_clocks_event_reason_active": ("clocks_event_reasons",),
    "gpu_pcie_tx_bytes_per_second": ("pcie_tx_throughput",),
    "gpu_pcie_rx_bytes_per_second": ("pcie_rx_throughput",),
    "gpu_pcie_replays_total": ("pcie_replays",),
    "gpu_pcie_link_generation": ("pcie_link_generation",),
    "gpu_pcie_link_width": ("pcie_link_width",),
    "gpu_ecc_errors_total": ("ecc_errors_corrected", "ecc_errors_uncorrected"),
    "gpu_remapped_rows": ("remapped_rows",),
    "gpu_xid_errors_total": (),
    "gpu_workload_memory_used_bytes": ("compute_processes", "graphics_processes"),
    "gpu_process_count": ("compute_processes", "graphics_processes"),
}
CONTAINER_METRICS = ("docker_container_running", "docker_container_restarts_total",
                     "docker_container_last_start_timestamp_seconds", "docker_container_oom_killed",
                     "docker_container_health_status")
EXPORTER_METRICS = ("gpu_exporter_up", "gpu_exporter_collect_duration_seconds", "gpu_exporter_read_errors_total")


def fake_nvml():
    """A GeForce board that refuses what GeForce boards refuse, and a fanless H100."""
    from exporter.sim.fake_nvml import FakeGPU, FakeNVML, FakeProcess

    geforce = FakeGPU(name="NVIDIA GeForce RTX 3090", uuid="GPU-5f4c2a9e-0000-0000-0000-000000000001",
                      unsupported={"nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetRemappedRows"},
                      compute_processes=[FakeProcess(1, 2 * 1024**3)])
    h100 = FakeGPU(name="NVIDIA H100 80GB HBM3", uuid="GPU-5f4c2a9e-0000-0000-0000-000000000002",
                   pci_bus_id="00000000:02:00.0", fan_speeds=[], memory_total=80 * 1024**3,
                   power_limit_mw=700_000)
    return FakeNVML([geforce, h100])


def scrape(url: str, n: int) -> tuple[str, list[float]]:
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    times, body = [], b""
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read()
        times.append(time.perf_counter() - t0)
        if resp.status != 200:
            raise RuntimeError(f"/metrics answered {resp.status}: {body[:200]!r}")
    conn.close()
    return body.decode(), times


def absence_reason(collector: RigCollector, dev, metric: str, present_uuids: dict[str, set[str]]) -> str | None:
    """Why `metric` is deliberately absent for `dev`, or None if nothing explains it."""
    if dev.lost:
        return "GPU lost (GPU_IS_LOST): value series withdrawn"
    for field in GPU_METRICS[metric]:
        answer = collector.gpus.unsupported.get((dev.uuid, field))
        if answer:
            return f"{answer} ({field})"
    if metric in ("gpu_fan_speed_ratio", "gpu_fan_speed_rpm") and dev.num_fans == 0:
        return "no fans (nvmlDeviceGetNumFans = 0)"
    if metric == "gpu_xid_errors_total":
        return "no Xid seen since start (present once a code is seen)"
    if metric == "gpu_workload_memory_used_bytes":
        if dev.uuid in present_uuids.get("gpu_workload_processes", ()):
            return "NVML reports no per-process memory for these processes"
        return "no GPU processes running"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fake", action="store_true", help="check against FakeNVML instead of the driver")
    ap.add_argument("--docker-url", default=DEFAULT_DOCKER_URL, help="Docker API, or 'none'")
    ap.add_argument("--scrapes", type=int, default=50, help="scrapes to time (default 50)")
    args = ap.parse_args(argv)

    if args.fake:
        nvml = fake_nvml()
    else:
        try:
            import pynvml as nvml
        except ImportError:
            print("NVML check failed: nvidia-ml-py is not installed (pip install nvidia-ml-py)", file=sys.stderr)
            return 2
    source = None if args.docker_url == "none" else DockerContainerSource(args.docker_url, timeout=2)
    collector = RigCollector(nvml, container_source=source)
    if not collector.gpus.up:
        print(f"NVML check failed: NVML did not initialise: {collector.gpus.init_error}. Is the NVIDIA "
              "driver loaded (does `nvidia-smi` work)? Use --fake to check the script without a GPU.",
              file=sys.stderr)
        return 2

    registry = CollectorRegistry()
    registry.register(collector)
    server = MetricsServer(registry, "127.0.0.1", 0)
    t0 = time.perf_counter()
    collector.refresh_slow()
    slow_pass = time.perf_counter() - t0
    collector.start()
    server.start()
    try:
        collector.poll_events(0)
        body, times = scrape(server.url, max(1, args.scrapes))
    finally:
        server.stop()
        collector.stop()
        collector.gpus.shutdown()

    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    present_uuids = {name: {s.labels.get("uuid") for s in ss} for name, ss in samples.items()}

    rows: list[tuple[str, str, str, str]] = []  # metric, gpu, status, detail
    missing = 0
    devices = collector.gpus.devices()
    for metric in GPU_METRICS:
        for dev in devices:
            n = sum(1 for s in samples.get(metric, []) if s.labels.get("uuid") == dev.uuid)
            if n:
                rows.append((metric, str(dev.index), "ok", f"{n} series"))
                continue
            reason = absence_reason(collector, dev, metric, present_uuids)
            if reason:
                rows.append((metric, str(dev.index), "absent", reason))
            else:
                rows.append((metric, str(dev.index), "MISSING", "no series and no reason"))
                missing += 1
    docker_errors = collector.errors.snapshot().get("docker", 0)
    for metric in CONTAINER_METRICS:
        n = len(samples.get(metric, []))
        if n:
            rows.append((metric, "-", "ok", f"{n} series"))
        elif source is None:
            rows.append((metric, "-", "absent", "--docker-url none"))
        elif docker_errors:
            rows.append((metric, "-", "absent", f"Docker API at {args.docker_url} not reachable"))
        elif metric == "docker_container_health_status":
            rows.append((metric, "-", "absent", "no container has a healthcheck"))
        elif metric == "docker_container_last_start_timestamp_seconds" and samples.get("docker_container_running"):
            rows.append((metric, "-", "absent", "no container has started"))
        else:
            rows.append((metric, "-", "absent", "no containers"))
    for metric in EXPORTER_METRICS:
        if samples.get(metric):
            value = samples[metric][0].value if len(samples[metric]) == 1 else f"{len(samples[metric])} series"
            rows.append((metric, "-", "ok", str(value)))
        elif metric == "gpu_exporter_read_errors_total":
            rows.append((metric, "-", "absent", "no read errors"))
        else:
            rows.append((metric, "-", "MISSING", "no series"))
            missing += 1

    width = max(len(r[0]) for r in rows)
    print(f"{'metric':<{width}}  gpu  {'status':<7}  detail")
    for metric, gpu, status, detail in rows:
        print(f"{metric:<{width}}  {gpu:<3}  {status:<7}  {detail}")
    print()
    print(f"driver {collector.gpus.driver_version}; GPUs: " +
          "; ".join(f"{d.index}: {d.name} ({d.uuid}, fans {d.num_fans})" for d in devices))
    refused = sorted(f"gpu {next(d.index for d in devices if d.uuid == u)}: {f} {a}"
                     for (u, f), a in collector.gpus.unsupported.items())
    print("fields the driver refused (never asked again): " + (", ".join(refused) or "none"))
    times.sort()
    print(f"one background pass of the slow reads: {slow_pass * 1e3:.1f} ms; /metrics over HTTP: "
          f"{len(times)} scrapes, p50 {statistics.median(times) * 1e3:.2f} ms, "
          f"max {times[-1] * 1e3:.2f} ms, {len(body.encode())} bytes")
    print("result: " + ("all contract metrics present or deliberately absent" if not missing
                        else f"{missing} contract metric(s) MISSING without a reason"))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
