"""The `inference:` section of detector.yml: which GPU workloads are inference servers, where their
request activity is read, and when a busy GPU with nobody asking becomes an incident.

    inference:
      busy_utilization: 0.9     # a GPU at or above this utilisation counts as busy
      hold: 10m                 # busy this long while its servers report no request: an incident
      log_presence: 1d          # a server's log stream seen this recently: its silence means "no requests"
      restart_settle: 15m       # after a box restart, incidents this long after it comes back are the reboot's
      requests_query: ...       # PromQL, active requests by `server` (see DEFAULT_REQUESTS_QUERY)
      model_change_settle: 5m   # a model load/unload explains its GPU's incidents this long after it
      model_change_explains: [gpu_joint, gpu_memory_growth, gpu_workload_memory_growth]
      servers:
        ollama: {workload: '(?i)ollama', requests_log: '{job="docker", container=~"(?i).*ollama.*"} |~ "..."'}
        vllm:   {workload: '(?i)vllm'}

A server is recognised on a GPU by its workload name (the exporter's `workload` label: a container,
a systemd unit or a process) matching `workload` — a pattern on the kind of server, never on one
box's container names. Its activity comes from `requests_query` where that has a series for it,
else from counting `requests_log` lines in Loki; with neither it is unknown, and nothing is
concluded from a GPU it sits on.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from detector import config_values as cv
from detector.config_values import ConfigError

# The same servers as the recording rule `inference:requests_active:sum` (prometheus/rules), but over
# each step's whole interval (max_over_time) and on raw series, because the detector also replays
# backfilled history, which recording rules never saw.
DEFAULT_REQUESTS_QUERY = (
    'sum by (server) ('
    'label_replace(max_over_time(vllm:num_requests_running[1m]), "server", "vllm", "", "")'
    ' or label_replace(max_over_time(llamacpp:requests_processing[1m]), "server", "llamacpp", "", "")'
    ' or max_over_time(inference_requests_running[1m]))')


@dataclass(frozen=True)
class ServerSpec:
    name: str
    workload: re.Pattern
    requests_log: str | None = None  # LogQL: one line per request (None: no log fallback)

    def stream_selector(self) -> str | None:
        """The `{...}` part of requests_log: the server's whole log stream (is it shipped at all?)."""
        return None if self.requests_log is None else stream_selector(self.requests_log)


DEFAULT_SERVERS = (
    # Ollama has no request metrics: its gin access log, one line per finished request.
    ServerSpec("ollama", re.compile(r"(?i)ollama"),
               r'{job="docker", container=~"(?i).*ollama.*"} |~ "\\[GIN\\] .*\\| +(POST|GET) +\"/(api|v1)/'
               r'(chat|generate|embed|embeddings|completions|chat/completions)\""'),
    ServerSpec("vllm", re.compile(r"(?i)vllm"),
               r'{job="docker", container=~"(?i).*vllm.*"} |~ "\"POST /v1/(chat/)?completions HTTP'),
    ServerSpec("llamacpp", re.compile(r"(?i)llama[-_.]?(cpp|server)")),
    # ComfyUI: /queue through the exporter; its "got prompt" / "Prompt executed in" lines otherwise.
    ServerSpec("comfyui", re.compile(r"(?i)comfy"),
               r'{job="docker", container=~"(?i).*comfy.*"} |~ "got prompt|Prompt executed in"'),
)


# Not gpu_thermal: the thermal model already expects a load's heat from the power it draws, so a thermal
# incident during a load is the card, not the load — on sim seed 11 the one incident a load window
# would have folded was a failing fan's.
DEFAULT_MODEL_CHANGE_EXPLAINS = frozenset({"gpu_joint", "gpu_memory_growth", "gpu_workload_memory_growth"})


@dataclass(frozen=True)
class InferenceConfig:
    busy_utilization: float = 0.9
    hold: float = 600.0
    log_presence: float = 86400.0
    restart_settle: float = 900.0  # restarts.py: a box_restart event ends this long after the box is back
    requests_query: str = DEFAULT_REQUESTS_QUERY
    servers: tuple[ServerSpec, ...] = field(default=DEFAULT_SERVERS)
    # a model loaded or unloaded on a GPU (detector/context/workload.py) is a window [t - step,
    # t + settle] explaining the incidents of these per-GPU detectors wholly inside it: a load's
    # power, clocks and VRAM step. Never hardware facts (gpu_xid, gpu_stuck, gpu_vanished,
    # throttling): no load explains those.
    model_change_settle: float = 300.0
    model_change_explains: frozenset[str] = DEFAULT_MODEL_CHANGE_EXPLAINS

    def server_for(self, workload: str) -> ServerSpec | None:
        for s in self.servers:
            if s.workload.search(workload):
                return s
        return None

    @classmethod
    def from_dict(cls, raw: Any, key: str = "inference") -> InferenceConfig:
        d = cv.mapping(raw, key)
        cv.check_keys(d, {"busy_utilization", "hold", "log_presence", "requests_query", "servers",
                          "restart_settle", "model_change_settle", "model_change_explains"}, key)
        out: dict[str, Any] = {}
        if "busy_utilization" in d:
            out["busy_utilization"] = cv.number(d["busy_utilization"], f"{key}.busy_utilization",
                                                "inference.busy_utilization")
        for name in ("hold", "log_presence", "restart_settle", "model_change_settle"):
            if name in d:
                out[name] = cv.duration(d[name], f"{key}.{name}", f"inference.{name}")
        if "requests_query" in d:
            out["requests_query"] = cv.string(d["requests_query"], f"{key}.requests_query")
        if "model_change_explains" in d:  # never empty: an event naming no detector would explain them all
            out["model_change_explains"] = frozenset(cv.labels(d["model_change_explains"],
                                                               f"{key}.model_change_explains", empty=False))
        if "servers" in d:
            out["servers"] = _servers(d["servers"], f"{key}.servers")
        return cls(**out)


def _servers(raw: Any, key: str) -> tuple[ServerSpec, ...]:
    d = cv.mapping(raw, key)
    out = []
    for name, spec in d.items():
        if not isinstance(name, str) or not cv.LABEL_RE.match(name):
            raise ConfigError(key, f"server names are label values like ollama (got {cv.short(name)})")
        k = f"{key}.{name}"
        s = cv.mapping(spec, k)
        cv.check_keys(s, {"workload", "requests_log"}, k)
        pattern = cv.string(s.get("workload"), f"{k}.workload")
        try:
            workload = re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"{k}.workload", f"not a regular expression: {e}") from None
        log_query = None
        if s.get("requests_log") is not None:
            log_query = cv.string(s["requests_log"], f"{k}.requests_log")
            try:
                stream_selector(log_query)
            except ValueError as e:
                raise ConfigError(f"{k}.requests_log", str(e)) from None
        out.append(ServerSpec(name, workload, log_query))
    return tuple(out)


def stream_selector(logql: str) -> str:
    """`{a="b", c=~"d}"} |~ "x"` -> `{a="b", c=~"d}"}`: the selector up to its closing brace (quotes
    and escapes respected). ValueError if the query does not start with one."""
    s = logql.strip()
    if not s.startswith("{"):
        raise ValueError("a LogQL log query starts with a stream selector {...}")
    quote = None
    i = 1
    while i < len(s):
        c = s[i]
        if quote:
            if c == "\\" and quote != "`":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"`":
            quote = c
        elif c == "}":
            return s[:i + 1]
        i += 1
    raise ValueError("the stream selector {...} is not closed")
