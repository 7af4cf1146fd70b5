"""Model store: versioned artifacts with JSON metadata, atomic writes, last good version on load.

Layout under the store root, one directory per detector:
    <detector>/v000007.npz    every series' model state (numpy arrays + a JSON document; no pickle)
    <detector>/v000007.json   metadata, written last: its presence commits the version
A version is "good" when its metadata is a JSON object naming this store format, the same model
state version and its own artifact (never a path elsewhere), and the artifact's sha256 matches; it is
"usable" when the caller's restore also accepts its state. Loading walks versions newest first and
returns the first usable one, so a crash mid-save, a truncated or garbled file or a state the code
cannot use falls back to the previous version (each one skipped is logged with its file): store
content never stops a start-up. The first touch of a store removes the temp files of saves cut short.
Which version scores is the model registry's record (`detector.registry`): it loads through
`load_usable(skip=...)` and prunes through `prune(protect=...)`, keeping its champion and rollback target.

Side state that is no versioned model (the log side's scoring cursor and templates) sits beside the
versions as plain blobs: `read_blob`/`write_blob`, or `BlobPersistence` for a component that takes a
Persistence. Every side effect goes through one `detector.persistence.Persistence` (files, or memory
in tests), so a crash can be simulated.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import platform
import re
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from detector.persistence import Persistence

log = logging.getLogger(__name__)

STORE_FORMAT = 1
T = TypeVar("T")
_VERSION_RE = re.compile(r"^v(\d{6})\.json$")
_VERSION_FILE_RE = re.compile(r"^v\d{6}\.(json|npz)$")


def _artifact_name(version: int) -> str:
    return f"v{version:06d}.npz"


def _artifact_path(detector: str, version: int) -> str:
    return f"{detector}/{_artifact_name(version)}"


def _metadata_path(detector: str, version: int) -> str:
    return f"{detector}/v{version:06d}.json"


def _is_version_file(name: str) -> bool:
    return bool(_VERSION_FILE_RE.match(name.rsplit("/", 1)[-1]))


def _side_name(name: str) -> str:
    """`name` when it may hold side state; a model version's file name is refused."""
    if _is_version_file(name):
        raise ValueError(f"{name!r} is a model version's name, not side state")
    return name


# -- checks for a restore: a stored value is used only once it is what the code expects ----------

_LAST_TIME = 2.0 ** 35  # the year 3058: a later "time" in a stored state is garbage, not a time


def stored_number(value: Any, where: str, *, optional: bool = False, time: bool = False) -> float | None:
    """`value` as a number (a time: a Unix time the formatters can print), or None when `optional`;
    ValueError naming `where` otherwise (a bool, a string, NaN, an array are no numbers)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or np.isnan(value) or \
            (time and not 0 <= value < _LAST_TIME):
        raise ValueError(f"{where} is {value!r}, not a {'time' if time else 'number'}")
    return float(value)


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


def sha256_arrays(*arrays: np.ndarray) -> str:
    """sha256 (hex) over the arrays' raw bytes, each preceded by its dtype and shape (so [1, 2] + [3]
    and [1] + [2, 3] differ). NaN is hashed as one canonical NaN: a gap is a gap whether it came
    from 0/0 (x86's NaN has its sign bit set) or a parsed "NaN", or went through Parquet as a null."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        if a.dtype.kind == "f":
            a = np.where(np.isnan(a), np.nan, a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


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
    """A stored version that cannot be used; the message names the file that makes it so."""


class ModelStore:
    """Facade over a Persistence: save(detector, state, metadata) -> version; load_usable(detector,
    restore) -> the newest version `restore` accepts; load_latest(detector) -> the newest that loads.

    `state_version` is the engine's model-state format; a stored version written with another one
    (or another store format) is refused on load rather than half-read."""

    def __init__(self, persistence: Persistence, *, state_version: int = 1, keep: int = 5, clock=time.time,
                 sole_writer: bool = True):
        """`sole_writer` False (a CLI beside a running serve): temp files are never taken for orphans."""
        self.persistence = persistence
        self.sole_writer = sole_writer
        self.state_version = state_version
        self.keep = keep
        self.clock = clock
        self._opened = False
        self._open_lock = threading.Lock()

    def open(self) -> list[str]:
        """Remove the temp files of saves cut short (a kill -9, a power cut); the names removed.
        The store has one writer process, so at this process's first touch of the store every temp
        file is an orphan. Runs once per ModelStore, before its first read or write."""
        with self._open_lock:
            if self._opened:
                return []
            self._opened = True
            removed = self.persistence.remove_temp_files() if self.sole_writer else []
        for name in removed:
            log.info("removed the orphaned temp file %s (a save cut short)", self.persistence.describe(name))
        return removed

    def versions(self, detector: str) -> list[int]:
        self.open()
        out = []
        for name in self.persistence.list_names(detector):
            # the regex is anchored: only the detector's own folder counts, not a sub-folder
            m = _VERSION_RE.match(name[len(detector) + 1:])
            if m:
                out.append(int(m.group(1)))
        return sorted(out)

    def save(self, detector: str, state: Any, metadata: dict[str, Any] | None = None, *,
             prune: bool = True) -> ModelVersion:
        """A new version; `prune` False leaves pruning to the caller (the registry, which knows
        which versions its aliases need)."""
        existing = self.versions(detector)
        version = (existing[-1] + 1) if existing else 1
        blob = pack_state(state)
        meta = dict(metadata or {})
        meta.update({
            "detector": detector, "version": version, "store_format": STORE_FORMAT,
            "state_version": self.state_version, "saved_at": self.clock(),
            "artifact": _artifact_name(version), "artifact_sha256": hashlib.sha256(blob).hexdigest(),
            "library_versions": meta.get("library_versions") or library_versions(),
        })
        # Artifact first, metadata last: the metadata file is the commit marker.
        self.persistence.save_state(_artifact_path(detector, version), blob)
        self.persistence.save_state(_metadata_path(detector, version),
                                    json.dumps(meta, indent=1, default=str).encode())
        if prune:
            self.prune(detector)
        return ModelVersion(detector, version, state, meta)

    def prune(self, detector: str, protect: Collection[int] = ()) -> None:
        """Delete all but the newest `keep` versions, never one in `protect`."""
        for v in self.versions(detector)[:-self.keep]:
            if v in protect:
                continue
            # metadata first: a prune cut short leaves an uncommitted artifact, never a version
            # whose metadata names a missing artifact
            for ext in ("json", "npz"):
                try:
                    self.persistence.delete(f"{detector}/v{v:06d}.{ext}")
                except OSError as e:  # an old version left behind costs disk, not correctness
                    log.warning("pruning %s v%d failed: %s", detector, v, e)

    def _unusable(self, name: str, why: str) -> IncompatibleVersion:
        return IncompatibleVersion(f"{self.persistence.describe(name)}: {why}")

    def _read(self, name: str) -> bytes | None:
        try:
            return self.persistence.load_state(name)
        except (OSError, ValueError) as e:  # a folder, an unreadable file, a symlink out of the store
            raise self._unusable(name, f"unreadable ({e})") from None

    def _metadata(self, detector: str, version: int) -> dict[str, Any]:
        """The version's metadata, checked field by field before anything is read on its word."""
        name = _metadata_path(detector, version)
        raw = self._read(name)
        if raw is None:
            raise self._unusable(name, "no metadata")
        try:
            meta = json.loads(raw)
        except ValueError as e:  # UnicodeDecodeError included
            raise self._unusable(name, f"unreadable metadata ({e})") from None
        if not isinstance(meta, dict):
            raise self._unusable(name, f"metadata is a JSON {type(meta).__name__}, not an object")
        if meta.get("store_format") != STORE_FORMAT:
            raise self._unusable(name, f"store format {meta.get('store_format')!r} != {STORE_FORMAT}")
        if meta.get("state_version") != self.state_version:
            raise self._unusable(name, f"model state version {meta.get('state_version')!r} != {self.state_version}")
        for key, expected in (("detector", detector), ("version", version)):
            if key in meta and meta[key] != expected:
                raise self._unusable(name, f"metadata names {key} {meta[key]!r}, not {expected!r}")
        # a version reads its own artifact only: a name elsewhere (absolute, `..`, another version's)
        # would make the metadata a pointer to any file
        if meta.get("artifact", _artifact_name(version)) != _artifact_name(version):
            raise self._unusable(name, f"artifact {meta['artifact']!r} is not this version's "
                                       f"{_artifact_name(version)}")
        if not isinstance(meta.get("artifact_sha256"), str):
            raise self._unusable(name, f"artifact_sha256 {meta.get('artifact_sha256')!r} is no checksum")
        return meta

    def metadata(self, detector: str, version: int) -> dict[str, Any]:
        """The version's checked metadata, or IncompatibleVersion naming the file (the registry's view)."""
        return self._metadata(detector, version)

    def load(self, detector: str, version: int) -> ModelVersion:
        """The version, or IncompatibleVersion naming the file that makes it unusable."""
        meta = self._metadata(detector, version)
        name = _artifact_path(detector, version)
        blob = self._read(name)
        if blob is None or hashlib.sha256(blob).hexdigest() != meta["artifact_sha256"]:
            raise self._unusable(name, "artifact missing or checksum mismatch")
        try:
            state = unpack_state(blob)
        except Exception as e:  # a corrupt npz raises many kinds of errors
            raise self._unusable(name, f"artifact unreadable ({type(e).__name__}: {e})") from None
        return ModelVersion(detector, version, state, meta)

    def load_usable(self, detector: str, restore: Callable[[ModelVersion], T],
                    skip: Collection[int] = ()) -> tuple[ModelVersion, T] | None:
        """The newest version that loads and that `restore` accepts, with what `restore` returned.
        Every version skipped is logged with the file it came from; None when none is usable (the
        caller refits). `restore` applies the state; any exception it raises marks the version
        unusable (stored content is untrusted: its errors are as varied as the code reading it), so
        `restore` must leave its object unchanged when it raises. Versions in `skip` are passed over."""
        try:
            versions = self.versions(detector)
        except (OSError, ValueError) as e:  # an unreadable folder, a link out of the store
            log.warning("skipping stored models of %s: %s unreadable (%s)", detector,
                        self.persistence.describe(detector), e)
            return None
        for v in reversed(versions):
            if v in skip:
                continue
            try:
                mv = self.load(detector, v)
            except IncompatibleVersion as e:
                log.warning("skipping stored model %s", e)
                continue
            try:
                return mv, restore(mv)
            except Exception as e:
                log.warning("skipping stored model %s (state in %s): not usable (%s: %s)",
                            self.persistence.describe(_metadata_path(detector, v)), _artifact_name(v),
                            type(e).__name__, e)
        if versions:
            log.warning("no stored version of %s is usable: will refit", detector)
        return None

    def load_latest(self, detector: str) -> ModelVersion | None:
        """The newest version that loads, skipping (and logging) broken or incompatible ones."""
        found = self.load_usable(detector, lambda mv: None)
        return found[0] if found else None

    def detectors(self) -> list[str]:
        """The store's detector folders (with or without versions)."""
        self.open()
        return sorted({n.split("/", 1)[0] for n in self.persistence.list_names("") if "/" in n})

    def list_metadata(self) -> list[dict[str, Any]]:
        """Each detector's newest metadata that passes the checks load() makes."""
        out = []
        for d in self.detectors():
            for v in reversed(self.versions(d)):
                try:
                    out.append(self._metadata(d, v))
                    break
                except IncompatibleVersion:
                    continue
        return out

    # -- side state: blobs beside the versions, not versioned themselves ------------------------
    def read_blob(self, name: str) -> bytes | None:
        """Side state saved under `name` (e.g. `logs/cursor.json`), None when there is none."""
        self.open()
        return self.persistence.load_state(_side_name(name))

    def write_blob(self, name: str, data: bytes) -> None:
        """Save side state atomically under `name`; names of model versions are refused."""
        self.open()
        self.persistence.save_state(_side_name(name), data)


class BlobPersistence(Persistence):
    """A ModelStore's side state as a Persistence, for a component that takes one (the template
    miner): names beside the versioned models, read and written through read_blob/write_blob, so
    such a component can never overwrite, delete or list a model version."""

    def __init__(self, store: ModelStore):
        self.store = store

    def save_state(self, name: str, data: bytes) -> None:
        self.store.write_blob(name, data)

    def load_state(self, name: str) -> bytes | None:
        return self.store.read_blob(name)

    def delete(self, name: str) -> None:
        self.store.persistence.delete(_side_name(name))

    def list_names(self, prefix: str) -> list[str]:
        return [n for n in self.store.persistence.list_names(prefix) if not _is_version_file(n)]
