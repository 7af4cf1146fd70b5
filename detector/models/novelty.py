"""Value novelty: a value outside the range the training window ever reached.

Many faults show as a value the series has never taken — a latency ten times its worst, a counter
rate dropping to zero on a series that never idled — and a point model can miss them when its
band is wide from everyday noise. This model remembers only the training window's range
[lo, hi] (its ``quantile`` and 1 - ``quantile``: 1.0 = min and max) and scores how far a value
lies beyond it, in units of ``sensitivity * margin`` times the range's span:

    score = distance outside [lo, hi] / (sensitivity * margin * span)      (0 inside)

so > 1 means "beyond anything seen, by more than a tenth of the usual span". The span never drops
below the series' noise, resolution or ``relative_floor`` of its level (a flat series still gets a
finite score). The band drawn is [lo - margin*span, hi + margin*span].

What it cannot see: anything inside the seen range (a drop to a level seen before, a spike no
higher than the last one, a change of rhythm); an anomaly kept in the training window widens the
range until it leaves the lookback.
"""
from __future__ import annotations

import numpy as np

from .base import ScoreFrame, UnivariateModel, check_t_y, median_step
from .batch import attr_array, check_points, score_points_by
from .robust import noise_floor, resolution


class ValueNovelty(UnivariateModel):
    kind = "value_novelty"
    version = 1
    _state_attrs = ("lo_", "hi_", "span_", "last_t_", "step_", "n_fit_")

    def __init__(self, sensitivity: float = 1.0, direction: str = "both", min_deviation: float = 0.0,
                 margin: float = 0.1, quantile: float = 1.0, relative_floor: float = 0.01,
                 min_points: int = 100):
        self.sensitivity = sensitivity
        self.direction = direction
        self.min_deviation = min_deviation
        self.margin = margin
        self.quantile = quantile
        self.relative_floor = relative_floor
        self.min_points = min_points

    def _check_params(self):
        self._check_common()
        if not self.margin > 0:
            raise ValueError(f"value_novelty: margin must be > 0, got {self.margin!r}")
        if not 0.5 < self.quantile <= 1:
            raise ValueError(f"value_novelty: quantile must be in (0.5, 1], got {self.quantile!r}")
        if not 0 <= self.relative_floor < 1:
            raise ValueError(f"value_novelty: relative_floor must be in [0, 1), got {self.relative_floor!r}")
        if int(self.min_points) < 2:
            raise ValueError(f"value_novelty: min_points must be >= 2, got {self.min_points!r}")

    def min_history(self, step_seconds: float = 60.0) -> int:
        return int(self.min_points)

    def fit(self, t, y):
        self._check_params()
        t, y = check_t_y(t, y)
        x = y[~np.isnan(y)]
        if len(x) < 2:
            raise ValueError("value_novelty: need at least 2 non-missing points to fit")
        self.lo_ = float(np.quantile(x, 1 - self.quantile))
        self.hi_ = float(np.quantile(x, self.quantile))
        level = max(abs(self.lo_), abs(self.hi_))
        self.span_ = max(self.hi_ - self.lo_, noise_floor(x), resolution(x), self.relative_floor * level, 1e-12)
        self.last_t_ = float(t[-1])
        self.step_ = median_step(t)
        self.n_fit_ = int(len(x))
        return self

    def carry_extremes(self, previous: ValueNovelty, keep: float) -> None:
        """Widen the seen range by `keep` of how far the previous one reached beyond it."""
        self.lo_ = min(self.lo_, self.lo_ + keep * (previous.lo_ - self.lo_))
        self.hi_ = max(self.hi_, self.hi_ + keep * (previous.hi_ - self.hi_))
        self.span_ = max(self.span_, self.hi_ - self.lo_)

    def fit_metrics(self) -> dict:
        self._require_fitted()
        return {"low": self.lo_, "high": self.hi_, "span": self.span_, "n_fit": self.n_fit_}

    def score(self, t, y) -> ScoreFrame:
        self._require_fitted()
        t, y = check_t_y(t, y)
        half = max(self.sensitivity * self.margin * self.span_, self.min_deviation, 1e-12)
        above, below = np.maximum(y - self.hi_, 0.0), np.maximum(self.lo_ - y, 0.0)
        dev = {"up": above, "down": below}.get(self.direction, np.maximum(above, below))
        lower, upper = self.lo_ - half, self.hi_ + half
        score = np.where(np.isnan(y), np.nan, dev / half)
        n = len(y)
        if n:
            self.last_t_ = float(t[-1])
        return ScoreFrame(score=score, expected=np.clip(y, self.lo_, self.hi_),
                          lower=np.full(n, lower), upper=np.full(n, upper))

    @classmethod
    def prepare_points(cls, models, t, y):
        t, y = check_points(cls, models, t, y)
        return score_points_by(models, t, y, lambda m: m.direction, cls._prepare_group)

    @classmethod
    def _prepare_group(cls, models, t, y):
        lo, hi = attr_array(models, "lo_"), attr_array(models, "hi_")
        half = np.maximum(np.maximum(attr_array(models, "sensitivity") * attr_array(models, "margin")
                                     * attr_array(models, "span_"), attr_array(models, "min_deviation")), 1e-12)
        above, below = np.maximum(y - hi, 0.0), np.maximum(lo - y, 0.0)
        dev = {"up": above, "down": below}.get(models[0].direction, np.maximum(above, below))

        def commit():
            for m in models:
                m.last_t_ = t
        return ScoreFrame(score=np.where(np.isnan(y), np.nan, dev / half), expected=np.clip(y, lo, hi),
                          lower=lo - half, upper=hi + half), commit
