"""The univariate ensemble: a point, a level-shift, a novelty and a volatility model, the highest wins.

Each member answers one question and is calibrated on the training window's own extremes, so each
one's score > 1 means "more unusual, in its own sense, than the training window ever was":

    seasonal_esd      is this value far from what this time of day expects?     (a spike, a dip)
    level_shift       has the level moved further than it ever moved?          (a new plateau)
    value_novelty     is this value outside the range the series ever took?    (a never-seen value)
    volatility_shift  have its steps grown larger than they ever grew?         (a series turned ragged;
                      two-sided detectors only: a volatility has no side)

The ensemble's score is the maximum of its members' (NaN only where every member has no opinion),
and the expected value and band at each point are those of the member that scored highest, so
> 1 still means "outside the band drawn". A maximum of calibrated scores is used rather than an
average because the members are blind to each other's anomalies (a level shift is no spike): an
average would dilute the one that sees it. `sensitivity` scales every member's band (seasonal_esd
through its heavy-tail band, the one that sets its width on real series).

Memory: a refit sees only the lookback window (a week), so last month's peak would be new again.
Each fit therefore keeps the previous fit's extremes (the seasonal heavy-tail band, the largest level
and step-size shifts, the seen range), fading with a half-life of ``memory`` seconds (30 days): cheap
long memory in a few numbers per series, without fetching a month of points at every refit.

Maturity: a series seen for less than ``maturity`` seconds (7 days) has seen few of its own extremes,
so the band is sqrt(maturity / seen) times wider until it has (``widening_``).

A member that cannot fit yet (seasonal_esd needs two days of points) sits out until it can, so the
ensemble starts with what it has instead of waiting for the slowest member.
"""
from __future__ import annotations

import numpy as np

from .base import FIELDS, ScoreFrame, UnivariateModel, check_t_y, median_step
from .batch import check_points
from .level_shift import LevelShift
from .novelty import ValueNovelty
from .seasonal import SeasonalESD
from .volatility import VolatilityShift

MEMBERS = {"seasonal_esd": SeasonalESD, "level_shift": LevelShift, "value_novelty": ValueNovelty,
           "volatility_shift": VolatilityShift}
# a change of volatility has no side: an ensemble watching one side of its series leaves it out
TWO_SIDED = ("volatility_shift",)
# The volatility member is the ensemble's slow eye: the median of the last 72 steps (the standalone
# kind's default is 12) against the 144 before them. A median of 12 step sizes spreads by about a
# third of itself on plain noise, so its largest swing in a week calibrates a blunt band, and a burst
# it would see in 12 points is mostly a spike's (the point members' business); over 72 steps the
# median holds still and a lasting change of rhythm stands out of it (NAB: README, issue 13).
VOLATILITY_WINDOW = 72


class Ensemble(UnivariateModel):
    kind = "ensemble"
    version = 1
    _state_attrs = ("members_",)

    def __init__(self, sensitivity: float = 1.0, direction: str = "both", min_deviation: float = 0.0,
                 members: tuple[str, ...] = tuple(MEMBERS), shift_window: int = 12, shift_baseline: int = 144,
                 novelty_margin: float = 0.05, tail_quantile: float = 0.9999,
                 point_sensitivity: float = 1.2, memory: float = 30 * 86400.0,
                 volatility_window: int = VOLATILITY_WINDOW, volatility_baseline: int = 144,
                 maturity: float = 7 * 86400.0):
        self.sensitivity = sensitivity
        self.direction = direction
        self.min_deviation = min_deviation
        self.members = tuple(members)
        self.shift_window = shift_window
        self.shift_baseline = shift_baseline
        self.novelty_margin = novelty_margin
        self.tail_quantile = tail_quantile
        self.point_sensitivity = point_sensitivity
        self.memory = memory
        self.volatility_window = volatility_window
        self.volatility_baseline = volatility_baseline
        self.maturity = maturity

    def _check_params(self):
        self._check_common()
        unknown = [m for m in self.members if m not in MEMBERS]
        if not self.members or unknown:
            raise ValueError(f"ensemble: members must be a non-empty list of {', '.join(MEMBERS)}, "
                             f"got {list(self.members)!r}")
        # checked here by their own names: a member's check would name *its* parameter (window,
        # margin, tail_factor), which the user of an ensemble never set
        if int(self.shift_window) < 1:
            raise ValueError(f"ensemble: shift_window must be >= 1, got {self.shift_window!r}")
        if int(self.shift_baseline) < 2:
            raise ValueError(f"ensemble: shift_baseline must be >= 2, got {self.shift_baseline!r}")
        if not self.novelty_margin > 0:
            raise ValueError(f"ensemble: novelty_margin must be > 0, got {self.novelty_margin!r}")
        if not 0.5 <= self.tail_quantile <= 1:
            raise ValueError(f"ensemble: tail_quantile must be in [0.5, 1], got {self.tail_quantile!r}")
        if not (np.isfinite(self.point_sensitivity) and self.point_sensitivity > 0):
            raise ValueError(f"ensemble: point_sensitivity must be > 0, got {self.point_sensitivity!r}")
        if not (np.isfinite(self.memory) and self.memory >= 0):
            raise ValueError(f"ensemble: memory must be >= 0 seconds, got {self.memory!r}")
        if int(self.volatility_window) < 1 or int(self.volatility_baseline) < 2:
            raise ValueError(f"ensemble: volatility_window must be >= 1 and volatility_baseline >= 2 points, "
                             f"got {self.volatility_window!r}, {self.volatility_baseline!r}")
        if not (np.isfinite(self.maturity) and self.maturity >= 0):
            raise ValueError(f"ensemble: maturity must be >= 0 seconds, got {self.maturity!r}")
        members = self._new_members()
        if not members:
            raise ValueError(f"ensemble: members {list(self.members)!r} watch both sides of a series, "
                             f"but direction is {self.direction!r}")
        for m in members:
            m._check_params()

    def _new_members(self) -> list[UnivariateModel]:
        common = {"direction": self.direction, "min_deviation": self.min_deviation}
        made = {
            "seasonal_esd": lambda: SeasonalESD(tail_factor=self.sensitivity * self.point_sensitivity,
                                                tail_quantile=self.tail_quantile, **common),
            "level_shift": lambda: LevelShift(sensitivity=self.sensitivity, window=int(self.shift_window),
                                              baseline=int(self.shift_baseline),
                                              tail_quantile=self.tail_quantile, **common),
            "value_novelty": lambda: ValueNovelty(sensitivity=self.sensitivity, margin=self.novelty_margin,
                                                  **common),
            "volatility_shift": lambda: VolatilityShift(sensitivity=self.sensitivity,
                                                        window=int(self.volatility_window),
                                                        baseline=int(self.volatility_baseline),
                                                        tail_quantile=self.tail_quantile,
                                                        min_deviation=self.min_deviation),
        }
        return [made[m]() for m in dict.fromkeys(self.members)
                if self.direction == "both" or m not in TWO_SIDED]

    def min_history(self, step_seconds: float = 60.0) -> int:
        return min(m.min_history(step_seconds) for m in self._new_members())

    def fit(self, t, y):
        self._check_params()
        t, y = check_t_y(t, y)
        n_valid = int(np.count_nonzero(~np.isnan(y)))
        fitted, errors = [], []
        for m in self._new_members():
            if n_valid < m.min_history(median_step(t)):
                continue
            try:
                fitted.append(m.fit(t, y))
            except ValueError as e:  # e.g. too few points after gaps: the member sits out
                errors.append(f"{m.kind}: {e}")
        if not fitted:
            raise ValueError("ensemble: no member could fit" + (f" ({'; '.join(errors)})" if errors else ""))
        self.members_ = fitted
        self.since_ = float(t[0])
        self.seen_ = float(t[-1] - t[0])
        return self

    @property
    def widening_(self) -> float:
        """How much wider than its members' the band is: sqrt(maturity / seen) while the ensemble
        has seen less than `maturity` seconds of its series, 1 after. The members calibrate on the
        largest deviations of what they saw, and a short history has seen few: its largest is
        beaten often (the next of n exchangeable values tops them all with chance 1 / (n + 1)), so
        a young series would raise false alarms that a week of history no longer does."""
        return _widening(self.maturity, self.seen_)

    def carry(self, previous, elapsed: float) -> None:
        """Keep what the model this fit replaces had learnt of the series' extremes, fading with a
        half-life of `memory` seconds (0: nothing kept): a refit on a week forgets last month's peak."""
        if not isinstance(previous, Ensemble) or not previous.is_fitted:
            return
        # the series' history reaches back to the first fit, not only to this window's start
        end = self.since_ + self.seen_
        self.since_ = min(self.since_, previous.since_)
        self.seen_ = end - self.since_
        if not self.memory:
            return
        keep = 0.5 ** (max(elapsed, 0.0) / self.memory)
        old = {m.kind: m for m in previous.members_}
        for m in self.members_:
            if m.kind in old:
                m.carry_extremes(old[m.kind], keep)

    def fit_metrics(self) -> dict:
        self._require_fitted()
        out: dict = {"members": [m.kind for m in self.members_]}
        for m in self.members_:
            out.update({f"{m.kind}.{k}": v for k, v in m.fit_metrics().items()})
        return out

    @property
    def last_t_(self) -> float:
        return self.members_[0].last_t_

    @property
    def step_(self) -> float:
        return self.members_[0].step_

    def score(self, t, y) -> ScoreFrame:
        self._require_fitted()
        t, y = check_t_y(t, y)
        frames = [m.score(t, y) for m in self.members_]
        scores = np.vstack([f.score for f in frames])
        has = ~np.isnan(scores).all(axis=0)
        best = np.argmax(np.where(np.isnan(scores), -np.inf, scores), axis=0)
        cols = np.arange(len(y))
        out = ScoreFrame(*(np.vstack([getattr(f, k) for f in frames])[best, cols] for k in FIELDS))
        out.score[~has] = np.nan
        return widen(out, self.widening_)

    @classmethod
    def prepare_points(cls, models, t, y):
        """``score`` for one point of many ensembles: each member kind prepares its share of the
        batch at once, the highest member of each ensemble wins as in ``score`` (ties to the earlier
        member), and the members' states move only once every kind has scored."""
        t, y = check_points(cls, models, t, y)
        if not models:
            return ScoreFrame.empty(0), lambda: None
        members: dict[type, tuple[list, list, list]] = {}  # member class -> (rows, columns, members)
        for i, m in enumerate(models):
            for j, member in enumerate(m.members_):
                rows, cols, group = members.setdefault(type(member), ([], [], []))
                rows.append(i)
                cols.append(j)
                group.append(member)
        shape = (len(models), max(len(m.members_) for m in models))
        cells = {k: np.full(shape, np.nan) for k in FIELDS}
        commits = []
        for member_cls, (rows, cols, group) in members.items():
            frame, commit = member_cls.prepare_points(group, t, y[rows])
            commits.append(commit)
            for k in FIELDS:
                cells[k][rows, cols] = getattr(frame, k)
        scores = cells["score"]
        has = ~np.isnan(scores).all(axis=1)
        best = np.argmax(np.where(np.isnan(scores), -np.inf, scores), axis=1)
        pick = np.arange(len(models))
        out = ScoreFrame(*(cells[k][pick, best] for k in FIELDS))
        out.score[~has] = np.nan
        widening = np.array([_widening(m.maturity, m.seen_) for m in models])
        return widen(out, widening), lambda: [c() for c in commits]

    def member_scores(self, t, y) -> dict[str, np.ndarray]:
        """Each fitted member's score of (t, y), for explaining which one fired (advances state)."""
        return {m.kind: m.score(t, y).score for m in self.members_}

    def get_state(self) -> dict:
        self._require_fitted()
        d = super().get_state()
        d["state"] = {"members_": [m.get_state() for m in self.members_], "since_": self.since_,
                      "seen_": self.seen_}
        return d

    @classmethod
    def from_state(cls, d: dict):
        states = (d.get("state") or {}).get("members_")
        if not isinstance(states, list):
            raise ValueError("ensemble: state lacks its members")
        model = super().from_state({**d, "state": {"members_": []}})
        model.members_ = [MEMBERS[s.get("kind")].from_state(s) if s.get("kind") in MEMBERS
                          else _bad_member(s) for s in states]
        # a state saved before the ensemble counted its history (no since_/seen_) is taken as mature
        seen = d["state"].get("seen_")
        model.seen_ = float(model.maturity if seen is None else seen)
        since = d["state"].get("since_")
        model.since_ = float(model.last_t_ - model.seen_ if since is None else since)
        return model


def _widening(maturity: float, seen: float) -> float:
    return float(np.sqrt(maturity / max(seen, 1.0))) if seen < maturity else 1.0


def widen(frame: ScoreFrame, factor) -> ScoreFrame:
    """`frame` with its band `factor` times as wide about the expected value and its scores divided
    by it, so > 1 still means outside the band drawn."""
    factor = np.asarray(factor, float)
    same = factor == 1.0
    if np.all(same):
        return frame
    # a mature model in a batch keeps its band exactly as scored alone (e - (e - l) * 1 may not be l)
    return ScoreFrame(score=frame.score / factor, expected=frame.expected,
                      lower=np.where(same, frame.lower, frame.expected - (frame.expected - frame.lower) * factor),
                      upper=np.where(same, frame.upper, frame.expected + (frame.upper - frame.expected) * factor))


def _bad_member(s) -> UnivariateModel:
    raise ValueError(f"ensemble: unknown member kind {s.get('kind') if isinstance(s, dict) else s!r} in state")
