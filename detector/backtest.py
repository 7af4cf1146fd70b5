"""Backtest: replay a time range as the live service would and report incidents.

Each detector plugin replays its own detectors over the range (`DetectorPlugin.backtest`: the first
fit at start + schedule.warmup on what came before, refits on the live cadence, every point scored
once, in order, by the model fitted before it) and hands back its part of the report; this module
merges the parts into the one report format `rigwatch-detector backtest` writes.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detector.config import Config
from detector.context.events import fold
from detector.plugin import DetectorPlugin
from detector.timefmt import iso, parse_rfc3339


def run_backtest(config: Config, plugins: Sequence[DetectorPlugin], start: float, end: float, *,
                 threshold: float = 1.0, show_progress: bool = True, plot_dir: str | None = None,
                 source: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report: `source` says what was read (prometheus_url, config, journal_file)."""
    from tqdm import tqdm

    if end <= start:
        raise ValueError("--end must be after --start")
    sched = config.schedule
    first_fit = min(start + sched.warmup, end)
    wall = time.perf_counter()
    per_detector: list[dict] = []
    incidents: list[dict] = []
    sections: dict[str, Any] = {}
    plots: list[str] = []
    # progress in replayed hours over all detectors
    total = sum(p.backtest_hours(start, end) for p in plugins)
    with tqdm(total=round(total, 1), desc="backtest", unit="h", disable=not show_progress,
              bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} h [{elapsed}<{remaining}{postfix}]") as bar:
        for plugin in plugins:
            part = plugin.backtest(start, end, threshold=threshold, plot_dir=plot_dir, progress=bar)
            per_detector += part.detectors
            incidents += part.incidents
            plots += part.plots
            if plugin.report_section is not None and part.section is not None:
                sections[plugin.report_section] = part.section
    # the box's own events (a restart, a model load) fold the incidents they explain
    for plugin in plugins:
        plugin.annotate(incidents, to_time=parse_rfc3339)
    events = [e for plugin in plugins for e in plugin.context_events(start, end)]
    incidents, explained = fold(incidents, events, step=sched.step, to_time=parse_rfc3339, fmt_time=iso)
    incidents.sort(key=lambda d: (d["start"], d["detector"]))
    report = {
        "generated_at": iso(time.time()),
        "range": {"start": iso(start), "end": iso(end), "step_seconds": sched.step,
                  "scored_from": iso(first_fit)},
        "source": {"config": config.source, **(source or {})},
        "params": {"threshold": threshold, "fit_every_seconds": sched.fit_every,
                   "lookback_seconds": sched.lookback, "warmup_seconds": sched.warmup},
        "detectors": per_detector,
        "incidents": incidents,
        "events": explained,
        "summary": {"incidents": len(incidents),
                    "by_detector": _count(d["detector"] for d in incidents),
                    "events": len(explained),
                    "explained_by_events": sum(len(e["explains"]) for e in explained),
                    "wall_seconds": round(time.perf_counter() - wall, 2)},
        **sections,
    }
    if plot_dir:
        report["plots"] = plots
    return report


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def write_report(report: dict, path: str) -> None:
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, allow_nan=False, default=str))
    tmp.replace(p)
