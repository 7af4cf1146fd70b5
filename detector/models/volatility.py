"""Volatility shift: the typical step of the last few points against the typical step before them.

A series can stay at its level and inside its seen range and still change: a stable latency starts
to jitter, a smooth request rate turns ragged, a sensor starts to chatter. A point model's band is
wide from everyday swings, a level-shift model compares medians (the same level), a novelty model
the range (the same range): none of them asks whether the series has become *more volatile*.

This model is level_shift applied to the step sizes |y_i - y_i-1|:

    shift_i = median(last `window` steps) - median(the `baseline` steps before them)

scored against the largest such shifts of the training window (its ``tail_quantile``), so > 1 means
"the typical step grew more than it ever grew in training". ``direction`` applies to the step size:
``up`` (the default) watches a series becoming more volatile, ``down`` one going still (a stuck
sensor), ``both`` either. The median of the last `window` steps needs half of them large: one spike
(two large steps) is the point models' business, not this one's.

The band drawn is about the previous value: how far the next value may step from it (the baseline's
typical step plus the band's half-width). The score is that of the typical step of the last
`window` points, so one value outside that band does not by itself score > 1, and a volatile stretch
scores > 1 on values inside it.

What it cannot see: a change of level or range without a change of step size (level_shift,
value_novelty), a single spike, a change of shape at the same volatility. State: the previous value
and the last ``window + baseline`` steps.
"""
from __future__ import annotations

import numpy as np

from .base import ScoreFrame, check_t_y
from .batch import attr_array
from .level_shift import LevelShift


class VolatilityShift(LevelShift):
    kind = "volatility_shift"
    version = 1
    _state_attrs = LevelShift._state_attrs + ("prev_",)

    def __init__(self, sensitivity: float = 1.0, direction: str = "up", min_deviation: float = 0.0,
                 window: int = 12, baseline: int = 144, tail_quantile: float = 0.999,
                 relative_floor: float = 0.01):
        super().__init__(sensitivity=sensitivity, direction=direction, min_deviation=min_deviation,
                         window=window, baseline=baseline, tail_quantile=tail_quantile,
                         relative_floor=relative_floor)

    def min_history(self, step_seconds: float = 60.0) -> int:
        return super().min_history(step_seconds) + 1  # n values make n - 1 steps

    def fit(self, t, y):
        self._check_params()
        t, y = check_t_y(t, y)
        ok = ~np.isnan(y)
        x, tx = y[ok], t[ok]
        if len(x) < 2:
            raise ValueError("volatility_shift: need at least 2 non-missing points to fit")
        super().fit(tx[1:], np.abs(np.diff(x)))
        self.last_t_ = float(t[-1])
        self.prev_ = float(x[-1])
        return self

    def score(self, t, y) -> ScoreFrame:
        self._require_fitted()
        t, y = check_t_y(t, y)
        ok = ~np.isnan(y)
        # the value each point steps from: the last non-missing one before it (a gap is one step)
        before = np.concatenate([[self.prev_], y[ok]])[:-1]
        prev = np.full(len(y), np.nan)
        prev[ok] = before
        frame = super().score(t, np.abs(y - prev))
        if ok.any():
            self.prev_ = float(y[ok][-1])
        return _about_previous(frame, prev)

    @classmethod
    def _prepare_group(cls, models, t, y):
        """``y`` here are the values (LevelShift.prepare_points groups them); they become steps."""
        w, b = int(models[0].window), int(models[0].baseline)
        if len(models[0].hist_) != w + b - 1:  # a history shorter than the windows: the general path
            return super(LevelShift, cls).prepare_points(models, t, y)
        prev = attr_array(models, "prev_")
        frame, commit_steps = super()._prepare_group(models, t, np.abs(y - prev))

        def commit():
            commit_steps()
            for m, v in zip(models, y, strict=True):
                if v == v:  # a missing value moves nothing, as in score
                    m.prev_ = float(v)
        return _about_previous(frame, np.where(np.isnan(y), np.nan, prev)), commit


def _about_previous(steps: ScoreFrame, prev: np.ndarray) -> ScoreFrame:
    """A frame over step sizes as one over values: expected the previous value, the band how far a
    step from it may reach (the step band's upper edge); the scores stay those of the steps."""
    reach = steps.upper
    return ScoreFrame(score=steps.score, expected=np.where(np.isnan(steps.score), np.nan, prev),
                      lower=prev - reach, upper=prev + reach)
