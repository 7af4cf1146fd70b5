"""Rolling median/MAD z-score: the baseline for series without seasonality (and the stand-in for
any series with less history than its real model needs)."""
from __future__ import annotations

import numpy as np

from .base import ScoreFrame, UnivariateModel, band_score, check_t_y, median_step, ring_windows, window_median
from .batch import RingBufferPoints, attr_array, ring_commit, ring_median

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


def robust_scale(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return 0.0
    return MAD_TO_SIGMA * float(np.median(np.abs(x - np.median(x))))


def noise_floor(y: np.ndarray) -> float:
    """Point-to-point noise level (robust scale of first differences / sqrt 2).  A rolling MAD
    over a flat stretch can be 0; this floor keeps the first wiggle from scoring infinity."""
    y = y[~np.isnan(y)]
    if len(y) < 3:
        return 0.0
    return robust_scale(np.diff(y)) / np.sqrt(2.0)


def resolution(y: np.ndarray) -> float:
    """The smallest step the series was seen to take (its quantum: 1 for integer readings); 0 if
    it never moved."""
    d = np.abs(np.diff(y[~np.isnan(y)]))
    d = d[d > 0]
    return float(d.min()) if len(d) else 0.0


class RobustZ(RingBufferPoints, UnivariateModel):
    """Score = |y - rolling median| / (sensitivity * 1.4826 * rolling MAD) on the watched side.

    Online state is a ring buffer of the last ``window`` non-missing values; nothing else of the
    history is kept.  ``sensitivity`` is the band half-width in robust standard deviations.

    Heavy tails: fit also measures how far the history strays from its own rolling median (the
    ``tail_quantile`` of |y - causal rolling median|) and the band never gets narrower than
    ``tail_factor`` times that, so a spiky but healthy series does not alarm on its usual spikes.
    ``tail_factor=0`` gives the plain rolling z-score.

    Flat history: a series that never moved (a gauge pinned at one value, an idle counter rate)
    has a rolling MAD and a noise floor of 0, and the first real change would score ~1e11.  The
    scale therefore never drops below (a) half the series' resolution — the smallest step it was
    seen to take, so one quantum of an integer reading stays inside the band — and (b)
    ``relative_floor`` times the level, max(|rolling median|, |value|): on a flat series any change
    then scores at most ~1 / (sensitivity * relative_floor) (25 by default), large but finite, and
    a move of under ~4 % of the level stays normal.  ``relative_floor=0`` turns (b) off.
    """

    kind = "robust_z"
    version = 2  # 2: resolution_ (scale floor for flat histories)
    _state_attrs = ("buf_", "pos_", "count_", "floor_", "tail_", "last_t_", "step_", "resolution_")

    def __init__(self, sensitivity: float = 4.0, direction: str = "both", min_deviation: float = 0.0,
                 window: int = 120, min_periods: int = 10, floor_fraction: float = 0.5,
                 tail_quantile: float = 0.999, tail_factor: float = 1.0, relative_floor: float = 0.01):
        self.sensitivity = sensitivity
        self.direction = direction
        self.min_deviation = min_deviation
        self.window = window
        self.min_periods = min_periods
        self.floor_fraction = floor_fraction
        self.tail_quantile = tail_quantile
        self.tail_factor = tail_factor
        self.relative_floor = relative_floor

    def min_history(self, step_seconds: float = 60.0) -> int:
        return int(self.min_periods)

    def _check_params(self):
        self._check_common()
        if int(self.window) < 3:
            raise ValueError(f"robust_z: window must be >= 3, got {self.window!r}")
        if not 0.5 <= self.tail_quantile <= 1:
            raise ValueError(f"robust_z: tail_quantile must be in [0.5, 1], got {self.tail_quantile!r}")
        if not self.tail_factor >= 0:
            raise ValueError(f"robust_z: tail_factor must be >= 0, got {self.tail_factor!r}")
        rf = self.relative_floor
        if isinstance(rf, bool) or not isinstance(rf, (int, float)) or not 0 <= rf < 1:
            raise ValueError(f"robust_z: relative_floor must be a number in [0, 1), got {rf!r}")
        if not 1 <= int(self.min_periods) <= int(self.window):
            raise ValueError(f"robust_z: min_periods must be in 1..window, got {self.min_periods!r}")

    def fit(self, t, y):
        self._check_params()
        t, y = check_t_y(t, y)
        valid = y[~np.isnan(y)]
        w = int(self.window)
        self.buf_ = np.full(w, np.nan)
        tail = valid[-w:]
        self.buf_[: len(tail)] = tail
        self.count_ = int(len(tail))
        self.pos_ = int(len(tail) % w)
        self.floor_ = float(self.floor_fraction * noise_floor(valid))
        self.resolution_ = resolution(valid)
        self.tail_ = 0.0
        if self.tail_factor > 0 and len(valid) > self.min_periods:
            import pandas as pd

            med = pd.Series(valid).rolling(w, min_periods=int(self.min_periods)).median().shift(1)
            dev = np.abs(valid - med.to_numpy())
            dev = dev[~np.isnan(dev)]
            if len(dev):
                self.tail_ = float(np.quantile(dev, self.tail_quantile))
        self.step_ = median_step(t)
        self.last_t_ = float(t[-1]) if len(t) else float("nan")
        return self

    def fit_metrics(self) -> dict:
        self._require_fitted()
        return {"noise_floor": self.floor_, "tail": self.tail_, "buffered": self.count_,
                "resolution": self.resolution_}

    def score(self, t, y) -> ScoreFrame:
        self._require_fitted()
        t, y = check_t_y(t, y)
        n = len(y)
        expected = np.full(n, np.nan)
        scale = np.full(n, np.nan)
        buf, w = self.buf_, len(self.buf_)
        # the rolling median and MAD of the buffer as it stood before each point, all at once
        rows, held = ring_windows(buf, self.pos_, self.count_, y)
        ok = held >= self.min_periods
        if ok.any():
            med = window_median(rows, held, w)
            mad = window_median(np.abs(rows - med[:, None]), held, w)
            level = np.where(np.isnan(y), np.abs(med), np.maximum(np.abs(med), np.abs(y)))
            fixed = max(self.floor_, self.tail_factor * self.tail_ / self.sensitivity, 0.5 * self.resolution_)
            expected[ok] = med[ok]
            scale[ok] = np.maximum(np.maximum(MAD_TO_SIGMA * mad, fixed), self.relative_floor * level)[ok]
        for i in range(n):
            if not np.isnan(y[i]):
                buf[self.pos_] = y[i]
                self.pos_ = (self.pos_ + 1) % w
                self.count_ = min(self.count_ + 1, w)
        if n:
            self.last_t_ = float(t[-1])
        frame = band_score(y, expected, scale, self.sensitivity, self.direction, self.min_deviation)
        # too little history yet: no opinion rather than a made-up one
        frame.score[np.isnan(expected)] = np.nan
        return frame

    @classmethod
    def _prepare_group(cls, models, t, y):
        med, rows, held, w = ring_median(models)
        sens = attr_array(models, "sensitivity")
        ok = held >= attr_array(models, "min_periods")
        expected = np.where(ok, med, np.nan)
        scale = np.full(len(models), np.nan)
        if ok.any():
            mad = window_median(np.abs(rows - med[:, None]), held, w)
            level = np.where(np.isnan(y), np.abs(med), np.maximum(np.abs(med), np.abs(y)))
            fixed = np.maximum(np.maximum(attr_array(models, "floor_"),
                                          attr_array(models, "tail_factor") * attr_array(models, "tail_") / sens),
                               0.5 * attr_array(models, "resolution_"))
            scale = np.where(ok, np.maximum(np.maximum(MAD_TO_SIGMA * mad, fixed),
                                            attr_array(models, "relative_floor") * level), np.nan)
        frame = band_score(y, expected, scale, sens, models[0].direction, attr_array(models, "min_deviation"))
        frame.score[np.isnan(expected)] = np.nan
        return frame, ring_commit(models, y, t)
