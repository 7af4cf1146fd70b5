import json

import numpy as np
import pytest

from detector.models import MODELS, OnsetFilter, make_model, model_from_state


def test_registry_kinds():
    assert set(MODELS) >= {"seasonal_esd", "robust_z", "thermal", "iforest"}
    for kind, cls in MODELS.items():
        m = make_model(kind)
        assert isinstance(m, cls)
        assert m.kind == kind


def test_unknown_kind_and_param_are_named():
    with pytest.raises(ValueError, match="'prophet'"):
        make_model("prophet")
    with pytest.raises(ValueError, match="'windw'"):
        make_model("robust_z", windw=10)
    with pytest.raises(ValueError, match="direction"):
        make_model("seasonal_esd", direction="left")
    with pytest.raises(ValueError, match="sensitivity"):
        make_model("robust_z", sensitivity=-1)


def test_state_is_json_able_apart_from_arrays_and_checks_kind():
    t = 1.7e9 + 60.0 * np.arange(50)
    m = make_model("robust_z", window=20).fit(t, np.sin(np.arange(50)))
    d = m.get_state()
    plain = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in d["state"].items()}
    json.dumps({**d, "state": plain})
    assert type(model_from_state(d)).__name__ == "RobustZ"
    with pytest.raises(ValueError, match="kind"):
        MODELS["seasonal_esd"].from_state(d)
    with pytest.raises(ValueError, match="version"):
        model_from_state({**d, "version": 99})


def test_onset_filter_reports_new_highs_only():
    f = OnsetFilter(horizon=600.0)
    t = np.arange(12) * 60.0
    s = np.array([0.1, 0.2, 3.0, 2.9, 3.5, 2.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    out = f.filter(t, s)
    np.testing.assert_array_equal(out > 0, [1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    assert out[4] == 3.5
    # 3.5 at t=240 leaves the 600 s window at t=840: a lower score is a new high again after that
    f2 = OnsetFilter(horizon=600.0)
    out2 = f2.filter(np.array([0.0, 240.0, 700.0, 900.0]), np.array([0.0, 3.5, 1.0, 2.0]))
    np.testing.assert_array_equal(out2 > 0, [0, 1, 0, 1])


def test_onset_filter_quiet_rule_and_state():
    f = OnsetFilter(horizon=86400.0, quiet=3600.0)
    assert f.update(0.0, 5.0) == 5.0
    assert f.update(60.0, 2.0) == 0.0            # same episode, lower
    assert f.update(60.0 + 3600.0, 2.0) == 2.0   # an hour quiet: new episode although lower
    g = OnsetFilter.from_state(f.get_state())
    assert g.update(3720.0, 2.5) == f.update(3720.0, 2.5)
    assert np.isnan(f.update(4000.0, float("nan")))
    with pytest.raises(ValueError, match="horizon"):
        OnsetFilter(horizon=0)


def test_fit_metrics_are_json_able():
    rng = np.random.default_rng(0)
    t = 1.7e9 + 60.0 * np.arange(3000)
    y = rng.normal(0, 1, 3000)
    X = np.c_[rng.uniform(30, 300, 3000), rng.uniform(30, 90, 3000)]
    fitted = [make_model("seasonal_esd").fit(t, y), make_model("robust_z").fit(t, y),
              make_model("thermal").fit(t, X, 30 + 0.1 * X[:, 0] + rng.normal(0, 0.5, 3000)),
              make_model("iforest").fit(t, X)]
    for m in fitted:
        d = m.fit_metrics()
        assert d
        json.dumps(d)
    assert fitted[0].fit_metrics()["seasonal"] is False  # white noise: no period invented
