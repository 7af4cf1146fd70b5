"""Log backtest on the simulator's journal: found / missed failures and false incidents per seed.

For each seed, `rigwatch-sim history` writes a 7-day journal.jsonl + truth.json; the log side
backtests it as `rigwatch-detector backtest --journal-file` would (fit on the first day, the metric
side's default warm-up, then score minute by minute) at the default threshold. Failures the journal
shows (Xid for a lost GPU, crash loops, CUDA OOM) must be found; an incident outside every injected
failure (benign look-alikes included: SSH scanners, planned reboots, a unit failing at boot, big
model loads) is a false one. Metric-only failures (fans, cooling, power) leave no log lines and are
listed apart.

    .venv/bin/python bench/bench_log_sim.py [--seeds 23 24 25] [--days 7]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from detector.logs.backtest import run_journal_backtest
from detector.logs.detector import LogDetectorConfig
from detector.logs.journal import read_journal_file
from detector.logs.scoring import trouble_keywords

GPU_BY_PCI = {"0000:01:00.0": "0", "0000:02:00.0": "1"}  # the sim box's two GPUs (gpu_info pci_bus_id)


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run_seed(seed: int, days: float, workdir: Path) -> dict:
    out = workdir / f"seed{seed}"
    subprocess.run([str(Path(sys.executable).parent / "rigwatch-sim"), "history", "--out", str(out), "--days",
                    str(days), "--start", "2026-09-01T00:00:00Z", "--seed", str(seed)],
                   check=True, capture_output=True)
    truth = json.loads((out / "truth.json").read_text())
    t0 = time.perf_counter()
    # the default logs config and the metric side's default warm-up (one day), as the CLI runs it
    report = run_journal_backtest(out / "journal.jsonl", logs_config=LogDetectorConfig(),
                                  start=ts(truth["start"]), end=ts(truth["end"]), warmup=86400.0,
                                  gpu_by_pci=GPU_BY_PCI)
    seconds = time.perf_counter() - t0
    trained_until = ts(report["trained_until"])
    failures = [t for t in truth["incidents"] if not t["benign"] and ts(t["end"]) > trained_until]
    incidents = report["incidents"]

    def near(incident, t):
        return ts(t["start"]) - 120 <= ts(incident["start"]) <= ts(t["end"]) + 900

    trouble = [e.ts for e in read_journal_file(out / "journal.jsonl")
               if trouble_keywords(e.message) or (e.priority is not None and e.priority <= 3)]
    visible = [t for t in failures if any(ts(t["start"]) <= x <= ts(t["end"]) for x in trouble)]
    found = [t for t in visible if any(near(i, t) for i in incidents)]
    missed = [t for t in visible if t not in found]
    false = [i for i in incidents if not any(near(i, t) for t in failures)]
    return {"seed": seed, "lines": report["lines"], "seconds": seconds, "found": found, "missed": missed,
            "false": false, "incidents": len(incidents),
            "metric_only": sorted({t["kind"] for t in failures if t not in visible})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[23, 24, 25])
    parser.add_argument("--days", type=float, default=7)
    args = parser.parse_args(argv)
    totals = {"found": 0, "missed": 0, "false": 0, "days": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            r = run_seed(seed, args.days, Path(tmp))
            print(f"seed {seed}: {r['lines']} lines, {r['incidents']} log incidents in {r['seconds']:.1f} s; "
                  f"found {len(r['found'])}/{len(r['found']) + len(r['missed'])} log-visible failures, "
                  f"{len(r['false'])} false incidents")
            for t in r["missed"]:
                print(f"    missed {t['kind']} {t['start']} {t['labels']}")
            for i in r["false"]:
                print(f"    false  {i['start']} {i['detector']} {i['labels']} {i['summary'][:90]}")
            totals["found"] += len(r["found"])
            totals["missed"] += len(r["missed"])
            totals["false"] += len(r["false"])
            totals["days"] += args.days - 1  # the first day trains
    print(f"total: found {totals['found']}/{totals['found'] + totals['missed']}, {totals['false']} false incidents "
          f"in {totals['days']:g} scored days ({totals['false'] / max(totals['days'], 1):.2f} per day)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
