"""Scoring cycle over 2,000 fitted series: wall time per cycle and steady-state resident memory.

Fits a mix of models the way the service holds them (default: 1,700 univariate series on the
preset's default model — the ensemble; ``--univariate-model seasonal_esd`` for the old one — on 7 days
of 1-minute data, 260 robust_z, 30 thermal, 10 iforest), drops the training data, then runs scoring
cycles where every series scores its one new point, as the service does each minute.  Prints
the RSS after imports, after fitting (steady state, training data freed) and after the cycles,
and the median/max cycle wall time.

    .venv/bin/python bench/bench_scoring_scale.py [--seasonal 1700 --robust 260 --thermal 30
                                                  --iforest 10] [--days 7] [--cycles 10]
                                                  [--univariate-model ensemble]
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchlib import add_series_mix_args, fit_mix_series, mix_counts, proc_status_mb, score_cycles  # noqa: E402


def state_bytes(model) -> int:
    """What the model store writes for it (nested member states included)."""
    from detector.store import pack_state

    return len(pack_state(model.get_state()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_series_mix_args(ap)
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--univariate-model", default="ensemble", choices=["ensemble", "seasonal_esd"],
                    help="model of the --seasonal share (the preset's default: ensemble)")
    a = ap.parse_args(argv)

    import pandas  # noqa: F401
    import statsmodels.tsa.seasonal  # noqa: F401

    from detector.models import make_model  # noqa: F401  (import cost counted in the baseline)
    from detector.models.ensemble import Ensemble  # noqa: F401

    rss_imports = proc_status_mb()
    step = 60.0
    n = int(a.days * 1440)
    t = 1.7e9 + step * np.arange(n)
    models = []  # (kind, fitted model)
    t0 = time.perf_counter()
    for kind, count in mix_counts(a).items():
        for i in range(count):
            models.append((kind, fit_mix_series(kind, i, t, a.univariate_model)))
        if kind == "seasonal":
            fit_seasonal = time.perf_counter() - t0
    fit_total = time.perf_counter() - t0
    gc.collect()
    rss_fitted = proc_status_mb()
    per_kind = {}
    for kind, m in models:
        per_kind.setdefault(a.univariate_model if kind == "seasonal" else kind, []).append(state_bytes(m))

    cycle_times = score_cycles(models, t[-1], step, a.cycles)
    alone_times = score_cycles(models, t[-1] + step * a.cycles, step, a.cycles, batched=False)
    gc.collect()
    rss_after = proc_status_mb()

    print(f"series: {len(models)} ({a.univariate_model} {a.seasonal}, robust_z {a.robust}, thermal {a.thermal}, "
          f"iforest {a.iforest}); history {a.days:g} days x 1 min = {n} points each")
    print(f"fit: all {fit_total:.1f} s, {a.univariate_model} {fit_seasonal / max(a.seasonal, 1) * 1000:.1f} ms/series")
    for kind, b in per_kind.items():
        print(f"state {kind:9s}: {np.mean(b) / 1024:7.1f} KiB/series (arrays)")
    print(f"scoring cycle (1 new point per series): median {np.median(cycle_times):.3f} s, "
          f"max {np.max(cycle_times):.3f} s over {a.cycles} cycles (univariate series batched, as the service does); "
          f"each series on its own: median {np.median(alone_times):.3f} s")
    print(f"RSS: after imports {rss_imports:.0f} MB, fitted (steady state) {rss_fitted:.0f} MB, "
          f"after cycles {rss_after:.0f} MB")


if __name__ == "__main__":
    main()
