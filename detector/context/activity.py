"""Request activity per inference server on a step grid: at each step, does a source speak for the
server (`known`), and did it have a request in flight or finish one (`active`)?

Two sources, the metric one first: a series of the requests query for the server (vLLM,
llama.cpp, ComfyUI's queue through the exporter) says both; for a server without request metrics
(Ollama) the count of its request log lines in each step says `active`, and its log stream having
any line within `log_presence` says `known` — a server whose logs are not shipped stays unknown,
never "zero requests".
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from detector.fetch import align_to_grid


@dataclass
class ServerActivity:
    known: np.ndarray  # bool per grid step
    active: np.ndarray  # bool per grid step
    by_logs: np.ndarray | None = None  # bool per grid step: read from request log lines (None: none was)

    def read_in_logs(self, i: int) -> bool:
        """Whether step i's reading came from request log lines (else from request metrics)."""
        return self.by_logs is not None and bool(self.by_logs[i])


@dataclass
class Activity:
    grid: np.ndarray
    servers: dict[str, ServerActivity] = field(default_factory=dict)

    def get(self, server: str) -> ServerActivity:
        a = self.servers.get(server)
        if a is None:
            n = len(self.grid)
            return ServerActivity(np.zeros(n, bool), np.zeros(n, bool))
        return a


def from_metrics(grid: np.ndarray, series: Iterable) -> dict[str, ServerActivity]:
    """`series`: the requests query's answer (promclient.Series, one per `server` label)."""
    out: dict[str, ServerActivity] = {}
    for s in series:
        server = s.labels.get("server")
        if not server:
            continue
        v = align_to_grid(grid, np.asarray(s.t, float), np.asarray(s.y, float))
        known = np.isfinite(v)
        prev = out.get(server)
        active = known & (np.nan_to_num(v) > 0)
        if prev is not None:
            known, active = known | prev.known, active | prev.active
        out[server] = ServerActivity(known, active)
    return out


def from_log_counts(grid: np.ndarray, counts: Iterable, presence: Iterable) -> ServerActivity:
    """`counts`: count_over_time of the server's request lines per step; `presence`: count_over_time
    of its whole log stream over `log_presence` (Loki MetricSeries, any labels: summed)."""
    lines = np.zeros(len(grid))
    for s in counts:
        v = align_to_grid(grid, np.array([p.ts for p in s.samples]), np.array([p.value for p in s.samples]))
        lines += np.nan_to_num(v)
    seen = np.zeros(len(grid))
    for s in presence:
        v = align_to_grid(grid, np.array([p.ts for p in s.samples]), np.array([p.value for p in s.samples]))
        seen += np.nan_to_num(v)
    known = seen > 0
    return ServerActivity(known, known & (lines > 0), by_logs=known)


def merge(grid: np.ndarray, metric: dict[str, ServerActivity], logs: dict[str, ServerActivity]) -> Activity:
    """Per server: the metric reading where it has one, the log reading at the other steps."""
    act = Activity(grid)
    for server in set(metric) | set(logs):
        m, lg = metric.get(server), logs.get(server)
        if m is None:
            act.servers[server] = lg
        elif lg is None:
            act.servers[server] = m
        else:
            known = m.known | lg.known
            active = np.where(m.known, m.active, lg.active)
            act.servers[server] = ServerActivity(known, active, by_logs=~m.known & lg.known)
    return act
