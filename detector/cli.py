"""rigwatch-detector: `serve` (scheduler + API in one waitress process), `backtest`, `templates` and
`models` (the model registry).

Exit codes: 0 success (a backtest with no incidents included), 1 runtime failure (e.g. Prometheus
unreachable during a backtest), 2 usage or config errors (the message names the key or flag).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from detector import dataset_cli, registry_cli
from detector.cli_args import UsageError, add_range_args, range_args
from detector.config import ConfigError, apply_overrides, load_config
from detector.config_values import host_port
from detector.logs import templates_cli
from rigwatch.http_server import BoundedServer
from rigwatch.redact import redact_text, redact_url

log = logging.getLogger("rigwatch.detector")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits 2 too; keep one place that says so
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rigwatch-detector", description="rigwatch's ML sidecar: anomaly scores from "
                "Prometheus (and logs) published as metrics")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("serve", help="run the scheduler and serve /metrics and the API")
    s.add_argument("--config", help="detector.yml (default: the built-in preset)")
    s.add_argument("--listen", help="HOST:PORT (default from config: 127.0.0.1:9843)")
    s.add_argument("--prometheus-url", help="override prometheus.url from the config")
    s.add_argument("--store", help="override store.path (model store directory)")
    s.add_argument("--prometheus-latency-offset", metavar="DURATION",
                   help="override prometheus.latency_offset: stay this far behind now (30s for VictoriaMetrics, "
                   "whose newest 30 s are hidden from queries)")
    s.add_argument("--mlflow-uri", help="log every fit to MLflow (sqlite:///PATH/mlflow.db or http(s)://HOST:PORT); "
                   "overrides tracking.uri, adding a tracking: section if the config has none")
    s.add_argument("--loki-url", help="set loki.url (adds a loki: section if the config has none, "
                   "which turns log detection on)")
    s.add_argument("--shard", metavar="I/N", help="this replica is shard I of N: it scores the series whose "
                   "identity hashes to I (the context detector: the GPUs it owns), keeps its models in "
                   "STORE/shard-I, and (I = 0 only) runs the log detectors; overrides the config's shard")
    s.set_defaults(func=cmd_serve)

    b = sub.add_parser("backtest", help="replay a time range and write an incident report")
    add_range_args(b)
    b.add_argument("--output", required=True, help="report.json")
    b.add_argument("--config", help="detector.yml (default: the built-in preset)")
    b.add_argument("--journal-file", help="journalctl -o json lines (log detection)")
    b.add_argument("--plot", metavar="DIR", help="write a PNG per incident into DIR")
    b.add_argument("--threshold", type=float, default=1.0, help="score above which a point is anomalous "
                   "(default 1.0, the scoring convention)")
    b.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    b.add_argument("--shard", metavar="I/N", help="replay only the series shard I of N owns (as serve --shard)")
    b.set_defaults(func=cmd_backtest)

    templates_cli.add_parser(sub)
    registry_cli.add_parser(sub)
    dataset_cli.add_parsers(sub)
    return p


def _usage_error(msg: str) -> int:
    print(f"rigwatch-detector: error: {msg}", file=sys.stderr)
    return 2


def cmd_backtest(args) -> int:
    from detector.backtest import run_backtest, write_report
    from detector.plugins import backtest_plugins, prometheus_client
    from detector.promclient import PromError

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        return _usage_error(f"config {args.config or '<default preset>'}: {e}")
    try:
        start, end = range_args(args)
        apply_overrides(cfg, shard=args.shard)
    except (UsageError, ConfigError) as e:
        return _usage_error(str(e))
    if args.threshold <= 0:
        return _usage_error("--threshold: must be > 0")
    if args.journal_file and not os.path.isfile(args.journal_file):
        return _usage_error(f"--journal-file: no such file: {args.journal_file}")
    client = prometheus_client(cfg, url=args.prometheus_url)
    plugins = backtest_plugins(cfg, client=client, journal_file=args.journal_file)
    try:
        report = run_backtest(cfg, plugins, start, end, threshold=args.threshold,
                              show_progress=not args.no_progress, plot_dir=args.plot,
                              source={"prometheus_url": redact_url(args.prometheus_url),
                                      "journal_file": args.journal_file})
    except PromError as e:
        print(f"rigwatch-detector: backtest failed: prometheus: {redact_text(str(e))}", file=sys.stderr)
        return 1
    write_report(report, args.output)
    n = len(report["incidents"])
    print(f"{n} incident(s) between {report['range']['start']} and {report['range']['end']}; "
          f"report written to {args.output}", file=sys.stderr)
    return 0


def startup_line(cfg, host: str, port: int, detectors: int) -> str:
    """serve's first line; the URL without its password (it reaches the journal and Loki)."""
    shard = f", shard {cfg.shard}" if cfg.shard.sharded else ""
    return (f"rigwatch-detector serving on http://{host}:{port} (prometheus {redact_url(cfg.prometheus.url)}, "
            f"{detectors} detectors, store {cfg.shard.store_path(cfg.store_path)}{shard})")


def cmd_serve(args) -> int:
    from detector.api import create_app
    from detector.plugins import build_service, query_checker, tracker_for

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        return _usage_error(f"config {args.config or '<default preset>'}: {e}")
    try:
        apply_overrides(cfg, prometheus_url=args.prometheus_url or None, loki_url=args.loki_url or None,
                        store=args.store or None, mlflow_uri=args.mlflow_uri,
                        latency_offset=args.prometheus_latency_offset, shard=args.shard)
        cfg.token()  # an unreadable RIGWATCH_API_TOKEN_FILE: exit 2 now, not a failed retrain later
    except ConfigError as e:
        return _usage_error(str(e))
    try:  # the config's `listen` was checked at load; --listen may also ask for port 0 (any free port)
        host, port = host_port(args.listen, "--listen", any_port=True) if args.listen is not None \
            else host_port(cfg.listen, "listen")
    except ConfigError as e:
        return _usage_error(str(e))
    try:
        # a query Prometheus refuses is a config error like any other; an unreachable one is not
        query_checker(cfg).check(cfg)
    except ConfigError as e:
        return _usage_error(f"config {args.config or '<default preset>'}: {e}")
    tracker = tracker_for(cfg)
    service = build_service(cfg, config_path=args.config, tracker=tracker)
    app = create_app(service)
    # one process, several threads: a second worker process would run a second scheduler
    server = BoundedServer(app, host, int(port), ident="rigwatch-detector", name="waitress")
    service.start()
    log.info(startup_line(cfg, host, server.port, len(service.detector_names())))
    if not cfg.token():
        log.info("POST /api/v1/retrain disabled: set RIGWATCH_API_TOKEN (or api_token) to enable it")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    server.start()
    try:
        while not stop.wait(0.5):
            if not server.is_alive():
                log.error("HTTP server stopped unexpectedly")
                return 1
    finally:
        log.info("shutting down")
        service.stop()
        server.stop()
        tracker.close(timeout=cfg.tracking.timeout if cfg.tracking else 0)  # the fits still queued
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rc = args.func(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())

