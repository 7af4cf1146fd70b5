import numpy as np
import pytest

from detector.models import NotFittedError, RobustZ, ScoreFrame
from detector.models.base import band_score


def _t(n, start=0.0):
    return 1.7e9 + 60.0 * (np.arange(n) + start)


def test_score_frame_band_convention():
    f = band_score(np.array([10.0, 13.0, 7.0, np.nan]), 10.0, 1.0, 2.0, "both", 0.0)
    assert isinstance(f, ScoreFrame)
    np.testing.assert_allclose(f.score[:3], [0.0, 1.5, 1.5])
    assert np.isnan(f.score[3])
    np.testing.assert_allclose(f.lower, 8.0)
    np.testing.assert_allclose(f.upper, 12.0)


def test_flags_a_jump_and_not_the_noise():
    rng = np.random.default_rng(0)
    y = 20 + rng.normal(0, 1, 300)
    m = RobustZ(window=60).fit(_t(300), y)
    new = np.array([20.5, 19.4, 35.0, 20.1])
    f = m.score(_t(4, 300), new)
    assert f.score[2] > 1
    assert np.all(f.score[[0, 1, 3]] <= 1)
    # outside the band <=> score > 1 (both sides watched)
    outside = (new > f.upper) | (new < f.lower)
    np.testing.assert_array_equal(outside, f.score > 1)


def test_direction_up_ignores_drops():
    y = 50 + np.sin(np.arange(200))
    up = RobustZ(direction="up").fit(_t(200), y)
    both = RobustZ(direction="both").fit(_t(200), y)
    drop = np.array([10.0])
    assert up.score(_t(1, 200), drop).score[0] == 0.0
    assert both.score(_t(1, 200), drop).score[0] > 1
    assert up.score(_t(1, 201), np.array([90.0])).score[0] > 1


def test_min_deviation_suppresses_trivial_deviations():
    y = np.full(100, 40.0)
    y[::2] += 0.01  # nearly flat: tiny robust scale
    # relative_floor off: min_deviation alone decides here (the level floor is tested below)
    plain = RobustZ(relative_floor=0).fit(_t(100), y)
    damped = RobustZ(min_deviation=1.0, relative_floor=0).fit(_t(100), y)
    assert plain.score(_t(1, 100), np.array([40.5])).score[0] > 1
    f = damped.score(_t(1, 100), np.array([40.5]))
    assert f.score[0] <= 1
    assert f.upper[0] - f.expected[0] >= 1.0
    assert damped.score(_t(1, 101), np.array([45.0])).score[0] > 1


def test_missing_values_score_nan_and_do_not_enter_the_buffer():
    m = RobustZ(window=10, min_periods=5).fit(_t(20), np.arange(20.0))
    before = m.buf_.copy()
    f = m.score(_t(2, 20), np.array([np.nan, np.nan]))
    assert np.isnan(f.score).all()
    assert np.isfinite(f.expected).all()
    np.testing.assert_array_equal(m.buf_, before)


def test_too_little_history_gives_no_score():
    m = RobustZ(min_periods=10).fit(_t(3), np.array([1.0, 2.0, 3.0]))
    f = m.score(_t(1, 3), np.array([100.0]))
    assert np.isnan(f.score[0])


def test_state_round_trip_gives_identical_scores():
    rng = np.random.default_rng(3)
    y = rng.normal(0, 1, 400)
    a = RobustZ(window=50, direction="down").fit(_t(300), y[:300])
    a.score(_t(20, 300), y[300:320])  # online state moved on since fit
    b = RobustZ.from_state(a.get_state())
    fa, fb = a.score(_t(80, 320), y[320:]), b.score(_t(80, 320), y[320:])
    for k in ("score", "expected", "lower", "upper"):
        np.testing.assert_array_equal(getattr(fa, k), getattr(fb, k))


def test_score_samples_is_minus_score_and_pure():
    y = np.random.default_rng(1).normal(0, 1, 100)
    m = RobustZ().fit(_t(100), y)
    before = m.get_state()
    s = m.score_samples(np.array([0.0, 9.0]))
    assert s[1] < s[0] <= 0
    np.testing.assert_array_equal(m.buf_, before["state"]["buf_"])


def test_errors():
    with pytest.raises(NotFittedError):
        RobustZ().score(_t(1), [1.0])
    with pytest.raises(ValueError, match="direction"):
        RobustZ(direction="sideways").fit(_t(5), np.arange(5.0))
    with pytest.raises(ValueError, match="increasing"):
        RobustZ().fit([2.0, 1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="length"):
        RobustZ().fit([1.0, 2.0], [1.0])


def test_heavy_tailed_history_raises_the_band_but_a_real_outlier_still_counts():
    rng = np.random.default_rng(4)
    hist = 100 + rng.standard_t(2, 3000)  # healthy but spiky
    new = 100 + rng.standard_t(2, 1000)
    plain = RobustZ(tail_factor=0).fit(_t(3000), hist)
    calibrated = RobustZ().fit(_t(3000), hist)
    n_plain = int(np.sum(plain.score(_t(1000, 3000), new).score > 1))
    n_cal = int(np.sum(calibrated.score(_t(1000, 3000), new).score > 1))
    assert n_cal * 4 < n_plain
    big = 100 + 3 * np.max(np.abs(hist - 100))
    assert calibrated.score(_t(1, 4000), np.array([big])).score[0] > 1


# -- flat histories ------------------------------------------------------------------------------
@pytest.mark.parametrize("level", [0.0, 1.0, 40.0, 5e10])
def test_flat_history_first_change_scores_finite_and_proportionate(level):
    m = RobustZ(sensitivity=4.0).fit(_t(200), np.full(200, level))
    f = m.score(_t(4, 200), np.array([level, level * 1.02, level * 2 + 1, -level - 1]))
    assert np.all(np.isfinite(f.score)) and np.all(np.isfinite(f.upper))
    assert f.score[0] == 0.0
    if level:
        assert f.score[1] <= 1  # 2 % of the level: not an anomaly
    # doubling the level (or leaving 0) is: clearly above 1, bounded by 1 / (sens * floor) per side
    assert 1 < f.score[2] <= 1 / (4.0 * 0.01) + 1e-9
    assert 1 < f.score[3] <= 2 / (4.0 * 0.01) + 1e-9


def test_flat_history_min_deviation_and_resolution_still_apply():
    m = RobustZ(min_deviation=5.0).fit(_t(200), np.full(200, 0.0))
    f = m.score(_t(2, 200), np.array([4.0, 10.0]))
    np.testing.assert_allclose(f.score, [4.0 / 5.0, 10.0 / max(5.0, 4 * 0.01 * 10.0)])
    # an integer reading that has moved by 1 before: one quantum stays inside the band
    y = np.full(200, 40.0)
    y[50] = 41.0
    q = RobustZ().fit(_t(200), y)
    assert q.resolution_ == 1.0
    assert q.score(_t(1, 200), np.array([41.0])).score[0] <= 1


def test_relative_floor_validated():
    with pytest.raises(ValueError, match="relative_floor"):
        RobustZ(relative_floor=-0.1)._check_params()
