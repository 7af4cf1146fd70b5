"""Seasonal hybrid ESD: fit speed and detection quality of the fast decomposition vs full STL.

Simulates 7-day, 1-minute series (period 1440) with a daily pattern, a slow trend and noise, and
injects spikes, level shifts and variance changes (numpy, seeded).  Each series is decomposed by

* ``stl``      — statsmodels STL at full resolution, default settings (the slow reference),
* ``stl_jump`` — STL at full resolution with R's jump settings (loess every ~tenth of a window),
* ``fast``     — rigwatch's default: jump-STL on a 5x downsampled copy for the trend + a robust
                 per-phase seasonal profile at full resolution,

then batch generalized ESD (median/MAD, alpha 0.05, at most 2 % outliers) flags points.  Printed
per method: fit time (whole SeasonalESD.fit for fast, decompose+ESD for the others), precision
over flagged points, point recall and event recall (an event counts when any of its points is
flagged) per anomaly type.

    .venv/bin/python bench/bench_seasonal.py [--series 6] [--seed 0] [--skip-full]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from detector.models.seasonal import SeasonalESD  # noqa: E402

N, PERIOD, STEP = 7 * 1440, 1440, 60.0


def simulate(seed: int):
    """-> (t, y, events) with events = list of (kind, start, end) index ranges (end exclusive)."""
    rng = np.random.default_rng(seed)
    i = np.arange(N)
    ph = 2 * np.pi * i / PERIOD
    sigma = rng.uniform(0.5, 2.0)
    amp = rng.uniform(3, 10) * sigma
    pattern = amp * (np.sin(ph - rng.uniform(0, 2 * np.pi)) + 0.4 * np.sin(2 * ph + rng.uniform(0, 6)))
    # a work-hours block with sharp edges, the shape a smooth seasonal fit struggles with
    hour = (i % PERIOD) / 60.0
    pattern += rng.uniform(0, 1) * amp * ((hour > 9) & (hour < 18))
    trend = rng.uniform(-1, 1) * sigma * 3 * i / N
    y = 50 + pattern + trend + rng.normal(0, sigma, N)
    events = []
    taken = np.zeros(N, bool)

    def place(length):
        for _ in range(100):
            s = int(rng.integers(PERIOD // 2, N - length - 10))
            if not taken[max(0, s - 60): s + length + 60].any():
                taken[s: s + length] = True
                return s
        return None

    for _ in range(6):  # spikes
        s = place(1)
        if s is not None:
            y[s] += rng.choice([-1, 1]) * rng.uniform(5, 9) * sigma
            events.append(("spike", s, s + 1))
    for _ in range(2):  # level shifts lasting 30-120 min
        length = int(rng.integers(30, 121))
        s = place(length)
        if s is not None:
            y[s: s + length] += rng.choice([-1, 1]) * rng.uniform(4, 7) * sigma
            events.append(("level_shift", s, s + length))
    for _ in range(2):  # variance changes lasting 60 min
        s = place(60)
        if s is not None:
            y[s: s + 60] += rng.normal(0, 5 * sigma, 60)
            events.append(("variance", s, s + 60))
    t = 1.7e9 + STEP * i
    return t, y, events


def evaluate(flags: np.ndarray, events) -> dict:
    label = np.zeros(N, bool)
    for _, s, e in events:
        label[s:e] = True
    out = {"flagged": int(flags.sum()), "tp_points": int((flags & label).sum()),
           "label_points": int(label.sum())}
    for kind in ("spike", "level_shift", "variance"):
        evs = [(s, e) for k, s, e in events if k == kind]
        out[f"{kind}_events"] = len(evs)
        out[f"{kind}_hit"] = sum(bool(flags[s:e].any()) for s, e in evs)
    return out


def run(method: str, t, y):
    m = SeasonalESD(method=method, period=86400)
    t0 = time.perf_counter()
    if method == "fast":
        m.fit(t, y)  # the whole fit: decomposition, ESD, scale and online state
        dt = time.perf_counter() - t0
        flags = m.detect(t, y)
    else:
        flags = m.detect(t, y)
        dt = time.perf_counter() - t0
    return dt, flags


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-full", action="store_true", help="skip the slow full-resolution STL")
    a = ap.parse_args(argv)
    methods = ["fast", "stl_jump"] + ([] if a.skip_full else ["stl"])
    data = [simulate(a.seed + k) for k in range(a.series)]
    SeasonalESD().fit(data[0][0], data[0][1])  # warm-up: imports statsmodels/scipy once
    results = {m: [] for m in methods}
    times = {m: [] for m in methods}
    for k, (t, y, events) in enumerate(data):
        for m in methods:
            dt, flags = run(m, t, y)
            times[m].append(dt)
            results[m].append(evaluate(flags, events))
        print(f"series {k}: " + "  ".join(f"{m} {times[m][-1] * 1000:8.1f} ms" for m in methods),
              flush=True)
    print()
    print(f"{'method':9s} {'fit median':>10s} {'fit max':>9s} {'precision':>9s} {'pt recall':>9s} "
          f"{'spikes':>8s} {'shifts':>8s} {'variance':>8s}")
    for m in methods:
        r = results[m]
        tot = {k: sum(x[k] for x in r) for k in r[0]}
        prec = tot["tp_points"] / max(tot["flagged"], 1)
        rec = tot["tp_points"] / max(tot["label_points"], 1)
        print(f"{m:9s} {np.median(times[m]) * 1000:8.1f}ms {np.max(times[m]) * 1000:7.1f}ms "
              f"{prec:9.3f} {rec:9.3f} "
              f"{tot['spike_hit']:>3d}/{tot['spike_events']:<4d} {tot['level_shift_hit']:>3d}/"
              f"{tot['level_shift_events']:<4d} {tot['variance_hit']:>3d}/{tot['variance_events']:<4d}")


if __name__ == "__main__":
    main()
