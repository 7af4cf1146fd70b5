"""What the box's inference servers say they are doing: the models they hold (Ollama `GET /api/ps`)
and the work queued on them (ComfyUI `GET /queue`), as plain values the collector turns into the
`inference_*` families.

A *source* is anything with a `server` name and a `poll() -> ServerState`; the HTTP sources here ask
a real server, the simulated box hands the collector sources over its own fake servers that answer
with the same JSON documents, parsed by the same functions. A source never raises for a server that
is down or answers nonsense: it reports `up=False`, so one bad server never hides the others.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class LoadedModel:
    """One model an inference server holds in memory."""

    name: str
    size_bytes: int  # weights + KV cache, wherever they sit
    vram_bytes: int  # the part in GPU memory; < size_bytes means the model spilled to CPU
    expires_at: float | None = None  # epoch seconds when the server unloads it if unused; None: never/unknown
    context_length: int | None = None


@dataclass(frozen=True)
class ServerState:
    """One poll of one server. `requests_running` / `requests_waiting` are None where the server does
    not say (Ollama has no such endpoint): unknown, never zero."""

    server: str
    up: bool
    models: tuple[LoadedModel, ...] = field(default_factory=tuple)
    requests_running: int | None = None
    requests_waiting: int | None = None


def parse_rfc3339(text: str) -> float | None:
    """Ollama's `expires_at` (Go's RFC3339Nano: nanoseconds, `Z` or an offset) -> epoch seconds.
    Go's zero time ("0001-01-01T00:00:00Z") and anything unparsable -> None."""
    if not isinstance(text, str) or not text or text.startswith("0001-01-01"):
        return None
    s = text.strip()
    if s[-1:] in ("Z", "z"):
        s = s[:-1] + "+00:00"
    # Python's fromisoformat takes at most 6 fractional digits; Go writes up to 9.
    if "." in s:
        head, _, rest = s.partition(".")
        digits = len(rest) - len(rest.lstrip("0123456789"))
        s = f"{head}.{rest[:min(digits, 6)]}{rest[digits:]}" if digits else head + rest
    try:
        d = datetime.fromisoformat(s)
    except ValueError:
        return None
    if d.tzinfo is None:
        return None
    return d.timestamp()


def parse_ollama_ps(doc: object) -> tuple[LoadedModel, ...]:
    """Ollama `GET /api/ps` -> the loaded models. Raises ValueError on a document of the wrong shape."""
    if not isinstance(doc, dict) or not isinstance(doc.get("models", []), list):
        raise ValueError("not an Ollama /api/ps answer: expected {\"models\": [...]}")
    out = []
    for m in doc.get("models") or []:
        if not isinstance(m, dict):
            raise ValueError("not an Ollama /api/ps answer: a model entry is not an object")
        name = m.get("name") or m.get("model")
        size = m.get("size")
        if not isinstance(name, str) or not isinstance(size, int | float):
            raise ValueError("not an Ollama /api/ps answer: a model lacks name or size")
        vram = m.get("size_vram", size)
        ctx = m.get("context_length")
        out.append(LoadedModel(name=name, size_bytes=int(size),
                               vram_bytes=int(vram) if isinstance(vram, int | float) else int(size),
                               expires_at=parse_rfc3339(m.get("expires_at", "")),
                               context_length=int(ctx) if isinstance(ctx, int) and ctx > 0 else None))
    return tuple(out)


def parse_comfyui_queue(doc: object) -> tuple[int, int]:
    """ComfyUI `GET /queue` -> (running, pending) prompt counts. Raises ValueError on the wrong shape."""
    if not isinstance(doc, dict):
        raise ValueError("not a ComfyUI /queue answer: expected an object")
    running, pending = doc.get("queue_running", []), doc.get("queue_pending", [])
    if not isinstance(running, list) or not isinstance(pending, list):
        raise ValueError("not a ComfyUI /queue answer: queue_running/queue_pending are not lists")
    return len(running), len(pending)


def ollama_state(server: str, doc: object) -> ServerState:
    """An answer of Ollama's `GET /api/ps` as the state of an up server (ValueError: wrong shape)."""
    return ServerState(server, up=True, models=parse_ollama_ps(doc))


def comfyui_state(server: str, doc: object) -> ServerState:
    """An answer of ComfyUI's `GET /queue` as the state of an up server (ValueError: wrong shape)."""
    running, pending = parse_comfyui_queue(doc)
    return ServerState(server, up=True, requests_running=running, requests_waiting=pending)
