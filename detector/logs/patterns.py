"""Known critical log patterns: each maps straight to a score with a readable summary.

Some lines are incidents on their own (NVIDIA Xid, kernel OOM kill, disk full). Others are rate
conditions: one failed SSH password from an internet scanner, one unit failure at boot or one
container exit during an update is routine; a brute force, a restart loop or a failure that repeats
is the incident. `PatternTracker` keeps the short sliding windows those conditions need, so single
occurrences score below 1 and repeats score above it.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from detector.logs.journal import LogEntry
from detector.logs.windows import SlidingWindows

# Xid codes NVIDIA documents as hardware/driver faults or a lost GPU; others (13, 31, 43, 45...) are
# most often an application's own fault (bad kernel, killed context) and score lower.
CRITICAL_XIDS = {48, 56, 57, 58, 61, 62, 63, 64, 68, 69, 73, 74, 79, 92, 94, 95, 119, 120, 121, 140}
XID_MEANING = {
    13: "graphics engine exception", 31: "GPU memory page fault", 32: "invalid or corrupted push buffer",
    38: "driver firmware error", 43: "GPU stopped processing", 45: "preemptive cleanup",
    48: "double-bit ECC error", 61: "internal micro-controller breakpoint", 62: "internal micro-controller halt",
    63: "ECC page retirement or row remapping", 64: "ECC page retirement or row remapper failure",
    68: "video processor exception", 69: "graphics engine class error", 74: "NVLink error",
    79: "GPU has fallen off the bus", 92: "high single-bit ECC error rate", 94: "contained ECC error",
    95: "uncontained ECC error", 119: "GSP RPC timeout", 120: "GSP error",
}

_PCI_FULL = re.compile(r"^(?:PCI:)?(?:([0-9a-fA-F]{4,8}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})(?:\.([0-7]))?$")


def normalize_pci_bus_id(value: str) -> str | None:
    """One spelling for a PCI address: NVML's `00000000:02:00.0`, the kernel's `0000:02:00.0` and the
    Xid line's `PCI:0000:02:00` (no function) all become `0000:02:00.0`. None if it is no address."""
    m = _PCI_FULL.match(value.strip())
    if not m:
        return None
    domain, bus, device, function = m.groups()
    return f"{int(domain or '0', 16):04x}:{int(bus, 16):02x}:{int(device, 16):02x}.{int(function or '0')}"


def gpu_index_by_pci(gpu_info_series: Iterable[dict[str, str]]) -> dict[str, str]:
    """{normalised PCI id: gpu index} from the label sets of `gpu_info` series (labels pci_bus_id, gpu)."""
    mapping = {}
    for labels in gpu_info_series:
        pci = normalize_pci_bus_id(labels.get("pci_bus_id", ""))
        if pci and labels.get("gpu", "") != "":
            mapping[pci] = str(labels["gpu"])
    return mapping


@dataclass
class PatternHit:
    """One detection from a known pattern. `score` follows rigwatch's convention (> 1 anomalous)."""

    pattern: str
    score: float
    summary: str
    labels: dict[str, str]
    ts: float
    example: str
    key: tuple = field(default=())  # what the rate condition counts by (unit, container, source ip)


_XID = re.compile(r"NVRM: Xid \((?P<pci>PCI:[0-9a-fA-F:.]+)\): (?P<code>\d+)(?:, (?P<rest>.*))?")
_OOM_KILL = re.compile(r"(?:Out of memory|Memory cgroup out of memory): Killed process (?P<pid>\d+) \((?P<comm>[^)]*)\)")
_OOM_INVOKED = re.compile(r"(?P<comm>\S+) invoked oom-killer")
_UNIT_FAILED = re.compile(r"^(?P<unit>\S+\.(?:service|socket|mount|timer|scope)): Failed with result '(?P<result>[^']+)'")
_UNIT_FAILED_START = re.compile(r"^Failed to start (?P<what>.+?)\.?$")
_UNIT_RESTART = re.compile(r"^(?P<unit>\S+): Scheduled restart job, restart counter is at (?P<n>\d+)")
_UNIT_EXITED = re.compile(r"^(?P<unit>\S+\.(?:service|socket|mount|scope)): (?:Main|Control) process exited, code=(?P<code>\w+), status=(?P<status>\S+)")
_UNIT_TOO_QUICK = re.compile(r"^(?P<unit>\S+): Start request repeated too quickly")
_CONTAINER_EXIT = re.compile(
    r"[Cc]ontainer (?P<name>[\w.-]+) (?:died|exited)(?: with (?:exit )?code (?P<code>\d+))?"
    r"|container=(?P<name2>[\w.-]+).*(?:topic=/tasks/exit|exitCode=(?P<code2>\d+))")
_CUDA_OOM = re.compile(r"CUDA out of memory|CUDA error: out of memory|OutOfMemoryError|cudaErrorMemoryAllocation"
                       r"|cudaMalloc failed: out of memory|CUBLAS_STATUS_ALLOC_FAILED", re.IGNORECASE)
_DISK_FULL = re.compile(r"No space left on device|ENOSPC|[Dd]isk (?:is )?full|[Ff]ile ?system (?:is )?full")
# one failed SSH attempt is counted once, on its "Failed password" line; the lines that accompany it
# (Invalid user, PAM's authentication failure) are claimed by the pattern but not counted again
_SSH_FAIL = re.compile(r"Failed (?:password|publickey|keyboard-interactive/pam|none) for (?:invalid user )?"
                       r"(?P<user>\S*) from (?P<ip>[0-9a-fA-F.:]+)")
_SSH_COMPANION = re.compile(r"(?:Invalid user \S* from|authentication failure;.*rhost=|"
                            r"maximum authentication attempts exceeded for .* from)\s*(?P<ip>[0-9a-fA-F.:]+)")


@dataclass
class PatternConfig:
    ssh_window_s: float = 600.0
    ssh_per_source: int = 10    # failed logins from one address in the window that make a brute force
    ssh_total: int = 40         # from all addresses together (a distributed attack)
    repeat_window_s: float = 900.0
    unit_failures: int = 3      # failures of one unit in the window that make an incident
    container_exits: int = 3    # exits of one container in the window: a restart loop
    restart_counter: int = 3    # systemd's own restart counter at which a loop is an incident
    cuda_oom_single: float = 1.5


class PatternTracker:
    """Matches lines against the known patterns and applies the rate conditions over sliding windows.
    `gpu_by_pci` maps normalised PCI ids to gpu indexes (see gpu_index_by_pci)."""

    def __init__(self, config: PatternConfig | None = None, gpu_by_pci: dict[str, str] | None = None):
        self.config = config or PatternConfig()
        self.gpu_by_pci = dict(gpu_by_pci or {})
        self._windows = SlidingWindows()

    def observe(self, entry: LogEntry) -> list[PatternHit]:
        """Hits for one entry (entries must come in time order for the windows to mean anything)."""
        message, ts = entry.message, entry.ts
        hits: list[PatternHit] = []

        def hit(pattern, score, summary, labels=None, key=()):
            hits.append(PatternHit(pattern, float(score), summary, dict(labels or {}), ts, message, key))

        m = _XID.search(message)
        if m:
            code = int(m.group("code"))
            pci = normalize_pci_bus_id(m.group("pci")) or m.group("pci")
            gpu = self.gpu_by_pci.get(pci)
            labels = {"pci_bus_id": pci, "xid": str(code)}
            if gpu is not None:
                labels["gpu"] = gpu
            meaning = XID_MEANING.get(code, "see NVIDIA's Xid catalogue")
            where = f"GPU {gpu} ({pci})" if gpu is not None else f"GPU at {pci}"
            hit("nvidia_xid", 5.0 if code in CRITICAL_XIDS else 1.5,
                f"NVIDIA Xid {code} on {where}: {meaning}", labels, ("xid", pci, code))
        m = _OOM_KILL.search(message)
        if m:
            hit("oom_kill", 3.0, f"Kernel OOM killer killed process {m.group('comm')} (pid {m.group('pid')})",
                {"process": m.group("comm")}, ("oom", m.group("comm")))
        elif _OOM_INVOKED.search(message):
            comm = _OOM_INVOKED.search(message).group("comm")
            hit("oom_kill", 2.0, f"{comm} invoked the kernel OOM killer", {"process": comm}, ("oom", comm))
        if _CUDA_OOM.search(message):
            where = entry.labels.get("container") or entry.labels.get("unit") or entry.labels.get("identifier", "")
            n = self._windows.add(("cuda_oom", where), ts, self.config.repeat_window_s)
            hit("cuda_oom", self.config.cuda_oom_single * max(1.0, n / 2),
                f"CUDA out of memory in {where or 'a process'}" + (f" ({n}x in {self._window_text()})" if n > 1 else ""),
                _where_labels(entry), ("cuda_oom", where))
        if _DISK_FULL.search(message):
            hit("disk_full", 3.0, f"Disk full (No space left on device) reported by {_who(entry)}",
                _where_labels(entry), ("disk_full", _who(entry)))
        self._systemd(entry, hit)
        m = _CONTAINER_EXIT.search(message)
        if m:
            name = m.group("name") or m.group("name2")
            code = m.group("code") or m.group("code2")
            n = self._windows.add(("container_exit", name), ts, self.config.repeat_window_s)
            hit("container_exit", rate_score(n, self.config.container_exits),
                f"Container {name} exited" + (f" with code {code}" if code else "")
                + (f", {n} times in {self._window_text()} (restart loop)" if n > 1 else ""),
                {"container": name}, ("container_exit", name))
        m = _SSH_FAIL.search(message)
        if m:
            ip = m.group("ip")
            per_source = self._windows.add(("ssh", ip), ts, self.config.ssh_window_s)
            total = self._windows.add(("ssh", "*"), ts, self.config.ssh_window_s)
            score = max(rate_score(per_source, self.config.ssh_per_source),
                        rate_score(total, self.config.ssh_total))
            hit("ssh_bruteforce", score,
                f"SSH brute force: {per_source} failed logins from {ip} ({total} in all) in "
                f"{int(self.config.ssh_window_s // 60)} min", {"source_ip": ip, **_where_labels(entry)},
                ("ssh", ip))
        elif _SSH_COMPANION.search(message):
            ip = _SSH_COMPANION.search(message).group("ip")
            per_source = self._windows.count(("ssh", ip))
            hit("ssh_bruteforce", rate_score(max(per_source, 1), self.config.ssh_per_source),
                f"SSH login failure from {ip} ({per_source} in {int(self.config.ssh_window_s // 60)} min)",
                {"source_ip": ip, **_where_labels(entry)}, ("ssh", ip))
        return hits

    def _systemd(self, entry: LogEntry, hit) -> None:
        message, ts = entry.message, entry.ts
        m = _UNIT_RESTART.search(message)
        if m:
            unit, n = m.group("unit"), int(m.group("n"))
            hit("unit_restart_loop", rate_score(n, self.config.restart_counter),
                f"systemd restart loop: {unit} restarted {n} times", {"unit": unit}, ("unit", unit))
            return
        m = _UNIT_TOO_QUICK.search(message)
        if m:
            hit("unit_restart_loop", 3.0, f"systemd gave up restarting {m.group('unit')}: start request "
                "repeated too quickly", {"unit": m.group("unit")}, ("unit", m.group("unit")))
            return
        m = _UNIT_EXITED.search(message)
        if m:
            # the process exit that precedes "Failed with result": same failure, claimed, not counted
            unit = m.group("unit")
            n = self._windows.count(("unit_failed", unit))
            hit("unit_failed", rate_score(max(n, 1), self.config.unit_failures),
                f"systemd unit {unit}: process exited ({m.group('code')}, status {m.group('status')})",
                {"unit": unit}, ("unit", unit))
            return
        m = _UNIT_FAILED.search(message)
        if m:
            unit = m.group("unit")
            n = self._windows.add(("unit_failed", unit), ts, self.config.repeat_window_s)
        else:
            # "Failed to start X" accompanies "X: Failed with result": the same failure, not counted
            m = _UNIT_FAILED_START.search(message)
            if not m or entry.labels.get("identifier", "systemd") != "systemd":
                return
            what = m.group("what")
            unit = entry.meta.get("subject_unit") or what.split(" - ")[0]
            n = self._windows.count(("unit_failed", unit))
        hit("unit_failed", rate_score(max(n, 1), self.config.unit_failures),
            f"systemd unit {unit} failed" + (f" {n} times in {self._window_text()}" if n > 1 else ""),
            {"unit": unit}, ("unit", unit))

    def _window_text(self) -> str:
        return f"{int(self.config.repeat_window_s // 60)} min"

    def get_state(self) -> dict:
        return {"events": self._windows.get_state()}

    def set_state(self, state: dict) -> None:
        self._windows.set_state(state.get("events", []))


def rate_score(count: int, threshold: int) -> float:
    """A count against the count that makes an incident: below it the score stays under 1 (0.9 at
    most), at it the score is 1.2 and grows with the count."""
    ratio = count / max(threshold, 1)
    return ratio * (1.2 if count >= threshold else 0.9)


def _who(entry: LogEntry) -> str:
    labels = entry.labels
    return labels.get("container") or labels.get("unit") or labels.get("identifier") or "a process"


def _where_labels(entry: LogEntry) -> dict[str, str]:
    labels = entry.labels
    for name in ("container", "unit"):
        if labels.get(name):
            return {name: labels[name]}
    return {}
