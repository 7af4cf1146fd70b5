"""A fleet's detector at 20,000 series (the 2,000-series mix of bench_scoring_scale, ten times over:
ten boxes), to size replicas. Two parts:

score   one replica holding all 20,000: the 2,000-series mix fitted once, each model restored ten
        times from its stored state (what a restart loads: independent objects, the same sizes);
        scoring cycles of one new point per series, the univariate ones batched as the service scores
        them (detector/models/batch.py), then one by one for comparison, then through the detector
        (MetricDetector.score); steady RSS. Goal: cycle <= 2 s, RSS <= 1.5 GB.
fit     the same 20,000 series fitted over 1, 2 and 4 shards, each shard a process of its own that
        keeps the series detector/sharding.py gives it (the product's ownership: a GPU's series by
        its uuid, the others by their labels) and fits only those: per shard its series, wall time
        and CPU time, and series fitted per CPU-second. Shards share this machine's cores, so with
        more shards than cores the wall time is the cores' and CPU time is the figure to size by.

    .venv/bin/python bench/bench_fleet_scale.py [--part score|fit|both] [--boxes 10] [--shards 1,2,4]
                                               [--seasonal 1700 --robust 260 --thermal 30 --iforest 10]
                                               [--days 7] [--cycles 5]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchlib import MIX_KINDS, add_series_mix_args, fit_mix_series, proc_status_mb, score_cycles  # noqa: E402

STEP = 60.0


def grid(days: float) -> np.ndarray:
    return 1.7e9 + STEP * np.arange(int(days * 1440))


def series_labels(box: int, kind: str, index: int) -> dict[str, str]:
    """A series' labels on box `box`: the GPU series (thermal, iforest) carry their GPU's uuid, which
    is what the product shards them by."""
    labels = {"box": f"box-{box}", "instance": "rigwatch-exporter:9842", "series": f"{kind}-{index}"}
    if kind in ("thermal", "iforest"):
        labels["uuid"] = f"GPU-{box}-{kind}-{index}"
    return labels


def fleet(a) -> list[tuple[int, str, int]]:
    """Every series of the fleet: (box, kind, index within the mix). Box b's series are the mix's
    series drawn afresh (index b * count + i), so no two boxes hold the same data."""
    return [(box, kind, box * getattr(a, kind) + i) for box in range(a.boxes) for kind in MIX_KINDS
            for i in range(getattr(a, kind))]


def score_part(a) -> None:
    import pandas  # noqa: F401  (import costs counted in the baseline, as bench_scoring_scale does)
    import statsmodels.tsa.seasonal  # noqa: F401

    from detector.models.ensemble import Ensemble  # noqa: F401

    t = grid(a.days)
    rss_imports = proc_status_mb()
    t0 = time.perf_counter()
    base = [(kind, fit_mix_series(kind, i, t, a.univariate_model)) for kind in MIX_KINDS
            for i in range(getattr(a, kind))]
    fit_s = time.perf_counter() - t0
    models = [(kind, type(m).from_state(m.get_state())) for _ in range(a.boxes) for kind, m in base]
    del base
    gc.collect()
    rss_fitted = proc_status_mb()
    cycles = score_cycles(models, t[-1], STEP, a.cycles)
    alone = score_cycles(models, t[-1] + STEP * a.cycles, STEP, a.cycles, batched=False)
    through, held = detector_cycles(models, t[-1] + 2 * STEP * a.cycles, a.cycles)
    gc.collect()
    print(f"score: one replica, {len(models)} series ({a.boxes} boxes x the {len(models) // a.boxes}-series mix, "
          f"{a.univariate_model} for the univariate share); mix fitted once in {fit_s:.0f} s, restored {a.boxes}x")
    print(f"  scoring cycle (1 new point per series): median {np.median(cycles):.2f} s, max {np.max(cycles):.2f} s "
          f"over {a.cycles} cycles (goal <= 2 s), the univariate series batched as the service scores them")
    print(f"  the same, every series scored on its own (before the batch): median {np.median(alone):.2f} s")
    print(f"  the {held} univariate series through the detector (MetricDetector.score: new points sliced, "
          f"scored, results built): median {np.median(through):.2f} s")
    print(f"  RSS: after imports {rss_imports:.0f} MB, steady (fitted) {rss_fitted:.0f} MB, "
          f"after cycles {proc_status_mb():.0f} MB (goal <= 1500 MB)")


def detector_cycles(models, t_last: float, cycles: int) -> tuple[list[float], int]:
    """Wall seconds of each cycle of the univariate series through MetricDetector.score, one
    detector per model kind holding its restored models (what `serve` does with the points a pass
    fetched), and how many series they hold."""
    from detector.config import DetectorConfig
    from detector.fetch import SeriesData
    from detector.metric_detector import MetricDetector, SeriesModel

    detectors: dict[str, MetricDetector] = {}
    for i, (_kind, m) in enumerate(models):
        if m.multivariate:
            continue
        det = detectors.setdefault(m.kind, MetricDetector(DetectorConfig(name=m.kind, query="q", model=m.kind), STEP))
        det.series[f"series={i}"] = SeriesModel({"series": str(i)}, m.kind, m, t_last)
    out = []
    for c in range(cycles):
        tn = np.array([t_last + STEP * (c + 1)])
        data = {name: {sid: SeriesData(sm.labels, tn, np.array([40.0])) for sid, sm in det.series.items()}
                for name, det in detectors.items()}
        c0 = time.perf_counter()
        for name, det in detectors.items():
            det.score(data[name])
        out.append(time.perf_counter() - c0)
    return out, sum(len(d.series) for d in detectors.values())


def fit_one_shard(a) -> dict:
    """In a shard's own process: fit the series this shard owns; its figures as JSON."""
    from detector.sharding import parse_shard

    shard = parse_shard(a.fit_shard, "--fit-shard")
    t = grid(a.days)
    owned = [(box, kind, i) for box, kind, i in fleet(a) if shard.owns(series_labels(box, kind, i))]
    w0, c0 = time.perf_counter(), time.process_time()
    for _box, kind, i in owned:
        fit_mix_series(kind, i, t, a.univariate_model)
    return {"shard": str(shard), "series": len(owned), "wall_s": time.perf_counter() - w0,
            "cpu_s": time.process_time() - c0, "rss_mb": proc_status_mb("VmHWM")}


def fit_part(a) -> None:
    total = len(fleet(a))
    print(f"fit: {total} series ({a.boxes} boxes), {a.days:g} days x 1 min each, shards as processes on "
          f"{os.cpu_count()} cores")
    print(f"  {'shards':>6} {'series/shard':>14} {'wall/shard s':>14} {'cpu/shard s':>13} {'series/cpu-s':>13} "
          f"{'wall all s':>11} {'peak RSS/shard MB':>18}")
    base = [sys.executable, os.path.abspath(__file__), "--boxes", str(a.boxes), "--days", str(a.days),
            "--univariate-model", a.univariate_model, *(x for k in MIX_KINDS for x in (f"--{k}", str(getattr(a, k))))]
    for n in a.shards:
        w0 = time.perf_counter()
        procs = [subprocess.Popen([*base, "--fit-shard", f"{i}/{n}"], stdout=subprocess.PIPE, text=True)
                 for i in range(n)]
        results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        wall = time.perf_counter() - w0
        assert sum(r["series"] for r in results) == total, "every series fitted by exactly one shard"
        series = [r["series"] for r in results]
        cpu = sum(r["cpu_s"] for r in results)
        print(f"  {n:>6} {min(series):>6}-{max(series):<7} {max(r['wall_s'] for r in results):>14.0f} "
              f"{max(r['cpu_s'] for r in results):>13.0f} {total / cpu:>13.1f} {wall:>11.0f} "
              f"{max(r['rss_mb'] for r in results):>18.0f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_series_mix_args(ap)
    ap.add_argument("--boxes", type=int, default=10, help="the mix this many times over (default 10: 20,000)")
    ap.add_argument("--part", choices=["score", "fit", "both"], default="both")
    ap.add_argument("--shards", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--univariate-model", default="ensemble", choices=["ensemble", "seasonal_esd"])
    ap.add_argument("--fit-shard", help=argparse.SUPPRESS)  # internal: this process is shard I/N of the fit part
    a = ap.parse_args(argv)
    if a.fit_shard:
        print(json.dumps(fit_one_shard(a)))
        return
    if a.part in ("score", "both"):
        score_part(a)
    if a.part in ("fit", "both"):
        fit_part(a)


if __name__ == "__main__":
    main()
