"""The box's Docker containers as the sim plays them; `snapshot()` is the exporter's container source.
`CONTAINERS` are the aibox's; other boxes pass theirs (exporter.sim.boxes)."""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass

from exporter.containers import ContainerState

# name, image, has a healthcheck, uses a GPU
CONTAINERS = (
    ("ollama", "ollama/ollama:0.5.7", False),
    ("open-webui", "ghcr.io/open-webui/open-webui:v0.5.7", True),
    ("comfyui", "yanwk/comfyui-boot:cu124-slim", False),
    ("searxng", "searxng/searxng:2025.1.20-4d4d0ba2e", False),
    ("caddy", "caddy:2.9.1-alpine", False),
    ("postgres", "postgres:16.6-bookworm", True),
    ("redis", "redis:7.4.2-alpine", True),
    ("watchtower", "containrrr/watchtower:1.7.1", False),
)
NAMES = {c[0] for c in CONTAINERS}


@dataclass
class SimContainer:
    id: str
    name: str
    image: str
    healthcheck: bool
    running: bool = True
    restart_count: int = 0
    started_at: float | None = None
    oom_killed: bool = False
    health_since: float = 0.0  # a healthcheck reports "starting" for a while after each start

    def state(self, now: float) -> ContainerState:
        health = None
        if self.healthcheck and self.running:
            health = "starting" if now - (self.started_at or 0) < 30 else "healthy"
        elif self.healthcheck:
            health = "unhealthy"
        return ContainerState(self.id, self.name, self.image, self.running, self.restart_count,
                              self.started_at, self.oom_killed, health)


class SimContainerSource:
    def __init__(self, rng: random.Random, now: float, containers=CONTAINERS):
        self._lock = threading.Lock()
        self.now = now
        self.by_name: dict[str, SimContainer] = {}
        for name, image, hc in containers:
            cid = f"{rng.getrandbits(256):064x}"
            self.by_name[name] = SimContainer(cid, name, image, hc, started_at=now - rng.uniform(3600, 6 * 86400))

    def snapshot(self) -> list[ContainerState]:
        with self._lock:
            return [c.state(self.now) for c in self.by_name.values()]

    def update(self, now: float, fn=None) -> None:
        """Mutate under the lock so a concurrent snapshot sees a consistent set."""
        with self._lock:
            self.now = now
            if fn is not None:
                fn(self.by_name)
