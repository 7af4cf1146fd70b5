"""What the promotion gate decided, published (bounded: detector, outcome and model labels only).

    rigwatch_detector_gate_decisions_total{detector,outcome}   gate decisions (promoted, rejected)
    rigwatch_detector_gate_incidents{detector,model}           incidents of the last evaluation,
    rigwatch_detector_gate_alarm_seconds{detector,model}       and their alarm time (model: champion
                                                               or challenger)
Only the gate's comparisons count: a first fit (no champion), or a fit with the gate off, is none.
"""
from __future__ import annotations

import threading
from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from detector.registry import Decision

MODELS = ("champion", "challenger")
OUTCOMES = ("promoted", "rejected")


class GateBook:
    def __init__(self):
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self._last: dict[str, dict[str, float]] = {}

    def record(self, decision: Decision) -> None:
        """A fit's decision: counted when the gate compared (its figures are there)."""
        if "champion_incidents" not in decision.figures:
            return
        with self._lock:
            key = (decision.detector, decision.outcome)
            self._counts[key] = self._counts.get(key, 0) + 1
            self._last[decision.detector] = dict(decision.figures)

    def families(self, detectors: Iterable[str] = ()) -> Iterable[Metric]:
        """`detectors`: counted from 0 for both outcomes before their first decision (increase()
        sees the first one); the gauges exist once a detector's refit was evaluated."""
        decisions = CounterMetricFamily("rigwatch_detector_gate_decisions", "Promotion gate decisions on "
                                        "refits (outcome: promoted or rejected)", labels=["detector", "outcome"])
        incidents = GaugeMetricFamily("rigwatch_detector_gate_incidents", "Incidents of champion and challenger "
                                      "on the gate's last evaluation windows", labels=["detector", "model"])
        alarm = GaugeMetricFamily("rigwatch_detector_gate_alarm_seconds", "Alarm time (summed incident "
                                  "durations) of champion and challenger on the gate's last evaluation windows",
                                  labels=["detector", "model"])
        with self._lock:
            counts, last = dict(self._counts), dict(self._last)
        for det in detectors:
            for outcome in OUTCOMES:
                counts.setdefault((det, outcome), 0)
        for (det, outcome), n in sorted(counts.items()):
            decisions.add_metric([det, outcome], n)
        for det, fig in sorted(last.items()):
            for model in MODELS:
                incidents.add_metric([det, model], fig[f"{model}_incidents"])
                alarm.add_metric([det, model], fig[f"{model}_alarm_seconds"])
        return decisions, incidents, alarm

    def forget(self, keep: Iterable[str]) -> None:
        keep = set(keep)
        with self._lock:
            self._counts = {k: v for k, v in self._counts.items() if k[0] in keep}
            self._last = {k: v for k, v in self._last.items() if k in keep}
