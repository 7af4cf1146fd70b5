"""The session's real `mlflow server` (harness/mlflow_server.py: SQLite backend, artifacts proxied to a
temp folder, 127.0.0.1), started once per test session: its start-up takes seconds. `down()` stops it
for a test and starts it again in the background afterwards (a later user of `url` waits until it
answers)."""
from __future__ import annotations

import contextlib

import pytest

from harness.mlflow_server import MlflowServer as _Server


class MlflowServer(_Server):
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
