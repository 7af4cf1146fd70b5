"""Where the detector's state lives: named blobs behind one small interface, as Drain3 does.

`Persistence` is the only side effect the model store and the template miner have, so both can be
tested in memory and a crash mid-write can be simulated. Names are `/`-separated paths relative to
the persistence's root (`logs/v000003.npz`, `templates.json`); a folder is a name prefix ending
before a `/`.
"""
from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path


class Persistence(ABC):
    """Named blobs: written atomically, read back (None when absent), deleted, listed by folder."""

    @abstractmethod
    def save_state(self, name: str, data: bytes) -> None:
        """Write `data` under `name`; a reader sees the old blob or the new one, never a mix."""

    @abstractmethod
    def load_state(self, name: str) -> bytes | None:
        """The blob saved under `name`, or None when there is none."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove the blob under `name`; a name with no blob is no error."""

    @abstractmethod
    def list_names(self, prefix: str) -> list[str]:
        """Sorted names of every blob in folder `prefix` and below it ("" = all of them)."""


class FilePersistence(Persistence):
    """Files under a root directory. Each write goes to a temp file in the target's directory, is
    fsynced and then os.replace()d over the target, so a crash mid-write keeps the old file."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _path(self, name: str, *, folder: bool = False) -> Path:
        root = self.root.resolve()
        path = (root / name).resolve()
        # a name is relative to the root and stays under it (`../x`, `/etc/x` are refused)
        if root not in path.parents and not (folder and path == root):
            raise ValueError(f"state name escapes the store: {name!r}")
        return path

    def save_state(self, name: str, data: bytes) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def load_state(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass

    def list_names(self, prefix: str) -> list[str]:
        folder = self._path(prefix, folder=True)
        if not folder.is_dir():
            return []
        root = self.root.resolve()
        # temp files of a write cut short (`.name.XXXX.tmp`) are no blobs
        return sorted(p.relative_to(root).as_posix() for p in folder.rglob("*")
                      if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".tmp")))


class MemoryPersistence(Persistence):
    """Blobs in a dict (tests, and a service that need not survive a restart)."""

    def __init__(self):
        self.blobs: dict[str, bytes] = {}

    def save_state(self, name: str, data: bytes) -> None:
        self.blobs[name] = bytes(data)

    def load_state(self, name: str) -> bytes | None:
        return self.blobs.get(name)

    def delete(self, name: str) -> None:
        self.blobs.pop(name, None)

    def list_names(self, prefix: str) -> list[str]:
        return sorted(n for n in self.blobs if not prefix or n.startswith(prefix.rstrip("/") + "/"))
