"""A real `mlflow server` on 127.0.0.1: SQLite backend and proxied artifacts in a folder of its own,
a free port, the Host headers it answers limited to this address. `make demo` and the tests
(tests/mlflow_server.py) start it with this same code.

`start()` only launches the process (its start-up takes seconds: the caller goes on meanwhile);
`wait(timeout)` blocks until it answers /health, raising RuntimeError with its log's tail when it
exited or did not answer in time; `stop()` stops it and the workers it forked.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from harness.processes import free_port


class MlflowServer:
    def __init__(self, root: Path, executable: Path | None = None):
        self.root = Path(root)
        # the mlflow installed beside this Python (the project's venv), not whatever is first on PATH
        self.executable = executable or Path(sys.executable).parent / "mlflow"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def command(self) -> list[str]:
        hosts = ",".join(f"{h}{p}" for h in ("127.0.0.1", "localhost") for p in ("", f":{self.port}"))
        return [str(self.executable), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
                "--port", str(self.port), "--workers", "1", "--allowed-hosts", hosts]

    def start(self) -> MlflowServer:
        """Launch it; FileNotFoundError when mlflow is not installed beside this Python."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # its own process group: the server forks uvicorn workers, stopped together (and a Ctrl-C
            # in the terminal reaches the caller, which stops it, not the server directly)
            self.proc = subprocess.Popen(self.command(), cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    def tail(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def answers(self) -> bool:
        # urllib, not requests: a test may have `responses` intercepting requests already
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(self.base + "/health", timeout=1) as r:
                return r.status == 200
        return False

    def wait(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.tail()}")
            if self.answers():
                return
            time.sleep(0.2)
        raise RuntimeError(f"mlflow server did not answer /health within {timeout:g} s")

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
