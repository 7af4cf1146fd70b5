"""LogDetector: the facade that turns log entries into log anomalies on rigwatch's score convention.

    detector = LogDetector(config, persistence=FilePersistence(state_dir))  # templates in state_dir/templates.json
    detector.fit(training_entries)            # mine templates, learn frequencies, rates, mixes
    results = detector.score(new_entries, now)  # every call gets only entries it has not seen
    anomalies = [r for r in results if r.score > 1]
    state = detector.get_state(); LogDetector.from_state(state, persistence=...)  # survive restarts

Detectors (the `detector` label):
  log_pattern   known critical patterns (Xid, OOM kill, restart loops, brute force...)   patterns.py
  log_template  novel and rare templates, weighted by severity and trouble keywords       scoring.LineScorer
  log_rate      floods and silences per stream and per top template, and trouble lines   scoring.RateModel
                of one template repeating (a failure that repeats is the incident)       scoring.RepeatTracker
                (a flood alerts when it carries news - new templates or trouble - or when
                it is log spam: far beyond the stream's busiest training window)
  log_sequence  known templates in an order or combination training never showed       scoring.SequenceModel
                (per stream, in the recent window; never volume: that is log_rate's)
`score` returns, per detector and label set, the highest score of the call (so gauges can be
published for every stream, also below 1); lines a known pattern claims are not scored again as
templates, so one Xid line is one anomaly with a readable summary.
"""
from __future__ import annotations

import copy
import json
import re
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from detector import config_values as cv
from detector.config_values import ConfigError
from detector.logs.journal import LogEntry, read_log_file
from detector.logs.masking import MASK_PATTERNS
from detector.logs.miner import MinerConfig, TemplateMiner
from detector.logs.patterns import PatternConfig, PatternTracker
from detector.logs.scoring import (
    _KEYWORD_RE,
    LineScorer,
    RateModel,
    RepeatTracker,
    SequenceModel,
    trouble_keywords,
)
from detector.persistence import Persistence

# 3: the sequence model is order and combination of known templates (issue 12), not a forest over
# template counts; 2 held that forest as arrays (refused: the service refits); 1 was a JSON string
# with a pickled scikit-learn forest, never read again
STATE_VERSION = 3
INCIDENT_LABELS = ("container", "unit", "gpu", "xid", "pattern", "source_ip", "job", "identifier",
                   "template_id")


@dataclass
class LogDetectorConfig:
    window_s: float = 300.0          # rate and sequence window
    top_templates: int = 50          # templates with a rate baseline / a published rate (cardinality bound)
    examples: int = 3                # example lines kept per anomaly
    sequence: bool = True            # fit the sequence model (order and combination of known templates)
    rate_sigmas: float = 6.0
    rate_min_excess: float = 10.0
    silence_min: float = 20.0
    rate_peak_factor: float = 3.0    # a volume burst must exceed this many times the biggest training window
    # Log spam: a stream flooding with only its ordinary lines (known templates, no new trouble) is
    # load, not news, until it is this many times its busiest training window AND at least
    # `spam_min_lines` lines above its usual count per window (300 per 5 min: 1 line/s sustained) - a
    # container stuck printing one line in a loop, filling the disk and Loki's ingestion limits.
    spam_peak_factor: float = 10.0
    spam_min_lines: float = 300.0
    repeat_window_s: float = 900.0   # trouble lines of one template repeating in this window ...
    repeat_count: int = 5            # ... this many times (and 3x their training rate) are an incident
    boot_grace_s: float = 600.0      # after a boot, one-off novel lines are routine ...
    boot_damping: float = 0.1        # ... and template scores are multiplied by this
    catch_up_s: float = 21600.0      # after a restart, lines up to this old are read back and scored
    claim_s: float = 10.0            # kernel lines this close to an Xid naming its GPU join its anomaly
    miner: dict = field(default_factory=dict)      # MinerConfig fields
    patterns: dict = field(default_factory=dict)   # PatternConfig fields

    @classmethod
    def from_dict(cls, data: dict | None, where: str = "logs") -> LogDetectorConfig:
        """Validate the `logs:` mapping of detector.yml (at load time, by detector.config): an unknown
        key, a wrong type or an out-of-range number (config_values.LIMITS["logs.*"]) raises
        ConfigError naming `logs.<key>` (`logs.miner.<key>`, `logs.patterns.<key>`)."""
        data = dict(cv.mapping(data, where))
        known = {f.name for f in fields(cls)}
        cv.check_keys(data, known, where)
        for key, value in data.items():
            if key == "miner":
                data[key] = _check_section(value, f"{where}.miner", MinerConfig, _MINER_TYPES, "logs.miner")
            elif key == "patterns":
                data[key] = _check_section(value, f"{where}.patterns", PatternConfig, {}, "logs.patterns")
            elif key == "sequence":
                cv.boolean(value, f"{where}.{key}")
            else:
                data[key] = _check_number(value, f"{where}.{key}", f"logs.{key}")
        return cls(**data)


def _check_number(value, key: str, limit: str):
    lim = cv.LIMITS[limit]
    return cv.integer(value, key, lim) if lim.integer else cv.number(value, key, lim)


def _check_mask_kinds(value, key: str):
    if value is None:
        return None
    if not isinstance(value, list):
        raise ConfigError(key, f"expected null or a list of mask kinds (got {cv.short(value)})")
    for i, v in enumerate(value):
        if not isinstance(v, str) or v not in MASK_PATTERNS:
            raise ConfigError(f"{key}[{i}]", f"must be one of {', '.join(MASK_PATTERNS)} (got {cv.short(v)})")
    return tuple(value)


def _check_regexes(value, key: str):
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a list of regular expressions (got {cv.short(value)})")
    for i, pattern in enumerate(value):
        cv.string(pattern, f"{key}[{i}]")
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as e:
            raise ConfigError(f"{key}[{i}]", f"not a regular expression: {e}") from None
    return tuple(value)


# the miner's keys that are not numbers (those are ranged by LIMITS["logs.miner.*"])
_MINER_TYPES = {"extra_masks": _check_regexes, "mask_kinds": _check_mask_kinds,
                "skeleton_merge": cv.boolean, "merge_clusters": cv.boolean}


def _check_section(value, where: str, target, types: dict, prefix: str) -> dict:
    """A nested mapping (`logs.miner`, `logs.patterns`): `types` checks the non-numbers, the LIMITS
    entries under `prefix` the numbers."""
    section = dict(cv.mapping(value, where))
    cv.check_keys(section, {f.name for f in fields(target)}, where)
    for key, v in section.items():
        if key in types:
            section[key] = types[key](v, f"{where}.{key}")
        else:
            section[key] = _check_number(v, f"{where}.{key}", f"{prefix}.{key}")
    return section


@dataclass
class LogAnomaly:
    detector: str
    labels: dict[str, str]
    score: float
    template_id: str | None
    template: str | None
    examples: list[str]
    summary: str
    ts: float

    def to_dict(self) -> dict:
        return asdict(self)


def _key(labels: dict[str, str]) -> str:
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


def _source(labels: dict[str, str]) -> str:
    """A stream without its priority: a driver's lines about one fault come at several levels."""
    return _key({k: v for k, v in labels.items() if k != "priority"})


def _device_token(labels: dict[str, str]) -> str | None:
    """How kernel lines name a pattern hit's device: `0000:02:00` for PCI id 0000:02:00.0 (the Xid
    line drops the function, the NVRM lines keep it)."""
    pci = labels.get("pci_bus_id")
    return pci.rsplit(".", 1)[0].lower() if pci else None


def _quote(text: str | None, limit: int = 120) -> str:
    """A template or a line for a summary: one line, at most `limit` characters, in double quotes."""
    text = " ".join((text or "").split())
    return '"' + (text if len(text) <= limit else text[:limit - 1] + "…") + '"'


def _who(labels: dict[str, str]) -> str:
    for name in ("container", "unit", "identifier", "job"):
        if labels.get(name):
            return f"{name} {labels[name]}"
    return "log stream"


class LogDetector:
    def __init__(self, config: LogDetectorConfig | dict | None = None,
                 persistence: Persistence | None = None, gpu_by_pci: dict[str, str] | None = None,
                 state_name: str = "templates.json"):
        self.config = config
        self.persistence = persistence  # where the miner keeps its templates, under `state_name`
        self.gpu_by_pci = gpu_by_pci
        self.state_name = state_name

    # -- helpers --------------------------------------------------------------------------------
    @property
    def _config(self) -> LogDetectorConfig:
        if isinstance(self.config, LogDetectorConfig):
            return self.config
        return LogDetectorConfig.from_dict(self.config)

    def _new_runtime(self) -> None:
        self.recent_: deque = deque()   # (ts, stream key, template id) within the last window
        self.notable_: deque = deque()  # (ts, stream key) of lines that were news (see score)
        self.stream_labels_: dict[str, dict] = getattr(self, "stream_labels_", {})
        self.first_score_ts_: float | None = None
        self.boot_ts_: float | None = getattr(self, "boot_ts_", None)
        self.boot_id_: str | None = getattr(self, "boot_id_", None)
        self.template_rates_: dict[str, float] = {}
        self.examples_: dict[str, str] = {}  # template id -> its latest line (sequence summaries quote it)
        self.claims_: deque = deque()  # (ts, source, device token, pattern anomaly) of recent device faults
        config = self._config
        self.repeats_ = RepeatTracker(config.repeat_window_s, config.repeat_count)

    def _template_id(self, message: str) -> tuple[str, bool, str]:
        result = self.miner_.add(message)
        return self.miner_.resolve(result.template_id), result.is_new, result.template

    # -- fit ------------------------------------------------------------------------------------
    def fit(self, entries: Iterable[LogEntry]) -> LogDetector:
        config = self._config
        entries = sorted(entries, key=lambda e: e.ts)
        self.miner_ = TemplateMiner(MinerConfig(**config.miner), self.persistence, self.state_name)
        self.patterns_ = PatternTracker(PatternConfig(**config.patterns), self.gpu_by_pci)
        self.stream_labels_ = {}
        ids, events = [], []
        for entry in entries:
            template_id, _new, _template = self._template_id(entry.message)
            ids.append(template_id)
            stream = _key(entry.labels)
            self.stream_labels_[stream] = dict(entry.labels)
            events.append((entry.ts, "s" + stream))
        ids = [self.miner_.resolve(t) for t in ids]  # clusters merged while mining answer by their live id
        self.line_ = LineScorer().fit(ids, [entry.priority for entry in entries])
        self.trained_templates_ = sorted(set(ids))
        self.top_templates_ = [t for t, _c in Counter(ids).most_common(config.top_templates)]
        top = set(self.top_templates_)
        events += [(entry.ts, "t" + t) for entry, t in zip(entries, ids, strict=True) if t in top]
        start = entries[0].ts if entries else None
        end = entries[-1].ts + 1e-6 if entries else None
        self.rate_ = RateModel(config.window_s, config.rate_sigmas, config.rate_min_excess,
                               config.silence_min, peak_factor=config.rate_peak_factor).fit(events, start, end)
        windows: list[dict[str, list[str]]] = []  # per window: source -> its template ids in order
        if entries:
            for entry, t in zip(entries, ids, strict=True):
                index = int((entry.ts - start) // config.window_s)
                while len(windows) <= index:
                    windows.append({})
                windows[index].setdefault(_source(entry.labels), []).append(t)
        self.sequence_ = SequenceModel().fit([list(w.values()) for w in windows]) if config.sequence else None
        self.novel_templates_total_ = 0
        self.fit_range_ = (start, end)
        self.lines_trained_ = len(entries)
        self._new_runtime()
        if self.persistence is not None:
            self.miner_.save()
        return self

    # -- score ----------------------------------------------------------------------------------
    def score(self, entries: Iterable[LogEntry], now: float) -> list[LogAnomaly]:
        """Score entries not seen before (each entry once, in any order) as of time `now`."""
        config = self._config
        best: dict[tuple[str, str], LogAnomaly] = {}

        def offer(anomaly: LogAnomaly, example: str | None = None) -> None:
            key = (anomaly.detector, _key(anomaly.labels))
            current = best.get(key)
            if current is None:
                best[key] = anomaly
                current = anomaly
            elif anomaly.score > current.score:
                anomaly.examples = current.examples
                best[key] = anomaly
                current = anomaly
            if example is not None and example not in current.examples and len(current.examples) < config.examples:
                current.examples.append(example)

        if self.first_score_ts_ is None:
            self.first_score_ts_ = now
        candidates: list[tuple[LogEntry, LogAnomaly]] = []  # template anomalies, offered after the claims
        # clusters merged by the miner since the last call answer by their live id: re-key the
        # counts so a template's history follows it into the merged cluster
        self.line_.remap(self.miner_.resolve)
        if self.sequence_ is not None:
            self.sequence_.remap(self.miner_.resolve)
        for entry in sorted(entries, key=lambda e: e.ts):
            stream = _key(entry.labels)
            self.stream_labels_.setdefault(stream, dict(entry.labels))
            template_id, is_new, template = self._template_id(entry.message)
            if not is_new and template_id not in self.line_.counts_:
                self.line_.remap(self.miner_.resolve)  # a merge within this call
            trained_count = self.line_.counts_.get(template_id, 0)
            if is_new:
                self.novel_templates_total_ += 1
            self.recent_.append((entry.ts, stream, template_id))
            self.examples_[template_id] = entry.message
            self._track_boot(entry)
            hits = self.patterns_.observe(entry)
            for hit in hits:
                labels = {"pattern": hit.pattern, **({"job": entry.labels["job"]} if "job" in entry.labels else {}),
                          **hit.labels}
                pattern_anomaly = LogAnomaly("log_pattern", labels, hit.score, template_id, template, [],
                                             hit.summary, hit.ts)
                offer(pattern_anomaly, entry.message)
                device = _device_token(hit.labels)
                if device:
                    self.claims_.append((hit.ts, _source(entry.labels), device, pattern_anomaly))
            priority = entry.priority
            trouble = bool(_KEYWORD_RE.search(entry.message)) or (priority is not None and priority <= 3)
            if hits or trained_count == 0 or (trouble and not self.line_.routine_severity(template_id, priority)):
                self.notable_.append((entry.ts, stream))
            if not hits:
                score = self.line_.score(template_id if trained_count else None, entry.message, entry.priority)
                if self.boot_ts_ is not None and 0 <= entry.ts - self.boot_ts_ < config.boot_grace_s:
                    score *= config.boot_damping
                seen = "novel" if trained_count == 0 else f"rare (seen {trained_count}x before)"
                words = trouble_keywords(entry.message)
                summary = (f"{seen.capitalize()} log template in {_who(entry.labels)}: {template!r}"
                           + (f" [{', '.join(words)}]" if words else ""))
                candidates.append((entry, LogAnomaly("log_template", dict(entry.labels), score, template_id,
                                                     template, [], summary, entry.ts)))
                if trouble:
                    self._repeat(entry, stream, template_id, template, offer)
            # online counts: a template seen again is less surprising the next time
            self.line_.counts_[template_id] += 1
        self._offer_unclaimed(candidates, offer, now)
        while self.recent_ and self.recent_[0][0] <= now - config.window_s:
            self.recent_.popleft()
        while self.notable_ and self.notable_[0][0] <= now - config.window_s:
            self.notable_.popleft()
        self._score_rates(now, offer)
        self._score_sequence(now, offer)
        if self.persistence is not None:
            self.miner_.save()
        return sorted(best.values(), key=lambda a: -a.score)

    def _offer_unclaimed(self, candidates: list[tuple[LogEntry, LogAnomaly]], offer, now: float) -> None:
        """A device fault is one incident: the kernel lines around an Xid that name the same PCI device
        (`GPU 0000:02:00.0: GPU has fallen off the bus`, `RmInitAdapter failed`), within `claim_s` of
        it from the same source, join the pattern anomaly as examples instead of scoring as novel
        templates of their own - one alert with the whole story, not three."""
        claim_s = self._config.claim_s
        while self.claims_ and self.claims_[0][0] < now - claim_s - 60.0:  # 60 s: lines reach Loki late
            self.claims_.popleft()
        for entry, anomaly in candidates:
            source = _source(entry.labels)
            message = entry.message.lower()
            owner = next((a for ts, src, device, a in self.claims_
                          if src == source and abs(entry.ts - ts) <= claim_s and device in message), None)
            if owner is None:
                offer(anomaly, entry.message)
            elif entry.message not in owner.examples and len(owner.examples) < self._config.examples:
                owner.examples.append(entry.message)

    def _repeat(self, entry: LogEntry, stream: str, template_id: str, template: str, offer) -> None:
        config = self._config
        start, end = self.fit_range_
        span = (end - start) if start is not None and end is not None else 0.0
        trained = self.line_.trained_counts_.get(template_id, 0)
        expected = trained * config.repeat_window_s / span if span > 0 else 0.0
        score, n = self.repeats_.observe(stream, template_id, entry.ts, expected)
        if n < 2:
            return
        summary = (f"Repeated trouble in {_who(entry.labels)}: {n} lines of {template!r} in "
                   f"{config.repeat_window_s / 60:g} min")
        offer(LogAnomaly("log_rate", dict(entry.labels), score, template_id, template, [], summary, entry.ts),
              entry.message)

    def _track_boot(self, entry: LogEntry) -> None:
        """A boot: the journal's _BOOT_ID changes, or (from Loki, which has no boot id) the kernel
        prints its banner."""
        boot_id = entry.meta.get("boot_id")
        if boot_id and boot_id != self.boot_id_:
            if self.boot_id_ is not None:
                self.boot_ts_ = entry.ts
            self.boot_id_ = boot_id
        if entry.message.startswith("Linux version ") and entry.labels.get("transport", "kernel") == "kernel":
            self.boot_ts_ = entry.ts

    def _score_rates(self, now: float, offer) -> None:
        config = self._config
        streams = Counter(stream for _ts, stream, _t in self.recent_)
        templates = Counter(t for _ts, _s, t in self.recent_)
        minutes = config.window_s / 60
        self.template_rates_ = {t: templates.get(t, 0) / config.window_s for t in self.top_templates_}
        window_full = self.first_score_ts_ is not None and now - self.first_score_ts_ >= config.window_s
        templates_now = self.miner_.templates()
        notable = {stream for _ts, stream in self.notable_}
        for key in set(self.rate_.keys()) | {"s" + s for s in streams}:
            kind, name = key[0], key[1:]
            count = streams.get(name, 0) if kind == "s" else templates.get(name, 0)
            score, what = self.rate_.score(key, count, now)
            spam = False
            if what == "silence" and not window_full:
                continue  # the window is not yet full after a start: too early to call a silence
            if not what:
                continue
            expected = self.rate_.expected(key, now)
            if kind == "s":
                labels = dict(self.stream_labels_.get(name, {}))
                template_id = template = None
                subject = _who(labels)
                if what == "burst" and name not in notable:
                    # a flood of the stream's ordinary lines (known templates, no trouble beyond what
                    # training saw from them) is load, which the metric side measures: shown as a
                    # rate, alerted on only when the flood carries news (new templates, trouble) or
                    # is log spam (config spam_peak_factor / spam_min_lines)
                    spam_score, _what = self.rate_.score(key, count, now, config.spam_peak_factor,
                                                         config.spam_min_lines)
                    spam = spam_score > 1
                    score = spam_score if spam else min(score, 0.9)
            else:
                template_id, template = name, templates_now.get(name, "")
                labels = {"template_id": name}
                subject = f"template {_quote(template)}"
                if what == "burst" and not _KEYWORD_RE.search(template):
                    # more of an ordinary line (requests, model loads) is user traffic, not an
                    # incident: shown as a rate, alerted on only by its stream's flood condition
                    score = min(score, 0.9)
            kind_text = "log spam" if spam else "burst" if what == "burst" else "went silent"
            summary = f"{subject}: {count} lines in {minutes:g} min, expected {expected:g} ({kind_text})"
            offer(LogAnomaly("log_rate", labels, score, template_id, template, [], summary, now))

    def _score_sequence(self, now: float, offer) -> None:
        if self.sequence_ is None or not self.recent_:
            return
        config = self._config
        # the window's lines per source (a stream without its priority), in time order: transitions
        # between streams are chance interleaving, never an order
        by_source: dict[str, list[str]] = {}
        labels_of: dict[str, dict] = {}
        for _ts, stream, template_id in sorted(self.recent_, key=lambda item: item[0]):
            labels = self.stream_labels_.get(stream, {})
            source = _source(labels)
            labels_of.setdefault(source, labels)
            by_source.setdefault(source, []).append(self.miner_.resolve(template_id))
        sources = list(by_source)
        findings = self.sequence_.findings([by_source[s] for s in sources])
        minutes = f"{config.window_s / 60:g} min"
        if not findings:
            offer(LogAnomaly("log_sequence", {"job": "all"}, 0.0, None, None, [],
                             f"No unusual log sequence in the last {minutes}", now))
            return
        top = findings[0]
        score = float(top["score"])
        if self.boot_ts_ is not None and 0 <= now - self.boot_ts_ < config.boot_grace_s + config.window_s:
            score *= config.boot_damping  # a window holding a boot is an unusual sequence by nature
        templates = self.miner_.templates()
        first, second = top["first"], top["second"]
        who = _who(labels_of[sources[top["stream"]]])

        def shown(template_id: str) -> str:
            text = _quote(templates.get(template_id, ""))
            example = self.examples_.get(template_id)
            return text + (f" (e.g. {_quote(example)})" if example else "")

        if top["kind"] == "transition":
            summary = (f"Unusual log sequence in {who} in the last {minutes}: {shown(second)} came right "
                       f"after {shown(first)} - never seen in training")
        else:
            summary = (f"Unusual log combination in {who} in the last {minutes}: {shown(first)} together "
                       f"with {shown(second)} - never in one window in training, though they appeared in "
                       f"{top['share_first']:.0%} and {top['share_second']:.0%} of its windows")
        examples = [self.examples_[t] for t in (second, first) if t in self.examples_]
        anomaly = LogAnomaly("log_sequence", {"job": "all"}, score, second, templates.get(second), [], summary, now)
        offer(anomaly)
        for line in examples:
            offer(anomaly, line)

    # -- metrics helpers --------------------------------------------------------------------------
    def template_rates(self) -> dict[str, float]:
        """Lines per second of the top training templates over the last window (bounded set)."""
        return dict(self.template_rates_)

    # -- persistence ----------------------------------------------------------------------------
    def get_state(self) -> dict:
        """Everything needed to resume without refitting (templates included): JSON-able values and
        numpy arrays, which the model store writes as they are (detector.store.pack_state). A copy:
        the detector goes on learning (stream labels, counts) after the snapshot is taken."""
        return copy.deepcopy({
            "version": STATE_VERSION,
            "config": asdict(self._config),
            "miner": self.miner_.get_state(),
            "line": self.line_.get_state(),
            "rate": self.rate_.get_state(),
            "sequence": self.sequence_.get_state() if self.sequence_ is not None else None,
            "patterns": self.patterns_.get_state(),
            "trained_templates": self.trained_templates_,
            "top_templates": self.top_templates_,
            "stream_labels": self.stream_labels_,
            "novel_templates_total": self.novel_templates_total_,
            "fit_range": list(self.fit_range_),
            "lines_trained": self.lines_trained_,
        })

    def get_runtime_state(self) -> dict:
        """What scoring has learned since the fit (online template counts, the recent window, repeat
        and pattern counters, boot tracking), JSON-able: saved after every pass so a restart carries
        on where it stopped instead of forgetting a restart loop half counted. Only valid with the
        same fit (template ids are the fit's miner's)."""
        return {
            "line_counts": dict(self.line_.counts_),
            "recent": [list(item) for item in self.recent_],
            "notable": [list(item) for item in self.notable_],
            "repeats": self.repeats_.get_state(),
            "patterns": self.patterns_.get_state(),
            "first_score_ts": self.first_score_ts_,
            "boot_ts": self.boot_ts_,
            "boot_id": self.boot_id_,
            "novel_templates_total": self.novel_templates_total_,
            "examples": dict(self.examples_),
        }

    def set_runtime_state(self, state: dict) -> LogDetector:
        try:
            line_counts = Counter({str(k): int(v) for k, v in state["line_counts"].items()})
            recent = deque((float(ts), str(s), str(t)) for ts, s, t in state["recent"])
            notable = deque((float(ts), str(s)) for ts, s in state["notable"])
            repeats = RepeatTracker(self._config.repeat_window_s, self._config.repeat_count)
            repeats.set_state(state["repeats"])
            patterns = state["patterns"]
            novel = int(state["novel_templates_total"])
            examples = {str(k): str(v) for k, v in state.get("examples", {}).items()}  # absent before 3
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"corrupt log scoring state: {e}") from e
        self.line_.counts_ = line_counts
        self.recent_, self.notable_, self.repeats_ = recent, notable, repeats
        self.patterns_.set_state(patterns)
        self.first_score_ts_ = state.get("first_score_ts")
        self.boot_ts_ = state.get("boot_ts")
        self.boot_id_ = state.get("boot_id")
        self.novel_templates_total_ = novel
        self.examples_ = examples
        return self

    @classmethod
    def from_state(cls, state: dict, persistence: Persistence | None = None,
                   gpu_by_pci: dict[str, str] | None = None, state_name: str = "templates.json") -> LogDetector:
        """Restore from get_state() (also after the store's pack_state/unpack_state). When
        `persistence` holds miner state under `state_name` (saved after every scoring call), it is
        newer than the document and wins.

        The previous release's state, {"log_detector": "<JSON with a base64 pickle>"}, is refused
        with a ValueError without being decoded: unpickling runs whatever the bytes say, and the
        service refits instead."""
        if not isinstance(state, dict):
            raise ValueError(f"corrupt log detector state: a {type(state).__name__}, not a document")
        if "log_detector" in state:
            raise ValueError("log detector state of a previous release (a pickled model) is not loaded")
        state = copy.deepcopy(state)  # the detector goes on learning in what it restores (stream labels)
        try:
            if state.get("version") != STATE_VERSION:
                raise ValueError(f"unsupported log detector state version {state.get('version')!r}")
            detector = cls(LogDetectorConfig(**state["config"]), persistence, gpu_by_pci, state_name)
            config = detector._config
            detector.miner_ = TemplateMiner(MinerConfig(**config.miner), persistence, state_name)
            if persistence is None or not detector.miner_.load():
                detector.miner_.set_state(state["miner"])
            detector.line_ = LineScorer().set_state(state["line"])
            detector.rate_ = RateModel(config.window_s, config.rate_sigmas, config.rate_min_excess,
                                       config.silence_min, peak_factor=config.rate_peak_factor).set_state(state["rate"])
            detector.sequence_ = None if state["sequence"] is None else SequenceModel.from_state(state["sequence"])
            detector.patterns_ = PatternTracker(PatternConfig(**config.patterns), gpu_by_pci)
            detector.patterns_.set_state(state["patterns"])
            detector.trained_templates_ = state["trained_templates"]
            detector.top_templates_ = state["top_templates"]
            detector.stream_labels_ = state["stream_labels"]
            detector.novel_templates_total_ = int(state["novel_templates_total"])
            detector.fit_range_ = tuple(state["fit_range"])
            detector.lines_trained_ = int(state["lines_trained"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"corrupt log detector state: {e}") from e
        detector._new_runtime()
        return detector


# -- backtest -----------------------------------------------------------------------------------
def incidents_from_entries(entries: list[LogEntry], config: LogDetectorConfig | dict | None = None, *,
                           gpu_by_pci: dict[str, str] | None = None, train_until: float | None = None,
                           train_fraction: float = 0.3, step_s: float = 60.0,
                           threshold: float = 1.0) -> list[dict]:
    """Replay entries as the live service would: fit on the part before `train_until` (default: the
    first `train_fraction` of the time span), then score every `step_s` on the lines of that step,
    and merge anomalous results per detector and label set into incidents
    {"detector", "labels", "start", "end", "peak_score", "summary", "template"} (times in epoch
    seconds; "template": the peak anomaly's template text, or None, beside any template_id label)."""
    entries = sorted(entries, key=lambda e: e.ts)
    if not entries:
        return []
    first, last = entries[0].ts, entries[-1].ts
    if train_until is None:
        train_until = first + (last - first) * train_fraction
    training = [e for e in entries if e.ts < train_until]
    rest = [e for e in entries if e.ts >= train_until]
    detector = LogDetector(config, gpu_by_pci=gpu_by_pci).fit(training)
    window = detector._config.window_s
    open_: dict[tuple, dict] = {}
    done: list[dict] = []
    index, t = 0, train_until + step_s
    while t <= last + step_s:
        batch = []
        while index < len(rest) and rest[index].ts < t:
            batch.append(rest[index])
            index += 1
        for anomaly in detector.score(batch, t):
            if anomaly.score <= threshold:
                continue
            labels = {k: v for k, v in anomaly.labels.items() if k in INCIDENT_LABELS}
            key = (anomaly.detector, _key(labels))
            ts = min(anomaly.ts, t)
            incident = open_.get(key)
            if incident is not None and ts - incident["end"] > max(window, step_s):
                done.append(open_.pop(key))
                incident = None
            if incident is None:
                open_[key] = {"detector": anomaly.detector, "labels": labels, "start": ts, "end": ts,
                              "peak_score": anomaly.score, "summary": anomaly.summary, "template": anomaly.template}
            else:
                incident["end"] = max(incident["end"], ts)
                if anomaly.score > incident["peak_score"]:
                    incident["peak_score"], incident["summary"] = anomaly.score, anomaly.summary
                    incident["template"] = anomaly.template
        t += step_s
    done.extend(open_.values())
    return sorted(done, key=lambda i: (i["start"], i["detector"]))


def incidents_from_journal(path: str | Path, config: LogDetectorConfig | dict | None = None,
                           **kwargs) -> list[dict]:
    """Backtest incidents from a `journalctl -o json` file (or plain text, one message a line)."""
    return incidents_from_entries(read_log_file(path), config, **kwargs)
