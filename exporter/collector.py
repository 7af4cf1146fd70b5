"""The rigwatch custom collector: GPUs (NVML), their processes' workloads (/proc), containers
(Docker API or the sim) and inference servers (Ollama, ComfyUI or the sim's) as Prometheus metric
families, built fresh on every scrape.

`collect()` only does the cheap things: per-GPU fast NVML reads (microseconds each) and dictionary
lookups into caches. The slow NVML reads, the container snapshot, the inference servers' states and
the Xid events are refreshed by `refresh_slow()`, `refresh_containers()`, `refresh_inference()` and
`poll_events()`, which `start()` runs on background threads (live mode) and the sim's history writer
calls synchronously (no threads).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from os import PathLike

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from exporter.attribution import CONTAINER, Attributor
from exporter.containers import ContainerState
from exporter.gpu_reader import CLOCKS_EVENT_REASONS, GpuDevice, NvmlGpus
from exporter.host import BootTime
from exporter.inference import ServerState
from exporter.read_errors import ReadErrors
from exporter.sampler import PeriodicThread
from exporter.xid import XidWatcher

log = logging.getLogger("rigwatch.exporter")

GPU_LABELS = ["gpu", "uuid", "name"]
CONTAINER_LABELS = ["container", "image"]
SERVER_LABELS = ["server"]
MODEL_LABELS = ["server", "model"]
HEALTH_STATES = ("healthy", "unhealthy", "starting")


def label(value) -> str:
    """Prometheus treats an empty label value as no label at all: never emit one."""
    s = "" if value is None else str(value)
    return s if s else "unknown"


class _Families:
    """The families of one scrape, created on first use so a metric with no samples is left out."""

    def __init__(self) -> None:
        self._fams: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}

    def add(self, kind, name: str, doc: str, labels: list[str], values: list[str], value: float) -> None:
        fam = self._fams.get(name)
        if fam is None:
            fam = self._fams[name] = kind(name, doc, labels=labels)
        fam.add_metric(values, value)

    def gauge(self, name, doc, labels, values, value):
        self.add(GaugeMetricFamily, name, doc, labels, values, value)

    def counter(self, name, doc, labels, values, value):
        # CounterMetricFamily("x_total") exposes x_total; the name is given with its suffix so the
        # contract names are greppable here.
        self.add(CounterMetricFamily, name, doc, labels, values, value)

    def __iter__(self):
        return iter(self._fams.values())


class RigCollector(Collector):
    """prometheus_client custom collector for one AI box. The outside world comes in through the
    constructor: `nvml` (pynvml or a FakeNVML), `container_source` (anything with `snapshot()`),
    `inference_sources` (anything with `server` and `poll() -> ServerState`), `proc_root` and `clock`."""

    def __init__(self, nvml, container_source=None, proc_root: str | PathLike = "/proc",
                 clock: Callable[[], float] = time.time, per_pid: bool = False,
                 slow_interval: float = 5.0, container_interval: float = 10.0,
                 retry_interval: float = 10.0, inference_sources: Iterable = (),
                 inference_interval: float = 10.0):
        self.container_source = container_source
        self.inference_sources = tuple(inference_sources)
        servers = [s.server for s in self.inference_sources]
        dupes = sorted({s for s in servers if servers.count(s) > 1})
        if dupes:  # two sources under one name would publish clashing series
            raise ValueError(f"inference sources: server name(s) used twice: {', '.join(dupes)}")
        self.inference_interval = inference_interval
        self.clock = clock
        self.per_pid = per_pid
        self.slow_interval = slow_interval
        self.container_interval = container_interval
        self.errors = ReadErrors()
        self.gpus = NvmlGpus(nvml, self.errors, clock=clock, retry_interval=retry_interval)
        self.xid = XidWatcher(nvml, self.errors)
        self.gpus.listeners.append(self.xid.register)
        self.attributor = Attributor(proc_root, self.errors)
        self.boot_time = BootTime(proc_root, self.errors)
        self._containers: list[ContainerState] | None = None
        self._container_names: dict[str, str] = {}
        self._docker_ok: bool | None = None
        # The last poll of each source, replaced whole (one reference swap) so a scrape on another
        # thread always reads one consistent list. Empty until the first poll: unknown, not down.
        self._inference: tuple[ServerState, ...] = ()
        self._threads: list[PeriodicThread] = []
        self._xid_stop = threading.Event()
        self._xid_thread: threading.Thread | None = None
        self.gpus.start()

    # --- off-scrape refreshers ------------------------------------------------------------------
    def refresh_slow(self) -> None:
        """One synchronous pass of the slow NVML reads (and NVML/lost-GPU retries when due)."""
        self.gpus.refresh_slow()

    def refresh_containers(self) -> None:
        """Re-read the container source, re-attribute the known GPU PIDs and re-read the host's boot
        time (the same /proc, on the same thread: a reboot shows within one refresh)."""
        if self.container_source is not None:
            try:
                snapshot = list(self.container_source.snapshot())
            except Exception as e:  # the source's own error types vary (Docker SDK, requests, OS)
                self.errors.inc("docker")
                self._containers = None
                if self._docker_ok is not False:
                    log.warning("container source unavailable, container metrics withheld: %s", e)
                self._docker_ok = False
            else:
                if self._docker_ok is False:
                    log.info("container source is back (%d containers)", len(snapshot))
                self._docker_ok = True
                self._containers = snapshot
                self._container_names = {c.id: c.name for c in snapshot}
        self.attributor.refresh()
        self.boot_time.refresh()

    def refresh_inference(self) -> None:
        """Poll every inference source once and cache the states. Sources never raise for a down
        server; one that raises anyway is counted and taken as down, and the others are still polled.
        Every poll that is not up counts as a failed read of field "inference"."""
        states = []
        for source in self.inference_sources:
            try:
                state = source.poll()
            except Exception:  # a source's bug must not blank the other servers
                log.exception("inference source %s raised; taken as down", source.server)
                state = ServerState(source.server, up=False)
            if not state.up:
                self.errors.inc("inference")
            states.append(state)
        self._inference = tuple(states)

    def poll_events(self, timeout_ms: int = 0) -> int:
        """Drain pending NVML Xid events synchronously; returns how many were counted."""
        return max(self.xid.poll(timeout_ms), 0)

    def start(self) -> None:
        """Live mode: one synchronous refresh (so the first scrape is complete), then background
        sampler threads and the Xid event thread. The inference servers are polled on their thread
        from the start, not synchronously: a hung server must not hold up the exporter's start, and
        until the first poll their state is unknown (no series), not down."""
        if self._threads:
            return
        self.refresh_slow()
        self.refresh_containers()
        self._threads = [
            PeriodicThread("nvml-slow", self.slow_interval, self.refresh_slow, wait_first=True),
            PeriodicThread("containers", self.container_interval, self.refresh_containers, wait_first=True)]
        if self.inference_sources:
            self._threads.append(PeriodicThread("inference", self.inference_interval, self.refresh_inference))
        for t in self._threads:
            t.start()
        self._xid_stop.clear()
        self._xid_thread = threading.Thread(target=self.xid.run, args=(self._xid_stop,),
                                            name="rigwatch-xid", daemon=True)
        self._xid_thread.start()

    def stop(self) -> None:
        for t in self._threads:
            t.stop()
        self._threads = []
        self._xid_stop.set()
        if self._xid_thread is not None:
            self._xid_thread.join(5)
            self._xid_thread = None
        self.xid.close()

    # --- scrape ---------------------------------------------------------------------------------
    def describe(self):
        return []  # registering must not scrape NVML

    def collect(self) -> Iterator:
        started = time.perf_counter()
        f = _Families()
        driver = label(self.gpus.driver_version)
        xids = self.xid.counts()
        live_pids: set[int] = set()
        processes_read = False
        for dev in self.gpus.devices():
            ids = [str(dev.index), label(dev.uuid), label(dev.name)]
            f.gauge("gpu_info", "GPU identity; value is always 1.", GPU_LABELS +
                    ["driver_version", "pci_bus_id", "vbios_version"],
                    ids + [driver, label(dev.pci_bus_id), label(dev.vbios_version)], 1)
            fast = self.gpus.read_fast(dev)
            f.gauge("gpu_up", "1 if the GPU answers NVML, 0 while it is lost.", GPU_LABELS, ids,
                    0 if fast is None else 1)
            for code, n in sorted(xids.get(dev.uuid, {}).items()):
                f.counter("gpu_xid_errors_total", "NVML Xid critical errors seen, by Xid code.",
                          GPU_LABELS + ["xid"], ids + [str(code)], n)
            if fast is None:
                continue
            self._gpu_values(f, dev, ids, fast)
            procs = fast.get("processes")
            if procs is not None:
                processes_read = True
                live_pids.update(procs)
                self._workloads(f, ids, procs)
        if processes_read:
            self.attributor.retain(live_pids)
        self._container_metrics(f)
        self._inference_metrics(f)
        f.gauge("gpu_exporter_up", "1 if NVML is initialised and usable.", [], [], 1 if self.gpus.up else 0)
        boot = self.boot_time.value
        if boot is not None:
            f.gauge("gpu_exporter_host_boot_time_seconds", "When the host last booted (btime of /proc/stat), "
                    "epoch seconds; a new value is a reboot.", [], [], boot)
        for field_name, n in sorted(self.errors.snapshot().items()):
            f.counter("gpu_exporter_read_errors_total", "Failed reads, by field.", ["field"], [field_name], n)
        yield from f
        duration = GaugeMetricFamily("gpu_exporter_collect_duration_seconds",
                                     "Time this collect took to build its metrics.")
        duration.add_metric([], time.perf_counter() - started)
        yield duration

    def _gpu_values(self, f: _Families, dev: GpuDevice, ids: list[str], r: dict) -> None:
        g = f.gauge
        for key, name, doc in (
                ("utilization", "gpu_utilization_ratio", "Fraction of time a kernel ran (0-1)."),
                ("memory_utilization", "gpu_memory_utilization_ratio",
                 "Fraction of time the memory controller was busy (0-1), not VRAM in use."),
                ("memory_used", "gpu_memory_used_bytes", "VRAM in use."),
                ("memory_free", "gpu_memory_free_bytes", "VRAM free."),
                ("memory_total", "gpu_memory_total_bytes", "VRAM total."),
                ("temperature", "gpu_temperature_celsius", "GPU core temperature."),
                ("power", "gpu_power_usage_watts", "Board power draw."),
                ("power_limit", "gpu_power_limit_watts", "Enforced power limit."),
                ("performance_state", "gpu_performance_state", "P-state (0 fastest .. 15 slowest).")):
            if key in r:
                g(name, doc, GPU_LABELS, ids, r[key])
        if dev.slowdown_threshold_c is not None:
            g("gpu_temperature_slowdown_threshold_celsius", "Temperature at which the GPU slows down.",
              GPU_LABELS, ids, dev.slowdown_threshold_c)
        for fan, reading in r.get("fans", {}).items():
            if "ratio" in reading:
                g("gpu_fan_speed_ratio", "Intended fan speed as a fraction of max (may exceed 1; a "
                  "seized fan still reports its target).", GPU_LABELS + ["fan"], ids + [fan], reading["ratio"])
            if "rpm" in reading:
                g("gpu_fan_speed_rpm", "Fan speed in RPM where the driver reports it.",
                  GPU_LABELS + ["fan"], ids + [fan], reading["rpm"])
        for clock, hz in r.get("clocks", {}).items():
            g("gpu_clock_hertz", "Current clock.", GPU_LABELS + ["clock"], ids + [clock], hz)
        for clock, hz in dev.max_clocks_hz.items():
            g("gpu_clock_max_hertz", "Maximum clock.", GPU_LABELS + ["clock"], ids + [clock], hz)
        if "clocks_event_reasons" in r:
            bits = r["clocks_event_reasons"]
            for bit, reason in CLOCKS_EVENT_REASONS:
                g("gpu_clocks_event_reason_active", "1 if this reason is holding the clocks down.",
                  GPU_LABELS + ["reason"], ids + [reason], 1 if bits & bit else 0)
        s = dev.slow
        for key, name, doc in (
                ("pcie_tx", "gpu_pcie_tx_bytes_per_second", "PCIe transmit throughput (sampled)."),
                ("pcie_rx", "gpu_pcie_rx_bytes_per_second", "PCIe receive throughput (sampled)."),
                ("pcie_link_generation", "gpu_pcie_link_generation", "Current PCIe link generation."),
                ("pcie_link_width", "gpu_pcie_link_width", "Current PCIe link width (lanes).")):
            if key in s:
                g(name, doc, GPU_LABELS, ids, s[key])
        if "pcie_replays" in s:
            f.counter("gpu_pcie_replays_total", "PCIe replays.", GPU_LABELS, ids, s["pcie_replays"])
        if "energy" in s:
            f.counter("gpu_energy_consumption_joules_total", "Energy used since the driver loaded.",
                      GPU_LABELS, ids, s["energy"])
        for error_type, n in s.get("ecc", {}).items():
            f.counter("gpu_ecc_errors_total", "ECC memory errors (aggregate).",
                      GPU_LABELS + ["error_type"], ids + [error_type], n)
        if "remapped_rows" in s:
            corr, unc, pending, failed = s["remapped_rows"]
            for cause, n in (("correctable", corr), ("uncorrectable", unc)):
                g("gpu_remapped_rows", "Memory rows remapped, by cause.", GPU_LABELS + ["cause"],
                  ids + [cause], n)
            g("gpu_remapped_rows_pending", "1 if a row remap waits for a GPU reset.", GPU_LABELS, ids,
              1 if pending else 0)
            g("gpu_remapped_rows_failed", "1 if a row remap failed.", GPU_LABELS, ids, 1 if failed else 0)

    def _workload_name(self, kind: str, key: str) -> str:
        if kind == CONTAINER:
            return self._container_names.get(key) or key[:12]
        return key

    def _workloads(self, f: _Families, ids: list[str], procs: dict[int, int | None]) -> None:
        per: dict[tuple[str, str], list] = {}  # (workload, kind) -> [count, known bytes, any known]
        for pid, used in procs.items():
            owner = self.attributor.owner(pid)
            workload = label(self._workload_name(owner.kind, owner.key))
            agg = per.setdefault((workload, owner.kind), [0, 0, False])
            agg[0] += 1
            if used is not None:
                agg[1] += used
                agg[2] = True
            if self.per_pid and used is not None:
                f.gauge("gpu_process_memory_used_bytes", "VRAM used by one process (opt-in).",
                        GPU_LABELS + ["pid", "workload", "workload_kind"],
                        ids + [str(pid), workload, owner.kind], used)
        f.gauge("gpu_process_count", "Compute and graphics processes on this GPU.", GPU_LABELS, ids, len(procs))
        for (workload, kind), (count, used, known) in sorted(per.items()):
            f.gauge("gpu_workload_processes", "GPU processes of this workload on this GPU.",
                    GPU_LABELS + ["workload", "workload_kind"], ids + [workload, kind], count)
            if known:  # NVML may not know per-process memory (e.g. WDDM); omit rather than say 0
                f.gauge("gpu_workload_memory_used_bytes", "VRAM used by this workload's processes.",
                        GPU_LABELS + ["workload", "workload_kind"], ids + [workload, kind], used)

    def _container_metrics(self, f: _Families) -> None:
        containers = self._containers
        if containers is None:
            return
        for c in containers:
            ids = [label(c.name), label(c.image)]
            f.gauge("docker_container_running", "1 if the container is running.", CONTAINER_LABELS, ids,
                    1 if c.running else 0)
            f.counter("docker_container_restarts_total", "Restarts by the restart policy.",
                      CONTAINER_LABELS, ids, c.restart_count)
            if c.started_at is not None:
                f.gauge("docker_container_last_start_timestamp_seconds", "When the container last started.",
                        CONTAINER_LABELS, ids, c.started_at)
            f.gauge("docker_container_oom_killed", "1 if the last exit was an OOM kill.", CONTAINER_LABELS,
                    ids, 1 if c.oom_killed else 0)
            if c.health is not None:
                for status in HEALTH_STATES:
                    f.gauge("docker_container_health_status", "1 for the container's current health state.",
                            CONTAINER_LABELS + ["status"], ids + [status], 1 if c.health == status else 0)

    def _inference_metrics(self, f: _Families) -> None:
        for st in self._inference:
            server = label(st.server)
            f.gauge("inference_server_up", "1 if the inference server answered its last poll, else 0.",
                    SERVER_LABELS, [server], 1 if st.up else 0)
            if not st.up:
                continue  # what a down server held is unknown: no model series
            seen: set[str] = set()
            for m in st.models:
                model = label(m.name)
                if model in seen:  # one series per model, even if a server lists a model twice
                    continue
                seen.add(model)
                ids = [server, model]
                g = f.gauge
                g("inference_model_loaded", "1 for each model the server holds in memory.", MODEL_LABELS, ids, 1)
                g("inference_model_size_bytes", "Memory a loaded model takes (weights + KV cache), wherever "
                  "it sits.", MODEL_LABELS, ids, m.size_bytes)
                g("inference_model_vram_bytes", "The part of a loaded model in GPU memory; below "
                  "inference_model_size_bytes the model spilled to CPU.", MODEL_LABELS, ids, m.vram_bytes)
                if m.expires_at is not None:
                    g("inference_model_expires_timestamp_seconds", "When the server unloads the model if it "
                      "stays unused.", MODEL_LABELS, ids, m.expires_at)
                if m.context_length is not None:
                    g("inference_model_context_length", "Context length the model is loaded with.",
                      MODEL_LABELS, ids, m.context_length)
            # Only where the server says (ComfyUI /queue); Ollama's None is unknown, never 0.
            if st.requests_running is not None:
                f.gauge("inference_requests_running", "Requests (prompts) the server is working on.",
                        SERVER_LABELS, [server], st.requests_running)
            if st.requests_waiting is not None:
                f.gauge("inference_requests_waiting", "Requests (prompts) queued on the server.",
                        SERVER_LABELS, [server], st.requests_waiting)
