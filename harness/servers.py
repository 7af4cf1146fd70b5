"""A real Prometheus 2.x and a real Alertmanager (the Debian packages) on 127.0.0.1, and `BinaryServer`,
what every server binary the tests start shares (VictoriaMetrics, vmalert, vmauth and the agents too).

Nothing is mocked; ports are picked free unless given. The working directory holds the config, the
log (`<name>.log`) and, unless told otherwise, the data. Usage:

    with PrometheusServer(tmp_path, config_yaml, storage=tsdb) as prom:
        prom.query("up")
"""
from __future__ import annotations

import time
from pathlib import Path

from harness.processes import Process, free_port, require_binary
from harness.prometheus_api import PrometheusAPI


class BinaryServer(Process):
    """A binary serving HTTP on 127.0.0.1:`port` (a free one unless given), ready when `ready_path`
    answers 200. Its working directory holds its log (`<name>.log`) and, with `config`, the config
    file (`<name>.yml`, at `config_path`); a subclass's `command()` gives the argv at start, when
    every setting is known."""

    def __init__(self, name: str, workdir: Path, config: str | None = None, port: int | None = None,
                 ready_path: str = "/-/ready", env: dict[str, str] | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = self.workdir / f"{name}.yml"
        if config is not None:
            self.config_path.write_text(config)
        super().__init__(name, [], self.workdir / f"{name}.log", cwd=self.workdir,
                         ready_url=self.url + ready_path, env=env)

    def start(self, timeout: float = 30.0) -> BinaryServer:
        self.argv = self.command()
        super().start(timeout=timeout)
        return self

    def command(self) -> list[str]:
        raise NotImplementedError


class PrometheusServer(BinaryServer, PrometheusAPI):
    """A real Prometheus. `config` is the prometheus.yml text; `storage` an existing TSDB dir (e.g. one
    filled by `backfill_openmetrics`) or None for a fresh one under the working directory; blocks
    older than `retention` are dropped."""

    def __init__(self, workdir: Path, config: str, storage: Path | None = None,
                 extra_args: list[str] | None = None, port: int | None = None, retention: str = "3650d"):
        BinaryServer.__init__(self, "prometheus", workdir, config, port)
        PrometheusAPI.__init__(self, self.url)
        self.storage = Path(storage) if storage else self.workdir / "data"
        self.retention = retention
        self.extra_args = extra_args or []

    def command(self) -> list[str]:
        return [require_binary("prometheus"), f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.storage}", f"--web.listen-address=127.0.0.1:{self.port}",
                f"--storage.tsdb.retention.time={self.retention}", *self.extra_args]

    def wait_for(self, promql: str, timeout: float = 30.0) -> list[dict]:
        """Poll an instant query until it returns a non-empty result."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(promql)
            if result:
                return result
            time.sleep(0.25)
        raise TimeoutError(f"no result for {promql!r} after {timeout}s; prometheus log:\n{self.tail()}")


class AlertmanagerServer(BinaryServer):
    """A real Alertmanager 0.25 (Debian's prometheus-alertmanager), its data under the working
    directory, clustering off (one instance)."""

    def __init__(self, workdir: Path, config: str, port: int | None = None):
        super().__init__("alertmanager", workdir, config, port)

    def command(self) -> list[str]:
        return [require_binary("prometheus-alertmanager"), f"--config.file={self.config_path}",
                f"--storage.path={self.workdir / 'am-data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address="]
