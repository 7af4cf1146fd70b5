"""Config validation: literal YAML in, the key-naming message out."""
from __future__ import annotations

import pytest

from detector.config import ConfigError, ConfigWatcher, load_config, parse_config, parse_duration


def test_default_preset_loads_and_names_no_job():
    cfg = load_config()
    names = {d.name for d in cfg.detectors}
    assert {"gpu_thermal", "gpu_xid", "container_restarts", "gpu_vanished", "gpu_throttle"} <= names
    assert cfg.listen == "127.0.0.1:9843"
    for d in cfg.detectors:
        assert "job=" not in d.query and "instance=" not in d.query, d.name


@pytest.mark.parametrize("text, message", [
    ("detectors: [{name: a, query: up, model: prophet}]", "detectors[0].model: unknown model 'prophet'"),
    ("detectors: [{name: a, query: up, model: robust_z, direction: upward}]",
     "detectors[0].direction: must be one of up, down, both"),
    ("detectors: [{name: a, query: up}]", "detectors[0].model: missing"),
    ("detectors: [{name: a, model: robust_z}]", "detectors[0].query: expected a non-empty string"),
    ("detectors: [{name: a, query: up, model: robust_z, min_deviation: -1}]", "detectors[0].min_deviation: must be >= 0"),
    ("detectors: [{name: a, query: up, model: robust_z, params: {windw: 3}}]", "detectors[0].params: model 'robust_z': unknown parameter(s) 'windw'"),
    ("detectors: [{name: a, query: up, model: thermal}]", "detectors[0].features: model thermal needs"),
    ("detectors: [{name: a, query: up, rule: counter_increase, params: {window: soon}}]",
     "detectors[0].params.window: expected a duration"),
    ("detectors: [{name: a, query: up, model: robust_z}, {name: a, query: up, model: robust_z}]",
     "detectors[1].name: duplicate"),
    ("schedule: {step: 0s}", "schedule.step: must be > 0"),
    ("schedule: {stepp: 60s}", "schedule.stepp: unknown key"),
    ("prometheus: {url: localhost:9090}", "prometheus.url: must start with http://"),
    ("listen: 9843", "listen: expected a non-empty string"),
    ("listen: 'localhost'", "listen: expected HOST:PORT"),
    ("detectors: {a: 1}", "detectors: expected a list"),
    ("detectors: [{name: 'bad-name', query: up, model: robust_z}]", "detectors[0].name: must match"),
    ("prometheus: [1", "line 1: invalid YAML"),
])
def test_errors_name_the_key(text, message):
    with pytest.raises(ConfigError) as ei:
        load_config(text=text)
    assert str(ei.value).startswith(message), str(ei.value)


def test_defaults_and_durations_apply():
    cfg = load_config(text="""
schedule: {step: 30s, fit_every: 1h, lookback: 2d}
defaults: {min_duration: 5m, model: robust_z}
detectors:
  - {name: cpu, query: 'rate(x[5m])', direction: up, min_deviation: 2e9}
""")
    d = cfg.detectors[0]
    assert (cfg.schedule.step, cfg.schedule.fit_every, cfg.schedule.lookback) == (30, 3600, 172800)
    assert d.model == "robust_z" and d.min_duration == 300 and d.min_deviation == 2e9 and d.direction == "up"
    assert parse_duration("1.5h", "k") == 5400 and parse_duration(90, "k") == 90


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="nope.yml: cannot read config file"):
        load_config(tmp_path / "nope.yml")


ONE = "detectors: [{name: a, query: up, model: robust_z}]\n"  # the smallest config that detects something


def test_token_from_env_wins_and_empty_is_none():
    cfg = load_config(text=ONE + "api_token: from-file")
    assert cfg.token({}) == "from-file"
    assert cfg.token({"RIGWATCH_API_TOKEN": "from-env"}) == "from-env"
    assert load_config(text=ONE).token({}) is None


def test_hot_reload_keeps_running_config_on_error(tmp_path):
    p = tmp_path / "d.yml"
    p.write_text("detectors: [{name: a, query: up, model: robust_z}]")
    w = ConfigWatcher(p)
    assert w.poll() is None
    import os
    import time

    p.write_text("detectors: [{name: a, query: up, model: nonsense}]")
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert w.poll() is None and "detectors[0].model" in w.last_error
    p.write_text("detectors: [{name: b, query: up, model: robust_z}]")
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    cfg = w.poll()
    assert cfg is not None and cfg.detectors[0].name == "b" and w.last_error is None


# -- command-line overrides (serve --prometheus-url / --loki-url / --store) ---------------------
def test_loki_url_creates_the_loki_section_on_the_preset():
    from detector.config import apply_overrides
    from detector.logs.loki import LokiClient

    cfg = load_config(None)
    assert cfg.loki is None  # the built-in preset has no log side ...
    apply_overrides(cfg, loki_url="http://loki:3100")
    assert cfg.loki == {"url": "http://loki:3100"}  # ... until --loki-url turns it on
    # what the log plugin builds its client from (detector.plugins.serve_plugins)
    assert LokiClient.from_config(cfg.loki).url == "http://loki:3100"
    assert cfg.prometheus.url == "http://127.0.0.1:9090"  # untouched


def test_loki_url_overrides_only_the_url_of_an_existing_section():
    from detector.config import apply_overrides

    cfg = load_config(text='loki: {url: "http://old:3100", query: "{job=\\"x\\"}", timeout: 5}\n'
                           'detectors: []\n')
    apply_overrides(cfg, loki_url="https://new:3100/", prometheus_url="http://prom:9090", store="/data/m")
    assert cfg.loki == {"url": "https://new:3100/", "query": '{job="x"}', "timeout": 5}
    assert cfg.prometheus.url == "http://prom:9090" and cfg.store_path == "/data/m"


def test_latency_offset_from_the_file_or_the_flag():
    from detector.config import apply_overrides

    assert load_config(None).prometheus.latency_offset == 0  # a Prometheus scraping the box: none
    cfg = load_config(text="prometheus: {latency_offset: 45s}\n" + DET)
    assert cfg.prometheus.latency_offset == 45
    assert apply_overrides(cfg, latency_offset="30s").prometheus.latency_offset == 30


@pytest.mark.parametrize("kwargs, flag", [({"loki_url": "loki:3100"}, "--loki-url"),
                                          ({"prometheus_url": "ftp://p"}, "--prometheus-url"),
                                          ({"store": " "}, "--store"),
                                          ({"latency_offset": "20m"}, "--prometheus-latency-offset")])
def test_bad_override_names_the_flag(kwargs, flag):
    from detector.config import apply_overrides

    cfg = load_config(None)
    with pytest.raises(ConfigError, match=f"^{flag}: "):
        apply_overrides(cfg, **kwargs)
    assert cfg.loki is None


def test_serve_rejects_a_bad_loki_url_with_exit_2(capsys):
    from detector.cli import main

    assert main(["serve", "--loki-url", "loki:3100", "--listen", "127.0.0.1:0"]) == 2
    assert "--loki-url: must start with http://" in capsys.readouterr().err


# -- issue 10: every key typed and ranged; each case below was accepted (or a traceback) before ------
DET = "detectors: [{name: a, query: up, model: robust_z}]\n"


def test_a_refused_url_is_printed_without_its_password():
    from detector.config import apply_overrides

    with pytest.raises(ConfigError) as e:
        load_config(text="prometheus: {url: 'htp://admin:hunter2@prom:9090'}\n" + DET)
    assert "hunter2" not in str(e.value) and "admin:***@prom" in str(e.value)
    with pytest.raises(ConfigError) as e:
        apply_overrides(load_config(None), prometheus_url="ftp://admin:hunter2@prom:9090")
    assert e.value.key == "--prometheus-url" and "hunter2" not in str(e.value)




# two good detectors, then an ensemble: the error must name the third
_THREE = ("detectors: [{name: a, query: up, model: robust_z}, {name: b, query: up, model: robust_z},"
          " {name: c, query: up, model: ensemble,")


@pytest.mark.parametrize("text, key", [
    ("", "detectors"),  # an empty file started a detector with no detectors
    ("{}", "detectors"),
    ("detectors: []", "detectors"),
    (DET + "schedule: {fit_every: 99999999999w}", "schedule.fit_every"),  # OverflowError in the scheduler
    (DET + "schedule: {step: 1.0e+300}", "schedule.step"),
    (DET + "schedule: {lookback: 1000d}", "schedule.lookback"),
    (DET + "schedule: {step: 2d}", "schedule.step"),
    (DET + "schedule: {context: 60d}", "schedule.context"),
    (DET + "loki: {url: 12}", "loki.url"),  # a ValueError traceback at run time
    (DET + "loki: {url: 'http://l:3100', timout: 3}", "loki.timout"),  # unknown key, seen only at run time
    (DET + "loki: {url: 'http://l:3100', timeout: -1}", "loki.timeout"),
    (DET + "logs: {window_s: -5}", "logs.window_s"),
    (DET + "logs: {windw_s: 5}", "logs.windw_s"),
    (DET + "logs: {miner: {sim_threshold: x}}", "logs.miner.sim_threshold"),
    (DET + "logs: {miner: {extra_masks: ['(']}}", "logs.miner.extra_masks[0]"),
    (DET + "prometheus: {retries: 1000000000000}", "prometheus.retries"),
    (DET + "prometheus: {timeout: 1h}", "prometheus.timeout"),
    (DET + "prometheus: {latency_offset: 1h}", "prometheus.latency_offset"),
    (DET + "prometheus: {latency_offset: -5s}", "prometheus.latency_offset"),
    (DET + "prometheus: {headers: {X-Scope-OrgID: 12}}", "prometheus.headers.X-Scope-OrgID"),
    ("detectors: [{name: a, query: up, model: robust_z}, {name: b, query: up, model: robust_z},"
     " {name: c, query: up, model: robust_z, min_duration: 1.0e+300}]", "detectors[2].min_duration"),
    ("detectors: [{name: a, query: up, model: robust_z, merge_gap: 60d}]", "detectors[0].merge_gap"),
    ("detectors: [{name: a, query: up, model: robust_z, sensitivity: .nan}]", "detectors[0].sensitivity"),
    ("detectors: [{name: a, query: up, model: robust_z, min_deviation: .inf}]", "detectors[0].min_deviation"),
    ("detectors: [{name: a, query: up, model: robust_z, params: {window: .inf}}]",
     "detectors[0].params.window"),  # int(inf): OverflowError
    ("detectors: [{name: a, query: up, model: iforest, features: {p: p}, params: {n_estimators: true}}]",
     "detectors[0].params.n_estimators"),  # a bool taken as 1
    ("detectors: [{name: a, query: up, model: [x]}]", "detectors[0].model"),  # unhashable: TypeError
    ("detectors: [{name: a, query: up, model: robust_z, join_on: [uuid, 'bad label']}]",
     "detectors[0].join_on[1]"),
    ("detectors: [{name: a, query: up, rule: held_active, params: {hold: 99999999999w}}]",
     "detectors[0].params.hold"),
    ("defaults: {min_duration: .nan}\n" + DET, "defaults.min_duration"),  # named where it was written
    # the univariate models of issue 13: each parameter named, not the whole params mapping
    (_THREE + " params: {members: [seasonal_esd, nope]}}]", "detectors[2].params.members[1]"),
    (_THREE + " params: {members: []}}]", "detectors[2].params.members"),
    (_THREE + " params: {members: level_shift}}]", "detectors[2].params.members"),  # a string, not a list
    (_THREE + " params: {members: [level_shift, level_shift]}}]", "detectors[2].params.members[1]"),
    (_THREE + " params: {shift_window: 0}}]", "detectors[2].params.shift_window"),
    (_THREE + " params: {point_sensitivity: 0}}]", "detectors[2].params.point_sensitivity"),
    ("detectors: [{name: a, query: up, model: level_shift, params: {window: 2.5}}]", "detectors[0].params.window"),
    ("detectors: [{name: a, query: up, model: level_shift, params: {relative_floor: 1}}]",
     "detectors[0].params.relative_floor"),  # [0, 1): a floor of the whole level hides every shift
    ("detectors: [{name: a, query: up, model: value_novelty, params: {quantile: 0.5}}]",
     "detectors[0].params.quantile"),
    ("detectors: [{name: a, query: up, model: value_novelty, params: {margin: 0}}]", "detectors[0].params.margin"),
    (_THREE + " params: {volatility_window: 0}}]", "detectors[2].params.volatility_window"),
    (_THREE + " params: {maturity: -1d}}]", "detectors[2].params.maturity"),
    ("detectors: [{name: a, query: up, model: volatility_shift, params: {baseline: 1}}]", "detectors[0].params.baseline"),
    # a volatility has no side: an ensemble of it alone cannot watch one
    ("detectors: [{name: a, query: up, model: ensemble, direction: up, params: {members: [volatility_shift]}}]",
     "detectors[0].params"),
])
def test_hostile_values_are_refused_naming_the_key(text, key):
    with pytest.raises(ConfigError) as ei:
        load_config(text=text)
    assert ei.value.key == key, str(ei.value)
    assert "\n" not in str(ei.value)


def test_new_univariate_models_take_their_params():
    cfg = load_config(text="""
detectors:
  - {name: e, query: up, model: ensemble, sensitivity: 2,
     params: {members: [level_shift, value_novelty], shift_window: 3, shift_baseline: 30, novelty_margin: 0.2}}
  - {name: l, query: up, model: level_shift, params: {window: 10, baseline: 120, tail_quantile: 0.99}}
  - {name: v, query: up, model: value_novelty, params: {quantile: 0.999, min_points: 50}}
""")
    e, ls, vn = cfg.detectors
    assert e.params == {"members": ["level_shift", "value_novelty"], "shift_window": 3, "shift_baseline": 30,
                        "novelty_margin": 0.2}
    assert ls.params["window"] == 10 and vn.params["min_points"] == 50


def test_a_logs_only_config_is_legal():
    # a loki: section turns the log side on, so no metric detector is needed
    cfg = load_config(text="loki: {url: 'http://loki:3100'}\n")
    assert cfg.detectors == [] and cfg.loki == {"url": "http://loki:3100"}
    # a logs: section alone tunes a log side that is off: nothing to detect
    with pytest.raises(ConfigError, match="^detectors: nothing to detect"):
        load_config(text="logs: {window_s: 60}\n")


def test_store_path_that_is_a_file_is_refused(tmp_path):
    from detector.config import apply_overrides

    f = tmp_path / "models"
    f.write_text("not a directory")
    with pytest.raises(ConfigError) as ei:
        load_config(text=DET + f"store: {{path: '{f}'}}")
    assert ei.value.key == "store.path" and "not a directory" in ei.value.problem
    assert load_config(text=DET + f"store: {{path: '{tmp_path}'}}").store_path == str(tmp_path)
    assert load_config(text=DET + f"store: {{path: '{tmp_path / 'new'}'}}").store_path  # created at first save
    cfg = load_config(text=DET)
    with pytest.raises(ConfigError, match="^--store: .* not a directory"):
        apply_overrides(cfg, store=str(f))


def test_durations_never_overflow():
    from rigwatch.durations import parse_duration as plain

    for value in ("99999999999w", 1e300, -1e300, "9" * 300 + "d", 10**300):
        with pytest.raises(ValueError, match="duration") as ei:
            plain(value)
        assert not isinstance(ei.value, OverflowError)
    assert plain("100w") == 100 * 604800.0


def test_hot_reload_refuses_an_empty_file_like_start_up(tmp_path):
    p = tmp_path / "d.yml"
    p.write_text(DET)
    w = ConfigWatcher(p)
    p.write_text("")
    import os
    import time

    os.utime(p, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert w.poll() is None and w.last_error.startswith("detectors: nothing to detect") and not w.successful
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert str(ei.value) == w.last_error  # one check, start-up's


@pytest.mark.parametrize("listen", ["127.0.0.1:99999", "h:" + "9" * 5000])  # both a traceback before
def test_serve_rejects_a_bad_listen_flag_with_exit_2(listen, capsys):
    from detector.cli import main

    assert main(["serve", "--listen", listen, "--prometheus-url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "--listen: expected HOST:PORT" in err and len(err.splitlines()) == 1, err


def test_a_cleared_rule_or_model_is_named_not_filled_from_defaults():
    """`rule: null` / `model: null` clear a key: the error names it instead of a default model's
    complaint about the rule's params or features."""
    base = {"prometheus": {"url": "http://127.0.0.1:9090"}, "defaults": {"model": "ensemble"}}
    for det, key in (({"name": "a", "query": "x", "rule": None, "params": {"window": "10m"}}, "detectors[0].rule"),
                     ({"name": "a", "query": "x", "model": None, "features": {"p": "y"}}, "detectors[0].model")):
        with pytest.raises(ConfigError) as e:
            parse_config({**base, "detectors": [det]}, require_detectors=True)
        assert e.value.key == key
    cfg = parse_config({**base, "detectors": [{"name": "a", "query": "x"}]}, require_detectors=True)
    assert cfg.detectors[0].model == "ensemble"
