"""The model store never crash-loops the detector and always falls back to the last good version.

- kill -9 during saves: a real process saving through the real ModelStore is SIGKILLed at random
  (seeded) points, again and again; each time the store opens on the newest complete version and
  leaves no temp file behind
- a store holding garbage (metadata that is no object, an artifact path outside the store, garbled
  fields, a state with a fine checksum that the code cannot use): the version is skipped with a
  warning naming its file and the previous one loads; only when none is usable is the detector refitted
- seeded mutations of a real stored state, its metadata and the log side's scoring cursor: loading
  never raises
- broken saved log templates: the version's own templates are used
- a real `rigwatch-detector serve` on such a store, with a real Prometheus, becomes ready on the
  previous version instead of exiting
"""
from __future__ import annotations

import copy
import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from detector.config import parse_config
from detector.fetch import SeriesData
from detector.logs.detector import LogDetector, LogDetectorConfig
from detector.logs.loki import LokiClient
from detector.logs.plugin import STORE_NAME as LOG_STORE_NAME
from detector.logs.plugin import LogPlugin
from detector.metric_detector import MetricDetector
from detector.metric_plugin import MetricPlugin
from detector.persistence import FilePersistence, is_temp_name
from detector.promclient import PromClient
from detector.registry import Registry
from detector.store import ModelStore
from harness.processes import free_port, wait_http_ok
from harness.servers import PrometheusServer

REPO = Path(__file__).resolve().parents[2]
NAME = "temp"
CONFIG = {"prometheus": {"retries": 0}, "loki": {"url": "http://127.0.0.1:9", "retries": 0},
          "detectors": [{"name": NAME, "query": "up", "model": "robust_z"}]}
LABELS = {"job": "prometheus", "instance": "box:9090"}
STEP = 60.0


def _fitted_state() -> tuple[dict, dict]:
    """A real robust_z detector's state and metadata, fitted on a day of readings."""
    cfg = parse_config(CONFIG)
    det = MetricDetector(cfg.detectors[0], cfg.schedule.step)
    t = 1_790_000_000.0 + STEP * np.arange(1440)
    y = 55.0 + np.random.default_rng(0).normal(0, 1, len(t))
    data = {"s": SeriesData(LABELS, t, y)}
    det.fit(data, float(t[-1]))
    return det.get_state(), det.fit_metadata(data, float(t[0]), float(t[-1]))


def _good_then(root: Path, corrupt) -> None:
    """v1 a good model, v2 whatever `corrupt(store, root)` makes of the next version."""
    store = ModelStore(FilePersistence(root))
    state, meta = _fitted_state()
    store.save(NAME, state, meta)
    corrupt(store, root)


def _metadata(edit):
    """Save a good v2, then rewrite its metadata file through `edit(meta) -> JSON text`."""
    def corrupt(store, root):
        state, meta = _fitted_state()
        store.save(NAME, state, meta)
        path = root / NAME / "v000002.json"
        path.write_text(edit(json.loads(path.read_text())))
    return corrupt


def _field(key, value):
    return _metadata(lambda meta: json.dumps({**meta, key: value}))


def _without(key):
    return _metadata(lambda meta: json.dumps({k: v for k, v in meta.items() if k != key}))


def _state(edit):
    """Save v2 with a state `edit(state)` made: its checksum is fine, its content is not."""
    def corrupt(store, root):
        state, meta = _fitted_state()
        store.save(NAME, edit(state), meta)
    return corrupt


def _series(edit):
    def on_state(state):
        (series,) = state["series"].values()
        edit(series)
        return state
    return _state(on_state)


def _drop_model_array(series):
    model_state = series["model"]["state"]
    del model_state[next(iter(model_state))]


CORRUPT_VERSIONS = {
    "metadata null": _metadata(lambda meta: "null"),
    "metadata a list": _metadata(lambda meta: "[]"),
    "metadata a number": _metadata(lambda meta: "42"),
    "metadata not JSON": _metadata(lambda meta: '{"store_format": 1,'),
    "metadata empty": _metadata(lambda meta: ""),
    "artifact absolute": _field("artifact", "/etc/passwd"),
    "artifact ..": _field("artifact", f"../{NAME}2/v000001.npz"),
    "artifact of another version": _field("artifact", "v000001.npz"),
    "checksum missing": _without("artifact_sha256"),
    "checksum a number": _field("artifact_sha256", 42),
    "store format missing": _without("store_format"),
    "version garbled": _field("version", "two"),
    "detector garbled": _field("detector", ["x"]),
    "state a list": _state(lambda state: [1, 2, 3]),
    "state of another kind": _state(lambda state: {**state, "kind": "seasonal_esd"}),
    "series a list": _state(lambda state: {**state, "series": [1, 2]}),
    "model kind unknown (model_from_state raises)": _series(lambda s: s["model"].update(kind="no_such_model")),
    "model arrays missing": _series(_drop_model_array),
    "last_t an array (wrong shape)": _series(lambda s: s.update(last_t=np.arange(3.0))),
    "labels missing": _series(lambda s: s.pop("labels")),
    "labels an array": _series(lambda s: s.update(labels=np.arange(2))),
    "series kind a list": _series(lambda s: s.update(kind=["robust_z"])),
    "last_fit a string": _state(lambda state: {**state, "last_fit": "yesterday"}),
    "last_fit past any time": _state(lambda state: {**state, "last_fit": 1e308}),
    "model array a string": _series(lambda s: s["model"]["state"].update(buf_="x")),
    "model array empty": _series(lambda s: s["model"]["state"].update(buf_=np.zeros(0))),
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy on an empty model array, before the refusal
@pytest.mark.parametrize("corrupt", CORRUPT_VERSIONS.values(), ids=CORRUPT_VERSIONS.keys())
def test_an_unusable_version_is_skipped_with_its_file_named_and_the_previous_loads(tmp_path, caplog, corrupt):
    _good_then(tmp_path, corrupt)
    plugin = MetricPlugin(parse_config(CONFIG), PromClient("http://127.0.0.1:9", retries=0),
                          store=ModelStore(FilePersistence(tmp_path)))
    with caplog.at_level(logging.WARNING):
        assert plugin.load() == 1
    assert plugin.detectors[NAME].version == 1 and plugin.models_missing() == []
    assert str(tmp_path / NAME / "v000002.json") in caplog.text or \
        str(tmp_path / NAME / "v000002.npz") in caplog.text, caplog.text
    assert not plugin.needs_fit(time.time())  # no refit: the previous version serves


def test_only_when_no_version_is_usable_is_the_detector_refitted(tmp_path, caplog):
    _good_then(tmp_path, _metadata(lambda meta: "null"))
    (tmp_path / NAME / "v000001.json").write_text("[]")
    plugin = MetricPlugin(parse_config(CONFIG), PromClient("http://127.0.0.1:9", retries=0),
                          store=ModelStore(FilePersistence(tmp_path)))
    with caplog.at_level(logging.WARNING):
        assert plugin.load() == 0
    assert plugin.models_missing() == [NAME] and plugin.needs_fit(time.time())
    assert "v000001.json" in caplog.text and "v000002.json" in caplog.text
    assert f"no stored version of {NAME} is usable: will refit" in caplog.text


def test_an_unusable_log_model_falls_back_to_the_previous_one(tmp_path, caplog):
    store = ModelStore(FilePersistence(tmp_path))
    good = LogDetector(LogDetectorConfig.from_dict({})).fit([])
    store.save(LOG_STORE_NAME, good.get_state(), {"training_window": {"start": 0.0, "end": 1_790_000_000.0}})
    store.save(LOG_STORE_NAME, {**good.get_state(), "config": ["not", "a", "mapping"]},
               {"training_window": {"start": 0.0, "end": 1_790_000_100.0}})
    store.save(LOG_STORE_NAME, good.get_state(), {"training_window": [1, 2]})  # garbled metadata field
    store.write_blob(f"{LOG_STORE_NAME}/cursor.json", b"[]")  # a cursor that is no object: scoring from now
    logs = LogPlugin(parse_config(CONFIG), loki=LokiClient("http://127.0.0.1:9", retries=0),
                     store=ModelStore(FilePersistence(tmp_path)))
    with caplog.at_level(logging.WARNING):
        assert logs.load() == 1
    assert logs.fitted_at == 1_790_000_000.0
    assert "logs/v000003.json" in caplog.text and "logs/v000002.json" in caplog.text
    assert "log scoring cursor not usable" in caplog.text and logs.last_scored is None


JUNK = (None, "x", -1, 1e308, float("nan"), True, [], {}, [1, [2]], {"kind": "robust_z"}, np.zeros((2, 3)))


def _mutated(doc, rng: random.Random):
    """`doc` with one random node (a key of a mapping, an item of a list) replaced by junk or dropped."""
    doc = copy.deepcopy(doc)
    node = doc
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = rng.choice(keys)
        child = node[key]
        if isinstance(child, dict | list) and child and rng.random() < 0.7:
            node = child
            continue
        if isinstance(node, dict) and rng.random() < 0.3:
            del node[key]
        else:
            node[key] = rng.choice(JUNK)
        return doc


def test_seeded_mutations_of_state_and_metadata_never_raise_and_fall_back(tmp_path):
    """200 seeded mutations of a real stored version: loading never raises; it loads the mutated
    version when the code accepts it and the good one before it otherwise."""
    rng = random.Random(7)
    store = ModelStore(FilePersistence(tmp_path))
    state, meta = _fitted_state()
    store.save(NAME, state, meta)
    outcomes = {1: 0, 2: 0}
    for case in range(200):
        mutate_state = case % 2 == 0
        store.save(NAME, _mutated(state, rng) if mutate_state else state, meta)
        Registry(store).propose(NAME, 2)  # as a fit does: the new version is champion
        if not mutate_state:
            path = tmp_path / NAME / "v000002.json"
            path.write_text(json.dumps(_mutated(json.loads(path.read_text()), rng), default=str))
        plugin = MetricPlugin(parse_config(CONFIG), PromClient("http://127.0.0.1:9", retries=0),
                              store=ModelStore(FilePersistence(tmp_path)))
        assert plugin.load() == 1, case
        outcomes[plugin.detectors[NAME].version] += 1
        json.dumps(plugin.models())  # what GET /api/v1/models answers from the loaded state
        plugin.needs_fit(time.time())
        for ext in ("json", "npz"):
            (tmp_path / NAME / f"v000002.{ext}").unlink()
    assert outcomes[1] > 50 and outcomes[2] > 0, outcomes  # both outcomes were exercised


def test_seeded_mutations_of_the_log_cursor_never_stop_the_load(tmp_path):
    """The log side's scoring cursor is store content too: 150 seeded mutations of a real one
    either resume scoring from a real time or start from now, never raise."""
    rng = random.Random(11)
    good = LogDetector(LogDetectorConfig.from_dict({})).fit([])
    cursor = {"version": 1, "fitted_at": 1_790_000_000.0, "last_scored": 1_790_000_060.0,
              "runtime": good.get_runtime_state(), "seen": [[1_790_000_050.0, "{}", "a line"]]}
    store = ModelStore(FilePersistence(tmp_path))
    store.save(LOG_STORE_NAME, good.get_state(), {"training_window": {"start": 0.0, "end": 1_790_000_000.0}})
    resumed = 0
    for case in range(150):
        store.write_blob(f"{LOG_STORE_NAME}/cursor.json", json.dumps(_mutated(cursor, rng), default=str).encode())
        logs = LogPlugin(parse_config(CONFIG), loki=LokiClient("http://127.0.0.1:9", retries=0),
                         store=ModelStore(FilePersistence(tmp_path)))
        assert logs.load() == 1, case
        assert logs.last_scored is None or 0 <= logs.last_scored < 2 ** 35, (case, logs.last_scored)
        resumed += logs.last_scored is not None
    assert 0 < resumed < 150  # both outcomes were exercised


# -- kill -9 during saves --------------------------------------------------------------------------

SAVER = textwrap.dedent("""
    import sys
    import numpy as np
    from detector.persistence import FilePersistence
    from detector.store import ModelStore

    store = ModelStore(FilePersistence(sys.argv[1]), keep=3)
    rng = np.random.default_rng(int(sys.argv[2]))
    while True:
        n = (store.versions("d") or [0])[-1] + 1
        # incompressible and a few MB: the kill often lands inside a write
        mv = store.save("d", {"n": n, "a": rng.random(300_000), "b": np.full(1000, float(n))})
        print(mv.version, flush=True)
""")


def _orphans(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if is_temp_name(p.name)]


def test_kill_9_at_random_points_during_saves_keeps_the_newest_complete_version(tmp_path):
    rng = random.Random(20261203)
    root = tmp_path / "store"
    saved_before = 0
    orphans_seen = 0
    for round_ in range(12):
        child = subprocess.Popen([sys.executable, "-c", SAVER, str(root), str(round_)], cwd=REPO,
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip(), "the saver never saved"
            if round_ % 2:
                time.sleep(rng.uniform(0.0, 0.3))  # anywhere in the save loop
            else:  # the moment a write is in flight: the case that leaves a temp file
                deadline = time.monotonic() + 5
                while not _orphans(root) and time.monotonic() < deadline:
                    time.sleep(rng.uniform(0, 0.002))
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            child.stdout.close()
        orphans_seen += bool(_orphans(root))

        store = ModelStore(FilePersistence(root), keep=3)
        newest = store.load_latest("d")
        versions = store.versions("d")
        assert newest is not None and newest.version == versions[-1] > saved_before
        assert newest.state["n"] == newest.version and newest.state["a"].shape == (300_000,)
        assert np.all(newest.state["b"] == newest.version)
        assert _orphans(root) == [], "temp files left after the store opened"
        saved_before = newest.version
    # the kills did land mid-write (6 of 12 here; a write may still finish between the look and the kill)
    assert orphans_seen >= 3


PROMOTER = textwrap.dedent("""
    import random, sys
    import numpy as np
    from detector.persistence import FilePersistence
    from detector.registry import Registry
    from detector.store import ModelStore

    store = ModelStore(FilePersistence(sys.argv[1]), keep=3)
    registry = Registry(store)
    rng = random.Random(int(sys.argv[2]))
    while True:  # fits proposed (promoted: no gate), operator promotions and rollbacks, back to back
        n = (store.versions("d") or [0])[-1] + 1
        mv = store.save("d", {"n": n, "a": np.random.default_rng(n).random(50_000)}, prune=False)
        registry.propose("d", mv.version)
        for _ in range(20):
            if rng.random() < 0.3 and registry.rollback_target("d") is not None:
                registry.rollback("d")
            else:
                registry.promote("d", rng.choice(store.versions("d")))
        print(mv.version, flush=True)
""")


def test_kill_9_during_promotions_leaves_a_loadable_champion(tmp_path, caplog):
    """A real process promoting, rolling back and fitting is SIGKILLed at random (seeded) points:
    each time the registry record reads back whole and its champion (and rollback target) load."""
    rng = random.Random(20261204)
    root = tmp_path / "store"
    champions = set()
    for round_ in range(12):
        child = subprocess.Popen([sys.executable, "-c", PROMOTER, str(root), str(round_)], cwd=REPO,
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip(), "the promoter never promoted"
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            child.stdout.close()
        store = ModelStore(FilePersistence(root), keep=3)
        registry = Registry(store)
        with caplog.at_level(logging.WARNING):
            record = registry.record("d")
            found = registry.load("d", lambda mv: mv.state["n"])
        assert caplog.records == [], caplog.text  # no torn record, no unusable champion
        assert record["champion"] is not None and found[0].version == record["champion"] == found[1]
        target = registry.rollback_target("d")
        assert target is None or store.load("d", target).state["n"] == target
        assert _orphans(root) == []
        champions.add(record["champion"])
    assert len(champions) > 3  # the kills landed at different points of the promotion loop


# -- the real serve process on a store with garbage ------------------------------------------------

def test_serve_on_a_store_with_garbage_becomes_ready_on_the_previous_version(tmp_path):
    store_dir = tmp_path / "store"
    _good_then(store_dir, _metadata(lambda meta: "null"))
    ModelStore(FilePersistence(store_dir)).save(NAME, {"kind": "robust_z", "series": "garbage"})  # v3
    (store_dir / NAME / ".v000004.npz.k3j2ab_9.tmp").write_bytes(b"half a save")
    with PrometheusServer(tmp_path / "prom", "global: {scrape_interval: 1s}\n"
                          "scrape_configs: [{job_name: prometheus, static_configs: [{targets: []}]}]\n") as prom:
        port = free_port()
        config = tmp_path / "detector.yml"
        config.write_text(f"prometheus: {{url: '{prom.url}'}}\nstore: {{path: '{store_dir}'}}\n"
                          f"schedule: {{step: 5s}}\n"
                          f"detectors: [{{name: {NAME}, query: up, model: robust_z}}]\n")
        log_path = tmp_path / "serve.log"
        with open(log_path, "w") as log:
            serve = subprocess.Popen([sys.executable, "-m", "detector.cli", "serve", "--config", str(config),
                                      "--listen", f"127.0.0.1:{port}"], cwd=REPO, stdout=log,
                                     stderr=subprocess.STDOUT)
        try:
            wait_http_ok(f"http://127.0.0.1:{port}/readyz", timeout=30, proc=serve)
            models = requests.get(f"http://127.0.0.1:{port}/api/v1/models", timeout=2).json()["models"]
            assert [(m["detector"], m["version"]) for m in models] == [(NAME, 1)]
        finally:
            serve.terminate()
            serve.wait(timeout=15)
    text = log_path.read_text()
    assert "v000002.json" in text and "v000003.json" in text and f"loaded {NAME} v1" in text, text
    assert "removed the orphaned temp file" in text and "Traceback" not in text, text
    assert not (store_dir / NAME / ".v000004.npz.k3j2ab_9.tmp").exists()


def test_broken_saved_templates_fall_back_to_the_versions_own(tmp_path, caplog):
    store = ModelStore(FilePersistence(tmp_path))
    good = LogDetector(LogDetectorConfig.from_dict({})).fit([])
    store.save(LOG_STORE_NAME, good.get_state(), {"training_window": {"start": 0.0, "end": 1_790_000_000.0}})
    store.write_blob(f"{LOG_STORE_NAME}/templates.json", b"[1, 2")  # a blob garbled on disk
    logs = LogPlugin(parse_config(CONFIG), loki=LokiClient("http://127.0.0.1:9", retries=0),
                     store=ModelStore(FilePersistence(tmp_path)))
    with caplog.at_level(logging.WARNING):
        assert logs.load() == 1
    assert str(tmp_path / LOG_STORE_NAME / "templates.json") in caplog.text
    assert store.read_blob(f"{LOG_STORE_NAME}/templates.json") is None  # saved afresh after the next pass
