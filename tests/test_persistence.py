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
    (tmp_path / "x" / ".blob.k3j2ab_9.tmp").write_bytes(b"ne")  # what a power cut mid-write leaves
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


def test_temp_files_of_writes_cut_short_are_removed_and_nothing_else(tmp_path):
    persistence = FilePersistence(tmp_path / "store")
    persistence.save_state("d/v000001.json", b"{}")
    orphans = ["d/.v000002.npz.k3j2ab_9.tmp", "d/.v000002.json.crash000.tmp", "logs/sub/.cursor.json.x1x2x3x4.tmp"]
    kept = ["d/.hidden.tmp", "d/notes.tmp", "d/.v000002.npz.tmp", "d/.v000002.npz.K3J2AB_9.tmp",
            "d/.v000002.npz.k3j2.tmp", "d/v000001.json.abcdefgh.tmp", "d/v000001.json"]
    for name in orphans + kept[:-1]:
        (tmp_path / "store" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "store" / name).write_bytes(b"partial")
    (tmp_path / "store" / "d" / ".dir.abc.tmp").mkdir()  # a folder named like a temp file is no temp file
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / ".x.abcdefgh.tmp").write_bytes(b"not the store's")
    (tmp_path / "store" / "link").symlink_to(outside)  # removal never follows a link out of the store
    (tmp_path / "store" / "d" / ".linked.abcdefgh.tmp").symlink_to(outside / ".x.abcdefgh.tmp")

    assert persistence.remove_temp_files() == sorted(orphans)
    for name in orphans:
        assert not (tmp_path / "store" / name).exists()
    for name in kept:
        assert (tmp_path / "store" / name).exists(), name
    assert (tmp_path / "store" / "d" / ".dir.abc.tmp").is_dir() and (outside / ".x.abcdefgh.tmp").exists()
    assert persistence.remove_temp_files() == []


def test_temp_file_removal_on_a_store_not_created_yet_or_in_memory(tmp_path):
    assert FilePersistence(tmp_path / "never-written").remove_temp_files() == []
    assert MemoryPersistence().remove_temp_files() == []


def test_a_temp_file_save_state_leaves_matches_the_pattern_removed(tmp_path, monkeypatch):
    """The pattern is the one save_state's own temp files have: one left by a failed rename is removed."""
    persistence = FilePersistence(tmp_path)

    def rename_fails(src, dst):
        raise KeyboardInterrupt("killed between write and rename")

    monkeypatch.setattr(os, "replace", rename_fails)
    monkeypatch.setattr(os, "unlink", lambda path: None)  # and killed before the cleanup
    with pytest.raises(KeyboardInterrupt):
        persistence.save_state("x/blob", b"new")
    monkeypatch.undo()
    (left,) = [p.name for p in (tmp_path / "x").iterdir()]
    assert persistence.list_names("x") == []
    assert persistence.remove_temp_files() == [f"x/{left}"] and not any((tmp_path / "x").iterdir())
