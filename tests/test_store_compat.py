"""A model store written by the previous release (0.1.0, tests/fixtures/store-0.1.0) keeps working:
every metric detector's stored version loads and scores on; the log model, whose 0.1.0 state held a
pickle, is refused without being unpickled and refitted once, with a warning."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from detector.config import parse_config
from detector.fetch import SeriesData
from detector.logs.loki import LokiClient
from detector.logs.plugin import LogPlugin
from detector.metric_plugin import MetricPlugin
from detector.persistence import FilePersistence
from detector.promclient import PromClient
from detector.store import ModelStore

FIXTURE = Path(__file__).parent / "fixtures" / "store-0.1.0"
SAVED_AT = 1_790_000_000.0  # the fixture's training windows end here
CONFIG = {
    "prometheus": {"retries": 0},
    "loki": {"url": "http://127.0.0.1:9", "retries": 0},
    "detectors": [
        {"name": "temp", "query": "q", "model": "robust_z"},
        {"name": "seasonal", "query": "q", "model": "seasonal_esd"},
        {"name": "thermal", "query": "q", "model": "thermal", "features": {"power": "p", "fan": "f"}},
        {"name": "joint", "query": "q", "model": "iforest", "features": {"power": "p"}},
        {"name": "xid", "query": "q", "rule": "counter_increase"},
        {"name": "throttle", "query": "q", "rule": "held_active"},
        {"name": "vanished", "query": "q", "rule": "series_vanished", "heartbeat": "h"},
        {"name": "vram", "query": "q", "rule": "steady_increase"},
        {"name": "quiet", "query": "q", "model": "seasonal_esd", "fallback": "none"},
    ],
}
LABELS = {"gpu": "0", "uuid": "GPU-a", "job": "rigwatch-exporter", "instance": "aibox:9842"}


def _store(tmp_path) -> ModelStore:
    shutil.copytree(FIXTURE, tmp_path / "store")  # never write into the fixture
    return ModelStore(FilePersistence(tmp_path / "store"))


def test_every_metric_detector_of_0_1_0_loads_and_scores_on(tmp_path, caplog):
    config = parse_config(CONFIG)
    metric = MetricPlugin(config, PromClient("http://127.0.0.1:9", retries=0), store=_store(tmp_path))
    with caplog.at_level(logging.WARNING):
        assert metric.load() == len(CONFIG["detectors"])
    assert metric.models_missing() == [] and not caplog.records
    assert {d.version for d in metric.detectors.values()} == {1}
    t = SAVED_AT + 60.0 * np.arange(1, 6)
    for name, det in metric.detectors.items():
        names = list(det.cfg.features) or (["heartbeat"] if det.cfg.heartbeat else [])
        y = t.copy() if det.cfg.heartbeat else np.full(len(t), 55.0)
        X = np.column_stack([np.full(len(t), 120.0)] * len(names)) if names else None
        if det.cfg.heartbeat:
            X = t[:, None].copy()
        with caplog.at_level(logging.WARNING):
            (batch,) = det.score({"s": SeriesData(LABELS, t, y, X, names)})
        assert len(batch.t) == 5 and not caplog.records, (name, caplog.text)


def test_the_pickled_log_model_of_0_1_0_is_refused_and_refitted_once(tmp_path, caplog):
    store = _store(tmp_path)
    logs = LogPlugin(parse_config(CONFIG), loki=LokiClient("http://127.0.0.1:9", retries=0), store=store)
    with caplog.at_level(logging.WARNING):
        assert logs.load() == 0
    assert "stored log model v1 not usable" in caplog.text and "will refit" in caplog.text
    assert logs.needs_fit(SAVED_AT + 60)  # the service fits it at start-up
