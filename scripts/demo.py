"""`make demo`: the simulated AI box, its exporter and a real Prometheus, on 127.0.0.1.

1. writes a day of simulated history (the real collector over sim time) and backfills it into a fresh
   Prometheus TSDB with `promtool tsdb create-blocks-from openmetrics` (skipped if promtool is missing);
2. starts `rigwatch-exporter --backend sim --speed N` on a free port;
3. starts a real `prometheus` scraping it every 5 s, on the backfilled TSDB;
4. prints the URLs, then live readings queried from Prometheus's HTTP API every few seconds;
5. stops everything on Ctrl-C / SIGTERM (or after --duration seconds).

    python -m scripts.demo [--speed 60] [--duration SECONDS] [--workdir DIR] [--seed N]
"""
from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from scripts.launcher import Process, PrometheusAPI, free_port

JOB = "rigwatch-exporter"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--speed", type=float, default=60.0, help="sim seconds per wall second (default 60)")
    p.add_argument("--duration", type=float, default=0.0,
                   help="stop after this many seconds (default 0: run until Ctrl-C)")
    p.add_argument("--workdir", default=None, help="where logs and the TSDB go (default: a temp dir, removed)")
    p.add_argument("--seed", type=int, default=0, help="sim seed (default 0)")
    p.add_argument("--history-days", type=float, default=1.0, help="days of history to backfill (0: none)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between printed readings (default 5)")
    args = p.parse_args(argv)
    if args.speed <= 0 or args.duration < 0 or args.history_days < 0 or args.interval <= 0:
        p.error("--speed and --interval must be > 0, --duration and --history-days >= 0")
    return args


def backfill(workdir: Path, tsdb: Path, days: float, seed: int, instance: str) -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        return "promtool not found: no backfilled history (install the Debian 'prometheus' package)"
    from exporter.sim.history import write_history
    step = 60.0
    start = (time.time() - days * 86400) // step * step
    t0 = time.perf_counter()
    res = write_history(workdir / "history", start=start, days=days, step=step, seed=seed,
                        job=JOB, instance=instance)
    t_sim = time.perf_counter() - t0
    out = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics",
                          str(workdir / "history" / "metrics.om"), str(tsdb)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"promtool backfill failed: {out.stderr[-2000:]}")
    return (f"backfilled {days:g} day(s) of sim history: {res.samples} samples in {t_sim:.1f}s, "
            f"promtool {time.perf_counter() - t0 - t_sim:.1f}s (truth: {workdir / 'history' / 'truth.json'})")


def fmt_readings(api: PrometheusAPI) -> list[str]:
    def by_gpu(q):
        return {r["metric"].get("gpu"): float(r["value"][1]) for r in api.query(q)}
    temp = by_gpu(f'gpu_temperature_celsius{{job="{JOB}"}}')
    power = by_gpu(f'gpu_power_usage_watts{{job="{JOB}"}}')
    util = by_gpu(f'gpu_utilization_ratio{{job="{JOB}"}}')
    mem = by_gpu(f'gpu_memory_used_bytes{{job="{JOB}"}}')
    fan = by_gpu(f'max by (gpu) (gpu_fan_speed_ratio{{job="{JOB}"}})')
    up = by_gpu(f'gpu_up{{job="{JOB}"}}')
    lines = []
    for gpu in sorted(set(up) | set(temp), key=lambda g: int(g) if g and g.isdigit() else 99):
        if up.get(gpu) == 0:
            lines.append(f"  gpu {gpu}: LOST (gpu_up 0)")
            continue
        lines.append(f"  gpu {gpu}: {temp.get(gpu, float('nan')):5.1f} C  {power.get(gpu, float('nan')):6.1f} W  "
                     f"util {100 * util.get(gpu, 0):3.0f} %  fan {100 * fan.get(gpu, 0):3.0f} %  "
                     f"vram {mem.get(gpu, 0) / 2**30:5.1f} GiB")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="rigwatch-demo-") if own_workdir else args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tsdb = workdir / "tsdb"
    shutil.rmtree(tsdb, ignore_errors=True)  # a fresh TSDB every run (ours: under the demo's workdir)
    exporter_port, prom_port = free_port(), free_port()
    instance = f"127.0.0.1:{exporter_port}"
    procs: list[Process] = []
    try:
        prometheus = shutil.which("prometheus")
        if prometheus is None:
            print("prometheus not found: run `make deps` (Debian package 'prometheus')", file=sys.stderr)
            return 1
        if args.history_days > 0:
            print(backfill(workdir, tsdb, args.history_days, args.seed, instance), flush=True)
        exporter = Process("exporter", [sys.executable, "-m", "exporter.cli", "--backend", "sim",
                                        "--listen", instance, "--speed", str(args.speed),
                                        "--seed", str(args.seed)], workdir / "exporter.log").start()
        procs.append(exporter)
        exporter.wait_ready(f"http://{instance}/metrics")
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n"
            f"scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: ['{instance}']\n"
            f"  - job_name: prometheus\n    static_configs:\n      - targets: ['127.0.0.1:{prom_port}']\n")
        prom = Process("prometheus", [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
                                      f"--web.listen-address=127.0.0.1:{prom_port}",
                                      "--storage.tsdb.retention.time=30d"], workdir / "prometheus.log",
                       cwd=workdir).start()
        procs.append(prom)
        prom_url = f"http://127.0.0.1:{prom_port}"
        prom.wait_ready(prom_url + "/-/ready", timeout=60)
        api = PrometheusAPI(prom_url)
        graph = (f"{prom_url}/graph?g0.expr=gpu_temperature_celsius&g0.tab=0&g0.range_input=1d"
                 "&g1.expr=gpu_power_usage_watts&g1.tab=0&g1.range_input=1d")
        print(f"exporter (sim, {args.speed:g}x): http://{instance}/metrics", flush=True)
        print(f"prometheus:                {prom_url}", flush=True)
        print(f"graph of the last day:     {graph}", flush=True)
        print(f"logs and TSDB:             {workdir}{' (removed on exit)' if own_workdir else ''}", flush=True)
        if args.history_days > 0:
            peak = api.query(f'max by (gpu) (max_over_time(gpu_temperature_celsius{{job="{JOB}"}}[1d]))')
            print("hottest in the backfilled day: " + ", ".join(
                f"gpu {r['metric']['gpu']} {float(r['value'][1]):.0f} C" for r in sorted(
                    peak, key=lambda r: r["metric"]["gpu"])), flush=True)
        print("Ctrl-C to stop. Live readings from Prometheus:", flush=True)
        t_end = time.monotonic() + args.duration if args.duration else None
        while not stop.is_set():
            for p in procs:
                if p.proc.poll() is not None:
                    print(f"{p.name} exited with {p.proc.returncode}; log:\n{p.tail()}", file=sys.stderr)
                    return 1
            try:
                lines = fmt_readings(api)
            except (OSError, RuntimeError, ValueError) as e:
                lines = [f"  (prometheus query failed: {e})"]
            print(time.strftime("%H:%M:%S") + (" (waiting for the first scrape)" if not lines else ""), flush=True)
            for line in lines:
                print(line, flush=True)
            wait = args.interval if t_end is None else min(args.interval, max(0.0, t_end - time.monotonic()))
            if stop.wait(wait) or (t_end is not None and time.monotonic() >= t_end):
                break
        print("stopping", flush=True)
        return 0
    finally:
        for p in reversed(procs):
            p.stop()
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
