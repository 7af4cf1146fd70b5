"""Property tests of the config loader: whatever the document, the only exception is ConfigError,
and when one value was made hostile the error names that value's key (or a key inside it).

(a) exhaustive: every key path of two real configs (the built-in preset, and one with every section:
    loki, logs, store, schedule, defaults, headers) times a list of hostile values;
(b) hypothesis: random YAML-able documents and random mutations of the two configs;
(c) a seeded generator of 600 mutated configs (1 to 3 changes each), reproducible without hypothesis.
"""
from __future__ import annotations

import copy
import math
import random
from importlib import resources

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.config import ConfigError, load_config, parse_config

PRESET = yaml.safe_load(resources.files("detector").joinpath("default_preset.yml").read_text())
SECTIONS_YAML = """
prometheus:
  url: http://127.0.0.1:9
  timeout: 5s
  retries: 2
  headers: {Authorization: Bearer x, X-Scope-OrgID: rig}
loki:
  url: http://127.0.0.1:3100
  timeout: 5
  retries: 1
  backoff: 0.5
  max_backoff: 10
  page_limit: 1000
  tenant: rig
  query: '{job="docker"}'
logs:
  window_s: 300
  top_templates: 50
  sequence: true
  rate_sigmas: 6
  boot_damping: 0.1
  catch_up_s: 3600
  miner: {sim_threshold: 0.6, prefix_tokens: 2, extra_masks: ['id-[0-9]+'], mask_kinds: [ipv4, uuid],
          skeleton_merge: true, cache_size: 1000}
  patterns: {ssh_window_s: 600, ssh_total: 40, cuda_oom_single: 1.5}
listen: 127.0.0.1:9843
api_token: secret
store: {path: STORE}
gate: {enabled: true, holdout: 6h, max_extra_incidents: 2, max_extra_alarm: 10m}
schedule: {step: 30s, fit_every: 1h, lookback: 2d, context: 30m, warmup: 1h, fallback_refit: 20m}
defaults: {min_duration: 2m, merge_gap: 5m, sensitivity: 3, join_on: [uuid, gpu], fallback: robust_z}
detectors:
  - {name: cpu, query: up, model: robust_z, direction: up, min_deviation: 0.5, min_fit_r2: 0.1,
     key: [instance], enabled: true, params: {window: 60, min_periods: 5, tail_quantile: 0.99}}
  - {name: season, query: up, model: seasonal_esd, params: {alpha: 0.05, period: 1d, method: fast}}
  - {name: heat, query: t, model: thermal, features: {power: p, fan: f},
     params: {lagged: [power], time_constants: [60, 10m], ridge: 0.001, concave: true}}
  - {name: forest, query: u, model: iforest, features: {power: p}, params: {n_estimators: 20, max_samples: 64}}
  - {name: gone, query: x, rule: series_vanished, heartbeat: up, params: {max_age: 150s}}
  - {name: grow, query: m, rule: steady_increase, params: {window: 10m, min_increase: 5.0e+8, min_fraction: 0.75}}
"""
HOSTILE = [None, "", "x", -1, 0, 1e300, math.inf, math.nan, True, [], {}, "99999999999w", 12, "1.0e+300",
           "y" * 100_000]


@pytest.fixture(scope="module")
def sections(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    return yaml.safe_load(SECTIONS_YAML.replace("STORE", str(store)))


def paths(node, prefix=""):
    """Every key path of a YAML document, in the loader's own spelling (a.b, a[0].b)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        path = f"{prefix}[{k}]" if isinstance(node, list) else (f"{prefix}.{k}" if prefix else str(k))
        yield path, v
        yield from paths(v, path)


def _split(path):
    out = []
    for part in path.replace("[", ".[").split("."):
        if part:
            out.append(int(part[1:-1]) if part.startswith("[") else part)
    return out


def mutated(doc, path, value):
    doc = copy.deepcopy(doc)
    *parents, last = _split(path)
    node = doc
    for p in parents:
        node = node[p]
    node[last] = value
    return doc


def names(error_key: str, path: str) -> bool:
    """The error names the mutated key, or a key inside it (a mapping made empty: its first missing key)."""
    return error_key == path or error_key.startswith((path + ".", path + "["))


def _load(doc):
    return parse_config(doc, require_detectors=True)  # what load_config runs after YAML


def test_both_base_configs_load(sections):
    assert len(_load(PRESET).detectors) == 14
    cfg = _load(sections)
    assert len(cfg.detectors) == 6 and cfg.loki["tenant"] == "rig" and cfg.logs["window_s"] == 300


def test_every_key_times_every_hostile_value(sections, capsys):
    counts = {"mutated docs": 0, "refused by key": 0, "loaded": 0}
    wrong: list[str] = []
    for name, base in (("preset", PRESET), ("sections", sections)):
        for path, _ in list(paths(base)):
            for value in HOSTILE:
                counts["mutated docs"] += 1
                try:
                    _load(mutated(base, path, value))
                except ConfigError as e:
                    if names(e.key, path):
                        counts["refused by key"] += 1
                    else:
                        wrong.append(f"{name} {path} = {value!r:.40}: {e.key}: {e.problem:.100}")
                    continue
                # any other exception fails the test here, with its traceback
                counts["loaded"] += 1
    with capsys.disabled():
        print(f"\nconfig mutation: {counts}, named another key: {len(wrong)}")
    assert not wrong, "\n".join(wrong[:30])
    assert counts["refused by key"] > 0.7 * counts["mutated docs"]  # the hostile values are mostly refused


# -- (b) hypothesis ---------------------------------------------------------------------------------
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=30), st.sampled_from(["90s", "1h30m", "99999999999w", "1.0e+300", ".inf",
                                                           "http://x", "127.0.0.1:9843", "robust_z", "up"]))
KEYS = st.one_of(st.sampled_from(["prometheus", "loki", "logs", "listen", "api_token", "store", "schedule",
                                  "defaults", "detectors", "url", "timeout", "retries", "headers", "path",
                                  "step", "lookback", "window_s", "miner", "name", "query", "model", "rule",
                                  "params", "features", "min_duration", "window", "lagged"]),
                 st.text(max_size=8), st.integers(-3, 3))
DOCS = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(KEYS, inner, max_size=5)), max_leaves=25)


def _only_config_errors(text: str) -> None:
    try:
        load_config(text=text)
    except ConfigError as e:
        assert e.key and "\n" not in str(e), str(e)  # the CLI's one-line error


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCS)
def test_random_documents_raise_only_config_error(doc):
    _only_config_errors(yaml.safe_dump(doc))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_mutations_raise_only_config_error_naming_the_key(data, sections):
    base = data.draw(st.sampled_from([PRESET, sections]))
    path = data.draw(st.sampled_from([p for p, _ in paths(base)]))
    value = data.draw(DOCS)
    try:
        load_config(text=yaml.safe_dump(mutated(base, path, value)))
    except ConfigError as e:
        assert names(e.key, path) or related(path, e.key), (path, value, str(e))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_text_raises_only_config_error(text):
    _only_config_errors(text)


# -- (c) a seeded generator -------------------------------------------------------------------------
def related(path: str, error_key: str) -> bool:
    """Keys whose legality depends on the changed one, where the error rightly names the other key:
    a legal step can leave the lookback under 10 steps; another model or rule makes the detector's
    features or params wrong for it."""
    if path == "schedule.step":
        return error_key == "schedule.lookback"
    if path.endswith((".model", ".rule")) and path.startswith("detectors["):
        detector = path.rsplit(".", 1)[0]
        return error_key.startswith((detector + ".features", detector + ".params"))
    return False


def _random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 2 else 7)
    if kind == 0:
        return rng.choice(HOSTILE)
    if kind == 1:
        return rng.randint(-10**6, 10**6) if rng.random() < 0.8 else rng.choice([2**64, -2**70, 10**400])
    if kind == 2:
        return rng.choice([rng.uniform(-1e6, 1e6), 10 ** rng.uniform(-300, 308), -math.inf, math.nan])
    if kind == 3:
        return f"{rng.randint(0, 10**12)}{rng.choice(['ms', 's', 'm', 'h', 'd', 'w', '', 'x'])}"
    if kind == 4:
        return "".join(rng.choice("ab_:/.1{}[]\"' \t") for _ in range(rng.randint(0, 12)))
    if kind == 5:
        return rng.choice([True, False, None])
    if kind == 6:
        return rng.choice(["http://127.0.0.1:1", "robust_z", "iforest", "up", "both", "none", "[::1]:0",
                           "127.0.0.1:99999", "/dev/null", "1h30m", ".nan"])
    if kind == 7:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["url", "x", "path", "window", 3, "step"]): _random_value(rng, depth + 1)
            for _ in range(rng.randint(0, 3))}


def test_600_seeded_mutated_configs(sections, capsys):
    rng = random.Random(20261204)
    counts = {"loaded": 0, "refused": 0}
    for i in range(600):
        base = rng.choice([PRESET, sections])
        doc, changed = base, []
        for _ in range(rng.randint(1, 3)):
            all_paths = [p for p, _ in paths(doc)]
            if not all_paths:
                break
            path = rng.choice(all_paths)
            doc = mutated(doc, path, _random_value(rng))
            changed.append(path)
        try:
            load_config(text=yaml.safe_dump(doc))
            counts["loaded"] += 1
        except ConfigError as e:
            counts["refused"] += 1
            named = [p for p in changed if names(e.key, p) or related(p, e.key)]
            assert named, f"doc {i}: changed {changed}, error names {e.key}: {e.problem:.120}"
    with capsys.disabled():
        print(f"\nseeded mutated configs: {counts}")
    assert counts["refused"] > 300, counts


# -- the table covers every numeric key, and every entry is used -------------------------------------
def test_limits_cover_every_numeric_key_and_nothing_else():
    from dataclasses import fields

    from detector import config as config_module
    from detector.config_values import LIMITS
    from detector.logs.detector import _MINER_TYPES, LogDetectorConfig
    from detector.logs.loki import _CONFIG_KEYS
    from detector.logs.miner import MinerConfig
    from detector.logs.patterns import PatternConfig
    from detector.models import MODELS, RULES

    expected = {f"prometheus.{k}" for k in ("timeout", "retries", "latency_offset")}
    expected |= {f"schedule.{k}" for k in config_module._SCHEDULE_KEYS}
    expected |= {f"detectors[].{k}" for k in ("sensitivity", "min_deviation", "min_duration", "merge_gap",
                                               "min_fit_r2")}
    expected |= {f"params.rule.{check}" for rule in RULES.values() for check, _ in rule.PARAMS.values()}
    for kind, cls in MODELS.items():
        for p in cls._param_names():
            if p in config_module._DETECTOR_LEVEL or p == "feature_names" \
                    or f"{kind}.{p}" in config_module._MODEL_PARAM_TYPES:
                continue
            expected.add(f"params.{kind}.{p}")  # a model parameter without a type or a range
    expected |= {f"loki.{k}" for k in _CONFIG_KEYS if k not in ("url", "tenant", "query")}
    expected |= {f"logs.{f.name}" for f in fields(LogDetectorConfig) if f.name not in ("sequence", "miner", "patterns")}
    expected |= {f"logs.miner.{f.name}" for f in fields(MinerConfig) if f.name not in _MINER_TYPES}
    expected |= {f"logs.patterns.{f.name}" for f in fields(PatternConfig)}
    expected.add("maintenance[].duration")  # how long a window may be (end - start)
    expected |= {f"tracking.{f.name}" for f in fields(config_module.TrackingConfig) if f.type == "float"}
    expected |= {f"gate.{f.name}" for f in fields(config_module.GateConfig) if f.type in ("float", "int")}
    from detector.context.config import InferenceConfig
    expected |= {f"inference.{f.name}" for f in fields(InferenceConfig) if f.type in ("float", "int")}
    # params.rule.number / positive / fraction are kinds a rule may declare; some may be unused today
    spare = {k for k in LIMITS if k.startswith("params.rule.")} - expected
    assert set(LIMITS) - spare == expected, (set(LIMITS) ^ expected)
