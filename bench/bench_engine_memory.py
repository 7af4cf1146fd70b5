"""Resident memory of a `serve`-like detector holding 2,000 series, in steady state.

bench_scoring_scale.py measures the models alone; this one holds them the way `rigwatch-detector
serve` does: a DetectorService (engine MetricDetectors, incident tracker, snapshot) built from a
config, with everything serve imports (Flask app, waitress, APScheduler, prometheus_client)
loaded, each detector fitted on 7 days of 1-minute synthetic data and saved to a real on-disk
model store, the training data dropped, then scoring cycles where every series scores one new
point, the snapshot is published and /metrics is rendered. Prometheus is not involved (the data
are handed to the detectors directly), so only the sidecar's own memory is measured.

    .venv/bin/python bench/bench_engine_memory.py [--seasonal 1700 --robust 260 --thermal 30
                                                  --iforest 10] [--days 7] [--cycles 5]

Prints RSS after imports, after fitting (steady state: models only), after the scoring cycles,
and the peak (VmHWM, reached while fitting and saving).
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchlib import add_series_mix_args, proc_status_mb  # noqa: E402

CONFIG = """
prometheus: {url: "http://127.0.0.1:1"}
schedule: {step: 60s, lookback: 7d, context: 1h}
detectors:
  - {name: seasonal, query: s, model: seasonal_esd, direction: up}
  - {name: robust, query: r, model: robust_z}
  - {name: thermal, query: t, model: thermal, features: {power: p}, params: {lagged: [power]},
     direction: up, min_deviation: 10}
  - {name: joint, query: j, model: iforest, features: {power: p, sm_clock: c, memory_activity: m}}
"""


def series(kind: str, i: int, t: np.ndarray, rng: np.random.Generator):
    """-> (y, X or None) of one synthetic series of the detector `kind`."""
    n = len(t)
    if kind == "seasonal":
        phase = 2 * np.pi * np.arange(n) / 1440
        return 40 + rng.uniform(2, 10) * np.sin(phase + rng.uniform(0, 6)) + rng.normal(0, 1, n), None
    if kind == "robust":
        return 10 + rng.normal(0, 1, n), None
    P = np.repeat(rng.uniform(20, 350, n // 30 + 1), 30)[:n]
    if kind == "thermal":
        temp = np.empty(n)
        x = 35.0
        for k in range(n):
            x += (30 + 0.12 * P[k] - x) * 0.5
            temp[k] = x
        return temp + rng.normal(0, 0.5, n), P[:, None]
    util = np.clip(P / 350 + rng.normal(0, 0.05, n), 0, 1)
    X = np.c_[P / 350, 1.4e9 + 4e8 * util + rng.normal(0, 1e7, n), 0.7 * util]
    return util, X


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_series_mix_args(ap)
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=100, help="series fitted per engine fit call")
    a = ap.parse_args(argv)

    # everything `serve` imports, so the baseline is the real one
    import statsmodels.tsa.seasonal  # noqa: F401
    import waitress  # noqa: F401
    from apscheduler.schedulers.background import BackgroundScheduler  # noqa: F401
    from prometheus_client import CollectorRegistry, generate_latest

    from detector.api import create_app
    from detector.config import load_config
    from detector.fetch import SeriesData
    from detector.metric_plugin import MetricPlugin
    from detector.metrics import DetectorCollector
    from detector.persistence import FilePersistence
    from detector.plugins import build_service
    from detector.promclient import PromClient
    from detector.store import ModelStore

    rss_imports = proc_status_mb("VmRSS")
    cfg = load_config(text=CONFIG)
    store_dir = tempfile.mkdtemp(prefix="rigwatch-bench-store-")
    store = ModelStore(FilePersistence(store_dir))
    now = [time.time()]
    svc = build_service(cfg, client=PromClient(cfg.prometheus.url, retries=0), store=store, clock=lambda: now[0])
    (metric_side,) = [p for p in svc.plugins if isinstance(p, MetricPlugin)]
    create_app(svc)  # the Flask app holds the service, as in serve
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DetectorCollector(lambda: svc.snapshot, svc.extra_families))

    step = 60.0
    n = int(a.days * 1440)
    t = 1.7e9 + step * np.arange(n)
    end = float(t[-1])
    rng = np.random.default_rng(0)
    counts = {"seasonal": a.seasonal, "robust": a.robust, "thermal": a.thermal, "joint": a.iforest}
    t0 = time.perf_counter()
    for name, count in counts.items():
        det = metric_side.detectors[name]
        names = list(det.cfg.features)
        for c0 in range(0, count, a.chunk):
            data = {}
            for i in range(c0, min(count, c0 + a.chunk)):
                y, X = series(name, i, t, rng)
                labels = {"__name__": name, "job": "node", "instance": "aibox:9100", "series": str(i)}
                data[f"{name}-{i}"] = SeriesData(labels, t, y, X, names)
            det.fit(data, end)
            meta = det.fit_metadata(data, end - a.days * 86400, end)
            del data
        mv = store.save(name, det.get_state(), meta)  # serve saves every fit: same memory path
        det.version = mv.version
    fit_s = time.perf_counter() - t0
    gc.collect()
    rss_fitted = proc_status_mb("VmRSS")

    now[0] = end + step * (a.cycles + 1)  # the published snapshot keeps fresh points only
    cycle_s, parts = [], {"score": [], "record": [], "publish": [], "render": []}
    for c in range(a.cycles):
        tn = np.array([end + step * (c + 1)])
        data = {}
        for name, det in metric_side.detectors.items():
            names = list(det.cfg.features)
            data[name] = {}
            for sid, sm in det.series.items():
                y, X = series(name, 0, np.zeros(1), rng)
                data[name][sid] = SeriesData(sm.labels, tn, y[:1], None if X is None else X[:1], names)
        took = dict.fromkeys(parts, 0.0)
        c0 = time.perf_counter()
        for name, det in metric_side.detectors.items():
            p0 = time.perf_counter()
            batches = det.score(data[name])
            p1 = time.perf_counter()
            svc.record(batches)
            took["score"] += p1 - p0
            took["record"] += time.perf_counter() - p1
        p0 = time.perf_counter()
        svc._publish()
        p1 = time.perf_counter()
        body = generate_latest(registry)
        took["publish"], took["render"] = p1 - p0, time.perf_counter() - p1
        cycle_s.append(time.perf_counter() - c0)
        for k, v in took.items():
            parts[k].append(v)
    gc.collect()
    rss_after = proc_status_mb("VmRSS")
    total = metric_side.series_tracked()
    print(f"series: {total} (seasonal_esd {a.seasonal}, robust_z {a.robust}, thermal {a.thermal}, "
          f"iforest {a.iforest}); history {a.days:g} days x 1 min = {n} points each")
    print(f"fit + save through the engine: {fit_s:.1f} s; /metrics body {len(body) / 1024:.0f} KiB, "
          f"{body.count(b'rigwatch_anomaly_score{')} score samples")
    print(f"scoring cycle through the engine (+ record, publish, /metrics render): median "
          f"{np.median(cycle_s):.3f} s, max {np.max(cycle_s):.3f} s over {a.cycles} cycles; of which (medians) "
          + ", ".join(f"{k} {np.median(v):.3f} s" for k, v in parts.items())
          + " (render: one /metrics scrape, which Prometheus makes on its own schedule)")
    print(f"RSS: after serve's imports {rss_imports:.0f} MB, fitted (steady state) {rss_fitted:.0f} MB, "
          f"after scoring cycles {rss_after:.0f} MB, peak (VmHWM) {proc_status_mb('VmHWM'):.0f} MB")
    shutil.rmtree(store_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
