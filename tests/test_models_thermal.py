import numpy as np
import pytest

from detector.models import ThermalModel


def simulate(n, seed=0, resistance=1.0, power=None):
    """A GPU as a first-order thermal system: T -> 28 + P * R(fan) with a 4-minute time
    constant; the fan controller reacts to temperature.  ``resistance`` > 1 models dust/paste."""
    rng = np.random.default_rng(seed)
    P = power if power is not None else np.repeat(rng.choice([30.0, 120, 250, 350], n // 30 + 1), 30)[:n]
    T, fan, temp = np.zeros(n), np.zeros(n), 30.0
    for i in range(n):
        fan[i] = np.clip(30 + (temp - 50) * 2.5, 30, 100)
        target = 28 + P[i] * (0.16 - 0.06 * fan[i] / 100) * resistance
        temp += (target - temp) * (1 - np.exp(-60 / 240))
        T[i] = temp + rng.normal(0, 0.4)
    return 1.7e9 + 60.0 * np.arange(n), np.c_[P, fan], T


@pytest.fixture(scope="module")
def fitted():
    t, X, y = simulate(3 * 1440)
    return ThermalModel(feature_names=("power", "fan")).fit(t, X, y)


def _continue(model, X, y, start=3 * 1440):
    t = 1.7e9 + 60.0 * np.arange(start, start + len(y))
    return model.score(t, X, y)


def test_fit_explains_temperature(fitted):
    assert fitted.r2_ > 0.95
    assert fitted.scale_ < 1.0


def test_hotter_than_explained_at_normal_temperature_is_flagged(fitted):
    # 60 min at 60 W: a healthy card settles near 36 C; this one sits at 48 C, a temperature that
    # is perfectly normal under load (the card reaches 75 C at 350 W)
    P = np.full(60, 60.0)
    _, X, healthy = simulate(60, seed=5, power=P)
    sick = healthy + 12.0
    f = _continue(fitted.__class__.from_state(fitted.get_state()), X, sick)
    assert sick[-1] < 55
    assert np.all(f.score[20:] > 1)
    assert np.all(f.expected[20:] < 42)


def test_hot_but_loaded_is_not_flagged(fitted):
    P = np.full(90, 350.0)
    _, X, y = simulate(90, seed=6, power=P)
    f = _continue(fitted.__class__.from_state(fitted.get_state()), X, y)
    assert y[-1] > 65
    assert np.all(f.score[45:] <= 1)


def test_thermal_lag_respected(fitted):
    # load drops: the card stays hot for minutes, hotter than a lag-free model would expect
    P = np.r_[np.full(60, 350.0), np.full(30, 30.0)]
    _, X, y = simulate(90, seed=7, power=P)
    f = _continue(fitted.__class__.from_state(fitted.get_state()), X, y)
    assert np.all(f.score[5:] <= 1)
    lag_free = ThermalModel(time_constants=(1.0,)).fit(*simulate(3 * 1440))
    assert _continue(lag_free, X, y).score[60:70].max() > 1


def test_direction_up_ignores_cooler(fitted):
    P = np.full(30, 250.0)
    _, X, y = simulate(30, seed=8, power=P)
    m = fitted.__class__.from_state(fitted.get_state())
    f = _continue(m, X, y - 15)
    assert np.all(f.score == 0)


def test_state_round_trip_and_dataframe_columns(fitted):
    import pandas as pd

    _, X, y = simulate(40, seed=9)
    a = fitted.__class__.from_state(fitted.get_state())
    b = fitted.__class__.from_state(a.get_state())
    df = pd.DataFrame({"fan": X[:, 1], "power": X[:, 0]})  # column order differs: picked by name
    fa, fb = _continue(a, X, y), _continue(b, df, y)
    for k in ("score", "expected", "lower", "upper"):
        np.testing.assert_array_equal(getattr(fa, k), getattr(fb, k))


def test_bad_input_named():
    with pytest.raises(ValueError, match="lagged"):
        ThermalModel(feature_names=("fan",), lagged=("power",)).fit([0.0], [[1.0]], [1.0])
    t, X, y = simulate(50)
    with pytest.raises(ValueError, match="usable rows"):
        ThermalModel().fit(t[:20], X[:20], y[:20])
    with pytest.raises(ValueError, match="columns"):
        ThermalModel().fit(t, X[:, :1], y)


# -- a GPU that has only idled so far ----------------------------------------------------------
def idle_history(n=14 * 60, seed=11):
    """Power within a watt of idle; temperature drifting with the room (integer NVML readings).
    Nothing in it says how the card responds to load."""
    rng = np.random.default_rng(seed)
    t = 1.7e9 + 60.0 * np.arange(n)
    P = 21.0 + rng.normal(0, 0.15, n)
    T = np.round(33 + 2 * np.sin(np.arange(n) / 200) + rng.normal(0, 0.4, n))
    return t, P[:, None], T


def first_order(P, start_temp, gain, idle=21.0, base=33.0, tau=90.0):
    T, temp = np.zeros(len(P)), start_temp
    for i, p in enumerate(P):
        temp += (base + (p - idle) * gain - temp) * (1 - np.exp(-60 / tau))
        T[i] = temp
    return T


@pytest.fixture(scope="module")
def idle_fitted():
    t, X, y = idle_history()
    return ThermalModel(feature_names=("power",), min_deviation=10.0).fit(t, X, y), t[-1]


def _after(model, last_t, P, y):
    t = last_t + 60.0 * np.arange(1, len(y) + 1)
    return model.__class__.from_state(model.get_state()).score(t, np.asarray(P, float)[:, None], y)


def test_idle_fit_expects_a_sane_temperature_at_the_first_load(idle_fitted):
    model, last_t = idle_fitted
    P = np.r_[np.full(10, 21.0), np.full(40, 300.0)]
    y = first_order(P, 33.0, gain=0.13)  # a healthy card: about 70 C at 300 W
    f = _after(model, last_t, P, y)
    # no wild extrapolation of slopes fitted on idle noise (it used to expect 195 C, or -200 C)
    assert np.all((f.expected > 25) & (f.expected < 33 + 0.3 * 300))
    assert np.all(f.score <= 1)


def test_expected_never_falls_as_power_rises(idle_fitted):
    model, last_t = idle_fitted
    P = np.repeat([15.0, 20.8, 21.0, 21.2, 60.0, 150.0, 350.0], 60)
    f = _after(model, last_t, P, np.full(len(P), 40.0))
    steady = f.expected[59::60]
    assert np.all(np.diff(steady) >= -1e-9), steady


def test_idle_fit_flags_a_hot_card_at_idle_and_far_beyond_any_plausible_rise(idle_fitted):
    model, last_t = idle_fitted
    # fan failure at idle: the power is in the seen range, the temperature is not
    f = _after(model, last_t, np.full(30, 21.0), np.full(30, 52.0))
    assert np.all(f.score[5:] > 1)
    # at load the band spans every rise up to extrapolation_slope per extra watt ...
    P = np.full(60, 120.0)
    plausible = first_order(P, 33.0, gain=0.25)
    assert np.all(_after(model, last_t, P, plausible).score <= 1)
    # ... and a card hotter than even that is flagged
    hotter = first_order(P, 33.0, gain=0.3) + 15
    assert np.all(_after(model, last_t, P, hotter).score[30:] > 1)


def test_band_widens_only_beyond_the_seen_range(idle_fitted):
    model, last_t = idle_fitted
    inside = _after(model, last_t, np.full(30, 21.0), np.full(30, 33.0))
    outside = _after(model, last_t, np.full(30, 200.0), np.full(30, 33.0))
    width_in = inside.upper - inside.lower
    np.testing.assert_allclose(width_in, 2 * max(model.sensitivity * model.scale_, model.min_deviation))
    assert np.all(np.diff(outside.upper - outside.lower) >= -1e-9)  # widens as the smoothing catches up
    assert (outside.upper - outside.lower)[-1] > width_in[-1] + 0.3 * 150


def test_extrapolation_slope_validated():
    with pytest.raises(ValueError, match="extrapolation_slope"):
        ThermalModel(extrapolation_slope=-1)._check_params()


@pytest.mark.parametrize("hours, flagged", [(10, False), (30, True)])
def test_settled_floor_only_once_the_fit_spans_a_day(hours, flagged):
    # a card settled 12 C hotter than its idle load explains (dead fans at idle): below the young
    # fit's floor (15 C: a night of idle has not seen the room warm up), above a day-long fit's
    t, X, y = idle_history(n=hours * 60, seed=3)
    model = ThermalModel(feature_names=("power",), min_deviation=15.0, settled_deviation=6.0).fit(t, X, y)
    assert model.deviation_floor() == (6.0 if flagged else 15.0)
    assert model.fit_metrics()["history_span_seconds"] == pytest.approx(t[-1] - t[0] - 1800, abs=60)
    healthy = _after(model, t[-1], np.full(60, 21.0), np.full(60, 33.0))
    sick = _after(model, t[-1], np.full(60, 21.0), np.full(60, 33.0 + 12.0))
    assert np.all(healthy.score <= 1)
    assert np.all(sick.score[10:] > 1) == flagged and np.all(sick.score[10:] <= 1) != flagged


def test_settled_floor_defaults_off_and_round_trips():
    t, X, y = idle_history(n=30 * 60, seed=4)
    model = ThermalModel(feature_names=("power",), min_deviation=10.0).fit(t, X, y)
    assert model.deviation_floor() == 10.0  # no settled_deviation: the floor stays min_deviation
    back = ThermalModel.from_state(model.get_state())
    assert back.span_ == model.span_ and back.settled_after == 86400.0


@pytest.mark.parametrize("params", [{"settled_deviation": -1}, {"settled_after": -5}, {"settled_deviation": True}])
def test_settled_params_validated(params):
    with pytest.raises(ValueError, match=next(iter(params))):
        ThermalModel(**params)._check_params()


def test_a_state_without_span_loads_as_a_young_fit():
    # release 0.1.0 stored version-2 states without span_: they load, with the young floor until refit
    t, X, y = idle_history(n=30 * 60, seed=4)
    state = ThermalModel(feature_names=("power",), min_deviation=10.0, settled_deviation=6.0).fit(t, X, y).get_state()
    assert ThermalModel.from_state(state).deviation_floor() == 6.0
    del state["state"]["span_"]
    assert ThermalModel.from_state(state).deviation_floor() == 10.0
