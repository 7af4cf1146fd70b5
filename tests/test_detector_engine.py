"""Engine: causal scoring, robust baseline for short history, rules, incidents, state round trip."""
from __future__ import annotations

import numpy as np

from detector.config import load_config
from detector.fetch import SeriesData, fetch_series
from detector.incidents import IncidentPolicy, IncidentTracker
from detector.metric_detector import MetricDetector
from detector.models.rules import CounterIncreaseRule, HeldActiveRule, SeriesVanishedRule
from detector.promclient import Series
from detector.scores import incident_labels, series_id


def det(yaml_detector: str, step=60):
    cfg = load_config(text=f"detectors:\n  - {yaml_detector}")
    return MetricDetector(cfg.detectors[0], step)


GPU = {"gpu": "0", "uuid": "GPU-a", "name": "RTX", "job": "j", "instance": "i"}


def sd(t, y, labels=GPU, X=None, names=()):
    return SeriesData(dict(labels), np.asarray(t, float), np.asarray(y, float), X, list(names))


def test_scoring_is_causal_future_points_do_not_change_past_scores():
    rng = np.random.default_rng(1)
    t = np.arange(0, 3 * 3600, 60.0)
    y = 50 + rng.normal(0, 1, len(t))
    y2 = y.copy()
    y2[150:] += 40  # a very different future
    scores = []
    for series in (y, y2):
        d = det("{name: temp, query: x, model: robust_z}")
        d.fit({"s": sd(t[:60], series[:60])}, t[59])
        out = []
        for i in range(60, len(t), 7):  # fed in uneven chunks, as the live job does
            for b in d.score({"s": sd(t[: i + 7], series[: i + 7])}):
                out.append(b.score)
        scores.append(np.concatenate(out))
    assert len(scores[0]) == len(t) - 60  # every unseen point scored exactly once
    np.testing.assert_array_equal(scores[0][:90], scores[1][:90])
    assert np.nanmax(scores[1][90:]) > 1 and not np.any(scores[1][:90] > 1)


def test_short_history_gets_robust_baseline_then_real_model():
    t = np.arange(0, 3600, 60.0)
    d = det("{name: util, query: x, model: seasonal_esd}")
    d.fit({"s": sd(t, np.sin(t))}, t[-1])
    assert d.series["s"].kind == "robust_z"  # STL needs two periods; an hour is far from that
    t2 = np.arange(0, 3 * 86400, 60.0)
    d.fit({"s": sd(t2, 10 + np.sin(2 * np.pi * t2 / 86400))}, t2[-1])
    assert d.series["s"].kind == "seasonal_esd"


def test_new_series_between_fits_is_scored_by_a_warming_baseline():
    d = det("{name: temp, query: x, model: robust_z}")
    d.fit({}, 0)
    t = np.arange(60, 60 * 40, 60.0)
    (b,) = d.score({"new": sd(t, np.full(len(t), 5.0))})
    assert b.model == "robust_z" and np.isnan(b.score[0]) and np.isfinite(b.score[-1])


def test_counter_rule_sees_first_appearance_and_resets():
    d = det("{name: xid, query: gpu_xid_errors_total, rule: counter_increase, params: {window: 5m}}")
    d.fit({}, 0)  # fitted before the series existed
    (b,) = d.score({"x79": sd([60, 120, 180], [1, 1, 1], {**GPU, "xid": "79"})})
    assert b.score[0] > 1  # appeared at 1: increase() would miss this one
    r = CounterIncreaseRule(window=60, min_increase=1).fit([0, 60], [5, 5])
    assert r.score([120, 180, 240], [5, 1, 1]).score.tolist() == [0, 2, 0]  # reset to 1 = +1


def test_restart_burst_needs_min_increase_within_window():
    r = CounterIncreaseRule(window=900, min_increase=3).fit([0], [0])
    s = r.score([60, 120, 180, 3000, 3060], [1, 1, 1, 2, 3]).score
    assert (s[:3] <= 1).all() and (s[3:] <= 1).all()  # 1 restart, then 2 spread out: routine
    r = CounterIncreaseRule(window=900, min_increase=3).fit([0], [0])
    assert r.score([60, 120, 180], [1, 2, 3]).score[-1] > 1


def test_held_active_only_after_hold():
    r = HeldActiveRule(hold=120).fit([], [])
    s = r.score(np.arange(0, 600, 60.0), [0, 1, 1, 1, 1, 0, 1, 0, 0, 0]).score
    assert (s > 1).tolist() == [False, False, False, True, True, False, False, False, False, False]


def test_vanish_uses_sample_timestamps_and_ignores_whole_host_down():
    r = SeriesVanishedRule(max_age=150).fit([0], np.zeros((1, 1)), [0])
    t = np.arange(60, 600, 60.0)
    y = np.array([60, 120, 120, 120, 120, np.nan, np.nan, np.nan, np.nan])  # stale for 5 min, then gone
    hb = t.copy()  # gpu_up still fresh: the exporter is alive
    s = r.score(t, hb[:, None], y).score
    assert (s > 1).tolist() == [False, False, False, False, True, True, True, True, True]
    r2 = SeriesVanishedRule(max_age=150).fit([0], np.zeros((1, 1)), [0])
    s2 = r2.score(t, np.full((len(t), 1), 120.0), y).score  # heartbeat stale too: a reboot
    assert not (s2 > 1).any()


class FakeClient:
    def __init__(self, answers):
        self.answers = answers

    def query_range(self, q, start, end, step):
        return [Series(dict(lb), np.asarray(t, float), np.asarray(y, float)) for lb, t, y in self.answers[q]]


def test_fetch_joins_features_on_uuid_and_averages_fans():
    c = FakeClient({
        "temp": [(GPU, [60, 120], [50, 51])],
        "power": [({"uuid": "GPU-a", "gpu": "0"}, [60, 120], [100, 200])],
        "fan": [({"uuid": "GPU-a", "fan": "0"}, [60, 120], [0.4, 0.6]),
                ({"uuid": "GPU-a", "fan": "1"}, [120], [0.8])],
    })
    d = det("{name: th, query: temp, model: thermal, features: {power: power, fan: fan}}")
    (s,) = fetch_series(c, d.cfg, 60, 120, 60).values()
    assert s.feature_names == ["power", "fan"]
    np.testing.assert_allclose(s.X, [[100, 0.4], [200, 0.7]])


def test_series_identity_is_uuid_and_incident_labels_drop_location():
    assert series_id(GPU) == series_id({**GPU, "gpu": "1"})  # index shifted at boot: same GPU
    assert incident_labels({**GPU, "container": "ollama"}) == {"gpu": "0", "container": "ollama"}


def test_incidents_bracket_anomaly_tightly_and_merge_close_runs():
    from detector.scores import ScoreBatch

    t = np.arange(0, 60 * 100, 60.0)
    score = np.zeros(len(t))
    score[[10, 11, 12, 15, 16, 60]] = 3
    tr = IncidentTracker(default=IncidentPolicy(min_duration=120, merge_gap=300), step=60)
    nan = np.full(len(t), np.nan)
    tr.update(ScoreBatch("d", "m", GPU, t, t, score, nan, nan, nan))
    tr.flush()
    inc = [(i.start, i.end) for i in tr.closed]
    assert inc == [(600.0, 960.0)]  # 10..16 merged; the lone point at 60 is a blip


def test_state_roundtrip_continues_identically():
    rng = np.random.default_rng(2)
    t = np.arange(0, 7200, 60.0)
    y = rng.normal(0, 1, len(t))
    a = det("{name: temp, query: x, model: robust_z}")
    a.fit({"s": sd(t[:60], y[:60])}, t[59])
    b = det("{name: temp, query: x, model: robust_z}")
    from detector.store import pack_state, unpack_state

    b.set_state(unpack_state(pack_state(a.get_state())))
    (sa,) = a.score({"s": sd(t, y)})
    (sb,) = b.score({"s": sd(t, y)})
    np.testing.assert_array_equal(sa.score, sb.score)


def test_vanished_series_absent_from_answer_is_still_scored_via_heartbeat():
    c = FakeClient({
        "timestamp(temp)": [],  # gone for longer than the 5-minute lookback: not in the answer at all
        "timestamp(up)": [(GPU, [60, 120, 180], [60, 120, 180])],
    })
    d = det("{name: v, query: timestamp(temp), rule: series_vanished, heartbeat: timestamp(up)}")
    d.fit({series_id(GPU): sd([0], [0.0], X=np.zeros((1, 1)))}, 0)  # last sample seen at t=0
    data = fetch_series(c, d.cfg, 60, 180, 60, grid=True)
    (b,) = d.score(data)
    assert b.labels["gpu"] == "0" and (b.score > 1).tolist() == [False, False, True]
