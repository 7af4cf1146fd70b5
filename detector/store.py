"""Model store: versioned artifacts with JSON metadata, atomic writes, last good version on load.

Layout under the store root, one directory per detector:
    <detector>/v000007.npz    every series' model state (numpy arrays + a JSON document; no pickle)
    <detector>/v000007.json   metadata, written last: its presence commits the version
A version is "good" when its metadata parses, names this store format and the same model
state version, and the artifact's sha256 matches. Loading walks versions newest first and returns
the first good one, so a crash mid-save (or a truncated file) falls back to the previous version.

Side effects live behind `Persistence` (save_state/load_state, as Drain3 does), so the store can be
tested in memory and a crash can be simulated.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import re
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

STORE_FORMAT = 1
_VERSION_RE = re.compile(r"^v(\d{6})\.json$")


class Persistence(ABC):
    """Two side effects: write a named blob atomically, read it back (None when absent)."""

    @abstractmethod
    def save_state(self, name: str, data: bytes) -> None: ...

    @abstractmethod
    def load_state(self, name: str) -> bytes | None: ...

    def list_names(self, prefix: str) -> list[str]:  # pragma: no cover - overridden
        return []


class FilePersistence(Persistence):
    """Files under a root; each write goes to a temp file in the same directory, is fsynced and
    then os.replace()d, so a reader sees either the old or the new file, never half of one."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _path(self, name: str) -> Path:
        p = (self.root / name).resolve()
        if self.root.resolve() not in p.parents:
            raise ValueError(f"state name escapes the store: {name!r}")
        return p

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

    def list_names(self, prefix: str) -> list[str]:
        d = self._path(prefix)
        if not d.is_dir():
            return []
        return sorted(f"{prefix}/{p.name}" for p in d.iterdir() if p.is_file())


class MemoryPersistence(Persistence):
    def __init__(self):
        self.blobs: dict[str, bytes] = {}

    def save_state(self, name: str, data: bytes) -> None:
        self.blobs[name] = bytes(data)

    def load_state(self, name: str) -> bytes | None:
        return self.blobs.get(name)

    def list_names(self, prefix: str) -> list[str]:
        return sorted(n for n in self.blobs if not prefix or n.startswith(prefix + "/"))


# -- state (de)serialisation without pickle --------------------------------------------------

def pack_state(doc: Any) -> bytes:
    """A JSON-able document that may hold numpy arrays -> npz bytes (arrays stored natively)."""
    arrays: dict[str, np.ndarray] = {}

    def walk(x):
        if isinstance(x, np.ndarray):
            k = f"a{len(arrays)}"
            arrays[k] = x
            return {"__ndarray__": k}
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, dict):
            return {str(k): walk(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [walk(v) for v in x]
        return x

    skeleton = json.dumps(walk(doc), allow_nan=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, __doc__=np.frombuffer(skeleton.encode(), dtype=np.uint8), **arrays)
    return buf.getvalue()


def unpack_state(data: bytes) -> Any:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        skeleton = json.loads(bytes(z["__doc__"]).decode())
        arrays = {k: z[k] for k in z.files if k != "__doc__"}

    def walk(x):
        if isinstance(x, dict):
            if set(x) == {"__ndarray__"}:
                return arrays[x["__ndarray__"]]
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    return walk(skeleton)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("numpy", "scipy", "statsmodels", "scikit-learn", "rigwatch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def fingerprint_arrays(*arrays: np.ndarray) -> str:
    """Data fingerprint of a training set (sha256 over the raw bytes, first 16 hex digits)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


@dataclass
class ModelVersion:
    detector: str
    version: int
    state: Any  # whatever the engine saved (per-series model states)
    metadata: dict[str, Any] = field(default_factory=dict)


class IncompatibleVersion(Exception):
    pass


class ModelStore:
    """Facade over a Persistence: save(detector, state, metadata) -> version; load_latest(detector).

    `state_version` is the engine's model-state format; a stored version written with another one
    (or another store format) is refused on load rather than half-read."""

    def __init__(self, persistence: Persistence, *, state_version: int = 1, keep: int = 5, clock=time.time):
        self.p = persistence
        self.state_version = state_version
        self.keep = keep
        self.clock = clock

    def versions(self, detector: str) -> list[int]:
        out = []
        for name in self.p.list_names(detector):
            m = _VERSION_RE.match(name.rsplit("/", 1)[-1])
            if m:
                out.append(int(m.group(1)))
        return sorted(out)

    def save(self, detector: str, state: Any, metadata: dict[str, Any] | None = None) -> ModelVersion:
        existing = self.versions(detector)
        version = (existing[-1] + 1) if existing else 1
        blob = pack_state(state)
        meta = dict(metadata or {})
        meta.update({
            "detector": detector, "version": version, "store_format": STORE_FORMAT,
            "state_version": self.state_version, "saved_at": self.clock(),
            "artifact": f"v{version:06d}.npz", "artifact_sha256": hashlib.sha256(blob).hexdigest(),
            "library_versions": meta.get("library_versions") or library_versions(),
        })
        # Artifact first, metadata last: the metadata file is the commit marker.
        self.p.save_state(f"{detector}/v{version:06d}.npz", blob)
        self.p.save_state(f"{detector}/v{version:06d}.json", json.dumps(meta, indent=1, default=str).encode())
        self._prune(detector)
        return ModelVersion(detector, version, state, meta)

    def _prune(self, detector: str) -> None:
        if not isinstance(self.p, FilePersistence):
            return
        for v in self.versions(detector)[:-self.keep]:
            for ext in ("json", "npz"):
                try:
                    os.unlink(self.p._path(f"{detector}/v{v:06d}.{ext}"))
                except OSError:
                    pass

    def load(self, detector: str, version: int) -> ModelVersion:
        raw = self.p.load_state(f"{detector}/v{version:06d}.json")
        if raw is None:
            raise IncompatibleVersion(f"{detector} v{version}: no metadata")
        try:
            meta = json.loads(raw)
        except ValueError as e:
            raise IncompatibleVersion(f"{detector} v{version}: unreadable metadata ({e})") from None
        if meta.get("store_format") != STORE_FORMAT:
            raise IncompatibleVersion(f"{detector} v{version}: store format {meta.get('store_format')} "
                                      f"!= {STORE_FORMAT}")
        if meta.get("state_version") != self.state_version:
            raise IncompatibleVersion(f"{detector} v{version}: model state version "
                                      f"{meta.get('state_version')} != {self.state_version}")
        blob = self.p.load_state(f"{detector}/{meta.get('artifact', f'v{version:06d}.npz')}")
        if blob is None or hashlib.sha256(blob).hexdigest() != meta.get("artifact_sha256"):
            raise IncompatibleVersion(f"{detector} v{version}: artifact missing or checksum mismatch")
        try:
            state = unpack_state(blob)
        except Exception as e:  # a corrupt npz raises many kinds of errors
            raise IncompatibleVersion(f"{detector} v{version}: artifact unreadable ({e})") from None
        return ModelVersion(detector, version, state, meta)

    def load_latest(self, detector: str) -> ModelVersion | None:
        """The newest good version, skipping (and logging) broken or incompatible ones."""
        for v in reversed(self.versions(detector)):
            try:
                return self.load(detector, v)
            except IncompatibleVersion as e:
                log.warning("skipping stored model: %s", e)
        return None

    def list_metadata(self) -> list[dict[str, Any]]:
        out = []
        names = self.p.list_names("") if isinstance(self.p, MemoryPersistence) else None
        if isinstance(self.p, FilePersistence):
            root = self.p.root
            dets = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        else:
            dets = sorted({n.split("/", 1)[0] for n in (names or [])})
        for d in dets:
            vs = self.versions(d)
            if vs:
                raw = self.p.load_state(f"{d}/v{vs[-1]:06d}.json")
                try:
                    out.append(json.loads(raw)) if raw else None
                except ValueError:
                    pass
        return out
