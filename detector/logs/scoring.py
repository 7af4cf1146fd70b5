"""Scores for log lines and log windows, on rigwatch's convention: >= 0, and > 1 is anomalous.

Three models, each usable on its own (scikit-learn style: __init__ stores parameters, fit sets
`_`-suffixed state):
- LineScorer: novel templates (never seen in training) and rare ones, weighted by the line's
  severity (journal PRIORITY or a Level name; container stderr carries none) and by trouble keywords
  where that severity is news for the template (training did not show the template at that level).
- RateModel: lines per window per key (a stream or a template) against a robust baseline, with an
  hour-of-day profile once training covers two days: bursts, and silence of a chatty key.
- SequenceModel: an Isolation Forest (detector.models.iforest's, so its state is plain arrays) over
  windows of template counts, for unusual mixes of otherwise ordinary lines.
The keyword and level lists below were fixed from general knowledge of system logs before any
labelled data was looked at; they are not tuned on a benchmark.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from detector.logs.windows import SlidingWindows
from detector.models.iforest import IsolationForestModel

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


class SequenceModel:
    """Isolation Forest over windows of template counts (log1p of counts over a fixed vocabulary of
    the `vocabulary_size` most common training templates, plus an `other` column). Scores are scaled
    so that the training windows' `calibration_quantile` maps to 1 / `calibration_margin`: by default
    the most unusual training window maps to 0.8, so only a mix clearly stranger than any seen in
    training scores above 1 (a quantile below 1 would flag that share of ordinary windows by
    construction, and many scoring windows will edge past the maximum of fewer training ones).

    An Isolation Forest only splits inside the training range, so a window far beyond it (a template
    at five times its usual count, or a usual one gone) isolates no faster than the training's own
    extremes. A range check covers that: per column, the distance outside the training [min, max] in
    sqrt-count space (where Poisson noise has sd 1/2), in units of `range_sigmas` * 1/2. The `other`
    column is left out of the range check: lines of new templates are the line scorer's to judge.

    The forest is detector.models.iforest's: its state is numpy arrays, so get_state() needs no pickle."""

    def __init__(self, vocabulary_size: int = 100, n_estimators: int = 100,
                 calibration_quantile: float = 1.0, calibration_margin: float = 1.25,
                 range_sigmas: float = 4.0, random_state: int = 0):
        self.vocabulary_size = vocabulary_size
        self.calibration_margin = calibration_margin
        self.n_estimators = n_estimators
        self.calibration_quantile = calibration_quantile
        self.range_sigmas = range_sigmas
        self.random_state = random_state

    def _matrix(self, windows: Sequence[Counter]) -> np.ndarray:
        index = self.index_
        matrix = np.zeros((len(windows), len(index) + 1))
        for row, counts in enumerate(windows):
            for template_id, count in counts.items():
                matrix[row, index.get(template_id, len(index))] += count
        return np.log1p(matrix)

    def fit(self, windows: Sequence[Counter]) -> SequenceModel:
        total = Counter()
        for counts in windows:
            total.update(counts)
        self.vocabulary_ = [t for t, _c in total.most_common(self.vocabulary_size)]
        self.index_ = {t: i for i, t in enumerate(self.vocabulary_)}
        self.forest_ = None
        if len(windows) < 8:  # too few windows to learn what a normal mix is
            return self
        matrix = self._matrix(windows)
        roots = np.sqrt(np.expm1(matrix))
        self.low_, self.high_ = roots.min(axis=0), roots.max(axis=0)
        # max_samples=256 subsamples min(256, windows) per tree: scikit-learn's default, which the
        # sequence calibration was chosen with
        self.forest_ = IsolationForestModel(n_estimators=self.n_estimators, max_samples=256,
                                            random_state=self.random_state)
        self.forest_.fit(matrix)
        raw = -self.forest_.score_samples(matrix)
        self.center_ = float(np.median(raw))
        self.spread_ = max(self.calibration_margin * (float(np.quantile(raw, self.calibration_quantile))
                                                       - self.center_), 1e-6)
        return self

    def score(self, windows: Sequence[Counter]) -> np.ndarray:
        if self.forest_ is None or not len(windows):
            return np.zeros(len(windows))
        matrix = self._matrix(windows)
        raw = -self.forest_.score_samples(matrix)
        forest = np.clip((raw - self.center_) / self.spread_, 0.0, None)
        roots = np.sqrt(np.expm1(matrix))
        outside = np.maximum(roots - self.high_, self.low_ - roots).clip(min=0.0)
        outside[:, -1] = 0.0  # templates new to the vocabulary are the line scorer's to judge
        return np.maximum(forest, outside.max(axis=1) / (self.range_sigmas * 0.5))

    def get_state(self) -> dict:
        """Parameters and fitted state: JSON-able values and numpy arrays (the model store's npz)."""
        state = {"params": {"vocabulary_size": self.vocabulary_size, "n_estimators": self.n_estimators,
                            "calibration_quantile": self.calibration_quantile,
                            "calibration_margin": self.calibration_margin, "range_sigmas": self.range_sigmas,
                            "random_state": self.random_state},
                 "vocabulary": list(self.vocabulary_), "forest": None}
        if self.forest_ is not None:
            state.update(forest=self.forest_.get_state(), low=self.low_, high=self.high_, center=self.center_,
                         spread=self.spread_)
        return state

    @classmethod
    def from_state(cls, state: dict) -> SequenceModel:
        model = cls(**state["params"])
        model.vocabulary_ = [str(t) for t in state["vocabulary"]]
        model.index_ = {t: i for i, t in enumerate(model.vocabulary_)}
        model.forest_ = None
        if state["forest"] is not None:
            model.forest_ = IsolationForestModel.from_state(state["forest"])
            model.low_, model.high_ = np.asarray(state["low"], float), np.asarray(state["high"], float)
            model.center_, model.spread_ = float(state["center"]), float(state["spread"])
        return model


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
