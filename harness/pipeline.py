"""Start and stop the local rigwatch pipeline for the demo and the end-to-end test.

`Pipeline` wires the real parts on 127.0.0.1: the sim exporter (which first writes clean history ending
now, backfilled with promtool, then plays the same simulated box on live),
the detector, a real Prometheus evaluating the committed rules and a real Alertmanager routing with
the committed config to a `WebhookReceiver` in this process. Given a Loki URL (`PipelineOptions.
loki_url`), the log side joins in: the history's journal is pushed to Loki for training, the live sim's
journal is shipped there as it is written (`JournalShipper`, Promtail's part) and the detector reads it. `make demo` and
tests/test_pipeline_e2e.py run this same code.
"""
from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from harness.log_shipping import JournalShipper, loki_push, read_journal_records
from harness.processes import Process, backfill_openmetrics, free_port, http_json, require_binary
from harness.prometheus_api import PrometheusAPI
from harness.servers import AlertmanagerServer, PrometheusServer
from harness.webhook import WebhookReceiver

ROOT = Path(__file__).resolve().parents[1]
EXPORTER_JOB = "rigwatch-exporter"
DETECTOR_JOB = "rigwatch-detector"


def alertmanager_config(webhook_url: str, group_wait: float | None = None) -> str:
    """The committed alertmanager.yml with only the webhook URL, the templates path and (unless
    None) every route's group_wait changed: the pipeline's and the fleet test's Alertmanager."""
    cfg = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())
    cfg["templates"] = [str(ROOT / "alertmanager" / "templates" / "*.tmpl")]
    for r in cfg["receivers"]:
        for w in r.get("webhook_configs", []):
            w["url"] = webhook_url
    if group_wait is not None:
        routes = [cfg["route"], *cfg["route"].get("routes", [])]
        for route in routes:
            if "group_wait" in route:
                route["group_wait"] = f"{group_wait:g}s"
    return yaml.safe_dump(cfg, sort_keys=False)


def detector_config(prom_url: str, listen: str, store: Path, step: float, lookback: float, context: float,
                    api_token: str | None = None) -> str:
    """The detector's built-in preset pointed at `prom_url` (a Prometheus or VictoriaMetrics), on a
    schedule short enough to watch (`step`, `lookback` and `context` in seconds; no refit within a
    test): the demo's and the end-to-end tests' detector."""
    cfg = yaml.safe_load(resources.files("detector").joinpath("default_preset.yml").read_text())
    cfg["prometheus"] = {**cfg.get("prometheus", {}), "url": prom_url, "timeout": "10s", "retries": 2}
    cfg["listen"] = listen
    cfg["store"] = {"path": str(store)}
    cfg["schedule"] = {**cfg.get("schedule", {}), "step": f"{step:g}s", "fit_every": "1h",
                       "lookback": f"{int(lookback)}s", "context": f"{context:g}s"}
    if api_token is not None:
        cfg["api_token"] = api_token
    return yaml.safe_dump(cfg, sort_keys=False)


@dataclass
class PipelineOptions:
    """What differs between the demo and the test; everything else is the committed configuration."""

    schedule: str = "incidents: []\n"  # the live incident schedule (YAML), offsets from the exporter's start
    history_schedule: str | None = None  # incidents played in the backfilled history (offsets from its start)
    box: str = "aibox"  # the simulated box (rigwatch-exporter --box)
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
    api_token: str | None = None  # the detector's API token (its mutating calls: retrain, feedback, ...)


class Pipeline:
    """The whole rigwatch path on 127.0.0.1, every part real:

    sim history --promtool--> TSDB <-- Prometheus (committed rules) --scrape--> sim exporter, detector
    detector --query--> Prometheus;  Prometheus --alerts--> Alertmanager (committed routing) --> webhook

    `start()` brings the parts up in dependency order and raises with the failing part's log if one
    does not come up; `stop()` (also on a failed start) stops them all."""

    def __init__(self, workdir: Path, options: PipelineOptions | None = None,
                 on_notification: Callable[[dict], None] | None = None, log: Callable[[str], None] = print,
                 tracking_uri: Callable[[], str | None] | None = None):
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.opts = options or PipelineOptions()
        self.log = log
        # asked just before the detector starts: the MLflow URI it logs its fits to (`--mlflow-uri`), or
        # None. A callable, so that a tracking server started beside the pipeline can come up meanwhile
        self.tracking_uri = tracking_uri
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
        o = self.opts
        tsdb = self.workdir / "tsdb"
        shutil.rmtree(tsdb, ignore_errors=True)
        t0 = time.perf_counter()
        history = self.workdir / "history" / "metrics.om"
        backfill_openmetrics(history, tsdb)
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
        return alertmanager_config(self.webhook.url, self.opts.group_wait)

    def detector_config(self) -> str:
        """The detector's built-in preset, pointed at this Prometheus, on a schedule short enough to watch."""
        o = self.opts
        return detector_config(self.prom_url, f"127.0.0.1:{self.detector_port}", self.workdir / "models",
                               step=o.detector_step, lookback=o.history_hours * 3600 + 600,
                               context=o.detector_context, api_token=o.api_token)

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
        for binary in ("prometheus", "prometheus-alertmanager", "promtool"):  # before anything starts
            require_binary(binary)
        self.webhook.start()
        self._run(AlertmanagerServer(w, self.alertmanager_config(), port=self.am_port))
        (w / "schedule.yml").write_text(o.schedule)
        history_args: list[str] = []
        if o.history_schedule is not None:
            (w / "history_schedule.yml").write_text(o.history_schedule)
            history_args = ["--sim-history-config", str(w / "history_schedule.yml")]
        journal_args: list[str] = []
        if o.loki_url is not None:
            self.live_journal.unlink(missing_ok=True)
            journal_args = ["--sim-journal", str(self.live_journal)]
            self.shipper = JournalShipper(self.live_journal, o.loki_url).start()
        # the exporter first writes the clean history ending now (the detector's training data), then
        # the same simulated box plays on live; the schedule's offsets count from the live start
        self._run(self._part("exporter", [sys.executable, "-m", "exporter.cli", "--backend", "sim",
                                          "--listen", self.exporter_instance, "--box", o.box,
                                          "--sim-config", str(w / "schedule.yml"), *history_args,
                                          "--speed", f"{o.speed:g}", "--seed", str(o.seed), *journal_args,
                                          "--sim-history", str(w / "history"),
                                          "--sim-history-hours", f"{o.history_hours:g}",
                                          "--sim-history-step", f"{o.history_step:g}",
                                          "--sim-history-job", EXPORTER_JOB],
                             f"http://{self.exporter_instance}/metrics"), timeout=180)
        self.sim_start = time.time()  # the live box started at most one readiness poll before this
        self.log(self.backfill_history())
        if o.loki_url is not None:
            self.log(self.push_history_journal())
        self._run(PrometheusServer(w, self.prometheus_config(), storage=w / "tsdb", port=self.prom_port,
                                   retention="30d"), timeout=60)
        detector_yml = w / "detector.yml"
        detector_yml.touch()
        detector_yml.chmod(0o600)  # it may hold the API token: private before it is written
        detector_yml.write_text(self.detector_config())
        loki_args = ["--loki-url", o.loki_url] if o.loki_url is not None else []
        mlflow_uri = self.tracking_uri() if self.tracking_uri is not None else None
        tracking_args = ["--mlflow-uri", mlflow_uri] if mlflow_uri is not None else []
        self._run(self._part("detector", [sys.executable, "-m", "detector.cli", "serve",
                                          "--config", str(w / "detector.yml"), *loki_args, *tracking_args],
                             self.detector_url + "/healthz"), timeout=60)

    def _part(self, name: str, argv: list[str], ready_url: str) -> Process:
        return Process(name, argv, self.workdir / f"{name}.log", cwd=self.workdir, ready_url=ready_url)

    def _run(self, part: Process, timeout: float = 30.0) -> Process:
        self.procs.append(part)  # stopped by stop(), also when it never comes up
        return part.start(timeout=timeout)

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
