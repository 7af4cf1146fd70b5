"""A real VictoriaMetrics single node (the Debian package `victoria-metrics` 1.79) on 127.0.0.1, a
`Process`: the fleet's central store in the tests and benchmarks.

It takes Prometheus remote_write (`/api/v1/write`) and the text import of samples with their own
timestamps (`/api/v1/import/prometheus`), and answers the Prometheus query API, which is what the
detector reads. Usage:

    with VictoriaMetricsServer(tmp_path) as vm:
        vm.import_text(openmetrics_text)
        vm.query("up")
"""
from __future__ import annotations

import urllib.request
from pathlib import Path

from harness.processes import Process, free_port, require_binary
from harness.prometheus_api import PrometheusAPI


class VictoriaMetricsServer(Process, PrometheusAPI):
    """`latency_offset` is VictoriaMetrics' `-search.latencyOffset` (its default 30 s: samples newer
    than that are hidden from queries, the last visible value standing in for them)."""

    def __init__(self, workdir: Path, port: int | None = None, latency_offset: str = "30s",
                 extra_args: list[str] | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        PrometheusAPI.__init__(self, self.url)
        argv = [require_binary("victoria-metrics"), f"-storageDataPath={self.workdir / 'vm-data'}",
                f"-httpListenAddr=127.0.0.1:{self.port}", "-retentionPeriod=100y",
                f"-search.latencyOffset={latency_offset}", *(extra_args or [])]
        Process.__init__(self, "victoria-metrics", argv, self.workdir / "victoria-metrics.log",
                         cwd=self.workdir, ready_url=self.url + "/health")

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
