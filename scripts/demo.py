"""`make demo`: the whole rigwatch pipeline on 127.0.0.1, every part real, with a simulated AI box.

1. starts the simulated AI box (`rigwatch-exporter --backend sim --sim-history DIR`), which first
   writes a few hours of clean history ending now (the real collector over sim time; backfilled into a
   fresh Prometheus TSDB with promtool: the detector's training data) and then plays the same box on
   live - counters and temperatures carry on - with a short demo schedule (a fan failing on GPU 0,
   then GPU 1 falling off the bus);
2. starts a real Alertmanager with the
   committed alertmanager.yml delivering to a webhook receiver inside this script, a real Prometheus
   scraping the exporter and the detector and evaluating the committed rules, and
   `rigwatch-detector serve` (the built-in preset, scoring every 10 s) and, for the log side, a Loki:
   the history's journal is pushed into it for training and the live sim's journal is shipped into it
   as it is written. Loki itself is not installable on the machines this was built on, so unless
   --loki-url names a real one, the demo starts the repository's API-faithful Loki stand-in
   (harness/loki_standin.py: push + query_range, in memory) - a stand-in, not Loki;
3. prints where to look, then streams what happens: anomaly scores crossing 1 (from Prometheus),
   incidents the detector confirms (GET /api/v1/anomalies), notifications Alertmanager delivers, a
   line of live GPU readings every --interval seconds and, when it changes, what the box's inference
   servers hold and run; and the model lifecycle from the detector's
   API (scripts/demo_lifecycle.py): the models after the first fit, one retrain with this run's API
   token and the decision recorded for each detector, feedback on the first incident; and the MLflow
   side (scripts/demo_mlflow.py): a real `mlflow server` (SQLite, in the workdir) started beside the
   rest, the detector logging every fit to it, its UI address, and per gated refit the run, the
   registered version and where the `champion` alias points, read back from MLflow (without mlflow,
   or with a server that does not come up, the demo says so in one line and goes on);
4. stops everything on Ctrl-C / SIGTERM (or after --duration seconds).

    python -m scripts.demo [--duration SECONDS] [--workdir DIR] [--seed N] [--schedule FILE] [--speed 1]
                           [--loki-url URL | --no-logs]

Speed: --speed N plays the sim N times faster than the wall clock, but Prometheus stamps samples with
wall-clock time, so every counter's rate() comes out N times too high (the thermal model's power
feature is rate(gpu_energy_consumption_joules_total): at N=10 it expects 5000 C) and every duration N
times too short against the models trained on the speed-1 history. The demo therefore runs at speed
1 and schedules its incidents in its first minutes instead; --speed is for watching the hard guards.
"""
from __future__ import annotations

import argparse
import math
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import yaml

from exporter.sim.containers import NAMES as CONTAINER_NAMES
from exporter.sim.schedule import ScheduleError, parse_schedule
from harness.loki_standin import LokiTestServer
from harness.pipeline import EXPORTER_JOB, Pipeline, PipelineOptions
from harness.prometheus_api import PrometheusAPI
from scripts.demo_lifecycle import Lifecycle
from scripts.demo_mlflow import DemoMlflow

# Offsets from the exporter's start, in sim time (= wall time at the default --speed 1): GPU 0's fan
# fails 30 s in and stays broken long enough for the thermal model's score, its 3-minute incident and
# the 5-minute `for:` of the model-based alert; GPU 1 falls off the bus 2 minutes in, which the
# hard guards alert on at once (`for: 0m`) and the detector scores on its next pass.
DEMO_SCHEDULE = """\
incidents:
  - {kind: fan_failure, at: 30s, duration: 20m, gpu: 0}
  - {kind: gpu_lost, at: 2m, duration: 15m, gpu: 1}
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--speed", type=float, default=1.0,
                   help="sim seconds per wall second (default 1; see the note on speed above)")
    p.add_argument("--duration", type=float, default=0.0,
                   help="stop after this many seconds (default 0: run until Ctrl-C)")
    p.add_argument("--workdir", default=None, help="where logs, configs and the TSDB go (default: a temp "
                   "dir, removed on exit)")
    p.add_argument("--seed", type=int, default=0, help="sim seed (default 0)")
    p.add_argument("--schedule", default=None, help="incident schedule YAML for the live sim (default: the "
                   "demo's fan failure + lost GPU)")
    p.add_argument("--history-hours", type=float, default=3.0,
                   help="hours of clean history to train on (default 3; the thermal model needs 2)")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between GPU reading lines (default 30)")
    logs = p.add_mutually_exclusive_group()
    logs.add_argument("--loki-url", default=None,
                      help="a real Loki to push the sim journal to and read it back from (default: start the "
                      "in-repo Loki stand-in on 127.0.0.1)")
    logs.add_argument("--no-logs", action="store_true", help="run without the log side")
    args = p.parse_args(argv)
    if args.speed <= 0 or args.duration < 0 or args.history_hours <= 0 or args.interval <= 0:
        p.error("--speed, --history-hours and --interval must be > 0, --duration >= 0")
    return args


_SAY = threading.Lock()


def say(line: str) -> None:
    # one write per line under a lock: the webhook thread and the main loop print at the same time
    with _SAY:
        sys.stdout.write(f"{time.strftime('%H:%M:%S')}  {line}\n")
        sys.stdout.flush()


_WHERE_KEYS = ("gpu", "container", "xid", "reason", "unit")
_LOG_WHERE_KEYS = ("pattern", "gpu", "xid", "container", "unit", "identifier", "template_id")


def _where(labels: dict) -> str:
    """What a series or alert is about; a log score names its pattern or stream, else its job."""
    log_score = labels.get("__name__") == "rigwatch_log_anomaly_score"
    keep = [f"{k}={labels[k]}" for k in (_LOG_WHERE_KEYS if log_score else _WHERE_KEYS) if labels.get(k)]
    return " ".join(keep) or labels.get("job" if log_score else "instance", "")


def fmt_readings(api: PrometheusAPI) -> str:
    def by_gpu(q):
        return {r["metric"].get("gpu"): float(r["value"][1]) for r in api.query(q)}
    temp = by_gpu(f'gpu_temperature_celsius{{job="{EXPORTER_JOB}"}}')
    power = by_gpu(f'gpu_power_usage_watts{{job="{EXPORTER_JOB}"}}')
    util = by_gpu(f'gpu_utilization_ratio{{job="{EXPORTER_JOB}"}}')
    fan = by_gpu(f'max by (gpu) (gpu_fan_speed_ratio{{job="{EXPORTER_JOB}"}})')
    up = by_gpu(f'gpu_up{{job="{EXPORTER_JOB}"}}')
    parts = []
    for gpu in sorted(set(up) | set(temp), key=lambda g: int(g) if g and g.isdigit() else 99):
        if up.get(gpu) == 0:
            parts.append(f"gpu {gpu}: LOST")
            continue
        parts.append(f"gpu {gpu}: {temp.get(gpu, float('nan')):3.0f} C {power.get(gpu, float('nan')):4.0f} W "
                     f"util {100 * util.get(gpu, 0):3.0f} % fan {100 * fan.get(gpu, 0):3.0f} %")
    return " | ".join(parts) or "(waiting for the first scrape)"


def fmt_servers(api: PrometheusAPI) -> str:
    """The box's inference servers as the exporter reads them: up or not, the models each holds, the
    requests it says it runs (where it says), and a GPU busy with none of them asking."""
    def rows(q):
        return [(r["metric"], float(r["value"][1])) for r in api.query(q)]
    held: dict[str, list[str]] = {}
    for m, v in rows(f'inference_model_vram_bytes{{job="{EXPORTER_JOB}"}}'):
        held.setdefault(m.get("server", ""), []).append(f"{m.get('model')} {v / 2**30:.1f} GiB")
    running = {m.get("server"): v for m, v in rows(f'inference_requests_running{{job="{EXPORTER_JOB}"}}')}
    waiting = {m.get("server"): v for m, v in rows(f'inference_requests_waiting{{job="{EXPORTER_JOB}"}}')}
    parts = []
    for m, up in sorted(rows(f'inference_server_up{{job="{EXPORTER_JOB}"}}'), key=lambda r: r[0].get("server", "")):
        server = m.get("server", "")
        if not up:
            parts.append(f"{server} down")
            continue
        said = [f"holding {', '.join(sorted(held[server]))}"] if held.get(server) else []
        if server in running:  # a queue (ComfyUI) names no model: say what it runs instead
            said.append(f"{running[server]:.0f} running, {waiting.get(server, 0):.0f} queued")
        parts.append(f"{server} up, {', '.join(said or ['no model loaded'])}")
    for m, seconds in rows("rigwatch_gpu_busy_without_requests_seconds > 0"):
        parts.append(f"gpu {m.get('gpu')} busy with no request for {seconds / 60:.0f} min")
    return " | ".join(parts) or "(no inference server read yet)"


class Streamer:
    """Turns polled state into one printed line per change: scores crossing 1, confirmed incidents."""

    def __init__(self, pipe: Pipeline):
        self.pipe = pipe
        self.above: dict[tuple, float] = {}  # series above 1 -> peak seen
        self.incidents: set[tuple] = set()
        self.confirmed_in_order: list[dict] = []  # as printed (the lifecycle labels the first)
        self.anomalies_seen = 0
        self.alerts_seen = 0

    def scores(self) -> None:
        api = self.pipe.prom
        rows = api.query("rigwatch_anomaly_score > 1 or rigwatch_log_anomaly_score > 1")
        now_above = {}
        for r in rows:
            m = r["metric"]
            key = tuple(sorted((k, v) for k, v in m.items()))
            now_above[key] = float(r["value"][1])
        for key, score in now_above.items():
            if key in self.above:
                continue
            m = dict(key)
            if m.get("__name__") == "rigwatch_log_anomaly_score":
                self.anomalies_seen += 1
                say(f"ANOMALY   {m.get('detector')} (logs) {_where(m)}: score {score:.2f} > 1")
                continue
            sel = ",".join(f'{k}="{v}"' for k, v in key if k != "__name__")
            band = {}
            for what in ("expected", "lower", "upper"):
                res = api.query(f"rigwatch_anomaly_{what}{{{sel}}}")
                band[what] = float(res[0]["value"][1]) if res else float("nan")
            self.anomalies_seen += 1
            detail = ""
            if math.isfinite(band["expected"]):
                detail = f", expected {band['expected']:.4g}"
                if math.isfinite(band["lower"]) and math.isfinite(band["upper"]):
                    detail += f" (band {band['lower']:.4g} .. {band['upper']:.4g})"
            say(f"ANOMALY   {m.get('detector')} ({m.get('model')}) {_where(m)}: score {score:.2f} > 1{detail}")
        for key in set(self.above) - set(now_above):
            m = dict(key)
            say(f"normal    {m.get('detector')} {_where(m)}: score back under 1")
        self.above = now_above

    def confirmed(self) -> None:
        for a in sorted(self.pipe.anomalies(), key=lambda a: a["start"]):  # the API lists newest first
            key = (a["detector"], tuple(sorted(a["labels"].items())), a["start"])
            if key in self.incidents:
                continue
            self.incidents.add(key)
            self.confirmed_in_order.append(a)
            why = "; ".join(e for e in a.get("explanation") or [] if e not in a["summary"])
            say(f"INCIDENT  {a['summary']} since {a['start']}{' — ' + why if why else ''}")

    def notification(self, note: dict) -> None:
        for a in note.get("alerts", []):
            lab, ann = a["labels"], a.get("annotations", {})
            if a["status"] == "firing":
                self.alerts_seen += 1
                desc = " ".join(ann.get("description", "").split())
                say(f"ALERT     {lab.get('alertname')} ({lab.get('severity')}) {_where(lab)} -> "
                    f"{note.get('receiver')}: {desc}")
            else:
                say(f"RESOLVED  {lab.get('alertname')} {_where(lab)}")


def main(argv=None) -> int:
    args = parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        schedule = Path(args.schedule).read_text() if args.schedule else DEMO_SCHEDULE
        incidents = parse_schedule(yaml.safe_load(schedule), containers=set(CONTAINER_NAMES))
    except (OSError, yaml.YAMLError, ScheduleError) as e:
        print(f"demo: --schedule {args.schedule}: {e}", file=sys.stderr)
        return 2
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="rigwatch-demo-") if own_workdir else args.workdir).resolve()
    loki = None
    if not args.no_logs and args.loki_url is None:
        loki = LokiTestServer().start()  # the in-repo stand-in (see the docstring)
    loki_url = None if args.no_logs else (args.loki_url or loki.url)
    token = secrets.token_urlsafe(24)  # this run's API token: the lifecycle's POSTs, and yours
    opts = PipelineOptions(schedule=schedule, speed=args.speed, seed=args.seed, history_hours=args.history_hours,
                           loki_url=loki_url, api_token=token)
    streamer: Streamer | None = None

    def on_note(note):
        if streamer is not None:
            streamer.notification(note)

    mlflow = DemoMlflow(workdir / "mlflow", say)
    pipe = Pipeline(workdir, opts, on_notification=on_note, log=lambda s: say(s), tracking_uri=mlflow.uri)
    streamer = Streamer(pipe)
    try:
        print("rigwatch demo: simulated AI box -> Prometheus -> detector -> rules -> Alertmanager, on 127.0.0.1",
              flush=True)
        mlflow.start()  # its start-up (seconds) runs beside the pipeline's; the detector waits for it
        try:
            pipe.start()
            fitted = pipe.wait_detector_ready(timeout=120)
        except (FileNotFoundError, RuntimeError, TimeoutError) as e:
            print(f"demo: could not start the pipeline: {e}", file=sys.stderr)
            return 1
        prom = pipe.prom_url
        band = 'gpu_temperature_celsius or {__name__=~"rigwatch_anomaly_(expected|lower|upper)",detector="gpu_thermal"}'
        graph = (f"{prom}/graph?" + urllib.parse.urlencode({
            "g0.expr": "rigwatch_anomaly_score", "g0.tab": "0", "g0.range_input": "30m",
            "g1.expr": band, "g1.tab": "0", "g1.range_input": "30m"}))
        print(f"  sim exporter ({args.speed:g}x): http://{pipe.exporter_instance}/metrics", flush=True)
        print(f"  detector:             {pipe.detector_url}/api/v1/anomalies   (models: /api/v1/models)", flush=True)
        print(f"  api token:            {token}  (Authorization: Bearer …, for POST /api/v1/retrain, "
              "/feedback, /models/<detector>/promote|rollback)", flush=True)
        print(f"  prometheus:           {prom}/alerts", flush=True)
        print(f"  score and band graph: {graph}", flush=True)
        print(f"  alertmanager:         {pipe.am_url}", flush=True)
        if loki_url is not None:
            print(f"  loki:                 {loki_url}"
                  f"{'  (the in-repo Loki stand-in, not Loki)' if loki is not None else ''}", flush=True)
        print(f"  logs, configs, TSDB:  {workdir}{' (removed on exit)' if own_workdir else ''}", flush=True)
        for inc in incidents:
            where = f" on GPU {inc.gpu}" if inc.gpu is not None else (f" in {inc.container}" if inc.container else "")
            print(f"  scheduled: {inc.kind}{where}, {inc.at / args.speed:.0f} s after start for "
                  f"{inc.duration / args.speed:.0f} s", flush=True)
        say(f"detector ready {fitted:.1f} s after start: models fitted on the backfilled history. "
            "Ctrl-C to stop.")
        lifecycle = Lifecycle(pipe.detector_url, token, say, schedule=incidents, sim_start=pipe.sim_start,
                              speed=args.speed)
        t_end = time.monotonic() + args.duration if args.duration else None
        next_reading = 0.0
        last_servers = None
        while not stop.is_set():
            dead = pipe.dead()
            if dead is not None:
                print(f"{dead.name} exited with {dead.proc.returncode}; log:\n{dead.tail()}", file=sys.stderr)
                return 1
            try:
                if time.monotonic() >= next_reading:
                    say(fmt_readings(pipe.prom))
                    servers = fmt_servers(pipe.prom)
                    if servers != last_servers:  # said when it changes: a model loads, a server goes down
                        say(f"servers:  {servers}")
                        last_servers = servers
                    next_reading = time.monotonic() + args.interval
                streamer.scores()
                streamer.confirmed()
                lifecycle.step(streamer.confirmed_in_order)
                mlflow.step(lifecycle.decided)
            except (OSError, RuntimeError, ValueError) as e:
                say(f"(query failed: {e})")
            if stop.wait(2.0) or (t_end is not None and time.monotonic() >= t_end):
                break
        say(f"stopping: {streamer.anomalies_seen} anomaly score(s) crossed 1, "
            f"{streamer.alerts_seen} alert notification(s) delivered")
        return 0
    finally:
        pipe.stop()  # the detector first: it flushes its queued runs to the server
        mlflow.stop()
        if loki is not None:
            loki.stop()
        print("stopped", flush=True)
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
