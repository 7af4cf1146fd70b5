"""Scores for log lines and log windows, on rigwatch's convention: >= 0, and > 1 is anomalous.

Three models, each usable on its own (scikit-learn style: __init__ stores parameters, fit sets
`_`-suffixed state):
- LineScorer: novel templates (never seen in training) and rare ones, weighted by the line's
  severity (journal PRIORITY or a Level name; container stderr carries none) and by trouble keywords
  where that severity is news for the template (training did not show the template at that level).
- RateModel: lines per window per key (a stream or a template) against a robust baseline, with an
  hour-of-day profile once training covers two days: bursts, and silence of a chatty key.
- SequenceModel: the order and combination of known templates in a window (a transition or a pair
  training never showed), from presence and order alone: volume is RateModel's, novelty LineScorer's.
The keyword and level lists below were fixed from general knowledge of system logs before any
labelled data was looked at; they are not tuned on a benchmark.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from detector.logs.windows import SlidingWindows

# Words of trouble in system and application logs (whole words, case-insensitive).
TROUBLE_KEYWORDS = (
    "error", "errors", "err", "failed", "failure", "fail", "fatal", "panic", "oom", "out of memory",
    "segfault", "segmentation fault", "xid", "timeout", "timed out", "denied", "cuda error", "abort",
    "aborted", "exception", "traceback", "critical", "crash", "crashed", "corrupt", "corrupted",
    "unreachable", "refused", "killed", "unable", "cannot", "invalid", "lost", "hung", "stuck",
)
# Level names of common log formats mapped to syslog priorities (0 emerg ... 7 debug).
LEVEL_PRIORITY = {
    "EMERG": 0, "EMERGENCY": 0, "ALERT": 1, "CRIT": 2, "CRITICAL": 2, "FATAL": 2, "SEVERE": 2,
    "FAILURE": 2, "ERR": 3, "ERROR": 3, "WARN": 4, "WARNING": 4, "NOTICE": 5, "INFO": 6,
    "INFORMATION": 6, "DEBUG": 7, "TRACE": 7, "FINE": 7, "VERBOSE": 7,
}
# How much a line's severity counts; None = unknown (plain text, container stdout/stderr).
PRIORITY_WEIGHT = {0: 2.0, 1: 2.0, 2: 1.5, 3: 1.0, 4: 0.4, 5: 0.2, 6: 0.1, 7: 0.05, None: 0.1}

_KEYWORD_RE = re.compile(r"(?<![A-Za-z])(?:" + "|".join(re.escape(k) for k in
                         sorted(TROUBLE_KEYWORDS, key=len, reverse=True)) + r")(?![A-Za-z])", re.IGNORECASE)


def level_priority(level: str | None) -> int | None:
    return LEVEL_PRIORITY.get(level.strip().upper()) if level else None


def trouble_keywords(message: str) -> list[str]:
    return sorted({m.group(0).lower() for m in _KEYWORD_RE.finditer(message)})


class LineScorer:
    """Novelty and rarity of a line's template, weighted by severity and trouble keywords.

    score = PRIORITY_WEIGHT[priority] * (keyword_factor if a trouble keyword else 1) * surprise,
    surprise = novel_surprise for a template never seen in training, else 2 / sqrt(1 + count):
    a novel error line scores 8, a novel info line 0.4, an error line seen thousands of times ~0.05.

    Severity is news only where the template has not shown it before. Training is taken as the
    system's normal (the premise of every detector fitted on history), so a template that training
    saw at this severity or a worse one carries its level and its trouble words as part of its
    routine: such a line is weighted like a line without severity (PRIORITY_WEIGHT[None], no keyword
    factor) and scores its rarity alone, below 1 (a known error that repeats beyond its training
    rate is the rate models' to catch). A known template at a level more severe than any it showed
    in training (an INFO line now logged as ERROR) is weighted as a novel pair of template and level.
    """

    def __init__(self, novel_surprise: float = 4.0, keyword_factor: float = 2.0,
                 priority_weight: dict | None = None):
        self.novel_surprise = novel_surprise
        self.keyword_factor = keyword_factor
        self.priority_weight = priority_weight

    def fit(self, template_ids: Iterable[str], priorities: Iterable[int | None] | None = None) -> LineScorer:
        """template_ids of the training lines and, aligned with them, their priorities (None where a
        line has no level)."""
        template_ids = list(template_ids)
        self.counts_ = Counter(template_ids)            # grows online as lines are scored
        self.trained_counts_ = Counter(self.counts_)    # what training alone saw
        self.total_ = sum(self.counts_.values())
        # per template, the most severe priority training saw for it (lower is more severe)
        self.trained_priority_: dict[str, int] = {}
        for template_id, priority in zip(template_ids, priorities if priorities is not None else (), strict=False):
            if priority is not None:
                known = self.trained_priority_.get(template_id)
                self.trained_priority_[template_id] = priority if known is None else min(known, priority)
        return self

    def surprise(self, template_id: str | None) -> float:
        count = self.counts_.get(template_id, 0) if template_id is not None else 0
        return self.novel_surprise if count == 0 else 2.0 / math.sqrt(1.0 + count)

    def routine_severity(self, template_id: str | None, priority: int | None) -> bool:
        """Training saw this template at this priority or a more severe one."""
        worst = self.trained_priority_.get(template_id) if template_id is not None else None
        return priority is not None and worst is not None and priority >= worst

    def score(self, template_id: str | None, message: str, priority: int | None) -> float:
        weights = self.priority_weight or PRIORITY_WEIGHT
        if self.routine_severity(template_id, priority):
            return weights[None] * self.surprise(template_id)
        weight = weights.get(priority, weights[None])
        factor = self.keyword_factor if _KEYWORD_RE.search(message) else 1.0
        return weight * factor * self.surprise(template_id)

    def remap(self, resolve) -> LineScorer:
        """Re-key counts by live template ids after the miner merged clusters (`resolve`: old id ->
        live id), so a trained template merged into a new cluster keeps its history."""
        def merged(counts: Counter) -> Counter:
            out: Counter = Counter()
            for template_id, count in counts.items():
                out[resolve(template_id)] += count
            return out

        self.counts_ = merged(self.counts_)
        self.trained_counts_ = merged(self.trained_counts_)
        priorities: dict[str, int] = {}
        for template_id, priority in self.trained_priority_.items():
            live = resolve(template_id)
            priorities[live] = min(priority, priorities.get(live, priority))
        self.trained_priority_ = priorities
        return self

    def get_state(self) -> dict:
        return {"counts": dict(self.counts_), "trained_counts": dict(self.trained_counts_),
                "trained_priority": dict(self.trained_priority_)}

    def set_state(self, state: dict) -> LineScorer:
        self.counts_ = Counter(state["counts"])
        self.trained_counts_ = Counter(state["trained_counts"])
        self.trained_priority_ = dict(state.get("trained_priority", {}))
        self.total_ = sum(self.counts_.values())
        return self


class RateModel:
    """Robust per-key baseline of counts per window, seasonal by hour of day when training spans at
    least `seasonal_min_days`. A burst scores
        (count - expected) / max(sigmas * scale, peak_factor * peak - expected)
    and needs at least `min_excess` extra lines: it must beat the noise and be a flood beyond
    anything training saw (user traffic is bursty; a boot or a nightly job's burst is routine when
    training saw one like it; a failure that repeats is caught by RepeatTracker, not by volume).
    Silence scores a key whose expected count is at least `silence_min`. The scale is
    max(1.4826 * MAD, sqrt(expected), 1): Poisson noise is the floor for sparse keys."""

    def __init__(self, window_s: float = 300.0, sigmas: float = 6.0, min_excess: float = 10.0,
                 silence_min: float = 20.0, seasonal_min_days: float = 2.0, peak_factor: float = 3.0):
        self.window_s = window_s
        self.peak_factor = peak_factor
        self.sigmas = sigmas
        self.min_excess = min_excess
        self.silence_min = silence_min
        self.seasonal_min_days = seasonal_min_days

    def fit(self, events: Sequence[tuple[float, str]], start: float | None = None,
            end: float | None = None) -> RateModel:
        """events: (timestamp, key). Windows with no line of a key count as zeros."""
        self.baseline_ = {}
        if not events:
            self.seasonal_ = False
            return self
        times = np.array([t for t, _k in events], dtype=float)
        start = float(times.min()) if start is None else start
        end = float(times.max()) + 1e-9 if end is None else end
        n_windows = max(1, int(math.ceil((end - start) / self.window_s)))
        self.seasonal_ = (end - start) >= self.seasonal_min_days * 86400
        hours = ((start + (np.arange(n_windows) + 0.5) * self.window_s) // 3600 % 24).astype(int)
        by_key: dict[str, list[int]] = {}
        for (_t, key), index in zip(events, ((times - start) // self.window_s).astype(int), strict=True):
            by_key.setdefault(key, []).append(min(index, n_windows - 1))
        for key, indexes in by_key.items():
            counts = np.bincount(indexes, minlength=n_windows).astype(float)
            median = float(np.median(counts))
            mad = float(np.median(np.abs(counts - median)))
            profile = None
            if self.seasonal_:
                profile = [float(np.median(counts[hours == h])) if np.any(hours == h) else median
                           for h in range(24)]
            self.baseline_[key] = {"median": median, "mad": mad, "profile": profile, "peak": float(counts.max())}
        return self

    def expected(self, key: str, ts: float) -> float:
        base = self.baseline_[key]
        if base["profile"] is not None:
            return base["profile"][int(ts // 3600 % 24)]
        return base["median"]

    def score(self, key: str, count: float, ts: float, peak_factor: float | None = None,
              min_lines: float = 0.0) -> tuple[float, str]:
        """(score, "burst"|"silence"|"") for `count` lines of `key` in the window ending at ts; a key
        unseen in training has no baseline (the line scorer covers novelty) and scores 0.
        `peak_factor` (default: the model's) and `min_lines` set a higher bar for a burst: a burst
        scores above 1 only with `min_lines` more lines than expected (the caller's log-spam floor)."""
        if key not in self.baseline_:
            return 0.0, ""
        expected = self.expected(key, ts)
        scale = max(1.4826 * self.baseline_[key]["mad"], math.sqrt(max(expected, 0.0)), 1.0)
        deviation = (count - expected) / (self.sigmas * scale)
        if count > expected:
            factor = self.peak_factor if peak_factor is None else peak_factor
            flood = factor * self.baseline_[key]["peak"] - expected
            deviation = (count - expected) / max(self.sigmas * scale, flood, min_lines)
            if count - expected < self.min_excess:
                deviation = min(deviation, 0.9)
            return max(deviation, 0.0), "burst"
        if expected >= self.silence_min:
            # the down side is judged at half the sigmas (a chatty key cannot drop 6 sigmas below a
            # Poisson mean of 30), but only a near silence counts: a dip is no outage
            silence = (expected - count) / (self.sigmas / 2 * scale)
            if count > 0.1 * expected:
                silence = min(silence, 0.9)
            return max(silence, 0.0), "silence"
        return 0.0, ""

    def keys(self) -> list[str]:
        return list(self.baseline_)

    def get_state(self) -> dict:
        return {"baseline": self.baseline_, "seasonal": self.seasonal_}

    def set_state(self, state: dict) -> RateModel:
        self.baseline_ = state["baseline"]
        self.seasonal_ = state["seasonal"]
        return self


def _streams(window) -> list[list[str]]:
    """A window as its streams' ordered template ids; a flat list of ids is one stream."""
    window = list(window)
    if window and isinstance(window[0], str):
        return [window]
    return [list(stream) for stream in window]


def _components(size: int, edges: Iterable[tuple[int, int]]) -> np.ndarray:
    """Strongly connected components of a directed graph on 0..size-1: a component label per node."""
    pairs = np.array(sorted(edges), dtype=int).reshape(-1, 2)
    graph = csr_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(size, size))
    return connected_components(graph, directed=True, connection="strong")[1]


class _Stats:
    """What a set of training windows says about order and combination, counted in windows (not
    lines: how chatty a template is must not weigh in)."""

    def __init__(self, windows: Sequence, vocabulary: list[str] | None = None):
        windows = [_streams(w) for w in windows]
        if vocabulary is None:
            vocabulary = sorted({t for w in windows for stream in w for t in stream})
        self.vocabulary = vocabulary
        self.index = {t: i for i, t in enumerate(vocabulary)}
        size = len(vocabulary)
        self.n_windows = len(windows)
        self.present = np.zeros(size)         # windows holding the template
        self.transitions: set[tuple[int, int]] = set()   # a -> b, next lines of one stream, a != b
        self.together: set[tuple[int, int]] = set()      # a < b, both in one stream in one window
        for window in windows:
            present = set()
            for stream in window:
                ids = [self.index.get(t) for t in stream]
                known = {i for i in ids if i is not None}
                present |= known
                self.together.update((a, b) for a in known for b in known if a < b)
                for a, b in zip(ids, ids[1:], strict=False):
                    if a is not None and b is not None and a != b:
                        self.transitions.add((a, b))
            self.present[list(present)] += 1
        self.component = _components(size, self.transitions)

    def findings(self, window) -> list[tuple[float, str, int, int, int]]:
        """(evidence, kind, a, b, stream index) for what `window` shows that these windows never did:
        - "transition": b right after a in a stream, never seen, and not within one cycle of the
          training's transition graph (concurrent requests interleave the steps of a cycle in any
          order; that is load, not news). Evidence: the smaller share of training windows holding
          a or b - how often training had the chance to show a -> b and did not.
        - "combination": a and b in one stream's window, never together in training. Evidence: the
          share of windows expected to hold both were they independent (share a x share b).
        Templates unknown to training are skipped (novelty is the line scorer's), and break a
        stream's chain rather than join their neighbours. Counts do not matter, only presence and
        order: more (or fewer) lines of the same templates in the same order find nothing."""
        n = max(self.n_windows, 1)
        found = []
        for number, stream in enumerate(_streams(window)):
            ids = [self.index.get(t) for t in stream]
            for a, b in set(zip(ids, ids[1:], strict=False)):
                if a is None or b is None or a == b or (a, b) in self.transitions:
                    continue
                if self.component[a] == self.component[b]:
                    continue
                found.append((min(self.present[a], self.present[b]) / n, "transition", a, b, number))
            known = sorted({i for i in ids if i is not None})
            for x, a in enumerate(known):
                for b in known[x + 1:]:
                    if (a, b) not in self.together:
                        found.append((self.present[a] * self.present[b] / n / n, "combination", a, b, number))
        return found


class SequenceModel:
    """Unusual order or combination of templates seen in training, whatever their volume.

    A window is its streams' lines in order (template ids). Two findings count (see _Stats.findings):
    a template right after another in a stream where training never showed that transition (outside
    a cycle of known transitions), and two templates in one stream's window that training never
    showed together though each was common. Only presence and order are used, never counts: the
    same templates at x0.3 or x10 their volume find nothing (volume is RateModel's, new templates
    LineScorer's).

    Calibration comes from the training windows: the model is fitted on each half of them and
    scored on the other, and the largest evidence the held-out half shows (ordinary drift: what a
    new week brings without anything wrong) times `calibration_margin` maps to a score of 1, with a
    floor of `min_support` windows of support per half (nothing rarer can be a finding). Fewer than
    2 x `min_support` windows: no model, scores 0.

    State: JSON-able values and numpy arrays (the model store's npz), no pickle."""

    def __init__(self, min_support: int = 8, calibration_margin: float = 1.25):
        self.min_support = min_support
        self.calibration_margin = calibration_margin

    def fit(self, windows: Sequence) -> SequenceModel:
        """windows: per window, its streams' ordered template ids (a flat list = one stream)."""
        windows = list(windows)
        self.stats_ = _Stats(windows)
        self.vocabulary_ = self.stats_.vocabulary
        self.fitted_ = len(windows) >= 2 * self.min_support
        self.scale_ = {"transition": 1.0, "combination": 1.0}
        if not self.fitted_:
            return self
        half = len(windows) // 2
        held_out = {"transition": 0.0, "combination": 0.0}
        for train, test in ((windows[:half], windows[half:]), (windows[half:], windows[:half])):
            stats = _Stats(train)
            for window in test:
                for evidence, kind, _a, _b, _s in stats.findings(window):
                    held_out[kind] = max(held_out[kind], evidence)
        floor = self.min_support / half  # nothing rarer than min_support windows of a half can be a finding
        self.scale_ = {kind: self.calibration_margin * max(held_out[kind], floor) for kind in held_out}
        return self

    def findings(self, window) -> list[dict]:
        """What makes `window` unusual, most unusual first: {"kind", "first", "second" (template ids),
        "stream" (index in the window), "score", "share_first", "share_second" (share of training
        windows holding each)}."""
        if not self.fitted_:
            return []
        stats = self.stats_
        n = max(stats.n_windows, 1)
        out = [{"kind": kind, "first": stats.vocabulary[a], "second": stats.vocabulary[b], "stream": number,
                "score": float(evidence / self.scale_[kind]), "share_first": float(stats.present[a] / n),
                "share_second": float(stats.present[b] / n)}
               for evidence, kind, a, b, number in stats.findings(window)]
        return sorted(out, key=lambda f: (-f["score"], f["kind"], f["first"], f["second"]))

    def score(self, windows: Sequence) -> np.ndarray:
        return np.array([max((f["score"] for f in self.findings(w)), default=0.0) for w in windows])

    def remap(self, resolve) -> SequenceModel:
        """Re-key by live template ids after the miner merged clusters; merged templates pool their
        transitions and pairs (their window counts: the larger, a lower bound of the union)."""
        stats = self.stats_
        live = [resolve(t) for t in stats.vocabulary]
        if live == stats.vocabulary:
            return self
        self.set_state({**self.get_state(), "vocabulary": live})
        return self

    def get_state(self) -> dict:
        """Parameters and fitted state: JSON-able values and numpy arrays (the model store's npz)."""
        stats = self.stats_
        return {"params": {"min_support": self.min_support, "calibration_margin": self.calibration_margin},
                "vocabulary": list(stats.vocabulary), "n_windows": stats.n_windows, "fitted": self.fitted_,
                "present": stats.present,
                "transitions": np.array(sorted(stats.transitions), dtype=int).reshape(-1, 2),
                "together": np.array(sorted(stats.together), dtype=int).reshape(-1, 2),
                "scale": dict(self.scale_)}

    def set_state(self, state: dict) -> SequenceModel:
        stats = _Stats([], [])
        vocabulary = [str(t) for t in state["vocabulary"]]
        merged = sorted(set(vocabulary))   # ids the miner merged collapse into one
        stats.vocabulary, stats.index = merged, {t: i for i, t in enumerate(merged)}
        to = np.array([stats.index[t] for t in vocabulary], dtype=int)
        stats.n_windows = int(state["n_windows"])
        stats.present = np.zeros(len(merged))
        np.maximum.at(stats.present, to, np.asarray(state["present"], float).reshape(-1))

        def pairs(key: str, ordered: bool) -> set[tuple[int, int]]:
            out = set()
            for a, b in np.asarray(state[key], int).reshape(-1, 2):
                a, b = int(to[a]), int(to[b])
                if a != b:
                    out.add((a, b) if ordered else (min(a, b), max(a, b)))
            return out

        stats.transitions, stats.together = pairs("transitions", True), pairs("together", False)
        stats.component = _components(len(merged), stats.transitions)
        self.stats_, self.vocabulary_ = stats, merged
        self.fitted_ = bool(state["fitted"])
        self.scale_ = {kind: float(state["scale"][kind]) for kind in ("transition", "combination")}
        return self

    @classmethod
    def from_state(cls, state: dict) -> SequenceModel:
        return cls(**state["params"]).set_state(state)


class RepeatTracker:
    """A failure that repeats is the incident: lines of trouble (a trouble keyword, or priority err
    or worse) counted per (stream, template) over a sliding window, against how often training saw
    that template. The threshold is max(`count`, 3 * the training's expected count in the window),
    so a known periodic warning does not fire, while a new error repeating every minute does."""

    def __init__(self, window_s: float = 900.0, count: int = 5):
        self.window_s = window_s
        self.count = count
        self._windows = SlidingWindows()

    def observe(self, stream: str, template_id: str, ts: float, expected_in_window: float) -> tuple[float, int]:
        n = self._windows.add((stream, template_id), ts, self.window_s)
        threshold = max(self.count, math.ceil(3 * expected_in_window))
        return n / threshold * (1.2 if n >= threshold else 0.9), n

    def get_state(self) -> list:
        return self._windows.get_state()

    def set_state(self, state: list) -> RepeatTracker:
        self._windows.set_state(state)
        return self
