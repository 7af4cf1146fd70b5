"""The promotion gate: a refit (the challenger) replaces the champion only if it does no worse.

The challenger was fitted on its lookback without the newest `holdout` seconds. Both models, each with
its state fixed (no refit inside), are replayed through an IncidentTracker exactly as `backtest`
scores (detector.replay.replay_segment, the detector's incident policy, the maintenance quiet mask) on
the evaluation windows: the held-out window [end - holdout, end], and every feedback-labelled window
inside the lookback (confirmed true positives were left out of training, so they are out-of-sample;
false positives were trained on as normal and must stay silent). The rule (`judge`):

    promoted iff  challenger incidents  <= champion incidents  + max_extra_incidents
             and  challenger alarm time <= champion alarm time + max_extra_alarm
             and  no challenger incident overlaps a false-positive label (its detector and series)
             and  every true-positive label is overlapped by a challenger incident on its series

Alarm time is the summed duration of the incidents (over series). Pure: data and states in, a
Decision out; the metric plugin wires it into Registry.propose.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from detector.config import GateConfig
from detector.fetch import SeriesData
from detector.incidents import Incident, IncidentTracker
from detector.labels import Feedback
from detector.metric_detector import MetricDetector
from detector.plugin import IncidentPolicy
from detector.registry import Decision
from detector.replay import replay_segment

Quiet = Callable[[str, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Replayed:
    """One model's incidents over the evaluation windows."""

    incidents: tuple[Incident, ...]

    @property
    def count(self) -> int:
        return len(self.incidents)

    @property
    def alarm_seconds(self) -> float:
        return float(sum(i.duration() for i in self.incidents))


def evaluation_windows(start: float, end: float, holdout: float,
                       labels: Sequence[Feedback]) -> list[tuple[float, float]]:
    """The held-out window and every label's window clipped to [start, end], merged, in time order."""
    spans = sorted([(end - holdout, end)] + [(max(f.start, start), min(f.end, end)) for f in labels
                                              if f.end >= start and f.start <= end])
    merged: list[list[float]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(lo, hi) for lo, hi in merged]


def replay(det: MetricDetector, data: dict[str, SeriesData], windows: Sequence[tuple[float, float]], *,
           policy: dict[str, IncidentPolicy], quiet: Quiet | None, step: float,
           threshold: float = 1.0) -> Replayed:
    """`det` (a copy: scoring moves its series' last points) over each window in turn. Each window is
    scored from its start whatever the model saw before: the champion was trained on part of it."""
    tracker = IncidentTracker(threshold=threshold, policy=policy, step=step, keep=None, quiet=quiet)
    for lo, hi in windows:
        for sm in det.series.values():
            sm.last_t = lo
        replay_segment(det, data, lo, hi, tracker)
    tracker.flush()
    return Replayed(tuple(tracker.closed))


def _overlaps(inc: Incident, f: Feedback) -> bool:
    return inc.detector == f.detector and inc.start <= f.end and inc.end >= f.start and \
        bool(f.covers(inc.detector, inc.series_labels, np.array([max(inc.start, f.start)]))[0])


def _dur(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def judge(detector: str, version: int, champion: Replayed, challenger: Replayed, labels: Sequence[Feedback],
          rule: GateConfig, *, holdout: float, seconds: float = 0.0) -> Decision:
    """The rule above; the reason names each failing rule with its numbers (or, promoted, the figures)."""
    fps = [f for f in labels if f.label == "false_positive"]
    tps = [f for f in labels if f.label == "true_positive"]
    fp_hits = sum(1 for i in challenger.incidents if any(_overlaps(i, f) for f in fps))
    missed = sum(1 for f in tps if not any(_overlaps(i, f) for i in challenger.incidents))
    figures = {"champion_incidents": float(champion.count), "challenger_incidents": float(challenger.count),
               "champion_alarm_seconds": champion.alarm_seconds,
               "challenger_alarm_seconds": challenger.alarm_seconds,
               "false_positive_hits": float(fp_hits), "true_positives_missed": float(missed),
               "holdout_seconds": float(holdout), "gate_seconds": round(float(seconds), 3)}
    counts = f"{challenger.count} incidents vs champion {champion.count} (+{rule.max_extra_incidents} allowed)"
    alarm = (f"alarm {_dur(challenger.alarm_seconds)} vs champion {_dur(champion.alarm_seconds)} "
             f"(+{_dur(rule.max_extra_alarm)} allowed)")
    failed = []
    if challenger.count > champion.count + rule.max_extra_incidents:
        failed.append(counts)
    if challenger.alarm_seconds > champion.alarm_seconds + rule.max_extra_alarm:
        failed.append(alarm)
    if fp_hits:
        failed.append(f"{fp_hits} incident(s) on windows marked false positive")
    if missed:
        failed.append(f"{missed} of {len(tps)} confirmed incident(s) missed")
    if failed:
        return Decision(detector, version, "rejected", "; ".join(failed), figures)
    found = f", {len(tps)}/{len(tps)} confirmed incidents found" if tps else ""
    return Decision(detector, version, "promoted", f"{counts}, {alarm}{found}", figures)


def evaluate(detector: str, version: int, champion: MetricDetector, challenger: MetricDetector,
             data: dict[str, SeriesData], *, start: float, end: float, holdout: float,
             labels: Sequence[Feedback], rule: GateConfig, policy: dict[str, IncidentPolicy],
             quiet: Quiet | None, step: float, clock: Callable[[], float] = time.perf_counter) -> Decision:
    """Replay both models (copies the caller gives away) on the evaluation windows and judge."""
    t0 = clock()
    windows = evaluation_windows(start, end, holdout, labels)
    kw = {"policy": policy, "quiet": quiet, "step": step}
    champ, chall = replay(champion, data, windows, **kw), replay(challenger, data, windows, **kw)
    return judge(detector, version, champ, chall, labels, rule, holdout=holdout, seconds=clock() - t0)
