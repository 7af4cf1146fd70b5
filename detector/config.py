"""detector.yml: loaded, validated and defaulted in one place, with errors that name the key.

Without a file the packaged default preset (default_preset.yml) is used. Every problem raises
ConfigError("detectors[3].direction: must be one of up, down, both (got 'upward')").
"""
from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from detector.models import FALLBACKS, FEATURE_KINDS, MODELS, RULES, make_model, model_class
from rigwatch import durations
from rigwatch.secret_files import SecretFileError, secret_from_env

log = logging.getLogger(__name__)
DIRECTIONS = ("up", "down", "both")
_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class ConfigError(ValueError):
    """A config problem; str() starts with the key path."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def parse_duration(value: Any, key: str) -> float:
    """'90s', '5m', '1h30m', '7d', '1w' or a number of seconds (rigwatch.durations) -> seconds (float, > 0)."""
    try:
        seconds = durations.parse_duration(value)
    except ValueError as e:
        raise ConfigError(key, str(e)) from None
    if seconds <= 0:
        raise ConfigError(key, f"must be > 0 (got {value!r})")
    return seconds


@dataclass
class PrometheusConfig:
    url: str = "http://127.0.0.1:9090"
    timeout: float = 10.0
    retries: int = 3
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class ScheduleConfig:
    step: float = 60.0  # scoring resolution and cadence
    fit_every: float = 6 * 3600.0
    lookback: float = 7 * 86400.0  # training window
    context: float = 3600.0  # trailing data handed to score() before the unseen points
    warmup: float = 2 * 3600.0  # backtest: history before the first fit
    fallback_refit: float = 3600.0  # refit this often while a series still has only its fallback model


@dataclass
class DetectorConfig:
    name: str
    query: str
    model: str | None = None  # a kind of detector.models.MODELS, or None for a rule
    rule: str | None = None  # a kind of detector.models.RULES
    params: dict[str, Any] = field(default_factory=dict)
    sensitivity: float | None = None  # passed to the model (its band half-width); None = model default
    direction: str | None = None  # None = the model's default (thermal: up, others: both)
    min_deviation: float | None = None  # None = the model's default
    min_duration: float = 60.0  # an incident needs anomalous scores at least this long
    merge_gap: float = 300.0  # runs closer than this merge into one incident
    key: list[str] | None = None  # identifying labels; None = all the series' labels
    features: dict[str, str] = field(default_factory=dict)  # name -> PromQL (multivariate models)
    join_on: list[str] = field(default_factory=lambda: ["uuid"])
    fallback: str = "robust_z"  # model while a series lacks history: robust_z, or none (no score)
    min_fit_r2: float | None = None  # a fit explaining less of the variance falls back (models with r2_)
    heartbeat: str | None = None  # series_vanished: a query that proves the exporter is alive
    enabled: bool = True

    @property
    def kind(self) -> str:
        return self.model or self.rule or ""


@dataclass
class Config:
    prometheus: PrometheusConfig = field(default_factory=PrometheusConfig)
    loki: dict[str, Any] | None = None  # owned by the log side; kept as given
    logs: dict[str, Any] | None = None
    listen: str = "127.0.0.1:9843"
    api_token: str | None = None
    store_path: str = "rigwatch-models"
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    detectors: list[DetectorConfig] = field(default_factory=list)
    source: str = "<default preset>"

    def reloaded_over(self, running: Config) -> Config:
        """This (reloaded) config as a running service takes it: the listener, the sources' clients
        and the store were built at start-up (from the file plus command-line overrides) and keep
        their running values; detectors, schedule and the rest reload."""
        return replace(self, listen=running.listen, prometheus=running.prometheus, loki=running.loki,
                       store_path=running.store_path)

    def token(self, environ=os.environ) -> str | None:
        """The API bearer token: RIGWATCH_API_TOKEN, else the file RIGWATCH_API_TOKEN_FILE names (read
        each time: rewriting it rotates the token), else the config's api_token; empty means none.
        An unreadable token file is a ConfigError naming RIGWATCH_API_TOKEN_FILE."""
        try:
            tok = secret_from_env("RIGWATCH_API_TOKEN", environ) or self.api_token
        except SecretFileError as e:
            raise ConfigError(e.variable, e.problem) from None
        return tok or None


_TOP_KEYS = {"prometheus", "loki", "logs", "listen", "api_token", "store", "schedule", "defaults", "detectors"}
_DET_KEYS = {"name", "query", "model", "rule", "params", "sensitivity", "direction", "min_deviation",
             "min_duration", "merge_gap", "key", "features", "join_on", "heartbeat", "enabled", "fallback",
             "min_fit_r2"}


def _check_keys(d: dict, allowed: set[str], key: str) -> None:
    for k in d:
        if k not in allowed:
            where = f"{key}.{k}" if key else str(k)
            raise ConfigError(where, f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _mapping(value: Any, key: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a mapping (got {type(value).__name__})")
    return value


def _number(value: Any, key: str, *, minimum: float | None = None, strict: bool = False) -> float:
    if isinstance(value, str):  # YAML 1.1 reads 2e9 as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"expected a number (got {value!r})")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ConfigError(key, f"must be {'>' if strict else '>='} {minimum} (got {value!r})")
    return float(value)


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"expected a non-empty string (got {value!r})")
    return value


def _str_list(value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(key, f"expected a list of label names (got {value!r})")
    return list(value)


def _detector(raw: Any, key: str, defaults: dict) -> DetectorConfig:
    d = _mapping(raw, key)
    _check_keys(d, _DET_KEYS, key)
    merged = {**defaults, **d}
    name = _str(merged.get("name"), f"{key}.name")
    if not _NAME_RE.match(name):
        raise ConfigError(f"{key}.name", f"must match [a-zA-Z_][a-zA-Z0-9_]* (got {name!r})")
    query = _str(merged.get("query"), f"{key}.query")
    model, rule = d.get("model"), d.get("rule")
    if model is None and rule is None:
        model = defaults.get("model")
    if model is not None and rule is not None:
        raise ConfigError(f"{key}.rule", "set either model or rule, not both")
    if model is None and rule is None:
        raise ConfigError(f"{key}.model", f"missing: set model ({', '.join(MODELS)}) or rule "
                                          f"({', '.join(RULES)})")
    if model is not None and model not in MODELS:
        raise ConfigError(f"{key}.model", f"unknown model {model!r} (choose from {', '.join(MODELS)})")
    if rule is not None and rule not in RULES:
        raise ConfigError(f"{key}.rule", f"unknown rule {rule!r} (choose from {', '.join(RULES)})")
    direction = merged.get("direction")
    if direction is not None and direction not in DIRECTIONS:
        raise ConfigError(f"{key}.direction", f"must be one of {', '.join(DIRECTIONS)} (got {direction!r})")
    params = _mapping(merged.get("params"), f"{key}.params")
    if rule is not None:
        params = _rule_params(rule, params, f"{key}.params")
    features = _mapping(d.get("features"), f"{key}.features")
    for fname, fq in features.items():
        if not isinstance(fname, str) or not _NAME_RE.match(fname):
            raise ConfigError(f"{key}.features", f"feature names must be identifiers (got {fname!r})")
        _str(fq, f"{key}.features.{fname}")
    if model in FEATURE_KINDS and not features:
        raise ConfigError(f"{key}.features", f"model {model} needs at least one feature query")
    if model not in FEATURE_KINDS and features:
        raise ConfigError(f"{key}.features", f"only used by {', '.join(FEATURE_KINDS)} models")
    out = DetectorConfig(
        name=name, query=query, model=model, rule=rule, params=dict(params),
        sensitivity=(None if merged.get("sensitivity") is None else
                     _number(merged["sensitivity"], f"{key}.sensitivity", minimum=0, strict=True)),
        direction=direction,
        min_deviation=(None if merged.get("min_deviation") is None else
                       _number(merged["min_deviation"], f"{key}.min_deviation", minimum=0)),
        min_duration=parse_duration(merged.get("min_duration", 60), f"{key}.min_duration"),
        merge_gap=parse_duration(merged.get("merge_gap", 300), f"{key}.merge_gap"),
        key=_str_list(d["key"], f"{key}.key") if d.get("key") is not None else None,
        features=dict(features),
        join_on=_str_list(merged.get("join_on", ["uuid"]), f"{key}.join_on"),
        heartbeat=_str(d["heartbeat"], f"{key}.heartbeat") if d.get("heartbeat") is not None else None,
        enabled=bool(merged.get("enabled", True)),
        fallback=merged.get("fallback", "robust_z"),
        min_fit_r2=(None if merged.get("min_fit_r2") is None else
                    _number(merged["min_fit_r2"], f"{key}.min_fit_r2")),
    )
    if out.fallback not in FALLBACKS:
        raise ConfigError(f"{key}.fallback", f"must be {' or '.join(FALLBACKS)} (got {out.fallback!r})")
    if not isinstance(merged.get("enabled", True), bool):
        raise ConfigError(f"{key}.enabled", "expected true or false")
    if model is not None:
        _check_model_params(out, f"{key}.params")
    return out


def _check_model_params(det: DetectorConfig, key: str) -> None:
    """Build the model once so a bad parameter fails at load time, naming the key."""
    params = dict(det.params)
    valid = set(model_class(det.model)._param_names())
    for k in ("direction", "min_deviation", "sensitivity"):
        if k in params:
            raise ConfigError(f"{key}.{k}", f"set {k} on the detector itself, not in params")
    for k in ("direction", "min_deviation", "sensitivity"):
        if getattr(det, k) is not None and k in valid:
            params[k] = getattr(det, k)
    if "feature_names" in params:
        raise ConfigError(f"{key}.feature_names", "feature names come from the detector's features")
    try:
        make_model(det.model, **params)
    except (TypeError, ValueError) as e:
        raise ConfigError(key, str(e)) from None


def _rule_params(rule: str, params: dict, key: str) -> dict:
    """A rule's parameters checked against the spec its class declares (`PARAMS`)."""
    spec = RULES[rule].PARAMS
    _check_keys(params, set(spec), key)
    out = {k: default for k, (_check, default) in spec.items()}
    for k, v in params.items():
        check = spec[k][0]
        if check == "duration":
            out[k] = parse_duration(v, f"{key}.{k}")
            continue
        out[k] = _number(v, f"{key}.{k}", minimum=None if check == "number" else 0,
                         strict=(check == "positive"))
        if check == "fraction" and not 0 < out[k] <= 1:
            raise ConfigError(f"{key}.{k}", f"must be in (0, 1] (got {v!r})")
    return out


def load_config(path: str | os.PathLike | None = None, *, text: str | None = None) -> Config:
    """Parse and validate a config file (or YAML text); None -> the packaged default preset."""
    if text is None:
        if path is None:
            text = resources.files("detector").joinpath("default_preset.yml").read_text()
            source = "<default preset>"
        else:
            try:
                text = Path(path).read_text()
            except OSError as e:
                raise ConfigError(str(path), f"cannot read config file: {e.strerror or e}") from None
            source = str(path)
    else:
        source = "<text>"
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "yaml"
        raise ConfigError(where, f"invalid YAML: {getattr(e, 'problem', e)}") from None
    cfg = parse_config(raw if raw is not None else {})
    cfg.source = source
    return cfg


def parse_config(raw: Any) -> Config:
    top = _mapping(raw, "<top>")
    _check_keys(top, _TOP_KEYS, "")
    cfg = Config()
    prom = _mapping(top.get("prometheus"), "prometheus")
    _check_keys(prom, {"url", "timeout", "retries", "headers"}, "prometheus")
    if "url" in prom:
        url = _str(prom["url"], "prometheus.url")
        if not url.startswith(("http://", "https://")):
            raise ConfigError("prometheus.url", f"must start with http:// or https:// (got {url!r})")
        cfg.prometheus.url = url
    if "timeout" in prom:
        cfg.prometheus.timeout = parse_duration(prom["timeout"], "prometheus.timeout")
    if "retries" in prom:
        r = prom["retries"]
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ConfigError("prometheus.retries", f"expected an integer >= 0 (got {r!r})")
        cfg.prometheus.retries = r
    if "headers" in prom:
        cfg.prometheus.headers = {str(k): str(v) for k, v in _mapping(prom["headers"], "prometheus.headers").items()}
    if top.get("loki") is not None:
        cfg.loki = _mapping(top["loki"], "loki")
    if top.get("logs") is not None:
        cfg.logs = _mapping(top["logs"], "logs")
    if "listen" in top:
        listen = _str(top["listen"], "listen")
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError("listen", f"expected HOST:PORT such as 127.0.0.1:9843 (got {listen!r})")
        cfg.listen = listen
    if top.get("api_token") is not None:
        cfg.api_token = _str(top["api_token"], "api_token")
    store = _mapping(top.get("store"), "store")
    _check_keys(store, {"path"}, "store")
    if "path" in store:
        cfg.store_path = _str(store["path"], "store.path")
    sched = _mapping(top.get("schedule"), "schedule")
    _check_keys(sched, {"step", "fit_every", "lookback", "context", "warmup", "fallback_refit"}, "schedule")
    for k in ("step", "fit_every", "lookback", "context", "warmup", "fallback_refit"):
        if k in sched:
            setattr(cfg.schedule, k, parse_duration(sched[k], f"schedule.{k}"))
    if cfg.schedule.lookback < cfg.schedule.step * 10:
        raise ConfigError("schedule.lookback", "must cover at least 10 steps")
    defaults = _mapping(top.get("defaults"), "defaults")
    _check_keys(defaults, _DET_KEYS - {"name", "query", "rule", "key", "features", "heartbeat"}, "defaults")
    dets = top.get("detectors", [])
    if not isinstance(dets, list):
        raise ConfigError("detectors", f"expected a list (got {type(dets).__name__})")
    seen: set[str] = set()
    for i, raw_det in enumerate(dets):
        det = _detector(raw_det, f"detectors[{i}]", defaults)
        if det.name in seen:
            raise ConfigError(f"detectors[{i}].name", f"duplicate detector name {det.name!r}")
        seen.add(det.name)
        cfg.detectors.append(det)
    return cfg


def apply_overrides(cfg: Config, *, prometheus_url: str | None = None, loki_url: str | None = None,
                    store: str | None = None) -> Config:
    """Command-line flags over the loaded config (in place; returns cfg). A bad value raises
    ConfigError naming the flag. `loki_url` sets `loki.url`, creating the `loki:` section if the
    config has none, which switches log detection on (the rest of the section — query, tenant,
    timeout — keeps its values or the log side's defaults)."""
    for flag, url in (("--prometheus-url", prometheus_url), ("--loki-url", loki_url)):
        if url is not None and not url.startswith(("http://", "https://")):
            raise ConfigError(flag, f"must start with http:// or https:// (got {url!r})")
    if prometheus_url is not None:
        cfg.prometheus.url = prometheus_url
    if loki_url is not None:
        cfg.loki = {**(cfg.loki or {}), "url": loki_url}
    if store is not None:
        if not store.strip():
            raise ConfigError("--store", "must be a directory path (got an empty string)")
        cfg.store_path = store
    return cfg


class ConfigWatcher:
    """Hot reload: `poll()` returns a new Config when the file changed and is valid, else None.

    A change is taken only if start-up would take it: the loader's checks, then `check(config)`
    (e.g. the queries against Prometheus; it raises ConfigError). A refused edit keeps the running
    config; the error is logged once, kept in `last_error`, and `successful` /
    `last_success_time` (rigwatch_detector_config_last_reload_successful / _success_timestamp_seconds,
    Prometheus's own names) tell it. The start-up load counts as the first successful one."""

    def __init__(self, path: str | os.PathLike | None, *, check: Callable[[Config], object] | None = None,
                 clock: Callable[[], float] = time.time):
        self.path = Path(path) if path else None
        self.check = check
        self.clock = clock
        self.last_error: str | None = None
        self.successful = True
        self.last_success_time = clock()
        self._mtime = self._stat()

    def _stat(self) -> float | None:
        try:
            return self.path.stat().st_mtime_ns if self.path else None
        except OSError:
            return None

    def poll(self) -> Config | None:
        m = self._stat()
        if self.path is None or m is None or m == self._mtime:
            return None
        self._mtime = m
        try:
            cfg = self._load()
        except ConfigError as e:
            self.last_error = str(e)
            self.successful = False
            log.error("config reload refused, keeping the running config: %s: %s", self.path, e)
            return None
        self.last_error = None
        self.successful = True
        self.last_success_time = self.clock()
        return cfg

    def _load(self) -> Config:
        # an editor that truncates before writing leaves an empty file for a moment: never a
        # config to run (it would drop every detector)
        try:
            empty = not Path(self.path).read_text().strip()
        except OSError as e:
            raise ConfigError(str(self.path), f"cannot read config file: {e.strerror or e}") from None
        if empty:
            raise ConfigError("<top>", "the file is empty (no detectors)")
        cfg = load_config(self.path)
        if self.check is not None:
            self.check(cfg)
        return cfg
