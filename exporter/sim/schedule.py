"""The incident schedule: which faults (and which harmless look-alikes) the simulated box plays, when.

A schedule is YAML:

    incidents:
      - kind: fan_failure
        at: 2d5h          # offset from the simulation start
        duration: 45m
        gpu: 0
      - kind: container_restart_loop
        at: 3d20h30m
        duration: 20m
        container: open-webui

Validation is strict and every error names the key it is about (``incidents[1].duration: ...``),
because a typo in a test schedule would otherwise silently play nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rigwatch import durations


class ScheduleError(ValueError):
    """A schedule that cannot be played; the message starts with the offending key."""


def parse_duration(text: Any, key: str = "duration") -> float:
    """'2d5h30m', '45m', '90s', '500ms', '1w' or a bare number of seconds (rigwatch.durations) -> seconds
    (not negative: an offset of 0 is the start)."""
    try:
        seconds = durations.parse_duration(text)
    except ValueError as e:
        raise ScheduleError(f"{key}: {e}") from None
    if seconds < 0:
        raise ScheduleError(f"{key}: must not be negative, got {text!r}")
    return seconds


@dataclass(frozen=True)
class KindSpec:
    benign: bool
    target: str  # "gpu", "container" or "" (whole box)
    default_duration: float
    params: dict[str, tuple[type, Any]] = field(default_factory=dict)  # name -> (type, default)
    fixed_labels: dict[str, str] = field(default_factory=dict)


# Every kind the simulation knows, with the knobs a schedule may set.
KINDS: dict[str, KindSpec] = {
    "fan_failure": KindSpec(False, "gpu", 2700, {"fans": (list, None)}),
    "degraded_cooling": KindSpec(False, "gpu", 4 * 3600, {"factor": (float, 1.8), "ramp": (str, "5m")}),
    "vram_leak": KindSpec(False, "gpu", 3600, {"rate_gib_per_hour": (float, 6.0)}),
    "power_brake": KindSpec(False, "gpu", 1800),
    "hw_slowdown": KindSpec(False, "gpu", 1800),
    "gpu_stuck": KindSpec(False, "gpu", 3600),
    "gpu_lost": KindSpec(False, "gpu", 3600),
    "container_restart_loop": KindSpec(False, "container", 1800, {"period": (str, "45s")}),
    "planned_reboot": KindSpec(True, "", 180),
    "big_model_load": KindSpec(True, "gpu", 1800, {"model": (str, "gemma2:27b")}),
    "full_power_hours": KindSpec(True, "gpu", 3 * 3600),
    "ssh_scanner_noise": KindSpec(True, "", 1800, {"attempts": (int, 4)}, {"unit": "ssh.service"}),
    "unit_failure_at_boot": KindSpec(True, "", 150, {"unit": (str, "systemd-networkd-wait-online.service")}),
    # A long vLLM batch job: `concurrency` requests kept in flight, the card at its power cap, answers
    # streaming out the whole time.
    "batch_at_power_cap": KindSpec(True, "gpu", 3 * 3600, {"concurrency": (int, 24)}),
    # Someone asks Ollama for one model after another (about one new model `every`): loads, evictions.
    "model_swaps": KindSpec(True, "gpu", 3600, {"every": (str, "2m")}),
    # A burst of many short requests: a busy request log, nothing wrong.
    "busy_request_log": KindSpec(True, "gpu", 1800, {"rate_per_min": (float, 40.0)}),
}

_COMMON_KEYS = {"kind", "at", "duration", "gpu", "container"}


@dataclass(frozen=True)
class Incident:
    kind: str
    at: float  # seconds after the simulation start
    duration: float
    gpu: int | None = None
    container: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def end(self) -> float:
        return self.at + self.duration

    @property
    def benign(self) -> bool:
        return KINDS[self.kind].benign

    def labels(self) -> dict[str, str]:
        """The labels a detector should attach to this incident (as strings, like Prometheus labels)."""
        out = dict(KINDS[self.kind].fixed_labels)
        if self.gpu is not None:
            out["gpu"] = str(self.gpu)
        if self.container is not None:
            out["container"] = self.container
        if self.kind == "unit_failure_at_boot":
            out["unit"] = self.params["unit"]
        return out

    def active(self, t_rel: float) -> bool:
        return self.at <= t_rel < self.end


def parse_schedule(data: Any, n_gpus: int = 2, containers: set[str] | None = None,
                   gpus_for_kind: dict[str, tuple[set[int], str]] | None = None,
                   models: set[str] | None = None) -> list[Incident]:
    """Validate a loaded YAML document and return incidents sorted by start. `gpus_for_kind` narrows
    the GPUs a kind may target on this box (kind -> (GPUs, what they have, for the message));
    `models` are the models a big_model_load may name."""
    if data is None:
        return []
    if not isinstance(data, dict):
        raise ScheduleError("schedule: expected a mapping with an 'incidents' list")
    unknown = set(data) - {"incidents"}
    if unknown:
        raise ScheduleError(f"{sorted(unknown)[0]}: unknown top-level key (expected 'incidents')")
    items = data.get("incidents") or []
    if not isinstance(items, list):
        raise ScheduleError("incidents: expected a list")
    out = []
    for i, item in enumerate(items):
        where = f"incidents[{i}]"
        if not isinstance(item, dict):
            raise ScheduleError(f"{where}: expected a mapping with kind/at/duration")
        kind = item.get("kind")
        if kind not in KINDS:
            raise ScheduleError(f"{where}.kind: unknown kind {kind!r}; known: {', '.join(sorted(KINDS))}")
        spec = KINDS[kind]
        extra = set(item) - _COMMON_KEYS - set(spec.params)
        if extra:
            key = sorted(extra)[0]
            raise ScheduleError(f"{where}.{key}: not a key of {kind} (allowed: "
                                f"{', '.join(sorted(_COMMON_KEYS | set(spec.params)))})")
        if "at" not in item:
            raise ScheduleError(f"{where}.at: missing (offset from the start, e.g. 1d14h)")
        at = parse_duration(item["at"], f"{where}.at")
        duration = parse_duration(item.get("duration", spec.default_duration), f"{where}.duration")
        if duration <= 0:
            raise ScheduleError(f"{where}.duration: must be positive")
        gpu = item.get("gpu")
        container = item.get("container")
        if spec.target == "gpu" or gpu is not None:
            if spec.target == "gpu" and gpu is None:
                raise ScheduleError(f"{where}.gpu: required for {kind}")
            if isinstance(gpu, bool) or not isinstance(gpu, int) or not 0 <= gpu < n_gpus:
                raise ScheduleError(f"{where}.gpu: expected a GPU index 0..{n_gpus - 1}, got {gpu!r}")
            allowed, what = (gpus_for_kind or {}).get(kind, (None, ""))
            if allowed is not None and gpu not in allowed:
                which = ", ".join(map(str, sorted(allowed))) or "none on this box"
                raise ScheduleError(f"{where}.gpu: {kind} needs a GPU that {what} ({which}), got {gpu}")
        if spec.target == "container" or container is not None:
            if spec.target == "container" and container is None:
                raise ScheduleError(f"{where}.container: required for {kind}")
            if not isinstance(container, str) or (containers is not None and container not in containers):
                known = ", ".join(sorted(containers or []))
                raise ScheduleError(f"{where}.container: unknown container {container!r}; known: {known}")
        if kind == "vram_leak" and container not in (None, "ollama"):
            raise ScheduleError(f"{where}.container: a vram_leak is played in an ollama runner; "
                                f"use container: ollama or leave it out")
        params = {}
        for name, (typ, default) in spec.params.items():
            value = item.get(name, default)
            if name in item:
                if typ is float and isinstance(value, int) and not isinstance(value, bool):
                    value = float(value)
                if not isinstance(value, typ) or isinstance(value, bool):
                    raise ScheduleError(f"{where}.{name}: expected {typ.__name__}, got {value!r}")
                if typ is str and name in ("ramp", "period", "every"):
                    parse_duration(value, f"{where}.{name}")
                if name == "fans" and not all(isinstance(f, int) and f >= 0 for f in value):
                    raise ScheduleError(f"{where}.fans: expected a list of fan indices")
                if typ in (int, float) and value <= 0:
                    raise ScheduleError(f"{where}.{name}: must be positive, got {value!r}")
            params[name] = value
        if kind == "big_model_load" and models is not None and params["model"] not in models:
            raise ScheduleError(f"{where}.model: unknown model {params['model']!r} on this box; known: "
                                f"{', '.join(sorted(models))}")
        out.append(Incident(kind, at, duration, gpu, container, params))
    out.sort(key=lambda x: (x.at, x.kind))
    return out


def load_schedule(path: str | Path | None, n_gpus: int = 2, containers: set[str] | None = None,
                  gpus_for_kind: dict[str, tuple[set[int], str]] | None = None,
                  models: set[str] | None = None) -> list[Incident]:
    """Load and validate a schedule file; None loads the aibox's packaged default (about 7 days)."""
    if path is None:
        path = default_schedule_path()
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ScheduleError(f"schedule: cannot read {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ScheduleError(f"schedule: {path} is not valid YAML: {e}") from None
    return parse_schedule(data, n_gpus=n_gpus, containers=containers, gpus_for_kind=gpus_for_kind, models=models)


def default_schedule_path() -> Path:
    return Path(__file__).with_name("default_schedule.yml")
