"""NAB (Numenta Anomaly Benchmark) score of rigwatch's univariate models, detecting causally.

Every file is replayed point by point the way the service sees a series: until the model's
``min_history`` the robust baseline (``robust_z``) scores, then the configured model is fitted on
everything seen so far (expanding window) and refitted once a day of data (at least every 50
points); each point is scored by the model fitted on earlier points only.  Scores pass through
``OnsetFilter`` (report a score only when it beats every score of the trailing day) and are
scored by ``../shared/eval/nab_score.py`` at rigwatch's own default threshold (score > 1) beside
the scorer's best threshold (exhaustive search: an upper bound no live system gets).

    .venv/bin/python bench/bench_nab.py [--model seasonal_esd] [--param k=v ...] [--no-onsets]
                                        [--horizon 86400] [--workers 2] [--results-dir DIR]

``--results-dir`` also writes NAB-style CSVs so that
``python ../shared/eval/nab_score.py DIR --threshold 1.000001`` reproduces the figure.
The data come from ``$RIGWATCH_SHARED/datasets/nab`` (default ``../shared`` from the repo root).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from multiprocessing import Pool

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from benchlib import shared_root  # noqa: E402

from detector.models import OnsetFilter, RobustZ, make_model  # noqa: E402

SHARED = str(shared_root())
NAB_DIR = os.path.join(SHARED, "datasets", "nab")
# rigwatch flags score > 1; NAB's scorer detects at score >= threshold
RIGWATCH_THRESHOLD = float(np.nextafter(1.0, 2.0))


def load_series(key: str):
    import pandas as pd

    df = pd.read_csv(os.path.join(NAB_DIR, "data", key))
    ts = pd.to_datetime(df["timestamp"])
    t = ((ts - pd.Timestamp(0)) / pd.Timedelta(seconds=1)).to_numpy(float).copy()
    # a few NAB files repeat a timestamp (clock changes); a scrape never does: nudge by 1 s
    for i in range(1, len(t)):
        if t[i] <= t[i - 1]:
            t[i] = t[i - 1] + 1.0
    return df, t, df["value"].to_numpy(float)


def causal_scores(t: np.ndarray, y: np.ndarray, model: str, params: dict) -> np.ndarray:
    """Raw per-point scores, each from a model fitted on earlier points only."""
    n = len(y)
    step = float(np.median(np.diff(t))) if n > 1 else 60.0
    need = make_model(model, **params).min_history(step)
    refit = max(int(round(86400 / step)), 50)
    out = np.full(n, np.nan)
    i = min(20, n)  # the first points only seed the baseline
    current, next_fit = None, i
    while i < n:
        if i >= next_fit:
            if i >= need:
                current = make_model(model, **params).fit(t[:i], y[:i])
            else:
                current = RobustZ(direction=params.get("direction", "both")).fit(t[:i], y[:i])
            next_fit = i + refit
        j = min(next_fit, n)
        out[i:j] = current.score(t[i:j], y[i:j]).score
        i = j
    return out


def run_file(args):
    key, model, params, onsets, horizon = args
    _, t, y = load_series(key)
    t0 = time.perf_counter()
    raw = causal_scores(t, y, model, params)
    s = np.nan_to_num(raw, nan=0.0)
    if onsets:
        s = OnsetFilter(horizon=horizon).filter(t, s)
    return key, s, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="seasonal_esd", choices=["seasonal_esd", "robust_z"])
    ap.add_argument("--param", action="append", default=[], metavar="K=V",
                    help="model parameter (JSON value), e.g. --param tail_factor=1.2")
    ap.add_argument("--no-onsets", action="store_true", help="score every point, no onset filter")
    ap.add_argument("--horizon", type=float, default=86400.0, help="onset filter horizon (s)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--results-dir", help="also write NAB-style result CSVs here")
    a = ap.parse_args(argv)
    params = {}
    for kv in a.param:
        k, _, v = kv.partition("=")
        try:
            params[k] = json.loads(v)
        except json.JSONDecodeError:
            params[k] = v
    make_model(a.model, **params)  # a bad parameter fails here, before the pool starts

    sys.path.insert(0, os.path.join(SHARED, "eval"))
    from nab_score import load_corpus, report, score

    corpus, profiles = load_corpus(NAB_DIR)
    jobs = [(f["key"], a.model, params, not a.no_onsets, a.horizon) for f in corpus]
    t0 = time.perf_counter()
    with Pool(a.workers) as pool:
        results = pool.map(run_file, jobs, chunksize=1)
    wall = time.perf_counter() - t0
    scores = {k: s for k, s, _ in results}
    label = f"{a.model}{'' if a.no_onsets else '+onsets'}"
    print(f"model={a.model} params={params} onsets={'off' if a.no_onsets else f'horizon {a.horizon:g}s'}")
    print(f"{len(corpus)} files, {sum(len(s) for s in scores.values())} points, wall {wall:.1f} s "
          f"({a.workers} workers)")
    print("-- at rigwatch's default threshold (score > 1):")
    report(label, score(scores, corpus, profiles, threshold=RIGWATCH_THRESHOLD))
    print("-- at the scorer's best threshold per profile (hindsight upper bound):")
    report(label, score(scores, corpus, profiles, threshold=None))

    if a.results_dir:
        import pandas as pd

        for f in corpus:
            df, _, _ = load_series(f["key"])
            cat, name = os.path.split(f["key"])
            os.makedirs(os.path.join(a.results_dir, cat), exist_ok=True)
            df = df.assign(anomaly_score=scores[f["key"]])
            df.to_csv(os.path.join(a.results_dir, cat, f"rigwatch_{name}"), index=False)
        print(f"results written under {a.results_dir}")
        del pd


if __name__ == "__main__":
    main()
