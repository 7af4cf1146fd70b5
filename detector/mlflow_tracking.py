"""The MLflow sink of detector.tracking: one run per detector per fit cycle. Imported only when
tracking is configured, and mlflow itself only at the first record, in the tracking worker thread.

A run: params (config hash, model and its parameters, lookback, step), metrics (series fitted /
baseline / failed / skipped, fit seconds), tags (rigwatch version, store version, training-data
fingerprint), artifacts (the version's metadata.json and series.csv, one row per series: thousands
of tiny per-series models are one detector version, never one MLflow model each). Also, when the
worker evaluated the fit: metric training_anomaly_rate and anomalous_series.png (the most anomalous
series of the training window with their bands); when the registry decided: the gate's figures as
metrics gate_<key>, tags rigwatch.gate_outcome and rigwatch.gate_reason.

Registry: each fit a version of `rigwatch-<detector>`, tagged with its store version. The aliases
`champion` and `challenger` mirror the local registry's (mirror_aliases); nothing else moves them.

Sharded (`--shard I/N`, detector/sharding.py): every shard writes through the same tracking server
into the same registered model; its runs and versions carry `rigwatch.shard` ("I/N") and
`rigwatch.shard_index`, and its aliases are `champion-shard-I` / `challenger-shard-I`. Each shard's
store numbers its versions on its own and its champion holds only its own series, so one shared
`champion` would be overwritten by whichever shard decided last and name a model of part of the
series; per-shard aliases never touch another shard's. The index names them, not N (as it names the
store directory): a replica restarted with another N keeps its aliases. Unsharded: as before.

With a sqlite:/// backend this process is the only writer (SQLite locks with several); artifacts go
to `mlartifacts/` beside the database file. A tracking server stores them where it is told to.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from detector.config import TrackingConfig
from detector.fit_records import rigwatch_version
from detector.incident_plots import plot_series
from detector.sharding import Shard
from detector.tracking import AliasJob, BackgroundTracker, FitRecord

log = logging.getLogger(__name__)
ALIASES = ("champion", "challenger")
PLOT = "anomalous_series.png"
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")  # a path: MLflow runs it at load time


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite database (MLflow's default is
    ./mlruns under whatever the working directory is); a server decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    return None


def series_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    if rows:
        w = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return out.getvalue()


def alias_names(shard: Shard) -> tuple[str, str]:
    """The champion and challenger aliases a shard sets (see the module's docstring)."""
    return ALIASES if not shard.sharded else tuple(f"{a}-shard-{shard.index}" for a in ALIASES)


class MlflowSink:
    def __init__(self, cfg: TrackingConfig, shard: Shard | None = None):
        self.cfg = cfg
        self.shard = shard or Shard()
        self._client = None
        self._experiment_id: str | None = None

    def _connect(self):
        if self._client is None:
            # one request's time limit, and no retries inside MLflow's HTTP client: the worker retries
            # with its own backoff, so a dead server costs a try, not minutes (setdefault: the
            # environment of the process wins)
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(self.cfg.timeout))))
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # progress bars in a service log
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.cfg.uri)
        if self._experiment_id is None:
            exp = self._client.get_experiment_by_name(self.cfg.experiment)
            self._experiment_id = exp.experiment_id if exp is not None else self._client.create_experiment(
                self.cfg.experiment, artifact_location=artifact_location(self.cfg.uri))
        return self._client

    def __call__(self, record: FitRecord, attempt: dict) -> None:
        from mlflow.entities import Metric, Param, RunTag

        client = self._connect()
        if "run_id" not in attempt:  # a retry completes the run it created, never starts a second
            run = client.create_run(self._experiment_id, run_name=f"{record.detector}-v{record.version}",
                                    tags=record.tags)
            attempt["run_id"] = run.info.run_id
        run_id = attempt["run_id"]
        if not attempt.get("logged"):
            now = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in record.metrics.items()],
                             params=[Param(k, v) for k, v in record.params.items()],
                             tags=[RunTag(k, v) for k, v in record.tags.items()])
            attempt["logged"] = True
        if self.cfg.artifacts and not attempt.get("artifacts"):
            client.log_dict(run_id, record.metadata, "metadata.json")
            client.log_text(run_id, series_csv(record.series), "series.csv")
            attempt["artifacts"] = True
        if self.cfg.artifacts and record.plot and not attempt.get("plot"):
            self._log_plot(client, run_id, record)
            attempt["plot"] = True
        if self.cfg.artifacts and record.state is not None and not attempt.get("model"):
            attempt["model"] = self._log_model(client, run_id, record)
        if attempt.get("model") and not attempt.get("registered"):
            self._register(client, run_id, record)
            attempt["registered"] = True
        client.set_terminated(run_id, "FINISHED")

    @staticmethod
    def _log_plot(client, run_id: str, record: FitRecord) -> None:
        arrays = [{k: getattr(p, k) for k in ("t", "y", "score", "expected", "lower", "upper")} for p in record.plot]
        titles = [f"{record.detector} v{record.version}: "
                  + ", ".join(f"{k}={v}" for k, v in sorted(p.labels.items()) if k != "__name__")
                  + f" (max score {np.nanmax(p.score):.1f})" for p in record.plot]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, PLOT)
            path.write_bytes(plot_series(arrays, titles))
            client.log_artifact(run_id, str(path))

    def mirror_aliases(self, job: AliasJob, attempt: dict) -> None:
        """Set `champion` / `challenger` of rigwatch-<detector> to the model versions registered for
        the job's store versions; unset an alias whose store version is None or was never
        registered (warned: its fit was not tracked). With `artifacts: false` nothing is registered
        and nothing is mirrored."""
        if not self.cfg.artifacts:
            return  # no model logged, so no version registered: nothing to point an alias at
        from mlflow.exceptions import MlflowException

        client = self._connect()
        name = f"rigwatch-{job.detector}"
        try:
            current = dict(client.get_registered_model(name).aliases)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            log.warning("tracking: no registered model %s yet (no fit of it tracked): aliases left unset", name)
            return
        for alias, store_version in zip(alias_names(self.shard), (job.champion, job.challenger), strict=True):
            number = None if store_version is None else self._registered(client, name, store_version)
            if store_version is not None and number is None:
                log.warning("tracking: v%d of %s was never registered in %s: alias %s left unset",
                            store_version, job.detector, name, alias)
            if number is None:
                if alias in current:
                    client.delete_registered_model_alias(name, alias)
            elif current.get(alias) != number:
                client.set_registered_model_alias(name, alias, number)

    def _registered(self, client, name: str, store_version: int) -> str | None:
        """The newest model version of `name` tagged with this store version and this shard's index
        (untagged: unsharded) — every shard's store has its own v1 (a retried registration or a store
        started afresh may have left several)."""
        found = client.search_model_versions(
            f"name = '{name}' and tags.`rigwatch.store_version` = '{int(store_version)}'")
        index = self.shard.tracking_tags().get("rigwatch.shard_index")
        return max((v.version for v in found if (v.tags or {}).get("rigwatch.shard_index") == index),
                   key=int, default=None)


    @staticmethod
    def _log_model(client, run_id: str, record: FitRecord) -> None:
        """The version as a models-from-code pyfunc (detector/mlflow_model.py) under `model/`."""
        blob = record.state()
        if blob is None:
            return False  # pruned before the worker got to it: the run keeps its metadata and table
        import mlflow.pyfunc

        with tempfile.TemporaryDirectory() as tmp:
            state, meta = Path(tmp, "state.npz"), Path(tmp, "metadata.json")
            state.write_bytes(blob)
            meta.write_text(json.dumps(record.metadata, default=str))
            mlflow.pyfunc.save_model(Path(tmp, "model"), python_model=str(MODEL_CODE),
                                     artifacts={"state": str(state), "metadata": str(meta)},
                                     signature=_signature(),
                                     pip_requirements=[f"rigwatch[detector]=={rigwatch_version()}"])
            client.log_artifacts(run_id, str(Path(tmp, "model")), "model")
        return True

    def _register(self, client, run_id: str, record: FitRecord) -> None:
        """Each fit a version of the registered model rigwatch-<detector>, tagged with its store
        version (no aliases here: they follow the local registry's decisions, mirror_aliases)."""
        from mlflow.exceptions import MlflowException

        name = f"rigwatch-{record.detector}"
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name)
        run = client.get_run(run_id)
        client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run_id,
                                    tags={"rigwatch.store_version": str(record.version), **self.shard.tracking_tags()})


def _signature():
    """The pyfunc's input and output columns (detector/mlflow_model.py), declared: MLflow checks the
    input against them."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    out = ["series", "t", "y", "score", "expected", "lower", "upper"]
    return ModelSignature(inputs=Schema([ColSpec("string", "series"), ColSpec("double", "t"), ColSpec("double", "y")]),
                          outputs=Schema([ColSpec("string" if c == "series" else "double", c) for c in out]))


def mlflow_tracker(cfg: TrackingConfig, shard: Shard | None = None, **kw) -> BackgroundTracker:
    sink = MlflowSink(cfg, shard)
    return BackgroundTracker(sink, mirror=sink.mirror_aliases, **kw)
