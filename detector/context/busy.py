"""Busy with nobody asking: a GPU held at high utilisation while every inference server on it is
known to have no request, and no other workload (a training job, a render) is on it to explain the
work. Pure functions over one GPU's step grid; the plugin fetches the inputs.

The score is the length of the current unexplained busy run over `hold`: it passes 1 when the run
has lasted `hold`, whatever the power draw (a hung kernel can spin at any wattage), and drops to 0
at the first step with a request, an idle GPU or a workload that explains it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GpuContext:
    """One GPU over the grid: utilisation, and per step the servers and other workloads on it."""

    util: np.ndarray
    servers: list[frozenset[str]]  # inference servers with memory on the GPU at each step
    others: list[frozenset[str]]  # workloads on it that are no inference server


def unexplained_busy(ctx: GpuContext, activity, busy_utilization: float) -> np.ndarray:
    """Per step: busy, some server on the GPU, all of them known idle, nothing else on it."""
    n = len(ctx.util)
    out = np.zeros(n, bool)
    for i in range(n):
        u = ctx.util[i]
        if not (np.isfinite(u) and u >= busy_utilization) or ctx.others[i] or not ctx.servers[i]:
            continue
        out[i] = all(activity.get(s).known[i] and not activity.get(s).active[i] for s in ctx.servers[i])
    return out


def run_seconds(flags: np.ndarray, step: float) -> np.ndarray:
    """Seconds the current run of True has lasted at each step (0 where False); a run's first step
    counts one step, so `hold / step` steps in a row reach `hold`."""
    out = np.zeros(len(flags))
    run = 0.0
    for i, f in enumerate(flags):
        run = run + step if f else 0.0
        out[i] = run
    return out


def scores(ctx: GpuContext, activity, *, busy_utilization: float, hold: float, step: float) -> np.ndarray:
    return run_seconds(unexplained_busy(ctx, activity, busy_utilization), step) / hold
