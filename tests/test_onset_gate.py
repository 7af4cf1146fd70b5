"""The onset gate of the incident policy (`onsets:`), MemorySource, and both through a backtest."""
import numpy as np
import pytest

from detector.config import ConfigError, parse_config
from detector.fetch import MemorySource, SeriesData
from detector.incidents import IncidentPolicy, IncidentTracker
from detector.metric_plugin import MetricPlugin
from detector.scores import ScoreBatch

T = np.arange(0, 60 * 200, 60.0)
NAN = np.full(len(T), np.nan)


def _episodes(second: float) -> np.ndarray:
    s = np.zeros(len(T))
    s[20:25] = 5.0  # first episode
    s[100:105] = second  # a second one 80 min later, well past merge_gap
    return s


def _starts(policy: IncidentPolicy, score: np.ndarray) -> list[float]:
    tr = IncidentTracker(default=policy, step=60)
    tr.update(ScoreBatch("d", "m", {"s": "1"}, T, T, score, NAN, NAN, NAN))
    tr.flush()
    return [i.start for i in tr.closed]


def test_onsets_suppress_a_lower_episode_within_the_horizon_and_open_for_a_higher_one():
    gated = IncidentPolicy(60, 300, {"horizon": 86400.0})
    assert _starts(gated, _episodes(3.0)) == [1200.0]
    assert _starts(gated, _episodes(8.0)) == [1200.0, 6000.0]
    assert _starts(IncidentPolicy(60, 300), _episodes(3.0)) == [1200.0, 6000.0]


def test_changed_onsets_on_reload_start_the_filters_afresh():
    tr = IncidentTracker(default=IncidentPolicy(60, 300, {"horizon": 86400.0}), step=60)
    s = _episodes(3.0)
    tr.update(ScoreBatch("d", "m", {"s": "1"}, T[:60], T[:60], s[:60], NAN[:60], NAN[:60], NAN[:60]))
    # a horizon that alone would still suppress the second episode: it opens because the filter is new
    tr.set_policy({"d": IncidentPolicy(60, 300, {"horizon": 90000.0})})
    tr.update(ScoreBatch("d", "m", {"s": "1"}, T[60:], T[60:], s[60:], NAN[60:], NAN[60:], NAN[60:]))
    tr.flush()
    assert [i.start for i in tr.closed] == [1200.0, 6000.0]


def _cfg(text: str):
    import yaml

    return parse_config(yaml.safe_load(text))


def test_onsets_config_is_checked_key_by_key_and_inherited_from_defaults():
    c = _cfg("{defaults: {onsets: {horizon: 12h}}, detectors: [{name: a, query: x, model: robust_z},"
             " {name: b, query: y, model: robust_z, onsets: null}]}")
    assert [d.onsets for d in c.detectors] == [{"horizon": 43200.0}, None]
    assert _cfg("{detectors: [{name: a, query: x, model: robust_z}]}").detectors[0].onsets is None
    ok = "{name: p, query: p, model: robust_z}"
    for text, key in [(f"{{detectors: [{ok}, {{name: a, query: x, model: robust_z, onsets: {{horizon: soon}}}}]}}",
                       "detectors[1].onsets.horizon"),
                      ("{defaults: {onsets: {quiet: -1h}}}", "defaults.onsets.quiet"),
                      ("{defaults: {onsets: {threshold: 2}}}", "defaults.onsets.threshold")]:
        with pytest.raises(ConfigError) as e:
            _cfg(text)
        assert e.value.key == key


def test_memory_source_slices_by_time():
    sd = SeriesData({"s": "1"}, T, np.arange(len(T), dtype=float))
    src = MemorySource({"a": {"s=1": sd}})
    det = _cfg("{detectors: [{name: a, query: x, model: robust_z}]}").detectors[0]
    got = src.fetch(det, 600.0, 1200.0, 60.0)["s=1"]
    assert got.t.tolist() == [600.0 + 60 * i for i in range(11)] and got.y[0] == 10.0
    assert src.provenance() == {"source": "memory"}


def test_backtest_over_memory_with_onsets_opens_fewer_incidents():
    rng = np.random.default_rng(0)
    t = np.arange(0, 60 * 2000, 60.0)
    y = rng.normal(0, 1, len(t))
    y[1000:1010] += 12.0
    y[1100:1110] += 8.0  # a lower second episode 100 min later
    data = {"a": {"s=1": SeriesData({"s": "1"}, t, y)}}
    counts = []
    for onsets in ("null", "{horizon: 1d}"):
        cfg = _cfg("{schedule: {warmup: 10h, fit_every: 6h, lookback: 1d}, detectors: "
                   f"[{{name: a, query: x, model: robust_z, min_duration: 1m, onsets: {onsets}}}]}}")
        part = MetricPlugin(cfg, None, source=MemorySource(data)).backtest(t[0], t[-1], threshold=1.0)
        counts.append(len(part.incidents))
    assert counts[1] < counts[0]
