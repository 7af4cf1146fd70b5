"""The inference servers' own answers, built from the simulated workload: Ollama's `GET /api/ps` and
ComfyUI's `GET /queue` as the JSON documents those servers send, and the *sources* over them that the
collector polls. The sources parse the documents with the exporter's own parsers (exporter.inference),
so the sim exercises the same path as a real server; the documents can also be served over real HTTP.
"""
from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from exporter.inference import ServerState

from .workload import Job, Resident

_FAMILY = {"llama3": "llama", "mistral": "llama", "qwen2.5": "qwen2", "qwen2.5-coder": "qwen2", "gemma2": "gemma2",
           "nomic-embed-text": "nomic-bert", "bge-m3": "bert", "phi4": "phi3", "mistral-nemo": "llama"}
_PARAMS = {"nomic-embed-text": "137M", "bge-m3": "567M"}
CONTEXT_LENGTH = 8192  # the runners are started with --ctx-size 8192 (see Workload.ensure_loaded)


def go_rfc3339nano(t: float) -> str:
    """Go's time.RFC3339Nano in UTC: fractional seconds with trailing zeros dropped (none if whole)."""
    us = int(round(t * 1_000_000))
    sec, frac = divmod(us, 1_000_000)
    base = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{frac * 1000:09d}".rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


def _details(name: str) -> dict:
    base, _, tag = name.partition(":")
    family = next((f for prefix, f in sorted(_FAMILY.items(), key=lambda kv: -len(kv[0]))
                   if base.startswith(prefix)), base)
    size = _PARAMS.get(base)
    if size is None:
        num = tag.split("-")[0].rstrip("bB")
        size = f"{float(num):.1f}B" if num.replace(".", "", 1).isdigit() else "unknown"
    quant = "F16" if base in _PARAMS else ("Q3_K_S" if "q3_K_S" in tag else "Q4_K_M")
    return {"parent_model": "", "format": "gguf", "family": family, "families": [family],
            "parameter_size": size, "quantization_level": quant}


def ollama_ps_document(residents: list[Resident], keep_alive_s: float) -> dict:
    """Ollama `GET /api/ps` for the given resident runners. `size` is what Ollama estimated at load
    (weights + KV cache): a leak inside the runner does not show here, only in NVML's process memory.
    Ollama lists the model expiring last first."""
    models = []
    for r in sorted(residents, key=lambda r: (-(r.last_used + keep_alive_s), r.model.name)):
        name = r.model.name
        models.append({
            "name": name, "model": name, "size": r.model.size,
            "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": _details(name),
            "expires_at": go_rfc3339nano(r.last_used + keep_alive_s),
            "size_vram": r.model.size,  # the sim never offloads layers to the CPU
            "context_length": CONTEXT_LENGTH,
        })
    return {"models": models}


def comfyui_queue_document(running: list[Job], pending: list[Job], seed: int) -> dict:
    """ComfyUI `GET /queue`: entries are [number, prompt_id, prompt, extra_data, outputs_to_execute]."""
    def entry(n: int, j: Job) -> list:
        pid = str(uuid.UUID(bytes=hashlib.sha256(f"{seed}:{j.start!r}".encode()).digest()[:16], version=4))
        return [n, pid, {"3": {"class_type": "KSampler", "inputs": {"steps": 28, "cfg": 6.5}}},
                {"client_id": "rigwatch-sim"}, ["9"]]
    jobs = sorted(running, key=lambda j: j.start) + sorted(pending, key=lambda j: j.start)
    items = [entry(n, j) for n, j in enumerate(jobs)]
    return {"queue_running": items[:len(running)], "queue_pending": items[len(running):]}


class SimSource:
    """One of the box's servers as an inference source: its document (None while the server is down)
    read by the same function as a real server's answer, so a wrong shape is down, as it is there."""

    def __init__(self, server: str, document: Callable[[], dict | None],
                 state: Callable[[str, object], ServerState]):
        self.server = server
        self.document = document
        self.state = state

    def poll(self) -> ServerState:
        doc = self.document()
        if doc is None:
            return ServerState(self.server, up=False)
        try:
            return self.state(self.server, doc)
        except ValueError:
            return ServerState(self.server, up=False)
