"""A vLLM OpenAI-compatible server as the sim plays it: one model resident from start-up (vLLM
preallocates `gpu_memory_utilization` of the card), requests arriving in bursts, continuous batching
of up to `max_num_seqs` sequences, a KV cache that fills with their tokens, and vLLM's own log lines:
one access line per answered request and, every ~10 s while busy, the engine's throughput line.

All its randomness comes from the box's inference stream, never the box's main one.
"""
from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

from .boxes import VllmSpec
from .model import Load

STATS_EVERY_S = 10.0  # vLLM's LoggingStatLogger local_interval


@dataclass
class Request:
    arrived: float
    prompt: int
    gen: int
    client: str
    done: float = 0.0  # tokens generated so far


@dataclass
class Stream:
    """Clients keeping `concurrency` requests in flight from `start` to `end` (a batch job)."""

    start: float
    end: float
    concurrency: int
    prompt: int = 1800
    gen: int = 450


@dataclass
class Burst:
    """Extra interactive traffic: `per_min` short requests a minute from `start` to `end`."""

    start: float
    end: float
    per_min: float
    prompt: int = 300
    gen: int = 60


def _vllm_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%m-%d %H:%M:%S")


class SimVLLM:
    def __init__(self, spec: VllmSpec, rng: random.Random, log, memory_total: int):
        self.spec = spec
        self.rng = rng
        self.log = log  # log(t, container, message, stderr)
        self.memory_total = memory_total
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.streams: list[Stream] = []
        self.bursts: list[Burst] = []
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.ready_at: float | None = None  # None: not running; else when the API starts answering
        self.pid: int | None = None
        self.stuck = False
        self.load = Load(0.0)
        self._next_arrival = 0.0
        self._next_stats = 0.0
        self._window = [0, 0]  # prompt, generation tokens since the last stats line
        self._batch_until = 0.0

    # --- process lifecycle ------------------------------------------------------------------------
    def start(self, t: float, pid: int) -> None:
        """The container (re)starts: a fresh process, its counters at 0, the model loading."""
        self.pid = pid
        self.ready_at = t + self.spec.load_seconds * self.rng.uniform(0.8, 1.3)
        self.waiting.clear()
        self.running.clear()
        self.prompt_tokens_total = self.generation_tokens_total = 0
        self._next_arrival = self.ready_at
        self._next_stats = self.ready_at + STATS_EVERY_S
        self._window = [0, 0]
        s = self.spec
        self.log(t + 1, s.container, f"INFO {_vllm_time(t + 1)} api_server.py:712] vLLM API server version 0.6.6.post1",
                 False)
        self.log(t + 2, s.container, f"INFO {_vllm_time(t + 2)} config.py:510] This model supports multiple tasks: "
                 f"{{'generate', 'embed'}}. Defaulting to 'generate'.", False)
        self.log(self.ready_at - 1, s.container, f"INFO {_vllm_time(self.ready_at - 1)} worker.py:266] Memory "
                 f"profiling takes 4.12 seconds; the current vLLM instance can use total_gpu_memory "
                 f"({self.memory_total / 2**30:.2f}GiB) x gpu_memory_utilization ({s.gpu_memory_utilization:.2f}) "
                 f"= {self.memory_total / 2**30 * s.gpu_memory_utilization:.2f}GiB", False)
        self.log(self.ready_at, s.container, "INFO:     Application startup complete.", False)

    def running_since_boot(self, t: float, pid: int) -> None:
        """Up before the sim starts: the model resident and answering from the first tick, no start-up lines."""
        self.pid = pid
        self.ready_at = t
        self._next_arrival = t + self.rng.uniform(0, 30)
        self._next_stats = t + STATS_EVERY_S

    def stop(self) -> None:
        self.pid = None
        self.ready_at = None
        self.waiting.clear()
        self.running.clear()
        self.load = Load(0.0)

    def serving(self, t: float) -> bool:
        return self.ready_at is not None and t >= self.ready_at

    def vram(self) -> int:
        """The process's GPU memory: the preallocated share of the card, from the first moment."""
        return int(self.memory_total * self.spec.gpu_memory_utilization) - 260 * 2**20

    def kv_usage(self) -> float:
        used = sum(r.prompt + int(r.done) for r in self.running)
        return min(1.0, used / self.spec.kv_cache_tokens)

    def hang(self, t: float) -> None:
        """A hung kernel: the engine stops stepping, the clients time out and leave."""
        self.stuck = True
        self.waiting.clear()
        self.running.clear()

    # --- traffic -----------------------------------------------------------------------------------
    def _rate_per_s(self, t: float) -> float:
        d = datetime.fromtimestamp(t, UTC)
        h = d.hour + d.minute / 60.0
        table = self.spec.requests_per_hour
        i = int(h) % 24
        frac = h - int(h)
        return (table[i] * (1 - frac) + table[(i + 1) % 24] * frac) / 3600.0

    def _client(self) -> str:
        return f"172.19.0.{self.rng.choice((4, 5, 7, 9))}:{self.rng.randint(32768, 60999)}"

    def _new(self, t: float, prompt: float, gen: float) -> Request:
        p = int(min(12000, max(16, self.rng.lognormvariate(math.log(prompt), 0.6))))
        g = int(min(4000, max(4, self.rng.lognormvariate(math.log(gen), 0.7))))
        return Request(t, p, g, self._client())

    def _arrivals(self, t: float, dt: float) -> None:
        rate = self._rate_per_s(t) + sum(b.per_min / 60 for b in self.bursts if b.start <= t < b.end)
        while self._next_arrival < t + dt:
            ts = self._next_arrival
            if self.rng.random() < 0.12:  # an agent workflow (n8n) fires a fan of requests at once
                for _ in range(self.rng.randint(4, 14)):
                    self.waiting.append(self._new(ts, 900, 180))
            else:
                short = any(b.start <= ts < b.end for b in self.bursts)
                self.waiting.append(self._new(ts, 300 if short else 700, 60 if short else 260))
            self._next_arrival = ts + self.rng.expovariate(max(rate, 1e-5))
        # Batch clients top their in-flight requests back up to their concurrency.
        d = datetime.fromtimestamp(t, UTC)
        nightly = self.spec.batch_hours is not None and d.weekday() < 5 and \
            self.spec.batch_hours[0] <= d.hour < self.spec.batch_hours[1]
        want = max([s.concurrency for s in self.streams if s.start <= t < s.end] +
                   [self.spec.batch_concurrency if nightly else 0])
        if want:
            inflight = sum(1 for r in list(self.waiting) + self.running if r.gen >= 200)
            big = [s for s in self.streams if s.start <= t < s.end]
            prompt, gen = (big[0].prompt, big[0].gen) if big else (1800, 450)
            for _ in range(max(0, want - inflight)):
                r = self._new(t + self.rng.uniform(0, dt), prompt, gen)
                r.gen = max(r.gen, 200)
                self.waiting.append(r)

    # --- one tick ----------------------------------------------------------------------------------
    def tick(self, t: float, dt: float, up: bool) -> None:
        """Play [t, t+dt): arrivals, admission, decoding, completions; sets `load` for the physics."""
        if not up or self.ready_at is None or t < self.ready_at or self.stuck:
            self.load = Load(0.0)
            if up and self.ready_at is not None and t >= self.ready_at:
                self._next_arrival = max(self._next_arrival, t + dt)  # nobody is asking while it hangs
            return
        self._arrivals(t, dt)
        s = self.spec
        # Admit what fits: a sequence slot and room in the KV cache for its prompt and answer.
        kv = sum(r.prompt + r.gen for r in self.running)
        while self.waiting and len(self.running) < s.max_num_seqs and \
                kv + self.waiting[0].prompt + self.waiting[0].gen <= s.kv_cache_tokens and self.waiting[0].arrived < t + dt:
            r = self.waiting.popleft()
            self.running.append(r)
            kv += r.prompt + r.gen
            self.prompt_tokens_total += r.prompt
            self._window[0] += r.prompt
        n = len(self.running)
        busy = 0.0
        if n:
            per_seq = s.tokens_per_s * n ** 0.8 / n * dt
            finished = []
            longest = 0.0
            for r in self.running:
                step = min(per_seq, r.gen - r.done)
                r.done += step
                longest = max(longest, step / per_seq)
                self.generation_tokens_total += int(step)
                self._window[1] += int(step)
                if r.done >= r.gen:
                    finished.append((t + dt * step / per_seq, r))
            for when, r in finished:
                self.running.remove(r)
                self.log(when, s.container, f'INFO:     {r.client} - "POST /v1/chat/completions HTTP/1.1" 200 OK',
                         False)
            busy = min(1.0, longest + 0.02)
        # Power: a lone decode is memory-bound; a full batch keeps the SMs busy and hits the cap.
        intensity = 0.6 + 0.5 * min(1.0, max(0, n - 1) / 15.0)
        self.load = Load(busy=busy, intensity=intensity, pcie_rx_bps=0.0, pcie_tx_bps=busy * 6e6)
        while self._next_stats <= t + dt:
            ts = self._next_stats
            pt, gt = self._window
            if pt or gt or self.running or self.waiting:  # vLLM only logs while there is work
                self.log(ts, s.container, f"INFO {_vllm_time(ts)} metrics.py:455] Avg prompt throughput: "
                         f"{pt / STATS_EVERY_S:.1f} tokens/s, Avg generation throughput: {gt / STATS_EVERY_S:.1f} "
                         f"tokens/s, Running: {len(self.running)} reqs, Swapped: 0 reqs, Pending: "
                         f"{len(self.waiting)} reqs, GPU KV cache usage: {self.kv_usage() * 100:.1f}%, "
                         "CPU KV cache usage: 0.0%.", False)
            self._window = [0, 0]
            self._next_stats += STATS_EVERY_S
