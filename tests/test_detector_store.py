"""Model store: versions, metadata, crash mid-save, incompatible versions, pruning, side state."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from detector.persistence import FilePersistence, MemoryPersistence
from detector.store import BlobPersistence, ModelStore, pack_state, unpack_state


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
            tmp = path.with_name(f".{path.name}.crash000.tmp")
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


def test_incompatible_state_version_is_refused():
    mem = MemoryPersistence()
    ModelStore(mem, state_version=1).save("d", {"v": 1})
    assert ModelStore(mem, state_version=2).load_latest("d") is None
    assert ModelStore(mem, state_version=1).load_latest("d").state == {"v": 1}


def test_old_versions_are_pruned_through_the_persistence_in_memory_too():
    mem = MemoryPersistence()
    store = ModelStore(mem, keep=2)
    for k in range(4):
        store.save("d", {"v": k})
    assert store.versions("d") == [3, 4]
    assert mem.list_names("d") == ["d/v000003.json", "d/v000003.npz", "d/v000004.json", "d/v000004.npz"]


def test_list_metadata_names_each_detector_once_from_any_persistence(tmp_path):
    for persistence in (MemoryPersistence(), FilePersistence(tmp_path)):
        store = ModelStore(persistence)
        store.save("b", {"v": 1})
        store.save("a", {"v": 1})
        store.save("a", {"v": 2})
        store.write_blob("a/cursor.json", b"{}")
        store.write_blob("notes/readme.txt", b"no versions here")
        assert [(m["detector"], m["version"]) for m in store.list_metadata()] == [("a", 2), ("b", 1)]


def test_side_state_blobs_sit_beside_the_versions():
    store = ModelStore(MemoryPersistence())
    store.save("logs", {"v": 1})
    assert store.read_blob("logs/cursor.json") is None
    store.write_blob("logs/cursor.json", b'{"last_scored": 1}')
    assert store.read_blob("logs/cursor.json") == b'{"last_scored": 1}'
    assert store.versions("logs") == [1] and store.load_latest("logs").state == {"v": 1}
    with pytest.raises(ValueError, match="model version"):
        store.write_blob("logs/v000001.npz", b"clobber")


def test_blob_persistence_gives_a_component_the_side_state_only():
    store = ModelStore(MemoryPersistence())
    store.save("logs", {"v": 1})
    blobs = BlobPersistence(store)
    blobs.save_state("logs/templates.json", b"{}")
    assert store.read_blob("logs/templates.json") == b"{}"
    assert blobs.list_names("logs") == ["logs/templates.json"]
    with pytest.raises(ValueError, match="model version"):
        blobs.delete("logs/v000001.json")
    blobs.delete("logs/templates.json")
    assert blobs.load_state("logs/templates.json") is None and store.versions("logs") == [1]


def _two_versions(tmp_path) -> ModelStore:
    store = ModelStore(FilePersistence(tmp_path))
    store.save("d", {"v": np.array([1.0])})
    store.save("d", {"v": np.array([2.0])})
    return store


def test_restore_refusing_the_newest_state_falls_back_to_the_previous_with_the_file_named(tmp_path, caplog):
    store = _two_versions(tmp_path)

    def restore(mv):
        if mv.version == 2:
            raise KeyError("series")
        return mv.state["v"].tolist()

    with caplog.at_level(logging.WARNING, logger="detector.store"):
        mv, restored = store.load_usable("d", restore)
    assert (mv.version, restored) == (1, [1.0])
    assert str(tmp_path / "d" / "v000002.json") in caplog.text and "v000002.npz" in caplog.text
    assert "KeyError" in caplog.text
    assert store.load_usable("d", lambda mv: 1 / 0) is None  # nothing usable: the caller refits


@pytest.mark.parametrize("how", ["metadata is not UTF-8", "artifact links out of the store"])
def test_a_version_whose_files_cannot_be_read_is_skipped(tmp_path, caplog, how):
    store = _two_versions(tmp_path)
    if how == "metadata is not UTF-8":
        (tmp_path / "d" / "v000002.json").write_bytes(b"\xff\xfe{")
    else:
        outside = tmp_path.parent / f"{tmp_path.name}-outside.npz"
        art = tmp_path / "d" / "v000002.npz"
        outside.write_bytes(art.read_bytes())  # same bytes, checksum fine: still not read from outside
        art.unlink()
        art.symlink_to(outside)
    with caplog.at_level(logging.WARNING, logger="detector.store"):
        assert store.load_latest("d").version == 1
    assert "v000002" in caplog.text


def test_list_metadata_skips_metadata_that_is_no_object(tmp_path):
    store = _two_versions(tmp_path)
    (tmp_path / "d" / "v000002.json").write_text("null")
    store.save("e", {"v": 1})
    (tmp_path / "e" / "v000001.json").write_text("[]")
    assert [(m["detector"], m["version"]) for m in store.list_metadata()] == [("d", 1)]


def test_the_first_touch_of_the_store_removes_orphaned_temp_files_once(tmp_path, caplog):
    _two_versions(tmp_path)
    orphan = tmp_path / "d" / ".v000003.npz.q7w2e9r1.tmp"
    orphan.write_bytes(b"half a model")
    store = ModelStore(FilePersistence(tmp_path))  # a constructor touches nothing
    assert orphan.exists()
    with caplog.at_level(logging.INFO, logger="detector.store"):
        assert store.load_latest("d").version == 2
    assert not orphan.exists()
    assert f"removed the orphaned temp file {orphan}" in caplog.text
    assert store.open() == []  # once per store: later saves' temp files are this process's own


def test_a_detector_folder_linked_out_of_the_store_is_skipped_not_raised(tmp_path, caplog):
    outside = tmp_path / "elsewhere"
    ModelStore(FilePersistence(outside)).save("d", {"v": 1})
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "d").symlink_to(outside / "d")
    with caplog.at_level(logging.WARNING, logger="detector.store"):
        assert ModelStore(FilePersistence(tmp_path / "store")).load_usable("d", lambda mv: None) is None
    assert str(tmp_path / "store" / "d") in caplog.text
