"""Start and stop the local rigwatch pipeline for the demo and the end-to-end test.

`Pipeline` wires the real parts on 127.0.0.1: the sim exporter (which first writes clean history ending
now, backfilled with promtool, then plays the same simulated box on live),
the detector, a real Prometheus evaluating the committed rules and a real Alertmanager routing with
the committed config to a `WebhookReceiver` in this process. Given a Loki URL (`PipelineOptions.
loki_url`), the log side joins in: the history's journal is pushed to Loki for training, the live sim's
journal is shipped there as it is written (`JournalShipper`, Promtail's part) and the detector reads it. `make demo` and
tests/test_pipeline_e2e.py run this same code. Only the standard library and the package's own
dependencies (PyYAML), so `make demo` needs nothing beyond the package itself.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXPORTER_JOB = "rigwatch-exporter"
DETECTOR_JOB = "rigwatch-detector"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 3.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def http_json(url: str, timeout: float = 10.0):
    return json.loads(http_get(url, timeout=timeout))


class Process:
    """A child process whose output goes to a log file; `wait_ready(url)` polls until it answers 200."""

    def __init__(self, name: str, argv: list[str], log_path: Path, cwd: Path | None = None):
        self.name = name
        self.argv = argv
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> Process:
        self._log = open(self.log_path, "ab")
        # its own session: a Ctrl-C in the terminal reaches only the demo, which then stops the
        # parts in order (detector before Prometheus, Prometheus before Alertmanager)
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.cwd,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def wait_ready(self, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log:\n{self.tail()}")
            try:
                http_get(url, timeout=1)
                return
            except (urllib.error.URLError, OSError) as e:
                last = e
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready at {url} after {timeout}s ({last}); log:\n{self.tail()}")

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


class PrometheusAPI:
    def __init__(self, url: str):
        self.url = url

    def query(self, promql: str, at: float | None = None) -> list[dict]:
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        body = json.loads(http_get(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}", timeout=10))
        if body.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {body}")
        return body["data"]["result"]

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[dict]:
        params = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        body = json.loads(http_get(f"{self.url}/api/v1/query_range?{urllib.parse.urlencode(params)}",
                                   timeout=30))
        if body.get("status") != "success":
            raise RuntimeError(f"query_range {promql!r} failed: {body}")
        return body["data"]["result"]


class WebhookReceiver:
    """An Alertmanager webhook target on 127.0.0.1 collecting every POSTed notification (its JSON).

    `on_notification(payload)` is called for each one (from the server thread), e.g. to print it."""

    def __init__(self, on_notification: Callable[[dict], None] | None = None, path: str = "/alerts"):
        self.path = path
        self.notifications: list[dict] = []
        self.bad_requests = 0
        self._cond = threading.Condition()
        self._on = on_notification
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    payload = json.loads(body)
                    ok = self.path == receiver.path and isinstance(payload, dict)
                except ValueError:
                    ok = False
                # record before answering: whoever sees the answer sees the notification kept
                if ok:
                    with receiver._cond:
                        receiver.notifications.append(payload)
                        receiver._cond.notify_all()
                    if receiver._on is not None:
                        receiver._on(payload)
                else:
                    with receiver._cond:
                        receiver.bad_requests += 1
                self.send_response(200 if ok else 400)
                self.end_headers()

            def log_message(self, *args):  # keep the demo's and the test's output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{path}"
        self._thread: threading.Thread | None = None

    def start(self) -> WebhookReceiver:
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def alerts(self) -> list[dict]:
        """Every alert of every notification received so far (status, labels, annotations...)."""
        with self._cond:
            return [a for n in self.notifications for a in n.get("alerts", [])]

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float) -> dict | None:
        """The first received alert matching predicate, waiting up to timeout seconds; None if none."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for n in self.notifications:
                    for a in n.get("alerts", []):
                        if predicate(a):
                            return a
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 1.0))


@dataclass
class PipelineOptions:
    """What differs between the demo and the test; everything else is the committed configuration."""

    schedule: str = "incidents: []\n"  # the live incident schedule (YAML), offsets from the exporter's start
    speed: float = 1.0  # sim seconds per wall second for the live part
    seed: int = 0
    history_hours: float = 3.0  # clean sim history backfilled before "now" (detector training data)
    history_step: float = 15.0
    scrape_interval: float = 5.0
    evaluation_interval: float = 5.0
    detector_step: float = 10.0  # the detector's scoring cadence and resolution
    detector_context: float = 1800.0
    group_wait: float | None = 5.0  # Alertmanager's group_wait on every route; None keeps the committed ones
    extra_prometheus_scrape: list[dict] = field(default_factory=list)
    loki_url: str | None = None  # a Loki (push + query_range API) for the log side; None runs without logs


JOURNAL_BATCH = 2000  # entries per push request


def loki_push(loki_url: str, records: list[dict], timeout: float = 10.0) -> int:
    """Push `journalctl -o json` records to Loki as Promtail would: one stream per label set (the
    stream-label contract, mapped by detector.logs.journal), the MESSAGE as the line, the journal's
    microsecond timestamp as nanoseconds. Returns the number of entries sent."""
    from detector.logs.journal import entry_from_journal

    streams: dict[tuple, list[list[str]]] = {}
    for record in records:
        entry = entry_from_journal(record)
        ts_ns = str(int(record["__REALTIME_TIMESTAMP"]) * 1000)
        streams.setdefault(entry.stream_key, []).append([ts_ns, entry.message])
    sent = 0
    for key, values in streams.items():
        for i in range(0, len(values), JOURNAL_BATCH):
            body = json.dumps({"streams": [{"stream": dict(key), "values": values[i:i + JOURNAL_BATCH]}]}).encode()
            req = urllib.request.Request(f"{loki_url.rstrip('/')}/loki/api/v1/push", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=timeout) as r:
                if r.status // 100 != 2:
                    raise RuntimeError(f"Loki push answered {r.status}")
            sent += len(values[i:i + JOURNAL_BATCH])
    return sent


def read_journal_records(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return [json.loads(line) for line in fh if line.strip()]


class JournalShipper:
    """Promtail's part for the live sim: tails a `journalctl -o json` file the exporter appends to and
    pushes each complete new line to Loki, every `interval` seconds. A failed push is kept and retried
    with the next batch (counted in `errors`), so no line is lost to a Loki hiccup."""

    def __init__(self, path: Path, loki_url: str, interval: float = 0.5):
        self.path = Path(path)
        self.loki_url = loki_url
        self.interval = interval
        self.shipped = 0
        self.errors = 0
        self._offset = 0
        self._pending: list[dict] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ship_once(self) -> int:
        """Read the complete lines appended since the last call and push them (with any left over from a
        failed push). Returns the number pushed."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            data = b""
        complete = data[:data.rfind(b"\n") + 1]  # a half-written last line waits for the next round
        self._offset += len(complete)
        for line in complete.decode("utf-8", errors="replace").splitlines():
            if line.strip():
                try:
                    self._pending.append(json.loads(line))
                except ValueError:
                    self.errors += 1  # not JSON: nothing Promtail could ship either
        if not self._pending:
            return 0
        try:
            n = loki_push(self.loki_url, self._pending)
        except urllib.error.HTTPError as e:
            self.errors += 1
            if 400 <= e.code < 500:  # Loki refused the lines themselves: retrying cannot help
                self._pending = []
            return 0
        except (OSError, RuntimeError):
            self.errors += 1
            return 0
        self._pending = []
        self.shipped += n
        return n

    def start(self) -> JournalShipper:
        def run():
            while not self._stop.wait(self.interval):
                self.ship_once()

        self._thread = threading.Thread(target=run, name="journal-shipper", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None


class Pipeline:
    """The whole rigwatch path on 127.0.0.1, every part real:

    sim history --promtool--> TSDB <-- Prometheus (committed rules) --scrape--> sim exporter, detector
    detector --query--> Prometheus;  Prometheus --alerts--> Alertmanager (committed routing) --> webhook

    `start()` brings the parts up in dependency order and raises with the failing part's log if one
    does not come up; `stop()` (also on a failed start) stops them all."""

    def __init__(self, workdir: Path, options: PipelineOptions | None = None,
                 on_notification: Callable[[dict], None] | None = None, log: Callable[[str], None] = print):
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.opts = options or PipelineOptions()
        self.log = log
        self.webhook = WebhookReceiver(on_notification)
        self.exporter_port, self.detector_port, self.prom_port, self.am_port = (free_port() for _ in range(4))
        self.exporter_instance = f"127.0.0.1:{self.exporter_port}"
        self.detector_url = f"http://127.0.0.1:{self.detector_port}"
        self.prom_url = f"http://127.0.0.1:{self.prom_port}"
        self.am_url = f"http://127.0.0.1:{self.am_port}"
        self.prom = PrometheusAPI(self.prom_url)
        self.procs: list[Process] = []
        self.sim_start: float | None = None  # wall time the live sim's schedule offsets count from
        self.live_journal = self.workdir / "journal-live.jsonl"
        self.shipper: JournalShipper | None = None

    # -- parts ----------------------------------------------------------------------------------
    def backfill_history(self) -> str:
        """Load the clean history the sim exporter wrote before going live (`--sim-history`: one box,
        history then live, so its counters carry on without a seam) into a fresh TSDB with promtool."""
        promtool = _binary("promtool")
        o = self.opts
        tsdb = self.workdir / "tsdb"
        shutil.rmtree(tsdb, ignore_errors=True)
        t0 = time.perf_counter()
        history = self.workdir / "history" / "metrics.om"
        out = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(history), str(tsdb)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"promtool backfill failed: {out.stderr[-2000:]}")
        with open(history) as fh:
            samples = sum(1 for line in fh if not line.startswith("#"))
        return (f"backfilled {o.history_hours:g} h of clean sim history ({samples} samples, every "
                f"{o.history_step:g} s) in {time.perf_counter() - t0:.1f} s")

    def push_history_journal(self) -> str:
        """The backfilled history's journal into Loki: the log side's training data, like the metrics'."""
        t0 = time.perf_counter()
        n = loki_push(self.opts.loki_url, read_journal_records(self.workdir / "history" / "journal.jsonl"))
        return f"pushed {n} history journal lines to Loki in {time.perf_counter() - t0:.1f} s"

    def prometheus_config(self) -> str:
        o = self.opts
        rules = self.workdir / "rules"
        shutil.rmtree(rules, ignore_errors=True)
        rules.mkdir()
        for f in sorted((ROOT / "prometheus" / "rules").glob("*.yml")):
            shutil.copy(f, rules / f.name)
        cfg = {
            "global": {"scrape_interval": f"{o.scrape_interval:g}s", "evaluation_interval": f"{o.evaluation_interval:g}s",
                       "scrape_timeout": f"{min(o.scrape_interval, 10):g}s"},
            "rule_files": [str(rules / "*.yml")],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{self.am_port}"]}]}]},
            "scrape_configs": [
                {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{self.prom_port}"]}]},
                {"job_name": EXPORTER_JOB, "static_configs": [{"targets": [self.exporter_instance]}]},
                {"job_name": DETECTOR_JOB, "honor_labels": True,
                 "static_configs": [{"targets": [f"127.0.0.1:{self.detector_port}"]}]},
                *o.extra_prometheus_scrape,
            ],
        }
        return yaml.safe_dump(cfg, sort_keys=False)

    def alertmanager_config(self) -> str:
        """The committed alertmanager.yml with only the webhook URL, the templates path and (when
        asked) group_wait changed."""
        cfg = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())
        cfg["templates"] = [str(ROOT / "alertmanager" / "templates" / "*.tmpl")]
        for r in cfg["receivers"]:
            for w in r.get("webhook_configs", []):
                w["url"] = self.webhook.url
        if self.opts.group_wait is not None:
            routes = [cfg["route"], *cfg["route"].get("routes", [])]
            for route in routes:
                if "group_wait" in route:
                    route["group_wait"] = f"{self.opts.group_wait:g}s"
        return yaml.safe_dump(cfg, sort_keys=False)

    def detector_config(self) -> str:
        """The detector's built-in preset, pointed at this Prometheus, on a schedule short enough to watch."""
        o = self.opts
        cfg = yaml.safe_load(resources.files("detector").joinpath("default_preset.yml").read_text())
        cfg["prometheus"] = {**cfg.get("prometheus", {}), "url": self.prom_url, "timeout": "10s", "retries": 2}
        cfg["listen"] = f"127.0.0.1:{self.detector_port}"
        cfg["store"] = {"path": str(self.workdir / "models")}
        cfg["schedule"] = {**cfg.get("schedule", {}), "step": f"{o.detector_step:g}s", "fit_every": "1h",
                           "lookback": f"{int(o.history_hours * 3600 + 600)}s",
                           "context": f"{o.detector_context:g}s"}
        return yaml.safe_dump(cfg, sort_keys=False)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Pipeline:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        w, o = self.workdir, self.opts
        prometheus, alertmanager = _binary("prometheus"), _binary("prometheus-alertmanager")
        self.webhook.start()
        (w / "alertmanager.yml").write_text(self.alertmanager_config())
        self._run("alertmanager", [alertmanager, f"--config.file={w / 'alertmanager.yml'}",
                                   f"--storage.path={w / 'am-data'}", f"--web.listen-address=127.0.0.1:{self.am_port}",
                                   "--cluster.listen-address="], self.am_url + "/-/ready")
        (w / "schedule.yml").write_text(o.schedule)
        journal_args: list[str] = []
        if o.loki_url is not None:
            self.live_journal.unlink(missing_ok=True)
            journal_args = ["--sim-journal", str(self.live_journal)]
            self.shipper = JournalShipper(self.live_journal, o.loki_url).start()
        # the exporter first writes the clean history ending now (the detector's training data), then
        # the same simulated box plays on live; the schedule's offsets count from the live start
        self._run("exporter", [sys.executable, "-m", "exporter.cli", "--backend", "sim",
                               "--listen", self.exporter_instance, "--sim-config", str(w / "schedule.yml"),
                               "--speed", f"{o.speed:g}", "--seed", str(o.seed), *journal_args,
                               "--sim-history", str(w / "history"), "--sim-history-hours", f"{o.history_hours:g}",
                               "--sim-history-step", f"{o.history_step:g}", "--sim-history-job", EXPORTER_JOB],
                  f"http://{self.exporter_instance}/metrics", timeout=180)
        self.sim_start = time.time()  # the live box started at most one readiness poll before this
        self.log(self.backfill_history())
        if o.loki_url is not None:
            self.log(self.push_history_journal())
        (w / "prometheus.yml").write_text(self.prometheus_config())
        self._run("prometheus", [prometheus, f"--config.file={w / 'prometheus.yml'}", f"--storage.tsdb.path={w / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{self.prom_port}",
                                 "--storage.tsdb.retention.time=30d"], self.prom_url + "/-/ready", timeout=60)
        (w / "detector.yml").write_text(self.detector_config())
        loki_args = ["--loki-url", o.loki_url] if o.loki_url is not None else []
        self._run("detector", [sys.executable, "-m", "detector.cli", "serve", "--config", str(w / "detector.yml"),
                               *loki_args], self.detector_url + "/healthz", timeout=60)

    def _run(self, name: str, argv: list[str], ready_url: str, timeout: float = 30.0) -> Process:
        p = Process(name, argv, self.workdir / f"{name}.log", cwd=self.workdir).start()
        self.procs.append(p)
        p.wait_ready(ready_url, timeout=timeout)
        return p

    def wait_detector_ready(self, timeout: float = 120.0) -> float:
        """Wait until the detector has fitted its models (GET /readyz 200); returns the seconds waited."""
        t0 = time.monotonic()
        self.procs[-1].wait_ready(self.detector_url + "/readyz", timeout=timeout)
        return time.monotonic() - t0

    def dead(self) -> Process | None:
        """The first part that exited on its own, if any."""
        return next((p for p in self.procs if p.proc is not None and p.proc.poll() is not None), None)

    def anomalies(self, since: float | None = None) -> list[dict]:
        q = f"?since={since:.0f}" if since is not None else ""
        return http_json(f"{self.detector_url}/api/v1/anomalies{q}")["anomalies"]

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        if self.shipper is not None:
            self.shipper.stop()
        self.webhook.stop()


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} not found: run `make deps` (Debian packages prometheus, "
                                f"prometheus-alertmanager)")
    return path
