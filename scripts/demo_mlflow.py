"""The demo's MLflow side: a real `mlflow server` (harness/mlflow_server.py) started beside the
pipeline, the detector pointed at it, and the lines read back from it:

    mlflow:   UI at http://127.0.0.1:PORT (experiment rigwatch)   - once it answers, before the detector
              starts; or one line saying the demo goes on without MLflow, and why
    tracked:  per refit the gate decided (scripts/demo_lifecycle.py's `decided`): the MLflow run and
              registered version of `rigwatch-<detector>` tagged with the refit's store version, and the
              version holding the `champion` alias there with its store version - all read with
              MlflowClient, not assumed from the local registry

MLflow never fails the demo: a missing install, a server that does not come up in time or a failed
read-back is one line, and the demo goes on without it.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from harness.mlflow_server import MlflowServer

EXPERIMENT = "rigwatch"  # the detector's default (TrackingConfig.experiment): --mlflow-uri keeps it
START_TIMEOUT_S = 60.0  # from start(): the server's start-up runs beside the pipeline's
TRACK_PATIENCE_S = 90.0  # after a decision, how long its run and alias may take to reach MLflow
STORE_TAG = "rigwatch.store_version"  # detector.mlflow_tracking tags each registered version with it


class DemoMlflow:
    def __init__(self, root: Path, say: Callable[[str], None], *, start_timeout: float = START_TIMEOUT_S,
                 patience: float = TRACK_PATIENCE_S, clock: Callable[[], float] = time.monotonic,
                 executable: Path | None = None):
        self.root = Path(root)
        self.executable = executable  # the `mlflow` CLI; None: the one beside this Python
        self.say = say
        self.start_timeout = start_timeout
        self.patience = patience
        self.clock = clock
        self.server: MlflowServer | None = None
        self.client: Any = None  # MlflowClient once the server answers; None: MLflow is off
        self.started_at: float | None = None
        self.shown: set[str] = set()  # detectors whose `tracked:` line was printed

    def start(self) -> None:
        """Launch the server; the pipeline starts meanwhile and asks `uri()` before the detector."""
        self.started_at = self.clock()
        try:
            self.server = MlflowServer(self.root, self.executable).start()
        except OSError as e:  # FileNotFoundError: mlflow is not installed beside this Python
            self.say(f"mlflow:   not started ({e}): the demo goes on without MLflow")
            self.server = None

    def uri(self) -> str | None:
        """The tracking URI for the detector once the server answers (what is left of the start-up
        timeout), else None after one line saying why."""
        if self.server is None:
            return None
        try:
            # imported while the server boots (a second of CPU); the demo runs without mlflow too
            from mlflow import MlflowClient
            self.server.wait(timeout=max(0.0, self.start_timeout - (self.clock() - self.started_at)))
            self.client = MlflowClient(tracking_uri=self.server.base)
        except (RuntimeError, ImportError) as e:
            self.say(f"mlflow:   {' '.join(str(e).split())[:300]}: the demo goes on without MLflow")
            self.stop()
            return None
        self.say(f"mlflow:   UI at {self.server.base} (experiment {EXPERIMENT})")
        return self.server.base

    def step(self, decided: Mapping[str, tuple[dict, float]]) -> None:
        """One `tracked:` line per decided refit, once MLflow holds its version and the champion
        alias names the local champion (or `patience` passed: then what MLflow holds, as it is)."""
        if self.client is None:
            return
        try:
            for name, (model, seen) in decided.items():
                if name in self.shown:
                    continue
                line, complete = self.tracked(name, model)
                if complete or self.clock() - seen > self.patience:
                    self.shown.add(name)
                    self.say(f"tracked:  {line}")
        except Exception as e:  # noqa: BLE001 - whatever MLflow raises, the demo goes on
            self.say(f"mlflow:   read-back failed ({type(e).__name__}: {' '.join(str(e).split())[:200]}): "
                     "the demo goes on without it")
            self.client = None

    def tracked(self, detector: str, model: dict) -> tuple[str, bool]:
        """(the line, whether MLflow caught up): the refit's run and registered version, and where
        `champion` points there, compared with the champion the detector's API reported."""
        version, champion = model["decision"]["version"], model.get("champion")
        name = f"rigwatch-{detector}"
        found = self.client.search_model_versions(f"name = '{name}' and tags.`{STORE_TAG}` = '{int(version)}'")
        if not found:
            return f"{detector} v{version}: no version of {name} registered in MLflow yet", False
        mv = max(found, key=lambda v: int(v.version))
        aliases = dict(self.client.get_registered_model(name).aliases)
        held = aliases.get("champion")
        if held is None:
            where, store = "no version", None
        else:
            store = self.client.get_model_version(name, held).tags.get(STORE_TAG)
            where = f"version {held} (store v{store})"
        line = (f"{detector} v{version} -> run {mv.run_id}, {name} version {mv.version}; "
                f"@champion: {where}")
        return line, champion is not None and store == str(champion)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
