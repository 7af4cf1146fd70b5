"""The operator labels as metrics, built fresh on every scrape (collector style) from the label store
and the config's maintenance windows:

    rigwatch_feedback_labels{detector,label}   stored feedback per detector and verdict
                                                (label: true_positive | false_positive)
    rigwatch_maintenance_windows{state}        windows in force now (active) or later (scheduled)

Cardinality stays bounded: detectors x 2 verdicts, and two states. Every configured detector has
both verdicts (0 when none is stored) so a dashboard shows a zero rather than no data; a detector
removed from the config keeps its row while labels of it are stored.
"""
from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily, Metric

from detector.labels import VERDICTS, LabelStore, MaintenanceWindow

WINDOW_STATES = ("active", "scheduled")


def feedback_family(labels: LabelStore | None, detectors: Iterable[str]) -> Metric:
    counts = {(d, v): 0 for d in detectors for v in VERDICTS}
    for f in labels.feedback() if labels is not None else ():
        counts[(f.detector, f.label)] = counts.get((f.detector, f.label), 0) + 1
    fam = GaugeMetricFamily("rigwatch_feedback_labels", "Feedback labels stored per detector and verdict "
                            "(true_positive: left out of training; false_positive: kept in as normal); "
                            "the promotion gate's labels", labels=["detector", "label"])
    for (detector, verdict), n in sorted(counts.items()):
        fam.add_metric([detector, verdict], n)
    return fam


def maintenance_family(windows: Iterable[MaintenanceWindow], now: float) -> Metric:
    counts = dict.fromkeys(WINDOW_STATES, 0)
    for w in windows:
        if w.start <= now <= w.end:
            counts["active"] += 1
        elif w.start > now:
            counts["scheduled"] += 1  # a window that is over counts nowhere
    fam = GaugeMetricFamily("rigwatch_maintenance_windows", "Maintenance windows (the config's and the stored "
                            "ones) in force now (active) or starting later (scheduled)", labels=["state"])
    for state in WINDOW_STATES:
        fam.add_metric([state], counts[state])
    return fam


def label_families(labels: LabelStore | None, config_windows: Iterable[MaintenanceWindow],
                   detectors: Iterable[str], now: float) -> tuple[Metric, Metric]:
    stored = labels.maintenance() if labels is not None else []
    return feedback_family(labels, detectors), maintenance_family([*config_windows, *stored], now)
