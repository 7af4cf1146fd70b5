"""rigwatch-exporter: serve GPU and container metrics for Prometheus.

    rigwatch-exporter --listen 127.0.0.1:9842 --backend nvml
    rigwatch-exporter --backend sim --speed 60            # the simulated AI box, 60x faster
    rigwatch-exporter --backend sim --sim-history DIR     # 3 h of history to backfill, then live
    rigwatch-exporter --ollama-url http://127.0.0.1:11434 --comfyui-url http://127.0.0.1:8188
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

from exporter.collector import RigCollector
from exporter.docker_source import DEFAULT_DOCKER_URL, DockerContainerSource
from exporter.inference_http import ComfyUISource, OllamaSource
from exporter.server import MetricsServer, parse_listen
from rigwatch import http_server
from rigwatch.redact import redact_url

log = logging.getLogger("rigwatch.exporter")

# flag dest -> (flag, environment variable that supplies its default with the nvml backend)
INFERENCE_URL_FLAGS = {"ollama_url": ("--ollama-url", "RIGWATCH_OLLAMA_URL"),
                       "comfyui_url": ("--comfyui-url", "RIGWATCH_COMFYUI_URL")}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rigwatch-exporter", description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", default="127.0.0.1:9842",
                   help="HOST:PORT to serve /metrics on (default 127.0.0.1:9842; 0.0.0.0 only if you mean it)")
    p.add_argument("--backend", choices=["nvml", "sim"], default="nvml",
                   help="nvml: the real GPUs; sim: the simulated AI box (default nvml)")
    p.add_argument("--docker-url", default=DEFAULT_DOCKER_URL,
                   help=f"Docker API for container metrics, or 'none' (default {DEFAULT_DOCKER_URL})")
    p.add_argument("--proc-root", default="/proc", help="proc filesystem for PID attribution (default /proc)")
    p.add_argument("--slow-interval", type=float, default=5.0,
                   help="seconds between slow NVML reads: PCIe throughput, energy, ECC (default 5)")
    p.add_argument("--container-interval", type=float, default=10.0,
                   help="seconds between container/process-attribution refreshes (default 10)")
    p.add_argument("--retry-interval", type=float, default=10.0,
                   help="seconds between retries of a failed NVML init or a lost GPU (default 10)")
    p.add_argument("--per-pid-metrics", action="store_true",
                   help="also export gpu_process_memory_used_bytes per PID (high cardinality)")
    p.add_argument("--ollama-url", default=None, metavar="URL",
                   help="Ollama to read loaded models from (GET URL/api/ps), e.g. http://127.0.0.1:11434 "
                        "(default $RIGWATCH_OLLAMA_URL, else off)")
    p.add_argument("--comfyui-url", default=None, metavar="URL",
                   help="ComfyUI to read its prompt queue from (GET URL/queue), e.g. http://127.0.0.1:8188 "
                        "(default $RIGWATCH_COMFYUI_URL, else off)")
    p.add_argument("--inference-interval", type=float, default=10.0,
                   help="seconds between polls of the inference servers (default 10)")
    p.add_argument("--sim-config", default=None, help="sim backend: YAML box/incident config (default built-in)")
    p.add_argument("--seed", type=int, default=0, help="sim backend: random seed (default 0)")
    p.add_argument("--box", default="aibox", metavar="NAME",
                   help="sim backend: which simulated box, aibox or studio (default aibox)")
    p.add_argument("--speed", type=float, default=1.0, help="sim backend: sim seconds per wall second (default 1)")
    p.add_argument("--sim-journal", default=None, metavar="FILE",
                   help="sim backend: append the simulated box's journal to FILE as `journalctl -o json` lines "
                        "while it plays (for shipping to Loki; default: not written)")
    p.add_argument("--sim-history", default=None, metavar="DIR",
                   help="sim backend: before serving, play --sim-history-hours of clean history ending now and "
                        "write it to DIR (metrics.om for `promtool tsdb create-blocks-from openmetrics`, "
                        "journal.jsonl, truth.json); the same box then plays on live, so counters and "
                        "temperatures continue without a seam, and the --sim-config schedule counts from the "
                        "live start")
    p.add_argument("--sim-history-config", default=None, metavar="FILE",
                   help="sim backend: an incident schedule played in the --sim-history (offsets from its start; "
                        "one may run on into the live part); default: the history is clean")
    p.add_argument("--sim-history-hours", type=float, default=3.0,
                   help="sim backend: hours of history for --sim-history (default 3)")
    p.add_argument("--sim-history-step", type=float, default=15.0,
                   help="sim backend: scrape interval of the --sim-history samples, seconds (default 15)")
    p.add_argument("--sim-history-job", default="rigwatch-exporter",
                   help="sim backend: job label of the --sim-history samples (instance is --listen; "
                        "default rigwatch-exporter)")
    p.add_argument("--max-connections", type=int, default=http_server.CONNECTION_LIMIT,
                   help="open connections served at once; more wait in the listen backlog "
                        f"(default {http_server.CONNECTION_LIMIT})")
    p.add_argument("--idle-timeout", type=float, default=http_server.IDLE_TIMEOUT_S,
                   help="seconds an idle keep-alive connection is kept open (default "
                        f"{http_server.IDLE_TIMEOUT_S:g}; keep it off your scrape interval)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _sim_box(args):
    """The simulated box; errors name the flag they are about (ValueError/OSError)."""
    from exporter.sim.box import SimBox  # only the sim backend needs the simulation
    from exporter.sim.boxes import get_box

    journal = getattr(args, "sim_journal", None)
    try:
        profile = get_box(getattr(args, "box", "aibox"))
    except KeyError as e:
        raise ValueError(f"--box: {e.args[0]}") from None
    try:
        incidents = SimBox.load_incidents(args.sim_config, profile)
    except (OSError, ValueError) as e:  # ScheduleError names the key
        raise ValueError(f"--sim-config {args.sim_config}: {e}") from e
    history_incidents = []
    if getattr(args, "sim_history_config", None):
        try:
            history_incidents = SimBox.load_incidents(args.sim_history_config, profile)
        except (OSError, ValueError) as e:
            raise ValueError(f"--sim-history-config {args.sim_history_config}: {e}") from e
    if not getattr(args, "sim_history", None):
        return SimBox(incidents, seed=args.seed, speed=args.speed, journal_path=journal, box=profile)
    from exporter.sim.history import box_with_history

    try:
        box, result = box_with_history(args.sim_history, args.sim_history_hours, args.sim_history_step,
                                       incidents=incidents, seed=args.seed, speed=args.speed,
                                       job=args.sim_history_job, instance=args.listen, journal_path=journal,
                                       box_name=profile.name, history_incidents=history_incidents)
    except OSError as e:
        raise OSError(f"--sim-history {args.sim_history}: {e}") from e
    log.info("wrote %g h of sim history to %s (%d samples) in %.1f s; the box plays on live",
             args.sim_history_hours, args.sim_history, result.samples, result.seconds)
    return box


def check_inference_urls(args, environ: Mapping[str, str]) -> str | None:
    """Settle `args.ollama_url` / `args.comfyui_url` in place: the flag, else (nvml backend) its
    environment variable, else None (off). Returns the error to report (naming the flag), or None.
    The sim serves its own inference servers, so these flags are refused with it and the variables
    ignored (an exported RIGWATCH_OLLAMA_URL must not break the demo)."""
    for dest, (flag, env) in INFERENCE_URL_FLAGS.items():
        given = getattr(args, dest)
        if args.backend == "sim":
            if given:
                return f"{flag} is for a real server; --backend sim serves its own inference servers"
            continue
        url = given if given is not None else (environ.get(env) or None)
        if url is not None:
            origin = flag if given is not None else f"{flag} (from ${env})"
            try:
                parts = urlsplit(url)
                _port = parts.port  # raises ValueError on a port that is not a number in range
            except ValueError as e:
                return f"{origin} {redact_url(url)!r}: {e}"
            if parts.scheme not in ("http", "https") or not parts.hostname:
                return f"{origin} {redact_url(url)!r}: must be an http:// or https:// URL with a host"
        setattr(args, dest, url)
    return None


def build_collector(args) -> tuple[RigCollector, object | None]:
    """The collector for `args.backend`, and the sim box to start/stop (None for nvml)."""
    common = dict(per_pid=args.per_pid_metrics, slow_interval=args.slow_interval,
                  container_interval=args.container_interval, retry_interval=args.retry_interval,
                  inference_interval=args.inference_interval)
    if args.backend == "sim":
        box = _sim_box(args)
        return RigCollector(box.nvml, container_source=box.container_source, proc_root=box.proc_root,
                            inference_sources=list(box.inference_sources()), **common), box
    try:
        import pynvml
    except ImportError:  # the collector logs the clear message and serves gpu_exporter_up 0
        pynvml = None
    source = None if args.docker_url.lower() == "none" else DockerContainerSource(args.docker_url)
    inference = []
    if args.ollama_url:
        inference.append(OllamaSource(args.ollama_url))
    if args.comfyui_url:
        inference.append(ComfyUISource(args.comfyui_url))
    return RigCollector(pynvml, container_source=source, proc_root=args.proc_root,
                        inference_sources=inference, **common), None


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        host, port = parse_listen(args.listen)
    except ValueError as e:
        parser.error(str(e))
    for flag in ("slow_interval", "container_interval", "retry_interval", "speed", "sim_history_hours",
                 "sim_history_step", "max_connections", "idle_timeout", "inference_interval"):
        if getattr(args, flag) <= 0:
            parser.error(f"--{flag.replace('_', '-')} must be > 0")
    if args.sim_history_config and not args.sim_history:
        parser.error("--sim-history-config needs --sim-history")
    if args.sim_history and args.backend != "sim":
        parser.error("--sim-history needs --backend sim")
    url_error = check_inference_urls(args, os.environ if environ is None else environ)
    if url_error:
        parser.error(url_error)

    try:
        collector, box = build_collector(args)
    except (OSError, ValueError) as e:  # e.g. a missing or invalid --sim-config (ScheduleError names the key)
        if args.backend != "sim":
            raise
        print(f"rigwatch-exporter: {e}", file=sys.stderr)
        return 2
    registry = CollectorRegistry()
    registry.register(collector)
    if box is not None:  # the sim's vLLM-like /metrics (nothing on a box without vLLM)
        from exporter.sim.vllm import SimVLLMCollector
        registry.register(SimVLLMCollector(box))
    try:
        limits = http_server.Limits(connection_limit=args.max_connections, idle_timeout_s=args.idle_timeout)
        server = MetricsServer(registry, host, port, backend=args.backend, limits=limits)
    except OSError as e:
        log.error("cannot listen on %s: %s", args.listen, e)
        collector.gpus.shutdown()
        if box is not None and hasattr(box, "close"):
            box.close()
        return 1
    if box is not None:
        box.start()
    collector.start()
    server.start()
    log.info("serving %s/metrics (backend %s)", server.url, args.backend)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down")
    server.stop()
    collector.stop()
    if box is not None:
        box.stop()
        close = getattr(box, "close", None)  # removes the sim's temporary /proc tree
        if close is not None:
            close()
    collector.gpus.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
