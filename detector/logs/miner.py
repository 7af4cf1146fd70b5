"""Drain-style online log template miner with generic masking and persisted state.

A message is masked (see :mod:`detector.logs.masking`), split on whitespace and looked up:

1. an exact-repeat cache (masked token tuple -> cluster) answers most lines of a busy log;
2. otherwise the clusters with the same token count and the same two leading tokens (a token
   with a digit or a variable counts as ``<*>``, as in Drain's tree) are compared by Drain's
   similarity (share of equal positions) and the best one at or above ``sim_threshold`` absorbs
   the message (differing positions become ``<*>``). Two *name-like* tokens with different
   letters (``Started``/``Paused``, ``user=root``/``user=guest``, ``HTTPS``/``SOCKS5``) never
   count as a variable position there: they tell events apart;
3. a message with no same-length match joins a template with the same constant words in the
   same order (its "skeleton"), so "sent 5 bytes (5 KB)" and "sent 5 bytes" stay one event;
4. otherwise a new cluster is born. A name-like slot becomes a variable once ``word_variety``
   templates differ only there (4 user names = a user-name field; states and outcomes such as
   started/stopped/failed never do), and clusters that differ only where one has a ``<*>`` are
   merged. A merged id stays resolvable through :meth:`TemplateMiner.resolve`.

Template ids are sequential strings ``T1``, ``T2``, ... in order of first appearance, so two runs
over the same input give the same ids, and they are persisted with the templates. The miner is
not thread-safe: one owner calls it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

from detector.logs.masking import PLACEHOLDER, Masker
from detector.persistence import Persistence

STATE_VERSION = 1


@dataclass(frozen=True)
class MinerConfig:
    """Knobs of the miner. The defaults are meant to be used as they are for any log source."""

    sim_threshold: float = 0.6
    #: leading tokens used to pick the candidate clusters (0 = compare with every same-length one)
    prefix_tokens: int = 2
    #: regexes masked before the built-in ones (site-specific ids, if a user wants them)
    extra_masks: tuple[str, ...] = ()
    #: built-in mask kinds to apply (None = all of them)
    mask_kinds: tuple[str, ...] | None = None
    #: how much a ``<*>`` in the template counts towards similarity (0 = Drain's original rule)
    wildcard_weight: float = 0.0
    #: a plain-word slot becomes a variable once this many templates differ only there (0 = off)
    word_variety: int = 4
    #: file a message under a template of another length with the same constant words in order
    skeleton_merge: bool = True
    #: merge same-length clusters that differ only where one of them has a variable
    merge_clusters: bool = True
    #: bound on the exact-repeat cache (masked messages); a pure speed-up, emptied when full
    cache_size: int = 100_000


@dataclass(frozen=True)
class MatchResult:
    template_id: str
    template: str
    is_new: bool
    cluster_size: int


@dataclass
class _Cluster:
    id: str
    tokens: list[str]
    size: int = 0
    key: tuple = field(default=(), repr=False)
    template: str = field(default="", repr=False)


class TemplateMiner:
    """Facade: ``add`` learns, ``match`` only looks up, ``save``/``load`` write and read the one blob
    ``state_name`` of ``persistence``."""

    def __init__(self, config: MinerConfig | None = None, persistence: Persistence | None = None,
                 state_name: str = "templates.json"):
        self.config = config or MinerConfig()
        self.persistence = persistence
        self.state_name = state_name
        self._masker = Masker(self.config.extra_masks, self.config.mask_kinds)
        self._clusters: dict[str, _Cluster] = {}
        self._groups: dict[tuple, list[_Cluster]] = {}
        self._by_length: dict[int, list[_Cluster]] = {}
        self._aliases: dict[str, str] = {}
        self._families: dict[tuple, list[_Cluster]] = {}
        self._skeletons: dict[tuple, str] = {}
        # masked message -> cluster, for exact repeats (the bulk of a busy log)
        self._cache: dict[str, _Cluster] = {}
        self._next_id = 1

    # -- public API -------------------------------------------------------------------------

    def tokenize(self, message: str) -> tuple[str, ...]:
        return tuple(self._masker.mask(message).split())

    def add(self, message: str) -> MatchResult:
        masked = self._masker.mask(message)
        cluster = self._cached(masked)
        if cluster is not None:
            cluster.size += 1
            return MatchResult(cluster.id, cluster.template, False, cluster.size)
        tokens = tuple(masked.split())
        cluster = self._best_match(tokens)
        is_new = False
        if cluster is None:
            cluster = self._new_cluster(list(tokens))
            # a new cluster may at once fold into an older template (a word slot turned
            # variable): then the message belongs to a known template and is not new
            is_new = cluster.id == f"T{self._next_id - 1}"
        else:
            cluster = self._absorb(cluster, tokens)
        cluster.size += 1
        self._remember(masked, cluster)
        return MatchResult(cluster.id, cluster.template, is_new, cluster.size)

    def match(self, message: str) -> MatchResult | None:
        """The template that covers the message, without learning; None when none does yet
        (for scoring unseen data: ``add`` would start a new template, or a word slot would only
        turn variable by learning this message)."""
        masked = self._masker.mask(message)
        cluster = self._cached(masked)
        if cluster is None:
            cluster = self._best_match(tuple(masked.split()))
        if cluster is None:
            return None
        return MatchResult(cluster.id, cluster.template, False, cluster.size)

    def templates(self) -> dict[str, str]:
        """Live templates by id, in order of first appearance."""
        return {c.id: c.template for c in self._ordered()}

    def sizes(self) -> dict[str, int]:
        """Messages filed under each live template (merged templates add up)."""
        return {c.id: c.size for c in self._ordered()}

    def _ordered(self) -> list[_Cluster]:
        return sorted(self._clusters.values(), key=lambda c: _id_num(c.id))

    def resolve(self, template_id: str) -> str:
        """The live id for an id handed out earlier (clusters merged since keep answering)."""
        seen = 0
        while template_id in self._aliases and seen <= len(self._aliases):
            template_id = self._aliases[template_id]
            seen += 1
        return template_id

    # -- persistence ------------------------------------------------------------------------

    def get_state(self) -> dict:
        """The templates, ids and aliases as a JSON-able document."""
        return {
            "version": STATE_VERSION,
            "config": asdict(self.config),
            "next_id": self._next_id,
            "clusters": [[c.id, c.tokens, c.size] for c in self._ordered()],
            "aliases": dict(self._aliases),
        }

    def set_state(self, state: dict) -> None:
        """Restore get_state(); a document of another version or shape is a ValueError."""
        try:
            version = state["version"]
            if version != STATE_VERSION:
                raise ValueError(f"unsupported miner state version {version!r}")
            clusters = [
                (str(cid), [str(t) for t in toks], int(size)) for cid, toks, size in state["clusters"]
            ]
            aliases = {str(k): str(v) for k, v in state["aliases"].items()}
            next_id = int(state["next_id"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"corrupt miner state: {exc}") from exc
        self._clusters, self._groups, self._by_length, self._cache = {}, {}, {}, {}
        self._families, self._skeletons = {}, {}
        for cid, toks, size in clusters:
            self._index(_Cluster(cid, toks, size))
        self._aliases = aliases
        self._next_id = next_id

    def to_bytes(self) -> bytes:
        return json.dumps(self.get_state(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def from_bytes(self, data: bytes) -> None:
        try:
            state = json.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"corrupt miner state: {exc}") from exc
        self.set_state(state)

    def save(self) -> None:
        if self.persistence is None:
            raise RuntimeError("TemplateMiner has no persistence to save to")
        self.persistence.save_state(self.state_name, self.to_bytes())

    def load(self) -> bool:
        """Restore the saved state; False (and an empty miner) when nothing was saved yet."""
        if self.persistence is None:
            raise RuntimeError("TemplateMiner has no persistence to load from")
        data = self.persistence.load_state(self.state_name)
        if data is None:
            return False
        self.from_bytes(data)
        return True

    # -- internals --------------------------------------------------------------------------

    def _group_key(self, tokens) -> tuple:
        # Like Drain's tree: a leading token with a digit or a variable is filed under <*>
        prefix = tuple(t if _is_word(t) else PLACEHOLDER for t in tokens[: self.config.prefix_tokens])
        return (len(tokens), *prefix)

    def _candidates(self, tokens) -> list[_Cluster]:
        key = self._group_key(tokens)
        found = list(self._groups.get(key, ()))
        # templates whose leading tokens became variables still cover this message
        words = [i for i, t in enumerate(key[1:]) if t != PLACEHOLDER]
        for mask in range(1, 1 << len(words)):
            wild = list(key)
            for bit, i in enumerate(words):
                if mask >> bit & 1:
                    wild[i + 1] = PLACEHOLDER
            found.extend(self._groups.get(tuple(wild), ()))
        return found

    def _best_match(self, tokens) -> _Cluster | None:
        n = len(tokens)
        if n == 0:
            return self._groups.get(self._group_key(tokens), [None])[0]
        best, best_score = None, (-1.0, -1)
        threshold = self.config.sim_threshold
        weight = self.config.wildcard_weight
        for cluster in self._candidates(tokens):
            same = wild = 0
            for t, m in zip(cluster.tokens, tokens, strict=True):
                if t == m:
                    same += 1
                elif t == PLACEHOLDER:
                    wild += 1
                elif _words_differ(t, m):
                    # two different plain words name two different events until the slot has
                    # shown enough distinct values to count as a variable (see _merge_family)
                    break
            else:
                sim = (same + weight * wild) / n
                # a template that covers every token (equal or <*>) always matches
                if (sim >= threshold or same + wild == n) and (sim, same) > best_score:
                    best, best_score = cluster, (sim, same)
        if best is None and self.config.skeleton_merge:
            best = self._clusters.get(self._skeletons.get(_skeleton(tokens), ""))
        return best

    def _new_cluster(self, tokens: list[str]) -> _Cluster:
        cluster = _Cluster(f"T{self._next_id}", tokens)
        self._next_id += 1
        self._index(cluster)
        if self.config.word_variety:
            cluster = self._merge_family(cluster)
        return cluster

    def _index(self, cluster: _Cluster) -> None:
        cluster.key = self._group_key(cluster.tokens)
        cluster.template = " ".join(cluster.tokens)
        self._clusters[cluster.id] = cluster
        self._groups.setdefault(cluster.key, []).append(cluster)
        self._by_length.setdefault(len(cluster.tokens), []).append(cluster)
        for family in self._family_keys(cluster.tokens):
            self._families.setdefault(family, []).append(cluster)
        skeleton = _skeleton(cluster.tokens)
        if len(skeleton) >= 2:
            self._skeletons.setdefault(skeleton, cluster.id)

    def _unindex(self, cluster: _Cluster) -> None:
        del self._clusters[cluster.id]
        self._groups[cluster.key].remove(cluster)
        if not self._groups[cluster.key]:
            del self._groups[cluster.key]
        self._by_length[len(cluster.tokens)].remove(cluster)
        for family in self._family_keys(cluster.tokens):
            members = self._families[family]
            members.remove(cluster)
            if not members:
                del self._families[family]

    def _family_keys(self, tokens) -> list[tuple]:
        """One key per name-like slot: the template with that slot blanked out."""
        if not self.config.word_variety:
            return []
        return [
            (i, *tokens[:i], PLACEHOLDER, *tokens[i + 1 :])
            for i, t in enumerate(tokens)
            if PLACEHOLDER not in t and _name_letters(t) is not None
        ]

    def _cached(self, masked: str) -> _Cluster | None:
        cluster = self._cache.get(masked)
        if cluster is not None and cluster.id not in self._clusters:
            cluster = self._clusters.get(self.resolve(cluster.id))
            self._cache[masked] = cluster
        return cluster

    def _remember(self, masked: str, cluster: _Cluster) -> None:
        if len(self._cache) >= self.config.cache_size:
            self._cache.clear()
        self._cache[masked] = cluster

    def _absorb(self, cluster: _Cluster, tokens) -> _Cluster:
        if len(tokens) != len(cluster.tokens):
            return cluster  # joined through its skeleton: the template keeps its own shape
        changed = False
        new = cluster.tokens
        for i, (t, m) in enumerate(zip(cluster.tokens, tokens, strict=True)):
            if t != m and t != PLACEHOLDER:
                if not changed:
                    new = list(cluster.tokens)
                    changed = True
                new[i] = PLACEHOLDER
        if not changed:
            return cluster
        self._unindex(cluster)
        cluster.tokens = new
        self._index(cluster)
        if self.config.merge_clusters:
            cluster = self._merge_around(cluster)
        return cluster

    def _fold(self, keep: _Cluster, gone: _Cluster, tokens: list[str]) -> _Cluster:
        self._unindex(gone)
        self._unindex(keep)
        keep.tokens = tokens
        keep.size += gone.size
        self._index(keep)
        self._aliases[gone.id] = keep.id
        return keep

    def _merge_family(self, cluster: _Cluster) -> _Cluster:
        """Turn a plain-word slot into a variable once enough templates differ only there."""
        for family in self._family_keys(cluster.tokens):
            members = self._families.get(family, ())
            if (
                len(members) >= self.config.word_variety
                and _constant_count(family[1:]) >= 3
                and not any(_is_outcome(m.tokens[family[0]]) for m in members)
            ):
                members = sorted(members, key=lambda c: _id_num(c.id))
                keep = members[0]
                for gone in members[1:]:
                    keep = self._fold(keep, gone, keep.tokens)
                self._unindex(keep)
                keep.tokens = list(family[1:])
                self._index(keep)
                return self._merge_around(keep) if self.config.merge_clusters else keep
        return cluster

    def _merge_around(self, cluster: _Cluster) -> _Cluster:
        """Fold same-length clusters that now differ from ``cluster`` only at variables."""
        for other in list(self._by_length.get(len(cluster.tokens), ())):
            if other is cluster or self._clusters.get(other.id) is not other:
                continue
            if all(
                a == b or a == PLACEHOLDER or b == PLACEHOLDER
                for a, b in zip(cluster.tokens, other.tokens, strict=True)
            ):
                keep, gone = (cluster, other) if _id_num(cluster.id) < _id_num(other.id) else (other, cluster)
                merged = [a if a == b else PLACEHOLDER for a, b in zip(keep.tokens, gone.tokens, strict=True)]
                cluster = self._fold(keep, gone, merged)
        return cluster


# a variable glued to a name ("blk_<*>", "rdd_<*>", "jA9J1UvC<*>"): an id with a counter
_ID_COUNTER = re.compile(r"[A-Za-z0-9_.-]" + re.escape(PLACEHOLDER))


# States and outcomes are what an event says, never a value in it: "VM Started", "VM Stopped",
# "unit entered failed state" stay apart however many of them a slot sees.
_OUTCOME_WORDS = frozenset(
    """
    start started starting stop stopped stopping pause paused pausing resume resumed resuming
    fail failed failing failure success succeeded successful ok error warning critical fatal
    ready running idle active inactive enabled disabled up down online offline healthy unhealthy
    open opened closed connected disconnected accepted rejected denied allowed blocked
    created deleted removed added killed exited crashed dead alive suspended aborted
    cancelled canceled complete completed finished done timeout true false yes no on off
    """.split()
)


def _is_outcome(token: str) -> bool:
    return _letters(token).lower() in _OUTCOME_WORDS


def _is_word(token: str) -> bool:
    """A token with no digit and no variable in it: more likely part of the event than a value."""
    return PLACEHOLDER not in token and not any(c.isdigit() for c in token)


def _letters(token: str) -> str:
    return "".join(c for c in token.replace(PLACEHOLDER, "") if c.isalpha())


def _name_letters(token: str) -> str | None:
    """The letters of a token that reads as a name (``root``, ``Started``, ``user=root``,
    ``a=<*>``, ``SOCKS5``, ``eth0``: at most two digits), or None for a value-like token (a bare
    ``<*>``, an id with a counter ``rdd_<*>``/``jA9J1UvC<*>``, a digit-rich ``KB3121255~31bf``)."""
    if token == PLACEHOLDER or _ID_COUNTER.search(token):
        return None
    if sum(c.isdigit() for c in token) > 2:
        return None
    return _letters(token) or None


def _words_differ(a: str, b: str) -> bool:
    """Two name-like tokens whose letters differ (``user=root``/``user=guest``,
    ``Started``/``Paused``, ``HTTPS``/``SOCKS5``, ``a=<*>``/``b=<*>``) stand for different events;
    ``eth0``/``eth1`` (same letters) or ids such as ``broadcast_<*>``/``rdd_<*>`` do not."""
    la = _name_letters(a)
    if la is None:
        return False
    lb = _name_letters(b)
    return lb is not None and la != lb


def _constant_count(tokens) -> int:
    return sum(1 for t in tokens if t != PLACEHOLDER and any(c.isalnum() for c in t.replace(PLACEHOLDER, "")))


def _skeleton(tokens) -> tuple[str, ...]:
    """The template's constant tokens in order (tokens that are only variables and punctuation
    dropped): messages that differ only by how many values they carry share it."""
    return tuple(t for t in tokens if any(c.isalnum() for c in t.replace(PLACEHOLDER, "")))


def _id_num(template_id: str) -> int:
    try:
        return int(template_id[1:])
    except ValueError:
        return 0
