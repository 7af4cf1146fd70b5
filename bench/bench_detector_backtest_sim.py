"""Backtest the built-in preset on simulated history and score it against the ground truth.

    .venv/bin/python bench/bench_detector_backtest_sim.py --days 7 --seed 2 [--box studio]

Writes `rigwatch-sim history` (the packaged 7-day incident schedule unless --schedule), backfills it
into a real Prometheus with promtool, runs `rigwatch-detector backtest` with the default preset and
prints: incidents found (with delay), missed, false incidents per simulated day, incidents on the
benign look-alikes, and the backtest wall time. Seeds 1 and 2 were used while tuning the preset.
`--box` picks the simulated box (`rigwatch-sim history --box`; default aibox) and its default schedule.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector.evaluation import evaluate  # noqa: E402
from harness.processes import backfill_openmetrics  # noqa: E402
from harness.servers import PrometheusServer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=float, default=7)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--start", default="2026-11-01T00:00:00Z")
    ap.add_argument("--schedule", default=None)
    ap.add_argument("--box", default="aibox", help="simulated box: aibox or studio (default aibox)")
    ap.add_argument("--config", default=None, help="detector.yml (default: the built-in preset)")
    ap.add_argument("--keep", default=None, help="work directory to keep (default: a temp dir)")
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="rigwatch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    hist = work / "history"
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "exporter.sim.cli", "history", "--out", str(hist), "--days", str(args.days),
           "--seed", str(args.seed), "--start", args.start, "--box", args.box]
    if args.schedule:
        cmd += ["--schedule", args.schedule]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr.strip(), file=sys.stderr)
        return done.returncode
    t1 = time.perf_counter()
    backfill_openmetrics(hist / "metrics.om", work / "tsdb")
    t2 = time.perf_counter()
    truth = json.loads((hist / "truth.json").read_text())
    with PrometheusServer(work / "prom", "global: {scrape_interval: 1h}\n", storage=work / "tsdb") as prom:
        bt = [sys.executable, "-m", "detector.cli", "backtest", "--prometheus-url", prom.url, "--start",
              truth["start"], "--end", truth["end"], "--output", str(work / "report.json"), "--no-progress"]
        if args.config:
            bt += ["--config", args.config]
        t3 = time.perf_counter()
        subprocess.run(bt, check=True)
        t4 = time.perf_counter()
    report = json.loads((work / "report.json").read_text())
    result = evaluate(report, truth)
    (work / "evaluation.json").write_text(json.dumps(result, indent=1))
    s = result["summary"]
    print(f"box {args.box}, seed {args.seed}, {args.days:g} simulated days of 1-minute data")
    print(f"  sim history {t1 - t0:.1f} s, promtool backfill {t2 - t1:.1f} s, backtest {t4 - t3:.1f} s wall")
    print(f"  injected incidents found: {s['found']}/{s['injected']}")
    for f in result["found"]:
        print(f"    {f['kind']:<24} {json.dumps(f['labels']):<40} +{f['delay_seconds'] / 60:4.0f} min  "
              f"{', '.join(f['detectors'])}")
    for m in result["missed"]:
        print(f"    MISSED {m['kind']:<17} {json.dumps(m['labels'])} at {m['start']}")
    print(f"  false incidents: {s['false']} ({s['false_per_day']} per simulated day)")
    print(f"  incidents on benign look-alikes: {s['on_benign']}")
    for i in result["false"] + result["on_benign"]:
        print(f"    {i['start']} {i['summary'][:120]}")
    print(f"  report: {work / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
