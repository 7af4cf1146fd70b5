"""Everything that talks to NVML about GPUs: initialisation, enumeration by uuid, per-GPU reads.

Three read tiers, by what a real H100 charges per call:
- static attributes (name, PCI bus id, thresholds, fan count, max clocks) read once per GPU;
- fast readings (utilisation, memory, power, clocks, fans, processes: 1-20 us each) read per scrape;
- slow readings (PCIe throughput ~21 ms, energy ~3 ms, ECC/remapped rows ~3 ms) read by
  `refresh_slow`, which a background sampler calls off the scrape path.

A field answered NOT_SUPPORTED (or missing from the driver) is remembered per GPU and never asked
again: GeForce boards refuse ECC, energy or fan RPM on every call, and asking costs time and logs.
GPU_IS_LOST marks the GPU lost; its value series vanish while `gpu_up` stays, and the GPU is
re-found by uuid later (indices shift when a card is missing at boot).
"""
from __future__ import annotations

import ctypes
import logging
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pynvml

from exporter.read_errors import ReadErrors

log = logging.getLogger("rigwatch.exporter.nvml")

# NVML's clocks-event (formerly "throttle") reason bits, by their stable ABI values so that older
# bindings without the nvmlClocksEventReason* names still work.
CLOCKS_EVENT_REASONS: tuple[tuple[int, str], ...] = (
    (0x001, "gpu_idle"),
    (0x002, "applications_clocks_setting"),
    (0x004, "sw_power_cap"),
    (0x008, "hw_slowdown"),
    (0x010, "sync_boost"),
    (0x020, "sw_thermal_slowdown"),
    (0x040, "hw_thermal_slowdown"),
    (0x080, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)

CLOCKS = (("graphics", pynvml.NVML_CLOCK_GRAPHICS), ("sm", pynvml.NVML_CLOCK_SM),
          ("memory", pynvml.NVML_CLOCK_MEM))

# Answers that will not change while the driver stays loaded: memoised, never asked again.
_PERMANENT = {
    pynvml.NVML_ERROR_NOT_SUPPORTED: "NOT_SUPPORTED",
    pynvml.NVML_ERROR_FUNCTION_NOT_FOUND: "FUNCTION_NOT_FOUND",
    pynvml.NVML_ERROR_NO_PERMISSION: "NO_PERMISSION",
}
_KB = 1024  # NVML reports PCIe throughput in KB/s


class GpuLost(Exception):
    """Raised inside a read pass when NVML answers GPU_IS_LOST; the pass for that GPU stops."""


def handle_key(handle) -> int:
    """A comparable identity for an NVML device handle: the pointer value for ctypes handles (each
    call, and each event, brings a fresh ctypes object for the same device), else the object's id."""
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value or id(handle)
    except (TypeError, ctypes.ArgumentError):
        return id(handle)


def text(value: Any) -> str:
    """NVML strings arrive as bytes from some binding versions and str from others."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").rstrip("\x00")
    return str(value)


@dataclass
class GpuDevice:
    uuid: str
    index: int
    handle: Any
    name: str = "unknown"
    pci_bus_id: str = "unknown"
    vbios_version: str | None = None
    slowdown_threshold_c: float | None = None
    num_fans: int = -1  # -1: the driver could not say; read fan 0 the legacy way
    max_clocks_hz: dict[str, float] = field(default_factory=dict)
    lost: bool = False
    # Replaced as a whole by refresh_slow, so a scrape sees one consistent pass.
    slow: dict[str, Any] = field(default_factory=dict)
    slow_at: float | None = None


class NvmlGpus:
    """NVML state for the exporter: `up`, the known GPUs (by uuid) and the three read tiers."""

    def __init__(self, nvml, errors: ReadErrors, clock: Callable[[], float] = time.time,
                 retry_interval: float = 10.0):
        self.nvml = nvml
        self.errors = errors
        self.clock = clock
        self.retry_interval = retry_interval
        self.up = False
        self.driver_version: str | None = None
        self.init_error: str | None = None
        self.unsupported: dict[tuple[str, str], str] = {}  # (uuid, field) -> NVML answer
        self.listeners: list[Callable[[GpuDevice], None]] = []  # told of new and recovered GPUs
        self._devices: dict[str, GpuDevice] = {}
        self._lock = threading.RLock()
        self._next_retry = 0.0
        self._incomplete = False  # some NVML index could not be opened: enumerate again later

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> bool:
        """Initialise NVML and discover the GPUs. Never raises: a failure leaves `up` False."""
        with self._lock:
            if self.nvml is None:
                self._init_failed("the nvidia-ml-py module (pynvml) is not importable")
                return False
            try:
                self.nvml.nvmlInit()
            except (pynvml.NVMLError, OSError) as e:
                self._init_failed(str(e))
                return False
            self.up = True
            self.init_error = None
            try:
                self.driver_version = text(self.nvml.nvmlSystemGetDriverVersion())
            except pynvml.NVMLError:
                self.errors.inc("driver_version")
            log.info("NVML initialised (driver %s)", self.driver_version or "unknown")
            self._enumerate()
            return True

    def _init_failed(self, why: str) -> None:
        self.up = False
        repeated = why == self.init_error
        self.init_error = why
        self.errors.inc("nvml_init")
        self._next_retry = self.clock() + self.retry_interval
        # Said once at ERROR; the same failure on every retry only at DEBUG (it is counted anyway).
        say = log.debug if repeated else log.error
        say("NVML initialisation failed: %s. GPU metrics are not available (gpu_exporter_up 0); container "
            "metrics are still served; retrying every %.0fs", why, self.retry_interval)

    def shutdown(self) -> None:
        with self._lock:
            if self.up:
                try:
                    self.nvml.nvmlShutdown()
                except pynvml.NVMLError:
                    pass
                self.up = False

    def devices(self) -> list[GpuDevice]:
        with self._lock:
            return sorted(self._devices.values(), key=lambda d: d.index)

    def maybe_retry(self) -> None:
        """Retry NVML init, or re-find lost GPUs by uuid, at most every `retry_interval` seconds."""
        now = self.clock()
        with self._lock:
            needed = not self.up or self._incomplete or any(d.lost for d in self._devices.values())
            if not needed or now < self._next_retry:
                return
            self._next_retry = now + self.retry_interval
            if not self.up:
                self.start()
            else:
                self._enumerate()

    def _enumerate(self) -> None:
        nvml = self.nvml
        try:
            count = nvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as e:
            self.errors.inc("device_count")
            log.warning("nvmlDeviceGetCount failed: %s", e)
            return
        touched: list[GpuDevice] = []
        self._incomplete = False
        for i in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                uuid = text(nvml.nvmlDeviceGetUUID(handle))
            except pynvml.NVMLError as e:
                self._incomplete = True
                if e.value == pynvml.NVML_ERROR_GPU_IS_LOST:
                    log.warning("GPU at NVML index %d is lost (GPU_IS_LOST); will look again", i)
                else:
                    self.errors.inc("device_handle")
                    log.warning("cannot open GPU at NVML index %d: %s", i, e)
                continue
            dev = self._devices.get(uuid)
            if dev is None:
                dev = GpuDevice(uuid=uuid, index=i, handle=handle)
                try:
                    self._read_static(dev)
                except GpuLost:
                    self._incomplete = True
                    continue
                self._devices[uuid] = dev
                log.info("GPU %d: %s %s (%s)", i, dev.name, uuid, dev.pci_bus_id)
                touched.append(dev)
            elif dev.lost or dev.index != i or handle_key(dev.handle) != handle_key(handle):
                if dev.lost:
                    log.warning("GPU %s (%s) is back at NVML index %d", uuid, dev.name, i)
                dev.handle, dev.index, dev.lost = handle, i, False
                touched.append(dev)
        for dev in touched:
            for listener in self.listeners:
                listener(dev)

    # --- reads ----------------------------------------------------------------------------------
    def _read(self, dev: GpuDevice, field_name: str, fn: Callable, *args, indexed: bool = False):
        """One NVML call on `dev`; None when unsupported (memoised) or failed (counted).
        `indexed`: the call takes a fan index, and INVALID_ARGUMENT means that fan does not exist."""
        key = (dev.uuid, field_name)
        if key in self.unsupported:
            return None
        try:
            return fn(dev.handle, *args)
        except pynvml.NVMLError as e:
            code = e.value
            answer = _PERMANENT.get(code)
            if answer is None and indexed and code == pynvml.NVML_ERROR_INVALID_ARGUMENT:
                answer = "INVALID_ARGUMENT"
            if answer is not None:
                self.unsupported[key] = answer
                log.info("GPU %d (%s): %s is %s; not asking again", dev.index, dev.name, field_name, answer)
                return None
            if code == pynvml.NVML_ERROR_GPU_IS_LOST:
                self._mark_lost(dev)
                raise GpuLost(dev.uuid) from None
            self.errors.inc(field_name)
            return None

    def _mark_lost(self, dev: GpuDevice) -> None:
        with self._lock:
            if dev.lost:
                return
            dev.lost = True
            dev.slow = {}
            self.errors.inc("gpu_lost")
            self._next_retry = self.clock() + self.retry_interval
        log.error("GPU %d (%s, %s) is lost (GPU_IS_LOST): its series are withdrawn, the other GPUs are "
                  "still served; looking for it again every %.0fs", dev.index, dev.name, dev.uuid,
                  self.retry_interval)

    def _read_static(self, dev: GpuDevice) -> None:
        nvml = self.nvml
        name = self._read(dev, "name", nvml.nvmlDeviceGetName)
        dev.name = text(name) if name else "unknown"
        pci = self._read(dev, "pci_info", nvml.nvmlDeviceGetPciInfo)
        if pci is not None:
            dev.pci_bus_id = text(pci.busId)
        vbios = self._read(dev, "vbios_version", nvml.nvmlDeviceGetVbiosVersion)
        dev.vbios_version = text(vbios) if vbios else None
        slowdown = self._read(dev, "temperature_threshold_slowdown", nvml.nvmlDeviceGetTemperatureThreshold,
                              pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN)
        dev.slowdown_threshold_c = float(slowdown) if slowdown is not None else None
        fans = self._read(dev, "num_fans", nvml.nvmlDeviceGetNumFans)
        dev.num_fans = int(fans) if fans is not None else -1
        for clock_name, clock_id in CLOCKS:
            mhz = self._read(dev, f"max_clock_{clock_name}", nvml.nvmlDeviceGetMaxClockInfo, clock_id)
            if mhz is not None:
                dev.max_clocks_hz[clock_name] = mhz * 1e6

    def read_fast(self, dev: GpuDevice) -> dict[str, Any] | None:
        """The per-scrape readings of one GPU, or None if it is (now) lost."""
        if dev.lost:
            return None
        nvml = self.nvml
        r: dict[str, Any] = {}
        try:
            util = self._read(dev, "utilization", nvml.nvmlDeviceGetUtilizationRates)
            if util is not None:
                r["utilization"] = util.gpu / 100.0
                r["memory_utilization"] = util.memory / 100.0
            mem = self._read(dev, "memory_info", nvml.nvmlDeviceGetMemoryInfo)
            if mem is not None:
                r["memory_used"], r["memory_free"], r["memory_total"] = mem.used, mem.free, mem.total
            temp = self._read(dev, "temperature", nvml.nvmlDeviceGetTemperature, pynvml.NVML_TEMPERATURE_GPU)
            if temp is not None:
                r["temperature"] = float(temp)
            power = self._read(dev, "power_usage", nvml.nvmlDeviceGetPowerUsage)
            if power is not None:
                r["power"] = power / 1000.0
            limit = self._read(dev, "power_limit", nvml.nvmlDeviceGetEnforcedPowerLimit)
            if limit is not None:
                r["power_limit"] = limit / 1000.0
            r["fans"] = self._read_fans(dev)
            clocks = {}
            for clock_name, clock_id in CLOCKS:
                mhz = self._read(dev, f"clock_{clock_name}", nvml.nvmlDeviceGetClockInfo, clock_id)
                if mhz is not None:
                    clocks[clock_name] = mhz * 1e6
            r["clocks"] = clocks
            pstate = self._read(dev, "performance_state", nvml.nvmlDeviceGetPerformanceState)
            if pstate is not None:
                r["performance_state"] = float(pstate)
            reasons = self._read(dev, "clocks_event_reasons", self._clocks_event_reasons)
            if reasons is not None:
                r["clocks_event_reasons"] = int(reasons)
            r["processes"] = self._read_processes(dev)
        except GpuLost:
            return None
        return r

    def _read_fans(self, dev: GpuDevice) -> dict[str, dict[str, float]]:
        """{fan index: {"ratio": intended speed / 100, "rpm": rpm}}; empty on fanless boards (H100)."""
        nvml = self.nvml
        fans: dict[str, dict[str, float]] = {}
        if dev.num_fans < 0:  # NumFans unsupported: fan 0 through the old single-fan call
            pct = self._read(dev, "fan_speed", nvml.nvmlDeviceGetFanSpeed)
            if pct is not None:
                fans["0"] = {"ratio": pct / 100.0}
        for i in range(max(dev.num_fans, 0)):
            pct = self._read(dev, f"fan_speed_{i}", nvml.nvmlDeviceGetFanSpeed_v2, i, indexed=True)
            if pct is not None:
                fans[str(i)] = {"ratio": pct / 100.0}
        for i in range(max(dev.num_fans, 1 if fans else 0)):
            rpm = self._read(dev, f"fan_speed_rpm_{i}", self._fan_rpm, i, indexed=True)
            if rpm is not None:
                fans.setdefault(str(i), {})["rpm"] = float(rpm)
        return fans

    def _fan_rpm(self, handle, fan: int) -> int:
        # pynvml's nvmlDeviceGetFanSpeedRPM(handle) always asks fan 0; other fans go through the C call.
        nvml = self.nvml
        if fan == 0:
            return nvml.nvmlDeviceGetFanSpeedRPM(handle)
        if isinstance(nvml, types.ModuleType):
            return _c_fan_speed_rpm(nvml, handle, fan)
        return nvml.nvmlDeviceGetFanSpeedRPM(handle, fan)

    def _clocks_event_reasons(self, handle) -> int:
        fn = getattr(self.nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
        if fn is None:  # bindings older than the 12.535 rename
            fn = self.nvml.nvmlDeviceGetCurrentClocksThrottleReasons
        return fn(handle)

    def _read_processes(self, dev: GpuDevice) -> dict[int, int | None] | None:
        """{pid: used bytes or None}; a PID on both lists counts once. None if neither list reads."""
        nvml = self.nvml
        procs: dict[int, int | None] = {}
        got = False
        for field_name, fn in (("compute_processes", nvml.nvmlDeviceGetComputeRunningProcesses),
                               ("graphics_processes", nvml.nvmlDeviceGetGraphicsRunningProcesses)):
            listed = self._read(dev, field_name, fn)
            if listed is None:
                continue
            got = True
            for p in listed:
                mem = p.usedGpuMemory
                prev = procs.get(p.pid)
                procs[p.pid] = mem if prev is None else (prev if mem is None else max(prev, mem))
        return procs if got else None

    def refresh_slow(self) -> None:
        """One pass of the slow reads over every GPU that is not lost (plus retries when due)."""
        self.maybe_retry()
        nvml = self.nvml
        for dev in self.devices():
            if dev.lost:
                continue
            s: dict[str, Any] = {}
            try:
                for key, counter in (("pcie_tx", pynvml.NVML_PCIE_UTIL_TX_BYTES),
                                     ("pcie_rx", pynvml.NVML_PCIE_UTIL_RX_BYTES)):
                    kbps = self._read(dev, f"{key}_throughput", nvml.nvmlDeviceGetPcieThroughput, counter)
                    if kbps is not None:
                        s[key] = kbps * _KB
                for key, fn in (("pcie_replays", nvml.nvmlDeviceGetPcieReplayCounter),
                                ("pcie_link_generation", nvml.nvmlDeviceGetCurrPcieLinkGeneration),
                                ("pcie_link_width", nvml.nvmlDeviceGetCurrPcieLinkWidth)):
                    value = self._read(dev, key, fn)
                    if value is not None:
                        s[key] = float(value)
                mj = self._read(dev, "energy", nvml.nvmlDeviceGetTotalEnergyConsumption)
                if mj is not None:
                    s["energy"] = mj / 1000.0
                for kind, error_type in (("corrected", pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED),
                                         ("uncorrected", pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)):
                    n = self._read(dev, f"ecc_errors_{kind}", nvml.nvmlDeviceGetTotalEccErrors, error_type,
                                   pynvml.NVML_AGGREGATE_ECC)
                    if n is not None:
                        s.setdefault("ecc", {})[kind] = float(n)
                rows = self._read(dev, "remapped_rows", nvml.nvmlDeviceGetRemappedRows)
                if rows is not None:
                    s["remapped_rows"] = tuple(float(x) for x in rows)
            except GpuLost:
                continue
            dev.slow = s
            dev.slow_at = self.clock()


def _c_fan_speed_rpm(nvml, handle, fan: int) -> int:
    info_cls = getattr(nvml, "c_nvmlFanSpeedInfo_t", None)
    if info_cls is None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    info = info_cls()
    info.fan = fan
    info.version = nvml.nvmlFanSpeedInfo_v1
    fn = nvml._nvmlGetFunctionPointer("nvmlDeviceGetFanSpeedRPM")
    nvml._nvmlCheckReturn(fn(handle, ctypes.byref(info)))
    return info.speed
