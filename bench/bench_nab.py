"""NAB (Numenta Anomaly Benchmark) score of rigwatch's univariate detection, through the service's own path.

Each NAB file becomes a one-detector config: the preset's univariate `defaults:` (model, params,
sensitivity, onsets, min_duration, merge_gap, fallback...) and its `schedule:` (lookback, fit_every,
fallback_refit), with `step` the file's median step and `warmup` NAB's probationary period
(min(15% of the points, 750) steps: history before the first fit). The file is replayed by
``MetricPlugin.backtest`` over an in-memory source (detector.fetch.MemorySource): the same fits,
refits, scoring, onset gate and incident policy `serve` runs, no model or filter code here. A NAB
detection is the first row at or after the time the service would first list an incident (its start,
or start + min_duration - step once it lasted that long); that row carries the incident's peak score,
every other row 0, so the scorer at rigwatch's threshold (score > 1) sees exactly the listed incidents
and its best threshold (exhaustive search, a hindsight upper bound) ranks them by peak.

    .venv/bin/python bench/bench_nab.py [--config detector.yml] [--set KEY=VALUE ...]
                                        [--model seasonal_esd] [--param K=V ...] [--no-onsets]
                                        [--horizon 86400] [--workers 2] [--results-dir DIR]
                                        [--loco --candidate 'KEY=VAL,KEY=VAL' ...]

``--set`` overrides a `defaults.` or `schedule.` key (a YAML value, e.g. ``--set schedule.lookback=30d
--set defaults.onsets='{horizon: 12h}'``); ``--model``/``--param``/``--no-onsets``/``--horizon`` are
shorthands for `defaults.model`, `defaults.params.K`, `defaults.onsets=null`, `defaults.onsets.horizon`.
While the preset's `defaults:` names no model, the bench defaults to seasonal_esd with onsets
{horizon: 1d} (said in the output). ``--loco``: leave-one-category-out selection: the base config and
each ``--candidate`` (a comma-separated set of --set overrides) run over the corpus once; for each of
NAB's top-level categories the candidate with the best standard score on the other categories gives
the held-out category's detections; the union is scored once beside the base config's in-sample figure.
``--results-dir`` writes NAB-style CSVs (the base config's) so that
``python ../shared/eval/nab_score.py DIR --threshold 1.000001`` reproduces the figure.
The data come from ``$RIGWATCH_SHARED/datasets/nab`` (default ``../shared`` from the repo root).
"""
from __future__ import annotations

import argparse
import copy
import os
import re
import sys
import time
from importlib import resources
from multiprocessing import Pool

import numpy as np
import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from benchlib import shared_root  # noqa: E402

from detector.config import Config, ConfigError, parse_config  # noqa: E402
from detector.fetch import MemorySource, SeriesData  # noqa: E402
from detector.metric_plugin import MetricPlugin  # noqa: E402
from detector.timefmt import parse_rfc3339  # noqa: E402

SHARED = str(shared_root())
NAB_DIR = os.path.join(SHARED, "datasets", "nab")
# rigwatch flags score > 1; NAB's scorer detects at score >= threshold
RIGWATCH_THRESHOLD = float(np.nextafter(1.0, 2.0))
# the least a detection row carries: the report rounds peak scores to 6 decimals (a peak of
# 1.0000004 reads 1.0), and the scorer's command line is run at --threshold 1.000001
DETECTED = 1.000001
DETECTOR = "nab"
# the bench's univariate default while the preset's `defaults:` names no model
FALLBACK_DEFAULTS = {"model": "seasonal_esd", "onsets": {"horizon": "1d"}}
PER_FILE = ("step", "warmup")  # schedule keys each file sets for itself


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


# -- the bench's config: a `defaults:` and a `schedule:` section, overridden key by key ---------------
def base_sections(path: str | None) -> tuple[dict, bool]:
    """`defaults:` and `schedule:` of a detector.yml (None: the built-in preset) -> ({defaults,
    schedule}, whether the bench's fallback model stood in for a missing `defaults.model`)."""
    text = resources.files("detector").joinpath("default_preset.yml").read_text() if path is None \
        else open(path).read()
    raw = yaml.safe_load(text) or {}
    doc = {"defaults": dict(raw.get("defaults") or {}), "schedule": dict(raw.get("schedule") or {})}
    fallback = "model" not in doc["defaults"]
    if fallback:
        for k, v in FALLBACK_DEFAULTS.items():
            doc["defaults"].setdefault(k, copy.deepcopy(v))
    return doc, fallback


def parse_override(text: str) -> tuple[str, object]:
    """'defaults.onsets.horizon=12h' -> ('defaults.onsets.horizon', '12h') (the value read as YAML)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key.startswith(("defaults.", "schedule.")):
        raise ValueError(f"{text!r}: expected defaults.KEY=VALUE or schedule.KEY=VALUE")
    if key.split(".")[:2][-1] in PER_FILE and key.startswith("schedule."):
        raise ValueError(f"{key}: set per NAB file by the bench (median step, probationary period)")
    return key, yaml.safe_load(value) if value.strip() else None


def parse_candidate(text: str) -> list[tuple[str, object]]:
    """'defaults.sensitivity=3,defaults.onsets={horizon: 12h, quiet: 1h}' -> overrides; a comma splits
    only where the next KEY= begins, so YAML flow values keep theirs."""
    return [parse_override(p) for p in re.split(r",(?=\s*[\w.]+=)", text) if p.strip()]


def apply_overrides(doc: dict, overrides: list[tuple[str, object]]) -> dict:
    """A copy of `doc` with each dotted key set (missing or null mappings on the way are created)."""
    out = copy.deepcopy(doc)
    for key, value in overrides:
        *path, last = key.split(".")
        node = out
        for p in path:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[last] = value
    return out


def legacy_overrides(a) -> list[tuple[str, object]]:
    """The published flags as the overrides they stand for."""
    out: list[tuple[str, object]] = []
    if a.model:
        out.append(("defaults.model", a.model))
    for kv in a.param:
        k, _, v = kv.partition("=")
        out.append((f"defaults.params.{k}", yaml.safe_load(v)))
    if a.no_onsets:
        out.append(("defaults.onsets", None))
    if a.horizon is not None:
        out.append(("defaults.onsets.horizon", yaml.safe_load(a.horizon)))
    return out


def file_config(doc: dict, step: float, warmup: float) -> Config:
    """The one-detector Config one NAB file is replayed with."""
    raw = {"schedule": {**doc["schedule"], "step": step, "warmup": warmup},
           "defaults": doc["defaults"], "detectors": [{"name": DETECTOR, "query": "nab_value"}]}
    return parse_config(raw)


# -- the service's incidents as NAB detections --------------------------------------------------
def detection_rows(incidents: list[dict], t: np.ndarray, min_duration: float, step: float) -> np.ndarray:
    """Per row of the file: the peak score of each incident at the first row at or after the time the
    service first lists it (IncidentTracker.recent: once end - start + step >= min_duration), else 0."""
    out = np.zeros(len(t))
    for inc in incidents:
        start = parse_rfc3339(inc["start"])
        listed = max(start, start + min_duration - step)
        i = int(np.searchsorted(t, listed - 0.5))  # report times are whole seconds
        if i < len(t):
            out[i] = max(out[i], max(float(inc["peak_score"] or 0.0), DETECTED))
    return out


def run_file(args):
    key, doc = args
    _, t, y = load_series(key)
    step = float(np.median(np.diff(t)))
    prob = min(len(t) * 15 // 100, 750)
    cfg = file_config(doc, step, prob * step)
    source = MemorySource({DETECTOR: {"nab": SeriesData({"file": key}, t, y)}})
    t0 = time.perf_counter()
    part = MetricPlugin(cfg, None, source=source).backtest(float(t[0]), float(t[-1]), threshold=1.0)
    det = cfg.detectors[0]
    rows = detection_rows(part.incidents, t, det.min_duration, step)
    return key, rows, time.perf_counter() - t0


def run_corpus(corpus, doc, workers: int) -> tuple[dict[str, np.ndarray], float]:
    t0 = time.perf_counter()
    with Pool(workers) as pool:
        results = pool.map(run_file, [(f["key"], doc) for f in corpus], chunksize=1)
    return {k: s for k, s, _ in results}, time.perf_counter() - t0


def category(key: str) -> str:
    return key.split("/")[0]


def loco(cand_scores: list[dict[str, np.ndarray]], corpus, standard: dict, score_fn) -> tuple[dict, dict]:
    """Leave one category out: per category, the candidate with the best standard score at rigwatch's
    threshold on the other categories gives that category's detections. -> (scores, {category: index})."""
    chosen, out = {}, {}
    for cat in sorted({category(f["key"]) for f in corpus}):
        rest = [f for f in corpus if category(f["key"]) != cat]
        figs = [score_fn(s, rest, {"standard": standard}, threshold=RIGWATCH_THRESHOLD)["standard"]["score"]
                for s in cand_scores]
        chosen[cat] = int(np.argmax(figs))  # ties: the earlier candidate (the base config first)
        for f in corpus:
            if category(f["key"]) == cat:
                out[f["key"]] = cand_scores[chosen[cat]][f["key"]]
    return out, chosen


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="take defaults:/schedule: from this detector.yml (default: the preset)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                    help="override a defaults./schedule. key (YAML value), e.g. schedule.lookback=30d")
    ap.add_argument("--model", help="shorthand for --set defaults.model=MODEL")
    ap.add_argument("--param", action="append", default=[], metavar="K=V",
                    help="model parameter (YAML value): --set defaults.params.K=V")
    ap.add_argument("--no-onsets", action="store_true", help="no onset gate: --set defaults.onsets=null")
    ap.add_argument("--horizon", help="onset horizon (seconds or a duration): --set defaults.onsets.horizon=S")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--results-dir", help="also write NAB-style result CSVs here (the base config's)")
    ap.add_argument("--loco", action="store_true", help="leave-one-category-out selection over --candidate sets")
    ap.add_argument("--candidate", action="append", default=[], metavar="'KEY=VAL,KEY=VAL'",
                    help="with --loco: a set of --set overrides to choose among (the base config is candidate 0)")
    a = ap.parse_args(argv)
    try:
        doc, fallback = base_sections(a.config)
        overrides = legacy_overrides(a) + [parse_override(s) for s in a.sets]
        fallback = fallback and all(k != "defaults.model" for k, _ in overrides)
        doc = apply_overrides(doc, overrides)
        cands = [doc] + [apply_overrides(doc, parse_candidate(c)) for c in a.candidate]
        for i, c in enumerate(cands):  # a bad key or value fails here, before the pool starts
            try:
                file_config(c, 300.0, 3600.0)
            except ConfigError as e:
                raise ValueError(f"candidate {i}: {e}" if i else str(e)) from None
    except (OSError, ValueError) as e:
        print(f"bench_nab: {e}", file=sys.stderr)
        sys.exit(2)

    sys.path.insert(0, os.path.join(SHARED, "eval"))
    from nab_score import load_corpus, report, score

    corpus, profiles = load_corpus(NAB_DIR)
    shown = file_config(doc, 300.0, 3600.0)  # as parsed: the defaults a section leaves unset filled in
    det, sched = shown.detectors[0], shown.schedule
    print(f"config: {a.config or '<default preset>'}{' (no defaults.model: bench fallback seasonal_esd, onsets horizon 1d)' if fallback else ''}")
    print(f"model={det.model} params={det.params} sensitivity={det.sensitivity} onsets={det.onsets} "
          f"min_duration={det.min_duration:g}s merge_gap={det.merge_gap:g}s fallback={det.fallback} "
          f"lookback={sched.lookback / 86400:g}d fit_every={sched.fit_every / 3600:g}h "
          f"fallback_refit={sched.fallback_refit / 3600:g}h")
    scores, wall = run_corpus(corpus, doc, a.workers)
    print(f"{len(corpus)} files, {sum(len(s) for s in scores.values())} points, wall {wall:.1f} s "
          f"({a.workers} workers)")
    label = f"{det.model}{'+onsets' if det.onsets is not None else ''}"
    print("-- at rigwatch's default threshold (score > 1):")
    report(label, score(scores, corpus, profiles, threshold=RIGWATCH_THRESHOLD))
    print("-- at the scorer's best threshold per profile (hindsight upper bound):")
    report(label, score(scores, corpus, profiles, threshold=None))

    if a.loco:
        cand_scores = [scores]
        for i, c in enumerate(cands[1:], 1):
            s, w = run_corpus(corpus, c, a.workers)
            std = score(s, corpus, {"standard": profiles["standard"]}, threshold=RIGWATCH_THRESHOLD)
            print(f"candidate {i} ({a.candidate[i - 1]}): standard {std['standard']['score']:.2f} "
                  f"in-sample, wall {w:.1f} s")
            cand_scores.append(s)
        held, chosen = loco(cand_scores, corpus, profiles["standard"], score)
        print("-- leave-one-category-out: candidate chosen per held-out category "
              "(0: the base config): " + ", ".join(f"{k}={v}" for k, v in chosen.items()))
        report("in-sample (base)", score(scores, corpus, profiles, threshold=RIGWATCH_THRESHOLD))
        report("LOCO", score(held, corpus, profiles, threshold=RIGWATCH_THRESHOLD))

    if a.results_dir:
        for f in corpus:
            df, _, _ = load_series(f["key"])
            cat, name = os.path.split(f["key"])
            os.makedirs(os.path.join(a.results_dir, cat), exist_ok=True)
            df.assign(anomaly_score=scores[f["key"]]).to_csv(
                os.path.join(a.results_dir, cat, f"rigwatch_{name}"), index=False)
        print(f"results written under {a.results_dir}")


if __name__ == "__main__":
    main()
