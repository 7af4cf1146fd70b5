import numpy as np
import pytest

from detector.models import IsolationForestModel

NAMES = ["temp", "power", "fan", "util"]


def _data(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    util = rng.uniform(0, 100, n)
    power = 30 + 3 * util + rng.normal(0, 10, n)
    temp = 35 + 0.12 * power + rng.normal(0, 1.5, n)
    fan = 30 + 0.8 * (temp - 35) + rng.normal(0, 2, n)
    return np.c_[temp, power, fan, util]


@pytest.fixture(scope="module")
def model():
    return IsolationForestModel(feature_names=NAMES, random_state=1).fit(_data())


def test_explanation_names_the_odd_feature(model):
    normal = np.array([[47.0, 100.0, 40.0, 23.0]])
    odd_fan = np.array([[47.0, 100.0, 95.0, 23.0]])  # fan at 95 % with everything else idle-ish
    odd_power = np.array([[47.0, 400.0, 40.0, 23.0]])
    ex = model.explain(np.r_[odd_fan, odd_power])
    assert next(iter(ex[0])) == "fan"
    assert next(iter(ex[1])) == "power"
    assert sum(ex[0].values()) == pytest.approx(1.0)
    s = model.score(None, np.r_[normal, odd_fan]).score
    assert s[1] > s[0]


def test_calibrated_score(model):
    train = _data(seed=0)
    s = model.score(None, train).score
    assert 0.002 <= np.mean(s > 1) <= 0.01  # calibration quantile 0.995 on the training set
    joint = np.array([[90.0, 30.0, 30.0, 0.0]])  # very hot, idle, slow fan: all odd together
    assert model.score(None, joint).score[0] > 1
    assert np.isnan(model.score(None, joint).expected).all()


def test_score_samples_lower_is_more_abnormal(model):
    s = model.score_samples(np.array([[47.0, 100.0, 40.0, 23.0], [90.0, 30.0, 30.0, 0.0]]))
    assert s[1] < s[0]


def test_state_round_trip(model):
    d = model.get_state()
    for v in d["state"].values():
        assert isinstance(v, (np.ndarray, int, float, list))
    b = IsolationForestModel.from_state(d)
    X = _data(50, seed=3)
    np.testing.assert_array_equal(model.score(None, X).score, b.score(None, X).score)
    assert model.explain(X[:3]) == b.explain(X[:3])


def test_missing_values_filled_and_bad_shapes_named(model):
    s = model.score(None, np.array([[np.nan, 100.0, 40.0, 23.0]])).score
    assert np.isfinite(s).all()
    with pytest.raises(ValueError, match="columns"):
        model.score(None, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="8 rows"):
        IsolationForestModel().fit(np.zeros((3, 2)))
