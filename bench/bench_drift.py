"""Drift at fleet scale: what the fit cycle adds for 2,000 series.

Simulated daily-rhythm series (numpy, seeded; a tenth of them shifted after the first fit) go
through the metric side's `DriftBook` as a serve-time fit does: `train` (the reference of the
training window, done at every fit) and `measure` (the recent window against the previous
reference at the same hours of the day). Printed: seconds for each over all series, the stored
reference's size in the version's npz, and how many series came out drifted.

    .venv/bin/python bench/bench_drift.py [--series 2000] [--days 7] [--recent-hours 6] [--step 60]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from detector.config import DetectorConfig  # noqa: E402
from detector.drift_book import DriftBook  # noqa: E402
from detector.fetch import SeriesData  # noqa: E402
from detector.store import pack_state  # noqa: E402


def fleet(n: int, t: np.ndarray, seed: int, shift_from: float | None) -> dict[str, SeriesData]:
    rng = np.random.default_rng(seed)
    out = {}
    day = 2 * np.pi * (t % 86400) / 86400
    for i in range(n):
        level, amp = rng.uniform(30, 200), rng.uniform(5, 40)
        y = level - amp * np.cos(day) + rng.normal(0, amp / 10, len(t))
        if shift_from is not None and i % 10 == 0:
            y = np.where(t > shift_from, y + amp, y)
        out[f"s{i}"] = SeriesData({"gpu": str(i)}, t, y)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", type=int, default=2000)
    ap.add_argument("--days", type=float, default=7)
    ap.add_argument("--recent-hours", type=float, default=6, help="data since the last fit (fit_every)")
    ap.add_argument("--step", type=float, default=60)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    first_fit = 1_800_000_000.0
    cfg = DetectorConfig(name="bench", query="x", model="robust_z")
    book = DriftBook()
    train_t = np.arange(first_fit - a.days * 86400, first_fit + 1, a.step)
    training = fleet(a.series, train_t, a.seed, None)
    t0 = time.perf_counter()
    doc = book.train(cfg, training, first_fit)
    train_s = time.perf_counter() - t0
    size = len(pack_state({"drift_reference": doc}))

    second_fit = first_fit + a.recent_hours * 3600
    recent_t = np.arange(second_fit - a.days * 86400, second_fit + 1, a.step)  # the next fit's lookback
    recent = fleet(a.series, recent_t, a.seed, first_fit)
    t0 = time.perf_counter()
    book.measure(cfg, recent, second_fit)
    measure_s = time.perf_counter() - t0
    (entry,) = book.report(["bench"])

    print(f"series {a.series}, training {a.days:g} d at {a.step:g} s ({len(train_t)} points each), "
          f"recent {a.recent_hours:g} h")
    print(f"reference (train) {train_s:.2f} s   drift (measure) {measure_s:.2f} s   "
          f"per series {1e3 * (train_s + measure_s) / a.series:.2f} ms")
    print(f"stored reference {size / 1e6:.2f} MB ({size / a.series / 1e3:.1f} kB per series, compressed npz)")
    print(f"drifted {entry['drifted_series']} of {a.series} (shifted: {len(range(0, a.series, 10))})")


if __name__ == "__main__":
    main()
