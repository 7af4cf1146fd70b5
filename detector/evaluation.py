"""Compare a backtest report with a ground-truth file (the sim's truth.json).

An injected incident is *found* when some reported incident carries its labels (gpu, container —
the truth's own label values) and starts within `max_delay` after the injected start (or up to
`early` before it) while overlapping the window. A reported incident is *false* when it overlaps no
injected window (padded by `early` before and `aftermath` after: a failed fan's card takes a while
to cool down), and *on a benign look-alike* when it overlaps a benign window instead. The summary adds
the median and max delay of the found ones and a per-detector count (`per_detector`).

A box restart (`planned_reboot`, a benign look-alike) is *seen as one event* when exactly one
`box_restart` event of the report's `events` overlaps its window (on its host, where both say):
the reboot reported once instead of a lost GPU, a restart loop and a vanished series.
"""
from __future__ import annotations

from datetime import datetime
from statistics import median
from typing import Any

from detector.context.events import host_of

RESTART_KINDS = ("planned_reboot",)  # ground-truth kinds that are a reboot of the box


def _ts(v: str | float) -> float:
    if isinstance(v, int | float):
        return float(v)
    return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()


def _labels_match(truth: dict[str, str], got: dict[str, str]) -> bool:
    return all(got.get(k) == v for k, v in truth.items() if k in ("gpu", "container"))


def evaluate(report: dict[str, Any], truth: dict[str, Any], *, max_delay: float = 600.0, early: float = 600.0,
             aftermath: float = 1800.0, scored_from: float | None = None) -> dict[str, Any]:
    if scored_from is None:
        scored_from = _ts(report["range"]["scored_from"]) if "scored_from" in report.get("range", {}) else None
    incidents = [dict(i, _start=_ts(i["start"]), _end=_ts(i["end"])) for i in report["incidents"]]
    real = [t for t in truth["incidents"] if not t.get("benign")]
    benign = [t for t in truth["incidents"] if t.get("benign")]
    found, missed = [], []
    for t in real:
        s, _e = _ts(t["start"]), _ts(t["end"])
        if scored_from is not None and s < scored_from:
            continue
        hits = [i for i in incidents if _labels_match(t["labels"], i["labels"])
                and s - early <= i["_start"] <= s + max_delay and i["_end"] >= s]
        if hits:
            first = min(hits, key=lambda i: i["_start"])
            found.append({"kind": t["kind"], "labels": t["labels"], "start": t["start"],
                          "delay_seconds": first["_start"] - s, "detectors": sorted({h["detector"] for h in hits})})
        else:
            missed.append({"kind": t["kind"], "labels": t["labels"], "start": t["start"]})
    false, on_benign = [], []
    for i in incidents:
        if any(_ts(t["start"]) - early <= i["_end"] and i["_start"] <= _ts(t["end"]) + aftermath for t in real):
            continue
        brief = {k: i[k] for k in ("detector", "labels", "start", "end", "peak_score", "summary")}
        if any(_ts(t["start"]) - early <= i["_end"] and i["_start"] <= _ts(t["end"]) + aftermath for t in benign):
            on_benign.append(brief)
        else:
            false.append(brief)
    restarts, as_one = restarts_seen(report, truth, scored_from)
    days = (_ts(truth["end"]) - max(_ts(truth["start"]), scored_from or 0)) / 86400
    delays = sorted(f["delay_seconds"] for f in found)
    return {"found": found, "missed": missed, "false": false, "on_benign": on_benign,
            "restarts_as_one_event": as_one,
            "summary": {"restarts": restarts, "restarts_as_one_event": len(as_one),"injected": len(found) + len(missed), "found": len(found), "missed": len(missed),
                        "false": len(false), "on_benign": len(on_benign), "days": round(days, 2),
                        "false_per_day": round(len(false) / days, 2) if days > 0 else None,
                        "median_delay_seconds": median(delays) if delays else None,
                        "max_delay_seconds": delays[-1] if delays else None,
                        "per_detector": per_detector(found, false, on_benign)}}


def restarts_seen(report: dict[str, Any], truth: dict[str, Any],
                  scored_from: float | None = None) -> tuple[int, list[dict[str, Any]]]:
    """(how many reboots the truth has from `scored_from` on, those seen as one `box_restart` event
    with the event's summary and how many incidents it explains)."""
    host = host_of(truth["instance"]) if truth.get("instance") else None
    events = [e for e in report.get("events", []) if e.get("kind") == "box_restart"
              and (host is None or (e.get("scope") or {}).get("host", host) == host)]
    restarts = [t for t in truth["incidents"] if t["kind"] in RESTART_KINDS
                and (scored_from is None or _ts(t["start"]) >= scored_from)]
    seen = []
    for t in restarts:
        s, e = _ts(t["start"]), _ts(t["end"])
        over = [ev for ev in events if _ts(ev["start"]) <= e and s <= _ts(ev["end"])]
        if len(over) == 1:
            seen.append({"kind": t["kind"], "start": t["start"], "event": over[0].get("summary"),
                         "explains": len(over[0].get("explains") or [])})
    return len(restarts), seen


def per_detector(found: list[dict[str, Any]], false: list[dict[str, Any]],
                 on_benign: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per detector: injected incidents it found (an incident found by two counts for both), false
    incidents and incidents on look-alikes it raised — which detector to look at when a figure moves."""
    out: dict[str, dict[str, int]] = {}

    def row(d: str) -> dict[str, int]:
        return out.setdefault(d, {"found": 0, "false": 0, "on_benign": 0})
    for f in found:
        for d in f["detectors"]:
            row(d)["found"] += 1
    for i in false:
        row(i["detector"])["false"] += 1
    for i in on_benign:
        row(i["detector"])["on_benign"] += 1
    return dict(sorted(out.items()))
