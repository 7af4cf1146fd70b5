"""Which detector plugins run, and the service built from them: the one place that knows the
families and what turns each on (the composition root; service, API and backtest only see the
DetectorPlugin protocol).

    metric side  always: the config's `detectors:`, read from Prometheus
    log side     serve: when detector.yml has a `loki:` section (or `serve --loki-url`);
                 backtest: when `--journal-file` is given
    context      when detector.yml has an `inference:` section (the default preset does): busy GPUs
                 nobody asked for work, from Prometheus and, for request log lines, Loki
    sharded      (`shard: I/N`, serve/backtest --shard) the metric side scores the series its shard
                 owns, from the shard's own store directory; the log side runs on shard 0 only, so
                 no log incident is reported by two replicas (detector/sharding.py says why it is not
                 split); the context detector runs on every shard, judging the GPUs it owns
"""
from __future__ import annotations

import time
from collections.abc import Callable

from detector.config import Config, ConfigWatcher
from detector.context.plugin import ContextPlugin
from detector.health import SourceHealth
from detector.labels import LabelStore
from detector.logs.loki import LokiClient
from detector.logs.plugin import LogPlugin
from detector.metric_plugin import MetricPlugin
from detector.persistence import FilePersistence
from detector.plugin import DetectorPlugin
from detector.promclient import PromClient
from detector.query_check import QueryChecker
from detector.service import DetectorService
from detector.store import ModelStore
from detector.tracking import NullTracker, Tracker


def prometheus_client(config: Config, health: SourceHealth | None = None, url: str | None = None,
                      retries: int | None = None) -> PromClient:
    """The one Prometheus client of a process, with the configured URL, headers, timeout and retries
    (`retries` overrides them); every failed attempt is counted in `health`."""
    p = config.prometheus
    return PromClient(url or p.url, timeout=p.timeout, retries=p.retries if retries is None else retries,
                      headers=p.headers, on_error=health.counter("prometheus") if health is not None else None)


def query_checker(config: Config, client: PromClient | None = None) -> QueryChecker:
    """The query check of start-up and hot reload; by default over a client that does not retry, so
    an unreachable Prometheus delays neither."""
    return QueryChecker(client or prometheus_client(config, retries=0))


def tracker_for(config: Config) -> Tracker:
    """The config's `tracking:` (or serve --mlflow-uri) as a Tracker; without it a NullTracker and
    mlflow is never imported."""
    if config.tracking is None:
        return NullTracker()
    from detector.mlflow_tracking import mlflow_tracker

    return mlflow_tracker(config.tracking, shard=config.shard)


def serve_plugins(config: Config, *, client: PromClient, store: ModelStore,
                  health: SourceHealth, labels: LabelStore | None = None,
                  tracker: Tracker | None = None) -> list[DetectorPlugin]:
    plugins: list[DetectorPlugin] = [MetricPlugin(config, client, store=store, health=health, labels=labels,
                                                  tracker=tracker)]
    loki = None
    if config.loki is not None:
        loki_section = {k: v for k, v in config.loki.items() if k != "query"}
        loki = LokiClient.from_config(loki_section, on_error=health.counter("loki"))
        if config.shard.index == 0:  # the log side is shard 0's alone
            plugins.append(LogPlugin(config, loki=loki, prometheus=client, store=store, health=health))
    if config.inference is not None:
        plugins.append(ContextPlugin(config, client, loki=loki))
    return plugins


def backtest_plugins(config: Config, *, client: PromClient, journal_file: str | None = None) -> list[DetectorPlugin]:
    plugins: list[DetectorPlugin] = [MetricPlugin(config, client)]
    if journal_file and config.shard.index == 0:  # as serve: the log side is shard 0's
        plugins.append(LogPlugin(config, prometheus=client, journal_file=journal_file))
    if config.inference is not None:
        plugins.append(ContextPlugin(config, client))
    return plugins


def build_service(config: Config, *, client: PromClient | None = None, store: ModelStore | None = None,
                  health: SourceHealth | None = None, clock: Callable[[], float] = time.time,
                  config_path: str | None = None, tracker: Tracker | None = None) -> DetectorService:
    """`rigwatch-detector serve`'s service: the plugins the config turns on, sharing one store, one
    Prometheus client and one source-health record. `client`/`store`/`health` replace the configured
    ones (a given client counts its errors wherever it was built to, and also checks reloaded
    queries). `config_path`: hot reload of that file, refusing what start-up would refuse. `tracker`:
    where fits are logged (default: the config's `tracking:`, see tracker_for)."""
    health = health or SourceHealth()
    checker = query_checker(config, client)
    client = client or prometheus_client(config, health)
    store = store or ModelStore(FilePersistence(config.shard.store_path(config.store_path)))
    watcher = ConfigWatcher(config_path, check=checker.check, clock=clock) if config_path else None
    labels = LabelStore(store, clock=clock)  # beside the models, in the same store
    tracker = tracker or tracker_for(config)
    return DetectorService(config, serve_plugins(config, client=client, store=store, health=health, labels=labels,
                                                 tracker=tracker),
                           health=health, clock=clock, watcher=watcher, labels=labels)
