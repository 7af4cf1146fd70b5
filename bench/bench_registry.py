"""What the model registry costs the serve loop: reading a detector's record (done once per detector
at every scoring step to follow the champion) and a fit's propose (record write + pruning), on a
real file store.

Usage: .venv/bin/python bench/bench_registry.py [--detectors N] [--versions N] [--repeat N]

Prints per-operation figures in microseconds (median of --repeat runs, CPU and wall), and the record's
size after --versions proposals (its decisions list is capped, so it stops growing).
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

from detector.persistence import FilePersistence  # noqa: E402
from detector.registry import Registry, record_name  # noqa: E402
from detector.store import ModelStore  # noqa: E402


def timed(fn, repeat: int) -> tuple[float, float]:
    wall, cpu = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return statistics.median(wall) * 1e6, statistics.median(cpu) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--detectors", type=int, default=20)
    p.add_argument("--versions", type=int, default=100)
    p.add_argument("--repeat", type=int, default=20)
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


if __name__ == "__main__":
    main()
