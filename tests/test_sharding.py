"""The sharded detector (detector/sharding.py): `shard: I/N` parsed with errors naming the key, every
series owned by exactly one shard the same way in every process, two MetricPlugins over one
MemorySource splitting the series, a change of N keeping the models of the series that stayed and
fitting the moved ones, the shard's metrics, the log side on shard 0 only, and MLflow's shard tags and
aliases. (The context detector's busy rule split by GPU: tests/test_context.py.)"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from detector.cli import main
from detector.config import apply_overrides, parse_config
from detector.config_values import ConfigError
from detector.fetch import MemorySource, SeriesData
from detector.logs.plugin import LogPlugin
from detector.metric_plugin import MetricPlugin
from detector.metrics import DetectorCollector
from detector.persistence import MemoryPersistence
from detector.plugins import serve_plugins
from detector.scores import series_id
from detector.service import DetectorService
from detector.sharding import Shard, parse_shard, shard_of
from detector.store import ModelStore

T0 = 1_800_000_000.0
STEP = 60.0


def identities(n):
    """GPU series (keyed on uuid) and host series (no uuid) alike."""
    return [{"uuid": f"GPU-{i:04x}", "gpu": str(i % 8), "instance": f"box{i % 3}:9842"} if i % 2 else
            {"instance": f"box{i}:9100", "mountpoint": "/", "job": "node"} for i in range(n)]


# -- the shard value ----------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["2/2", "0/0", "1", "a/b", "-1/2", "1/2/3", 3, None, "0/5000"])
def test_a_bad_shard_is_refused_naming_the_key(value):
    with pytest.raises(ConfigError) as e:
        parse_config({"shard": value} if value is not None else {"shard": [1]})
    assert e.value.key == "shard"
    with pytest.raises(ConfigError) as e:
        apply_overrides(parse_config({}), shard=str(value))
    assert e.value.key == "--shard"


def test_shard_from_config_and_flag_and_the_default_owns_everything(capsys):
    assert parse_config({}).shard == Shard(0, 1) and parse_shard(" 1 / 3 ") == Shard(1, 3)
    cfg = parse_config({"shard": "1/3"})
    assert cfg.shard == Shard(1, 3) and cfg.shard.store_path("models") == "models/shard-1"
    assert apply_overrides(cfg, shard="0/2").shard == Shard(0, 2)
    assert parse_config({}).reloaded_over(cfg).shard == Shard(0, 2)  # a reload keeps the running shard
    assert Shard().store_path("models") == "models"
    assert all(Shard().owns(labels) for labels in identities(50))
    assert main(["serve", "--shard", "2/2"]) == 2 and "--shard" in capsys.readouterr().err


# -- ownership ----------------------------------------------------------------------------------
def test_every_identity_is_owned_by_exactly_one_shard_in_rough_balance():
    ids = identities(1000)
    for n in range(1, 6):
        owners = [[i for i in range(n) if Shard(i, n).owns(labels)] for labels in ids]
        assert all(len(o) == 1 for o in owners)
        counts = np.bincount([o[0] for o in owners], minlength=n)
        assert counts.min() > 0.7 * 1000 / n and counts.max() < 1.3 * 1000 / n, counts


def test_growing_n_by_one_moves_series_only_to_the_new_shard():
    ids = identities(1000)
    for n in range(1, 5):
        before, after = [shard_of(x, n) for x in ids], [shard_of(x, n + 1) for x in ids]
        moved = [a for b, a in zip(before, after, strict=True) if a != b]
        assert moved and set(moved) == {n}


def test_one_gpu_stays_on_one_shard_whatever_its_other_labels():
    gpu = {"uuid": "GPU-77", "gpu": "3", "instance": "box:9842"}
    assert len({shard_of({**gpu, "fan": str(f), "xid": "79"}, 5) for f in range(20)}) == 1


def test_a_uuid_repeated_on_two_boxes_is_two_gpus():
    """Boxes cloned from one image (or simulated ones) can repeat a uuid: with the fleet's box label
    they are two keys, spread like any others; one box's GPU still stays together."""
    n = 4
    per_box = {shard_of({"box": f"box-{b}", "uuid": "GPU-same"}, n) for b in range(40)}
    assert len(per_box) == n  # forty boxes' "same" card over every shard, not all on one
    one = {shard_of({"box": "box-3", "uuid": "GPU-same", "detector_label": x}, n) for x in "abcdef"}
    assert len(one) == 1


def test_the_assignment_is_the_same_in_another_process():
    ids = identities(300)
    code = ("import json, sys; from detector.sharding import shard_of; "
            "print(json.dumps([shard_of(x, 3) for x in json.load(sys.stdin)]))")
    env = {"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(ids), capture_output=True, text=True,
                         env=env, check=True).stdout
    assert json.loads(out) == [shard_of(x, 3) for x in ids]


# -- the metric side split ------------------------------------------------------------------------
def memory_data(n=16):
    rng = np.random.default_rng(3)
    t = np.arange(T0 - 7200, T0 + 3600, STEP)
    return {"temp": {series_id(labels): SeriesData(labels, t, 50 + rng.normal(0, 1, len(t)))
                     for labels in identities(n)}}


def plugin(shard, store, data):
    cfg = parse_config({"shard": shard, "schedule": {"step": "60s", "lookback": "1h", "context": "30m"},
                        "detectors": [{"name": "temp", "query": "t", "model": "robust_z",
                                       "params": {"min_periods": 5}}]})
    p = MetricPlugin(cfg, None, store=store, source=MemorySource(data))
    p.load()
    return p


def scored(p, now):
    return {series_id(b.labels) for b in p.score(now).batches}


def fitted_at(p):
    return {sid: sm.fitted_at for sid, sm in p.detectors["temp"].series.items()}


def test_two_shards_score_disjoint_series_whose_union_is_all_then_n_changes():
    data = memory_data()
    every = set(data["temp"])
    stores = [ModelStore(MemoryPersistence()) for _ in range(3)]
    two = [plugin(f"{i}/2", stores[i], data) for i in range(2)]
    for p in two:
        assert p.fit(T0)
    parts = [scored(p, T0 + 600) for p in two]
    assert parts[0] and parts[1] and not parts[0] & parts[1] and parts[0] | parts[1] == every
    assert [set(p.detectors["temp"].series) for p in two] == parts
    before = [fitted_at(p) for p in two]

    # 2 -> 3: shards 0 and 1 restart over their stores and keep the models of what they still own;
    # the new shard 2 fits the series that moved to it, and only those
    three = [plugin(f"{i}/3", stores[i], data) for i in range(3)]
    for i in range(2):
        assert three[i].detectors["temp"].series.keys() == {s for s in parts[i] if three[i].shard.owns(
            data["temp"][s].labels)}
    assert three[2].needs_fit(T0 + 1200) and three[2].fit(T0 + 1200)
    moved = set(three[2].detectors["temp"].series)
    assert moved and not moved & set().union(*(set(three[i].detectors["temp"].series) for i in range(2)))
    for i in range(2):
        assert scored(three[i], T0 + 1200) == parts[i] - moved
        assert stores[i].versions("temp") == [1]  # nothing gained: no refit
        assert fitted_at(three[i]) == {s: before[i][s] for s in parts[i] - moved}
    assert scored(three[2], T0 + 1500) == moved

    # a regular fit at N=3: the new versions hold only what each shard owns now
    for i in range(2):
        assert three[i].fit(T0 + 1500) and stores[i].versions("temp") == [1, 2]
    kept = [fitted_at(three[i]) for i in range(2)]

    # 3 -> 2: the series of shard 2 go back; each old shard fits those alone, the others keep theirs
    again = [plugin(f"{i}/2", stores[i], data) for i in range(2)]
    assert all(p.detectors["temp"].series.keys() == kept[i].keys() for i, p in enumerate(again))
    for i, p in enumerate(again):
        assert scored(p, T0 + 2400) >= kept[i].keys()  # the first pass fits the gained series, then scores
        assert scored(p, T0 + 3000) == parts[i]
        gained = moved & parts[i]
        # a version of its own, through the gate (held out: the newest 15 min), taken as champion
        assert stores[i].versions("temp") == ([1, 2, 3] if gained else [1, 2])
        assert p.registry.record("temp")["champion"] == stores[i].versions("temp")[-1]
        now = fitted_at(p)
        assert {s: now[s] for s in kept[i]} == kept[i]
        assert all(now[s] > max(kept[i].values()) for s in gained)
    assert stores[0].load("temp", stores[0].versions("temp")[-1]).metadata["shard"] in ("0/2", "0/3")


def test_shard_info_and_series_count_are_published():
    cfg = parse_config({"shard": "1/2", "schedule": {"step": "60s", "lookback": "1h"},
                        "detectors": [{"name": "temp", "query": "t", "model": "robust_z"}]})
    data = memory_data(10)
    p = MetricPlugin(cfg, None, source=MemorySource(data))
    service = DetectorService(cfg, [p], clock=lambda: T0)
    assert p.fit(T0)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(DetectorCollector(lambda: service.snapshot, service.extra_families))
    assert reg.get_sample_value("rigwatch_detector_shard_info", {"shard": "1", "shards": "2"}) == 1
    owned = sum(Shard(1, 2).owns(sd.labels) for sd in data["temp"].values())
    assert 0 < owned < 10
    assert reg.get_sample_value("rigwatch_detector_shard_series", {"detector": "temp"}) == owned


def test_the_log_detector_runs_on_shard_zero_only_the_context_one_on_every_shard():
    from detector.context.plugin import ContextPlugin
    from detector.health import SourceHealth

    raw = {"loki": {"url": "http://loki.test:3100"}, "inference": {},
           "detectors": [{"name": "temp", "query": "t", "model": "robust_z"}]}
    kinds = []
    for shard in ("0/2", "1/2"):
        cfg = parse_config({**raw, "shard": shard})
        plugins = serve_plugins(cfg, client=None, store=ModelStore(MemoryPersistence()), health=SourceHealth())
        kinds.append({type(p) for p in plugins})
    assert kinds == [{MetricPlugin, LogPlugin, ContextPlugin}, {MetricPlugin, ContextPlugin}]


# -- the model registry ---------------------------------------------------------------------------
@pytest.mark.integration
def test_shards_tag_their_mlflow_versions_and_keep_their_own_aliases(tmp_path):
    from mlflow.tracking import MlflowClient

    from detector.config import TrackingConfig
    from detector.mlflow_tracking import mlflow_tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = memory_data(8)
    shards = []
    for i in range(2):
        p = plugin(f"{i}/2", ModelStore(MemoryPersistence()), data)
        p.tracker = mlflow_tracker(TrackingConfig(uri), shard=p.shard)
        shards.append(p)

    def fit(p, now):  # one shard at a time: SQLite takes one writer
        assert p.fit(now) and p.tracker.flush(120)

    def aliases():
        mc = MlflowClient(tracking_uri=uri)
        tags = {v.version: (v.tags["rigwatch.shard"], v.tags["rigwatch.store_version"])
                for v in mc.search_model_versions("name = 'rigwatch-temp'")}
        return {a: tags[n] for a, n in mc.get_registered_model("rigwatch-temp").aliases.items()}

    fit(shards[0], T0)
    fit(shards[1], T0)  # its own v1: the alias of shard 0's v1 stays where it was
    assert aliases() == {"champion-shard-0": ("0/2", "1"), "champion-shard-1": ("1/2", "1")}
    fit(shards[0], T0 + 600)
    assert aliases() == {"champion-shard-0": ("0/2", "2"), "champion-shard-1": ("1/2", "1")}
    exp = MlflowClient(tracking_uri=uri).get_experiment_by_name("rigwatch")
    runs = MlflowClient(tracking_uri=uri).search_runs([exp.experiment_id])
    assert sorted(r.data.tags["rigwatch.shard"] for r in runs) == ["0/2", "0/2", "1/2"]
    for p in shards:
        p.tracker.close()


def test_models_cli_reads_the_shards_store(tmp_path, capsys):
    from detector.persistence import FilePersistence

    p = plugin("1/2", ModelStore(FilePersistence(Shard(1, 2).store_path(str(tmp_path)))), memory_data(6))
    assert p.fit(T0)
    assert main(["models", "list", "--json", "--store", str(tmp_path), "--shard", "1/2"]) == 0
    rows = json.loads(capsys.readouterr().out)["models"]
    assert [(r["detector"], r["version"]) for r in rows] == [("temp", 1)]
    assert main(["models", "list", "--store", str(tmp_path), "--shard", "1/x"]) == 2
    assert "--shard" in capsys.readouterr().err
