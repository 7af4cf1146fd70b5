"""Reproducible data stages: what the metric models see, exported as Parquet, and read back to fit.

    export_dataset()  every enabled detector's data over [start, end] from Prometheus, in three stages
        ingested/<detector>/<key>.parquet  each query's answer as read (key: `query`, `features.NAME`,
                                           `heartbeat`, as in the detector's config section)
        ingested/logs.parquet              with --loki-url: the log lines as read (t, labels, message)
        processed/<detector>.parquet       the series fetch_series makes of them: joined, on the step
                                           grid, gaps as NaN (the very SeriesData the detector gets)
        features/<detector>.parquet        what the configured model is fitted on: t, y and its design
                                           matrix (design_matrix of the model class), for inspection
        manifest.json                      queries, range, step, rigwatch version, config sha256, the
                                           sha256 of every file and their fingerprint
    open_dataset()    a dataset whose files all match its manifest (DatasetError naming the one that
                      does not); DatasetSource serves its processed stage to the metric plugin in place
                      of Prometheus, so `fit --dataset` runs the live fit's code on the same arrays.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detector.config import Config, DetectorConfig
from detector.fetch import SeriesData, detector_queries, feature_queries, fetch_series
from detector.logs.loki import LokiClient
from detector.models import kind_class
from detector.promclient import PromClient, Series
from detector.timefmt import iso

FORMAT = 1
MANIFEST = "manifest.json"


class DatasetError(Exception):
    """A dataset that cannot be used as it is; the message names the file or the key."""


def _rigwatch_version() -> str:
    try:
        return version("rigwatch")
    except PackageNotFoundError:
        return "unknown"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dataset_fingerprint(files: dict[str, str]) -> str:
    """sha256 over the sorted file hashes: the same data gives the same fingerprint wherever the
    directory was written or moved to."""
    return hashlib.sha256("\n".join(sorted(files.values())).encode()).hexdigest()


# -- export ---------------------------------------------------------------------------------------

class _RecordingClient:
    """The Prometheus client as fetch_series sees it, keeping each answer as read: the ingested stage
    comes from the same calls as the processed one, not from a second fetch."""

    def __init__(self, client: PromClient):
        self.client = client
        self.answers: list[tuple[str, list[Series]]] = []

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[Series]:
        answer = self.client.query_range(promql, start, end, step)
        self.answers.append((promql, answer))
        return answer


def _frame(series: list[tuple[str, dict[str, str], np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """Long format, one row a point: series id, its labels (JSON, in Prometheus's order), t, y."""
    rows = [(sid, json.dumps(labels), t, y) for sid, labels, t, y in series]
    return pd.DataFrame({
        "series": pd.Series([sid for sid, _, t, _ in rows for _ in range(len(t))], dtype=object),
        "labels": pd.Series([lab for _, lab, t, _ in rows for _ in range(len(t))], dtype=object),
        "t": np.concatenate([t for *_, t, _ in rows]) if rows else np.zeros(0),
        "y": np.concatenate([y for *_, y in rows]) if rows else np.zeros(0),
    })


def _processed_frame(data: dict[str, SeriesData], names: list[str]) -> pd.DataFrame:
    df = _frame([(sid, sd.labels, sd.t, sd.y) for sid, sd in data.items()])
    for j, name in enumerate(names):
        cols = [sd.X[:, j] if sd.X is not None else np.full(len(sd.t), np.nan) for sd in data.values()]
        df[f"X.{name}"] = np.concatenate(cols) if cols else np.zeros(0)
    return df


def _features_frame(det: DetectorConfig, data: dict[str, SeriesData]) -> pd.DataFrame:
    """The configured model's inputs: t, y, and for a model fitted on X its design matrix."""
    df = _frame([(sid, sd.labels, sd.t, sd.y) for sid, sd in data.items()]).drop(columns="labels")
    cls = kind_class(det.kind)
    if not cls.multivariate:
        return df
    designs = [cls.design_matrix(sd.y, sd.X) for sd in data.values()]
    designs = [d for d in designs if d is not None]
    if not designs:
        return df
    design = np.vstack(designs)
    features = list(feature_queries(det))
    # rules name no inputs: their X is the detector's features (a heartbeat) as they are
    names = cls.input_names(features) if hasattr(cls, "input_names") else features
    if len(names) != design.shape[1]:
        names = [f"x{j}" for j in range(design.shape[1])]
    for j, name in enumerate(names):
        df[f"design.{name}"] = design[:, j]
    return df


def _write(df: pd.DataFrame, out: Path, rel: str, files: dict[str, str]) -> None:
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False, engine="pyarrow")
    files[rel] = sha256_file(path)


def _export_logs(loki: LokiClient, query: str, start: float, end: float, out: Path,
                 files: dict[str, str]) -> dict[str, Any]:
    """The log lines of [start, end) as the log side reads them (ingested only: its templates and
    models are not exported yet)."""
    entries = loki.query_range(query, start, end)
    df = pd.DataFrame({"t": np.array([e.ts for e in entries], float),
                       "labels": pd.Series([json.dumps(e.labels) for e in entries], dtype=object),
                       "message": pd.Series([e.message for e in entries], dtype=object)})
    _write(df, out, "ingested/logs.parquet", files)
    return {"query": query, "lines": len(entries)}


def export_dataset(config: Config, client: PromClient, start: float, end: float, out: Path, *,
                   config_text: str, source_url: str, loki: LokiClient | None = None,
                   loki_url: str | None = None) -> dict[str, Any]:
    """Write the three stages and the manifest under `out` (created; must be empty); returns the
    manifest. Raises PromError (DetectorQueryError for a refused query) as fetch_series does, and with
    `loki`, LokiError."""
    step = config.schedule.step
    files: dict[str, str] = {}
    logs = None
    if loki is not None:
        logs = {"loki_url": loki_url, **_export_logs(loki, LokiClient.query_from_config(config.loki), start, end,
                                                    out, files)}
    detectors: dict[str, Any] = {}
    for det in (d for d in config.detectors if d.enabled):
        rec = _RecordingClient(client)
        data = fetch_series(rec, det, start, end, step)
        queries = detector_queries(det)
        # fetch_series asks in detector_queries' order (the query, then each feature or heartbeat)
        for (key, promql), (asked, answer) in zip(queries.items(), rec.answers, strict=True):
            assert promql == asked, (key, promql, asked)
            _write(_frame([("", s.labels, s.t, s.y) for s in answer]).drop(columns="series"), out,
                   f"ingested/{det.name}/{key}.parquet", files)
        names = list(feature_queries(det))
        _write(_processed_frame(data, names), out, f"processed/{det.name}.parquet", files)
        _write(_features_frame(det, data), out, f"features/{det.name}.parquet", files)
        detectors[det.name] = {"kind": det.kind, "queries": queries, "feature_names": names,
                               "series": len(data), "points": int(sum(len(sd.t) for sd in data.values()))}
    manifest = {"format": FORMAT, "rigwatch_version": _rigwatch_version(), "created": iso(time.time()),
                "source": {"prometheus_url": source_url}, "logs": logs,
                "range": {"start": start, "end": end, "start_iso": iso(start), "end_iso": iso(end)},
                "step": step, "config_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
                "detectors": detectors, "files": dict(sorted(files.items())),
                "fingerprint": dataset_fingerprint(files)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


# -- read back ------------------------------------------------------------------------------------

@dataclass
class Dataset:
    root: Path
    manifest: dict[str, Any]

    @property
    def start(self) -> float:
        return float(self.manifest["range"]["start"])

    @property
    def end(self) -> float:
        return float(self.manifest["range"]["end"])

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    def check_config(self, config: Config) -> None:
        """The config must ask for what was exported (same step, each enabled detector's queries);
        its models and parameters may differ: refitting them on fixed data is the point."""
        if float(config.schedule.step) != float(self.manifest["step"]):
            raise DatasetError(f"schedule.step: the config's {config.schedule.step}s is not the dataset's "
                               f"{self.manifest['step']}s ({self.root / MANIFEST})")
        exported = self.manifest["detectors"]
        for i, det in enumerate(config.detectors):
            if not det.enabled:
                continue
            if det.name not in exported:
                raise DatasetError(f"detectors[{i}].name: {det.name!r} is not in the dataset "
                                   f"(exported: {', '.join(sorted(exported)) or 'none'})")
            if detector_queries(det) != exported[det.name]["queries"]:
                raise DatasetError(f"detectors[{i}] ({det.name}): its queries differ from the exported ones "
                                   f"({self.root / MANIFEST})")


def open_dataset(root: str | Path) -> Dataset:
    """The dataset under `root` once every file in its manifest is there with its sha256."""
    root = Path(root)
    mpath = root / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{mpath}: no readable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or \
            not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("detectors"), dict):
        raise DatasetError(f"{mpath}: not a rigwatch dataset manifest (format {FORMAT})")
    for rel, digest in manifest["files"].items():
        path = root / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise DatasetError(f"{mpath}: file {rel!r} lies outside the dataset")
        if not path.is_file():
            raise DatasetError(f"{path}: listed in the manifest but missing")
        if sha256_file(path) != digest:
            raise DatasetError(f"{path}: sha256 does not match the manifest (changed after export)")
    for name in manifest["detectors"]:
        if f"processed/{name}.parquet" not in manifest["files"]:
            raise DatasetError(f"{mpath}: detector {name!r} has no processed/{name}.parquet in its files")
    if dataset_fingerprint(manifest["files"]) != manifest.get("fingerprint"):
        raise DatasetError(f"{mpath}: fingerprint does not match its file hashes")
    return Dataset(root, manifest)


def read_processed(ds: Dataset, detector: str) -> dict[str, SeriesData]:
    """A detector's processed stage back as the SeriesData fetch_series gave (same order, same bits)."""
    names = list(ds.manifest["detectors"][detector]["feature_names"])
    df = pd.read_parquet(ds.root / f"processed/{detector}.parquet", engine="pyarrow")
    out: dict[str, SeriesData] = {}
    for sid, g in df.groupby("series", sort=False):
        X = g[[f"X.{n}" for n in names]].to_numpy(float) if names else None
        out[str(sid)] = SeriesData(json.loads(g["labels"].iloc[0]), g["t"].to_numpy(float),
                                   g["y"].to_numpy(float), X, names)
    return out


class DatasetSource:
    """The metric plugin's source for `fit --dataset`: the processed stage in place of Prometheus."""

    def __init__(self, ds: Dataset):
        self.ds = ds
        self._cache: dict[str, dict[str, SeriesData]] = {}

    def fetch(self, det: DetectorConfig, start: float, end: float, step: float) -> dict[str, SeriesData]:
        if det.name not in self._cache:
            self._cache[det.name] = read_processed(self.ds, det.name)
        out = {}
        for sid, sd in self._cache[det.name].items():
            part = sd.slice((sd.t >= start) & (sd.t <= end))
            if len(part.t):
                out[sid] = part
        return out

    def provenance(self) -> dict[str, Any]:
        return {"source": "dataset", "dataset_fingerprint": self.ds.fingerprint}
