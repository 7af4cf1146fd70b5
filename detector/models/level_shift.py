"""Level shift: the median of the last few points against the median of the stretch before them.

A point model (robust_z, seasonal_esd) judges each value on its own, so a series that settles at a
new level is anomalous for as long as the model's own baseline takes to follow — or, on a noisy
series whose band is wide, never. This model asks a different question: has the *level* moved?

    shift_i = median(last `window` values) - median(the `baseline` values before them)

and scores |shift| against what the training data's own shifts reached: the band's half-width is
``sensitivity`` times the ``tail_quantile`` of |shift| over the training window (the same
heavy-tail calibration seasonal_esd uses), never below the series' point-to-point noise, its
resolution or ``relative_floor`` of its level. So > 1 means "the level moved further than it moved
in all but 0.1 % of the training window" — a daily ramp seen every day is no shift, a new plateau is.

What it cannot see: a single spike (the short median ignores it: that is the point models' job), a
change of variance around the same level (only on a steep ramp can the noisier medians add enough
to the ramp's own shift to cross the band — incidentally, not as a variance test), a change of
seasonal phase. Scores are causal; the state
is the last ``window + baseline`` non-missing values.
"""
from __future__ import annotations

import numpy as np

from .base import ScoreFrame, UnivariateModel, band_score, check_t_y, median_step
from .batch import attr_array, check_points, score_points_by
from .robust import noise_floor, resolution

_LONG = 1000  # rolling medians over this many windows or more go through pandas


def rolling_medians(x: np.ndarray, w: int) -> np.ndarray:
    """median(x[j:j+w]) for every j (len(x) - w + 1 values; empty when len(x) < w)."""
    if len(x) < w:
        return np.zeros(0)
    if len(x) - w >= _LONG:
        # a fit's week of points: pandas' skip-list median is O(n log w) and gives the same values
        # (a 144-point baseline over 10,080 points: 2.6 ms against numpy's 25 ms)
        import pandas as pd
        return pd.Series(x).rolling(w).median().to_numpy()[w - 1:]
    return np.median(np.lib.stride_tricks.sliding_window_view(x, w), axis=1)


def medians(x: np.ndarray, window: int, baseline: int) -> tuple[np.ndarray, np.ndarray]:
    """For each index i >= window + baseline - 1 of the gap-free series x: (short median, baseline
    median), as arrays aligned on x[window + baseline - 1:]; the shift is their difference."""
    short = rolling_medians(x, window)[baseline:]
    base = rolling_medians(x[:-window] if window else x, baseline)
    n = min(len(short), len(base))
    return short[:n], base[:n]


class LevelShift(UnivariateModel):
    kind = "level_shift"
    version = 1
    _state_attrs = ("hist_", "scale_", "last_t_", "step_", "n_fit_")

    def __init__(self, sensitivity: float = 1.0, direction: str = "both", min_deviation: float = 0.0,
                 window: int = 5, baseline: int = 60, tail_quantile: float = 0.999,
                 relative_floor: float = 0.01):
        self.sensitivity = sensitivity
        self.direction = direction
        self.min_deviation = min_deviation
        self.window = window
        self.baseline = baseline
        self.tail_quantile = tail_quantile
        self.relative_floor = relative_floor

    def _check_params(self):
        self._check_common()
        if int(self.window) < 1 or int(self.baseline) < 2:
            raise ValueError(f"{self.kind}: window must be >= 1 and baseline >= 2 points, "
                             f"got {self.window!r}, {self.baseline!r}")
        if not 0.5 <= self.tail_quantile <= 1:
            raise ValueError(f"{self.kind}: tail_quantile must be in [0.5, 1], got {self.tail_quantile!r}")
        if not 0 <= self.relative_floor < 1:
            raise ValueError(f"{self.kind}: relative_floor must be in [0, 1), got {self.relative_floor!r}")

    def min_history(self, step_seconds: float = 60.0) -> int:
        # a calibration needs many shifts to take a tail quantile of
        return 4 * (int(self.window) + int(self.baseline))

    def fit(self, t, y):
        self._check_params()
        t, y = check_t_y(t, y)
        x = y[~np.isnan(y)]
        w, b = int(self.window), int(self.baseline)
        if len(x) < w + b + 1:
            raise ValueError(f"{self.kind}: need more than {w + b} non-missing points to fit, got {len(x)}")
        short, base = medians(x, w, b)
        tail = float(np.quantile(np.abs(short - base), self.tail_quantile)) if len(short) else 0.0
        level = float(np.median(np.abs(x)))
        self.scale_ = max(tail, noise_floor(x), 0.5 * resolution(x), self.relative_floor * level, 1e-12)
        self.hist_ = x[-(w + b - 1):].copy() if w + b > 1 else np.zeros(0)
        self.last_t_ = float(t[-1])
        self.step_ = median_step(t)
        self.n_fit_ = int(len(x))
        return self

    def carry_extremes(self, previous: LevelShift, keep: float) -> None:
        """The larger of this fit's shift scale and `keep` of the previous one's."""
        self.scale_ = max(self.scale_, keep * previous.scale_)

    def fit_metrics(self) -> dict:
        self._require_fitted()
        return {"shift_scale": self.scale_, "n_fit": self.n_fit_}

    def score(self, t, y) -> ScoreFrame:
        self._require_fitted()
        t, y = check_t_y(t, y)
        n = len(y)
        frame = ScoreFrame.empty(n)
        ok = ~np.isnan(y)
        if not ok.any():
            return frame
        w, b = int(self.window), int(self.baseline)
        x = np.concatenate([self.hist_, y[ok]])
        short, base = medians(x, w, b)
        short, base = short[-int(ok.sum()):], base[-int(ok.sum()):]
        got = len(short)  # fewer than the new points only when the history was short
        idx = np.nonzero(ok)[0][-got:] if got else np.zeros(0, int)
        # the band convention, applied to the short median against the baseline's
        shifted = band_score(short, base, self.scale_, self.sensitivity, self.direction, self.min_deviation)
        frame.put(idx, shifted)
        keep = w + b - 1
        self.hist_ = x[-keep:].copy() if keep else np.zeros(0)
        self.last_t_ = float(t[-1])
        return frame

    @classmethod
    def prepare_points(cls, models, t, y):
        t, y = check_points(cls, models, t, y)
        return score_points_by(models, t, y, lambda m: (m.direction, int(m.window), int(m.baseline), len(m.hist_)),
                               cls._prepare_group)

    @classmethod
    def _prepare_group(cls, models, t, y):
        w, b = int(models[0].window), int(models[0].baseline)
        if len(models[0].hist_) != w + b - 1:  # a history shorter than the windows: the general path
            return super().prepare_points(models, t, y)
        frame = ScoreFrame.empty(len(models))
        ok = ~np.isnan(y)
        if not ok.any():
            return frame, lambda: None
        moved = [m for m, k in zip(models, ok, strict=True) if k]
        x = np.column_stack([np.stack([m.hist_ for m in moved]), y[ok]])
        shifted = band_score(np.median(x[:, b:], axis=1), np.median(x[:, :b], axis=1),
                             attr_array(moved, "scale_"), attr_array(moved, "sensitivity"), models[0].direction,
                             attr_array(moved, "min_deviation"))
        frame.put(ok, shifted)

        def commit():  # a missing value moves nothing, as in score
            for m, row in zip(moved, x, strict=True):
                m.hist_ = row[1:].copy()
                m.last_t_ = t
        return frame, commit
