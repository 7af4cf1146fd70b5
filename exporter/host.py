"""The host's boot time, `btime` from `<proc root>/stat`, for `gpu_exporter_host_boot_time_seconds`.

A box that rebooted has a new boot time; the detector and the BoxRestarted alert read that change to
tell a planned reboot (every series of the box pauses, then comes back) from a lost GPU, a restart
loop or a vanished series. Read off the scrape path (with the container refresh): the kernel builds
/proc/stat from every CPU's counters, which is cheap but not free on a many-core box.
"""
from __future__ import annotations

import os
from pathlib import Path

from exporter.read_errors import ReadErrors

FIELD = "boot_time"


def parse_btime(text: str) -> float | None:
    """The `btime <epoch seconds>` line of a /proc/stat text, else None."""
    for line in text.splitlines():
        if line.startswith("btime "):
            try:
                value = float(line.split()[1])
            except (IndexError, ValueError):
                return None
            return value if value > 0 else None
    return None


class BootTime:
    """The last boot time read, or None (no sample) when the file is missing, unreadable or has no
    btime line — each such read counted in `gpu_exporter_read_errors_total{field="boot_time"}`."""

    def __init__(self, proc_root: str | os.PathLike = "/proc", errors: ReadErrors | None = None):
        self.path = Path(proc_root) / "stat"
        self.errors = errors or ReadErrors()
        self.value: float | None = None

    def refresh(self) -> float | None:
        try:
            text = self.path.read_text(errors="replace")
        except OSError:
            text = ""
        value = parse_btime(text)
        if value is None:
            self.errors.inc(FIELD)
        self.value = value  # one reference swap: a scrape on another thread reads either value
        return value
