"""A live cycle scores one new point for many series at once (models/batch.py): every kind's
``score_points`` must give what each model's own ``score`` gives, and leave the same state — with
mixed parameters, buffers still filling, gaps (NaN), and ensembles whose members differ."""
from __future__ import annotations

import copy
import logging

import numpy as np
import pytest

from detector.config import DetectorConfig
from detector.fetch import SeriesData
from detector.metric_detector import MetricDetector
from detector.models import Ensemble, LevelShift, RobustZ, SeasonalESD, ValueNovelty, make_model
from detector.models.batch import score_point_batch

STEP = 60.0
T0 = 1.7e9


def series(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = T0 + STEP * np.arange(n)
    y = 40 + 8 * np.sin(2 * np.pi * t / 86400 + seed) + rng.normal(0, 1 + seed % 3, n)
    y[rng.random(n) < 0.03] = np.nan
    return t, y


# a spread of parameters the arrays must carry per model, and of structures that split a batch
VARIANTS = {
    "robust_z": [{}, {"window": 30, "min_periods": 5, "direction": "up"}, {"sensitivity": 3.0, "direction": "down"},
                 {"min_deviation": 2.0, "tail_factor": 0.0}],
    "seasonal_esd": [{}, {"trend_window": 31, "direction": "up"}, {"sensitivity": 4.0, "min_deviation": 1.0},
                     {"period": 3600.0, "tail_factor": 2.0}],
    "level_shift": [{}, {"window": 3, "baseline": 20, "direction": "down"}, {"sensitivity": 2.0}],
    "value_novelty": [{}, {"margin": 0.3, "direction": "up"}, {"min_deviation": 5.0, "quantile": 0.99}],
    "volatility_shift": [{}, {"window": 3, "baseline": 20, "direction": "down"}, {"sensitivity": 2.0}],
    "ensemble": [{}, {"members": ["value_novelty", "level_shift"]}, {"direction": "up", "sensitivity": 1.5},
                 {"members": ["level_shift", "seasonal_esd", "value_novelty"], "shift_window": 3},
                 {"maturity": 30 * 86400.0, "volatility_window": 4}, {"maturity": 0}],
}
# history lengths: a buffer still filling (robust_z), members sitting out (ensemble: no
# seasonal_esd under two days), and full ones
HISTORY = {"robust_z": [8, 40, 3000], "seasonal_esd": [3 * 1440], "level_shift": [300, 2000],
           "value_novelty": [150, 2000], "volatility_shift": [300, 2000], "ensemble": [400, 3 * 1440]}


def fitted(kind: str, count: int) -> list:
    out = []
    for i in range(count):
        params = VARIANTS[kind][i % len(VARIANTS[kind])]
        n = HISTORY[kind][i % len(HISTORY[kind])]
        t, y = series(i, n)
        out.append(make_model(kind, **params).fit(t, y))
    return out


def states_equal(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(states_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(states_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
    return a == b or (a != a and b != b)


def assert_cycles_match(models: list, cycles: int = 6, seed: int = 0) -> None:
    """Score `cycles` points batched on `models` and one by one on copies: the same frames, states."""
    alone = [copy.deepcopy(m) for m in models]
    rng = np.random.default_rng(seed)
    t_next = max(m.last_t_ for m in models)
    for c in range(cycles):
        t_next += STEP
        y = rng.normal(40, 12, len(models))
        y[rng.random(len(models)) < 0.2] = np.nan
        y[c % len(models)] = 400.0  # one far-out value per cycle: a score well above 1
        got = score_point_batch(models, t_next, y)
        for i, m in enumerate(alone):
            want = m.score(np.array([t_next]), y[i:i + 1])
            for k in ("score", "expected", "lower", "upper"):
                assert np.array_equal(getattr(got, k)[i:i + 1], getattr(want, k), equal_nan=True), (c, i, k)
    for a, b in zip(models, alone, strict=True):
        assert states_equal(a.get_state(), b.get_state())


@pytest.mark.parametrize("kind", sorted(VARIANTS))
def test_one_kind_batched_equals_one_by_one(kind):
    models = fitted(kind, 12)
    assert_cycles_match(models)


def test_kinds_mixed_in_one_batch_answer_in_the_order_given():
    models = fitted("ensemble", 4) + fitted("robust_z", 3) + fitted("value_novelty", 2) + fitted("ensemble", 2)[::-1]
    models = [models[i] for i in np.random.default_rng(3).permutation(len(models))]
    assert_cycles_match(models, cycles=4, seed=5)


def test_a_far_value_scores_above_one_in_a_batch():
    models = fitted("ensemble", 4)
    frame = score_point_batch(models, max(m.last_t_ for m in models) + STEP, [40.0, 400.0, 40.0, np.nan])
    assert frame.score[1] > 1
    assert np.isnan(frame.score[3])


def test_a_refused_batch_moves_no_state():
    models = fitted("ensemble", 3) + fitted("robust_z", 1) + [Ensemble()]  # the last one was never fitted
    before = [m.get_state() for m in models[:4]]
    with pytest.raises(Exception, match="not fitted"):
        score_point_batch(models, T0 + 1e6, [1.0, 2.0, 3.0, 4.0, 5.0])
    assert all(states_equal(m.get_state(), s) for m, s in zip(models[:4], before, strict=True))


def test_a_member_failing_late_in_an_ensemble_batch_moves_no_member():
    """Every other member kind has prepared its share when the corrupt one fails: none commits."""
    models = fitted("ensemble", 4)
    before = [m.get_state() for m in models]
    shift = next(m for m in models[-1].members_ if m.kind == "level_shift")
    good, shift.scale_ = shift.scale_, "corrupt"
    with pytest.raises(ValueError):
        score_point_batch(models, max(m.last_t_ for m in models) + STEP, [1.0, 2.0, 3.0, 4.0])
    shift.scale_ = good
    assert all(states_equal(m.get_state(), s) for m, s in zip(models, before, strict=True))


@pytest.mark.parametrize("cls", [RobustZ, SeasonalESD, LevelShift, ValueNovelty, Ensemble])
def test_score_points_takes_only_its_own_kind_and_one_value_each(cls):
    own = fitted(cls.kind, 2)
    with pytest.raises(TypeError, match=cls.__name__):
        cls.score_points(own + fitted("robust_z" if cls is not RobustZ else "value_novelty", 1), T0 + 1e6, [1.0] * 3)
    with pytest.raises(ValueError, match="2 models"):
        cls.score_points(own, T0 + 1e6, [1.0])
    assert len(cls.score_points([], T0, [])) == 0


def detector_data(n_series: int, t: np.ndarray, rng) -> dict[str, SeriesData]:
    out = {}
    for i in range(n_series):
        y = 40 + 5 * np.sin(2 * np.pi * t / 86400 + i) + rng.normal(0, 1, len(t))
        labels = {"gpu": str(i)}
        out[f"gpu={i}"] = SeriesData(labels, t, y)
    return out


def test_the_detector_scores_a_cycle_in_one_batch_with_the_same_results(caplog):
    cfg = DetectorConfig(name="util", query="q", model="ensemble")
    rng = np.random.default_rng(1)
    t = T0 + STEP * np.arange(2 * 1440 + 60)
    history = detector_data(6, t, rng)
    det = MetricDetector(cfg, STEP)
    det.fit(history, float(t[-1]))
    reference = {sid: copy.deepcopy(sm.model) for sid, sm in det.series.items()}
    broken = next(iter(det.series))
    seasonal = next(m for m in det.series[broken].model.members_ if m.kind == "seasonal_esd")
    seasonal.profile_ = np.zeros(0)  # a corrupt state: this series cannot score, the batch is refused
    for c in range(1, 4):
        tn = np.array([t[-1] + STEP * c])
        data = {sid: SeriesData(sd.labels, tn, np.array([40.0 + 60 * (c == 2)])) for sid, sd in history.items()}
        with caplog.at_level(logging.WARNING):
            out = {b.labels["gpu"]: b for b in det.score(data)}
        assert broken.split("=")[1] not in out  # refused on its own, reported, the others scored
        assert len(out) == len(history) - 1
        for sid, model in reference.items():
            if sid == broken:
                continue
            want = model.score(tn, data[sid].y)
            got = out[sid.split("=")[1]]
            assert np.array_equal(got.score, want.score, equal_nan=True)
            assert np.array_equal(got.upper, want.upper, equal_nan=True)
            assert det.series[sid].last_t == tn[0]
    assert f"scoring {broken} failed" in caplog.text
