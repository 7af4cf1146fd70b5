"""Which workload a GPU process belongs to, from /proc/<pid>/cgroup: a container, a systemd unit
or, failing both, the process name.

The cgroup path names a container in every common layout:
- cgroup v1 cgroupfs driver:   `4:memory:/docker/<64 hex>`
- systemd driver (v1 or v2):   `0::/system.slice/docker-<64 hex>.scope`
- containerd / CRI-O / podman: `.../cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`,
  `/kubepods/burstable/pod<uid>/<id>`
- the exporter itself in a container with a private cgroup namespace sees host paths relative to
  its own cgroup: `0::/../../system.slice/docker-<id>.scope`.
A 64-hex path component is required: shorter ids such as the H100 `0::/process_api/<32 hex>` are
not containers.
"""
from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from exporter.read_errors import ReadErrors

_CONTAINER_COMPONENT = re.compile(r"^(?:docker-|cri-containerd-|crio-|libpod-)?([0-9a-f]{64})(?:\.scope)?$")
_USER_MANAGER = re.compile(r"^user@\d+\.service$")

CONTAINER, SYSTEMD_UNIT, PROCESS = "container", "systemd_unit", "process"


@dataclass(frozen=True)
class Owner:
    """Where a PID lives. `key` is the full container id, the unit name or the process name."""

    kind: str
    key: str


def parse_cgroup(text: str) -> Owner | None:
    """Owner named by a /proc/<pid>/cgroup text (container or systemd unit), else None."""
    paths: list[tuple[int, str]] = []  # (preference for the unit, path)
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        # The unified (v2) line and v1's name=systemd line carry the systemd unit layout.
        rank = 0 if hierarchy == "0" and controllers == "" else 1 if controllers == "name=systemd" else 2
        paths.append((rank, path))
    for _, path in paths:
        for component in reversed(path.split("/")):
            m = _CONTAINER_COMPONENT.match(component)
            if m:
                return Owner(CONTAINER, m.group(1))
    for _, path in sorted(paths, key=lambda p: p[0]):
        components = [c for c in path.split("/") if c and c != ".."]
        services = [i for i, c in enumerate(components) if c.endswith(".service")]
        if not services:
            continue
        unit = components[services[-1]]
        # Apps under a user's systemd manager are desktop processes, not a service of their own.
        if _USER_MANAGER.match(unit) and services[-1] != len(components) - 1:
            continue
        return Owner(SYSTEMD_UNIT, unit)
    return None


class Attributor:
    """PID -> Owner, cached. PIDs that leave the GPU are forgotten (`retain`); `refresh` looks them all up
    again (the container refresher calls it, so a reused PID is looked at again)."""

    def __init__(self, proc_root: str | os.PathLike = "/proc", errors: ReadErrors | None = None):
        self.proc_root = Path(proc_root)
        self.errors = errors or ReadErrors()
        self._cache: dict[int, Owner] = {}
        self._lock = threading.Lock()

    def owner(self, pid: int) -> Owner:
        cached = self._cache.get(pid)
        if cached is not None:
            return cached
        owner = self._lookup(pid)
        with self._lock:
            self._cache[pid] = owner
        return owner

    def _lookup(self, pid: int) -> Owner:
        base = self.proc_root / str(pid)
        try:
            found = parse_cgroup((base / "cgroup").read_text())
            if found is not None:
                return found
        except FileNotFoundError:
            pass  # exited, or in a PID namespace we cannot see (exporter without pid: host)
        except OSError:
            self.errors.inc("proc_cgroup")
        try:
            comm = (base / "comm").read_text().strip()
        except FileNotFoundError:
            comm = ""
        except OSError:
            self.errors.inc("proc_comm")
            comm = ""
        return Owner(PROCESS, comm or "unknown")

    def retain(self, pids: set[int]) -> None:
        with self._lock:
            for pid in [p for p in self._cache if p not in pids]:
                del self._cache[pid]

    def refresh(self) -> None:
        """Look every cached PID up again (off the scrape path), so a reused PID is not misnamed."""
        fresh = {pid: self._lookup(pid) for pid in list(self._cache)}
        with self._lock:
            self._cache = fresh

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
