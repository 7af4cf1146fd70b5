"""Container state from the Docker Engine API (Docker SDK, low-level client).

`snapshot()` costs one list call plus one inspect per container (restart count, OOM flag and health
only come from inspect), so the collector calls it from a background refresher, never per scrape.
An unreachable daemon raises; the collector counts it and withholds the container metrics.
"""
from __future__ import annotations

import re
from datetime import datetime

from exporter.containers import ContainerState
from rigwatch.redact import redact_text

DEFAULT_DOCKER_URL = "unix:///var/run/docker.sock"


class DockerUnavailable(RuntimeError):
    pass


def parse_docker_time(value: str | None) -> float | None:
    """Docker's RFC 3339 timestamps (nanoseconds, "Z"); "0001-01-01T00:00:00Z" means never started."""
    if not value or value.startswith("0001-01-01"):
        return None
    # Python reads at most microseconds: cut the nanosecond digits before parsing.
    value = re.sub(r"(\.\d{6})\d+", r"\1", value)
    return datetime.fromisoformat(value).timestamp()


def container_state(inspect: dict) -> ContainerState:
    """ContainerState from one `GET /containers/{id}/json` answer."""
    state = inspect.get("State") or {}
    health = (state.get("Health") or {}).get("Status")
    config = inspect.get("Config") or {}
    return ContainerState(
        id=inspect["Id"],
        name=(inspect.get("Name") or "").lstrip("/") or inspect["Id"][:12],
        image=config.get("Image") or inspect.get("Image") or "unknown",
        running=bool(state.get("Running")),
        restart_count=int(inspect.get("RestartCount") or 0),
        started_at=parse_docker_time(state.get("StartedAt")),
        oom_killed=bool(state.get("OOMKilled")),
        health=health if health in ("healthy", "unhealthy", "starting") else None,
    )


class DockerContainerSource:
    """A container source over the Docker API at `base_url` (unix socket or tcp)."""

    def __init__(self, base_url: str = DEFAULT_DOCKER_URL, timeout: float = 3.0):
        self.base_url = base_url
        self.timeout = timeout
        self._client = None

    def _api(self):
        if self._client is None:
            import docker  # the exporter extra; imported here so the sim backend does not need it

            try:
                # "auto" negotiates the API version: newer daemons refuse clients that are too old.
                self._client = docker.APIClient(base_url=self.base_url, version="auto", timeout=self.timeout)
            except docker.errors.DockerException as e:
                raise DockerUnavailable(redact_text(f"Docker API at {self.base_url} unreachable: {e}")) from None
        return self._client

    def snapshot(self) -> list[ContainerState]:
        import docker
        import requests

        api = self._api()
        try:
            listed = api.containers(all=True)
            out = []
            for c in listed:
                try:
                    out.append(container_state(api.inspect_container(c["Id"])))
                except docker.errors.NotFound:
                    continue  # removed between list and inspect
            return out
        except (docker.errors.DockerException, requests.RequestException) as e:
            self.close()
            raise DockerUnavailable(redact_text(f"Docker API at {self.base_url} failed: {e}")) from None

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None
