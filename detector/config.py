"""detector.yml: loaded, validated and defaulted in one place, with errors that name the key.

Without a file the packaged default preset (default_preset.yml) is used. Every problem raises
ConfigError("detectors[3].direction: must be one of up, down, both (got 'upward')").
"""
from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from detector import config_values as cv
from detector.config_values import ConfigError
from detector.context.config import InferenceConfig
from detector.labels import MaintenanceWindow, maintenance_config
from detector.logs.detector import LogDetectorConfig
from detector.logs.loki import LokiClient
from detector.models import FALLBACKS, FEATURE_KINDS, MODELS, RULES, OnsetFilter, make_model, model_class
from detector.models.ensemble import MEMBERS as ENSEMBLE_MEMBERS
from detector.sharding import Shard, parse_shard
from rigwatch import durations
from rigwatch.redact import redact_url
from rigwatch.secret_files import SecretFileError, secret_from_env

log = logging.getLogger(__name__)
DIRECTIONS = ("up", "down", "both")
__all__ = ["Config", "ConfigError", "ConfigWatcher", "DetectorConfig", "apply_overrides", "load_config",
           "parse_config", "parse_duration"]


def parse_duration(value: Any, key: str) -> float:
    """'90s', '5m', '1h30m', '7d', '1w' or a number of seconds (rigwatch.durations) -> seconds (float, > 0)."""
    return cv.duration(value, key, cv.Limit(0, durations.MAX_SECONDS, lo_open=True, duration=True))


@dataclass
class PrometheusConfig:
    url: str = "http://127.0.0.1:9090"
    timeout: float = 10.0
    retries: int = 3
    headers: dict[str, str] = field(default_factory=dict)
    # Scoring stays this far behind now (besides half a step): VictoriaMetrics hides its newest 30 s
    # (-search.latencyOffset), its last visible value standing in for them, and remote-written
    # samples arrive late; 0 for a Prometheus scraping the box itself.
    latency_offset: float = 0.0


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
    refit_on_drift: bool = False  # drift held high between fits refits at once (detector/drift_book.py)
    # `onsets:` OnsetFilter's durations (horizon, quiet...) in seconds: an anomalous point opens an
    # incident only when the filter passes it as an onset (detector/incidents.py); None: off, and
    # `onsets: {}` is on with the filter's own defaults
    onsets: dict[str, float] | None = None

    @property
    def kind(self) -> str:
        return self.model or self.rule or ""


@dataclass
class TrackingConfig:
    """`tracking:` (optional experiment tracking of fits, detector.tracking): where runs go."""
    uri: str  # sqlite:///path/mlflow.db (embedded, one writer: this process) or http(s)://server
    experiment: str = "rigwatch"
    timeout: float = 10.0  # seconds per request to a tracking server
    artifacts: bool = True  # the version's metadata and per-series table with each run


@dataclass
class GateConfig:
    """`gate:` (detector/gate.py): a refit is promoted only when it does no worse than the champion
    on the newest hours of its lookback, held out of its training, and on the feedback labels."""
    enabled: bool = True
    holdout: float = 24 * 3600.0  # held-out window; the effective one is min(holdout, lookback / 4)
    max_extra_incidents: int = 1  # incidents the challenger may raise beyond the champion's
    max_extra_alarm: float = 30 * 60.0  # seconds of alarm the challenger may add to the champion's

    def holdout_for(self, lookback: float) -> float:
        """The held-out window for this lookback: a short (demo) lookback keeps 3/4 to train on."""
        return min(self.holdout, lookback / 4)


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
    maintenance: tuple[MaintenanceWindow, ...] = ()  # windows from the file (the API adds stored ones)
    source: str = "<default preset>"
    tracking: TrackingConfig | None = None  # None: no tracking, mlflow never imported
    gate: GateConfig = field(default_factory=GateConfig)  # reloads: read at each fit
    inference: InferenceConfig | None = None  # `inference:` (detector/context): None, the context plugin is off
    shard: Shard = field(default_factory=Shard)  # `shard: "I/N"` / serve --shard (detector/sharding.py)

    def reloaded_over(self, running: Config) -> Config:
        """This (reloaded) config as a running service takes it: the listener, the sources' clients
        and the store were built at start-up (from the file plus command-line overrides) and keep
        their running values; detectors, schedule and the rest reload. The shard too: it chose the
        store and which plugins run."""
        return replace(self, listen=running.listen, prometheus=running.prometheus, loki=running.loki,
                       store_path=running.store_path, tracking=running.tracking, shard=running.shard)

    def token(self, environ=os.environ) -> str | None:
        """The API bearer token: RIGWATCH_API_TOKEN, else the file RIGWATCH_API_TOKEN_FILE names (read
        each time: rewriting it rotates the token), else the config's api_token; empty means none.
        An unreadable token file is a ConfigError naming RIGWATCH_API_TOKEN_FILE."""
        try:
            tok = secret_from_env("RIGWATCH_API_TOKEN", environ) or self.api_token
        except SecretFileError as e:
            raise ConfigError(e.variable, e.problem) from None
        return tok or None


_TOP_KEYS = {"prometheus", "loki", "logs", "listen", "api_token", "store", "schedule", "defaults", "detectors",
             "maintenance", "tracking", "gate", "inference", "shard"}
_DET_KEYS = {"name", "query", "model", "rule", "params", "sensitivity", "direction", "min_deviation",
             "min_duration", "merge_gap", "key", "features", "join_on", "heartbeat", "enabled", "fallback",
             "min_fit_r2", "refit_on_drift", "onsets"}
_DEFAULTS_KEYS = _DET_KEYS - {"name", "query", "rule", "key", "features", "heartbeat"}
_SCHEDULE_KEYS = ("step", "fit_every", "lookback", "context", "warmup", "fallback_refit")


def _members(value: Any, key: str) -> list[str]:
    """`ensemble.members`: a non-empty list of member kinds, each once (a repeat is a paste slip:
    the ensemble would score it once anyway)."""
    if not isinstance(value, list) or not value:
        raise ConfigError(key, f"expected a non-empty list of {', '.join(ENSEMBLE_MEMBERS)} (got {cv.short(value)})")
    for i, m in enumerate(value):
        cv.one_of(m, f"{key}[{i}]", tuple(ENSEMBLE_MEMBERS))
        if m in value[:i]:
            raise ConfigError(f"{key}[{i}]", f"{m} is listed twice")
    return list(value)


# what `params:` of a model may hold besides the numbers LIMITS bounds (params.<model>.<name>)
_MODEL_PARAM_TYPES: dict[str, Callable[[Any, str], Any]] = {
    "seasonal_esd.method": lambda v, k: cv.one_of(v, k, ("fast", "stl_jump", "stl")),
    "thermal.lagged": lambda v, k: cv.labels(v, k, empty=False),
    "thermal.concave": cv.boolean,
    "ensemble.members": _members,
}
# what `onsets:` may hold: OnsetFilter's keyword parameters (all durations) but the threshold, which is
# the tracker's: derived from its signature so a parameter it gains is accepted without an edit here
ONSET_KEYS = tuple(n for n in inspect.signature(OnsetFilter.__init__).parameters if n not in ("self", "threshold"))
# set on the detector itself (they are shared with rules and the fallback), never in params
_DETECTOR_LEVEL = ("direction", "min_deviation", "sensitivity")


def _kind(value: Any, key: str, table: dict, what: str) -> str:
    if not isinstance(value, str) or value not in table:
        raise ConfigError(key, f"unknown {what} {cv.short(value)} (choose from {', '.join(table)})")
    return value


def _optional(d: dict, name: str, key: str, check: Callable[[Any, str], Any]) -> Any:
    return None if d.get(name) is None else check(d[name], f"{key}.{name}")


def _common_fields(d: dict, key: str) -> dict:
    """The fields `defaults:` and a detector share, typed and ranged, each named where it was written
    (a bad `defaults.min_duration` is named there, not in every detector that inherits it)."""
    out: dict[str, Any] = {}
    if d.get("model") is not None:
        out["model"] = _kind(d["model"], f"{key}.model", MODELS, "model")
    if "params" in d:
        out["params"] = cv.mapping(d["params"], f"{key}.params")
    if d.get("direction") is not None:
        out["direction"] = cv.one_of(d["direction"], f"{key}.direction", DIRECTIONS)
    for name in ("sensitivity", "min_deviation", "min_fit_r2"):
        if d.get(name) is not None:
            out[name] = cv.number(d[name], f"{key}.{name}", f"detectors[].{name}")
    for name in ("min_duration", "merge_gap"):
        if name in d:
            out[name] = cv.duration(d[name], f"{key}.{name}", f"detectors[].{name}")
    if "join_on" in d:
        out["join_on"] = cv.labels(d["join_on"], f"{key}.join_on")
    if "enabled" in d:
        out["enabled"] = cv.boolean(d["enabled"], f"{key}.enabled")
    if "fallback" in d:
        out["fallback"] = cv.one_of(d["fallback"], f"{key}.fallback", FALLBACKS)
    if "refit_on_drift" in d:
        out["refit_on_drift"] = cv.boolean(d["refit_on_drift"], f"{key}.refit_on_drift")
    if "onsets" in d:  # an explicit `onsets: null` turns off what `defaults:` turned on
        out["onsets"] = None if d["onsets"] is None else onsets_config(d["onsets"], f"{key}.onsets")
    return out


def onsets_config(value: Any, key: str) -> dict[str, float]:
    """`onsets:` -> OnsetFilter's keyword durations in seconds, each checked and named; the filter is
    built once so a bad combination fails at load time."""
    d = cv.mapping(value, key)
    cv.check_keys(d, set(ONSET_KEYS), key)
    out = {k: parse_duration(v, f"{key}.{k}") for k, v in d.items() if v is not None}
    try:
        OnsetFilter(**out)
    except (TypeError, ValueError) as e:
        raise ConfigError(key, str(e)) from None
    return out


def _detector(raw: Any, key: str, defaults: dict) -> DetectorConfig:
    d = cv.mapping(raw, key)
    cv.check_keys(d, _DET_KEYS, key)
    name = cv.string(d.get("name"), f"{key}.name")
    if not cv.LABEL_RE.match(name):
        raise ConfigError(f"{key}.name", f"must match [a-zA-Z_][a-zA-Z0-9_]* (got {cv.short(name)})")
    query = cv.string(d.get("query"), f"{key}.query")
    own = _common_fields(d, key)
    if d.get("rule") is not None:
        rule = _kind(d["rule"], f"{key}.rule", RULES, "rule")
        if "model" in own:
            raise ConfigError(f"{key}.rule", "set either model or rule, not both")
        if own.get("refit_on_drift"):
            raise ConfigError(f"{key}.refit_on_drift", "a rule fits no model: there is nothing to refit")
        model = None
    else:
        # `rule: null` / `model: null` clear a key, they do not ask for defaults.model
        if "rule" in d and "model" not in own:
            raise ConfigError(f"{key}.rule", f"missing: set a rule ({', '.join(RULES)}) or a model")
        if "model" in d and d["model"] is None:
            raise ConfigError(f"{key}.model", f"missing: set a model ({', '.join(MODELS)}) or a rule")
        rule, model = None, own.get("model", defaults.get("model"))
        if model is None:  # named where it was cleared: an explicit `rule: null` is the rule's key
            raise ConfigError(f"{key}.rule" if "rule" in d else f"{key}.model",
                              f"missing: set model ({', '.join(MODELS)}) or rule ({', '.join(RULES)})")
    merged = {**defaults, **own}
    params = merged.get("params", {})
    if rule is not None:
        params = _rule_params(rule, params, f"{key}.params")
    features = cv.mapping(d.get("features"), f"{key}.features")
    for fname, fq in features.items():
        if not isinstance(fname, str) or not cv.LABEL_RE.match(fname):
            raise ConfigError(f"{key}.features", f"feature names must be identifiers (got {cv.short(fname)})")
        cv.string(fq, f"{key}.features.{fname}")
    if model in FEATURE_KINDS and not features:
        raise ConfigError(f"{key}.features", f"model {model} needs at least one feature query")
    if model not in FEATURE_KINDS and features:
        raise ConfigError(f"{key}.features", f"only used by {', '.join(FEATURE_KINDS)} models")
    onsets = merged.get("onsets") if rule is None else own.get("onsets")
    out = DetectorConfig(
        name=name, query=query, model=model, rule=rule, params=dict(params),
        sensitivity=merged.get("sensitivity"), direction=merged.get("direction"),
        min_deviation=merged.get("min_deviation"),
        min_duration=merged.get("min_duration", 60.0), merge_gap=merged.get("merge_gap", 300.0),
        key=_optional(d, "key", key, cv.labels), features=dict(features),
        join_on=merged.get("join_on", ["uuid"]), heartbeat=_optional(d, "heartbeat", key, cv.string),
        enabled=merged.get("enabled", True), fallback=merged.get("fallback", "robust_z"),
        min_fit_r2=merged.get("min_fit_r2"),
        refit_on_drift=bool(merged.get("refit_on_drift", False)) and rule is None,
        # a rule's scores are fixed levels (an Xid is 2 whatever came before): the trailing-maximum
        # gate would hide its second fault, so a rule is gated only where its own section says so
        onsets=None if onsets is None else dict(onsets),
    )
    if model is not None:
        _check_model_params(out, f"{key}.params")
    return out


def _check_model_params(det: DetectorConfig, key: str) -> None:
    """Each parameter typed and ranged on its own (naming it), then the model built once so a bad
    combination fails at load time too."""
    params = dict(det.params)
    valid = set(model_class(det.model)._param_names())
    for k in params:
        if k in _DETECTOR_LEVEL:
            raise ConfigError(f"{key}.{k}", f"set {k} on the detector itself, not in params")
        if k == "feature_names":
            raise ConfigError(f"{key}.{k}", "feature names come from the detector's features")
        if k not in valid:
            continue  # make_model names the unknown parameter(s) with the valid ones
        spec = f"{det.model}.{k}"
        if spec in _MODEL_PARAM_TYPES:
            params[k] = _MODEL_PARAM_TYPES[spec](params[k], f"{key}.{k}")
        elif spec == "seasonal_esd.period" and params[k] is None:
            pass  # null: detected from the data
        elif spec == "thermal.time_constants":
            v = params[k]
            if not isinstance(v, list) or not v:
                raise ConfigError(f"{key}.{k}", f"expected a non-empty list of durations (got {cv.short(v)})")
            params[k] = [cv.duration(x, f"{key}.{k}[{i}]", f"params.{spec}") for i, x in enumerate(v)]
        elif f"params.{spec}" in cv.LIMITS:
            lim = cv.LIMITS[f"params.{spec}"]
            params[k] = (cv.integer if lim.integer else cv.number)(params[k], f"{key}.{k}", lim)
        else:  # a parameter a model gained without a line here: refuse rather than pass it unchecked
            raise ConfigError(f"{key}.{k}", "this parameter cannot be set from the config")
    cls = model_class(det.model)
    if cls.takes_features:  # as the metric detector builds it: the features' names
        for i, name in enumerate(params.get("lagged", ())):
            if name not in det.features:
                raise ConfigError(f"{key}.lagged[{i}]", f"{name!r} is not one of the detector's features "
                                                        f"({', '.join(det.features)})")
    for k in _DETECTOR_LEVEL:
        if getattr(det, k) is not None and k in valid:
            params[k] = getattr(det, k)
    feature_names = {"feature_names": cls.input_names(list(det.features))} \
        if cls.takes_features and "feature_names" in valid else {}
    try:
        make_model(det.model, **params, **feature_names)
    except (TypeError, ValueError) as e:
        raise ConfigError(key, str(e)) from None
    det.params = {k: v for k, v in params.items() if k not in _DETECTOR_LEVEL}


def _rule_params(rule: str, params: dict, key: str) -> dict:
    """A rule's parameters checked against the spec its class declares (`PARAMS`), ranged by LIMITS."""
    spec = RULES[rule].PARAMS
    cv.check_keys(params, set(spec), key)
    out = {k: default for k, (_check, default) in spec.items()}
    for k, v in params.items():
        out[k] = cv.number(v, f"{key}.{k}", f"params.rule.{spec[k][0]}")
    return out


def load_config(path: str | os.PathLike | None = None, *, text: str | None = None) -> Config:
    """Parse and validate a config file (or YAML text); None -> the packaged default preset.
    A file must configure something to detect: detectors, or a `loki:` section (log detection only)."""
    if text is None:
        if path is None:
            text = resources.files("detector").joinpath("default_preset.yml").read_text()
            source = "<default preset>"
        else:
            try:
                text = Path(path).read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(str(path), f"cannot read config file: {getattr(e, 'strerror', None) or e}") \
                    from None
            source = str(path)
    else:
        source = "<text>"
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "yaml"
        raise ConfigError(where, f"invalid YAML: {getattr(e, 'problem', e)}") from None
    except RecursionError:  # a document nested thousands deep
        raise ConfigError("yaml", "invalid YAML: nested too deeply") from None
    cfg = parse_config(raw if raw is not None else {}, require_detectors=True)
    cfg.source = source
    return cfg


def parse_config(raw: Any, *, require_detectors: bool = False) -> Config:
    """A parsed YAML document -> Config. `require_detectors` (what load_config, and so start-up and
    hot reload, ask): refuse a config with nothing to detect, no detector and no `loki:` section.
    Without it an empty list is fine: code that hands DetectorService its own plugins builds such
    configs."""
    top = cv.mapping(raw, "<top>")
    cv.check_keys(top, _TOP_KEYS, "")
    cfg = Config()
    prom = cv.mapping(top.get("prometheus"), "prometheus")
    cv.check_keys(prom, {"url", "timeout", "retries", "headers", "latency_offset"}, "prometheus")
    if "url" in prom:
        cfg.prometheus.url = cv.http_url(prom["url"], "prometheus.url")
    if "timeout" in prom:
        cfg.prometheus.timeout = cv.duration(prom["timeout"], "prometheus.timeout", "prometheus.timeout")
    if "retries" in prom:
        cfg.prometheus.retries = cv.integer(prom["retries"], "prometheus.retries", "prometheus.retries")
    if "latency_offset" in prom:
        cfg.prometheus.latency_offset = cv.duration(prom["latency_offset"], "prometheus.latency_offset",
                                                    "prometheus.latency_offset")
    if "headers" in prom:
        headers = cv.mapping(prom["headers"], "prometheus.headers")
        for name, value in headers.items():
            if not isinstance(name, str) or not name.strip():
                raise ConfigError("prometheus.headers", f"header names are strings (got {cv.short(name)})")
            cv.string(value, f"prometheus.headers.{name}")
        cfg.prometheus.headers = dict(headers)
    # the log side's sections, checked at load time by the log side's own parsers
    if top.get("loki") is not None:
        cfg.loki = LokiClient.check_config(cv.mapping(top["loki"], "loki"))
    if top.get("logs") is not None:
        cfg.logs = cv.mapping(top["logs"], "logs")
        LogDetectorConfig.from_dict(cfg.logs)
    if "listen" in top:
        cv.host_port(top["listen"], "listen")
        cfg.listen = top["listen"]
    if top.get("api_token") is not None:
        cfg.api_token = cv.string(top["api_token"], "api_token")
    store = cv.mapping(top.get("store"), "store")
    cv.check_keys(store, {"path"}, "store")
    if "path" in store:
        cfg.store_path = store_path(store["path"], "store.path")
    if top.get("shard") is not None:
        cfg.shard = parse_shard(top["shard"], "shard")
    if top.get("tracking") is not None:
        cfg.tracking = _tracking(top["tracking"])
    cfg.gate = _gate(top.get("gate"))
    if "inference" in top:  # `inference:` with nothing under it turns the context detector on with defaults
        cfg.inference = InferenceConfig.from_dict(top["inference"] or {}, "inference")
    sched = cv.mapping(top.get("schedule"), "schedule")
    cv.check_keys(sched, set(_SCHEDULE_KEYS), "schedule")
    for k in _SCHEDULE_KEYS:
        if k in sched:
            setattr(cfg.schedule, k, cv.duration(sched[k], f"schedule.{k}", f"schedule.{k}"))
    if cfg.schedule.lookback < cfg.schedule.step * 10:
        raise ConfigError("schedule.lookback", "must cover at least 10 steps")
    defaults = cv.mapping(top.get("defaults"), "defaults")
    cv.check_keys(defaults, _DEFAULTS_KEYS, "defaults")
    defaults = _common_fields(defaults, "defaults")
    dets = top.get("detectors", [])
    if dets is None:  # `detectors:` with nothing under it
        dets = []
    if not isinstance(dets, list):
        raise ConfigError("detectors", f"expected a list (got {type(dets).__name__})")
    seen: set[str] = set()
    for i, raw_det in enumerate(dets):
        det = _detector(raw_det, f"detectors[{i}]", defaults)
        if det.name in seen:
            raise ConfigError(f"detectors[{i}].name", f"duplicate detector name {det.name!r}")
        seen.add(det.name)
        cfg.detectors.append(det)
    cfg.maintenance = maintenance_config(top.get("maintenance"))
    if require_detectors and not cfg.detectors and cfg.loki is None:
        raise ConfigError("detectors", "nothing to detect: list at least one detector (or add a loki: "
                                       "section for log detection only)")
    return cfg


def _tracking(raw: Any) -> TrackingConfig:
    t = cv.mapping(raw, "tracking")
    cv.check_keys(t, {"uri", "experiment", "timeout", "artifacts"}, "tracking")
    if "uri" not in t:
        raise ConfigError("tracking.uri", "required: sqlite:///PATH/mlflow.db or http(s)://HOST:PORT")
    cfg = TrackingConfig(tracking_uri(t["uri"], "tracking.uri"))
    if "experiment" in t:
        cfg.experiment = cv.string(t["experiment"], "tracking.experiment")
    if "timeout" in t:
        cfg.timeout = cv.duration(t["timeout"], "tracking.timeout", "tracking.timeout")
    if "artifacts" in t:
        cfg.artifacts = cv.boolean(t["artifacts"], "tracking.artifacts")
    return cfg


def _gate(raw: Any) -> GateConfig:
    g = cv.mapping(raw, "gate")
    cv.check_keys(g, {"enabled", "holdout", "max_extra_incidents", "max_extra_alarm"}, "gate")
    cfg = GateConfig()
    if "enabled" in g:
        cfg.enabled = cv.boolean(g["enabled"], "gate.enabled")
    if "holdout" in g:
        cfg.holdout = cv.duration(g["holdout"], "gate.holdout", "gate.holdout")
    if "max_extra_incidents" in g:
        cfg.max_extra_incidents = cv.integer(g["max_extra_incidents"], "gate.max_extra_incidents",
                                             "gate.max_extra_incidents")
    if "max_extra_alarm" in g:
        cfg.max_extra_alarm = cv.duration(g["max_extra_alarm"], "gate.max_extra_alarm", "gate.max_extra_alarm")
    return cfg


def tracking_uri(value: Any, key: str) -> str:
    """An MLflow tracking URI: sqlite:///PATH (the embedded default) or a tracking server's http(s) URL.
    MLflow's file store (a bare path, file://) is deprecated, so it is refused."""
    uri = cv.string(value, key)
    if uri.startswith("sqlite:///"):
        if len(uri) == len("sqlite:///") or "\0" in uri:
            raise ConfigError(key, "sqlite:/// needs a database file path, e.g. sqlite:///var/lib/rigwatch/mlflow.db")
        return uri
    if uri.startswith(("http://", "https://")):
        return cv.http_url(uri, key)
    raise ConfigError(key, f"{cv.short(redact_url(uri))} is not sqlite:///PATH or an http(s):// tracking server")


def store_path(value: Any, key: str) -> str:
    """The model store directory: a path that is a directory or does not exist yet (created at the
    first save). An existing file would fail every save, hours after start-up."""
    path = cv.string(value, key)
    if "\0" in path:
        raise ConfigError(key, "a path cannot contain a NUL character")
    p = Path(path)
    try:
        if p.exists() and not p.is_dir():
            raise ConfigError(key, f"{cv.short(path)} exists and is not a directory")
    except OSError as e:  # e.g. a name too long for the file system
        raise ConfigError(key, f"unusable path: {e.strerror or e}") from None
    return path


def apply_overrides(cfg: Config, *, prometheus_url: str | None = None, loki_url: str | None = None,
                    store: str | None = None, mlflow_uri: str | None = None,
                    latency_offset: str | None = None, shard: str | None = None) -> Config:
    """Command-line flags over the loaded config (in place; returns cfg). A bad value raises
    ConfigError naming the flag. `loki_url` sets `loki.url`, creating the `loki:` section if the
    config has none, which switches log detection on (the rest of the section — query, tenant,
    timeout — keeps its values or the log side's defaults)."""
    for flag, url in (("--prometheus-url", prometheus_url), ("--loki-url", loki_url)):
        if url is not None:
            cv.http_url(url, flag)
    if prometheus_url is not None:
        cfg.prometheus.url = prometheus_url
    if latency_offset is not None:
        cfg.prometheus.latency_offset = cv.duration(latency_offset, "--prometheus-latency-offset",
                                                    "prometheus.latency_offset")
    if loki_url is not None:
        cfg.loki = {**(cfg.loki or {}), "url": loki_url}
    if store is not None:
        if not store.strip():
            raise ConfigError("--store", "must be a directory path (got an empty string)")
        cfg.store_path = store_path(store, "--store")
    if shard is not None:  # over the config's `shard:`
        cfg.shard = parse_shard(shard, "--shard")
    if mlflow_uri is not None:  # turns tracking on, keeping the section's other keys
        uri = tracking_uri(mlflow_uri, "--mlflow-uri")
        cfg.tracking = replace(cfg.tracking, uri=uri) if cfg.tracking else TrackingConfig(uri)
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
        # an editor that truncates before writing leaves an empty file for a moment: the loader
        # refuses it (nothing to detect), as start-up would
        cfg = load_config(self.path)
        if self.check is not None:
            self.check(cfg)
        return cfg
