"""Custom collector: the latest finished Snapshot as fresh metric families on every scrape.

Nothing is computed here (no queries, no scoring): `snapshot_source()` returns the snapshot the
jobs swapped in. Score families carry each source series' own labels (job/instance included, GPU
series keyed on uuid) plus `detector` and `model`, so their label sets differ per detector; the
samples are therefore built directly rather than through a fixed labelnames list.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.samples import Sample

from detector.service import Snapshot

_RESERVED = ("detector", "model")


def _score_labels(s) -> dict[str, str]:
    labels = {k: v for k, v in s.labels.items() if k not in _RESERVED and v != ""}
    # a source label that clashes with ours keeps its value under an exported_ prefix, as Prometheus does
    for k in _RESERVED:
        if k in s.labels:
            labels[f"exported_{k}"] = s.labels[k]
    labels["detector"] = s.detector
    labels["model"] = s.model
    return labels


class DetectorCollector:
    def __init__(self, snapshot_source: Callable[[], Snapshot],
                 extra_families: Callable[[], Iterable[Metric]] | None = None):
        self.snapshot_source = snapshot_source
        self.extra_families = extra_families

    def describe(self):
        return []  # families vary with the config: skip registry-time collection

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot_source()
        fams = {
            "score": Metric("rigwatch_anomaly_score", "Anomaly score (>= 0; > 1 anomalous at the configured "
                            "sensitivity) of the latest scored point", "gauge"),
            "value": Metric("rigwatch_anomaly_value", "Observed value of the latest scored point (what the "
                            "score judges; alert descriptions quote it)", "gauge"),
            "expected": Metric("rigwatch_anomaly_expected", "Value the model expected for the latest point",
                               "gauge"),
            "lower": Metric("rigwatch_anomaly_lower", "Lower edge of the model's normal band", "gauge"),
            "upper": Metric("rigwatch_anomaly_upper", "Upper edge of the model's normal band", "gauge"),
        }
        for s in snap.scores:
            labels = _score_labels(s)
            for k, fam in fams.items():
                v = getattr(s, k)
                if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v) and k == "score")):
                    continue  # no opinion (too little history) or no band: omit rather than lie
                fam.samples.append(Sample(fam.name, labels, float(v)))
        yield from fams.values()

        last = GaugeMetricFamily("rigwatch_detector_last_success_timestamp_seconds",
                                 "Unix time the task last finished successfully", labels=["task"])
        for task, ts in sorted(snap.last_success.items()):
            last.add_metric([task], ts)
        yield last
        up = GaugeMetricFamily("rigwatch_detector_source_up", "1 if the last request to the source succeeded",
                               labels=["source"])
        for src, v in sorted(snap.source_up.items()):
            up.add_metric([src], v)
        yield up
        yield GaugeMetricFamily("rigwatch_detector_series_tracked", "Series with a model or rule state",
                                value=snap.series_tracked)
        dur = GaugeMetricFamily("rigwatch_detector_task_duration_seconds", "Wall time of the task's last run",
                                labels=["task"])
        for task, d in sorted(snap.durations.items()):
            dur.add_metric([task], d)
        yield dur
        err = CounterMetricFamily("rigwatch_detector_source_errors", "Failed requests to the source "
                                  "(every attempt, retries included)", labels=["source"])
        for src, n in sorted(snap.source_errors.items()):
            err.add_metric([src], n)
        yield err
        info = GaugeMetricFamily("rigwatch_detector_model_info", "Model kind and stored version per detector",
                                 labels=["detector", "model", "version"])
        for det, model, version in snap.model_info:
            info.add_metric([det, model, version], 1)
        yield info
        yield GaugeMetricFamily("rigwatch_detector_config_last_reload_successful",
                                "1 if the last config reload was taken (a refused one keeps the running config)",
                                value=snap.config_reload_ok)
        yield GaugeMetricFamily("rigwatch_detector_config_last_reload_success_timestamp_seconds",
                                "Unix time the running config was loaded (start-up or the last taken reload)",
                                value=snap.config_reload_success_time)
        if self.extra_families is not None:
            yield from self.extra_families()
