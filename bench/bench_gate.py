"""The promotion gate at fleet scale: the 2,000-series mix (bench/benchlib.py), 7 days at 1 min.

Each detector of the mix (seasonal_esd, robust_z, thermal, iforest; their share as
bench_scoring_scale holds them) is fitted as the champion on its lookback up to one refit ago, and
as the challenger without the newest `--holdout-hours` (what the gate's fit does); then the gate
(detector/gate.py, as MetricPlugin's gate closure runs it) copies both from their states and
replays them on the held-out window through the backtest's tracker. A few series get a spike in
the held-out window, so the replay opens incidents. Printed: the two fits' seconds next to the
gate's (state copies and replay), and the decision of each detector.

    .venv/bin/python bench/bench_gate.py [--seasonal 1700 --robust 260 --thermal 30 --iforest 10]
                                         [--days 7] [--holdout-hours 24]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchlib import add_series_mix_args  # noqa: E402

from detector.config import load_config  # noqa: E402
from detector.fetch import SeriesData  # noqa: E402
from detector.gate import evaluate  # noqa: E402
from detector.metric_detector import MetricDetector  # noqa: E402
from detector.plugin import IncidentPolicy  # noqa: E402

STEP = 60.0
END = 1.8e9
CFG = """
schedule: {step: 60s, lookback: 7d, fit_every: 6h}
detectors:
  - {name: seasonal, query: s, model: seasonal_esd}
  - {name: robust, query: r, model: robust_z}
  - {name: thermal, query: t, model: thermal, features: {power: p, fan: f}, params: {lagged: [power]}}
  - {name: iforest, query: i, model: iforest, features: {a: a, b: b, c: c, d: d, e: e, f: f}}
"""


def series(kind: str, n: int, t: np.ndarray, rng) -> dict[str, SeriesData]:
    out = {}
    m = len(t)
    phase = 2 * np.pi * (t % 86400) / 86400
    for i in range(n):
        labels = {"instance": f"host{i // 8}", "gpu": str(i % 8)}
        X, names = None, []
        if kind == "seasonal":
            y = 40 + rng.uniform(2, 10) * np.sin(phase + rng.uniform(0, 6)) + rng.normal(0, 1, m)
        elif kind == "robust":
            y = 10 + rng.normal(0, 1, m)
        elif kind == "thermal":
            P = np.repeat(rng.uniform(30, 350, m // 30 + 1), 30)[:m]
            fan = np.clip(30 + 0.2 * P, 30, 100)
            y = 30 + 0.12 * P + rng.normal(0, 0.5, m)
            X, names = np.c_[P, fan], ["power", "fan"]
        else:
            X, names = rng.normal(0, 1, (m, 6)), list("abcdef")
            y = X[:, 0]
        if i % 50 == 0:  # a 20-minute spike in the held-out day: incidents to count
            y = np.where((t > END - 6 * 3600) & (t <= END - 6 * 3600 + 1200), y + 30, y)
            if X is not None and kind == "iforest":
                X = X.copy()
                X[(t > END - 6 * 3600) & (t <= END - 6 * 3600 + 1200)] += 8
        out[f"{kind}{i}"] = SeriesData(labels, t, y, X, names)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_series_mix_args(ap)
    ap.add_argument("--holdout-hours", type=float, default=24.0)
    a = ap.parse_args(argv)
    config = load_config(text=CFG)
    gate = config.gate
    holdout = a.holdout_hours * 3600
    t = np.arange(END - a.days * 86400, END + STEP, STEP)
    rng = np.random.default_rng(0)
    counts = {"seasonal": a.seasonal, "robust": a.robust, "thermal": a.thermal, "iforest": a.iforest}
    total = {"champion fit": 0.0, "challenger fit": 0.0, "gate copies": 0.0, "gate replay": 0.0}
    lines = []
    for cfg in config.detectors:
        n = counts[cfg.name]
        if n == 0:
            continue
        data = series(cfg.name, n, t, rng)
        champion = MetricDetector(cfg, STEP)
        t0 = time.perf_counter()
        champion.fit(data, END - config.schedule.fit_every)  # fitted one refit ago
        total["champion fit"] += time.perf_counter() - t0
        challenger = MetricDetector(cfg, STEP)
        t0 = time.perf_counter()
        challenger.fit(data, END - holdout)
        total["challenger fit"] += time.perf_counter() - t0
        champ_state, chall_state = champion.get_state(), challenger.get_state()
        t0 = time.perf_counter()
        champ, chall = MetricDetector(cfg, STEP), MetricDetector(cfg, STEP)  # what the gate closure does
        champ.set_state(champ_state)
        chall.set_state(chall_state)
        total["gate copies"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        d = evaluate(cfg.name, 2, champ, chall, data, start=float(t[0]), end=END, holdout=holdout, labels=[],
                     rule=gate, policy={cfg.name: IncidentPolicy(cfg.min_duration, cfg.merge_gap, cfg.onsets)},
                     quiet=None, step=STEP)
        total["gate replay"] += time.perf_counter() - t0
        lines.append(f"  {cfg.name:9s} {n:5d} series: {d.outcome}: {d.reason}")
    n = sum(counts.values())
    print(f"series {n} ({', '.join(f'{k} {v}' for k, v in counts.items())}); {a.days:g} days at 1 min, "
          f"held-out window {a.holdout_hours:g} h ({int(holdout / STEP)} points a series, each model)")
    print("\n".join(lines))
    gate_s = total["gate copies"] + total["gate replay"]
    print(f"fit: champion {total['champion fit']:.1f} s, challenger {total['challenger fit']:.1f} s")
    print(f"gate: {gate_s:.1f} s (state copies {total['gate copies']:.1f} s, replay of both models "
          f"{total['gate replay']:.1f} s) = {100 * gate_s / total['challenger fit']:.0f} % of the fit")


if __name__ == "__main__":
    main()
