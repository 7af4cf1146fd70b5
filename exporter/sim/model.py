"""Physics of one simulated GeForce card: power from load, temperature with a thermal lag, fan curve,
clocks that give way at the power limit, and the fault effects incidents switch on.

The model works in SI units internally and writes NVML units (mW, mJ, MHz, %) into a FakeGPU.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pynvml

from .fake_nvml import FakeGPU

GIB = 1024**3
MIB = 1024**2

R_IDLE = pynvml.nvmlClocksEventReasonGpuIdle
R_SW_POWER = pynvml.nvmlClocksEventReasonSwPowerCap
R_HW_SLOW = pynvml.nvmlClocksEventReasonHwSlowdown
R_SW_THERMAL = pynvml.nvmlClocksEventReasonSwThermalSlowdown
R_HW_BRAKE = pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown


@dataclass(frozen=True)
class GPUSpec:
    name: str
    uuid: str
    pci_bus_id: str
    memory_total: int
    power_limit_w: float
    idle_power_w: float
    full_load_power_w: float  # what a fully busy LLM decode would draw without a cap
    boost_mhz: int
    max_clock_mhz: int
    mem_clock_p2_mhz: int
    max_mem_clock_mhz: int
    fans: int
    report_rpm: bool
    max_rpm: int
    r0: float  # C/W scale of the cooler's thermal resistance: R = r0 / (0.3 + airflow)
    tau_s: float  # first-order thermal time constant
    vbios: str
    pcie_gen: int


RTX_3090 = GPUSpec(
    name="NVIDIA GeForce RTX 3090", uuid="GPU-5f4c2a9e-8d1b-3e7a-b6c0-91d2e4f7a835",
    pci_bus_id="00000000:01:00.0", memory_total=24 * GIB, power_limit_w=350.0, idle_power_w=21.0,
    full_load_power_w=330.0, boost_mhz=1935, max_clock_mhz=2100, mem_clock_p2_mhz=9501,
    max_mem_clock_mhz=9751, fans=2, report_rpm=False, max_rpm=3300, r0=0.136, tau_s=90.0,
    vbios="94.02.42.00.A9", pcie_gen=4)

RTX_3060 = GPUSpec(
    name="NVIDIA GeForce RTX 3060", uuid="GPU-b2e71d04-6a9c-5f38-d41e-7c0a93b26f1d",
    pci_bus_id="00000000:02:00.0", memory_total=12 * GIB, power_limit_w=170.0, idle_power_w=13.0,
    full_load_power_w=158.0, boost_mhz=1867, max_clock_mhz=2100, mem_clock_p2_mhz=7301,
    max_mem_clock_mhz=7501, fans=2, report_rpm=True, max_rpm=3200, r0=0.244, tau_s=70.0,
    vbios="94.06.2f.00.9b", pcie_gen=4)

DEFAULT_SPECS = (RTX_3090, RTX_3060)


def make_fake_gpu(spec: GPUSpec) -> FakeGPU:
    return FakeGPU(
        name=spec.name, uuid=spec.uuid, pci_bus_id=spec.pci_bus_id, memory_total=spec.memory_total,
        power_limit_mw=int(spec.power_limit_w * 1000), fan_speeds=[30] * spec.fans,
        fan_rpms=[0] * spec.fans if spec.report_rpm else None, max_clock_sm_mhz=spec.max_clock_mhz,
        max_clock_graphics_mhz=spec.max_clock_mhz, max_clock_mem_mhz=spec.max_mem_clock_mhz,
        vbios_version=spec.vbios, slowdown_temperature=90 if spec.power_limit_w > 200 else 93,
        shutdown_temperature=98 if spec.power_limit_w > 200 else 101, max_operating_temperature=93,
        pcie_link_gen=1, pcie_link_gen_max=spec.pcie_gen,
        # GeForce boards: no ECC, no row remapping, no serial.
        unsupported={"nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetRemappedRows"},
    )


@dataclass
class Load:
    """What the workload asks of a GPU during one tick."""

    busy: float = 0.0  # fraction of the tick a kernel ran (0..1)
    intensity: float = 0.85  # power per unit busy, relative to full_load_power_w (training > decode)
    pcie_rx_bps: float = 0.0  # host->device (model loading)
    pcie_tx_bps: float = 0.0


@dataclass
class Faults:
    """Fault effects active on a GPU during one tick (set by the incident player)."""

    dead_fans: frozenset[int] = frozenset()
    cooling_factor: float = 1.0  # multiplies the cooler's thermal resistance
    power_brake: bool = False
    hw_slowdown: bool = False
    stuck: bool = False


@dataclass
class GPUPhysics:
    spec: GPUSpec
    temperature: float = 34.0
    fan_target: float = 0.30  # 0..1, what the driver asks (and what NVML reports)
    thermal_cap: float = 1.0  # multiplier on clocks/power from the thermal governor
    energy_j: float = 0.0
    power_w: float = 0.0
    _last_busy: float = field(default=0.0, repr=False)

    def reset_after_boot(self, ambient: float) -> None:
        self.energy_j = 0.0
        self.thermal_cap = 1.0
        self.fan_target = 0.30

    def fan_curve(self, temp: float) -> float:
        """Stock-like curve: 30 % floor up to 50 C, 100 % at 84 C."""
        return min(1.0, max(0.30, 0.30 + (temp - 50.0) / 34.0 * 0.70))

    def step(self, dt: float, load: Load, faults: Faults, ambient: float, rng: random.Random,
             gpu: FakeGPU, vram_used: int, processes) -> None:
        spec = self.spec
        busy = 1.0 if faults.stuck else min(1.0, max(0.0, load.busy))
        intensity = 0.62 if faults.stuck else load.intensity
        demand = spec.idle_power_w + (spec.full_load_power_w - spec.idle_power_w) * busy * intensity
        if vram_used > 2 * GIB:
            demand += 4.0 + 2.0 * busy  # a resident model keeps more of the memory powered
        limit = spec.power_limit_w
        reasons = 0
        clock_factor = 1.0
        power = demand
        if demand > limit:
            # Power-capped: the driver trades clock for power, roughly P ~ f^2 near the top bin.
            power = limit
            clock_factor *= math.sqrt(limit / demand)
            reasons |= R_SW_POWER
        if faults.power_brake or faults.hw_slowdown:
            # External slowdown signal: clocks pinned very low, power collapses, work still queued.
            clock_factor *= 0.22
            power = spec.idle_power_w + (power - spec.idle_power_w) * 0.25
            reasons |= R_HW_SLOW | (R_HW_BRAKE if faults.power_brake else 0)
            busy = max(busy, 0.95) if busy > 0.05 else busy
        # Thermal governor: shed clocks above the slowdown threshold, recover below it.
        slowdown = gpu.slowdown_temperature
        if self.temperature >= slowdown - 1:
            self.thermal_cap = max(0.35, self.thermal_cap * 0.93)
        elif self.temperature < slowdown - 4:
            self.thermal_cap = min(1.0, self.thermal_cap * 1.03 + 0.005)
        if self.thermal_cap < 0.999 and busy > 0.02:
            power = spec.idle_power_w + (power - spec.idle_power_w) * self.thermal_cap
            clock_factor *= self.thermal_cap ** 0.5
            reasons |= R_SW_THERMAL
        power = max(5.0, power + rng.gauss(0.0, 0.012 * power))
        self.power_w = power
        self.energy_j += power * dt

        # Cooling: airflow is the mean of working fans' speeds (a seized fan moves no air); the
        # controller then retargets the fans for the new temperature (one tick of control lag).
        working = [0.0 if i in faults.dead_fans else self.fan_target for i in range(spec.fans)]
        airflow = sum(working) / max(1, spec.fans)
        r_th = spec.r0 / (0.30 + airflow) * faults.cooling_factor
        target_temp = ambient + 6.0 + power * r_th
        alpha = 1.0 - math.exp(-dt / spec.tau_s)
        self.temperature += (target_temp - self.temperature) * alpha
        self.fan_target = self.fan_curve(self.temperature)

        # --- write NVML-unit readings -----------------------------------------------------------
        active = busy > 0.02
        util = 0 if not active else min(100, max(1, round(busy * 97 + rng.gauss(0, 1.5))))
        if faults.stuck:
            util = 100  # a spinning kernel that never finishes: the counter sits at 100 %
        gpu.utilization_gpu = util
        gpu.utilization_memory = min(100, max(0, round(util * 0.72 + (rng.gauss(0, 2) if util else 0))))
        gpu.temperature = int(round(self.temperature + rng.gauss(0, 0.35)))
        gpu.power_usage_mw = int(power * 1000)
        gpu.energy_mj = int(self.energy_j * 1000)
        pct = int(round(self.fan_target * 100))
        gpu.fan_speeds = [pct] * spec.fans
        if gpu.fan_rpms is not None:
            gpu.fan_rpms = [0 if i in faults.dead_fans else
                            int(spec.max_rpm * self.fan_target * (1 + rng.gauss(0, 0.01)))
                            for i in range(spec.fans)]
        if active:
            # CUDA work puts GeForce cards in P2 (not P0) with the P2 memory clock.
            gpu.performance_state = 2
            gpu.clock_mem_mhz = spec.mem_clock_p2_mhz
            gpu.clock_sm_mhz = int(max(210, round(spec.boost_mhz * clock_factor / 15) * 15))
            gpu.clock_graphics_mhz = gpu.clock_sm_mhz
            gpu.pcie_link_gen = spec.pcie_gen
        else:
            # Idle (even with a model resident) the driver drops to P8 and PCIe gen 1.
            gpu.performance_state = 8
            gpu.clock_mem_mhz = 405
            gpu.clock_sm_mhz = gpu.clock_graphics_mhz = 210
            gpu.pcie_link_gen = 1
        if not active:
            reasons |= R_IDLE
            reasons &= ~R_SW_POWER
        gpu.clocks_event_reasons = reasons
        gpu.memory_used = int(vram_used)
        gpu.pcie_rx_kbps = int(max(0.0, load.pcie_rx_bps / 1000 + (rng.uniform(0, 300) if active else 0)))
        gpu.pcie_tx_kbps = int(max(0.0, load.pcie_tx_bps / 1000 + (rng.uniform(0, 200) if active else 0)))
        gpu.compute_processes = list(processes)
        self._last_busy = busy
