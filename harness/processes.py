"""Child processes on 127.0.0.1: free ports, HTTP readiness, one `Process` wrapper for every part the
harness starts, the Debian binaries and promtool backfill."""
from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


class MissingBinary(RuntimeError):
    """A binary from the Debian packages (prometheus, promtool, prometheus-alertmanager, amtool) is not
    on PATH; `name` is the binary."""

    def __init__(self, name: str):
        super().__init__(f"{name} not found: run `make deps` (Debian packages prometheus, "
                         f"prometheus-alertmanager)")
        self.name = name


def require_binary(name: str) -> str:
    """The path of a binary; MissingBinary when it is not installed."""
    path = shutil.which(name)
    if path is None:
        raise MissingBinary(name)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 3.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def http_json(url: str, timeout: float = 10.0):
    return json.loads(http_get(url, timeout=timeout))


def wait_http_ok(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers 200. RuntimeError as soon as `proc` (the process that should answer)
    exits, TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
                last = r.status
        except urllib.error.HTTPError as e:
            last = e.code
        except (OSError, http.client.HTTPException) as e:  # not up yet
            last = e
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout:g}s (last: {last})")


def wait_until(pred, timeout: float = 60.0, what: str = "", interval: float = 0.5):
    """Poll `pred()` until it returns something truthy, and return that; AssertionError naming
    `what` after `timeout` seconds (a test waiting on a real process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


class Process:
    """A child process whose output goes to a log file (appended). It runs in its own session: a
    Ctrl-C in the terminal reaches only the parent, which then stops its children in order (the
    detector before Prometheus, Prometheus before Alertmanager). With `ready_url`, `start()` waits
    until that answers 200 and stops the process if it never does. Also a context manager."""

    def __init__(self, name: str, argv: list[str], log_path: Path, cwd: Path | None = None,
                 ready_url: str | None = None, env: dict[str, str] | None = None):
        self.name = name
        self.env = env  # None: this process's environment
        self.argv = argv
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.ready_url = ready_url
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout: float = 30.0) -> Process:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.cwd,
                                     stdin=subprocess.DEVNULL, start_new_session=True, env=self.env)
        if self.ready_url is not None:
            try:
                self.wait_ready(self.ready_url, timeout=timeout)
            except BaseException:
                self.stop()
                raise
        return self

    def wait_ready(self, url: str, timeout: float = 30.0) -> None:
        """Wait until `url` answers 200; the error names this part and carries its log."""
        try:
            wait_http_ok(url, timeout=timeout, proc=self.proc)
        except (RuntimeError, TimeoutError) as e:
            raise type(e)(f"{self.name}: {e}; log:\n{self.tail()}") from None

    def tail(self, n: int = 3000) -> str:
        """The last `n` characters of the log."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Process:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def backfill_openmetrics(openmetrics_file: Path, storage: Path) -> None:
    """Write an OpenMetrics file (ending in `# EOF`) into a TSDB dir with promtool."""
    promtool = require_binary("promtool")
    Path(storage).mkdir(parents=True, exist_ok=True)
    out = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(openmetrics_file),
                          str(storage)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"promtool backfill failed: {out.stderr[-3000:]}")
