"""What the box's users do: a daily rhythm of chat sessions against Ollama (bursty requests, models
loaded on demand and unloaded after keep-alive), embedding bursts from Open-WebUI, and evening image
generation in ComfyUI. Produces, per tick and GPU, the busy fraction, power intensity, PCIe traffic
and the resident processes with their VRAM.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .model import GIB, MIB, Load

KEEP_ALIVE_S = 300.0  # Ollama's default keep_alive


@dataclass(frozen=True)
class ModelSpec:
    name: str
    size: int  # bytes resident in VRAM (weights + KV cache at default context)
    gpu: int
    tokens_per_s: float
    weight: float  # share of chat sessions
    intensity: float = 0.85


CATALOG = {
    m.name: m for m in (
        ModelSpec("llama3.1:8b", int(6.3 * GIB), 0, 105, 0.34),
        ModelSpec("qwen2.5:14b", int(10.9 * GIB), 0, 58, 0.22),
        ModelSpec("mistral-small:24b", int(15.8 * GIB), 0, 36, 0.10, 0.92),
        ModelSpec("qwen2.5-coder:7b", int(5.9 * GIB), 1, 52, 0.20),
        ModelSpec("llama3.2:3b", int(3.4 * GIB), 1, 92, 0.14, 0.8),
        ModelSpec("nomic-embed-text", int(0.62 * GIB), 1, 4000, 0.0, 0.7),
        ModelSpec("gemma2:27b", int(19.6 * GIB), 0, 31, 0.0, 0.95),
    )
}

# Chat sessions started per hour, by hour of day (UTC; the box's owner lives on UTC).
SESSIONS_PER_HOUR = (0.3, 0.15, 0.1, 0.05, 0.05, 0.1, 0.3, 1.2, 2.2, 3.4, 3.8, 3.8,
                     2.6, 3.2, 3.8, 3.8, 3.4, 3.0, 4.4, 5.5, 5.8, 5.0, 3.4, 1.4)


@dataclass
class Job:
    start: float
    end: float
    gpu: int
    intensity: float
    rx_bps: float = 0.0
    kind: str = ""  # "comfy": a ComfyUI prompt (its /queue counts these)


@dataclass
class Resident:
    """A loaded model: one runner process in the ollama container."""

    model: ModelSpec
    pid: int
    loaded_at: float
    last_used: float
    pinned_until: float = 0.0  # incidents keep a model resident regardless of keep-alive
    leak: int = 0  # extra bytes from a vram_leak incident


@dataclass
class Session:
    model: ModelSpec
    next_request: float
    remaining: int
    mean_gap: float = 70.0  # seconds between a reply and the user's next prompt


@dataclass
class Workload:
    rng: random.Random
    n_gpus: int
    memory_total: list[int]
    new_pid: callable
    log: callable  # log(t, container, message, stderr)
    jobs: list[Job] = field(default_factory=list)
    residents: dict[str, Resident] = field(default_factory=dict)
    sessions: list[Session] = field(default_factory=list)
    busy_until: list[float] = field(default_factory=list)
    next_session: float = 0.0
    next_comfy: float = 0.0
    comfy_pid: int | None = None
    comfy_vram_until: float = 0.0
    external: dict[int, tuple[int, int, float, float]] = field(default_factory=dict)  # gpu -> pid, bytes, busy, intensity
    # The box profile's knobs (defaults: the aibox's).
    catalog: dict[str, ModelSpec] = field(default_factory=lambda: CATALOG)
    sessions_per_hour: tuple[float, ...] = SESSIONS_PER_HOUR
    embed_model: str = "nomic-embed-text"
    frontend: str = "open-webui"
    frontend_line: str = 'INFO:     192.168.1.20:0 - "POST /api/chat/completions HTTP/1.1" 200 OK'
    comfy_gpu: int | None = 1
    keep_alive_s: float = KEEP_ALIVE_S
    # GPUs with a hung kernel: their clients gave up, so no request reaches (or finishes on) them.
    stuck: set[int] = field(default_factory=set)

    def __post_init__(self):
        self.busy_until = [0.0] * self.n_gpus
        self.chat_models = [m for m in self.catalog.values() if m.weight > 0]

    # --- time of day ------------------------------------------------------------------------------
    def session_rate(self, t: float) -> float:
        d = datetime.fromtimestamp(t, UTC)
        h = d.hour + d.minute / 60.0
        i = int(h) % 24
        frac = h - int(h)
        table = self.sessions_per_hour
        rate = table[i] * (1 - frac) + table[(i + 1) % 24] * frac
        if d.weekday() >= 5 and 9 <= d.hour <= 23:
            rate *= 1.25
        return rate

    def reset(self, t: float) -> None:
        """After a boot: nothing loaded, nobody connected yet."""
        self.jobs.clear()
        self.residents.clear()
        self.sessions.clear()
        self.busy_until = [t] * self.n_gpus
        self.comfy_pid = None
        self.external.clear()
        self.next_session = t + self.rng.uniform(60, 600)
        self.next_comfy = t + self.rng.expovariate(1 / 20000)

    # --- requests ---------------------------------------------------------------------------------
    def vram_used_by_ollama(self, gpu: int) -> int:
        return sum(r.model.size + r.leak for r in self.residents.values() if r.model.gpu == gpu)

    def free_vram(self, gpu: int, other: int) -> int:
        return self.memory_total[gpu] - 300 * MIB - other - self.vram_used_by_ollama(gpu)

    def ensure_loaded(self, t: float, model: ModelSpec, other_vram: int) -> float | None:
        """Load `model` if needed (evicting idle ones); returns when it is ready, None if it cannot fit."""
        r = self.residents.get(model.name)
        if r is not None:
            return t
        while self.free_vram(model.gpu, other_vram) < model.size:
            victims = [x for x in self.residents.values() if x.model.gpu == model.gpu and x.pinned_until <= t]
            if not victims:
                return None
            victim = min(victims, key=lambda x: x.last_used)
            self.unload(t, victim)
        if self.free_vram(model.gpu, other_vram) < model.size:
            return None
        load_s = 1.2 + model.size / (2.8e9)
        pid = self.new_pid("ollama_llama_se")
        self.residents[model.name] = Resident(model, pid, t, t + load_s)
        start = max(t, self.busy_until[model.gpu])
        self.jobs.append(Job(start, start + load_s, model.gpu, 0.25, rx_bps=model.size / load_s))
        self.busy_until[model.gpu] = start + load_s
        self.log(t, "ollama", f'time={_iso(t)} level=INFO source=server.go:376 msg="starting llama server" '
                              f'cmd="/usr/bin/ollama runner --model /root/.ollama/models/blobs/sha256-'
                              f'{self.rng.getrandbits(64):016x} --ctx-size 8192 --n-gpu-layers 99 '
                              f'--threads 8 --parallel 4 --port {self.rng.randint(33000, 45000)}"', True)
        self.log(start + load_s, "ollama", f'time={_iso(start + load_s)} level=INFO source=server.go:594 '
                                           f'msg="llama runner started in {load_s:.2f} seconds"', True)
        return start + load_s

    def unload(self, t: float, r: Resident) -> None:
        self.residents.pop(r.model.name, None)

    def request(self, t: float, model: ModelSpec, other_vram: int, gpu_ok) -> None:
        if not gpu_ok(model.gpu):
            self.log(t, "ollama", f'time={_iso(t)} level=ERROR source=sched.go:455 msg="error loading llama '
                                  f'server" error="llama runner process has terminated: CUDA error: unknown '
                                  f'error"', True)
            self.log(t + 0.01, "ollama", f"[GIN] {_gin(t)} | 500 | {self.rng.uniform(0.2, 2):8.4f}s | "
                                         f"     172.18.0.3 | POST     \"/api/chat\"", True)
            return
        if model.gpu in self.stuck:
            return  # the runner is wedged: the client times out, nothing is logged as answered
        ready = self.ensure_loaded(t, model, other_vram)
        if ready is None:
            return
        tokens = min(3000.0, self.rng.lognormvariate(math.log(320), 0.7))
        prefill = self.rng.uniform(0.2, 1.8)
        start = max(ready, self.busy_until[model.gpu])
        dur = prefill + tokens / model.tokens_per_s
        self.jobs.append(Job(start, start + dur, model.gpu, model.intensity))
        self.busy_until[model.gpu] = start + dur
        self.residents[model.name].last_used = start + dur
        total = start + dur - t
        self.log(start + dur, "ollama", f"[GIN] {_gin(start + dur)} | 200 | {total:8.4f}s | "
                                        f"     172.18.0.3 | POST     \"/api/chat\"", True)
        self.log(start + dur + 0.02, self.frontend, self.frontend_line.format(ts=_iso(start + dur + 0.02)), False)

    # --- per tick ---------------------------------------------------------------------------------
    def tick(self, t: float, dt: float, other_vram: list[int], gpu_ok, ollama_up: bool,
             comfy_up: bool) -> None:
        """Generate arrivals in [t, t+dt) and retire idle models."""
        rate = self.session_rate(t) / 3600.0
        while self.next_session < t + dt:
            ts = self.next_session
            model = self.rng.choices(self.chat_models, weights=[m.weight for m in self.chat_models])[0]
            if ollama_up:
                self.sessions.append(Session(model, ts, 1 + int(self.rng.expovariate(1 / 7.0))))
                if self.rng.random() < 0.25:  # RAG: Open-WebUI embeds the uploaded document first
                    emb = self.catalog[self.embed_model]
                    if gpu_ok(emb.gpu) and emb.gpu not in self.stuck and \
                            self.ensure_loaded(ts, emb, other_vram[emb.gpu]) is not None:
                        start = max(ts, self.busy_until[emb.gpu])
                        dur = self.rng.uniform(4, 40)
                        self.jobs.append(Job(start, start + dur, emb.gpu, emb.intensity))
                        self.busy_until[emb.gpu] = start + dur
                        self.residents[emb.name].last_used = start + dur
            self.next_session = ts + self.rng.expovariate(max(rate, 1e-5))
        for s in list(self.sessions):
            while s.remaining > 0 and s.next_request < t + dt:
                if ollama_up:
                    self.request(s.next_request, s.model, other_vram[s.model.gpu], gpu_ok)
                s.remaining -= 1
                s.next_request += self.rng.expovariate(1 / s.mean_gap) + 8.0
            if s.remaining <= 0:
                self.sessions.remove(s)
        for r in list(self.residents.values()):
            if r.pinned_until <= t and r.last_used + self.keep_alive_s <= t:
                self.unload(t, r)
        self._comfy(t, dt, comfy_up, gpu_ok)
        # Drop finished jobs (kept one tick back for overlap accounting).
        self.jobs = [j for j in self.jobs if j.end > t - dt]

    def _comfy(self, t: float, dt: float, up: bool, gpu_ok) -> None:
        g = self.comfy_gpu
        if g is None:
            return
        d = datetime.fromtimestamp(t, UTC)
        evening = 17 <= d.hour <= 23 or d.weekday() >= 5 and 10 <= d.hour <= 23
        while self.next_comfy < t + dt:
            ts = self.next_comfy
            if up and evening and gpu_ok(g) and g not in self.stuck:
                start = max(ts, self.busy_until[g])
                n = self.rng.randint(3, 14)
                for _ in range(n):
                    dur = self.rng.uniform(14, 32)
                    self.jobs.append(Job(start, start + dur, g, 1.12, kind="comfy"))
                    start += dur + self.rng.uniform(2, 40)
                self.busy_until[g] = start
                self.comfy_vram_until = start + 1200  # ComfyUI keeps the checkpoint cached a while
            self.next_comfy = ts + self.rng.expovariate(1 / 5400.0)

    def comfy_queue(self, t: float) -> tuple[list[Job], list[Job]]:
        """ComfyUI's queue at t: the prompt being rendered and those waiting behind it."""
        mine = [j for j in self.jobs if j.kind == "comfy" and j.end > t]
        return [j for j in mine if j.start <= t], [j for j in mine if j.start > t]

    def comfy_vram(self, t: float) -> int:
        return int(7.2 * GIB) if t < self.comfy_vram_until else 380 * MIB

    def load(self, t: float, dt: float, gpu: int) -> Load:
        busy = 0.0
        weighted = 0.0
        rx = 0.0
        for j in self.jobs:
            if j.gpu != gpu:
                continue
            ov = min(j.end, t + dt) - max(j.start, t)
            if ov > 0:
                busy += ov
                weighted += ov * j.intensity
                rx += j.rx_bps * ov
        ext = self.external.get(gpu)
        frac = min(1.0, busy / dt)
        intensity = weighted / busy if busy > 0 else 0.85
        if ext is not None:
            _, _, ebusy, eint = ext
            intensity = max(intensity, eint)
            frac = min(1.0, frac + ebusy)
        return Load(busy=frac, intensity=intensity, pcie_rx_bps=rx / dt,
                    pcie_tx_bps=(rx / dt) * 0.02 + frac * 4e6)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(t * 1000) % 1000:03d}Z"


def _gin(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y/%m/%d - %H:%M:%S")
