"""SimBox: the simulated home-lab AI box behind the real exporter.

It owns a FakeNVML whose FakeGPUs it mutates, a container source and a fake /proc tree, and moves
them forward in fixed ticks from one seeded RNG, so the same seed and start give the same box at the
same simulated time whether it is played live (`start()`) or stepped by the history writer.

Which box it is (cards, containers, inference servers, rhythm) comes from a profile (boxes.py,
`--box NAME`). What the inference servers say (Ollama /api/ps, ComfyUI /queue, vLLM's metrics and
logs) draws only from a second RNG, `inference-<seed>`, so a seed's older signals stay as they were.
"""
from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from exporter.inference import comfyui_state, ollama_state

from .boxes import DEFAULT_BOX, BoxProfile, get_box
from .containers import NAMES as CONTAINER_NAMES  # noqa: F401 (re-exported)
from .containers import SimContainerSource
from .fake_nvml import FakeNVML, FakeProcess
from .journal import Background, Journal, iso_ms
from .model import GIB, MIB, Faults, GPUPhysics, GPUSpec, Load, make_fake_gpu
from .procfs import FakeProcTree
from .schedule import Incident, load_schedule, parse_duration
from .servers import SimSource, comfyui_queue_document, ollama_ps_document
from .vllm_server import Burst, SimVLLM, Stream
from .workload import Resident, Session, Workload

DRIVER_VERSION = "570.133.07"
DRIVER_OVERHEAD = 260 * MIB  # what NVML shows used on a headless card with no process
DOCKERD_PID = 1021


def _vllm_ts(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%m-%d %H:%M:%S")


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t == int(t) else \
        datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _combine(a: Load, b: Load) -> Load:
    """Two servers' work on one GPU in a tick: busy time adds up, the hungrier kernel sets the power."""
    if b.busy <= 0:
        return a
    if a.busy <= 0:
        return b
    return Load(busy=min(1.0, a.busy + b.busy), intensity=max(a.intensity, b.intensity),
                pcie_rx_bps=a.pcie_rx_bps + b.pcie_rx_bps, pcie_tx_bps=a.pcie_tx_bps + b.pcie_tx_bps)


@dataclass
class _External:
    """A non-Ollama GPU job (e.g. a LoRA fine-tune run as a systemd unit)."""

    pid: int
    unit: str
    comm: str
    vram: int
    busy: float
    intensity: float


class SimBox:
    def __init__(self, incidents: list[Incident] | None = None, seed: int = 0, speed: float = 1.0,
                 start: float | None = None, tick: float = 5.0, specs: tuple[GPUSpec, ...] | None = None,
                 proc_root: str | Path | None = None, journal_maxlen: int | None = 20000,
                 journal_path: str | Path | None = None, box: str | BoxProfile = DEFAULT_BOX):
        self.profile = p = get_box(box)
        if specs is None:
            specs = p.specs
        if start is None:
            start = time.time()
        self.tick = float(tick)
        self.start_time = float(int(start // self.tick) * self.tick)
        self.t = self.start_time
        self.speed = float(speed)
        self.seed = seed
        self.rng = random.Random(seed)
        self.irng = random.Random(f"inference-{seed}")  # everything the inference servers add
        self.specs = specs
        self.incidents = list(incidents or [])
        # Start at the idle steady state so history does not begin with a warm-up ramp.
        self.physics = [GPUPhysics(s, temperature=29.0 + s.idle_power_w * s.r0 / 0.6) for s in specs]
        self.nvml = FakeNVML([make_fake_gpu(s) for s in specs], driver_version=DRIVER_VERSION)
        self.container_source = SimContainerSource(self.rng, self.t, p.containers)
        self.proc = FakeProcTree(proc_root)
        self.proc_root = str(self.proc.root)
        self.journal = Journal(self.rng, maxlen=journal_maxlen, hostname=p.hostname)
        self.journal.boot_time = self.t - self.rng.uniform(86400, 20 * 86400)
        self.proc.set_boot_time(self.journal.boot_time)  # what the exporter reads as the host's boot time
        self.journal_path = Path(journal_path) if journal_path is not None else None
        for phys in self.physics:  # the driver has been up since boot: energy counters are not at 0
            phys.energy_j = (self.t - self.journal.boot_time) * phys.spec.idle_power_w * 1.6
        self._pid = 3000 + self.rng.randint(0, 2000)
        self.background = Background(self.journal, self.rng, self.t, self._new_pid)
        self.workload = Workload(self.rng, len(specs), [s.memory_total for s in specs], self._new_pid,
                                 self._container_log, catalog=p.catalog, sessions_per_hour=p.sessions_per_hour,
                                 embed_model=p.embed_model, frontend=p.frontend, frontend_line=p.frontend_line,
                                 comfy_gpu=p.comfy_gpu, keep_alive_s=p.keep_alive_s)
        self.workload.reset(self.t)
        self.vllm: SimVLLM | None = None
        if p.vllm is not None:  # up since boot: the model is resident and answering from the first scrape
            self.vllm = SimVLLM(p.vllm, self.irng, self._container_log, specs[p.vllm.gpu].memory_total)
            self.vllm.running_since_boot(self.t, self._new_pid("python3"))
        self._warm_start()
        self.down = False  # the whole box is off (planned reboot): no scrape can succeed
        self.boot_count = 0
        self.externals: dict[int, _External] = {}
        self._started: set[int] = set()
        self._ended: set[int] = set()
        self._scanner_times: list[tuple[float, str, str, int]] = []
        self._loop: dict[str, dict] = {}  # container -> restart-loop state
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._apply_readings(self.tick)

    # --- construction -------------------------------------------------------------------------
    @staticmethod
    def load_incidents(path_or_none: str | Path | None, box: str | BoxProfile = DEFAULT_BOX) -> list[Incident]:
        """An incident schedule (None: the box's packaged ~7-day default), checked against that box's GPUs,
        containers, servers and models; errors name the key (ScheduleError) or the file (OSError)."""
        p = get_box(box)
        vllm_gpus = {p.vllm.gpu} if p.vllm is not None else set()
        ollama = p.ollama_gpus
        return load_schedule(path_or_none if path_or_none is not None else p.default_schedule(),
                             n_gpus=len(p.specs), containers=p.container_names,
                             gpus_for_kind={"batch_at_power_cap": (vllm_gpus, "serves vLLM"),
                                            "vram_leak": (ollama, "runs Ollama"),
                                            "model_swaps": (ollama, "runs Ollama"),
                                            "big_model_load": (ollama, "runs Ollama")},
                             models=set(p.catalog))

    @classmethod
    def from_config(cls, path_or_none: str | Path | None, seed: int = 0, speed: float = 1.0,
                    start: float | None = None, box: str | BoxProfile = DEFAULT_BOX, **kw) -> SimBox:
        """Load an incident schedule (None: the box's packaged ~7-day default) and build the box."""
        return cls(cls.load_incidents(path_or_none, box), seed=seed, speed=speed, start=start, box=box, **kw)

    def _warm_start(self) -> None:
        """The model the box's Ollama holds at the first scrape: used just before the start, on its way
        out after keep-alive. Drawn from the inference stream and, on the aibox, small and gone before the
        first chat can arrive, so the main stream's draws (and every older signal) stay as they were."""
        p = self.profile
        if p.warm_model is None:
            return
        m = p.catalog[p.warm_model]
        expires = self.t + self.irng.uniform(*p.warm_expiry_s)
        last_used = expires - p.keep_alive_s
        pid = self.irng.randint(1500, 2900)  # older than anything the main stream hands out (>= 3000)
        self.workload.residents[m.name] = Resident(m, pid, last_used - self.irng.uniform(5, 90), last_used)

    # --- what the inference servers answer ----------------------------------------------------------
    def ollama_api_ps(self) -> dict | None:
        """Ollama's `GET /api/ps` document now; None while Ollama cannot answer (container or box down)."""
        with self._lock:
            if self.down or not self._container("ollama").running:
                return None
            return ollama_ps_document(list(self.workload.residents.values()), self.profile.keep_alive_s)

    def comfyui_queue(self) -> dict | None:
        """ComfyUI's `GET /queue` document now; None on a box without ComfyUI or while it is down."""
        with self._lock:
            if self.profile.comfy_gpu is None or self.down or not self._container("comfyui").running:
                return None
            running, pending = self.workload.comfy_queue(self.t)
            return comfyui_queue_document(running, pending, self.seed)

    def vllm_snapshot(self) -> tuple[str, int, int, float, int, int] | None:
        """(model, running, waiting, kv cache usage 0..1, prompt tokens, generation tokens) of the box's
        vLLM; None where no vLLM answers."""
        with self._lock:
            v = self.vllm
            if v is None or self.down or not self._container(v.spec.container).running or \
                    not v.serving(self.t) or not self._gpu_ok(v.spec.gpu):
                return None
            return (v.spec.model, len(v.running), len(v.waiting), v.kv_usage(), v.prompt_tokens_total,
                    v.generation_tokens_total)

    def inference_sources(self) -> list:
        """Sources (`.server`, `.poll() -> ServerState`) over this box's Ollama and ComfyUI."""
        out: list = [SimSource("ollama", self.ollama_api_ps, ollama_state)]
        if self.profile.comfy_gpu is not None:
            out.append(SimSource("comfyui", self.comfyui_queue, comfyui_state))
        return out

    def truth(self) -> list[dict]:
        return [{"kind": i.kind, "start": rfc3339(self.start_time + i.at),
                 "end": rfc3339(self.start_time + i.end), "labels": i.labels(), "benign": i.benign}
                for i in self.incidents]

    # --- helpers ------------------------------------------------------------------------------
    def _new_pid(self, comm: str = "") -> int:
        self._pid += self.rng.randint(1, 40)
        if self._pid > 4_000_000:
            self._pid = 3000
        return self._pid

    def _container(self, name: str):
        return self.container_source.by_name[name]

    def _container_log(self, t: float, name: str, message: str, stderr: bool) -> None:
        c = self._container(name)
        self.journal.container(t, name, c.id, c.image, message, stderr, DOCKERD_PID)

    def _gpu_ok(self, i: int) -> bool:
        return not self.nvml.gpus[i].lost

    def _pci_short(self, i: int) -> str:
        # NVML "00000000:02:00.0" -> kernel log "0000:02:00"
        return self.specs[i].pci_bus_id[4:-2]

    # --- public driving API -------------------------------------------------------------------
    def advance_to(self, t: float) -> None:
        """Play every whole tick up to simulated time t (never backwards)."""
        with self._lock:
            while self.t + self.tick <= t + 1e-9:
                self._step(self.t, self.tick)
                self.t += self.tick
            self.container_source.update(self.t)

    def start(self) -> None:
        """Advance sim time at `speed` x wall clock in a background thread (live mode)."""
        if self._thread is not None:
            return
        self._stop.clear()
        wall0, sim0 = time.monotonic(), self.t

        def run():
            while not self._stop.is_set():
                self.advance_to(sim0 + (time.monotonic() - wall0) * self.speed)
                if self.journal_path is not None:
                    self.write_journal(self.journal_path)
                self._stop.wait(min(1.0, max(0.05, self.tick / self.speed / 2)))

        self._thread = threading.Thread(target=run, name="rigwatch-sim", daemon=True)
        self._thread.start()

    def write_journal(self, path: str | Path) -> int:
        """Append the journal entries produced so far to a `journalctl -o json` file (live mode)."""
        import json
        with self._lock:
            entries = sorted(self.journal.drain(), key=lambda e: int(e["__REALTIME_TIMESTAMP"]))
        if entries:
            with open(path, "a") as fh:
                fh.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
        return len(entries)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def close(self) -> None:
        self.stop()
        self.proc.cleanup()

    # --- one tick -----------------------------------------------------------------------------
    def _step(self, t: float, dt: float) -> None:
        rel = t - self.start_time
        active: list[Incident] = []
        for n, inc in enumerate(self.incidents):
            if n not in self._started and inc.at <= rel < inc.end:
                self._started.add(n)
                self._on_start(t, inc)
            if n in self._started and n not in self._ended and rel >= inc.end:
                self._ended.add(n)
                self._on_end(self.start_time + inc.end, inc)
            if inc.active(rel):
                active.append(inc)
        self.background.emit_until(t + dt)
        if self.down:
            return
        self._restart_loops(t, dt)
        for inc in active:
            self._during(t, dt, inc)
        ollama_up = self._container("ollama").running
        comfy_up = self.profile.comfy_gpu is not None and self._container("comfyui").running
        others = [self._other_vram(i, t) for i in range(len(self.specs))]
        self.workload.stuck = {inc.gpu for inc in active if inc.kind == "gpu_stuck"}
        self.workload.tick(t, dt, others, self._gpu_ok, ollama_up, comfy_up)
        v = self.vllm
        if v is not None:
            v.tick(t, dt, self._container(v.spec.container).running and self._gpu_ok(v.spec.gpu))
        self._emit_scanner(t + dt)
        self._apply_readings(dt, active)

    def _other_vram(self, gpu: int, t: float) -> int:
        v = sum(e.vram for g, e in self.externals.items() if g == gpu)
        if gpu == self.profile.comfy_gpu and self._container("comfyui").running:
            v += self.workload.comfy_vram(t)
        if self._is_vllm_gpu(gpu) and self.vllm.pid is not None:
            v += self.vllm.vram()
        return v

    def _apply_readings(self, dt: float, active: list[Incident] = ()) -> None:
        t = self.t
        hour = (t % 86400) / 3600.0
        ambient = 23.0 + 2.0 * math.sin(2 * math.pi * (hour - 9) / 24)
        wanted: dict[int, tuple[str, str]] = {}
        ollama = self._container("ollama")
        comfy_gpu = self.profile.comfy_gpu
        comfy = self._container("comfyui") if comfy_gpu is not None else None
        v = self.vllm
        for i, (phys, gpu) in enumerate(zip(self.physics, self.nvml.gpus, strict=True)):
            if gpu.lost:
                continue
            faults = Faults()
            for inc in active:
                if inc.gpu != i:
                    continue
                if inc.kind == "fan_failure":
                    fans = inc.params.get("fans")
                    faults.dead_fans = frozenset(range(phys.spec.fans) if fans is None else fans)
                elif inc.kind == "degraded_cooling":
                    ramp = max(1.0, parse_duration(inc.params["ramp"]))
                    frac = min(1.0, (t - self.start_time - inc.at) / ramp)
                    faults.cooling_factor = 1.0 + (inc.params["factor"] - 1.0) * frac
                elif inc.kind == "power_brake":
                    faults.power_brake = True
                elif inc.kind == "hw_slowdown":
                    faults.hw_slowdown = True
                elif inc.kind == "gpu_stuck":
                    faults.stuck = True
            procs = []
            if ollama.running:
                for r in self.workload.residents.values():
                    if r.model.gpu == i:
                        procs.append(FakeProcess(r.pid, r.model.size + r.leak))
                        wanted[r.pid] = ("ollama_llama_se", f"/system.slice/docker-{ollama.id}.scope")
            if i == comfy_gpu and comfy.running:
                pid = self.workload.comfy_pid
                if pid is None:
                    pid = self.workload.comfy_pid = self._new_pid("python3")
                procs.append(FakeProcess(pid, self.workload.comfy_vram(t)))
                wanted[pid] = ("python3", f"/system.slice/docker-{comfy.id}.scope")
            if v is not None and i == v.spec.gpu and v.pid is not None:
                c = self._container(v.spec.container)
                if c.running:
                    procs.append(FakeProcess(v.pid, v.vram() if v.serving(t) else v.vram() // 2))
                    wanted[v.pid] = ("python3", f"/system.slice/docker-{c.id}.scope")
            ext = self.externals.get(i)
            if ext is not None:
                procs.append(FakeProcess(ext.pid, ext.vram))
                wanted[ext.pid] = (ext.comm, f"/system.slice/{ext.unit}")
            self.workload.external = {g: (e.pid, e.vram, e.busy, e.intensity) for g, e in self.externals.items()}
            vram = min(gpu.memory_total - 64 * MIB, DRIVER_OVERHEAD + sum(p.used_gpu_memory for p in procs))
            load = self.workload.load(t, dt, i)
            if v is not None and i == v.spec.gpu:
                load = _combine(load, v.load)
            phys.step(dt, load, faults, ambient, self.rng, gpu, vram, procs)
        self.proc.sync(wanted)
        self.container_source.update(t)

    # --- incidents ----------------------------------------------------------------------------
    def _on_start(self, t: float, inc: Incident) -> None:
        k = inc.kind
        if k in ("planned_reboot", "unit_failure_at_boot"):
            self._shutdown(t)
        elif k == "gpu_lost":
            i = inc.gpu
            gpu = self.nvml.gpus[i]
            victims = [r for r in self.workload.residents.values() if r.model.gpu == i]
            pid = victims[0].pid if victims else None
            gpu.lost = True
            gpu.compute_processes = []
            self.nvml.push_xid(i, 79)
            pci = self._pci_short(i)
            pid_s = f"pid={pid}, name=ollama_llama_se" if pid else "pid='<unknown>', name=<unknown>"
            self.journal.kernel(t, f"NVRM: GPU at PCI:{pci}: {self.specs[i].uuid}", 4)
            self.journal.kernel(t, f"NVRM: Xid (PCI:{pci}): 79, {pid_s}, GPU has fallen off the bus.", 4)
            self.journal.kernel(t + 0.001, f"NVRM: GPU {pci}.0: GPU has fallen off the bus.", 3)
            self.journal.kernel(t + 0.002, f"NVRM: GPU {pci}.0: RmInitAdapter failed! (0x26:0xffff:1589)", 3)
            if self._is_vllm_gpu(i) and self.vllm.pid is not None:
                self._vllm_crash(t, "RuntimeError: CUDA error: unspecified launch failure")
            for r in victims:
                self.workload.unload(t, r)
                self._container_log(t + 0.5, "ollama", f'time={iso_ms(t + 0.5)} level=ERROR source=server.go:'
                                    f'438 msg="llama runner terminated" error="signal: aborted (core dumped)"',
                                    True)
                self._container_log(t + 0.5, "ollama", "CUDA error: unknown error\n  current device: 0, in "
                                    "function ggml_backend_cuda_synchronize at ggml-cuda.cu:2449", True)
        elif k == "full_power_hours":
            i = inc.gpu
            vram = int((17.5 if self.specs[i].memory_total > 16 * GIB else 8.6) * GIB)
            pid = self._new_pid("python3")
            self.externals[i] = _External(pid, "lora-train.service", "python3", vram, 1.0, 1.15)
            self.journal.systemd(t, "Started lora-train.service - LoRA fine-tune job (nightly dataset).")
            self.journal.unit(t + 2, "lora-train.service", "python3", pid,
                              f"Loading base model onto cuda:{i} ...", 6, transport="stdout")
        elif k == "big_model_load":
            model = self.profile.catalog[inc.params["model"]]
            from dataclasses import replace
            model = replace(model, gpu=inc.gpu)
            self.workload.request(t, model, self._other_vram(inc.gpu, t), self._gpu_ok)
            r = self.workload.residents.get(model.name)
            if r is not None:
                r.pinned_until = self.start_time + inc.end
            self.workload.sessions.append(Session(model, t + 30, 12))
        elif k == "vram_leak":
            self._pin_model(t, inc)
        elif k in ("fan_failure", "degraded_cooling"):
            # A cooling fault only shows under load: the schedule plays it while someone is chatting
            # with the card's usual model (an idle card at 20 W runs cool even with seized fans).
            if self._is_vllm_gpu(inc.gpu):
                self.vllm.streams.append(Stream(t + 20, self.start_time + inc.end, 4, prompt=700, gen=400))
            else:
                model = self._usual_model(inc.gpu)
                self.workload.sessions.append(Session(model, t + self.rng.uniform(5, 40),
                                                      max(3, int(inc.duration / 50)), mean_gap=35.0))
        elif k == "gpu_stuck":
            # The kernel hangs: what was queued on the card never finishes and its clients leave.
            g = inc.gpu
            self.workload.jobs = [j for j in self.workload.jobs if not (j.gpu == g and j.end > t)]
            self.workload.busy_until[g] = t
            if self._is_vllm_gpu(g):
                self.vllm.hang(t)
        elif k == "batch_at_power_cap":
            self.vllm.streams.append(Stream(t, self.start_time + inc.end, inc.params["concurrency"]))
            self.journal.unit(t, "cron.service", "CRON", self._new_pid("cron"),
                              "(admin) CMD (/srv/batch/run-summaries.sh --concurrency "
                              f"{inc.params['concurrency']})", 6, comm="cron", facility=9)
        elif k == "model_swaps":
            pass  # played tick by tick in _during
        elif k == "busy_request_log":
            rate = inc.params["rate_per_min"]
            if self._is_vllm_gpu(inc.gpu):
                self.vllm.bursts.append(Burst(t, self.start_time + inc.end, rate))
            else:
                model = self._usual_model(inc.gpu)
                n = max(1, int(rate / 5))  # each client asks about every 12 s
                for _ in range(n):
                    self.workload.sessions.append(Session(model, t + self.irng.uniform(0, 10),
                                                          int(inc.duration * rate / 60 / n), mean_gap=4.0))
        elif k == "ssh_scanner_noise":
            n = inc.params["attempts"]
            ips = [f"{self.rng.choice([45, 61, 92, 103, 141, 185, 193, 218])}.{self.rng.randint(1, 254)}."
                   f"{self.rng.randint(1, 254)}.{self.rng.randint(1, 254)}" for _ in range(max(1, n // 2))]
            users = ["admin", "root", "ubuntu", "test", "oracle", "pi", "user"]
            for _ in range(n):
                self._scanner_times.append((t + self.rng.uniform(0, inc.duration), self.rng.choice(ips),
                                            self.rng.choice(users), self.rng.randint(30000, 65000)))
            self._scanner_times.sort()
        elif k == "container_restart_loop":
            self._loop[inc.container] = {"next_crash": t + self.rng.uniform(5, 30), "down_until": None,
                                         "period": parse_duration(inc.params["period"])}

    def _on_end(self, t: float, inc: Incident) -> None:
        k = inc.kind
        if k in ("planned_reboot", "unit_failure_at_boot"):
            self._boot(t, failing_unit=inc.params.get("unit") if k == "unit_failure_at_boot" else None)
        elif k == "gpu_lost":
            # The owner power-cycled the card's slot (or reloaded the driver): it is back, counters fresh.
            gpu = self.nvml.gpus[inc.gpu]
            gpu.lost = False
            self.physics[inc.gpu].reset_after_boot(23.0)
            self.journal.kernel(t, f"NVRM: GPU at PCI:{self._pci_short(inc.gpu)}: {self.specs[inc.gpu].uuid}", 6)
            if self._is_vllm_gpu(inc.gpu) and self.vllm.pid is None and \
                    self._container(self.vllm.spec.container).running:
                self.vllm.start(t + 5, self._new_pid("python3"))  # Docker restarts the crashed server
        elif k == "full_power_hours":
            e = self.externals.pop(inc.gpu, None)
            if e is not None:
                self.journal.unit(t - 1, "lora-train.service", "python3", e.pid,
                                  "Saved adapter to /srv/lora/out/adapter_model.safetensors", 6, transport="stdout")
                self.journal.systemd(t, "lora-train.service: Deactivated successfully.")
                self.journal.systemd(t, f"lora-train.service: Consumed {int(inc.duration // 3600)}h "
                                        f"{int(inc.duration % 3600 // 60)}min CPU time.")
        elif k == "gpu_stuck":
            if self._is_vllm_gpu(inc.gpu):
                self.vllm.stuck = False
        elif k == "vram_leak":
            for r in self.workload.residents.values():
                if r.model.gpu == inc.gpu and r.leak:
                    r.leak = 0
                    r.pinned_until = 0.0
                    r.pid = self._new_pid("ollama_llama_se")  # the runner was restarted
        elif k == "container_restart_loop":
            st = self._loop.pop(inc.container, None)
            c = self._container(inc.container)
            if st is not None and not c.running:
                self._container_start(t, inc.container)

    def _during(self, t: float, dt: float, inc: Incident) -> None:
        if inc.kind == "gpu_stuck" and not self._is_vllm_gpu(inc.gpu):
            self._pin_model(t, inc)
        if inc.kind == "model_swaps" and self.irng.random() < dt / parse_duration(inc.params["every"]):
            # Someone (an agent, a model comparison) asks for another model than the one loaded.
            loaded = {r.model.name for r in self.workload.residents.values() if r.model.gpu == inc.gpu}
            choices = [m for m in self.profile.catalog.values()
                       if m.gpu == inc.gpu and m.weight > 0 and m.name not in loaded]
            if choices:
                model = self.irng.choice(choices)
                self.workload.sessions.append(Session(model, t + self.irng.uniform(0, dt),
                                                      self.irng.randint(1, 3), mean_gap=15.0))
        if inc.kind == "vram_leak":
            r = self._pin_model(t, inc)
            if r is None:
                return
            gpu = self.nvml.gpus[inc.gpu]
            room = gpu.memory_total - DRIVER_OVERHEAD - self._other_vram(inc.gpu, t) - \
                self.workload.vram_used_by_ollama(inc.gpu) - 128 * MIB
            step = int(inc.params["rate_gib_per_hour"] * GIB * dt / 3600 * self.rng.uniform(0.6, 1.4))
            if room > step:
                r.leak += step
            elif not getattr(r, "_oom_logged", False):
                r._oom_logged = True
                self._container_log(t, "ollama", "ggml_backend_cuda_buffer_type_alloc_buffer: allocating "
                                    f"{self.rng.randint(300, 900)}.00 MiB on device 0: cudaMalloc failed: "
                                    "out of memory", True)

    def _pin_model(self, t: float, inc: Incident):
        """A leak or a hung kernel needs a resident runner on that GPU: keep (or load) its usual model."""
        i = inc.gpu
        mine = [r for r in self.workload.residents.values() if r.model.gpu == i]
        if not mine:
            if not self._container("ollama").running or not self._gpu_ok(i):
                return None
            model = self._usual_model(i)
            self.workload.ensure_loaded(t, model, self._other_vram(i, t))
            mine = [r for r in self.workload.residents.values() if r.model.gpu == i]
            if not mine:
                return None
        r = max(mine, key=lambda x: x.leak)
        r.pinned_until = self.start_time + inc.end
        return r

    def _usual_model(self, gpu: int):
        p = self.profile
        return p.catalog[p.usual_models[gpu]]

    def _is_vllm_gpu(self, gpu: int | None) -> bool:
        return self.vllm is not None and gpu == self.vllm.spec.gpu

    def _vllm_crash(self, t: float, error: str) -> None:
        c = self.vllm.spec.container
        self._container_log(t + 0.2, c, f"ERROR {_vllm_ts(t)} engine.py:135] Engine background task failed",
                            False)
        self._container_log(t + 0.21, c, error, False)
        self._container_log(t + 0.3, c, "INFO:     Shutting down", False)
        self.vllm.stop()

    def _emit_scanner(self, until: float) -> None:
        while self._scanner_times and self._scanner_times[0][0] <= until:
            ts, ip, user, port = self._scanner_times.pop(0)
            pid = self._new_pid("sshd")
            self.journal.unit(ts, "ssh.service", "sshd", pid, f"Invalid user {user} from {ip} port {port}", 6,
                              facility=4)
            self.journal.unit(ts + 1.8, "ssh.service", "sshd", pid,
                              f"Failed password for invalid user {user} from {ip} port {port} ssh2", 6,
                              facility=10)
            self.journal.unit(ts + 2.1, "ssh.service", "sshd", pid,
                              f"Connection closed by invalid user {user} {ip} port {port} [preauth]", 6,
                              facility=4)

    # --- containers -----------------------------------------------------------------------------
    _CRASH_LINES = {
        "ollama": ['time={ts} level=ERROR source=routes.go:1259 msg="listen tcp 0.0.0.0:11434: bind: address '
                   'already in use"', "Error: listen tcp 0.0.0.0:11434: bind: address already in use"],
        "open-webui": ["ERROR [open_webui.internal.db] Database connection failed: (psycopg2.OperationalError) "
                       'could not translate host name "postgres" to address: Temporary failure in name resolution',
                       "sqlalchemy.exc.OperationalError: (psycopg2.OperationalError) could not connect to server"],
        "librechat": ["error: There was an uncaught error: MongoServerSelectionError: connect ECONNREFUSED "
                      "172.19.0.3:27017", "error: [Meilisearch] Error: fetch failed (connect ECONNREFUSED)"],
        "qdrant": ["ERROR qdrant: Panic occurred in file lib/collection/src/shards/local_shard/mod.rs at line 280: "
                   "Failed to load local shard: Service internal error: RocksDB open error",
                   "thread 'main' panicked: Failed to load local shard"],
    }

    def _restart_loops(self, t: float, dt: float) -> None:
        for name, st in self._loop.items():
            c = self._container(name)
            if c.running and t >= st["next_crash"]:
                lines = self._CRASH_LINES.get(name, [f"fatal error: {name}: configuration invalid, exiting",
                                                     "exit status 1"])
                for n, line in enumerate(lines):
                    self._container_log(t + 0.01 * n, name, line.format(ts=iso_ms(t)), True)
                self.journal.unit(t + 0.2, "docker.service", "dockerd", DOCKERD_PID,
                                  f'time="{iso_ms(t + 0.2)}" level=info msg="ignoring event" container={c.id} '
                                  'module=libcontainerd namespace=moby topic=/tasks/delete '
                                  'type="*events.TaskDelete"', 6, transport="stdout", comm="dockerd")
                self.container_source.update(t, lambda by, c=c: setattr(c, "running", False))
                if name == "ollama":
                    for r in list(self.workload.residents.values()):
                        self.workload.unload(t, r)
                if self.vllm is not None and name == self.vllm.spec.container:
                    self.vllm.stop()
                # Docker's restart policy backs off (100 ms doubling); a few seconds on a busy box.
                st["down_until"] = t + self.rng.uniform(2, 9)
            elif not c.running and st["down_until"] is not None and t >= st["down_until"]:
                self._container_start(t, name, restart=True)
                st["next_crash"] = t + st["period"] * self.rng.uniform(0.6, 1.4)
                st["down_until"] = None

    def _container_start(self, t: float, name: str, restart: bool = False) -> None:
        def mut(by):
            c = by[name]
            c.running = True
            c.started_at = t
            if restart:
                c.restart_count += 1
        self.container_source.update(t, mut)
        self._startup_lines(t, name)
        if self.vllm is not None and name == self.vllm.spec.container:
            self.vllm.start(t, self._new_pid("python3"))

    def _startup_lines(self, t: float, name: str) -> None:
        if self.vllm is not None and name == self.vllm.spec.container:
            return  # SimVLLM.start logs vLLM's own start-up
        og = self.specs[min(self.profile.ollama_gpus)]
        msgs = {
            "ollama": [f'time={iso_ms(t)} level=INFO source=routes.go:1310 msg="Listening on [::]:11434 '
                       '(version 0.5.7)"',
                       f'time={iso_ms(t + 0.3)} level=INFO source=types.go:131 msg="inference compute" '
                       f'id={og.uuid} library=cuda variant=v12 compute=8.6 driver=12.8 '
                       f'name="{og.name}" total="{og.memory_total / GIB:.1f} GiB" '
                       f'available="{og.memory_total / GIB - 0.4:.1f} GiB"'],
            "librechat": ["info: Server listening on all interfaces at port 3080. Use http://localhost:3080 to "
                          "access it", "info: Connected to MongoDB"],
            "mongodb": ['{"t":{"$date":"' + iso_ms(t) + '"},"s":"I",  "c":"NETWORK",  "id":23016,   '
                        '"ctx":"listener","msg":"Waiting for connections","attr":{"port":27017,"ssl":"off"}}'],
            "open-webui": ["INFO:     Started server process [1]", "INFO:     Waiting for application startup.",
                           "INFO:     Application startup complete."],
            "postgres": ["LOG:  database system is ready to accept connections"],
            "redis": ["1:M * Ready to accept connections tcp"],
        }.get(name, [f"{name} started"])
        stderr = name in ("ollama", "postgres")
        for n, m in enumerate(msgs):
            self._container_log(t + 0.5 + 0.1 * n, name, m, stderr)

    # --- reboots --------------------------------------------------------------------------------
    def _shutdown(self, t: float) -> None:
        self.journal.unit(t - 2, "ssh.service", "sshd", self._new_pid("sshd"),
                          "pam_unix(sudo:session): session opened for user root(uid=0) by admin(uid=1000)", 6)
        self.journal.systemd(t, "Stopping docker.service - Docker Application Container Engine...")
        self.journal.systemd(t + 4, "docker.service: Deactivated successfully.")
        self.journal.unit(t + 5, "systemd-shutdown", "systemd-shutdown", 1, "Syncing filesystems and block "
                          "devices.", 6, transport="journal")
        self.journal.kernel(t + 6, "reboot: Restarting system", 5)
        self.down = True
        if self.vllm is not None:
            self.vllm.stop()
        self.container_source.update(t, lambda by: [setattr(c, "running", False) for c in by.values()])

    def _boot(self, t: float, failing_unit: str | None = None) -> None:
        self.journal.new_boot(t)
        self.boot_count += 1
        self.proc.set_boot_time(t)
        j = self.journal
        j.kernel(t, "Linux version 6.1.0-28-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian "
                    "12.2.0-14) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC "
                    "Debian 6.1.119-1 (2024-11-22)", 5)
        j.kernel(t + 3.1, "nvidia: loading out-of-tree module taints kernel.", 4)
        j.kernel(t + 3.4, f"NVRM: loading NVIDIA UNIX x86_64 Kernel Module  {DRIVER_VERSION}  "
                          "Release Build  (dvs-builder@U16-I1-N07-12-3)  Fri Mar 14 2025", 6)
        j.systemd(t + 9, "Started ssh.service - OpenBSD Secure Shell server.")
        j.unit(t + 9.1, "ssh.service", "sshd", self._new_pid("sshd"), "Server listening on 0.0.0.0 port 22.", 6)
        if failing_unit:
            desc = "Wait for Network to be Configured" if "wait-online" in failing_unit else failing_unit
            j.systemd(t + 10, f"Starting {failing_unit} - {desc}...")
            j.unit(t + 130, failing_unit, failing_unit.split(".")[0], self._new_pid(),
                   "Timeout occurred while waiting for network connectivity.", 3, transport="stdout")
            j.systemd(t + 130, f"{failing_unit}: Main process exited, code=exited, status=1/FAILURE", 5)
            j.systemd(t + 130, f"{failing_unit}: Failed with result 'exit-code'.", 4)
            j.systemd(t + 130, f"Failed to start {failing_unit} - {desc}.", 3)
        j.systemd(t + 12, "Started docker.service - Docker Application Container Engine.")
        self.down = False
        for gpu, phys in zip(self.nvml.gpus, self.physics, strict=True):
            gpu.lost = False
            gpu.energy_mj = 0
            phys.reset_after_boot(23.0)
            phys.temperature = 32.0
        self.workload.reset(t)
        self.externals.clear()
        self._loop.clear()

        def restart_all(by):
            for c in by.values():
                c.running = True
                c.started_at = t + 14 + self.rng.uniform(0, 6)
                c.restart_count = 0
        self.container_source.update(t, restart_all)
        for name in self.profile.boot_containers:
            self._startup_lines(t + 15, name)
        if self.vllm is not None:
            self.vllm.start(t + 15, self._new_pid("python3"))
        j.systemd(t + 20, "Startup finished in 4.1s (kernel) + 16.2s (userspace) = 20.3s.")
