"""Model store: versions, metadata, atomic writes, crash mid-save, incompatible versions."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from detector.store import FilePersistence, MemoryPersistence, ModelStore, pack_state, unpack_state


def test_pack_roundtrip_without_pickle():
    doc = {"a": np.arange(3.0), "b": [1, {"c": np.array([[1, 2]])}], "d": None, "e": np.float64(2.5)}
    back = unpack_state(pack_state(doc))
    assert back["a"].tolist() == [0, 1, 2] and back["b"][1]["c"].tolist() == [[1, 2]]
    assert back["d"] is None and back["e"] == 2.5


def test_versions_and_metadata(tmp_path):
    store = ModelStore(FilePersistence(tmp_path), clock=lambda: 1000.0)
    v1 = store.save("gpu_thermal", {"w": np.ones(2)}, {"training_window": {"start": 0, "end": 60}})
    v2 = store.save("gpu_thermal", {"w": np.zeros(2)})
    assert (v1.version, v2.version) == (1, 2)
    meta = json.loads((tmp_path / "gpu_thermal" / "v000002.json").read_text())
    assert meta["saved_at"] == 1000.0 and "numpy" in meta["library_versions"]
    loaded = store.load_latest("gpu_thermal")
    assert loaded.version == 2 and loaded.state["w"].tolist() == [0, 0]
    assert [m["version"] for m in store.list_metadata()] == [2]


class CrashingPersistence(FilePersistence):
    """Dies after writing `crash_after` bytes of the next blob to its temp file (a crash mid-save)."""

    crash_after: int | None = None

    def save_state(self, name, data):
        if self.crash_after is not None:
            path = self._path(name)
            tmp = path.with_name(f".{path.name}.crash.tmp")
            tmp.write_bytes(data[: self.crash_after])
            raise KeyboardInterrupt("power cut")
        super().save_state(name, data)


def test_crash_mid_save_leaves_last_good_version(tmp_path):
    p = CrashingPersistence(tmp_path)
    store = ModelStore(p)
    store.save("d", {"v": np.array([1.0])})
    p.crash_after = 100
    with pytest.raises(KeyboardInterrupt):
        store.save("d", {"v": np.array([2.0])})
    # a fresh process starting up loads version 1
    fresh = ModelStore(FilePersistence(tmp_path)).load_latest("d")
    assert fresh.version == 1 and fresh.state["v"].tolist() == [1.0]


def test_artifact_written_but_metadata_missing_or_corrupt_falls_back(tmp_path):
    store = ModelStore(FilePersistence(tmp_path))
    store.save("d", {"v": np.array([1.0])})
    store.save("d", {"v": np.array([2.0])})
    art = tmp_path / "d" / "v000002.npz"
    art.write_bytes(art.read_bytes()[:50])  # truncated artifact: checksum no longer matches
    assert store.load_latest("d").version == 1
    (tmp_path / "d" / "v000001.json").write_text("{not json")
    assert store.load_latest("d") is None


def test_atomic_write_never_leaves_partial_file(tmp_path, monkeypatch):
    p = FilePersistence(tmp_path)
    p.save_state("x/blob", b"old")

    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        p.save_state("x/blob", b"new")
    assert p.load_state("x/blob") == b"old"
    assert [f.name for f in (tmp_path / "x").iterdir()] == ["blob"]  # temp file cleaned up


def test_incompatible_state_version_is_refused():
    mem = MemoryPersistence()
    ModelStore(mem, state_version=1).save("d", {"v": 1})
    assert ModelStore(mem, state_version=2).load_latest("d") is None
    assert ModelStore(mem, state_version=1).load_latest("d").state == {"v": 1}


def test_names_cannot_escape_root(tmp_path):
    with pytest.raises(ValueError):
        FilePersistence(tmp_path).save_state("../evil", b"x")
