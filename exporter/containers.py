"""Container state as the exporter sees it, independent of where it came from (Docker API or sim)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ContainerState:
    id: str  # full 64-hex container id
    name: str  # without the leading "/"
    image: str  # image reference as configured, e.g. "ollama/ollama:0.5.7"
    running: bool
    restart_count: int  # Docker's RestartCount (restarts by the restart policy)
    started_at: float | None  # epoch seconds of the last start, None if never started
    oom_killed: bool
    health: str | None  # "healthy" | "unhealthy" | "starting", None without a healthcheck
