"""Context events: what the box itself did (it restarted, a model was loaded on a GPU), as time windows
that explain incidents rather than raise them.

A plugin that knows of such events hands them over through `DetectorPlugin.context_events`; the
backtest (detector/backtest.py) and the live API (GET /api/v1/anomalies) then `fold` the incidents an
event explains into it: the report and the API show one event — "box restarted", "ollama loaded
qwen2.5:32b on GPU 1" — with what it explained, instead of a lost GPU, a restart loop and a vanished
series. An incident is explained only when it lies wholly inside the event's window on the event's
scope: a GPU still missing after the reboot's settle time, or a VRAM climb running on past a model
load, stays an incident.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ContextEvent:
    kind: str  # "box_restart", "model_change"
    start: float  # the window it explains, epoch seconds, inclusive
    end: float
    summary: str  # one line a person reads
    # its scope: an incident is in scope when each of these labels it carries has this value
    # (`host` is matched against the host part of the incident's `instance`), e.g. {"uuid": ...}
    scope: dict[str, str] = field(default_factory=dict)
    # detectors whose incidents it can explain (empty: every detector but the plugin's own)
    detectors: frozenset[str] = frozenset()
    details: dict[str, Any] = field(default_factory=dict)  # kind-specific facts for the report
    # listed only when it explains an incident: a box swapping models all day has hundreds of loads
    # a week, and a report or API answer listing each would bury the ones that matter
    quiet: bool = False

    def in_scope(self, series_labels: dict[str, str]) -> bool:
        for key, want in self.scope.items():
            if key == "host":
                got = series_labels.get("instance")
                if got is not None and host_of(got) != want:
                    return False
            elif key in series_labels and series_labels[key] != want:
                return False
        return True

    def explains(self, incident: dict[str, Any], *, step: float = 0.0) -> bool:
        """`incident` as a report/API dict with epoch `start`/`end` and `series_labels`."""
        if self.detectors and incident["detector"] not in self.detectors:
            return False
        return (self.start - step <= incident["start"] and incident["end"] <= self.end + step
                and self.in_scope(incident.get("series_labels") or {}))

    def to_dict(self, fmt_time=None) -> dict[str, Any]:
        f = fmt_time or (lambda x: x)
        d: dict[str, Any] = {"kind": self.kind, "start": f(self.start), "end": f(self.end),
                             "summary": self.summary, "scope": dict(self.scope)}
        if self.details:
            d["details"] = dict(self.details)
        return d


def host_of(instance: str) -> str:
    """`instance`'s host: "10.0.0.5:9842" -> "10.0.0.5", "[::1]:9100" -> "::1", "box" -> "box"."""
    if instance.startswith("["):
        return instance[1:].split("]", 1)[0]
    return instance.rsplit(":", 1)[0] if instance.count(":") == 1 else instance


def fold(incidents: list[dict[str, Any]], events: Iterable[ContextEvent], *, step: float = 0.0,
         to_time=None, fmt_time=None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(incidents no event explains, the events as dicts each with `explains`: the ids and summaries
    of the incidents folded into it). Incident times are read through `to_time` (e.g. RFC3339 ->
    epoch; None: already epoch), event times written through `fmt_time`; an incident two events
    explain goes to the earlier one. A `quiet` event that explains nothing is left out."""
    conv = to_time or (lambda x: x)
    evs = sorted(events, key=lambda e: (e.start, e.kind))
    folded: list[list[dict[str, Any]]] = [[] for _ in evs]
    kept = []
    for inc in incidents:
        view = {**inc, "start": conv(inc["start"]), "end": conv(inc["end"])}
        for n, ev in enumerate(evs):
            if ev.explains(view, step=step):
                folded[n].append({"id": inc.get("id"), "detector": inc["detector"], "summary": inc.get("summary")})
                break
        else:
            kept.append(inc)
    return kept, [{**ev.to_dict(fmt_time), "explains": f} for ev, f in zip(evs, folded, strict=True)
                  if f or not ev.quiet]
