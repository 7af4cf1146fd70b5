"""A real `mlflow server` (SQLite backend, artifacts proxied to a temp folder) on 127.0.0.1, started
once per test session: its start-up takes seconds. `down()` stops it for a test and starts it again
in the background afterwards (a later user of `url` waits until it answers)."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        mlflow = Path(sys.executable).parent / "mlflow"
        cmd = [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1"]
        # its own process group: the server forks uvicorn workers, stopped together
        self.proc = subprocess.Popen(cmd, cwd=self.root, stdout=open(self.root / "server.log", "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            # urllib, not requests: a test may have `responses` intercepting requests already
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.base + "/health", timeout=1) as r:
                    if r.status == 200:
                        return
            time.sleep(0.2)
        raise RuntimeError("mlflow server did not answer /health in time")

    @property
    def url(self) -> str:
        self.wait()
        return self.base

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    @contextlib.contextmanager
    def down(self):
        self.stop()
        try:
            yield
        finally:
            self.start()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
