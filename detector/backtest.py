"""Backtest: replay a time range as the live service would and report incidents.

Each detector's data for the whole range is fetched once (split under Prometheus's point limit),
then replayed: the first fit at start + schedule.warmup on what came before, a refit every
schedule.fit_every over the lookback window, and in between every point scored once, in order, by
the model fitted before it (causal). Incidents come from the same IncidentTracker the live API uses.
"""
from __future__ import annotations

import importlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from detector.config import Config
from detector.engine import MetricDetector, ScoreBatch, fetch_series, series_id
from detector.incidents import Incident, IncidentTracker
from detector.promclient import PromClient
from detector.timefmt import iso, parse_rfc3339  # noqa: F401 (parse_rfc3339: part of this module's API)

log = logging.getLogger(__name__)


@dataclass
class SeriesTrace:
    """Everything scored for one series (kept for --plot)."""

    labels: dict[str, str]
    t: list[np.ndarray] = field(default_factory=list)
    y: list[np.ndarray] = field(default_factory=list)
    score: list[np.ndarray] = field(default_factory=list)
    lower: list[np.ndarray] = field(default_factory=list)
    upper: list[np.ndarray] = field(default_factory=list)
    expected: list[np.ndarray] = field(default_factory=list)

    def add(self, b: ScoreBatch) -> None:
        for k in ("t", "y", "score", "lower", "upper", "expected"):
            getattr(self, k).append(getattr(b, k))

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: (np.concatenate(getattr(self, k)) if getattr(self, k) else np.zeros(0))
                for k in ("t", "y", "score", "lower", "upper", "expected")}


def replay_detector(det: MetricDetector, data: dict, start: float, end: float, config: Config,
                    tracker: IncidentTracker, traces: dict | None = None, progress=None) -> dict[str, Any]:
    sched = config.schedule
    fit_t = min(start + sched.warmup, end)
    fits = 0
    while fit_t < end or fits == 0:
        window = {sid: sd.slice((sd.t > fit_t - sched.lookback) & (sd.t <= fit_t)) for sid, sd in data.items()}
        det.fit({k: v for k, v in window.items() if len(v.t)}, fit_t)
        fits += 1
        # the same cadence as the live service: sooner while some series still lacks its real model
        seg_end = min(end, fit_t + (sched.fallback_refit if det.needs_early_refit() else sched.fit_every))
        segment = {sid: sd.slice((sd.t > fit_t) & (sd.t <= seg_end)) for sid, sd in data.items()}
        batches = det.score({k: v for k, v in segment.items() if len(v.t)})
        for b in batches:
            tracker.update(b)
            if traces is not None:
                key = (b.detector, series_id(b.labels))
                traces.setdefault(key, SeriesTrace(b.labels)).add(b)
        if progress is not None:
            progress.update((seg_end - fit_t) / 3600)
        if seg_end >= end:
            break
        fit_t = seg_end
    return {"fits": fits, "series": len(data),
            "models": sorted({sm.kind for sm in det.series.values()})}


def run_backtest(config: Config, client: PromClient, start: float, end: float, *, threshold: float = 1.0,
                 show_progress: bool = True, plot_dir: str | None = None, journal_file: str | None = None,
                 prometheus_url: str | None = None) -> dict[str, Any]:
    from tqdm import tqdm

    if end <= start:
        raise ValueError("--end must be after --start")
    sched = config.schedule
    step = sched.step
    tracker = IncidentTracker(threshold=threshold,
                              min_duration={d.name: d.min_duration for d in config.detectors},
                              merge_gap={d.name: d.merge_gap for d in config.detectors},
                              step=step, keep=None)
    dets = [MetricDetector(d, step) for d in config.detectors if d.enabled]
    first_fit = min(start + sched.warmup, end)
    traces: dict | None = {} if plot_dir else None
    per_detector = []
    wall = time.perf_counter()
    # progress in replayed hours over all detectors
    with tqdm(total=round((end - first_fit) * len(dets) / 3600, 1), desc="backtest", unit="h",
              disable=not show_progress, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} h [{elapsed}<{remaining}"
              "{postfix}]") as bar:
        for det in dets:
            bar.set_postfix_str(det.cfg.name)
            t0 = time.perf_counter()
            data = fetch_series(client, det.cfg, start, end, step, grid=det.cfg.rule == "series_vanished")
            info = replay_detector(det, data, start, end, config, tracker, traces, bar)
            info.update({"detector": det.cfg.name, "kind": det.cfg.kind,
                         "seconds": round(time.perf_counter() - t0, 3)})
            per_detector.append(info)
    tracker.flush()
    incidents: list[Incident] = sorted(tracker.closed, key=lambda i: (i.start, i.detector))
    report_incidents = [i.to_dict(iso) for i in incidents]
    log_part = _journal(journal_file, config, start, end, threshold)
    if log_part is not None:
        report_incidents += log_part.get("incidents", [])
        report_incidents.sort(key=lambda d: (d["start"], d["detector"]))
    report = {
        "generated_at": iso(time.time()),
        "range": {"start": iso(start), "end": iso(end), "step_seconds": step,
                  "scored_from": iso(first_fit)},
        "source": {"prometheus_url": prometheus_url or config.prometheus.url,
                   "config": config.source, "journal_file": journal_file},
        "params": {"threshold": threshold, "fit_every_seconds": sched.fit_every,
                   "lookback_seconds": sched.lookback, "warmup_seconds": sched.warmup},
        "detectors": per_detector,
        "incidents": report_incidents,
        "summary": {"incidents": len(report_incidents),
                    "by_detector": _count(d["detector"] for d in report_incidents),
                    "wall_seconds": round(time.perf_counter() - wall, 2)},
    }
    if log_part is not None:
        report["logs"] = {k: v for k, v in log_part.items() if k != "incidents"}
    if plot_dir and traces is not None:
        report["plots"] = plot_incidents(incidents, traces, Path(plot_dir), threshold)
    return report


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def _journal(journal_file: str | None, config: Config, start: float, end: float, threshold: float):
    """Hand the journal to the log side when it provides `detector.logs.backtest.run_journal_backtest`."""
    if not journal_file:
        return None
    if not Path(journal_file).is_file():
        raise FileNotFoundError(f"--journal-file: no such file: {journal_file}")
    try:
        mod = importlib.import_module("detector.logs.backtest")
        hook = mod.run_journal_backtest
    except (ImportError, AttributeError):
        log.warning("--journal-file %s accepted but ignored: this build has no log backtest "
                    "(detector.logs.backtest.run_journal_backtest)", journal_file)
        return {"status": "ignored: log detection not available in this build"}
    return hook(journal_file, config=config, start=start, end=end, threshold=threshold)


def plot_incidents(incidents: list[Incident], traces: dict, out_dir: Path, threshold: float) -> list[str]:
    """One PNG per incident: the series with its band and the flagged points, an hour either side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for n, inc in enumerate(incidents, 1):
        tr = traces.get((inc.detector, series_id(inc.series_labels)))
        if tr is None:
            continue
        a = tr.arrays()
        pad = max(3600.0, inc.end - inc.start)
        m = (a["t"] >= inc.start - pad) & (a["t"] <= inc.end + pad)
        if not m.any():
            continue
        t = [datetime.fromtimestamp(x, tz=UTC) for x in a["t"][m]]
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 5), sharex=True, height_ratios=[3, 1])
        ax.plot(t, a["y"][m], lw=1, label="value")
        if np.isfinite(a["lower"][m]).any():
            ax.fill_between(t, a["lower"][m], a["upper"][m], alpha=0.2, label="expected band", step="mid")
        flagged = np.nan_to_num(a["score"][m]) > threshold
        ax.scatter(np.array(t)[flagged], a["y"][m][flagged], s=10, color="red", label="anomalous", zorder=3)
        ax.axvspan(datetime.fromtimestamp(inc.start, tz=UTC),
                   datetime.fromtimestamp(inc.end, tz=UTC), color="red", alpha=0.08)
        ax.set_title(inc.summary[:110], fontsize=8)
        ax.legend(fontsize=7, loc="upper left")
        ax2.plot(t, a["score"][m], lw=1, color="black")
        ax2.axhline(threshold, color="red", lw=0.8, ls="--")
        ax2.set_ylabel("score")
        labels = "_".join(f"{v}" for _, v in sorted(inc.labels.items()))[:60]
        name = f"{n:03d}_{inc.detector}_{labels}".replace("/", "_").replace(" ", "_") + ".png"
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=80)
        plt.close(fig)
        written.append(str(out_dir / name))
    return written


def write_report(report: dict, path: str) -> None:
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, allow_nan=False, default=str))
    tmp.replace(p)
