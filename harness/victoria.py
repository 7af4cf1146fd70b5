"""A real VictoriaMetrics single node (the Debian package `victoria-metrics` 1.79) on 127.0.0.1, a
`BinaryServer`: the fleet's central store in the tests and benchmarks.

It takes Prometheus remote_write (`/api/v1/write`) and the text import of samples with their own
timestamps (`/api/v1/import/prometheus`), and answers the Prometheus query API, which is what the
detector reads. Usage:

    with VictoriaMetricsServer(tmp_path) as vm:
        vm.import_text(openmetrics_text)
        vm.query("up")

`VMAlertServer` is the central box's rule evaluator (vmalert 1.79) over it.
"""
from __future__ import annotations

import urllib.request
from pathlib import Path

from harness.processes import require_binary
from harness.prometheus_api import PrometheusAPI
from harness.servers import BinaryServer


class VictoriaMetricsServer(BinaryServer, PrometheusAPI):
    """`latency_offset` is VictoriaMetrics' `-search.latencyOffset` (its default 30 s: samples newer
    than that are hidden from queries, the last visible value standing in for them)."""

    def __init__(self, workdir: Path, port: int | None = None, latency_offset: str = "30s",
                 extra_args: list[str] | None = None):
        BinaryServer.__init__(self, "victoria-metrics", workdir, port=port, ready_path="/health")
        PrometheusAPI.__init__(self, self.url)
        self.latency_offset = latency_offset
        self.extra_args = extra_args or []

    def command(self) -> list[str]:
        return [require_binary("victoria-metrics"), f"-storageDataPath={self.workdir / 'vm-data'}",
                f"-httpListenAddr=127.0.0.1:{self.port}", "-retentionPeriod=100y",
                f"-search.latencyOffset={self.latency_offset}", *self.extra_args]

    def import_text(self, text: str) -> None:
        """Samples in the Prometheus text format with millisecond timestamps (OpenMetrics' `# EOF`
        and comments are skipped by VictoriaMetrics), then flushed so that queries see them."""
        req = urllib.request.Request(self.url + "/api/v1/import/prometheus", data=text.encode(), method="POST")
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
        self.flush()

    def flush(self) -> None:
        """Make everything ingested so far searchable now (not after its ~1 s buffer)."""
        with urllib.request.urlopen(self.url + "/internal/force_flush", timeout=30) as r:
            r.read()


class VMAlertServer(BinaryServer):
    """A real vmalert (the Debian package `vmalert`) evaluating rule files against a Prometheus-API
    datasource and sending to an Alertmanager, as docker-compose.central.yml runs it: alert state and
    recording rules written back to the datasource (`-remoteWrite.url`, which recording rules need)
    and restored from it (`-remoteRead.url`). `rules` are globs (the committed
    prometheus/rules/*.yml in the fleet test)."""

    def __init__(self, workdir: Path, rules: list[str], datasource_url: str, notifier_url: str,
                 evaluation_interval: str = "15s", port: int | None = None):
        super().__init__("vmalert", workdir, port=port, ready_path="/health")
        self.rules = list(rules)
        self.datasource_url = datasource_url
        self.notifier_url = notifier_url
        self.evaluation_interval = evaluation_interval

    def command(self) -> list[str]:
        return [require_binary("vmalert"), *(f"-rule={r}" for r in self.rules),
                f"-datasource.url={self.datasource_url}", f"-notifier.url={self.notifier_url}",
                f"-remoteWrite.url={self.datasource_url}", f"-remoteRead.url={self.datasource_url}",
                f"-evaluationInterval={self.evaluation_interval}", f"-httpListenAddr=127.0.0.1:{self.port}"]
