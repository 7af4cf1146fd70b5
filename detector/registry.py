"""Model registry: per detector, which stored version scores (`champion`), which one is under
evaluation (`challenger`), each version's state and where a rollback goes.

The record is one JSON blob beside the versions, `<detector>/registry.json`, written through the
store's atomic `write_blob` (temp file, fsync, rename): a kill -9 during a promotion leaves the old
record or the new one, never a mix, so the previous champion stays loadable. The store layout
(`<detector>/vNNNNNN.npz` + `.json`) is unchanged; a store from before the registry has no record
and its newest usable version is adopted as champion at start-up.

    propose(detector, version)   every new fit goes through here: the gate (detector/gate.py, given
                                 per call by the fit that has the data, or the registry's own) decides;
                                 without one the version is promoted ("no gate configured")
    promote(detector, version)   an operator's choice; the old champion becomes the rollback target
    rollback(detector)           back to the rollback target; the rolled-back version is rejected
    load(detector, restore)      start-up: the champion, else (unusable, or no record) the newest
                                 usable version that is not rejected, recorded as champion
"""
from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from detector.store import IncompatibleVersion, ModelStore, ModelVersion

log = logging.getLogger(__name__)

T = TypeVar("T")
RECORD = "registry.json"
RECORD_FORMAT = 1
STATES = ("champion", "challenger", "rejected", "retired")
_KEEP_DECISIONS = 50  # the record stays small: older decisions are in the logs
_KEEP_HISTORY = 20


class RegistryError(LookupError):
    """An unknown detector or version, or no rollback target; the message says which."""


class NoRollbackTarget(RegistryError):
    """The detector has no previous champion to roll back to."""


@dataclass(frozen=True)
class Decision:
    """What became of a proposed version: outcome "promoted", "challenger" (kept for evaluation) or
    "rejected", and why."""

    detector: str
    version: int
    outcome: str
    reason: str
    # what the gate measured (incidents and alarm seconds of challenger and champion on the held-out
    # window, labels missed or hit): recorded with the decision, logged to the fit's tracking run
    figures: dict[str, float] = field(default_factory=dict)


#: the gate's seam: (detector, challenger version, champion version or None) -> Decision
Gate = Callable[[str, int, "int | None"], Decision]


def record_name(detector: str) -> str:
    return f"{detector}/{RECORD}"


def _empty() -> dict[str, Any]:
    return {"format": RECORD_FORMAT, "champion": None, "challenger": None, "history": [],
            "versions": {}, "decisions": []}


def _check(doc: Any) -> dict[str, Any]:
    """The record when its fields are what the code reads; ValueError naming the field otherwise."""
    if not isinstance(doc, dict):
        raise ValueError(f"a JSON {type(doc).__name__}, not an object")
    if doc.get("format") != RECORD_FORMAT:
        raise ValueError(f"format {doc.get('format')!r} != {RECORD_FORMAT}")
    for key in ("champion", "challenger"):
        if doc.get(key) is not None and (isinstance(doc[key], bool) or not isinstance(doc[key], int)):
            raise ValueError(f"{key} is {doc[key]!r}, not a version number")
    history = doc.get("history")
    if not isinstance(history, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in history):
        raise ValueError(f"history is {history!r}, not a list of version numbers")
    versions = doc.get("versions")
    if not isinstance(versions, dict) or not all(
            k.isdigit() and isinstance(v, dict) and v.get("state") in STATES for k, v in versions.items()):
        raise ValueError(f"versions is not a mapping of version -> state (one of {', '.join(STATES)})")
    if not isinstance(doc.get("decisions"), list):
        raise ValueError("decisions is not a list")
    return doc


def _transition(method):
    """Run a read-modify-write of the record under the registry's lock."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return locked


class Registry:
    """Aliases and states of each detector's versions in `store`. `gate`: one gate for every
    proposal (else each fit passes its own to `propose`; none: promoted). Constructing it reads nothing."""

    def __init__(self, store: ModelStore, *, gate: Gate | None = None, clock: Callable[[], float] | None = None):
        self.store = store
        self.gate = gate
        self.clock = clock or store.clock
        # one transition at a time in this process (a fit's propose and an API promote race for
        # the record otherwise); a CLI in another process is last-writer-wins
        self._lock = threading.RLock()

    # -- the record -----------------------------------------------------------------------------
    def record(self, detector: str) -> dict[str, Any]:
        """The detector's record; an empty one when there is none or it cannot be used (logged)."""
        name = record_name(detector)
        try:
            raw = self.store.read_blob(name)
            if raw is None:
                return _empty()
            return _check(json.loads(raw))
        except (OSError, ValueError) as e:  # UnicodeDecodeError and JSON errors are ValueErrors
            log.warning("model registry record %s unusable (%s): treated as absent",
                        self.store.persistence.describe(name), e)
            return _empty()

    def _write(self, detector: str, rec: dict[str, Any]) -> None:
        # states of versions pruned from the store are dropped: the record stays small
        present = {str(v) for v in self.store.versions(detector)}
        rec["versions"] = {k: e for k, e in rec["versions"].items() if k in present}
        self.store.write_blob(record_name(detector), json.dumps(rec, indent=1).encode())

    def _state(self, rec: dict[str, Any], version: int, state: str, reason: str) -> None:
        rec["versions"][str(version)] = {"state": state, "reason": reason, "at": self.clock()}

    def _decide(self, rec: dict[str, Any], decision: Decision) -> Decision:
        rec["decisions"] = (rec["decisions"] + [{**asdict(decision), "at": self.clock()}])[-_KEEP_DECISIONS:]
        return decision

    def state_of(self, rec: dict[str, Any], version: int) -> str | None:
        entry = rec["versions"].get(str(version))
        return entry["state"] if entry else None

    def detectors(self) -> list[str]:
        return [d for d in self.store.detectors() if self.store.versions(d)]

    def _known(self, detector: str, version: int | None = None) -> list[int]:
        versions = self.store.versions(detector)
        if not versions:
            raise RegistryError(f"unknown detector {detector!r}: no stored versions in "
                                f"{self.store.persistence.describe(detector)}")
        if version is not None and version not in versions:
            raise RegistryError(f"unknown version {version} of {detector!r} (stored: "
                                f"{', '.join(map(str, versions))})")
        return versions

    def champion(self, detector: str, rec: dict[str, Any] | None = None, *, besides: int | None = None) -> int | None:
        """The recorded champion; without a record (a store from before the registry), the newest
        version whose metadata passes the store's checks and that is not rejected (nor `besides`:
        the version being proposed, already saved, is no champion to compare it with)."""
        rec = rec if rec is not None else self.record(detector)
        if rec["champion"] is not None:
            return rec["champion"]
        for v in reversed(self.store.versions(detector)):
            if self.state_of(rec, v) == "rejected" or v == besides:
                continue
            try:
                self.store.metadata(detector, v)
                return v
            except IncompatibleVersion:
                continue
        return None

    def rollback_target(self, detector: str, rec: dict[str, Any] | None = None) -> int | None:
        """The previous champion still stored and not rejected; None when there is none."""
        rec = rec if rec is not None else self.record(detector)
        present = set(self.store.versions(detector))
        for v in reversed(rec["history"]):
            if v in present and v != rec["champion"] and self.state_of(rec, v) != "rejected":
                return v
        return None

    def pinned(self, detector: str) -> set[int]:
        """Versions pruning must keep: the champion, the rollback target and the challenger."""
        rec = self.record(detector)
        return {v for v in (self.champion(detector, rec), self.rollback_target(detector, rec), rec["challenger"])
                if v is not None}

    # -- transitions ----------------------------------------------------------------------------
    def _set_champion(self, detector: str, rec: dict[str, Any], version: int, reason: str) -> None:
        old = self.champion(detector, rec)
        if old is not None and old != version:
            rec["history"] = [v for v in rec["history"] if v != old][-(_KEEP_HISTORY - 1):] + [old]
            self._state(rec, old, "retired", f"replaced by v{version}")
        rec["history"] = [v for v in rec["history"] if v != version]
        rec["champion"] = version
        if rec["challenger"] == version:
            rec["challenger"] = None
        self._state(rec, version, "champion", reason)

    @_transition
    def propose(self, detector: str, version: int, gate: Gate | None = None) -> Decision:
        """A new fit's version: the registry's own gate (one given to the constructor), else `gate`
        (the fit's, detector/gate.py), decides (none: promoted), the decision is recorded, and the
        versions no alias needs are pruned (keeping `store.keep`). The gate runs under the lock: the
        champion it compares with is the one replaced."""
        rec = self.record(detector)
        champion = self.champion(detector, rec, besides=version)
        gate = self.gate if self.gate is not None else gate
        if gate is None:
            decision = Decision(detector, version, "promoted", "no gate configured")
        else:  # the seam where the gate replays challenger and champion and decides
            decision = gate(detector, version, champion)
        if decision.outcome == "promoted":
            self._set_champion(detector, rec, version, decision.reason)
            rec["challenger"] = None  # an older challenger (rejected: it stays so) is superseded
        else:
            rec["challenger"] = version
            self._state(rec, version, "rejected" if decision.outcome == "rejected" else "challenger",
                        decision.reason)
        self._decide(rec, decision)
        self._write(detector, rec)
        self.store.prune(detector, protect=self.pinned(detector))
        return decision

    @_transition
    def promote(self, detector: str, version: int, reason: str = "promoted by operator") -> Decision:
        """Make a stored version champion. RegistryError: unknown detector/version; ValueError: the
        version does not load (its file named)."""
        self._known(detector, version)
        try:
            self.store.load(detector, version)
        except IncompatibleVersion as e:
            raise ValueError(f"v{version} of {detector!r} is not loadable: {e}") from None
        rec = self.record(detector)
        self._set_champion(detector, rec, version, reason)
        decision = self._decide(rec, Decision(detector, version, "promoted", reason))
        self._write(detector, rec)
        return decision

    @_transition
    def rollback(self, detector: str) -> Decision:
        """Back to the rollback target; the version rolled back from is rejected (a restart never
        revives it). RegistryError when the detector is unknown or there is no target."""
        self._known(detector)
        rec = self.record(detector)
        target = self.rollback_target(detector, rec)
        if target is None:
            raise NoRollbackTarget(f"{detector!r} has no rollback target (no previous champion stored)")
        current = self.champion(detector, rec)
        if current is not None:
            self._state(rec, current, "rejected", f"rolled back to v{target}")
        rec["history"] = rec["history"][:rec["history"].index(target)]
        rec["champion"] = target
        self._state(rec, target, "champion", f"rollback from v{current}")
        decision = self._decide(rec, Decision(detector, target, "rolled back", f"from v{current}"))
        self._write(detector, rec)
        return decision

    # -- start-up -------------------------------------------------------------------------------
    @_transition
    def load(self, detector: str, restore: Callable[[ModelVersion], T]) -> tuple[ModelVersion, T] | None:
        """The champion with what `restore` made of it. When it is unusable (warning naming its
        file) or there is no record, the newest usable version that is not rejected, recorded as
        champion; None when nothing is usable (the caller fits)."""
        rec = self.record(detector)
        champ = rec["champion"]
        if champ is not None:
            try:
                mv = self.store.load(detector, champ)
                return mv, restore(mv)
            except IncompatibleVersion as e:
                why = str(e)
            except Exception as e:  # restore refused the state: stored content is untrusted
                why = f"{self.store.persistence.describe(f'{detector}/v{champ:06d}.npz')}: not usable " \
                      f"({type(e).__name__}: {e})"
            log.warning("champion v%d of %s unusable, falling back: %s", champ, detector, why)
        skip = {int(v) for v, e in rec["versions"].items() if e["state"] == "rejected"} | \
            ({champ} if champ is not None else set())
        found = self.store.load_usable(detector, restore, skip=skip)
        if found is None:
            return None
        version = found[0].version
        if champ is None:
            reason = "adopted: newest usable version (no registry record)"
        else:  # the broken champion is no rollback target: it does not load
            reason = f"champion v{champ} unusable"
            self._state(rec, champ, "rejected", "unusable at start-up")
        rec["history"] = [v for v in rec["history"] if v != version]
        rec["champion"] = version
        self._state(rec, version, "champion", reason)
        self._decide(rec, Decision(detector, version, "promoted", reason))
        try:
            self._write(detector, rec)
        except OSError as e:  # scoring goes on; the next start-up decides the same way
            log.warning("could not record v%d as champion of %s: %s", version, detector, e)
        return found

    # -- what the CLI and the API show ---------------------------------------------------------
    def rows(self, detector: str) -> list[dict[str, Any]]:
        """One row per stored version, newest first: aliases, state, created, fingerprint."""
        rec = self.record(detector)
        champ, target = self.champion(detector, rec), self.rollback_target(detector, rec)
        out = []
        for v in reversed(self.store.versions(detector)):
            try:
                meta = self.store.metadata(detector, v)
                problem = None
            except IncompatibleVersion as e:
                meta, problem = {}, str(e)
            aliases = [a for a, w in (("champion", champ), ("challenger", rec["challenger"]),
                                      ("rollback", target)) if w == v]
            entry = rec["versions"].get(str(v), {})
            state = entry.get("state") or ("champion" if v == champ else None)
            out.append({"detector": detector, "version": v, "aliases": aliases, "state": state,
                        "reason": entry.get("reason"), "created": meta.get("saved_at"),
                        "fingerprint": meta.get("data_fingerprint"), "unusable": problem})
        return out
