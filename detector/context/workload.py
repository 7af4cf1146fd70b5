"""What the GPUs hold: model loads and unloads per GPU as context events, and the workload an incident's
GPU was running. Pure functions over series already fetched (plugin.py fetches them).

A model has no GPU label (`inference_model_vram_bytes{server,model}`): it is on the GPUs where its
server's workload (`gpu_workload_memory_used_bytes{workload}`, recognised as that server by
`inference.servers`) holds memory. An Ollama spread over two cards holds its models on both; when the
server's memory moved on only some of its cards at the change, the change is placed on those.

A change is read only while the server reports on both sides of it (`inference_server_up` 1 at the
step before and the step of the change): an exporter or server that stops answering makes every
model series vanish, which is an outage, not an unload.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from detector.context.events import ContextEvent, host_of
from detector.fetch import align_to_grid
from detector.timefmt import iso

KIND = "model_change"
# A loaded model whose VRAM moves this much (a reload with another context length, a spill to CPU) is
# changed; smaller moves are its KV cache or allocator breathing. The same floor as a workload that
# explains a busy GPU (plugin.EXPLAINS_MIN_BYTES): below it, memory explains nothing.
CHANGE_MIN_BYTES = 512 * 1024**2
# the memory of a server's workload is looked at this many steps around a change to find the card it
# moved on (the exporter's workload memory and its model list are polled on different threads)
MOVE_STEPS = 2


@dataclass(frozen=True)
class ModelChange:
    t: float  # the first step the new state is seen at
    instance: str
    uuid: str
    gpu: str
    gpu_name: str
    server: str
    model: str
    action: str  # "loaded", "unloaded", "resized"
    vram_bytes: float  # after (before, for an unload)

    def key(self) -> tuple:
        return (self.t, self.instance, self.uuid, self.server, self.model, self.action)


def _series(s) -> tuple[dict[str, str], np.ndarray, np.ndarray]:
    return s.labels, np.asarray(s.t, float), np.asarray(s.y, float)


def server_kind(name: str, server_for: Callable) -> str:
    """The configured kind a `server` label or workload name is (ollama, vllm, ...), else itself."""
    spec = server_for(name)
    return spec.name if spec is not None else name


def model_changes(grid: np.ndarray, models: Sequence, up: Sequence, workloads: Sequence,
                  server_for: Callable) -> list[ModelChange]:
    """Loads, unloads and big VRAM moves of every model over `grid` (the first step only gives the
    state before), each placed on the GPUs of its server. `models`: inference_model_vram_bytes,
    `up`: inference_server_up, `workloads`: gpu_workload_memory_used_bytes (promclient Series)."""
    n = len(grid)
    if n < 2:
        return []
    answering: dict[tuple[str, str], np.ndarray] = {}
    for s in up:
        labels, t, y = _series(s)
        v = align_to_grid(grid, t, y)
        key = (labels.get("instance", ""), labels.get("server", ""))
        answering[key] = answering.get(key, np.zeros(n, bool)) | (v == 1)
    # per (instance, server kind): the GPUs its workloads hold memory on, with that memory
    cards: dict[tuple[str, str], dict[str, tuple[dict[str, str], np.ndarray]]] = {}
    for s in workloads:
        labels, t, y = _series(s)
        spec = server_for(labels.get("workload", ""))
        if spec is None:
            continue
        per = cards.setdefault((labels.get("instance", ""), spec.name), {})
        uuid = labels.get("uuid") or labels.get("gpu", "")
        v = np.nan_to_num(align_to_grid(grid, t, y), nan=0.0)
        old = per.get(uuid)
        per[uuid] = (labels, v if old is None else old[1] + v)  # two processes of one server: their sum
    out: list[ModelChange] = []
    for s in models:
        labels, t, y = _series(s)
        instance, server, model = labels.get("instance", ""), labels.get("server", ""), labels.get("model", "")
        v = align_to_grid(grid, t, y)
        ok = answering.get((instance, server), np.zeros(n, bool))
        held = cards.get((instance, server_kind(server, server_for)), {})
        for i in range(1, n):
            if not (ok[i - 1] and ok[i]):
                continue
            before, after = v[i - 1], v[i]
            if np.isnan(before) and not np.isnan(after):
                action, size = "loaded", after
            elif not np.isnan(before) and np.isnan(after):
                action, size = "unloaded", before
            elif not np.isnan(before) and abs(after - before) >= CHANGE_MIN_BYTES:
                action, size = "resized", after
            else:
                continue
            for gpu_labels in _placed(held, i):
                out.append(ModelChange(float(grid[i]), instance, gpu_labels.get("uuid", ""),
                                       gpu_labels.get("gpu", ""), gpu_labels.get("name", ""), server, model,
                                       action, float(size)))
    return sorted(out, key=lambda c: (c.t, c.uuid, c.server, c.model))


def _placed(held: dict[str, tuple[dict[str, str], np.ndarray]], i: int) -> list[dict[str, str]]:
    """The cards a change at step i lands on: those where the server holds memory around it, narrowed
    to those where that memory moved by CHANGE_MIN_BYTES when any did."""
    around = slice(max(0, i - MOVE_STEPS), i + MOVE_STEPS + 1)
    holding, moved = [], []
    for labels, v in held.values():
        w = v[around]
        if (w > 0).any():
            holding.append(labels)
            if w.max() - w.min() >= CHANGE_MIN_BYTES:
                moved.append(labels)
    return moved or holding


def change_events(changes: Iterable[ModelChange], *, step: float, settle: float,
                  explains: frozenset[str]) -> list[ContextEvent]:
    """One `model_change` event per GPU and run of changes: changes on one card closer than `settle`
    are one event (a swap is an unload and a load; a burst of swaps one stretch of churn), its window
    from a step before the first to `settle` after the last — the time a load's heat, VRAM and clocks
    take to settle. Incidents wholly inside it are a model changing, not a fault."""
    by_gpu: dict[tuple[str, str], list[ModelChange]] = {}
    for c in sorted(changes, key=lambda c: c.t):
        by_gpu.setdefault((c.instance, c.uuid), []).append(c)
    out = []
    for (instance, uuid), cs in by_gpu.items():
        run = [cs[0]]
        for c in cs[1:]:
            if c.t - run[-1].t > settle:
                out.append(_event(instance, uuid, run, step, settle, explains))
                run = []
            run.append(c)
        out.append(_event(instance, uuid, run, step, settle, explains))
    return sorted(out, key=lambda e: (e.start, e.scope.get("uuid", "")))


def _event(instance: str, uuid: str, run: list[ModelChange], step: float, settle: float,
           explains: frozenset[str]) -> ContextEvent:
    first = run[0]
    # "ollama unloaded gemma2:9b and loaded phi4:14b, qwen2.5:32b": per server, per action, in order
    by_server: dict[str, dict[str, list[str]]] = {}
    for c in run:
        names = by_server.setdefault(c.server, {}).setdefault(c.action, [])
        name = c.model + (f" ({c.vram_bytes / 1024**3:.1f} GiB)" if c.action == "resized" else "")
        if name not in names:
            names.append(name)
    what = "; ".join(f"{server} " + " and ".join(f"{action} {', '.join(names)}" for action, names in acts.items())
                     for server, acts in by_server.items())
    where = f"GPU {first.gpu}" + (f" ({first.gpu_name})" if first.gpu_name else "")
    scope = {"uuid": uuid}
    if instance:
        scope["host"] = host_of(instance)
    details = {"instance": instance, "gpu": first.gpu, "uuid": uuid,
               "changes": [{"at": iso(c.t), "server": c.server, "model": c.model, "action": c.action,
                            "vram_bytes": c.vram_bytes} for c in run]}
    return ContextEvent(KIND, run[0].t - step, run[-1].t + settle, f"{what} on {where}", scope, explains, details, quiet=True)


# -- what an incident's GPU was running ---------------------------------------------------------------
def gpu_workloads(uuid: str, workloads: Sequence, models: Sequence, requests: Sequence, server_for: Callable,
                  *, min_bytes: float, instance: str | None = None) -> list[dict]:
    """The workloads holding memory on GPU `uuid` at one instant (instant-query Series): every
    inference server whatever it holds (its models, its running requests, None where unknown), other
    workloads from `min_bytes` (a desktop session's few hundred MiB is no workload); biggest first."""
    held: dict[str, list[str]] = {}
    for s in models:
        if instance is not None and s.labels.get("instance") not in (None, instance):
            continue
        kind = server_kind(s.labels.get("server", ""), server_for)
        model = s.labels.get("model")
        if model and model not in held.setdefault(kind, []):
            held[kind].append(model)
    running = {s.labels.get("server", ""): float(s.y[-1]) for s in requests if len(s.y) and np.isfinite(s.y[-1])}
    out = []
    for s in workloads:
        if (s.labels.get("uuid") or s.labels.get("gpu")) != uuid or not len(s.y) or not np.isfinite(s.y[-1]):
            continue
        name, used = s.labels.get("workload", ""), float(s.y[-1])
        spec = server_for(name)
        if spec is None and used < min_bytes:
            continue
        n = running.get(spec.name) if spec is not None else None
        out.append({"workload": name, "server": spec.name if spec is not None else None, "memory_bytes": used,
                    "models": sorted(held.get(spec.name, [])) if spec is not None else [],
                    "requests": None if n is None else int(round(n))})
    return sorted(out, key=lambda w: (-w["memory_bytes"], w["workload"]))


def describe(workloads: list[dict], changes: int | None) -> str:
    """The clause appended to an incident's summary: "on the GPU: vllm serving Qwen2.5-7B (3 requests),
    no model change during it"."""
    parts = []
    for w in workloads:
        name = w["workload"] if w["server"] in (None, w["workload"]) else f"{w['workload']} ({w['server']})"
        if w["server"] is None:
            parts.append(f"{name} ({w['memory_bytes'] / 1024**3:.1f} GiB)")
            continue
        held = f" serving {', '.join(w['models'][:3])}" if w["models"] else ""
        n = w["requests"]
        busy = "" if n is None else f" ({n} request{'' if n == 1 else 's'})" if n else " (no requests)"
        parts.append(f"{name}{held}{busy}")
    text = "on the GPU: " + (", ".join(parts) if parts else "no workload")
    if changes is not None:
        text += (", no model change during it" if changes == 0 else
                 f", {changes} model change{'' if changes == 1 else 's'} during it")
    return text
