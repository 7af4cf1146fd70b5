"""Thermal model: the GPU temperature its load explains, and how much hotter it runs than that.

A GPU with a failing fan, dust or dried paste runs hotter *for its load* long before it is hot in
absolute terms.  Temperature follows power through a thermal mass, so the regressors are the power
(and any other ``lagged`` column) smoothed exponentially with several time constants — the first
order responses a lumped thermal model is made of — plus the instantaneous columns (fan %, an
ambient proxy such as an idle neighbour's temperature) and the products of the smoothed power
with them (cooling resistance falls as the fan speeds up, so fan scales the power term).

A Huber-weighted least squares fit gives the expected temperature; the band is the robust (MAD)
scale of the residuals.  The fit is shaped by physics so that it stays sane on a GPU that has only
idled so far: the smoothed-power coefficients are non-negative (more heat never cools the card),
and scoring clips every input to the range the fit saw; beyond it the band widens to span every
rise between 0 and ``extrapolation_slope`` per extra watt instead of trusting a slope fitted on
idle noise.  ``direction="up"`` by default: running cooler than explained is harmless.
A fit on less than a day cannot have seen the room's daily swing (a night of idle fits a constant):
its residual scale understates what is normal, so ``min_deviation`` is the floor then; once the fit
spans ``settled_after`` seconds, ``settled_deviation`` (when set) is the floor instead, so a card
that settled at a few degrees hotter than its load explains (dead fans at idle, a clogged cooler
under light load) is heard without waiting for heavy load.
Scoring is causal: the smoothing state is carried over between calls.
"""
from __future__ import annotations

import numpy as np

from .base import BaseModel, ScoreFrame, as_float_array, band_score, check_t_y
from .robust import MAD_TO_SIGMA


def _ewma_bank(t: np.ndarray, X: np.ndarray, taus: np.ndarray, state: np.ndarray | None,
               last_t: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Exponential smoothing of every column of X with every tau, for irregular t.

    -> (smoothed, shape (n, cols, taus); final state (cols, taus)).  A missing value holds the
    state; the state starts at the first value seen.
    """
    n, c = X.shape
    out = np.empty((n, c, len(taus)))
    s = None if state is None else state.copy()
    prev = last_t
    for i in range(n):
        x = X[i][:, None]
        if s is None:
            s = np.where(np.isnan(x), np.nan, np.broadcast_to(x, (c, len(taus))))
        else:
            dt = t[i] - prev if prev is not None else 0.0
            a = 1.0 - np.exp(-max(dt, 0.0) / taus)
            upd = s + a[None, :] * (x - s)
            s = np.where(np.isnan(x), s, np.where(np.isnan(s), x, upd))
        prev = t[i]
        out[i] = s
    return out, s


class ThermalModel(BaseModel):
    """Expected temperature given power, fan and recent load; see module docstring.

    ``feature_names``: names of X's columns, in order.  ``lagged``: the columns that act through
    the thermal mass (smoothed with each of ``time_constants`` seconds); the others are used as
    they are and multiplied with the smoothed lagged columns.  ``extrapolation_slope``: the most
    the temperature can rise per unit of a lagged column (°C per W for power; 0.3 covers air-cooled
    desktop cards, whose full-load rise is about 0.1-0.25 °C/W) beyond the range the fit saw.
    """

    kind = "thermal"
    multivariate = True
    takes_features = True
    guards_extrapolation = True
    version = 2  # 2: non-negative power terms, seen input range (lo_/hi_) in the state
    _state_attrs = ("coef_", "mean_", "std_", "scale_", "ewma_", "last_raw_", "last_t_", "n_fit_",
                    "r2_", "lo_", "hi_")
    # span_ (the fit's history span) is stored beside them but optional, so a stored version-2
    # state (release 0.1.0's store) still loads: without it the fit counts as young until refitted
    span_ = 0.0

    def __init__(self, feature_names=("power", "fan"), lagged=("power",),
                 time_constants=(60.0, 180.0, 600.0, 1800.0), sensitivity: float = 4.0, direction: str = "up",
                 min_deviation: float = 2.0, ridge: float = 1e-3, huber: float = 1.5,
                 extrapolation_slope: float = 0.3, concave: bool = True,
                 settled_deviation: float | None = None, settled_after: float = 86400.0):
        self.feature_names = feature_names
        self.lagged = lagged
        self.time_constants = time_constants
        self.sensitivity = sensitivity
        self.direction = direction
        self.min_deviation = min_deviation
        self.ridge = ridge
        self.huber = huber
        self.extrapolation_slope = extrapolation_slope
        self.concave = concave
        self.settled_deviation = settled_deviation
        self.settled_after = settled_after

    def _check_params(self):
        self._check_common()
        names = list(self.feature_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"thermal: feature_names must be distinct names, got {names!r}")
        missing = [c for c in self.lagged if c not in names]
        if missing:
            raise ValueError(f"thermal: lagged column(s) {missing} not in feature_names {names}")
        if not self.lagged:
            raise ValueError("thermal: lagged must name at least one column (the power)")
        if not self.time_constants or any(not tau > 0 for tau in self.time_constants):
            raise ValueError(f"thermal: time_constants must be > 0 seconds, got {self.time_constants!r}")
        k = self.extrapolation_slope
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not (np.isfinite(k) and k >= 0):
            raise ValueError(f"thermal: extrapolation_slope must be a number >= 0, got {k!r}")
        sd = self.settled_deviation
        if sd is not None and (isinstance(sd, bool) or not isinstance(sd, (int, float)) or not (np.isfinite(sd) and sd >= 0)):
            raise ValueError(f"thermal: settled_deviation must be a number >= 0 or null, got {sd!r}")
        sa = self.settled_after
        if isinstance(sa, bool) or not isinstance(sa, (int, float)) or not (np.isfinite(sa) and sa >= 0):
            raise ValueError(f"thermal: settled_after must be seconds >= 0, got {sa!r}")

    def min_history(self, step_seconds: float = 60.0) -> int:
        # several time constants of data, and at least a few hours of varied load
        return max(int(np.ceil(6 * max(self.time_constants) / step_seconds)), 120)

    # -- features -----------------------------------------------------------------------------
    def _split(self, X) -> tuple[np.ndarray, np.ndarray]:
        names = list(self.feature_names)
        if hasattr(X, "columns"):  # a DataFrame: pick by name
            missing = [c for c in names if c not in X.columns]
            if missing:
                raise ValueError(f"thermal: X lacks column(s) {missing}")
            X = X[names].to_numpy(float)
        X = as_float_array(X, "X", ndim=2)
        if X.shape[1] != len(names):
            raise ValueError(f"thermal: X has {X.shape[1]} columns, feature_names has {len(names)}")
        lag_idx = [names.index(c) for c in self.lagged]
        other_idx = [i for i in range(len(names)) if i not in lag_idx]
        return X[:, lag_idx], X[:, other_idx]

    def _inputs(self, t, X, ewma_state, last_raw, last_t):
        """-> (smoothed lagged columns (n, lagged x taus), instantaneous columns, new states)."""
        lag, other = self._split(X)
        taus = np.asarray(self.time_constants, float)
        sm, state = _ewma_bank(t, lag, taus, ewma_state, last_t)
        # instantaneous columns: a gap holds the last value seen
        other = other.copy()
        held = last_raw.copy() if last_raw is not None else np.full(other.shape[1], np.nan)
        for i in range(len(other)):
            row = other[i]
            nan = np.isnan(row)
            row[nan] = held[nan]
            held = row.copy()
        return sm.reshape(len(t), -1), other, state, held

    # -- fit / score --------------------------------------------------------------------------
    def _split_design(self, sm2: np.ndarray, other: np.ndarray) -> np.ndarray:
        cols = [sm2]
        if self.concave:
            # a fan curve lowers the thermal resistance as the card heats up: the rise per watt
            # falls with power.  sqrt terms (also non-negative) let the fit bend that way.
            cols.append(np.sqrt(np.maximum(sm2, 0.0)))
        cols.append(other)
        for j in range(other.shape[1]):
            cols.append(sm2 * other[:, j: j + 1] / 100.0)
        return np.hstack(cols)

    def _solve(self, Z: np.ndarray, b: np.ndarray, w: np.ndarray, reg: np.ndarray,
               lower: np.ndarray) -> np.ndarray:
        """Weighted ridge least squares with lower bounds on the coefficients.

        The (tiny, p x p) normal equations are factored first, G = L L', so the bounded problem
        min ||L' c - L^-1 Z'Wb||^2 has p rows instead of one per sample: the same minimiser."""
        from scipy.optimize import lsq_linear

        Zw = Z * w[:, None]
        G = Z.T @ Zw + reg
        L = np.linalg.cholesky(G)
        q = np.linalg.solve(L, Zw.T @ b)
        if np.all(np.isneginf(lower)):
            return np.linalg.solve(L.T, q)
        return lsq_linear(L.T, q, bounds=(lower, np.full(len(lower), np.inf)), method="bvls").x

    def fit(self, t, X, y):
        self._check_params()
        t, y = check_t_y(t, y)
        sm2, other, state, held = self._inputs(t, X, None, None, None)
        if len(sm2) != len(y):
            raise ValueError(f"thermal: X has {len(sm2)} rows, y has {len(y)}")
        F = self._split_design(sm2, other)
        warm = t >= t[0] + max(self.time_constants)  # smoothing not yet settled before this
        ok = warm & ~np.isnan(y) & ~np.isnan(F).any(axis=1)
        if ok.sum() < F.shape[1] + 10:
            raise ValueError(f"thermal: only {int(ok.sum())} usable rows after warm-up; need "
                             f"{F.shape[1] + 10} (more history, fewer gaps)")
        A, b = F[ok], y[ok]
        mean, std = A.mean(axis=0), A.std(axis=0)
        std[std == 0] = 1.0
        Z = np.hstack([np.ones((len(A), 1)), (A - mean) / std])
        # Heat only adds: the smoothed-power terms get non-negative coefficients (standardising
        # by a positive std keeps the sign), so the fit cannot explain idle-temperature noise with
        # huge opposing power terms that cancel at idle and explode at the first load.
        lower = np.full(Z.shape[1], -np.inf)
        lower[1: 1 + sm2.shape[1] * (2 if self.concave else 1)] = 0.0
        reg = self.ridge * len(b) * np.eye(Z.shape[1])
        reg[0, 0] = 0.0
        w = np.ones(len(b))
        for _ in range(8):  # IRLS with Huber weights: a few anomalous hours must not bend the fit
            coef = self._solve(Z, b, w, reg, lower)
            r = b - Z @ coef
            s = max(MAD_TO_SIGMA * np.median(np.abs(r - np.median(r))), 1e-6)
            u = np.abs(r) / (self.huber * s)
            w = np.where(u <= 1, 1.0, 1.0 / np.maximum(u, 1e-12))
        r = b - Z @ coef
        self.coef_ = coef
        self.mean_, self.std_ = mean, std
        # the inputs the fit has seen: scoring clips to this box and widens the band beyond it
        self.lo_ = np.concatenate([sm2[ok].min(axis=0), other[ok].min(axis=0)])
        self.hi_ = np.concatenate([sm2[ok].max(axis=0), other[ok].max(axis=0)])
        self.scale_ = float(max(MAD_TO_SIGMA * np.median(np.abs(r - np.median(r))), 1e-6))
        self.r2_ = float(1 - np.var(r) / max(np.var(b), 1e-12))
        self.ewma_, self.last_raw_ = state, held
        self.last_t_ = float(t[-1])
        self.n_fit_ = int(ok.sum())
        self.span_ = float(t[ok][-1] - t[ok][0])  # how much of the day (and its ambient) the fit saw
        return self

    def get_state(self) -> dict:
        d = super().get_state()
        d["state"]["span_"] = float(self.span_)
        return d

    @classmethod
    def from_state(cls, d: dict):
        model = super().from_state(d)
        model.span_ = float(d["state"].get("span_", 0.0))
        return model

    def fit_metrics(self) -> dict:
        self._require_fitted()
        n_lag = len(self.lagged) * len(self.time_constants)
        return {"r2": self.r2_, "residual_scale": self.scale_, "n_fit": self.n_fit_,
                # the (smoothed) load range the fit saw: beyond it the band widens
                "lagged_seen_min": float(self.lo_[:n_lag].min()), "lagged_seen_max": float(self.hi_[:n_lag].max()),
                "history_span_seconds": self.span_, "deviation_floor": self.deviation_floor()}

    def deviation_floor(self) -> float:
        """The band's smallest half-width: ``settled_deviation`` once the fit spans a settled
        history (see module docstring), ``min_deviation`` before."""
        if self.settled_deviation is not None and self.span_ >= self.settled_after:
            return float(self.settled_deviation)
        return float(self.min_deviation)

    def expected(self, F: np.ndarray) -> np.ndarray:
        Z = (F - self.mean_) / self.std_
        return self.coef_[0] + Z @ self.coef_[1:]

    def _extrapolate(self, sm2: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (expected, extra half-width).  Inputs are clipped to the range the fit saw, so a fit on
        idle hours expects an idle-like temperature at idle-like inputs and never extrapolates its
        (poorly determined) slopes.  Beyond that range the temperature can only have risen with
        the extra power, by between 0 and ``extrapolation_slope`` per unit: the band spans exactly
        that, centred on its middle."""
        n_lag = sm2.shape[1]
        lo_l, hi_l = self.lo_[:n_lag], self.hi_[:n_lag]
        lo_o, hi_o = self.lo_[n_lag:], self.hi_[n_lag:]
        smc = np.clip(sm2, lo_l, hi_l)
        base = self.expected(self._split_design(smc, np.clip(other, lo_o, hi_o)))
        ntau = len(self.time_constants)
        # per lagged input, the largest excursion over its time constants: while any smoothing of
        # the power is outside the seen range, the temperature's response to it is unknown
        above = np.maximum(sm2 - hi_l, 0.0).reshape(len(sm2), -1, ntau).max(axis=2).sum(axis=1)
        below = np.maximum(lo_l - sm2, 0.0).reshape(len(sm2), -1, ntau).max(axis=2).sum(axis=1)
        k = float(self.extrapolation_slope)
        return base + 0.5 * k * (above - below), 0.5 * k * (above + below)

    def score(self, t, X, y) -> ScoreFrame:
        self._require_fitted()
        t, y = check_t_y(t, y)
        sm2, other, state, held = self._inputs(t, X, self.ewma_, self.last_raw_, self.last_t_)
        if len(sm2) != len(y):
            raise ValueError(f"thermal: X has {len(sm2)} rows, y has {len(y)}")
        self.ewma_, self.last_raw_ = state, held
        if len(t):
            self.last_t_ = float(t[-1])
        expected, extra = self._extrapolate(sm2, other)
        floor = self.deviation_floor()
        half = np.maximum(self.sensitivity * self.scale_, floor) + extra
        return band_score(y, expected, half / self.sensitivity, self.sensitivity, self.direction, floor)

    def score_samples(self, t, X, y) -> np.ndarray:
        import copy

        return -copy.deepcopy(self).score(t, X, y).score
