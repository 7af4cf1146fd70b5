"""Typed value checks of detector.yml and the one table of sane ranges (LIMITS).

Every checker takes the value and the dotted key it came from and either returns the typed value
or raises ConfigError naming that key. Numbers are finite (no NaN, no infinity) and never a bool;
every numeric or duration key has its range in LIMITS, with the reason for each bound. The metric
side (detector.config) and the log side (detector.logs: `loki:` and `logs:`) both check with these,
so a bound lives here once. This module imports nothing of the detector: any module may use it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rigwatch import durations
from rigwatch.redact import redact_url

LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")  # Prometheus label names, detector names
#: a PromQL/LogQL query, URL or path longer than this is a paste accident, not a config value
MAX_STRING = 65536


class ConfigError(ValueError):
    """A config problem; str() starts with the key path (`key`), then the problem."""

    def __init__(self, key: str, problem: str):
        # one line whatever the key holds: the CLI prints str() as its whole error
        super().__init__(" ".join(f"{key}: {problem}".splitlines()))
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class Limit:
    lo: float
    hi: float
    lo_open: bool = False  # True: the value must be > lo (0 seconds is no step, no window)
    hi_open: bool = False  # True: the value must be < hi (a floor that is the whole level flags nothing)
    integer: bool = False  # a count: an int, not 2.5 nor 1e12-as-a-string
    duration: bool = False  # accepts 90s / 5m / 1h30m as well as seconds

    def text(self) -> str:
        def fmt(x: float) -> str:
            return _fmt_seconds(x) if self.duration else f"{x:g}"
        return f"{'>' if self.lo_open else '>='} {fmt(self.lo)} and {'<' if self.hi_open else '<='} {fmt(self.hi)}"


_S, _MIN, _H, _D = 1.0, 60.0, 3600.0, 86400.0
_BIG = 1e18  # metric values (bytes, counters): finite, beyond any real gauge; keeps arithmetic finite


def _dur(lo, hi):
    # a duration of 0 is never meant (no step, no window): from 0 the bound is open
    return Limit(lo, hi, lo_open=(lo == 0), duration=True)


def _count(lo, hi):
    return Limit(lo, hi, integer=True)


# Keys: the dotted path, `detectors[]` standing for every detector (and `defaults`), `params.<kind>`
# for a model's or rule's parameter. Each bound says why.
LIMITS: dict[str, Limit] = {
    # -- prometheus:
    "prometheus.timeout": _dur(0, 10 * _MIN),  # a query still running after 10 min holds a scheduler thread
    "prometheus.retries": _count(0, 100),  # backoff doubles: past ~100 tries the job never finishes
    # 0 allowed (a Prometheus scraping the box: nothing hidden); behind more than that nothing is "live"
    "prometheus.latency_offset": Limit(0, 10 * _MIN, duration=True),
    "tracking.timeout": _dur(0, 10 * _MIN),  # a tracking request longer than that holds the worker's queue
    # -- inference: (detector/context)
    "inference.busy_utilization": Limit(0, 1, lo_open=True),  # NVML's utilisation is a fraction of time
    "inference.hold": _dur(0, _D),  # longer than a day of unexplained 100 % is no longer "held"
    "inference.log_presence": _dur(0, 30 * _D),  # as far back as a log stream's silence still counts as shipped
    # services, models and temperatures are back well within an hour; a day later it is not the reboot
    "inference.restart_settle": _dur(0, _D),
    # a model load's heat and clocks settle within minutes; an hour-long window would hide real faults
    "inference.model_change_settle": _dur(0, _H),
    # -- gate: (detector/gate.py)
    "gate.holdout": _dur(0, 400 * _D),  # as schedule.lookback; the effective window is at most lookback / 4
    "gate.max_extra_incidents": _count(0, 1_000_000),  # 0: never more incidents than the champion
    "gate.max_extra_alarm": Limit(0, 30 * _D, duration=True),  # 0 allowed: no more alarm than the champion
    # -- schedule: (APScheduler intervals; big values overflow its timedelta arithmetic)
    "schedule.step": _dur(1 * _S, 1 * _D),  # Prometheus's resolution is seconds; a daily score is no monitor
    "schedule.fit_every": _dur(1 * _S, 365 * _D),  # a model refitted less than yearly is never refitted
    "schedule.lookback": _dur(1 * _S, 400 * _D),  # > a year of seasonality plus a margin; more is memory
    "schedule.context": _dur(0, 30 * _D),  # trailing data for scoring; more than a month is a fit, not context
    "schedule.warmup": _dur(0, 400 * _D),  # backtest history before the first fit: at most a lookback
    "schedule.fallback_refit": _dur(1 * _S, 30 * _D),  # refit cadence while only the fallback exists
    # -- detectors[] (and defaults:)
    "detectors[].sensitivity": Limit(0, 1000, lo_open=True),  # band half-width in z units: > 0, 1000 sigma is off
    "detectors[].min_deviation": Limit(0, _BIG),  # in the metric's unit (bytes are large); finite
    "detectors[].min_duration": _dur(0, 30 * _D),  # > 0; an incident needing a month of scores never opens
    "detectors[].merge_gap": _dur(0, 30 * _D),  # > 0; runs a month apart are separate incidents
    "detectors[].min_fit_r2": Limit(-1, 1),
    # a maintenance window longer than a year is a typo in a date, and would hide every incident
    "maintenance[].duration": _dur(0, 366 * _D),  # R² is <= 1; below -1 no fit is ever refused
    # rule parameters, by the kind of check their class declares (models.rules PARAMS)
    "params.rule.duration": _dur(0, 30 * _D),  # a rule window / hold / max_age beyond a month sees nothing
    "params.rule.number": Limit(-_BIG, _BIG),  # a threshold in the metric's unit: finite
    "params.rule.positive": Limit(0, _BIG, lo_open=True),
    "params.rule.fraction": Limit(0, 1, lo_open=True),
    # model parameters (the model's own _check_params still checks how they combine)
    "params.robust_z.window": _count(3, 100_000),  # points in the rolling buffer: memory per series
    "params.robust_z.min_periods": _count(1, 100_000),
    "params.robust_z.floor_fraction": Limit(0, 1),
    "params.robust_z.tail_quantile": Limit(0.5, 1),
    "params.robust_z.tail_factor": Limit(0, 1000),
    "params.robust_z.relative_floor": Limit(0, 1),
    "params.seasonal_esd.alpha": Limit(0, 1, lo_open=True),  # a significance level
    "params.seasonal_esd.max_anomalies": Limit(0, 1_000_000),  # a fraction < 0.5 or a count
    "params.seasonal_esd.period": _dur(0, 400 * _D),  # a season longer than the longest lookback cannot be seen
    "params.seasonal_esd.trend_window": _count(1, 100_000),
    "params.seasonal_esd.max_coarse_period": _count(1, 100_000),
    "params.seasonal_esd.tail_quantile": Limit(0.5, 1),
    "params.seasonal_esd.tail_factor": Limit(0, 1000),
    # level_shift: the state holds window + baseline points per series, and a fit needs 4 times that
    "params.level_shift.window": _count(1, 100_000),  # points in the short median: 1 is the value itself
    "params.level_shift.baseline": _count(2, 100_000),  # points in the baseline median: 1 is no median
    "params.level_shift.tail_quantile": Limit(0.5, 1),  # a quantile of |shift|: below the median is noise
    "params.level_shift.relative_floor": Limit(0, 1, hi_open=True),  # a fraction of the level; 1 hides every shift
    # value_novelty: margin is in spans of the seen range; 100 spans beyond it is never reached
    "params.value_novelty.margin": Limit(0, 100, lo_open=True),  # > 0: it divides the score
    "params.value_novelty.quantile": Limit(0.5, 1, lo_open=True),  # upper quantile; 0.5 is a range of width 0
    "params.value_novelty.relative_floor": Limit(0, 1, hi_open=True),  # as level_shift's
    "params.value_novelty.min_points": _count(2, 1_000_000),  # a range needs two points; a million is weeks of seconds
    # volatility_shift: level_shift over the step sizes, the same bounds
    "params.volatility_shift.window": _count(1, 100_000),  # as params.level_shift.window
    "params.volatility_shift.baseline": _count(2, 100_000),  # as params.level_shift.baseline
    "params.volatility_shift.tail_quantile": Limit(0.5, 1),  # as params.level_shift.tail_quantile
    "params.volatility_shift.relative_floor": Limit(0, 1, hi_open=True),  # as level_shift's
    # ensemble: passed to its members (level_shift window/baseline, value_novelty margin, both tails)
    "params.ensemble.shift_window": _count(1, 100_000),  # as params.level_shift.window
    "params.ensemble.shift_baseline": _count(2, 100_000),  # as params.level_shift.baseline
    "params.ensemble.novelty_margin": Limit(0, 100, lo_open=True),  # as params.value_novelty.margin
    "params.ensemble.tail_quantile": Limit(0.5, 1),  # seasonal_esd's and level_shift's calibration quantile
    "params.ensemble.point_sensitivity": Limit(0, 1000, lo_open=True),  # scales seasonal_esd's band: > 0, as sensitivity
    "params.ensemble.memory": Limit(0, 400 * _D, duration=True),  # half-life of the extremes a refit keeps; 0: none kept
    "params.ensemble.volatility_window": _count(1, 100_000),  # as params.volatility_shift.window
    "params.ensemble.volatility_baseline": _count(2, 100_000),  # as params.volatility_shift.baseline
    "params.ensemble.maturity": Limit(0, 400 * _D, duration=True),  # history after which the band is its members'; 0: always
    "params.thermal.time_constants": _dur(0, 7 * _D),  # thermal lags: seconds to hours, never weeks
    "params.thermal.ridge": Limit(0, 1e6),
    "params.thermal.huber": Limit(0, 1e6, lo_open=True),
    "params.thermal.extrapolation_slope": Limit(0, 1e6),
    "params.thermal.settled_deviation": Limit(0, 1e6),  # degrees, like min_deviation
    "params.thermal.settled_after": _dur(0, 400 * _D),  # the fit's span before it is trusted
    "params.iforest.n_estimators": _count(1, 10_000),  # trees: fit time and memory grow with each
    "params.iforest.max_samples": _count(4, 1_000_000),
    "params.iforest.calibration_quantile": Limit(0.5, 1),
    "params.iforest.random_state": _count(0, 2**32 - 1),  # numpy's seed range
    # -- loki: (the log side's client)
    "loki.timeout": Limit(0, 10 * _MIN, lo_open=True),  # seconds; as prometheus.timeout
    "loki.retries": _count(0, 100),
    "loki.backoff": Limit(0, 10 * _MIN),  # seconds before the first retry
    "loki.max_backoff": Limit(0, _H),  # a retry an hour away is an outage, not a retry
    "loki.page_limit": _count(1, 1_000_000),  # Loki caps it (max_entries_limit_per_query) anyway
    # -- logs: (LogDetectorConfig; seconds are plain numbers there)
    "logs.window_s": Limit(0, _D, lo_open=True),  # a rate window: > 0 (divides), a day at most
    "logs.top_templates": _count(0, 100_000),  # published rates: a cardinality bound
    "logs.examples": _count(0, 1000),
    "logs.rate_sigmas": Limit(0, 1000, lo_open=True),
    "logs.rate_min_excess": Limit(0, _BIG),
    "logs.silence_min": Limit(0, _BIG),
    "logs.rate_peak_factor": Limit(0, 1e6),
    "logs.spam_peak_factor": Limit(0, 1e6),
    "logs.spam_min_lines": Limit(0, _BIG),
    "logs.repeat_window_s": Limit(0, 30 * _D, lo_open=True),
    "logs.repeat_count": _count(1, 1_000_000),
    "logs.boot_grace_s": Limit(0, 30 * _D),
    "logs.boot_damping": Limit(0, 1),  # a multiplier that damps: at most 1
    "logs.catch_up_s": Limit(0, 30 * _D),  # lines read back after a restart: Loki keeps about a month
    "logs.claim_s": Limit(0, _H),
    "logs.miner.sim_threshold": Limit(0, 1),  # a similarity
    "logs.miner.prefix_tokens": _count(0, 1000),
    "logs.miner.wildcard_weight": Limit(0, 1),
    "logs.miner.word_variety": _count(0, 1_000_000),
    "logs.miner.cache_size": _count(0, 100_000_000),  # a cache entry per masked message: memory
    "logs.patterns.ssh_window_s": Limit(0, 30 * _D, lo_open=True),
    "logs.patterns.ssh_per_source": _count(1, 1_000_000),
    "logs.patterns.ssh_total": _count(1, 1_000_000),
    "logs.patterns.repeat_window_s": Limit(0, 30 * _D, lo_open=True),
    "logs.patterns.unit_failures": _count(1, 1_000_000),
    "logs.patterns.container_exits": _count(1, 1_000_000),
    "logs.patterns.restart_counter": _count(1, 1_000_000),
    "logs.patterns.cuda_oom_single": Limit(0, 1000),
}


def _fmt_seconds(x: float) -> str:
    for unit, size in (("d", _D), ("h", _H), ("m", _MIN)):
        if x >= size and x % size == 0:
            return f"{x / size:g}{unit}"
    return f"{x:g}s"


def short(value: Any) -> str:
    """repr() cut to one readable line: a refused 100 kB string is not echoed whole."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def _in_range(x: float, lim: Limit, value: Any, key: str) -> None:
    low_ok = x > lim.lo if lim.lo_open else x >= lim.lo
    high_ok = x < lim.hi if lim.hi_open else x <= lim.hi
    if not (low_ok and high_ok):
        raise ConfigError(key, f"must be {lim.text()} (got {short(value)})")


def number(value: Any, key: str, limit: str | Limit) -> float:
    """A finite number in LIMITS[limit]. A numeric string counts: YAML 1.1 reads 2e9 as a string."""
    lim = LIMITS[limit] if isinstance(limit, str) else limit
    if lim.duration:
        return duration(value, key, lim)
    if lim.integer:
        return float(integer(value, key, lim))
    x = value
    if isinstance(x, str):
        try:
            x = float(x)
        except ValueError:
            pass
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise ConfigError(key, f"expected a number (got {short(value)})")
    try:
        x = float(x)
    except OverflowError:  # an int beyond any float
        x = math.inf
    if not math.isfinite(x):
        raise ConfigError(key, f"expected a finite number (got {short(value)})")
    _in_range(x, lim, value, key)
    return x


def integer(value: Any, key: str, limit: str | Limit) -> int:
    """An int (not a bool, not 3.0) in LIMITS[limit]."""
    lim = LIMITS[limit] if isinstance(limit, str) else limit
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected an integer (got {short(value)})")
    _in_range(value, lim, value, key)
    return value


def duration(value: Any, key: str, limit: str | Limit) -> float:
    """Seconds (rigwatch.durations grammar: 90, '90s', '1h30m') in LIMITS[limit]."""
    lim = LIMITS[limit] if isinstance(limit, str) else limit
    try:
        seconds = durations.parse_duration(value)
    except ValueError as e:
        raise ConfigError(key, str(e)) from None
    if seconds <= 0 and lim.lo >= 0 and (lim.lo_open or lim.lo > 0):
        raise ConfigError(key, f"must be > 0 (got {short(value)})")  # the common mistake, said plainly
    _in_range(seconds, lim, value, key)
    return seconds


def string(value: Any, key: str) -> str:
    """A non-empty string of at most MAX_STRING characters."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"expected a non-empty string (got {short(value)})")
    if len(value) > MAX_STRING:
        raise ConfigError(key, f"longer than {MAX_STRING} characters ({len(value)})")
    return value


def http_url(value: Any, key: str) -> str:
    url = string(value, key)
    if not url.startswith(("http://", "https://")):
        # the refused value is printed: never with its password
        raise ConfigError(key, f"must start with http:// or https:// (got {short(redact_url(url))})")
    return url


def labels(value: Any, key: str, *, empty: bool = True) -> list[str]:
    """A list of label names ([a-zA-Z_][a-zA-Z0-9_]*, Prometheus's rule)."""
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a list of label names (got {short(value)})")
    for i, v in enumerate(value):
        if not isinstance(v, str) or not LABEL_RE.match(v):
            raise ConfigError(f"{key}[{i}]", f"expected a label name [a-zA-Z_][a-zA-Z0-9_]* (got {short(v)})")
    if not empty and not value:
        raise ConfigError(key, "expected at least one label name")
    return list(value)


def timestamp(value: Any, key: str) -> float:
    """An RFC3339 time with a zone (2026-12-01T10:00:00Z) -> epoch seconds. YAML reads an unquoted
    time as a datetime: one with a zone is taken too; a zoneless one would be a guess, so refused."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(key, f"expected an RFC3339 time such as 2026-12-01T10:00:00Z "
                                   f"(got {short(value)})") from None
    if not isinstance(value, datetime):
        raise ConfigError(key, f"expected an RFC3339 time such as 2026-12-01T10:00:00Z (got {short(value)})")
    if value.tzinfo is None:
        raise ConfigError(key, f"{value.isoformat()} has no time zone (add Z or +00:00)")
    return value.timestamp()


def boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false (got {short(value)})")
    return value


def one_of(value: Any, key: str, choices: tuple[str, ...] | list[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(key, f"must be one of {', '.join(choices)} (got {short(value)})")
    return value


def mapping(value: Any, key: str) -> dict:
    """A mapping (None: empty). Its keys are what YAML gives; non-string keys are refused by check_keys."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a mapping (got {type(value).__name__})")
    return value


def check_keys(d: dict, allowed: set[str] | dict, key: str) -> None:
    for k in d:
        if not isinstance(k, str) or k not in allowed:
            shown = k if isinstance(k, str) and k.strip() and k.isprintable() and len(k) <= 80 else short(k)
            where = f"{key}.{shown}" if key else str(shown)
            raise ConfigError(where, f"unknown key (allowed: {', '.join(sorted(allowed))})")


def host_port(value: Any, key: str, *, any_port: bool = False) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) with a port in 1..65535 (any_port: 0, a free port, too)
    -> (host without brackets, port)."""
    text = string(value, key)
    host, sep, port = text.rpartition(":")
    if not sep or not host.strip("[]") or not port.isascii() or not port.isdigit() or len(port) > 5 \
            or not (0 if any_port else 1) <= int(port) < 65536 or any(c.isspace() for c in text):
        raise ConfigError(key, f"expected HOST:PORT such as 127.0.0.1:9843 (got {short(text)})")
    return host.strip("[]"), int(port)
