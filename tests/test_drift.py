"""detector.drift: PSI and scale-normalised Wasserstein against the hour-matched training sketch."""
import numpy as np
import pytest

from detector import drift
from detector.store import pack_state, unpack_state

STEP = 60.0
DAY = 86400.0


def _times(start: float, seconds: float) -> np.ndarray:
    return np.arange(start, start + seconds, STEP)


def _daily(t: np.ndarray, rng, noise=1.0) -> np.ndarray:
    # busy by day, idle by night: 20 -> 80 and back over the day
    return 50 - 30 * np.cos(2 * np.pi * (t % DAY) / DAY) + rng.normal(0, noise, len(t))


def test_identical_distributions_do_not_drift():
    rng = np.random.default_rng(1)
    t = _times(0, 7 * DAY)
    ref = drift.reference(t, rng.normal(100, 5, len(t)))
    recent = _times(7 * DAY, DAY)
    stats = drift.drift(ref, recent, rng.normal(100, 5, len(recent)))
    assert stats["psi"] < 0.02
    assert stats["wasserstein"] < 0.3
    assert not drift.drifted(stats)


def test_a_shifted_distribution_drifts_on_both_statistics():
    rng = np.random.default_rng(2)
    t = _times(0, 7 * DAY)
    ref = drift.reference(t, rng.normal(100, 5, len(t)))
    recent = _times(7 * DAY, DAY)
    stats = drift.drift(ref, recent, rng.normal(115, 5, len(recent)))  # three standard deviations up
    assert stats["psi"] > 1.0
    assert 2.0 < stats["wasserstein"] < 4.0  # ~3 robust sigmas
    assert drift.drifted(stats)


def test_the_same_daily_rhythm_is_not_drift_even_over_a_few_night_hours():
    rng = np.random.default_rng(3)
    t = _times(0, 7 * DAY)
    ref = drift.reference(t, _daily(t, rng))
    night = _times(7 * DAY, 4 * 3600)  # 00:00-04:00 UTC: the idle part of the rhythm
    stats = drift.drift(ref, night, _daily(night, rng))
    assert not drift.drifted(stats), stats
    assert stats["psi"] < 0.1
    # the same night hours against the whole training window (no hour matching) would look drifted:
    pooled = drift.reference(np.zeros(len(t)), _daily(t, rng))  # every point in one hour bin
    assert drift.drifted(drift.drift(pooled, np.zeros(len(night)), _daily(night, rng)))


def test_a_changed_rhythm_is_drift():
    rng = np.random.default_rng(4)
    t = _times(0, 7 * DAY)
    ref = drift.reference(t, _daily(t, rng))
    recent = _times(7 * DAY, DAY)
    stats = drift.drift(ref, recent, _daily(recent + DAY / 2, rng))  # busy at night now
    assert stats["psi"] < 0.1  # the day's pooled distribution is the same ...
    assert stats["wasserstein"] > drift.WASSERSTEIN_THRESHOLD  # ... but not hour by hour
    assert drift.drifted(stats)


def test_a_constant_series_divides_by_no_zero():
    t = _times(0, 2 * DAY)
    ref = drift.reference(t, np.full(len(t), 3.0))
    assert ref.scale > 0
    hours = _times(2 * DAY, 2 * 3600)
    same = drift.drift(ref, hours, np.full(120, 3.0))
    assert same == {"psi": 0.0, "wasserstein": 0.0}
    moved = drift.drift(ref, hours, np.full(120, 4.0))
    assert np.isfinite(moved["wasserstein"]) and drift.drifted(moved)  # one bin, but a large move
    zero = drift.reference(t, np.zeros(len(t)))
    assert drift.drift(zero, hours, np.zeros(120)) == {"psi": 0.0, "wasserstein": 0.0}


def test_too_little_data_or_unseen_hours_is_unknown_not_zero():
    t = _times(0, 2 * 3600)  # training saw only hours 0 and 1
    assert drift.reference(t[:drift.MIN_POINTS - 1], np.ones(drift.MIN_POINTS - 1)) is None
    ref = drift.reference(t, np.arange(len(t), dtype=float))
    assert drift.drift(ref, _times(5 * 3600, 2 * 3600), np.ones(120)) is None  # hours 5, 6: nothing to compare
    assert drift.drift(ref, t[:drift.MIN_POINTS - 1], np.ones(drift.MIN_POINTS - 1)) is None
    assert drift.drift(ref, t[:drift.MIN_POINTS], np.ones(drift.MIN_POINTS)) is not None
    assert drift.drift(ref, t, np.full(len(t), np.nan)) is None


def test_psi_is_zero_for_equal_shares_and_finite_for_an_empty_bin():
    assert drift.psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert drift.psi([0.5, 0.5], [1.0, 0.0]) == pytest.approx(0.5 * np.log(2) + (0.5 - drift.EPS) * np.log(0.5 / drift.EPS))


def test_the_packed_reference_survives_the_store_format_and_old_versions_have_none():
    rng = np.random.default_rng(5)
    t = _times(0, DAY)
    refs = {"value": {"a": drift.reference(t, rng.normal(0, 1, len(t))),
                      "b": drift.reference(t, rng.normal(5, 1, len(t)))}}
    doc = unpack_state(pack_state({"drift_reference": drift.pack(refs, DAY)}))["drift_reference"]
    back, until = drift.unpack(doc)
    assert until == DAY and set(back["value"]) == {"a", "b"}
    recent = _times(DAY, 2 * 3600)
    x = rng.normal(5, 1, len(recent))
    assert drift.drift(back["value"]["b"], recent, x) == pytest.approx(drift.drift(refs["value"]["b"], recent, x))
    assert drift.unpack(None) is None
    assert drift.unpack({"format": 99}) is None
    doc["features"]["value"]["scale"] = np.ones(3)
    with pytest.raises(ValueError, match="wrong shape"):
        drift.unpack(doc)
