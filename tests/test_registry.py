"""The local model registry: champion/challenger aliases, states, rollback target, pruning, start-up.

Every test runs on a real file store (FilePersistence in tmp_path); a state is a small document
that `restore` accepts unless it is marked bad, so the registry's choices are what is checked.
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from detector.persistence import FilePersistence
from detector.registry import Decision, NoRollbackTarget, Registry, RegistryError, record_name
from detector.store import ModelStore

D = "gpu_thermal"


def make_store(root, keep=5):
    return ModelStore(FilePersistence(root), keep=keep, clock=lambda: 1_790_000_000.0)


def fit(store, registry, *, bad=False):
    """What a fit does: save a version (pruning left to the registry), then propose it."""
    mv = store.save(D, {"bad": bad, "a": np.arange(3.0)}, {"data_fingerprint": "f00d"}, prune=False)
    return mv.version, registry.propose(D, mv.version)


def restore(mv):
    if mv.state["bad"]:
        raise ValueError("this state does not score")
    return mv.version


def rejecting_gate(detector, version, champion):
    return Decision(detector, version, "rejected", f"more alarms than v{champion}")


def test_without_a_gate_every_fit_is_promoted_and_the_decision_recorded(tmp_path):
    store = make_store(tmp_path)
    reg = Registry(store)
    assert fit(store, reg) == (1, Decision(D, 1, "promoted", "no gate configured"))
    fit(store, reg)
    rec = reg.record(D)
    assert rec["champion"] == 2 and rec["challenger"] is None
    assert reg.state_of(rec, 2) == "champion" and reg.state_of(rec, 1) == "retired"
    assert [d["reason"] for d in rec["decisions"]] == ["no gate configured"] * 2
    assert reg.rollback_target(D) == 1
    # the record is one JSON blob beside the versions; the version layout is unchanged
    assert sorted(p.name for p in (tmp_path / D).iterdir()) == \
        ["registry.json", "v000001.json", "v000001.npz", "v000002.json", "v000002.npz"]


def test_promote_makes_a_version_champion_and_the_previous_one_the_rollback_target(tmp_path):
    store = make_store(tmp_path)
    reg = Registry(store)
    for _ in range(3):
        fit(store, reg)
    reg.promote(D, 1)
    rec = reg.record(D)
    assert rec["champion"] == 1 and reg.rollback_target(D) == 3
    assert reg.state_of(rec, 3) == "retired" and rec["versions"]["1"]["reason"] == "promoted by operator"
    assert Registry(make_store(tmp_path)).load(D, restore)[1] == 1  # a restart scores with it


def test_promote_refuses_unknown_detectors_and_versions_and_broken_files(tmp_path):
    store = make_store(tmp_path)
    reg = Registry(store)
    fit(store, reg)
    with pytest.raises(RegistryError, match="unknown version 7 of 'gpu_thermal'"):
        reg.promote(D, 7)
    with pytest.raises(RegistryError, match="unknown detector 'nope'"):
        reg.promote("nope", 1)
    fit(store, reg)
    (tmp_path / D / "v000001.npz").write_bytes(b"garbled")
    with pytest.raises(ValueError, match="v000001.npz"):
        reg.promote(D, 1)
    assert reg.record(D)["champion"] == 2  # nothing changed


def test_rollback_goes_to_the_rollback_target_and_rejects_the_version_rolled_back(tmp_path):
    store = make_store(tmp_path)
    reg = Registry(store)
    for _ in range(3):
        fit(store, reg)
    assert reg.rollback(D).version == 2
    rec = reg.record(D)
    assert rec["champion"] == 2 and reg.state_of(rec, 3) == "rejected"
    assert rec["versions"]["3"]["reason"] == "rolled back to v2"
    assert reg.rollback_target(D) == 1  # a second rollback goes one champion further back
    assert reg.rollback(D).version == 1 and reg.rollback_target(D) is None
    with pytest.raises(NoRollbackTarget, match="no rollback target"):
        reg.rollback(D)
    with pytest.raises(RegistryError, match="unknown detector"):
        reg.rollback("nope")


def test_the_rollback_target_survives_a_new_registry_over_the_same_files(tmp_path):
    store = make_store(tmp_path)
    reg = Registry(store)
    fit(store, reg)
    fit(store, reg)
    reg.rollback(D)
    assert Registry(make_store(tmp_path)).load(D, restore)[1] == 1
    assert Registry(make_store(tmp_path)).record(D)["champion"] == 1


def test_a_rejected_version_is_never_revived_by_a_restart(tmp_path):
    store = make_store(tmp_path)
    fit(store, Registry(store))                      # v1 champion
    gated = Registry(store, gate=rejecting_gate)
    version, decision = fit(store, gated)            # v2 rejected by a gate
    assert (version, decision.outcome) == (2, "rejected")
    rec = gated.record(D)
    assert rec["champion"] == 1 and rec["challenger"] == 2 and gated.state_of(rec, 2) == "rejected"
    assert Registry(make_store(tmp_path)).load(D, restore)[1] == 1
    # even when the champion's file breaks, the fallback passes the rejected version over
    fit(store, Registry(store))                      # v3 champion, v1 its rollback target
    (tmp_path / D / "v000003.npz").write_bytes(b"garbled")
    assert Registry(make_store(tmp_path)).load(D, restore)[1] == 1
    # a rolled-back version neither
    store2 = make_store(tmp_path / "b")
    reg2 = Registry(store2)
    fit(store2, reg2)
    fit(store2, reg2)
    reg2.rollback(D)
    (tmp_path / "b" / D / "v000001.npz").write_bytes(b"garbled")
    assert Registry(make_store(tmp_path / "b")).load(D, restore) is None


def test_pruning_never_deletes_the_champion_or_the_rollback_target(tmp_path):
    store = make_store(tmp_path, keep=2)
    reg = Registry(store)
    for _ in range(3):
        fit(store, reg)
    assert store.versions(D) == [2, 3]               # v1 was neither champion nor rollback target
    reg.promote(D, 2)                                # champion 2, rollback target 3
    gated = Registry(store, gate=rejecting_gate)
    for _ in range(5):
        fit(store, gated)                            # v4..v8 rejected: pruned but the newest two
    assert store.versions(D) == [2, 3, 7, 8]
    assert reg.record(D)["champion"] == 2 and reg.rollback_target(D) == 3
    assert reg.rollback(D).version == 3              # the target is still loadable
    # without the registry's protection keep=2 would have kept only the newest two
    assert len(store.versions(D)) > store.keep


def test_a_store_without_a_registry_record_loads_its_newest_usable_version_as_champion(tmp_path, caplog):
    old = make_store(tmp_path)                       # the previous release: plain saves, no record
    old.save(D, {"bad": False})
    old.save(D, {"bad": False})
    old.save(D, {"bad": True})                       # v3: its state does not score
    assert not (tmp_path / record_name(D)).exists()
    reg = Registry(make_store(tmp_path))
    with caplog.at_level(logging.WARNING):
        mv, result = reg.load(D, restore)
    assert mv.version == 2 == result and "v000003.json" in caplog.text
    rec = reg.record(D)
    assert rec["champion"] == 2 and rec["versions"]["2"]["reason"].startswith("adopted")


def test_an_unusable_champion_falls_back_with_a_warning_naming_its_file(tmp_path, caplog):
    store = make_store(tmp_path)
    reg = Registry(store)
    fit(store, reg)
    fit(store, reg)
    fit(store, reg)
    reg.promote(D, 2)
    (tmp_path / D / "v000002.json").write_text("[]")
    with caplog.at_level(logging.WARNING):
        mv, _ = Registry(make_store(tmp_path)).load(D, restore)
    assert mv.version == 3  # the newest usable version that is not rejected
    assert str(tmp_path / D / "v000002.json") in caplog.text and "champion v2 of gpu_thermal unusable" in caplog.text
    rec = reg.record(D)
    assert rec["champion"] == 3 and reg.state_of(rec, 2) == "rejected"


def test_a_garbled_record_is_treated_as_absent_with_a_warning(tmp_path, caplog):
    store = make_store(tmp_path)
    reg = Registry(store)
    fit(store, reg)
    fit(store, reg)
    for garbage in (b"[1, 2", b"[]", json.dumps({"format": 1, "champion": "two", "challenger": None,
                                                  "history": [], "versions": {}, "decisions": []}).encode()):
        store.write_blob(record_name(D), garbage)
        with caplog.at_level(logging.WARNING):
            assert Registry(make_store(tmp_path)).load(D, restore)[1] == 2
        assert str(tmp_path / D / "registry.json") in caplog.text
        caplog.clear()


def test_rows_show_aliases_states_and_fingerprints(tmp_path):
    store = make_store(tmp_path)
    reg = Registry(store)
    fit(store, reg)
    fit(store, reg)
    rows = reg.rows(D)
    assert [(r["version"], r["aliases"], r["state"], r["fingerprint"]) for r in rows] == \
        [(2, ["champion"], "champion", "f00d"), (1, ["rollback"], "retired", "f00d")]
    assert reg.detectors() == [D]


def test_the_log_side_loads_its_champion_too(tmp_path):
    from detector.config import parse_config
    from detector.logs.detector import LogDetector, LogDetectorConfig
    from detector.logs.loki import LokiClient
    from detector.logs.plugin import STORE_NAME, LogPlugin

    store = make_store(tmp_path)
    reg = Registry(store)
    good = LogDetector(LogDetectorConfig.from_dict({})).fit([])
    for end in (1_790_000_000.0, 1_790_003_600.0):
        mv = store.save(STORE_NAME, good.get_state(), {"training_window": {"start": 0.0, "end": end}}, prune=False)
        reg.propose(STORE_NAME, mv.version)
    reg.rollback(STORE_NAME)
    logs = LogPlugin(parse_config({"loki": {"url": "http://127.0.0.1:9", "retries": 0}}),
                     loki=LokiClient("http://127.0.0.1:9", retries=0), store=make_store(tmp_path))
    assert logs.load() == 1 and logs.fitted_at == 1_790_000_000.0
