"""Where the detector's state lives: named blobs behind one small interface, as Drain3 does.

`Persistence` is the only side effect the model store and the template miner have, so both can be
tested in memory and a crash mid-write can be simulated. Names are `/`-separated paths relative to
the persistence's root (`logs/v000003.npz`, `templates.json`); a folder is a name prefix ending
before a `/`.
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

log = logging.getLogger(__name__)

# What FilePersistence.save_state's mkstemp names a write in progress: `.<target>.<8 random>.tmp`
# (tempfile's 8 characters of [a-z0-9_]; a test holds save_state to it). Left behind only by a
# process killed mid-write; the pattern is kept this narrow so nothing else is ever removed.
_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


def is_temp_name(file_name: str) -> bool:
    """True for the temp file of a write in progress (or cut short), never for a blob."""
    return bool(_TEMP_RE.match(file_name))


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

    def describe(self, name: str) -> str:
        """Where the blob `name` lives, for a log line an operator can act on."""
        return name

    def remove_temp_files(self) -> list[str]:
        """Remove what writes cut short left behind; the names removed. Only for a sole writer:
        called while another process writes, it would remove that write's temp file."""
        return []


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
        # temp files of a write in progress or cut short are no blobs
        return sorted(p.relative_to(root).as_posix() for p in folder.rglob("*")
                      if p.is_file() and not is_temp_name(p.name))

    def describe(self, name: str) -> str:
        return str(self.root / name)

    def remove_temp_files(self) -> list[str]:
        if not self.root.is_dir():
            return []
        removed = []
        # os.walk does not follow symlinks: only files inside the store itself are candidates
        for folder, _dirs, files in os.walk(self.root):
            for file_name in files:
                path = Path(folder) / file_name
                if not is_temp_name(file_name) or path.is_symlink() or not path.is_file():
                    continue
                try:
                    path.unlink()
                except OSError as e:  # a temp file left behind costs disk, not correctness
                    if not isinstance(e, FileNotFoundError):
                        log.warning("could not remove the orphaned temp file %s: %s", path, e)
                    continue
                removed.append(path.relative_to(self.root).as_posix())
        return sorted(removed)


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
