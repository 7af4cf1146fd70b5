"""The promotion gate's rule on literal replays (detector/gate.py): counts and alarm time against
the champion's plus the margins, false-positive windows kept silent, confirmed incidents found; the
evaluation windows; a replay of fixed models through the backtest's tracker."""
from __future__ import annotations

import numpy as np
import pytest

from detector.config import ConfigError, GateConfig, load_config
from detector.fetch import SeriesData
from detector.gate import Replayed, evaluation_windows, judge, replay
from detector.incidents import Incident
from detector.labels import Feedback
from detector.metric_detector import MetricDetector
from detector.plugin import IncidentPolicy

D = "gpu_temperature"
GPU0, GPU1 = {"gpu": "0"}, {"gpu": "1"}
RULE = GateConfig(max_extra_incidents=1, max_extra_alarm=1800)


def inc(start, end, series=GPU0, detector=D):
    return Incident(detector, "robust_z", dict(series), dict(series), start, end, 5.0, start, "", step=60.0)


def rep(*incidents):
    return Replayed(tuple(incidents))


def label(kind, start, end, series=GPU0):
    return Feedback(f"{kind}-{start}", D, kind, start, end, dict(series) if series else None)


def decide(champion, challenger, labels=(), rule=RULE):
    return judge(D, 7, champion, challenger, list(labels), rule, holdout=3600.0, seconds=0.25)


def test_more_incidents_than_allowed_is_rejected_with_the_numbers():
    d = decide(rep(inc(0, 60)), rep(inc(0, 60), inc(1000, 1060), inc(5000, 5060)))
    assert d.outcome == "rejected"
    assert "3 incidents vs champion 1 (+1 allowed)" in d.reason
    assert d.figures["champion_incidents"] == 1 and d.figures["challenger_incidents"] == 3
    assert d.figures["holdout_seconds"] == 3600 and d.figures["gate_seconds"] == 0.25
    assert set(d.figures) == {"champion_incidents", "challenger_incidents", "champion_alarm_seconds",
                              "challenger_alarm_seconds", "false_positive_hits", "true_positives_missed",
                              "holdout_seconds", "gate_seconds"}


def test_equal_is_promoted_and_the_margin_is_respected_to_the_edge():
    assert decide(rep(inc(0, 60)), rep(inc(0, 60))).outcome == "promoted"
    assert decide(rep(), rep(inc(0, 60))).outcome == "promoted"  # +1 incident allowed
    assert decide(rep(), rep(inc(0, 60), inc(900, 960))).outcome == "rejected"
    strict = GateConfig(max_extra_incidents=0, max_extra_alarm=0)
    d = decide(rep(), rep(inc(0, 0)), rule=strict)
    assert d.outcome == "rejected" and "1 incidents vs champion 0 (+0 allowed)" in d.reason


def test_alarm_time_margin():
    # champion: 10 min of alarm; challenger 40 min (one incident each): +30 min is exactly allowed
    champ = rep(inc(0, 540))
    assert decide(champ, rep(inc(0, 540 + 1800))).outcome == "promoted"
    d = decide(champ, rep(inc(0, 540 + 1860)))
    assert d.outcome == "rejected"
    assert d.reason == "alarm 41m00s vs champion 10m00s (+30m00s allowed)"
    assert d.figures["challenger_alarm_seconds"] == 2460 and d.figures["champion_alarm_seconds"] == 600


def test_an_incident_on_a_false_positive_window_rejects():
    fp = label("false_positive", 1000, 2000)
    d = decide(rep(inc(1500, 1600)), rep(inc(1500, 1600)), [fp])
    assert d.outcome == "rejected" and d.reason == "1 incident(s) on windows marked false positive"
    assert d.figures["false_positive_hits"] == 1
    # another series, another time, or another detector: not that window
    assert decide(rep(), rep(inc(1500, 1600, GPU1)), [fp]).outcome == "promoted"
    assert decide(rep(), rep(inc(2100, 2200)), [fp]).outcome == "promoted"
    assert decide(rep(), rep(inc(1500, 1600, detector="other")), [fp]).outcome == "promoted"
    # a label on every series of the detector
    assert decide(rep(), rep(inc(1500, 1600, GPU1)), [label("false_positive", 1000, 2000, None)]).outcome \
        == "rejected"


def test_a_missed_confirmed_incident_rejects_and_a_found_one_promotes():
    tp = label("true_positive", 1000, 2000)
    d = decide(rep(inc(1200, 1300)), rep(), [tp])
    assert d.outcome == "rejected" and d.reason == "1 of 1 confirmed incident(s) missed"
    assert d.figures["true_positives_missed"] == 1
    assert decide(rep(), rep(inc(1200, 1300, GPU1)), [tp]).outcome == "rejected"  # the wrong GPU
    found = decide(rep(inc(1200, 1300)), rep(inc(1900, 2500)), [tp])
    assert found.outcome == "promoted" and "1/1 confirmed incidents found" in found.reason
    assert found.figures["true_positives_missed"] == 0


def test_every_failing_rule_is_named():
    d = decide(rep(), rep(inc(0, 7200), inc(9000, 9060), inc(20000, 20060)),
               [label("true_positive", 50000, 50100), label("false_positive", 9000, 9100)])
    assert d.reason.split("; ") == ["3 incidents vs champion 0 (+1 allowed)",
                                    "alarm 2h05m vs champion 0m00s (+30m00s allowed)",
                                    "1 incident(s) on windows marked false positive",
                                    "1 of 1 confirmed incident(s) missed"]


def test_evaluation_windows_are_the_holdout_and_the_labels_inside_the_lookback_merged():
    labels = [label("true_positive", 100, 200), label("false_positive", 150, 300),
              label("false_positive", 9500, 9700), label("true_positive", -500, 50)]
    assert evaluation_windows(0, 10_000, 1000, labels) == [(0, 50), (100, 300), (9000, 10_000)]
    assert evaluation_windows(0, 10_000, 1000, [label("true_positive", 20_000, 20_100)]) == [(9000, 10_000)]


def test_replay_scores_each_window_from_its_start_with_the_state_fixed():
    cfg = load_config(text="""
schedule: {step: 60s, lookback: 8h}
detectors: [{name: gpu_temperature, query: q, model: robust_z, params: {min_periods: 5}}]
""").detectors[0]
    t = np.arange(0, 4 * 3600, 60.0)
    y = 40 + np.sin(t)  # a calm series with a 20-minute jump in the last hour
    y[(t >= 3 * 3600 + 600) & (t < 3 * 3600 + 1800)] += 30
    data = {"s": SeriesData(GPU0, t, y, None, [])}
    det = MetricDetector(cfg, 60)
    det.fit(data, 3 * 3600.0)
    state = det.get_state()
    det.series["s"].last_t = float(t[-1])  # it has scored live to the end: the replay goes back
    kw = {"policy": {D: IncidentPolicy(60, 300)}, "quiet": None, "step": 60.0}
    r = replay(det, data, [(3 * 3600, 4 * 3600 - 60)], **kw)
    assert r.count == 1 and r.incidents[0].start == pytest.approx(3 * 3600 + 600)
    # the maintenance mask quiets it; the stored state is what it was
    quiet = replay(MetricDetector(cfg, 60), data, [], **kw)
    assert quiet.count == 0
    fresh = MetricDetector(cfg, 60)
    fresh.set_state(state)
    masked = replay(fresh, data, [(3 * 3600, 4 * 3600 - 60)], **{**kw, "quiet": lambda d, ts: ts > 3 * 3600})
    assert masked.count == 0


def test_gate_config_defaults_ranges_and_unknown_keys():
    base = "detectors: [{name: d, query: q, model: robust_z}]\n"
    g = load_config(text=base).gate
    assert (g.enabled, g.holdout, g.max_extra_incidents, g.max_extra_alarm) == (True, 86400, 1, 1800)
    g = load_config(text=base + "gate: {enabled: false, holdout: 6h, max_extra_incidents: 0, max_extra_alarm: 0}").gate
    assert (g.enabled, g.holdout, g.max_extra_incidents, g.max_extra_alarm) == (False, 21600, 0, 0)
    assert g.holdout_for(8 * 3600) == 7200 and g.holdout_for(7 * 86400) == 21600  # min(holdout, lookback / 4)
    for text, key in (("gate: {holdot: 1h}", "gate.holdot"), ("gate: {holdout: 0}", "gate.holdout"),
                      ("gate: {max_extra_incidents: -1}", "gate.max_extra_incidents"),
                      ("gate: {max_extra_incidents: 1.5}", "gate.max_extra_incidents"),
                      ("gate: {max_extra_alarm: -5m}", "gate.max_extra_alarm"),
                      ("gate: {enabled: yes please}", "gate.enabled"), ("gate: [1]", "gate")):
        with pytest.raises(ConfigError) as e:
            load_config(text=base + text)
        assert e.value.key == key, (text, str(e.value))
