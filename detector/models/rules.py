"""Model-free detections (rules), shaped like the models so the metric detector treats them alike.

Each rule has fit(t, y) (takes the history's last state), score(t, y) -> ScoreFrame (causal,
stateful: call it once per new point, in order), get_state()/from_state(), min_history().
Scores follow the convention: > 1 is anomalous.

- CounterIncreaseRule: a counter rose by >= min_increase within `window` (Xid errors: any increase;
  container restarts: a burst). Resets read as restarts from zero; a series that *appears* during
  scoring counts its first value as an increase from 0 (exporters publish gpu_xid_errors_total{xid}
  only once the code was seen, at 1 — PromQL's increase() misses that step).
- HeldActiveRule: a 0/1 signal (throttle reason) above `threshold` for longer than `hold`.
- SeriesVanishedRule: y is `timestamp(<series>)` (the sample's own timestamp); the series vanished
  when its newest sample is older than `max_age` while the heartbeat feature (e.g. timestamp(gpu_up)
  of the same GPU) is fresh — a whole host rebooting is not a GPU falling off the bus.
"""
from __future__ import annotations

import numpy as np

from .base import ScoreFrame


def _frame(score: np.ndarray, expected=None, lower=None, upper=None) -> ScoreFrame:
    n = len(score)
    nan = np.full(n, np.nan)
    return ScoreFrame(score=np.asarray(score, float),
                      expected=nan.copy() if expected is None else np.asarray(expected, float),
                      lower=nan.copy() if lower is None else np.asarray(lower, float),
                      upper=nan.copy() if upper is None else np.asarray(upper, float))


class _Rule:
    """What every rule shares; the class attributes are read by config validation and the metric
    detector (the same attributes as on BaseModel), so neither names a rule kind."""

    kind = "rule"
    family = "rule"
    version = 1
    multivariate = False  # fit/score take X beside y
    takes_features = False  # no `features:` queries: a rule reads its own query only
    heartbeat = False  # reads the detector's `heartbeat` query as X, on the full step grid
    guards_extrapolation = False
    #: parameter -> (check, default): "duration", "positive" (> 0), "nonneg" (>= 0), "number", "fraction" (0, 1]
    PARAMS: dict[str, tuple[str, float]] = {}

    @classmethod
    def create(cls, params: dict, *, appeared: bool = False):
        """A rule for one series; `appeared` says the series was first seen while scoring."""
        return cls(**params)

    def min_history(self, step_seconds: float = 60.0) -> int:
        return 0

    @classmethod
    def design_matrix(cls, y, X):
        return X

    def explain_batch(self, X, score) -> list[str] | None:
        return None

    @classmethod
    def describe(cls, value: float, expected: float) -> str:
        """What an incident of this rule says happened (its summary, without the score)."""
        raise NotImplementedError

    def get_state(self) -> dict:
        return {"kind": self.kind, "version": self.version, "params": self.params(), "state": self._state()}

    @classmethod
    def from_state(cls, d: dict):
        if d.get("kind") != cls.kind or d.get("version") != cls.version:
            raise ValueError(f"state is for {d.get('kind')} v{d.get('version')}, not {cls.kind} v{cls.version}")
        r = cls(**d["params"])
        r._set_state(d["state"])
        return r


class CounterIncreaseRule(_Rule):
    kind = "counter_increase"
    PARAMS = {"window": ("duration", 60.0), "min_increase": ("positive", 1.0)}

    @classmethod
    def create(cls, params: dict, *, appeared: bool = False):
        return cls(**params, appeared=appeared)

    @classmethod
    def describe(cls, value, expected):
        return "counter increased"

    def __init__(self, window: float = 60.0, min_increase: float = 1.0, appeared: bool = False):
        self.window = float(window)
        self.min_increase = float(min_increase)
        self.appeared = appeared  # the series did not exist before: its first value is an increase
        self.last_value_ = np.nan
        self.events_: list[list[float]] = []  # [t, increase] within the trailing window

    def params(self):
        return {"window": self.window, "min_increase": self.min_increase, "appeared": self.appeared}

    def _state(self):
        return {"last_value": self.last_value_, "events": self.events_}

    def _set_state(self, s):
        self.last_value_ = float(s["last_value"]) if s["last_value"] is not None else np.nan
        self.events_ = [list(map(float, e)) for e in s["events"]]

    def fit(self, t, y):
        y = np.asarray(y, float)
        valid = y[np.isfinite(y)]
        if len(valid):
            self.last_value_ = float(valid[-1])
            self.appeared = False
        self.events_ = []
        return self

    def score(self, t, y) -> ScoreFrame:
        t = np.asarray(t, float)
        y = np.asarray(y, float)
        # below min_increase scores < 1, at it > 1: increase / (min_increase - 0.5) for integers
        denom = self.min_increase - 0.5 if self.min_increase >= 1 else self.min_increase * 0.99
        score = np.zeros(len(y))
        expected = np.full(len(y), np.nan)
        for i in range(len(y)):
            v = y[i]
            if np.isfinite(v):
                if np.isnan(self.last_value_):
                    inc = v if self.appeared else 0.0
                else:
                    inc = v - self.last_value_ if v >= self.last_value_ else v  # reset: rose from 0
                expected[i] = self.last_value_ if np.isfinite(self.last_value_) else 0.0
                self.last_value_ = float(v)
                self.appeared = False
                if inc > 0:
                    self.events_.append([float(t[i]), float(inc)])
            self.events_ = [e for e in self.events_ if e[0] > t[i] - self.window]
            total = sum(e[1] for e in self.events_)
            score[i] = total / denom
        return _frame(score, expected)


class HeldActiveRule(_Rule):
    kind = "held_active"
    PARAMS = {"hold": ("duration", 300.0), "threshold": ("number", 0.5)}

    @classmethod
    def describe(cls, value, expected):
        return "held active beyond its hold time"

    def __init__(self, hold: float = 300.0, threshold: float = 0.5):
        self.hold = float(hold)
        self.threshold = float(threshold)
        self.run_start_ = np.nan
        self.last_t_ = np.nan

    def params(self):
        return {"hold": self.hold, "threshold": self.threshold}

    def _state(self):
        return {"run_start": self.run_start_, "last_t": self.last_t_}

    def _set_state(self, s):
        self.run_start_ = float(s["run_start"])
        self.last_t_ = float(s["last_t"])

    def fit(self, t, y):
        t = np.asarray(t, float)
        y = np.asarray(y, float)
        self.run_start_ = np.nan
        self.last_t_ = np.nan
        # carry an active run that is still going at the end of the history
        for ti, yi in zip(t.tolist(), y.tolist(), strict=False):
            self._step(ti, yi)
        return self

    def _step(self, t: float, v: float) -> float:
        step = t - self.last_t_ if np.isfinite(self.last_t_) else 0.0
        if np.isfinite(v) and v > self.threshold:
            if np.isnan(self.run_start_):
                self.run_start_ = t - min(step, 60.0) if step else t
        else:
            self.run_start_ = np.nan
        self.last_t_ = t
        if np.isnan(self.run_start_):
            return 0.0
        held = t - self.run_start_
        return 1.0 + held / self.hold if held > self.hold else 0.9 * held / self.hold

    def score(self, t, y) -> ScoreFrame:
        t = np.asarray(t, float)
        y = np.asarray(y, float)
        score = np.array([self._step(ti, yi) for ti, yi in zip(t.tolist(), y.tolist(), strict=False)])
        return _frame(score, np.zeros(len(y)), np.full(len(y), -np.inf), np.full(len(y), self.threshold))


class SeriesVanishedRule(_Rule):
    kind = "series_vanished"
    multivariate = True  # X holds the heartbeat's sample timestamps
    heartbeat = True
    PARAMS = {"max_age": ("duration", 150.0)}

    @classmethod
    def describe(cls, value, expected):
        return "series stopped reporting while its exporter is alive"

    def __init__(self, max_age: float = 150.0):
        self.max_age = float(max_age)
        self.last_sample_ = np.nan

    def params(self):
        return {"max_age": self.max_age}

    def _state(self):
        return {"last_sample": self.last_sample_}

    def _set_state(self, s):
        self.last_sample_ = float(s["last_sample"])

    def fit(self, t, X, y):
        y = np.asarray(y, float)
        valid = y[np.isfinite(y)]
        if len(valid):
            self.last_sample_ = float(valid.max())
        return self

    def score(self, t, X, y) -> ScoreFrame:
        t = np.asarray(t, float)
        y = np.asarray(y, float)
        hb = np.asarray(X, float).reshape(len(t), -1)[:, 0] if len(t) else np.zeros(0)
        score = np.zeros(len(t))
        for i in range(len(t)):
            if np.isfinite(y[i]):
                self.last_sample_ = max(float(y[i]), self.last_sample_) if np.isfinite(self.last_sample_) \
                    else float(y[i])
            if np.isnan(self.last_sample_):
                continue
            age = t[i] - self.last_sample_
            alive = np.isfinite(hb[i]) and t[i] - hb[i] <= self.max_age
            if alive:
                score[i] = age / self.max_age
        return _frame(score, np.zeros(len(t)), np.zeros(len(t)), np.full(len(t), self.max_age))


class SteadyIncreaseRule(_Rule):
    """A gauge that keeps growing: over the trailing `window`, at least `min_fraction` of the steps
    went up and the net rise is >= `min_increase` (a VRAM leak). Loading a bigger model is one or
    two big steps, then flat: it fails the fraction test however large it is."""

    kind = "steady_increase"
    PARAMS = {"window": ("duration", 1800.0), "min_increase": ("positive", 1.0),
              "min_fraction": ("fraction", 0.75)}

    @classmethod
    def describe(cls, value, expected):
        return f"keeps growing (now {value:.4g}, {value - expected:+.4g} over the window)"

    def __init__(self, window: float = 1800.0, min_increase: float = 1.0, min_fraction: float = 0.75):
        self.window = float(window)
        self.min_increase = float(min_increase)
        self.min_fraction = float(min_fraction)
        self.hist_: list[list[float]] = []  # [t, y] within the trailing window

    def params(self):
        return {"window": self.window, "min_increase": self.min_increase, "min_fraction": self.min_fraction}

    def _state(self):
        return {"hist": self.hist_}

    def _set_state(self, s):
        self.hist_ = [list(map(float, h)) for h in s["hist"]]

    def fit(self, t, y):
        t = np.asarray(t, float)
        y = np.asarray(y, float)
        keep = np.isfinite(y) & (t > (t[-1] if len(t) else 0) - self.window)
        self.hist_ = [[float(a), float(b)] for a, b in zip(t[keep], y[keep], strict=False)]
        return self

    def score(self, t, y) -> ScoreFrame:
        t = np.asarray(t, float)
        y = np.asarray(y, float)
        score = np.zeros(len(t))
        expected = np.full(len(t), np.nan)
        for i in range(len(t)):
            if np.isfinite(y[i]):
                self.hist_.append([float(t[i]), float(y[i])])
            self.hist_ = [h for h in self.hist_ if h[0] > t[i] - self.window]
            if len(self.hist_) < 3:
                continue
            v = np.array([h[1] for h in self.hist_])
            frac = float(np.mean(np.diff(v) > 0))
            rise = float(v[-1] - v[0])
            expected[i] = v[0]
            # > 1 only when both tests pass; each alone stays <= 1
            score[i] = min(frac / self.min_fraction, max(rise, 0.0) / self.min_increase) * 1.0001 \
                if frac >= self.min_fraction and rise >= self.min_increase else \
                min(frac / self.min_fraction, max(rise, 0.0) / self.min_increase, 1.0)
        return _frame(score, expected)


RULES = {r.kind: r for r in (CounterIncreaseRule, HeldActiveRule, SeriesVanishedRule, SteadyIncreaseRule)}
