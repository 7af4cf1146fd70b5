"""Persistence: the four-method ABC and its file and memory implementations, on literal blobs."""
from __future__ import annotations

import os

import pytest

from detector.persistence import FilePersistence, MemoryPersistence, Persistence


@pytest.fixture(params=["file", "memory"])
def persistence(request, tmp_path) -> Persistence:
    return FilePersistence(tmp_path) if request.param == "file" else MemoryPersistence()


def test_the_abc_is_four_abstract_methods():
    assert Persistence.__abstractmethods__ == {"save_state", "load_state", "delete", "list_names"}


def test_save_load_overwrite(persistence):
    assert persistence.load_state("a/x.json") is None
    persistence.save_state("a/x.json", b"one")
    persistence.save_state("a/x.json", b"two")
    assert persistence.load_state("a/x.json") == b"two"


def test_delete(persistence):
    persistence.save_state("a/x.json", b"x")
    persistence.save_state("a/y.json", b"y")
    persistence.delete("a/x.json")
    persistence.delete("a/never-saved.json")  # no error
    assert persistence.load_state("a/x.json") is None
    assert persistence.list_names("a") == ["a/y.json"]


def test_list_names_by_folder(persistence):
    for name in ("logs/v000001.json", "logs/sub/cursor.json", "d/v000001.npz", "top.json", "logsx/y"):
        persistence.save_state(name, b"-")
    assert persistence.list_names("logs") == ["logs/sub/cursor.json", "logs/v000001.json"]
    assert persistence.list_names("logs/") == ["logs/sub/cursor.json", "logs/v000001.json"]
    assert persistence.list_names("none") == []
    assert persistence.list_names("") == ["d/v000001.npz", "logs/sub/cursor.json", "logs/v000001.json",
                                          "logsx/y", "top.json"]


def test_a_failing_write_leaves_the_old_blob(tmp_path, monkeypatch):
    persistence = FilePersistence(tmp_path)
    persistence.save_state("x/blob", b"old")

    def disk_full(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="disk full"):
        persistence.save_state("x/blob", b"new")
    monkeypatch.undo()
    assert persistence.load_state("x/blob") == b"old"
    assert [f.name for f in (tmp_path / "x").iterdir()] == ["blob"]  # the temp file is gone


def test_a_crash_between_write_and_rename_lists_no_temp_file(tmp_path):
    persistence = FilePersistence(tmp_path)
    persistence.save_state("x/blob", b"old")
    (tmp_path / "x" / ".blob.k3j2.tmp").write_bytes(b"ne")  # what a power cut mid-write leaves
    assert persistence.list_names("x") == ["x/blob"] and persistence.load_state("x/blob") == b"old"


def test_names_cannot_escape_the_root(tmp_path):
    persistence = FilePersistence(tmp_path / "store")
    for name in ("../evil", "/etc/evil", "a/../../evil"):
        with pytest.raises(ValueError, match="escapes"):
            persistence.save_state(name, b"x")
        with pytest.raises(ValueError, match="escapes"):
            persistence.delete(name)
    with pytest.raises(ValueError, match="escapes"):
        persistence.list_names("..")
    assert not (tmp_path / "evil").exists()
