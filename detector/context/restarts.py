"""Box restarts as context events: a planned reboot is one `box_restart` event, not a lost GPU, a
restart loop and a vanished series.

A host's boot time (`gpu_exporter_host_boot_time_seconds`, node-exporter's `node_boot_time_seconds`)
only changes when the host boots again: a new value between two samples of one exporter is a reboot
between them. The pause every series of the box shows starts after the last sample with the old
boot time; the event's window runs from there to the first sample with the new one plus a settle
time (services, models and temperatures coming back), and explains the incidents of every detector
wholly inside it on that host (events.py).

Not a reboot: a scrape gap with the same boot time (the exporter or the network was away, the box
was not), an exporter restart (same boot time, counters reset), and the kernel's btime wobbling by a
second as NTP slews the clock (`SAME_BOOT_S`).

`Reboots` keeps what was seen across reads (live scoring reads on from its last pass, backtest in
chunks): each exporter's last sample is carried into the next read, so a reboot between two reads,
however long the box was off, is seen once.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from detector.context.events import ContextEvent, host_of
from detector.timefmt import iso

KIND = "box_restart"
# The exporter's gauge and node-exporter's, first the one rigwatch ships.
BOOT_METRICS = ("gpu_exporter_host_boot_time_seconds", "node_boot_time_seconds")
# Boot times this close are one boot: btime is computed as "now - uptime" and moves by a second or so
# as the clock is slewed, and two exporters of one host read it at different moments.
SAME_BOOT_S = 60.0


@dataclass(frozen=True)
class BootSamples:
    """One exporter's boot-time series: the sample times (increasing) and the boot time each reports."""
    instance: str
    t: np.ndarray
    boot: np.ndarray
    metric: str = BOOT_METRICS[0]


@dataclass(frozen=True)
class Reboot:
    """One exporter saw its host boot again between `last_old` and `first_new`."""
    instance: str
    metric: str
    last_old: float  # the last sample with the old boot time: the pause starts after it
    first_new: float  # the first sample with the new boot time
    boot_time: float
    old_boot_time: float

    @property
    def host(self) -> str:
        return host_of(self.instance)


def reboots(s: BootSamples) -> list[Reboot]:
    """The reboots one series shows: its boot time moving forward by more than SAME_BOOT_S between
    consecutive samples. Missing values (NaN) are skipped; a boot time moving backwards is a clock
    correction, taken as the new reference but no reboot."""
    out: list[Reboot] = []
    t = np.asarray(s.t, float)
    b = np.asarray(s.boot, float)
    ok = np.isfinite(t) & np.isfinite(b)
    t, b = t[ok], b[ok]
    for i in range(1, len(t)):
        if b[i] - b[i - 1] > SAME_BOOT_S:
            out.append(Reboot(s.instance, s.metric, float(t[i - 1]), float(t[i]), float(b[i]), float(b[i - 1])))
    return out


def group(found: Iterable[Reboot]) -> list[list[Reboot]]:
    """Reboots of one host with boot times within SAME_BOOT_S of each other are one boot (the GPU
    exporter and node-exporter of one box). Sorted by boot time; each group too."""
    groups: list[list[Reboot]] = []
    for r in sorted(found, key=lambda r: (r.host, r.boot_time, r.instance)):
        g = groups[-1] if groups else None
        if g is not None and g[0].host == r.host and r.boot_time - g[0].boot_time <= SAME_BOOT_S:
            g.append(r)
        else:
            groups.append([r])
    return sorted(groups, key=lambda g: (g[0].boot_time, g[0].host))


def event(g: list[Reboot], settle: float) -> ContextEvent:
    """The `box_restart` event of one boot seen by one or more exporters of its host."""
    start = min(r.last_old for r in g)
    back = max(r.first_new for r in g)
    boot = min(r.boot_time for r in g)
    down = back - start
    host = g[0].host
    return ContextEvent(
        kind=KIND, start=start, end=back + settle,
        summary=f"box {host} restarted (down {_duration(down)}, booted {iso(boot)})",
        scope={"host": host}, detectors=frozenset(),
        details={"boot_time": iso(boot), "boot_time_seconds": boot, "previous_boot_time": iso(min(r.old_boot_time for r in g)),
                 "down_seconds": round(down, 3), "settle_seconds": settle,
                 "instances": sorted({r.instance for r in g}), "metrics": sorted({r.metric for r in g})})


def restart_events(series: Iterable[BootSamples], settle: float) -> list[ContextEvent]:
    """Every reboot the series show, one event per boot of a host, in time order."""
    found = [r for s in series for r in reboots(s)]
    return [event(g, settle) for g in group(found)]


def samples_from(metric: str, values, stamps) -> list[BootSamples]:
    """A range query's boot-time series (`values`) and the same query under `timestamp()` (`stamps`:
    which sample each step read) -> each exporter's samples at their own times, one point per sample.
    A backfilled series (no staleness markers) repeats its last value up to 5 minutes into a gap:
    read at the steps' times, the pause would start minutes late. Series: `.labels`, `.t`, `.y`."""
    at_of = {frozenset(x.labels.items()): dict(zip(np.asarray(x.t, float).tolist(),
                                                   np.asarray(x.y, float).tolist(), strict=True))
             for x in stamps}
    out = []
    for v in values:
        t = np.asarray(v.t, float)
        at = at_of.get(frozenset(v.labels.items()))
        if at is not None:
            t = np.array([at.get(x, x) for x in t.tolist()], float)
        if not len(t):
            continue
        first = np.concatenate([[True], np.diff(t) > 0])  # one point per sample read
        out.append(BootSamples(v.labels.get("instance", ""), t[first], np.asarray(v.y, float)[first], metric))
    return out


class Reboots:
    """The reboots seen over successive reads, each exporter's last sample carried into the next."""

    def __init__(self) -> None:
        self.found: list[Reboot] = []
        self._tail: dict[tuple[str, str], tuple[float, float]] = {}  # (metric, instance) -> (t, boot)

    def add(self, series: Iterable[BootSamples]) -> None:
        found = list(self.found)
        for s in series:
            key = (s.metric, s.instance)
            tail = self._tail.get(key)
            if tail is not None:  # the previous read's last sample: a reboot in between shows
                keep = s.t > tail[0]
                s = BootSamples(s.instance, np.concatenate([[tail[0]], s.t[keep]]),
                                np.concatenate([[tail[1]], s.boot[keep]]), s.metric)
            found += [r for r in reboots(s) if r not in found]
            ok = np.nonzero(np.isfinite(s.boot))[0]
            if len(ok):
                self._tail[key] = (float(s.t[ok[-1]]), float(s.boot[ok[-1]]))
        self.found = found  # one swap: a reader on another thread sees the old list or the new one

    def prune(self, since: float, keep: int) -> None:
        """Forget reboots the box came back from before `since`; at most the last `keep`."""
        self.found = [r for r in self.found if r.first_new >= since][-keep:]

    def events(self, settle: float, start: float, end: float) -> list[ContextEvent]:
        """One event per boot of a host, those overlapping [start, end]."""
        evs = (event(g, settle) for g in group(self.found))
        return [e for e in evs if e.end >= start and e.start <= end]


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
