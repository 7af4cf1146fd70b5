"""Sharding: several detector replicas splitting the metric series between them (`serve --shard I/N`,
the config key `shard: "I/N"`).

    Shard(index, count)  this replica's part; Shard(0, 1) (the default) owns everything and changes
                         nothing: no filter, the store at its root, no shard tags or alias names
    Shard.owns(labels)   whether this replica scores the series with these labels
    Shard.store_path()   its model store: `<store>/shard-<I>` when count > 1
    ShardedSource        a SeriesSource cut to the owned series: the one place the metric side filters,
                         so fit, score, drift, gate and backtest all see the same set

Ownership is a pure function of the series' labels and N, the same in every process on every host:
the key is hashed with blake2b (never Python's hash(), which is salted per process), and the 64-bit
digest is placed with jump consistent hashing (Lamping & Veach 2014), not `digest % N`. Jump hash
moves only the series that must move when N changes: from N to N+1 exactly the ~1/(N+1) that go to
the new shard, none between the old shards (with `% N` about N/(N+1) of them would change hands and
be refitted). Every series is owned by exactly one shard because each replica computes the same
index in range(N) for it.

The key is the series' GPU when it has one (its `uuid`, with its fleet `box`), else its whole identity (scores.series_id):
one GPU's series of every detector — temperature, power, fans, its Xid counter — land on one shard,
so the incidents of one GPU fault are seen and reported by one replica. The detector's name is never
part of the key for the same reason. A box with few GPUs and many per-GPU series is therefore split
by GPU, not by series: the balance is as fine as the number of GPUs.

The log side is not split: it runs on shard 0 only (plugins.py). The log detector mines templates
over all streams together and reports one incident per device fault; cut by stream, two shards could
each report half of one fault. A box's log volume is small next to its metric series, so one replica
carries it. The context detector runs on every shard and judges the busy GPUs its shard owns (by the
same key), since each shard's incidents need its restarts, model changes and annotations.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from detector.config_values import ConfigError, short
from detector.scores import series_id

# more replicas than this is a typo (a series count pasted as N); each shard is a process with its
# own store, so thousands of them are no home lab or small rack
MAX_SHARDS = 1024
_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_MASK64 = (1 << 64) - 1


def jump_hash(key: int, buckets: int) -> int:
    """Jump consistent hash (Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm"):
    a 64-bit key -> a bucket in range(buckets); growing `buckets` by one moves only the keys that go
    to the new bucket. Integer arithmetic mod 2^64 and IEEE doubles: the same answer everywhere."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & _MASK64
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def shard_key(labels: Mapping[str, str]) -> str:
    """What ownership hashes: the GPU's uuid when the series has one (a GPU's series stay together
    across detectors), with its fleet box when it has one (boxes cloned from one image, or simulated
    ones, can repeat a uuid: the box keeps them apart and spread), else the series' canonical
    identity (sorted labels, scores.series_id)."""
    uuid = labels.get("uuid")
    if not uuid:
        return series_id(dict(labels))
    box = labels.get("box")
    return f"box={box},uuid={uuid}" if box else f"uuid={uuid}"


def shard_of(labels: Mapping[str, str], count: int) -> int:
    digest = hashlib.blake2b(shard_key(labels).encode(), digest_size=8).digest()
    return jump_hash(int.from_bytes(digest, "big"), count)


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    def __post_init__(self):
        if not 1 <= self.count <= MAX_SHARDS or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= I < N <= {MAX_SHARDS}")

    @property
    def sharded(self) -> bool:
        return self.count > 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, labels: Mapping[str, str]) -> bool:
        return not self.sharded or shard_of(labels, self.count) == self.index

    def store_path(self, root: str) -> str:
        """The shard's own model store. The index alone names it, not N: a replica restarted with
        another N keeps the models of the series it still owns. Unsharded: the root, as always."""
        return os.path.join(root, f"shard-{self.index}") if self.sharded else root

    def tracking_tags(self) -> dict[str, str]:
        """Tags of this shard's runs and registered versions in the tracking server (none unsharded):
        `rigwatch.shard` to read ("1/3"), `rigwatch.shard_index` to match a store version with (the
        store directory, and so its version numbers, belong to the index whatever N is)."""
        return {"rigwatch.shard": str(self), "rigwatch.shard_index": str(self.index)} if self.sharded else {}

    def info_family(self) -> Metric:
        fam = GaugeMetricFamily("rigwatch_detector_shard_info", "1, labelled with this replica's shard and the "
                                "number of shards (serve --shard I/N; 0 of 1 when unsharded)",
                                labels=["shard", "shards"])
        fam.add_metric([str(self.index), str(self.count)], 1)
        return fam


def parse_shard(value: Any, key: str = "shard") -> Shard:
    """`"I/N"` (the config key and the --shard flag share the grammar) -> Shard; ConfigError naming
    `key` otherwise."""
    m = _SHARD_RE.match(value) if isinstance(value, str) else None
    if m is None:
        raise ConfigError(key, f'expected "I/N", this replica\'s index I of N shards, e.g. "0/2" (got {short(value)})')
    index, count = int(m.group(1)), int(m.group(2))
    if not 1 <= count <= MAX_SHARDS:
        raise ConfigError(key, f"the number of shards must be >= 1 and <= {MAX_SHARDS} (got {short(value)})")
    if index >= count:
        raise ConfigError(key, f"the index counts from 0: must be < {count} (got {short(value)})")
    return Shard(index, count)


class ShardedSource:
    """A SeriesSource (detector.fetch) answering only the series `shard` owns. A joined series
    (features, a heartbeat) is one series here: its target's labels decide."""

    def __init__(self, inner, shard: Shard):
        self.inner = inner
        self.shard = shard

    def fetch(self, det, start: float, end: float, step: float) -> dict:
        return {sid: sd for sid, sd in self.inner.fetch(det, start, end, step).items() if self.shard.owns(sd.labels)}

    def provenance(self) -> dict[str, Any]:
        return {**self.inner.provenance(), "shard": str(self.shard)}
