"""Seasonal hybrid ESD: seasonal decomposition + generalized ESD (Rosner 1983) on robust residuals.

Fit (on e.g. 7 days of 1-minute data):

1. put the samples on a regular grid at their median step (gaps stay NaN);
2. take the period from the data (:func:`detect_period`: autocorrelation at the calendar periods —
   day, week, hour — else the strongest autocorrelation peak; no clear peak = not seasonal);
3. decompose.  ``method="stl"`` is statsmodels' STL at full resolution (seconds per series: too
   slow for hundreds of series).  ``method="fast"`` (default) runs STL on a copy downsampled to at
   most ``max_coarse_period`` points per period with R's jump settings (each loess evaluated every
   ~tenth of its window and interpolated), takes its trend back to full resolution, and estimates
   the seasonal part at full resolution as a *robust seasonal profile*: the per-phase median of the
   detrended series over all cycles, lightly smoothed across neighbouring phases.  The median makes
   the profile immune to the anomalies in the training window, which full STL smears into its
   seasonal and trend;
4. run generalized ESD with median/MAD (Twitter's "hybrid" variant) on the residuals: the fit's
   own anomalies (``fit_anomalies_``) are excluded from the residual scale.

Heavy tails: real series are spikier than a Gaussian, and a band of ~5 robust sigmas alarms on
their everyday spikes.  The band is therefore never narrower than ``tail_factor`` times the
``tail_quantile`` (default 99.9th percentile) of the training window's own absolute residuals —
"a new point must stray further than all but 0.1 % of the last week did".  On NAB this single
change took the causal score at threshold 1 from 24 to 56 (see bench/bench_nab.py).

Scoring is causal and needs only the compact state: the seasonal profile (one period), a ring
buffer of the last ``trend_window`` deseasonalised values (the trend is their median, so a level
shift is followed after half a window) and the residual scale.  A new point's score is its robust
residual z divided by the ESD critical value for the fitted sample size at ``alpha`` (or by
``sensitivity`` when set), so > 1 means "ESD would call this an outlier".
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from .base import ScoreFrame, UnivariateModel, band_score, check_t_y, median_step, ring_windows, window_median
from .batch import RingBufferPoints, attr_array, ring_commit, ring_median
from .robust import MAD_TO_SIGMA, noise_floor

CALENDAR_PERIODS = (86400.0, 604800.0, 3600.0)  # day first: the usual rhythm of a home lab


# --------------------------------------------------------------------------------------------
# regular grid and period detection
# --------------------------------------------------------------------------------------------
def to_grid(t: np.ndarray, y: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """-> (grid index of each sample, values on the regular grid with NaN in gaps)."""
    idx = np.rint((t - t[0]) / step).astype(np.int64)
    grid = np.full(int(idx[-1]) + 1, np.nan)
    grid[idx] = y  # a duplicate grid slot keeps the later sample
    return idx, grid


def fill_gaps(y: np.ndarray) -> np.ndarray:
    """Linear interpolation over NaN (edges held); all-NaN gives zeros."""
    ok = ~np.isnan(y)
    if ok.all():
        return y
    if not ok.any():
        return np.zeros_like(y)
    x = np.arange(len(y))
    return np.interp(x, x[ok], y[ok])


def autocorrelation(y: np.ndarray, max_lag: int) -> np.ndarray:
    x = fill_gaps(y)
    # a linear trend makes every lag look correlated
    x = x - np.polyval(np.polyfit(np.arange(len(x)), x, 1), np.arange(len(x)))
    n = len(x)
    f = np.fft.rfft(x, 2 ** int(np.ceil(np.log2(2 * n))))
    acf = np.fft.irfft(f * np.conj(f))[: max_lag + 1]
    if acf[0] <= 0:
        return np.zeros(max_lag + 1)
    return acf / acf[0] * n / (n - np.arange(max_lag + 1))  # unbiased: lags see fewer pairs


def detect_period(y_grid: np.ndarray, step: float, min_acf: float = 0.3) -> int | None:
    """Season length in grid points, or None when the data show none.

    Calendar periods (day, week, hour) that fit twice in the data win when their autocorrelation
    reaches ``min_acf``; otherwise the strongest autocorrelation peak does if it reaches
    ``min_acf + 0.1``.  The fallback for data without a clear peak is "not seasonal": a made-up
    period would put a fake pattern into the expected value.
    """
    n = len(y_grid)
    if n < 16 or np.count_nonzero(~np.isnan(y_grid)) < 16:
        return None
    max_lag = n // 2
    acf = autocorrelation(y_grid, max_lag)
    best, best_val = None, -1.0
    for period_s in CALENDAR_PERIODS:
        lag = int(round(period_s / step))
        if lag < 4 or lag > max_lag:
            continue
        tol = max(1, lag // 50)
        lo, hi = lag - tol, min(lag + tol, max_lag)
        j = lo + int(np.argmax(acf[lo: hi + 1]))
        if acf[j] >= min_acf and acf[j] > best_val + 0.05:
            best, best_val = lag, float(acf[j])
    if best is not None:
        return best
    # strongest local maximum after the first zero crossing
    neg = np.nonzero(acf[1:] <= 0)[0]
    start = int(neg[0]) + 1 if len(neg) else max_lag
    if start >= max_lag - 1:
        return None
    seg = acf[start: max_lag]
    j = int(np.argmax(seg))
    lag = start + j
    if seg[j] >= min_acf + 0.1 and lag >= 4 and 2 * lag <= n:
        return lag
    return None


# --------------------------------------------------------------------------------------------
# generalized ESD
# --------------------------------------------------------------------------------------------
def esd_critical_values(n: int, k: int, alpha: float, two_sided: bool = True) -> np.ndarray:
    """Rosner's lambda_i, i = 1..k, for a sample of n."""
    from scipy.stats import t as student_t

    i = np.arange(1, k + 1)
    m = n - i + 1  # points left when testing the i-th
    p = 1 - alpha / ((2 if two_sided else 1) * m)
    df = np.maximum(m - 2, 1)
    tq = student_t.ppf(p, df)
    return (m - 1) * tq / np.sqrt((df + tq ** 2) * m)


def _kth_distance(s: np.ndarray, split: int, lo: int, hi: int, center: float, k: int) -> float:
    """k-th smallest (0-based) of |s[lo:hi] - center| for sorted s, with s[lo:split] < center
    <= s[split:hi].  The distances below and above the center are two ascending sequences; a
    binary search on how many come from below finds the k-th in O(log n)."""
    na, nb = split - lo, hi - split  # counts below / above

    def below(i):
        return center - s[split - 1 - i]

    def above(j):
        return s[split + j] - center

    left, right = max(0, k + 1 - nb), min(k + 1, na)
    while left < right:
        i = (left + right) // 2
        j = k + 1 - i
        if j > 0 and i < na and below(i) < above(j - 1):
            left = i + 1
        else:
            right = i
    i, j = left, k + 1 - left
    return max(below(i - 1) if i > 0 else -np.inf, above(j - 1) if j > 0 else -np.inf)


def generalized_esd(x, max_anomalies: float | int = 0.02, alpha: float = 0.05,
                    side: str = "both", hybrid: bool = True) -> np.ndarray:
    """Indices (into x) of the outliers found by generalized ESD, most extreme first.

    ``max_anomalies``: upper bound on outliers, as a count or a fraction of the sample.
    ``hybrid``: median/MAD instead of mean/sd (Twitter's S-H-ESD) so that the outliers do not
    mask each other.  ``side``: "both", "up" (only high values) or "down".

    The point farthest from the median is always the smallest or the largest left, so the
    remaining sample is a contiguous range of the sorted data: median is O(1) and MAD a
    k-th-of-two-sorted-lists search, O(n log n) in all instead of O(n k).
    """
    x = np.asarray(x, float)
    valid = np.nonzero(~np.isnan(x))[0]
    n = len(valid)
    k = int(max_anomalies if max_anomalies >= 1 else math.floor(max_anomalies * n))
    k = min(k, n - 3)
    if k < 1:
        return np.array([], dtype=np.int64)
    order = np.argsort(x[valid], kind="stable")
    s = x[valid][order]
    lo, hi = 0, n  # remaining = s[lo:hi]
    removed, stats = [], []
    for _ in range(k):
        N = hi - lo
        mid = lo + N // 2
        if hybrid:
            center = s[mid] if N % 2 else 0.5 * (s[mid - 1] + s[mid])
            split = int(np.searchsorted(s[lo:hi], center, "left")) + lo
            if N % 2:
                mad = _kth_distance(s, split, lo, hi, center, N // 2)
            else:
                mad = 0.5 * (_kth_distance(s, split, lo, hi, center, N // 2 - 1)
                             + _kth_distance(s, split, lo, hi, center, N // 2))
            spread = MAD_TO_SIGMA * mad
        else:
            seg = s[lo:hi]
            center, spread = float(seg.mean()), float(seg.std(ddof=1))
        d_low, d_high = center - s[lo], s[hi - 1] - center
        if side == "up" or (side == "both" and d_high >= d_low):
            d, pick = d_high, hi - 1
            hi -= 1
        else:
            d, pick = d_low, lo
            lo += 1
        if side == "up" and d <= 0 or side == "down" and d <= 0:
            stats.append(0.0)
        elif spread > 0:
            stats.append(d / spread)
        else:
            stats.append(np.inf if d > 0 else 0.0)
        removed.append(pick)
    lam = esd_critical_values(n, k, alpha, two_sided=(side == "both"))
    above_crit = np.nonzero(np.asarray(stats) > lam)[0]
    n_out = int(above_crit[-1]) + 1 if len(above_crit) else 0
    return valid[order[np.asarray(removed[:n_out], dtype=np.int64)]]


# --------------------------------------------------------------------------------------------
# decomposition
# --------------------------------------------------------------------------------------------
def _odd(n: int) -> int:
    return int(n) + (int(n) % 2 == 0)


def stl_jump_kwargs(period: int, seasonal: int = 7) -> dict:
    """R's stl() defaults: evaluate each loess every ceil(window / 10) points."""
    trend = _odd(math.ceil(1.5 * period / (1 - 1.5 / seasonal)))
    low_pass = _odd(period + 1)
    return dict(seasonal=seasonal, seasonal_jump=max(1, math.ceil(seasonal / 10)),
                trend_jump=max(1, math.ceil(trend / 10)), low_pass_jump=max(1, math.ceil(low_pass / 10)))


def _circular_smooth(profile: np.ndarray, width: int) -> np.ndarray:
    if width <= 1:
        return profile
    k = np.ones(width) / width
    h = width // 2
    ext = np.concatenate([profile[-h:], profile, profile[: width - 1 - h]]) if h else profile
    return np.convolve(ext, k, mode="valid")


def decompose(y_grid: np.ndarray, period: int | None, method: str = "fast",
              max_coarse_period: int = 288) -> tuple[np.ndarray, np.ndarray]:
    """-> (trend, seasonal) on the grid.  Non-seasonal (period None): a robust running trend."""
    from statsmodels.tsa.seasonal import STL

    n = len(y_grid)
    filled = fill_gaps(y_grid)
    if period is None or period < 2 or n < 2 * period:
        import pandas as pd

        w = max(3, min(n, 61))
        trend = pd.Series(filled).rolling(w, center=True, min_periods=1).median().to_numpy()
        return trend, np.zeros(n)
    if method == "stl":
        res = STL(filled, period=period).fit()
        return np.asarray(res.trend), np.asarray(res.seasonal)
    if method == "stl_jump":
        res = STL(filled, period=period, **stl_jump_kwargs(period)).fit()
        return np.asarray(res.trend), np.asarray(res.seasonal)
    if method != "fast":
        raise ValueError(f"seasonal_esd: method must be 'fast', 'stl_jump' or 'stl', got {method!r}")
    f = max(1, math.ceil(period / max_coarse_period))
    cp = max(2, int(round(period / f)))
    m = n // f
    if f > 1 and m >= 2 * cp:
        coarse = filled[: m * f].reshape(m, f).mean(axis=1)
        res = STL(coarse, period=cp, **stl_jump_kwargs(cp)).fit()
        centers = np.arange(m) * f + (f - 1) / 2.0
        trend = np.interp(np.arange(n), centers, np.asarray(res.trend))
    else:
        f = 1
        res = STL(filled, period=period, **stl_jump_kwargs(period)).fit()
        trend = np.asarray(res.trend)
    detrended = y_grid - trend  # NaN gaps stay out of the profile
    cycles = math.ceil(n / period)
    pad = np.full(cycles * period, np.nan)
    pad[:n] = detrended
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN phase: filled below
        profile = np.nanmedian(pad.reshape(cycles, period), axis=0)
    profile = fill_gaps(profile)
    profile = _circular_smooth(profile, f)
    profile -= profile.mean()
    seasonal = np.resize(profile, n)
    return trend, seasonal


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------
class SeasonalESD(RingBufferPoints, UnivariateModel):
    """Seasonal hybrid ESD with causal online scoring; see the module docstring.

    ``sensitivity``: band half-width in robust standard deviations; None (default) uses the ESD
    critical value for the fitted sample at ``alpha`` (about 4.9 for a week of minutes).
    ``period``: season length in seconds, None = take it from the data.
    ``trend_window``: points in the online trend's rolling median.
    """

    kind = "seasonal_esd"
    version = 1
    _state_attrs = ("period_", "profile_", "t0_", "step_", "scale_", "center_", "z_threshold_",
                    "tail_", "buf_", "pos_", "count_", "last_t_", "n_fit_", "fit_anomalies_")

    def __init__(self, sensitivity: float | None = None, direction: str = "both",
                 min_deviation: float = 0.0, alpha: float = 0.05, max_anomalies: float = 0.02,
                 period: float | None = None, trend_window: int = 60, method: str = "fast",
                 max_coarse_period: int = 288, tail_quantile: float = 0.999, tail_factor: float = 1.0):
        self.sensitivity = sensitivity
        self.direction = direction
        self.min_deviation = min_deviation
        self.alpha = alpha
        self.max_anomalies = max_anomalies
        self.period = period
        self.trend_window = trend_window
        self.method = method
        self.max_coarse_period = max_coarse_period
        self.tail_quantile = tail_quantile
        self.tail_factor = tail_factor

    def _check_params(self):
        self._check_common()
        if not 0 < self.alpha < 1:
            raise ValueError(f"seasonal_esd: alpha must be in (0, 1), got {self.alpha!r}")
        if not 0 <= self.max_anomalies < 0.5 and not (1 <= self.max_anomalies):
            raise ValueError(f"seasonal_esd: max_anomalies must be a fraction < 0.5 or a count, "
                             f"got {self.max_anomalies!r}")
        if self.period is not None and not self.period > 0:
            raise ValueError(f"seasonal_esd: period must be > 0 seconds or null, got {self.period!r}")
        if not 0.5 <= self.tail_quantile <= 1:
            raise ValueError(f"seasonal_esd: tail_quantile must be in [0.5, 1], got {self.tail_quantile!r}")
        if not self.tail_factor >= 0:
            raise ValueError(f"seasonal_esd: tail_factor must be >= 0, got {self.tail_factor!r}")
        if int(self.trend_window) < 1:
            raise ValueError(f"seasonal_esd: trend_window must be >= 1, got {self.trend_window!r}")
        if self.method not in ("fast", "stl_jump", "stl"):
            raise ValueError(f"seasonal_esd: method must be 'fast', 'stl_jump' or 'stl', got {self.method!r}")

    def min_history(self, step_seconds: float = 60.0) -> int:
        period_s = self.period if self.period is not None else CALENDAR_PERIODS[0]
        return 2 * int(math.ceil(period_s / step_seconds))

    # -- fit ------------------------------------------------------------------------------------
    def decompose(self, t, y):
        """Batch decomposition of (t, y) -> dict(idx, grid, trend, seasonal, resid, period, step)."""
        self._check_params()
        t, y = check_t_y(t, y)
        if np.count_nonzero(~np.isnan(y)) < 3:
            raise ValueError("seasonal_esd: need at least 3 non-missing points to fit")
        step = median_step(t)
        idx, grid = to_grid(t, y, step)
        if self.period is not None:
            period = int(round(self.period / step))
            period = period if period >= 2 and len(grid) >= 2 * period else None
        else:
            period = detect_period(grid, step)
        trend, seasonal = decompose(grid, period, self.method, int(self.max_coarse_period))
        return dict(idx=idx, grid=grid, trend=trend, seasonal=seasonal,
                    resid=grid - trend - seasonal, period=period, step=step)

    def detect(self, t, y) -> np.ndarray:
        """Batch S-H-ESD over the whole window (not causal): boolean mask of outliers in y."""
        d = self.decompose(t, y)
        out = generalized_esd(d["resid"], self.max_anomalies, self.alpha, side=self.direction)
        grid_mask = np.zeros(len(d["grid"]), bool)
        grid_mask[out] = True
        return grid_mask[d["idx"]]

    def fit(self, t, y):
        d = self.decompose(t, y)
        t = np.asarray(t, float)
        period = d["period"] or 1
        step, grid = d["step"], d["grid"]
        n = len(grid)
        phase = np.arange(n) % period
        if d["period"]:
            # the most recent cycle, indexed by phase (STL's seasonal may drift between cycles)
            last = np.arange(n - period, n)
            profile = np.empty(period)
            profile[last % period] = d["seasonal"][last]
        else:
            profile = np.zeros(1)
        out = generalized_esd(d["resid"], self.max_anomalies, self.alpha, side=self.direction)
        # residuals as scoring will see them: deseasonalised value minus the causal rolling
        # median of the previous trend_window deseasonalised values
        import pandas as pd

        deseason = grid - profile[phase]
        clean = deseason.copy()
        clean[out] = np.nan  # the fit's own outliers must not drag the online trend
        w = int(self.trend_window)
        trend_c = pd.Series(clean).rolling(w, min_periods=1).median().shift(1).to_numpy()
        resid = deseason - trend_c
        keep = np.ones(n, bool)
        keep[out] = False
        r = resid[keep & ~np.isnan(resid)]
        if len(r) < 3:
            r = d["resid"][~np.isnan(d["resid"])]
        center = float(np.median(r)) if len(r) else 0.0
        # heavy tails: the band must also clear what the training data itself reaches, outliers
        # included (a Gaussian z on a spiky series alarms every day)
        r_all = resid[~np.isnan(resid)]
        tail = float(np.quantile(np.abs(r_all - center), self.tail_quantile)) if len(r_all) else 0.0
        scale = MAD_TO_SIGMA * float(np.median(np.abs(r - center))) if len(r) else 0.0
        scale = max(scale, 0.5 * noise_floor(grid), 1e-9 * (abs(float(np.nanmedian(grid))) + 1.0))
        n_valid = int(np.count_nonzero(~np.isnan(grid)))
        self.period_ = int(period)
        self.profile_ = np.asarray(profile, float)
        self.t0_ = float(t[0])
        self.step_ = float(step)
        self.scale_ = float(scale)
        self.center_ = center
        self.tail_ = tail
        self.z_threshold_ = float(esd_critical_values(max(n_valid, 4), 1, self.alpha,
                                                      two_sided=(self.direction == "both"))[0])
        tail = clean[~np.isnan(clean)][-w:]
        self.buf_ = np.full(w, np.nan)
        self.buf_[: len(tail)] = tail
        self.count_ = int(len(tail))
        self.pos_ = int(len(tail) % w)
        self.last_t_ = float(t[-1])
        self.n_fit_ = n_valid
        self.fit_anomalies_ = int(len(out))
        return self

    def carry_extremes(self, previous: SeasonalESD, keep: float) -> None:
        """The wider of this fit's heavy-tail band and `keep` of the previous one's."""
        self.tail_ = max(self.tail_, keep * previous.tail_)

    def fit_metrics(self) -> dict:
        self._require_fitted()
        return {"period_points": self.period_, "period_seconds": self.period_ * self.step_,
                "seasonal": self.period_ > 1, "residual_scale": self.scale_, "tail": self.tail_,
                "z_threshold": self.z_threshold_, "n_fit": self.n_fit_,
                "fit_anomalies": self.fit_anomalies_}

    # -- score ----------------------------------------------------------------------------------
    def _phase(self, t: np.ndarray) -> np.ndarray:
        return np.rint((t - self.t0_) / self.step_).astype(np.int64) % self.period_

    def score(self, t, y) -> ScoreFrame:
        self._require_fitted()
        t, y = check_t_y(t, y)
        n = len(y)
        seasonal = self.profile_[self._phase(t)]
        buf, w = self.buf_, len(self.buf_)
        ds = y - seasonal
        rows, held = ring_windows(buf, self.pos_, self.count_, ds)  # the buffer before each point
        level = window_median(rows, held, w)
        for i in range(n):
            v = ds[i]
            if v == v:
                buf[self.pos_] = v
                self.pos_ = (self.pos_ + 1) % w
                self.count_ = min(self.count_ + 1, w)
        if n:
            self.last_t_ = float(t[-1])
        expected = level + seasonal + self.center_
        z = self.sensitivity if self.sensitivity is not None else self.z_threshold_
        half = max(z * self.scale_, self.tail_factor * self.tail_)
        frame = band_score(y, expected, half, 1.0, self.direction, self.min_deviation)
        frame.score[np.isnan(level)] = np.nan
        return frame

    @classmethod
    def _prepare_group(cls, models, t, y):
        phase = np.rint((t - attr_array(models, "t0_")) / attr_array(models, "step_")).astype(np.int64) \
            % np.array([m.period_ for m in models], dtype=np.int64)
        seasonal = np.array([m.profile_[p] for m, p in zip(models, phase.tolist(), strict=True)], dtype=float)
        ds = y - seasonal
        level = ring_median(models)[0]
        expected = level + seasonal + attr_array(models, "center_")
        z = np.array([m.z_threshold_ if m.sensitivity is None else m.sensitivity for m in models], dtype=float)
        half = np.maximum(z * attr_array(models, "scale_"), attr_array(models, "tail_factor") * attr_array(models, "tail_"))
        frame = band_score(y, expected, half, 1.0, models[0].direction, attr_array(models, "min_deviation"))
        frame.score[np.isnan(level)] = np.nan
        return frame, ring_commit(models, ds, t)
