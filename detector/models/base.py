"""Shared contract of rigwatch's anomaly models.

Every model follows scikit-learn's estimator contract: ``__init__`` only stores its parameters,
``fit`` sets ``_``-suffixed state, ``score_samples`` returns lower = more abnormal.  On top of that
each model returns a :class:`ScoreFrame` from ``score``: a score where > 1 means anomalous at the
model's ``sensitivity`` plus the expected value and band Grafana draws.

Band convention (all univariate models and the thermal model)::

    half  = max(sensitivity * scale, min_deviation)
    lower = expected - half,  upper = expected + half
    score = deviation on the watched side / half      (0 on the ignored side)

so a point outside the band on the watched side scores > 1, inside scores <= 1.  A missing input
(NaN) gets a NaN score: "no data" is not "normal".
"""
from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

DIRECTIONS = ("both", "up", "down")
FIELDS = ("score", "expected", "lower", "upper")  # a ScoreFrame's arrays, in order
STATE_FORMAT = 1  # bump when get_state()'s layout changes incompatibly


@dataclass
class ScoreFrame:
    """Per-point output of a model; all arrays have the length of the scored input."""

    score: np.ndarray
    expected: np.ndarray
    lower: np.ndarray
    upper: np.ndarray

    def __len__(self) -> int:
        return len(self.score)

    @classmethod
    def empty(cls, n: int = 0) -> ScoreFrame:
        nan = np.full(n, np.nan)
        return cls(nan.copy(), nan.copy(), nan.copy(), nan.copy())

    @classmethod
    def concat(cls, frames: list[ScoreFrame]) -> ScoreFrame:
        if not frames:
            return cls.empty()
        return cls(*(np.concatenate([getattr(f, k) for f in frames]) for k in FIELDS))

    def take(self, ix) -> ScoreFrame:
        """The points at `ix` (an index array, mask or slice) as a frame of their own."""
        return ScoreFrame(*(getattr(self, k)[ix] for k in FIELDS))

    def put(self, ix, other: ScoreFrame) -> None:
        """Write `other`'s points at `ix` of this frame."""
        for k in FIELDS:
            getattr(self, k)[ix] = getattr(other, k)


class NotFittedError(RuntimeError):
    """score() called before fit() (or from_state())."""


def as_float_array(a, name: str, ndim: int = 1) -> np.ndarray:
    try:
        arr = np.asarray(a, dtype=float)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: not numeric ({e})") from None
    if arr.ndim == 0 and ndim == 1:
        arr = arr.reshape(1)
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {arr.shape}")
    return arr


def check_t_y(t, y) -> tuple[np.ndarray, np.ndarray]:
    t = as_float_array(t, "t")
    y = as_float_array(y, "y")
    if len(t) != len(y):
        raise ValueError(f"t and y differ in length ({len(t)} != {len(y)})")
    if not np.all(np.isfinite(t)):
        raise ValueError("t: timestamps must be finite epoch seconds")
    if len(t) > 1 and np.any(np.diff(t) <= 0):
        raise ValueError("t: timestamps must be strictly increasing")
    return t, y


def median_step(t: np.ndarray, default: float = 60.0) -> float:
    if len(t) < 2:
        return default
    d = np.diff(t)
    return float(np.median(d)) if len(d) else default


def ring_windows(buf: np.ndarray, pos: int, count: int, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What a ring buffer (`buf`, next slot `pos`, `count` filled) that takes each non-NaN of
    `values` in turn holds just before each value: an (n, len(buf)) view, NaN-padded on the left
    while it was not full, and how many it held. Lets a batch of points be scored with vectorised
    medians instead of one np.median per point (the gate replays a day of points per series);
    the caller still pushes the values to update its own buffer."""
    w = len(buf)
    if len(values) == 0:  # an empty batch: the general path below would still make one `before`
        return np.empty((0, w)), np.zeros(0, int)
    if len(values) == 1:  # a live scoring step: the buffer as it is (a median needs no order)
        row = buf if count >= w else np.concatenate([np.full(w - count, np.nan), buf[:count]])
        return row[None, :], np.array([min(count, w)])
    held = buf[:count] if count < w else np.concatenate([buf[pos:], buf[:pos]])
    valid = values[~np.isnan(values)]
    seq = np.concatenate([np.full(w, np.nan), held, valid])
    before = len(held) + np.concatenate([[0], np.cumsum(~np.isnan(values))[:-1]]).astype(int)
    rows = np.lib.stride_tricks.sliding_window_view(seq, w)[before] if len(values) else np.empty((0, w))
    return rows, np.minimum(before, w)


def window_median(rows: np.ndarray, held: np.ndarray, w: int) -> np.ndarray:
    """Median of each row of `ring_windows` (NaN where it held nothing)."""
    out = np.full(len(rows), np.nan)
    full, part = held >= w, (held > 0) & (held < w)
    if full.any():
        out[full] = np.median(rows[full], axis=1)
    if part.any():
        out[part] = np.nanmedian(rows[part], axis=1)
    return out


def band_score(y, expected, scale, sensitivity, direction, min_deviation) -> ScoreFrame:
    """Apply the band convention described in the module docstring (vectorised)."""
    y = np.asarray(y, float)
    expected = np.asarray(expected, float)
    half = np.maximum(sensitivity * np.asarray(scale, float), min_deviation)
    # a zero half-width (constant history, min_deviation 0) would make any change infinitely
    # anomalous; the tiniest float scale keeps scores finite but huge.
    half = np.maximum(half, 1e-12)
    r = y - expected
    if direction == "up":
        dev = np.maximum(r, 0.0)
    elif direction == "down":
        dev = np.maximum(-r, 0.0)
    else:
        dev = np.abs(r)
    score = dev / half
    score = np.where(np.isnan(y), np.nan, score)
    return ScoreFrame(score=np.broadcast_to(score, y.shape).astype(float),
                      expected=np.broadcast_to(expected, y.shape).astype(float),
                      lower=np.broadcast_to(expected - half, y.shape).astype(float),
                      upper=np.broadcast_to(expected + half, y.shape).astype(float))


class BaseModel:
    """Parameter/state plumbing shared by all models.

    Subclasses list the attributes that make up their fitted (and online) state in
    ``_state_attrs``; ``get_state``/``from_state`` round-trip exactly those.  Values must be
    JSON-able scalars/lists/dicts or numpy arrays so the model store can write them without pickle.
    """

    kind: str = "base"
    version: int = 1
    _state_attrs: tuple[str, ...] = ()
    # What the metric detector and config validation need to know about a kind, said by the
    # class itself (the same attributes on the rules), so neither names a model kind:
    family = "model"  # fitted on history ("rule": model-free, see rules.py)
    multivariate = False  # fit(t, X, y) / score(t, X, y) instead of fit(t, y) / score(t, y)
    takes_features = False  # the detector's `features:` queries build X (required then)
    heartbeat = False  # X is the detector's `heartbeat` query (rules only)
    guards_extrapolation = False  # a regression: no opinion where it expects below all it trained on

    @classmethod
    def input_names(cls, features: list[str]) -> list[str]:
        """Column names of the model's X given the detector's feature names."""
        return list(features)

    @classmethod
    def design_matrix(cls, y: np.ndarray, X: np.ndarray | None) -> np.ndarray | None:
        """The model's X from the watched value and the detector's feature matrix."""
        return X

    def explain_batch(self, X: np.ndarray | None, score: np.ndarray) -> list[str] | None:
        """Why the strongest point of a scored batch is anomalous (None: nothing to say)."""
        return None

    # -- parameters -------------------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self) -> dict:
        return {p: getattr(self, p) for p in self._param_names()}

    def set_params(self, **params) -> BaseModel:
        valid = set(self._param_names())
        for k, v in params.items():
            if k not in valid:
                raise ValueError(f"{type(self).__name__}: unknown parameter {k!r} "
                                 f"(valid: {', '.join(sorted(valid))})")
            setattr(self, k, v)
        return self

    def _check_common(self):
        direction = getattr(self, "direction", "both")
        if direction not in DIRECTIONS:
            raise ValueError(f"{type(self).__name__}: direction must be one of {DIRECTIONS}, "
                             f"got {direction!r}")
        sens = getattr(self, "sensitivity", 1.0)
        if sens is not None and not (np.isfinite(sens) and sens > 0):
            raise ValueError(f"{type(self).__name__}: sensitivity must be > 0, got {sens!r}")
        md = getattr(self, "min_deviation", 0.0)
        if not (np.isfinite(md) and md >= 0):
            raise ValueError(f"{type(self).__name__}: min_deviation must be >= 0, got {md!r}")

    # -- state ------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return all(hasattr(self, a) for a in self._state_attrs)

    def _require_fitted(self):
        if not self.is_fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit() first")

    def fit_metrics(self) -> dict:
        """Scalars describing the fit, for the model store's metadata (JSON-able)."""
        return {}

    def get_state(self) -> dict:
        self._require_fitted()
        state = {}
        for a in self._state_attrs:
            v = getattr(self, a)
            state[a] = v.copy() if isinstance(v, np.ndarray) else copy.deepcopy(v)
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.get_params().items()}
        return {"kind": self.kind, "version": self.version, "format": STATE_FORMAT,
                "params": params, "state": state}

    @classmethod
    def from_state(cls, d: dict):
        if d.get("kind") != cls.kind:
            raise ValueError(f"state is for model kind {d.get('kind')!r}, not {cls.kind!r}")
        if d.get("version") != cls.version or d.get("format") != STATE_FORMAT:
            raise ValueError(f"{cls.kind}: incompatible state version {d.get('version')}/"
                             f"{d.get('format')} (this code reads {cls.version}/{STATE_FORMAT})")
        params = dict(d["params"])
        unknown = set(params) - set(cls._param_names())
        if unknown:
            raise ValueError(f"{cls.kind}: unknown parameter(s) in state: {sorted(unknown)}")
        model = cls(**params)
        missing = [a for a in cls._state_attrs if a not in d["state"]]
        if missing:
            raise ValueError(f"{cls.kind}: state lacks {missing}")
        for a in cls._state_attrs:
            v = d["state"][a]
            setattr(model, a, v.copy() if isinstance(v, np.ndarray) else copy.deepcopy(v))
        return model

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class UnivariateModel(BaseModel):
    """Models of one series: fit(t, y), score(t, y) -> ScoreFrame (causal, stateful)."""

    def fit(self, t, y):  # pragma: no cover - abstract
        raise NotImplementedError

    def score(self, t, y) -> ScoreFrame:  # pragma: no cover - abstract
        raise NotImplementedError

    def min_history(self, step_seconds: float = 60.0) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def score_points(cls, models: list, t: float, y) -> ScoreFrame:
        """One new point at time `t` for each of `models` (all of this class), y[i] for models[i]:
        what ``models[i].score([t], [y[i]])`` returns, concatenated, with the same state afterwards.
        The kinds a live cycle holds by the thousand vectorise it (see batch.py)."""
        frame, commit = cls.prepare_points(models, t, y)
        commit()
        return frame

    @classmethod
    def prepare_points(cls, models: list, t: float, y) -> tuple[ScoreFrame, Callable[[], None]]:
        """``score_points`` in two steps: the frame, computed without moving any state, and the
        commit that advances every model's state (an ensemble commits its members only once all of
        them have scored). This default scores copies one by one and commits their state."""
        y = as_float_array(y, "y")
        if len(y) != len(models):
            raise ValueError(f"y has {len(y)} values for {len(models)} models")
        scored = [copy.deepcopy(m) for m in models]
        frame = ScoreFrame.concat([m.score(np.array([t], float), y[i:i + 1]) for i, m in enumerate(scored)])

        def commit():
            for m, done in zip(models, scored, strict=True):
                for a in cls._state_attrs:
                    setattr(m, a, getattr(done, a))
        return frame, commit

    def carry(self, previous, elapsed: float) -> None:
        """Called on a fresh fit with the model it replaces (fitted `elapsed` seconds earlier on the
        same series): keep what the new window cannot show. Default: nothing — the window is all."""

    def score_samples(self, y, t=None) -> np.ndarray:
        """sklearn-style: lower = more abnormal (-score).  Works on a copy, so unlike score()
        it does not advance the model's online state.  Without ``t`` the points are taken to
        follow the last scored (or fitted) point at the fitted step."""
        y = as_float_array(y, "y")
        if t is None:
            t = self._next_times(len(y))
        return -copy.deepcopy(self).score(t, y).score

    def _next_times(self, n: int) -> np.ndarray:
        self._require_fitted()
        return self.last_t_ + self.step_ * np.arange(1, n + 1)


class NoOpinion:
    """Stand-in model for a detector's `fallback: none`: scores NaN (no data is not normal data)."""

    kind = "none"
    family = "fallback"
    multivariate = False
    guards_extrapolation = False

    def fit(self, t, *args):
        return self

    def score(self, t, *args) -> ScoreFrame:
        return ScoreFrame.empty(len(t))

    def min_history(self, step_seconds=60.0):
        return 0

    def explain_batch(self, X, score):
        return None

    def get_state(self):
        return {"kind": "none"}

    @classmethod
    def from_state(cls, d: dict) -> NoOpinion:
        if d.get("kind") != cls.kind:
            raise ValueError(f"state is for {d.get('kind')!r}, not {cls.kind!r}")
        return cls()
