"""Scoring one new point for many series at once: the live cycle of a detector holding thousands.

Every step the service scores exactly one new point per series. Done series by series, each model's
``score`` costs a few dozen small numpy calls (~0.2 ms for an ensemble), and 20,000 series take
seconds. Here the models of one kind score that point together: their state is stacked into arrays
(ring buffers into a matrix, scales into a vector), the arithmetic runs once over the stack, and
each model's own state is then advanced exactly as its ``score`` would have advanced it.

The contract, for a model class C and models [m_0 .. m_n-1] of class C, after the same history::

    C.score_points(models, t, y)    ==    ScoreFrame.concat([m_i.score([t], [y_i]) for each i])

same scores, bands and state afterwards (tests/test_batch_scoring.py holds every kind to it).
Each kind first computes its frame without moving any state (``prepare_points``) and commits the
new state only when every kind has scored, so a batch that fails leaves every model as it was and
the caller can still score the series one by one.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .base import ScoreFrame, UnivariateModel, as_float_array, window_median


def check_points(cls: type, models: Sequence, t: float, y) -> tuple[float, np.ndarray]:
    """What ``score`` checks, once for the batch: fitted models of `cls`, a finite time, one
    numeric value per model."""
    for m in models:
        if type(m) is not cls:
            raise TypeError(f"{cls.__name__}.score_points: got a {type(m).__name__} among its models")
        m._require_fitted()
    t = float(t)
    if not np.isfinite(t):
        raise ValueError("t: timestamps must be finite epoch seconds")
    y = as_float_array(y, "y")
    if len(y) != len(models):
        raise ValueError(f"y has {len(y)} values for {len(models)} models")
    return t, y


def score_points_by(models: Sequence, t: float, y: np.ndarray, key: Callable,
                    prepare_group: Callable) -> tuple[ScoreFrame, Callable[[], None]]:
    """Prepare `models` in groups of equal ``key(model)`` (what the arrays cannot vary within one
    call: a direction, a window length) with ``prepare_group(models, t, y) -> (frame, commit)``:
    one frame in the order given, and one commit for them all."""
    if not len(models):
        return ScoreFrame.empty(0), lambda: None
    groups: dict = {}
    for i, m in enumerate(models):
        groups.setdefault(key(m), []).append(i)
    if len(groups) == 1:
        return prepare_group(list(models), t, y)
    out, commits = ScoreFrame.empty(len(models)), []
    for idx in groups.values():
        ix = np.asarray(idx)
        frame, commit = prepare_group([models[i] for i in idx], t, y[ix])
        commits.append(commit)
        out.put(ix, frame)
    return out, lambda: [c() for c in commits]


def attr_array(models: Sequence, name: str) -> np.ndarray:
    return np.array([getattr(m, name) for m in models], dtype=float)


def ring_rows(models: Sequence) -> tuple[np.ndarray, np.ndarray, int]:
    """The ring buffers (``buf_``, ``count_``; one length w) of `models` as they stand, one row each
    with the unfilled slots NaN, how many each holds, and w: what ``ring_windows`` gives one model
    for a single point."""
    bufs = np.stack([m.buf_ for m in models])
    w = bufs.shape[1]
    held = np.minimum(np.array([m.count_ for m in models]), w)
    rows = np.where(np.arange(w)[None, :] < held[:, None], bufs, np.nan)
    return rows, held, w


def ring_commit(models: Sequence, values: np.ndarray, t: float) -> Callable[[], None]:
    """The commit of a ring-buffer kind: each model's buffer takes its value (a NaN is skipped) and
    its last time becomes `t`, as ``score`` advances them."""
    values = values.tolist()

    def commit():
        for m, v in zip(models, values, strict=True):
            if v == v:
                w = len(m.buf_)
                m.buf_[m.pos_] = v
                m.pos_ = (m.pos_ + 1) % w
                m.count_ = min(m.count_ + 1, w)
            m.last_t_ = t
    return commit


def ring_median(models: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The median of each model's ring buffer (NaN where empty), with the rows it came from."""
    rows, held, w = ring_rows(models)
    return window_median(rows, held, w), rows, held, w


class RingBufferPoints:
    """``prepare_points`` of the kinds whose online state is a ring buffer (``buf_``, ``pos_``,
    ``count_``): batched by direction and buffer length, each group by the class's
    ``_prepare_group(models, t, y) -> (frame, commit)``. Listed before UnivariateModel in the bases."""

    @classmethod
    def prepare_points(cls, models, t, y):
        t, y = check_points(cls, models, t, y)
        return score_points_by(models, t, y, lambda m: (m.direction, len(m.buf_)), cls._prepare_group)


def score_point_batch(models: Sequence, t: float, y) -> ScoreFrame:
    """One new point (time `t`, value y[i] for models[i]) scored for univariate models of any
    kinds, each kind's share at once; no model's state moves unless every kind scored. The live
    cycle's entry point."""
    frame, commit = score_points_by(models, t, as_float_array(y, "y"), type,
                                    lambda group, t, y: type(group[0]).prepare_points(group, t, y))
    commit()
    return frame


def can_score_points(model) -> bool:
    """Whether `model` takes part in a batch (univariate models do; rules and stand-ins score alone)."""
    return isinstance(model, UnivariateModel)
