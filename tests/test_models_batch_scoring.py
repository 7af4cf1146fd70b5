"""The rolling-median models score a batch of points with vectorised windows (models/base.py
ring_windows): the same numbers, and the same buffer afterwards, as scoring one point at a time —
with gaps (NaN), a buffer still filling, and one full and wrapped around."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from detector.models import make_model


def one_at_a_time(model, t, y):
    frames = [model.score(t[i:i + 1], y[i:i + 1]) for i in range(len(t))]
    return np.concatenate([np.asarray(f.score) for f in frames]), \
        np.concatenate([np.asarray(f.expected) for f in frames]), \
        np.concatenate([np.asarray(f.upper) for f in frames])


@pytest.mark.parametrize("kind, params", [("robust_z", {"window": 30, "min_periods": 5}),
                                          ("robust_z", {"window": 120}),
                                          ("seasonal_esd", {"trend_window": 31})])
@pytest.mark.parametrize("fit_points", [3, 12, 3000])
def test_batch_equals_point_by_point(kind, params, fit_points):
    rng = np.random.default_rng(fit_points)
    t = 1.7e9 + 60.0 * np.arange(fit_points + 500)
    y = 40 + 5 * np.sin(2 * np.pi * t / 86400) + rng.normal(0, 1, len(t))
    y[rng.random(len(t)) < 0.05] = np.nan
    y[fit_points + 100: fit_points + 110] += 25
    try:
        model = make_model(kind, **params).fit(t[:fit_points], y[:fit_points])
    except ValueError:
        pytest.skip(f"{kind} does not fit {fit_points} points")
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    batch = a.score(t[fit_points:], y[fit_points:])
    score, expected, upper = one_at_a_time(b, t[fit_points:], y[fit_points:])
    np.testing.assert_array_equal(np.asarray(batch.score), score)
    np.testing.assert_array_equal(np.asarray(batch.expected), expected)
    np.testing.assert_array_equal(np.asarray(batch.upper), upper)
    np.testing.assert_array_equal(a.buf_, b.buf_)
    assert (a.pos_, a.count_) == (b.pos_, b.count_)
    assert np.nanmax(np.asarray(batch.score)) > 1  # the jump is seen
