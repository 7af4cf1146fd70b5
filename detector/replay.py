"""Replay: a metric detector's scores over past data through an IncidentTracker, as `backtest` does.

    replay_detector   the backtest's replay: fits on the live cadence, each point scored once by the
                      model fitted before it
    replay_segment    the one scoring step both use: the points in (lo, hi] scored by the model as it
                      stands, fed to the tracker (the promotion gate replays champion and challenger
                      with it, each with its state fixed, detector/gate.py)
"""
from __future__ import annotations

from typing import Any

from detector.config import Config
from detector.fetch import SeriesData
from detector.incident_plots import SeriesTrace
from detector.incidents import IncidentTracker
from detector.labels import Exclusions
from detector.metric_detector import MetricDetector
from detector.scores import series_id


def replay_segment(det: MetricDetector, data: dict[str, SeriesData], lo: float, hi: float,
                   tracker: IncidentTracker, traces: dict | None = None) -> None:
    """Score the points in (lo, hi] that `det` has not seen yet and feed them to `tracker`."""
    segment = {sid: sd.slice((sd.t > lo) & (sd.t <= hi)) for sid, sd in data.items()}
    for b in det.score({k: v for k, v in segment.items() if len(v.t)}):
        tracker.update(b)
        if traces is not None:
            key = (b.detector, series_id(b.labels))
            traces.setdefault(key, SeriesTrace(b.labels)).add(b)


def replay_detector(det: MetricDetector, data: dict[str, SeriesData], start: float, end: float, config: Config,
                    tracker: IncidentTracker, traces: dict | None = None, progress=None,
                    exclusions: Exclusions | None = None) -> dict[str, Any]:
    """One detector over [start, end] with the live cadence: fits at warmup, every fit_every (sooner
    while a series lacks its real model), each point scored once by the model fitted before it."""
    sched = config.schedule
    fit_t = min(start + sched.warmup, end)
    fits = 0
    while fit_t < end or fits == 0:
        window = {sid: sd.slice((sd.t > fit_t - sched.lookback) & (sd.t <= fit_t)) for sid, sd in data.items()}
        det.fit({k: v for k, v in window.items() if len(v.t)}, fit_t, exclusions)
        fits += 1
        seg_end = min(end, fit_t + (sched.fallback_refit if det.needs_early_refit() else sched.fit_every))
        replay_segment(det, data, fit_t, seg_end, tracker, traces)
        if progress is not None:
            progress.update((seg_end - fit_t) / 3600)
        if seg_end >= end:
            break
        fit_t = seg_end
    return {"fits": fits, "series": len(data),
            "models": sorted({sm.kind for sm in det.series.values()})}
