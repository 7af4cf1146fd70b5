"""The boxes the sim can play (`--box NAME`): cards, containers, the inference servers and their model
catalog, the owner's daily rhythm and the packaged default schedule.

`aibox` is the original box (RTX 3090 + RTX 3060, Ollama on both, ComfyUI on the 3060, Open-WebUI) and
plays exactly as before. `studio` is a different home lab on purpose — other cards, other container
names, vLLM beside Ollama, a night-owl rhythm with weekday batch jobs, busier logs — so nothing in the
detector can lean on one box's names or habits.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .containers import CONTAINERS as AIBOX_CONTAINERS
from .model import DEFAULT_SPECS, GIB, GPUSpec
from .workload import CATALOG as AIBOX_CATALOG
from .workload import SESSIONS_PER_HOUR as AIBOX_SESSIONS
from .workload import ModelSpec


@dataclass(frozen=True)
class VllmSpec:
    """One vLLM OpenAI-compatible server holding one model on one GPU for as long as it runs."""

    gpu: int
    container: str
    model: str  # the served model name: vLLM's `model_name` label
    gpu_memory_utilization: float  # vLLM preallocates this share of the card at start (weights + KV cache)
    max_num_seqs: int  # sequences decoded together (continuous batching)
    kv_cache_tokens: int  # what fits in the preallocated KV cache
    tokens_per_s: float  # decode speed of one sequence alone; a batch shares roughly n**0.8 of it
    requests_per_hour: tuple[float, ...]  # interactive API requests by UTC hour
    batch_hours: tuple[int, int] | None  # weekday nightly batch window [from, to) in UTC hours
    batch_concurrency: int = 8
    load_seconds: float = 45.0  # from container start to "Application startup complete"


@dataclass(frozen=True)
class BoxProfile:
    name: str
    hostname: str
    specs: tuple[GPUSpec, ...]
    containers: tuple[tuple[str, str, bool], ...]  # name, image, has a healthcheck
    catalog: dict[str, ModelSpec]  # the Ollama models (each pinned to a GPU)
    sessions_per_hour: tuple[float, ...]  # Ollama chat sessions started per UTC hour
    usual_models: dict[int, str]  # GPU -> the Ollama model an incident keeps resident there
    embed_model: str  # what the chat front end embeds documents with
    frontend: str  # the chat front-end container (logs a line per answered chat)
    frontend_line: str  # may hold {ts}: the line's timestamp
    schedule_file: str  # the packaged ~7-day default schedule, next to this module
    boot_containers: tuple[str, ...]  # containers whose start-up lines a boot prints
    comfy_gpu: int | None = None  # the GPU ComfyUI renders on (None: no ComfyUI)
    keep_alive_s: float = 300.0  # OLLAMA_KEEP_ALIVE
    # An Ollama model the box holds at the first scrape (someone used it just before the sim starts)
    # and when its keep-alive runs out, seconds after the start (a range drawn from the inference stream).
    warm_model: str | None = None
    warm_expiry_s: tuple[float, float] = (20.0, 50.0)
    vllm: VllmSpec | None = None

    @property
    def container_names(self) -> set[str]:
        return {c[0] for c in self.containers}

    @property
    def ollama_gpus(self) -> set[int]:
        return {m.gpu for m in self.catalog.values()}

    def default_schedule(self) -> Path:
        return Path(__file__).with_name(self.schedule_file)


AIBOX = BoxProfile(
    name="aibox", hostname="aibox", specs=DEFAULT_SPECS, containers=AIBOX_CONTAINERS, catalog=AIBOX_CATALOG,
    sessions_per_hour=AIBOX_SESSIONS, usual_models={0: "llama3.1:8b", 1: "qwen2.5-coder:7b"},
    embed_model="nomic-embed-text", frontend="open-webui",
    frontend_line='INFO:     192.168.1.20:0 - "POST /api/chat/completions HTTP/1.1" 200 OK',
    schedule_file="default_schedule.yml", boot_containers=("ollama", "open-webui", "postgres", "redis"),
    comfy_gpu=1,
    # The embedding model Open-WebUI used a moment ago, on the 3060. Small (the card stays under the
    # 2 GiB where a resident model costs power) and gone before the first chat can arrive (>= 60 s),
    # so no old signal but that GPU's memory in the first scrapes moves: see SimBox._warm_start.
    warm_model="nomic-embed-text", warm_expiry_s=(20.0, 50.0),
)

RTX_4090 = GPUSpec(
    name="NVIDIA GeForce RTX 4090", uuid="GPU-9a3e71c2-4b5d-8f60-a1c7-2d9e0b4f6a13",
    pci_bus_id="00000000:01:00.0", memory_total=24 * GIB, power_limit_w=450.0, idle_power_w=27.0,
    full_load_power_w=440.0, boost_mhz=2520, max_clock_mhz=3120, mem_clock_p2_mhz=10251,
    max_mem_clock_mhz=10501, fans=2, report_rpm=False, max_rpm=3000, r0=0.092, tau_s=110.0,
    vbios="95.02.3c.00.8e", pcie_gen=4)

RTX_A4000 = GPUSpec(
    # A single-slot blower card: one fan, runs hot, nothing else moves air over it.
    name="NVIDIA RTX A4000", uuid="GPU-3c8f5e20-71a4-d9b6-0e52-6f1a8c7d2b94",
    pci_bus_id="00000000:41:00.0", memory_total=16 * GIB, power_limit_w=140.0, idle_power_w=9.0,
    full_load_power_w=134.0, boost_mhz=1560, max_clock_mhz=1920, mem_clock_p2_mhz=6801,
    max_mem_clock_mhz=7001, fans=1, report_rpm=True, max_rpm=4200, r0=0.40, tau_s=75.0,
    vbios="94.04.5b.00.04", pcie_gen=4)

STUDIO_CONTAINERS = (
    ("vllm", "vllm/vllm-openai:v0.6.6.post1", False),
    ("ollama", "ollama/ollama:0.6.2", False),
    ("librechat", "ghcr.io/danny-avila/librechat:v0.7.6", False),
    ("mongodb", "mongo:7.0.16", True),
    ("meilisearch", "getmeili/meilisearch:v1.12.3", False),
    ("qdrant", "qdrant/qdrant:v1.13.2", False),
    ("n8n", "n8nio/n8n:1.76.1", True),
    ("traefik", "traefik:v3.3.2", False),
)

# Ollama on the 16 GiB A4000: two of these rarely fit together, so asking for another model swaps.
STUDIO_CATALOG = {
    m.name: m for m in (
        ModelSpec("llama3.1:8b", int(6.3 * GIB), 1, 52, 0.26),
        ModelSpec("gemma2:9b", int(7.4 * GIB), 1, 44, 0.18),
        ModelSpec("mistral-nemo:12b", int(8.9 * GIB), 1, 36, 0.18, 0.88),
        ModelSpec("qwen2.5-coder:14b", int(10.2 * GIB), 1, 29, 0.22, 0.9),
        ModelSpec("phi4:14b", int(10.5 * GIB), 1, 28, 0.16, 0.9),
        ModelSpec("bge-m3", int(1.2 * GIB), 1, 3000, 0.0, 0.7),
        # Never asked for in the daily rhythm: the big_model_load look-alike pulls it, to ~94 % VRAM.
        ModelSpec("qwen2.5:32b-instruct-q3_K_S", int(14.8 * GIB), 1, 14, 0.0, 0.97),
    )
}

# A night owl: little before noon UTC, busiest from 20:00 to 02:00.
STUDIO_SESSIONS = (3.6, 3.0, 2.0, 1.0, 0.4, 0.2, 0.1, 0.1, 0.1, 0.2, 0.4, 0.8,
                   1.2, 1.4, 1.6, 1.8, 2.0, 2.2, 2.6, 3.2, 4.2, 4.8, 4.6, 4.2)
# API requests to vLLM per hour (LibreChat users, n8n automations); bursts come on top.
STUDIO_VLLM_RATE = (120, 90, 50, 20, 10, 8, 6, 6, 10, 20, 40, 60,
                    70, 80, 90, 90, 100, 110, 130, 160, 200, 220, 200, 160)

STUDIO = BoxProfile(
    name="studio", hostname="studio", specs=(RTX_4090, RTX_A4000), containers=STUDIO_CONTAINERS,
    catalog=STUDIO_CATALOG, sessions_per_hour=STUDIO_SESSIONS, usual_models={1: "llama3.1:8b"},
    embed_model="bge-m3", frontend="librechat",
    frontend_line="{ts} info: [AskController] Response sent to the client",
    schedule_file="studio_schedule.yml", boot_containers=("vllm", "ollama", "librechat", "mongodb"),
    comfy_gpu=None, keep_alive_s=120.0, warm_model="llama3.1:8b", warm_expiry_s=(60.0, 110.0),
    vllm=VllmSpec(gpu=0, container="vllm", model="Qwen/Qwen2.5-14B-Instruct-AWQ", gpu_memory_utilization=0.90,
                  max_num_seqs=32, kv_cache_tokens=54000, tokens_per_s=62.0,
                  requests_per_hour=STUDIO_VLLM_RATE, batch_hours=(1, 3), batch_concurrency=8),
)

BOXES: dict[str, BoxProfile] = {b.name: b for b in (AIBOX, STUDIO)}
DEFAULT_BOX = "aibox"


def get_box(name: str | BoxProfile) -> BoxProfile:
    """A profile by name; an unknown name is a KeyError listing the known boxes."""
    if isinstance(name, BoxProfile):
        return name
    try:
        return BOXES[name]
    except KeyError:
        raise KeyError(f"unknown box {name!r}; known: {', '.join(sorted(BOXES))}") from None
