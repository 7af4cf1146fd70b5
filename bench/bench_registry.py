"""What the model registry costs: the serve loop's reads and a fit's propose on a real file store,
start-up loading the champions of a 2,000-series store, and an operator's promote and rollback.

1. reading a detector's record (done once per detector at every scoring step to follow the champion)
   and a fit's propose (record write + pruning), over --detectors x --versions tiny versions;
2. start-up: a store holding the 2,000-series mix of the scale benchmarks (benchlib: seasonal_esd,
   robust_z, thermal, iforest; series from bench_drift's generator, fitted by MetricPlugin.fit), two
   versions per detector (v2 champion, v1 its rollback target). Timed: MetricPlugin.load (the
   registry's champion, restored and probed) against the plain newest-version load of the store
   from before the registry (ModelStore.load_usable with the same restore), each on a fresh plugin;
3. promote (which loads the version to check it) and rollback of the biggest detector, one atomic
   record write each; the new champion is then loaded at the next scoring step, as in 2.

Usage: .venv/bin/python bench/bench_registry.py [--detectors N] [--versions N] [--repeat N]
       [--seasonal 1700 --robust 260 --thermal 30 --iforest 10 --days 7] [--load-repeat 3]

Prints per-operation figures (median of the repeats).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))  # bench_drift and benchlib, also when run with -m or from elsewhere

import numpy as np  # noqa: E402
from bench_drift import fleet  # noqa: E402  (the series generator, shared)
from benchlib import add_series_mix_args  # noqa: E402  (the 2,000-series mix, shared)

from detector.config import load_config  # noqa: E402
from detector.fetch import SeriesData, feature_queries  # noqa: E402
from detector.metric_plugin import MetricPlugin  # noqa: E402
from detector.persistence import FilePersistence  # noqa: E402
from detector.registry import Registry, record_name  # noqa: E402
from detector.store import ModelStore  # noqa: E402

STEP = 60.0
NOW = 1_800_000_000.0


def timed(fn, repeat: int) -> tuple[float, float]:
    wall, cpu = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return statistics.median(wall) * 1e6, statistics.median(cpu) * 1e6


class FleetSource:
    """The metric plugin's series source (fetch.SeriesSource) for the bench: bench_drift's daily-rhythm
    series, `counts[detector]` of them, with generated features where the detector's kind reads some."""

    def __init__(self, counts: dict[str, int]):
        self.counts = counts

    def fetch(self, det, start, end, step):
        t = np.arange(start, end + step / 2, step)
        n = self.counts[det.name]
        names = list(feature_queries(det))
        main = fleet(n, t, seed=1, shift_from=None)
        features = [fleet(n, t, seed=2 + k, shift_from=None) for k in range(len(names))]
        return {sid: SeriesData(s.labels, t, s.y, np.column_stack([f[sid].y for f in features]) if names else None,
                                names) for sid, s in main.items()}

    def provenance(self):
        return {"source": "bench"}


def mix_config(days: float):
    return load_config(text=f"""
schedule: {{step: 60s, lookback: {int(days * 86400)}s}}
detectors:
  - {{name: mix_seasonal, query: a, model: seasonal_esd}}
  - {{name: mix_robust, query: b, model: robust_z}}
  - {{name: mix_thermal, query: c, model: thermal, features: {{power: d}}, params: {{lagged: [power]}}}}
  - {{name: mix_iforest, query: e, model: iforest, features: {{power: f, sm_clock: g, memory_activity: h}}}}
""")


def startup_and_transitions(args, root: str) -> None:
    cfg = mix_config(args.days)
    counts = {"mix_seasonal": args.seasonal, "mix_robust": args.robust, "mix_thermal": args.thermal,
              "mix_iforest": args.iforest}
    source = FleetSource(counts)

    def plugin() -> MetricPlugin:  # a fresh one per start-up, over the same files
        return MetricPlugin(cfg, None, store=ModelStore(FilePersistence(root)), source=source)

    t0 = time.perf_counter()
    fitter = plugin()
    assert fitter.fit(NOW)
    fit_s = time.perf_counter() - t0
    store, registry = fitter.store, fitter.registry
    for name in counts:  # v2: the same state again, so v1 is the rollback target of a same-size v2
        v1 = store.load(name, 1)
        registry.propose(name, store.save(name, v1.state, {**v1.metadata}, prune=False).version)
    size = sum(f.stat().st_size for f in Path(root).rglob("*") if f.is_file())

    champion, plain = [], []
    for _ in range(args.load_repeat):
        p = plugin()
        w = time.perf_counter()
        assert p.load() == len(counts)
        champion.append(time.perf_counter() - w)
        p = plugin()
        w = time.perf_counter()
        for name, det in p.detectors.items():
            # the store's newest version with the same restore (apply once probed) start-up uses
            assert p.store.load_usable(name, lambda mv, det=det, p=p: p._restore(det, mv.state)) is not None
        plain.append(time.perf_counter() - w)
    per_detector = {}
    for name in counts:
        p = plugin()
        w = time.perf_counter()
        p.registry.load(name, lambda mv, det=p.detectors[name], p=p: p._restore(det, mv.state))
        per_detector[name] = time.perf_counter() - w

    biggest = max(counts, key=counts.get)
    promote, rollback = [], []
    for _ in range(args.load_repeat):
        w = time.perf_counter()
        registry.promote(biggest, 1)
        promote.append(time.perf_counter() - w)
        w = time.perf_counter()
        registry.rollback(biggest)
        rollback.append(time.perf_counter() - w)
    assert registry.record(biggest)["champion"] == 2

    series = sum(counts.values())
    print(f"\nstart-up store: {series} series ({', '.join(f'{k[4:]} {v}' for k, v in counts.items())}), "
          f"{args.days:g} d at {STEP:g} s; fitted in {fit_s:.1f} s; 2 versions each, {size / 1e6:.1f} MB on disk")
    print(f"load the champions (MetricPlugin.load, registry): median {statistics.median(champion):.3f} s "
          f"({', '.join(f'{x:.3f}' for x in champion)})")
    print(f"plain newest-version load (store.load_usable):    median {statistics.median(plain):.3f} s "
          f"({', '.join(f'{x:.3f}' for x in plain)})")
    print("champion load per detector: " + ", ".join(f"{k} {v:.3f} s" for k, v in per_detector.items()))
    print(f"{biggest} ({counts[biggest]} series): promote v1 median {statistics.median(promote) * 1e3:.0f} ms "
          f"(loads v1 to check it), rollback median {statistics.median(rollback) * 1e3:.1f} ms; the new "
          f"champion then loads at the next scoring step ({per_detector[biggest]:.3f} s above)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--detectors", type=int, default=20)
    p.add_argument("--versions", type=int, default=100)
    p.add_argument("--repeat", type=int, default=20)
    add_series_mix_args(p)
    p.add_argument("--load-repeat", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as root:
        store = ModelStore(FilePersistence(root), keep=5)
        registry = Registry(store)
        names = [f"d{i}" for i in range(args.detectors)]
        propose_wall = []
        for name in names:
            for _ in range(args.versions):
                mv = store.save(name, {"x": 1.0}, prune=False)
                w = time.perf_counter()
                registry.propose(name, mv.version)
                propose_wall.append(time.perf_counter() - w)
        step_wall, step_cpu = timed(lambda: [registry.record(n)["champion"] for n in names], args.repeat)
        size = len(store.read_blob(record_name(names[0])))
    print(f"detectors={args.detectors} versions/detector={args.versions} keep=5")
    print(f"follow-the-champion read, all detectors per scoring step: {step_wall:.0f} us wall, "
          f"{step_cpu:.0f} us CPU")
    print(f"propose (record write + prune), median: {statistics.median(propose_wall) * 1e6:.0f} us wall")
    print(f"record size after {args.versions} proposals: {size} bytes")
    with tempfile.TemporaryDirectory() as root:
        startup_and_transitions(args, root)


if __name__ == "__main__":
    main()
