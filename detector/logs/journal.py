"""Offline log input: `journalctl -o json` lines and plain text, mapped to the stream-label contract.

Stream labels (a contract shared with the stack's Promtail config):
  journal lines   {job="systemd-journal", unit, identifier, priority, transport}
  container lines {job="docker", container}        (from CONTAINER_NAME, Docker's journald driver)
A line gets one label set or the other, never both: shipping both would count every line twice.
Labels with an empty value are left out, as Loki drops them (kernel lines have no unit).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

JOURNAL_JOB = "systemd-journal"
DOCKER_JOB = "docker"


@dataclass
class LogEntry:
    """One log line. `labels` is the Loki stream label set; `meta` carries journal fields that are
    useful for scoring but are not stream labels (boot id, pid, container stderr/stdout)."""

    ts: float  # epoch seconds
    message: str
    labels: dict[str, str]
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def priority(self) -> int | None:
        """Syslog priority 0-7 when it means something. Container lines only say stderr (3) or
        stdout (6), and many containers log routine INFO to stderr, so they have none."""
        if self.labels.get("job") == DOCKER_JOB:
            return None
        return parse_priority(self.labels.get("priority", self.meta.get("priority")))

    @property
    def stream_key(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(self.labels.items()))


_PRIORITY_KEYWORDS = {
    "emerg": 0, "alert": 1, "crit": 2, "err": 3, "error": 3, "warning": 4, "warn": 4,
    "notice": 5, "info": 6, "debug": 7,
}


def parse_priority(value) -> int | None:
    """Syslog priority from a journal value ("3") or a Promtail keyword label ("err")."""
    if value is None or value == "":
        return None
    text = str(value).strip().lower()
    if text.isdigit():
        number = int(text)
        return number if 0 <= number <= 7 else None
    return _PRIORITY_KEYWORDS.get(text)


def _text(value) -> str:
    """A journal field as text: journalctl writes non-UTF-8 or binary values as a list of byte
    values, and a value over its size limit as null."""
    if value is None:
        return ""
    if isinstance(value, list):
        if all(isinstance(v, int) for v in value):
            return bytes(v & 0xFF for v in value).decode("utf-8", errors="replace")
        # a field repeated in one entry: journalctl gives a list of values, keep the first
        return _text(value[0]) if value else ""
    return str(value)


def entry_from_journal(record: dict) -> LogEntry:
    """Map one decoded `journalctl -o json` object to a LogEntry."""
    if not isinstance(record, dict):
        raise ValueError(f"journal record must be a JSON object, got {type(record).__name__}")
    realtime = _text(record.get("__REALTIME_TIMESTAMP"))
    if not realtime.isdigit():
        raise ValueError(f"journal record has no usable __REALTIME_TIMESTAMP: {realtime!r}")
    ts = int(realtime) / 1e6
    message = _text(record.get("MESSAGE")).rstrip("\n")
    meta = {}
    for key, name in (("_BOOT_ID", "boot_id"), ("_PID", "pid"), ("PRIORITY", "priority"),
                      ("CONTAINER_ID", "container_id"), ("UNIT", "subject_unit"),
                      ("_HOSTNAME", "host")):
        value = _text(record.get(key))
        if value:
            meta[name] = value
    container = _text(record.get("CONTAINER_NAME"))
    if container:
        labels = {"job": DOCKER_JOB, "container": container}
        if meta.get("priority") == "3":
            meta["stream"] = "stderr"
        elif meta.get("priority") == "6":
            meta["stream"] = "stdout"
    else:
        labels = {
            "job": JOURNAL_JOB,
            "unit": _text(record.get("_SYSTEMD_UNIT")),
            "identifier": _text(record.get("SYSLOG_IDENTIFIER")),
            "priority": _text(record.get("PRIORITY")),
            "transport": _text(record.get("_TRANSPORT")),
        }
        labels = {k: v for k, v in labels.items() if v}
    return LogEntry(ts=ts, message=message, labels=labels, meta=meta)


def read_journal_lines(lines: Iterable[str | bytes], *, strict: bool = False) -> Iterator[LogEntry]:
    """Parse `journalctl -o json` output, one JSON object a line. Blank lines are skipped; a bad line
    raises ValueError naming its line number when strict, and is skipped otherwise."""
    for number, raw in enumerate(lines, start=1):
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="replace")
        raw = raw.strip()
        if not raw:
            continue
        try:
            yield entry_from_journal(json.loads(raw))
        except (ValueError, TypeError) as e:
            if strict:
                raise ValueError(f"journal line {number}: {e}") from e


def read_journal_file(path: str | Path, *, strict: bool = False) -> list[LogEntry]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return list(read_journal_lines(f, strict=strict))


def read_plain_lines(lines: Iterable[str], *, start_ts: float = 0.0, step_s: float = 1.0,
                     labels: dict[str, str] | None = None) -> Iterator[LogEntry]:
    """Plain text, one message per line. It has no timestamps: line i gets start_ts + i*step_s."""
    stream = dict(labels or {"job": "file"})
    for index, raw in enumerate(lines):
        message = raw.rstrip("\r\n")
        if message:
            yield LogEntry(ts=start_ts + index * step_s, message=message, labels=dict(stream))


def looks_like_journal_json(first_line: str) -> bool:
    text = first_line.strip()
    return text.startswith("{") and "__REALTIME_TIMESTAMP" in text


def read_log_file(path: str | Path, **plain_kwargs) -> list[LogEntry]:
    """A journal JSON export or a plain text file, told apart by the first non-blank line."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.readlines()
    first = next((line for line in lines if line.strip()), "")
    if looks_like_journal_json(first):
        return list(read_journal_lines(lines))
    return list(read_plain_lines(lines, **plain_kwargs))
