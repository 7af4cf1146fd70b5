"""Tracking overhead on a fit cycle of 2,000 series: MetricPlugin.fit (store saves included) with no
tracking vs MLflow tracking into a SQLite backend. The fit hands a record to the background worker;
what it costs the fit is the record's construction and the worker competing for the CPU (and the
GIL) while it logs (and scores the training window for the anomaly rate and draws the PNG of the
most anomalous series: in the worker, after the fit returned). Prints the median fit-cycle time of
each mode, the overhead, and how long the worker took to log each cycle's run after the fit returned.

    .venv/bin/python bench/bench_tracking.py [--series 2000] [--hours 24] [--cycles 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from detector.config import TrackingConfig, load_config  # noqa: E402
from detector.metric_plugin import MetricPlugin  # noqa: E402
from detector.mlflow_tracking import mlflow_tracker  # noqa: E402
from detector.persistence import FilePersistence  # noqa: E402
from detector.promclient import PromClient, Series  # noqa: E402
from detector.store import ModelStore  # noqa: E402

STEP = 60.0
NOW = 1.8e9


class MemoryPrometheus(PromClient):
    """The fetched answer, already in memory: the bench times the fit, not HTTP or JSON."""

    def __init__(self, n: int, hours: float):
        super().__init__("http://bench.invalid")
        rng = np.random.default_rng(0)
        self.t = np.arange(NOW - hours * 3600, NOW + STEP, STEP)
        self.series = [Series({"instance": f"host{i // 8}", "gpu": str(i % 8), "job": "bench"},
                              self.t, 40 + rng.normal(0, 1, len(self.t))) for i in range(n)]

    def query_range(self, promql, start, end, step):
        keep = (self.t >= start) & (self.t <= end)
        return [Series(s.labels, s.t[keep], s.y[keep]) for s in self.series]


def cycles(plugin: MetricPlugin, n: int, tracker=None) -> tuple[list[float], list[float]]:
    fit_s, logged_s = [], []
    for i in range(n):
        started = time.perf_counter()
        assert plugin.fit(NOW + i * 3600)
        fit_s.append(time.perf_counter() - started)
        if tracker is not None:  # let the worker finish before the next cycle, as an hourly fit would
            done = time.perf_counter()
            assert tracker.flush(120)
            logged_s.append(time.perf_counter() - done)
    return fit_s, logged_s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=2000)
    ap.add_argument("--hours", type=float, default=24)
    ap.add_argument("--cycles", type=int, default=5)
    a = ap.parse_args(argv)
    cfg = load_config(text=f"""
schedule: {{step: 60s, lookback: {int(a.hours)}h}}
detectors: [{{name: bench, query: bench_metric, model: robust_z}}]
""")
    client = MemoryPrometheus(a.series, a.hours)
    with tempfile.TemporaryDirectory() as tmp:
        plain = MetricPlugin(cfg, client, store=ModelStore(FilePersistence(f"{tmp}/plain")))
        base, _ = cycles(plain, a.cycles)
        tracker = mlflow_tracker(TrackingConfig(f"sqlite:///{tmp}/mlflow.db"))
        tracked_plugin = MetricPlugin(cfg, client, store=ModelStore(FilePersistence(f"{tmp}/tracked")),
                                      tracker=tracker)
        tracked, logged = cycles(tracked_plugin, a.cycles, tracker)
        tracker.close(10)
        # each cycle: its run, and the aliases mirrored after the registry's decision
        assert tracker.logged == 2 * a.cycles and tracker.errors == 0, (tracker.logged, tracker.errors)
    # the first tracked cycle also imports mlflow and creates the database, in the worker
    b, t = statistics.median(base), statistics.median(tracked[1:] or tracked)
    print(f"fit cycle of {a.series} series x {len(client.t)} points, robust_z, {a.cycles} cycles each")
    print(f"  no tracking:      median {b:.3f} s   ({', '.join(f'{x:.3f}' for x in base)})")
    print(f"  mlflow (sqlite):  median {t:.3f} s   ({', '.join(f'{x:.3f}' for x in tracked)})  "
          f"[first cycle includes the worker's mlflow import and database creation]")
    print(f"  overhead:         {t - b:+.3f} s  ({(t - b) / b * 100:+.1f} %)")
    print(f"  run logged after the fit returned: {', '.join(f'{x:.2f}' for x in logged)} s")


if __name__ == "__main__":
    main()
