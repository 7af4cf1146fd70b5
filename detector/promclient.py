"""Prometheus HTTP API client: query_range / query / series with timeouts, retries and range splitting.

Also the helpers that turn Prometheus's answers into honest time series: gaps found from sample
timestamps (Prometheus keeps returning a vanished series for its 5-minute lookback), counter
increases that survive resets and count a series that first appears already at 1.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import requests

from rigwatch.redact import redact_text, redact_url

log = logging.getLogger(__name__)

# Prometheus refuses a query_range answer of more than 11,000 points per series.
MAX_POINTS = 11_000


class PromError(Exception):
    """A Prometheus request failed for good (after retries, or a bad query that retrying cannot fix)."""

    def __init__(self, message: str, *, status: int | None = None, error_type: str | None = None,
                 retryable: bool = False, reason: str | None = None):
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.retryable = retryable
        self.reason = reason  # Prometheus's own "error" text, without the URL


class PromQueryError(PromError):
    """Prometheus answered and refused the query itself (HTTP 400 bad_data, 422 execution): the
    query's fault, not the source's. Retrying gives the same answer and the source stays up."""


# The answers that blame the query (https://prometheus.io/docs/prometheus/latest/querying/api/#format-overview):
# 400 when parameters are missing or incorrect, 422 when an expression can't be executed.
_QUERY_FAULTS = {400: "bad_data", 422: "execution"}


@dataclass
class Series:
    """One series of a matrix/vector answer: its labels (without __name__ unless kept) and samples."""

    labels: dict[str, str]
    t: np.ndarray  # epoch seconds, float64, increasing
    y: np.ndarray  # float64 (NaN for Prometheus's "NaN")
    name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def key(self) -> tuple:
        return tuple(sorted(self.labels.items()))


def _to_float(v: str) -> float:
    # Prometheus encodes values as strings, including "NaN", "+Inf", "-Inf".
    return float(v)


class PromClient:
    """Thin client over the documented HTTP API (https://prometheus.io/docs/prometheus/latest/querying/api/).

    `session` and `sleep` are injected so tests can use `responses` and skip the backoff waits.
    `on_error(exc)` is called for every failed attempt on the source (the service counts them in a
    metric); a query Prometheus refuses raises PromQueryError at once and is not the source's error."""

    def __init__(self, base_url: str, *, timeout: float = 10.0, retries: int = 3, backoff: float = 0.5,
                 max_backoff: float = 8.0, session: requests.Session | None = None, sleep=time.sleep,
                 headers: dict[str, str] | None = None, on_error=None, max_points: int = MAX_POINTS):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.session = session or requests.Session()
        self.sleep = sleep
        self.headers = dict(headers or {})
        self.on_error = on_error
        self.max_points = max_points

    # -- transport -------------------------------------------------------------------------
    def _get(self, path: str, params: dict | list) -> Any:
        url = self.base_url + path
        last: PromError | None = None
        for attempt in range(self.retries + 1):
            try:
                r = self.session.get(url, params=params, timeout=self.timeout, headers=self.headers)
            except requests.RequestException as e:
                # requests puts the URL (and so any password in it) into its messages
                last = PromError(redact_text(f"{url}: {type(e).__name__}: {e}"), retryable=True)
            else:
                last = self._parse(url, r)
                if last is None:
                    return r.json()["data"]
                if isinstance(last, PromQueryError):
                    raise last
            if self.on_error is not None:
                self.on_error(last)
            if not last.retryable or attempt == self.retries:
                break
            delay = min(self.max_backoff, self.backoff * (2 ** attempt))
            log.warning("prometheus request failed (%s); retry %d/%d in %.1fs", last, attempt + 1,
                        self.retries, delay)
            self.sleep(delay)
        assert last is not None
        raise last

    @staticmethod
    def _parse(url: str, r: requests.Response) -> PromError | None:
        """None when the answer is a success; otherwise the error, marked retryable or not."""
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code == 200 and isinstance(body, dict) and body.get("status") == "success":
            return None
        err_type = body.get("errorType") if isinstance(body, dict) else None
        err = body.get("error") if isinstance(body, dict) else None
        msg = f"{redact_url(url)}: HTTP {r.status_code}" + (f" {err_type}: {err}" if err else f" {r.text[:200]!r}")
        # 400 bad_data / 422 execution errors are the query's fault: retrying gives the same answer.
        retryable = r.status_code >= 500 or r.status_code == 429 or (r.status_code == 200 and body is None)
        if err_type in ("timeout", "canceled", "unavailable"):
            retryable = True
        if r.status_code in _QUERY_FAULTS and _QUERY_FAULTS[r.status_code] == err_type:
            return PromQueryError(msg, status=r.status_code, error_type=err_type, reason=err)
        return PromError(msg, status=r.status_code, error_type=err_type, retryable=retryable)

    # -- API -------------------------------------------------------------------------------
    def query(self, promql: str, at: float | None = None) -> list[Series]:
        params = {"query": promql}
        if at is not None:
            params["time"] = _fmt(at)
        data = self._get("/api/v1/query", params)
        return _parse_result(data)

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[Series]:
        """Matrix answer over [start, end], split into requests of at most `max_points` steps and
        stitched back per series (series that appear in only some chunks are kept)."""
        if step <= 0:
            raise ValueError("step must be > 0")
        if end < start:
            raise ValueError("end must be >= start")
        # Align to the step grid so that chunk boundaries never produce duplicate timestamps.
        start = math.floor(start / step) * step
        end = math.floor(end / step) * step
        chunk = (self.max_points - 1) * step
        merged: dict[tuple, tuple[Series, list[np.ndarray], list[np.ndarray]]] = {}
        s = start
        while s <= end:
            e = min(end, s + chunk)
            data = self._get("/api/v1/query_range",
                             {"query": promql, "start": _fmt(s), "end": _fmt(e), "step": _fmt(step)})
            for ser in _parse_result(data):
                k = ser.key()
                if k not in merged:
                    merged[k] = (ser, [], [])
                merged[k][1].append(ser.t)
                merged[k][2].append(ser.y)
            s = e + step
        out = []
        for ser, ts, ys in merged.values():
            ser.t = np.concatenate(ts)
            ser.y = np.concatenate(ys)
            out.append(ser)
        return out

    def series(self, match: list[str] | str, start: float | None = None, end: float | None = None) -> list[dict]:
        matches = [match] if isinstance(match, str) else list(match)
        params: list[tuple[str, str]] = [("match[]", m) for m in matches]
        if start is not None:
            params.append(("start", _fmt(start)))
        if end is not None:
            params.append(("end", _fmt(end)))
        return self._get("/api/v1/series", params)

    def ready(self) -> bool:
        try:
            r = self.session.get(self.base_url + "/-/ready", timeout=self.timeout, headers=self.headers)
            return r.status_code == 200
        except requests.RequestException:
            return False


def _fmt(t: float) -> str:
    return repr(float(t)) if not float(t).is_integer() else str(int(t))


def _parse_result(data: dict) -> list[Series]:
    rtype = data.get("resultType")
    result = data.get("result")
    out: list[Series] = []
    if rtype == "matrix":
        for item in result:
            labels = dict(item.get("metric", {}))
            name = labels.pop("__name__", None)
            vals = item.get("values", [])
            t = np.fromiter((float(v[0]) for v in vals), dtype=float, count=len(vals))
            y = np.fromiter((_to_float(v[1]) for v in vals), dtype=float, count=len(vals))
            out.append(Series(labels, t, y, name))
    elif rtype == "vector":
        for item in result:
            labels = dict(item.get("metric", {}))
            name = labels.pop("__name__", None)
            ts, v = item["value"]
            out.append(Series(labels, np.array([float(ts)]), np.array([_to_float(v)]), name))
    elif rtype == "scalar":
        ts, v = result
        out.append(Series({}, np.array([float(ts)]), np.array([_to_float(v)])))
    else:
        raise PromError(f"unsupported resultType {rtype!r}")
    return out


# -- series hygiene ---------------------------------------------------------------------------

def find_gaps(t: np.ndarray, step: float, tolerance: float = 1.5) -> list[tuple[float, float]]:
    """(last_seen, next_seen) pairs where consecutive sample timestamps are further apart than
    `tolerance` × step: the series was absent between them."""
    if len(t) < 2:
        return []
    d = np.diff(t)
    idx = np.nonzero(d > tolerance * step)[0]
    return [(float(t[i]), float(t[i + 1])) for i in idx]


def stale_mask(step_t: np.ndarray, sample_t: np.ndarray, max_age: float) -> np.ndarray:
    """True where the value Prometheus returned at step_t comes from a sample older than max_age.
    `sample_t` is the answer of `timestamp(<expr>)` over the same steps: Prometheus fills a missing
    step with the last sample for up to 5 minutes, so only the sample timestamp tells the truth."""
    return (np.asarray(step_t) - np.asarray(sample_t)) > max_age


def counter_increases(y: np.ndarray, *, appeared: bool) -> np.ndarray:
    """Per-step increase of a counter, with resets (a drop) read as a restart from zero.

    `appeared`: the series did not exist before its first sample here (an exporter that exports
    `gpu_xid_errors_total{xid=...}` only once the code was seen starts it at 1) — its first value then
    counts as an increase from 0, which `increase()` in PromQL cannot see."""
    y = np.asarray(y, dtype=float)
    inc = np.zeros_like(y)
    if len(y) == 0:
        return inc
    d = np.diff(y)
    inc[1:] = np.where(d >= 0, d, y[1:])  # a reset: the counter restarted at 0 and rose to y
    inc[0] = y[0] if appeared else 0.0
    inc[~np.isfinite(inc)] = 0.0
    return inc
