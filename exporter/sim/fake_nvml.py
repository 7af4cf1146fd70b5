"""An in-memory stand-in for the `pynvml` module (nvidia-ml-py), faithful to its calling conventions.

It serves three users through the same collector code path as real NVML:
- unit tests, which set `FakeGPU` fields directly and assert on the exported metrics;
- the simulated AI box (`exporter.sim`), which updates `FakeGPU` fields from its physics model;
- the scrape-speed benchmark, which charges each call the cost measured on a real H100.

Units follow NVML: power in milliwatts, energy in millijoules, PCIe throughput in KB/s, clocks in
MHz, utilisation and fan speed in percent. Errors are raised as real `pynvml.NVMLError` subclasses
(NVMLError(code) maps the code to its subclass, e.g. NVMLError_NotSupported), so the collector's
error handling is exercised exactly as against a driver.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace

import pynvml

NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED


@dataclass
class FakeProcess:
    pid: int
    used_gpu_memory: int | None  # bytes; None where NVML reports it unavailable


@dataclass
class FakeGPU:
    """State of one GPU. Fields are plain values in NVML units; mutate them freely between scrapes."""

    name: str = "NVIDIA GeForce RTX 3090"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    pci_bus_id: str = "00000000:01:00.0"
    memory_total: int = 24 * 1024**3
    memory_used: int = 0
    utilization_gpu: int = 0  # %
    utilization_memory: int = 0  # % of time the memory controller was busy
    temperature: int = 40  # C
    slowdown_temperature: int = 90  # C
    shutdown_temperature: int = 98  # C
    max_operating_temperature: int = 93  # C
    power_usage_mw: int = 30_000
    power_limit_mw: int = 350_000
    energy_mj: int = 0  # total since driver load
    fan_speeds: list[int] = field(default_factory=lambda: [30, 30])  # % intended, may exceed 100
    fan_rpms: list[int] | None = None  # None: the driver reports no RPM
    clock_sm_mhz: int = 210
    clock_mem_mhz: int = 405
    clock_graphics_mhz: int = 210
    max_clock_sm_mhz: int = 2100
    max_clock_mem_mhz: int = 9751
    max_clock_graphics_mhz: int = 2100
    performance_state: int = 8
    clocks_event_reasons: int = pynvml.nvmlClocksEventReasonGpuIdle
    pcie_tx_kbps: int = 0
    pcie_rx_kbps: int = 0
    pcie_replays: int = 0
    pcie_link_gen: int = 4
    pcie_link_gen_max: int = 4
    pcie_link_width: int = 16
    pcie_link_width_max: int = 16
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    remapped_rows: tuple[int, int, bool, bool] = (0, 0, False, False)  # corr, unc, pending, failed
    compute_processes: list[FakeProcess] = field(default_factory=list)
    graphics_processes: list[FakeProcess] = field(default_factory=list)
    vbios_version: str = "94.02.42.00.A9"
    serial: str = ""
    # Names of pynvml functions this GPU answers with NOT_SUPPORTED (GeForce: ECC, remapped rows...).
    unsupported: set[str] = field(default_factory=set)
    lost: bool = False  # every call on this GPU raises GPU_IS_LOST


class FakeNVML:
    """Module-like object with the pynvml functions rigwatch uses.

    Attributes not defined here (constants such as NVML_CLOCK_SM, error classes) are looked up in the
    real `pynvml`, so `nvml.NVMLError_NotSupported` etc. are the real classes.

    - `gpus`: list of FakeGPU, index = NVML index.
    - `init_error`: an NVML error code that nvmlInit raises (e.g. LIBRARY_NOT_FOUND), or None.
    - `call_costs`: {function name: seconds} charged per call by sleeping/spinning (benchmarks).
    - `calls`: {function name: count} of calls made, for tests ("not asked again").
    - `push_xid(index, code)`: queue an Xid critical-error event for nvmlEventSetWait_v2.
    """

    def __init__(self, gpus: list[FakeGPU] | None = None, driver_version: str = "580.95.05",
                 init_error: int | None = None, call_costs: dict[str, float] | None = None):
        self.gpus = list(gpus or [])
        self.driver_version = driver_version
        self.init_error = init_error
        self.call_costs = dict(call_costs or {})
        self.calls: dict[str, int] = {}
        self.initialized = False
        self._events: deque = deque()
        self._event_cv = threading.Condition()
        self._lock = threading.Lock()
        self._handles: dict[int, SimpleNamespace] = {}

    # --- plumbing -------------------------------------------------------------------------------
    def __getattr__(self, name):
        return getattr(pynvml, name)

    def _enter(self, fn: str) -> None:
        with self._lock:
            self.calls[fn] = self.calls.get(fn, 0) + 1
        cost = self.call_costs.get(fn)
        if cost:
            # Spin for short costs (sleep granularity is ~50-100 us), sleep for long ones: real NVML
            # calls of a few ms block in the driver and release the GIL like time.sleep does.
            if cost < 0.0005:
                end = time.perf_counter() + cost
                while time.perf_counter() < end:
                    pass
            else:
                time.sleep(cost)
        if not self.initialized and fn not in ("nvmlInit", "nvmlInitWithFlags"):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    def _gpu(self, fn: str, handle) -> FakeGPU:
        self._enter(fn)
        gpu = handle.gpu if isinstance(handle, SimpleNamespace) else handle
        if gpu.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        if fn in gpu.unsupported:
            raise pynvml.NVMLError(NOT_SUPPORTED)
        return gpu

    # --- library --------------------------------------------------------------------------------
    def nvmlInit(self):
        self._enter("nvmlInit")
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.initialized = True

    def nvmlShutdown(self):
        self._enter("nvmlShutdown")
        self.initialized = False

    def nvmlSystemGetDriverVersion(self):
        self._enter("nvmlSystemGetDriverVersion")
        return self.driver_version

    def nvmlDeviceGetCount(self):
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[index]
        if gpu.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return self._handle(index)

    def _handle(self, index: int) -> SimpleNamespace:
        # Like real NVML, a device's handle is the same value every time (events carry it back).
        h = self._handles.get(index)
        if h is None or h.gpu is not self.gpus[index]:
            h = self._handles[index] = SimpleNamespace(gpu=self.gpus[index], index=index)
        return h

    # --- static attributes ----------------------------------------------------------------------
    def nvmlDeviceGetUUID(self, h):
        return self._gpu("nvmlDeviceGetUUID", h).uuid

    def nvmlDeviceGetName(self, h):
        return self._gpu("nvmlDeviceGetName", h).name

    def nvmlDeviceGetIndex(self, h):
        self._gpu("nvmlDeviceGetIndex", h)
        return h.index

    def nvmlDeviceGetPciInfo(self, h):
        g = self._gpu("nvmlDeviceGetPciInfo", h)
        return SimpleNamespace(busId=g.pci_bus_id, busIdLegacy=g.pci_bus_id[4:])

    def nvmlDeviceGetVbiosVersion(self, h):
        return self._gpu("nvmlDeviceGetVbiosVersion", h).vbios_version

    def nvmlDeviceGetSerial(self, h):
        g = self._gpu("nvmlDeviceGetSerial", h)
        if not g.serial:
            raise pynvml.NVMLError(NOT_SUPPORTED)  # GeForce boards have no serial
        return g.serial

    def nvmlDeviceGetTemperatureThreshold(self, h, threshold):
        g = self._gpu("nvmlDeviceGetTemperatureThreshold", h)
        return {
            pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN: g.slowdown_temperature,
            pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN: g.shutdown_temperature,
            pynvml.NVML_TEMPERATURE_THRESHOLD_GPU_MAX: g.max_operating_temperature,
        }.get(threshold) or self._raise(NOT_SUPPORTED)

    def nvmlDeviceGetNumFans(self, h):
        return len(self._gpu("nvmlDeviceGetNumFans", h).fan_speeds)

    def nvmlDeviceGetMaxClockInfo(self, h, clock):
        g = self._gpu("nvmlDeviceGetMaxClockInfo", h)
        return {pynvml.NVML_CLOCK_SM: g.max_clock_sm_mhz, pynvml.NVML_CLOCK_MEM: g.max_clock_mem_mhz,
                pynvml.NVML_CLOCK_GRAPHICS: g.max_clock_graphics_mhz}[clock]

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h):
        return self._gpu("nvmlDeviceGetMaxPcieLinkGeneration", h).pcie_link_gen_max

    def nvmlDeviceGetMaxPcieLinkWidth(self, h):
        return self._gpu("nvmlDeviceGetMaxPcieLinkWidth", h).pcie_link_width_max

    # --- fast readings --------------------------------------------------------------------------
    def nvmlDeviceGetUtilizationRates(self, h):
        g = self._gpu("nvmlDeviceGetUtilizationRates", h)
        return SimpleNamespace(gpu=g.utilization_gpu, memory=g.utilization_memory)

    def nvmlDeviceGetMemoryInfo(self, h, version=None):
        g = self._gpu("nvmlDeviceGetMemoryInfo", h)
        return SimpleNamespace(total=g.memory_total, used=g.memory_used,
                               free=g.memory_total - g.memory_used)

    def nvmlDeviceGetTemperature(self, h, sensor):
        g = self._gpu("nvmlDeviceGetTemperature", h)
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return g.temperature

    def nvmlDeviceGetPowerUsage(self, h):
        return self._gpu("nvmlDeviceGetPowerUsage", h).power_usage_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return self._gpu("nvmlDeviceGetEnforcedPowerLimit", h).power_limit_mw

    def nvmlDeviceGetPowerManagementLimit(self, h):
        return self._gpu("nvmlDeviceGetPowerManagementLimit", h).power_limit_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        return self._gpu("nvmlDeviceGetTotalEnergyConsumption", h).energy_mj

    def nvmlDeviceGetFanSpeed(self, h):
        g = self._gpu("nvmlDeviceGetFanSpeed", h)
        if not g.fan_speeds:
            raise pynvml.NVMLError(NOT_SUPPORTED)
        return g.fan_speeds[0]

    def nvmlDeviceGetFanSpeed_v2(self, h, fan):
        g = self._gpu("nvmlDeviceGetFanSpeed_v2", h)
        if not 0 <= fan < len(g.fan_speeds):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return g.fan_speeds[fan]

    def nvmlDeviceGetFanSpeedRPM(self, h, fan: int = 0):
        """Real pynvml only takes the handle and asks for fan 0; rigwatch may call the C function
        with other fan indices itself, so this accepts an optional fan index."""
        g = self._gpu("nvmlDeviceGetFanSpeedRPM", h)
        if g.fan_rpms is None:
            raise pynvml.NVMLError(NOT_SUPPORTED)
        if not 0 <= fan < len(g.fan_rpms):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return g.fan_rpms[fan]

    def nvmlDeviceGetClockInfo(self, h, clock):
        g = self._gpu("nvmlDeviceGetClockInfo", h)
        return {pynvml.NVML_CLOCK_SM: g.clock_sm_mhz, pynvml.NVML_CLOCK_MEM: g.clock_mem_mhz,
                pynvml.NVML_CLOCK_GRAPHICS: g.clock_graphics_mhz}[clock]

    def nvmlDeviceGetPerformanceState(self, h):
        return self._gpu("nvmlDeviceGetPerformanceState", h).performance_state

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return self._gpu("nvmlDeviceGetCurrentClocksEventReasons", h).clocks_event_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h):
        return self._gpu("nvmlDeviceGetCurrentClocksThrottleReasons", h).clocks_event_reasons

    def nvmlDeviceGetPcieThroughput(self, h, counter):
        g = self._gpu("nvmlDeviceGetPcieThroughput", h)
        return g.pcie_tx_kbps if counter == pynvml.NVML_PCIE_UTIL_TX_BYTES else g.pcie_rx_kbps

    def nvmlDeviceGetPcieReplayCounter(self, h):
        return self._gpu("nvmlDeviceGetPcieReplayCounter", h).pcie_replays

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h):
        return self._gpu("nvmlDeviceGetCurrPcieLinkGeneration", h).pcie_link_gen

    def nvmlDeviceGetCurrPcieLinkWidth(self, h):
        return self._gpu("nvmlDeviceGetCurrPcieLinkWidth", h).pcie_link_width

    def nvmlDeviceGetTotalEccErrors(self, h, error_type, counter_type):
        g = self._gpu("nvmlDeviceGetTotalEccErrors", h)
        if error_type == pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED:
            return g.ecc_corrected
        return g.ecc_uncorrected

    def nvmlDeviceGetRemappedRows(self, h):
        return self._gpu("nvmlDeviceGetRemappedRows", h).remapped_rows

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        g = self._gpu("nvmlDeviceGetComputeRunningProcesses", h)
        return [_proc(p) for p in g.compute_processes]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        g = self._gpu("nvmlDeviceGetGraphicsRunningProcesses", h)
        return [_proc(p) for p in g.graphics_processes]

    # --- events (Xid) ---------------------------------------------------------------------------
    def nvmlEventSetCreate(self):
        self._enter("nvmlEventSetCreate")
        return SimpleNamespace(registered=[])

    def nvmlDeviceRegisterEvents(self, h, event_types, event_set):
        g = self._gpu("nvmlDeviceRegisterEvents", h)
        event_set.registered.append((h.index, g, event_types))

    def nvmlEventSetWait_v2(self, event_set, timeout_ms):
        self._enter("nvmlEventSetWait_v2")
        with self._event_cv:
            if not self._events:
                self._event_cv.wait(timeout_ms / 1000.0)
            if not self._events:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
            index, code = self._events.popleft()
        return SimpleNamespace(device=self._handle(index), eventType=pynvml.nvmlEventTypeXidCriticalError,
                               eventData=code, gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)

    nvmlEventSetWait = nvmlEventSetWait_v2

    def nvmlEventSetFree(self, event_set):
        self._enter("nvmlEventSetFree")

    def push_xid(self, index: int, code: int) -> None:
        with self._event_cv:
            self._events.append((index, code))
            self._event_cv.notify_all()

    @staticmethod
    def _raise(code):
        raise pynvml.NVMLError(code)


def _proc(p: FakeProcess) -> SimpleNamespace:
    # NVML reports "not available" memory as NVML_VALUE_NOT_AVAILABLE (ULL max); pynvml maps it to None.
    return SimpleNamespace(pid=p.pid, usedGpuMemory=p.used_gpu_memory, gpuInstanceId=0xFFFFFFFF,
                           computeInstanceId=0xFFFFFFFF)
