import numpy as np
import pytest

from detector.models import SeasonalESD, detect_period, generalized_esd
from detector.models.seasonal import esd_critical_values

DAY = 1440


def _series(days=4, step=60.0, seed=0, noise=0.3):
    rng = np.random.default_rng(seed)
    i = np.arange(days * DAY)
    t = 1.7e9 + step * i
    clean = 30 + 5 * np.sin(2 * np.pi * i / DAY)
    return t, clean + rng.normal(0, noise, len(i)), clean


def test_esd_finds_the_planted_outliers():
    x = np.array([0.03, 1.36, 1.22, -0.51, -0.3, 6.2, 0.57, -0.06, 0.75, -1.85, 1.57, -0.1,
                  0.68, -0.14, -0.38, 0.46, 0.82, -5.1, -0.15, 0.69, -0.87, -1.51, 0.39, -0.67])
    out = generalized_esd(x, max_anomalies=5, alpha=0.05)
    assert sorted(out.tolist()) == [5, 17]
    assert sorted(generalized_esd(x, 5, hybrid=False).tolist()) == [5, 17]
    assert generalized_esd(x, max_anomalies=5, side="up").tolist() == [5]
    assert generalized_esd(x, max_anomalies=5, side="down").tolist() == [17]


def test_esd_finds_nothing_in_clean_noise():
    x = np.random.default_rng(7).normal(0, 1, 500)
    assert len(generalized_esd(x, max_anomalies=0.05)) == 0


def test_esd_matches_the_classic_mean_sd_version_on_rosner_style_data():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, 200)
    x[[3, 50, 120]] = [7.0, -6.5, 6.0]
    assert sorted(generalized_esd(x, 10, hybrid=False).tolist()) == [3, 50, 120]
    assert sorted(generalized_esd(x, 10, hybrid=True).tolist()) == [3, 50, 120]


def test_esd_critical_value_known_number():
    # Rosner (1983) table / NIST handbook example: n=54, alpha=0.05, lambda_1 = 3.159
    assert esd_critical_values(54, 1, 0.05)[0] == pytest.approx(3.159, abs=2e-3)


def test_period_is_taken_from_the_data():
    t, y, _ = _series(days=4)
    assert detect_period(y, 60.0) == DAY
    noise = np.random.default_rng(0).normal(0, 1, 4 * DAY)
    assert detect_period(noise, 60.0) is None
    # 17-minute cycle, not a calendar period: found as the strongest autocorrelation peak
    i = np.arange(2000)
    assert detect_period(np.sin(2 * np.pi * i / 17), 60.0) == 17


def test_expected_follows_the_sine_and_a_spike_scores_high():
    t, y, _ = _series(days=4)
    m = SeasonalESD().fit(t, y)
    assert m.period_ == DAY
    i = np.arange(4 * DAY, 4 * DAY + 600)
    clean = 30 + 5 * np.sin(2 * np.pi * i / DAY)
    new = clean + np.random.default_rng(9).normal(0, 0.3, len(i))
    new[300] += 4.0
    f = m.score(1.7e9 + 60.0 * i, new)
    assert np.max(np.abs(f.expected - clean)) < 0.5
    assert np.corrcoef(f.expected, clean)[0, 1] > 0.99
    assert f.score[300] > 1
    assert np.sum(f.score > 1) == 1
    assert np.all(f.lower <= f.expected) and np.all(f.expected <= f.upper)


def test_level_shift_is_followed_by_the_online_trend():
    t, y, _ = _series(days=3)
    m = SeasonalESD(trend_window=30).fit(t, y)
    i = np.arange(3 * DAY, 3 * DAY + 200)
    new = 40 + 5 * np.sin(2 * np.pi * i / DAY)  # +10 level shift
    f = m.score(1.7e9 + 60.0 * i, new)
    assert f.score[0] > 1
    assert np.all(f.score[60:] <= 1)  # after the window the new level is normal


def test_gaps_keep_the_phase():
    t, y, _ = _series(days=3)
    keep = np.ones(len(t), bool)
    keep[1000:1500] = False  # an 8-hour hole
    m = SeasonalESD().fit(t[keep], y[keep])
    assert m.period_ == DAY
    i = np.arange(3 * DAY + 720, 3 * DAY + 780)  # scored after another gap
    f = m.score(1.7e9 + 60.0 * i, 30 + 5 * np.sin(2 * np.pi * i / DAY))
    assert np.all(f.score <= 1)


def test_fit_anomalies_counted_and_scale_not_inflated():
    t, y, _ = _series(days=3)
    y[[500, 2000, 3500]] += 30
    m = SeasonalESD().fit(t, y)
    assert m.fit_anomalies_ == 3
    assert m.scale_ < 0.5


def test_state_round_trip_and_compactness():
    t, y, _ = _series(days=3)
    a = SeasonalESD(direction="up").fit(t, y)
    d = a.get_state()
    arrays = [v for v in d["state"].values() if isinstance(v, np.ndarray)]
    assert sum(v.size for v in arrays) <= DAY + a.trend_window  # one period + trend buffer
    b = SeasonalESD.from_state(d)
    i = np.arange(3 * DAY, 3 * DAY + 100)
    new = 30 + 5 * np.sin(2 * np.pi * i / DAY) + np.linspace(0, 10, 100)
    fa, fb = a.score(1.7e9 + 60.0 * i, new), b.score(1.7e9 + 60.0 * i, new)
    for k in ("score", "expected", "lower", "upper"):
        np.testing.assert_array_equal(getattr(fa, k), getattr(fb, k))


def test_min_history_is_two_periods_and_min_deviation_applies():
    assert SeasonalESD().min_history(60.0) == 2 * DAY
    assert SeasonalESD(period=3600).min_history(60.0) == 120
    t, y, _ = _series(days=3, noise=0.01)
    m = SeasonalESD(min_deviation=2.0).fit(t, y)
    i = np.arange(3 * DAY, 3 * DAY + 2)
    f = m.score(1.7e9 + 60.0 * i, 30 + 5 * np.sin(2 * np.pi * i / DAY) + np.array([1.0, 3.0]))
    assert f.score[0] <= 1 < f.score[1]


def test_stl_methods_agree_on_a_clean_series():
    t, y, clean = _series(days=3)
    fast = SeasonalESD(method="fast", period=86400).decompose(t, y)
    ref = SeasonalESD(method="stl_jump", period=86400).decompose(t, y)
    assert np.corrcoef(fast["seasonal"], ref["seasonal"])[0, 1] > 0.98
    assert np.std(fast["resid"]) < 0.4


def _naive_hybrid_esd(x, k, alpha):
    """Textbook S-H-ESD: recompute median and MAD from scratch at every step."""
    idx = np.arange(len(x))
    removed, stats = [], []
    for _ in range(k):
        med = np.median(x[idx])
        mad = 1.4826 * np.median(np.abs(x[idx] - med))
        d = np.abs(x[idx] - med)
        j = int(np.argmax(d))
        stats.append(d[j] / mad)
        removed.append(idx[j])
        idx = np.delete(idx, j)
    lam = esd_critical_values(len(x), k, alpha)
    hits = np.nonzero(np.array(stats) > lam)[0]
    return sorted(removed[: hits[-1] + 1]) if len(hits) else []


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fast_hybrid_esd_equals_the_textbook_version(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_t(3, 301)  # heavy tails: a few borderline points
    x[rng.choice(301, 5, replace=False)] += rng.choice([-1, 1], 5) * 8
    assert sorted(generalized_esd(x, 20, 0.05).tolist()) == _naive_hybrid_esd(x, 20, 0.05)


def test_heavy_tailed_residuals_raise_the_band():
    rng = np.random.default_rng(5)
    i = np.arange(5 * DAY)
    y = 30 + 5 * np.sin(2 * np.pi * i / DAY) + 0.3 * rng.standard_t(2, len(i))
    hist, new = slice(0, 4 * DAY), slice(4 * DAY, 5 * DAY)
    t = 1.7e9 + 60.0 * i
    plain = SeasonalESD(tail_factor=0).fit(t[hist], y[hist])
    calibrated = SeasonalESD().fit(t[hist], y[hist])
    assert calibrated.tail_ > plain.z_threshold_ * plain.scale_
    n_plain = int(np.sum(plain.score(t[new], y[new]).score > 1))
    n_cal = int(np.sum(calibrated.score(t[new], y[new]).score > 1))
    assert n_cal * 3 < n_plain
