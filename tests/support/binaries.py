"""Start real Prometheus / Alertmanager (Debian packages) on 127.0.0.1 for integration tests.

Every helper here runs the real binary; nothing is mocked. Ports are picked free at start.
Usage:
    with PrometheusServer(tmp_path, config_yaml) as prom:
        requests.get(prom.url + "/api/v1/query", params={"query": "up"})
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_binary(name: str) -> str:
    """Path of a binary; fails (not skips) the test when it is missing: CI installs them."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: run `make deps` (Debian package) before the integration tests")
    return path


def wait_http_ok(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            r = requests.get(url, timeout=1)
            if r.status_code == 200:
                return
            last = r.status_code
        except requests.RequestException as e:  # not up yet
            last = e
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s (last: {last})")


class _Server:
    name = "server"

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / f"{self.name}.log"

    def _start(self, argv: list[str], ready_path: str) -> None:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir)
        try:
            wait_http_ok(self.url + ready_path, proc=self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"{self.name} failed to start; log:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


class PrometheusServer(_Server):
    """A real Prometheus 2.x. `config` is the prometheus.yml text; `storage` an existing TSDB dir
    (e.g. one filled by `promtool tsdb create-blocks-from openmetrics`) or None for a fresh one."""

    name = "prometheus"

    def __init__(self, workdir: Path, config: str, storage: Path | None = None,
                 extra_args: list[str] | None = None, port: int | None = None):
        super().__init__(workdir)
        if port is not None:
            self.port = port
            self.url = f"http://127.0.0.1:{port}"
        self.config_path = self.workdir / "prometheus.yml"
        self.config_path.write_text(config)
        self.storage = Path(storage) if storage else self.workdir / "data"
        self.extra_args = extra_args or []

    def start(self) -> None:
        argv = [require_binary("prometheus"), f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.storage}", f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle", "--storage.tsdb.retention.time=3650d", *self.extra_args]
        self._start(argv, "/-/ready")

    def query(self, promql: str, time_: float | None = None) -> list[dict]:
        params = {"query": promql}
        if time_ is not None:
            params["time"] = time_
        r = requests.get(self.url + "/api/v1/query", params=params, timeout=10)
        r.raise_for_status()
        return r.json()["data"]["result"]

    def wait_for(self, promql: str, timeout: float = 30.0) -> list[dict]:
        """Poll an instant query until it returns a non-empty result."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(promql)
            if result:
                return result
            time.sleep(0.25)
        raise TimeoutError(f"no result for {promql!r} after {timeout}s; prometheus log:\n{self.log()}")


class AlertmanagerServer(_Server):
    """A real Alertmanager 0.25 (Debian's prometheus-alertmanager) with its own data dir."""

    name = "alertmanager"

    def __init__(self, workdir: Path, config: str):
        super().__init__(workdir)
        self.config_path = self.workdir / "alertmanager.yml"
        self.config_path.write_text(config)
        self.cluster_port = free_port()

    def start(self) -> None:
        argv = [require_binary("prometheus-alertmanager"), f"--config.file={self.config_path}",
                f"--storage.path={self.workdir / 'am-data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                f"--cluster.listen-address=127.0.0.1:{self.cluster_port}"]
        self._start(argv, "/-/ready")


def backfill_openmetrics(openmetrics_file: Path, storage: Path) -> None:
    """Write an OpenMetrics file (ending in `# EOF`) into a TSDB dir with promtool."""
    promtool = require_binary("promtool")
    storage.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(openmetrics_file),
                          str(storage)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"promtool backfill failed: {out.stderr[-3000:]}")
