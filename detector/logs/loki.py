"""Loki 3.x HTTP API client: log streams, metric queries, labels and series.

Timestamps travel as nanosecond strings, as Loki documents them. A stream query returns at most
`limit` entries (Loki caps it with max_entries_limit_per_query, 5000 by default), so `query_range`
pages: with direction=forward it moves the window start to the last timestamp it received and drops
the entries it already has at that boundary nanosecond (start is inclusive, and several lines may
share one nanosecond).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import requests

from detector import config_values as cv
from detector.logs.journal import LogEntry
from rigwatch.redact import redact_text

log = logging.getLogger(__name__)


# the streams of the label contract: journal lines and container lines
DEFAULT_QUERY = '{job=~"systemd-journal|docker"}'
# the `loki:` keys of detector.yml and their checks (numbers ranged by config_values.LIMITS["loki.*"])
_CONFIG_KEYS = {
    "url": cv.http_url, "tenant": cv.string, "query": cv.string,
    "timeout": lambda v, k: cv.number(v, k, "loki.timeout"),
    "retries": lambda v, k: cv.integer(v, k, "loki.retries"),
    "backoff": lambda v, k: cv.number(v, k, "loki.backoff"),
    "max_backoff": lambda v, k: cv.number(v, k, "loki.max_backoff"),
    "page_limit": lambda v, k: cv.integer(v, k, "loki.page_limit"),
}


class LokiError(RuntimeError):
    """Loki answered with an error, or could not be reached after the retries."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class LokiQueryError(LokiError):
    """Loki rejected the request (4xx): retrying cannot help, the query or a parameter is wrong."""


def to_ns(value: float | int | str | datetime) -> int:
    """Epoch nanoseconds from epoch seconds (float/int), a datetime, an RFC3339 string or a digit
    string that is already in nanoseconds."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return int(round(value.timestamp() * 1e6)) * 1000
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        return to_ns(datetime.fromisoformat(text.replace("Z", "+00:00")))
    if isinstance(value, int) and value > 10**15:  # already ns
        return value
    return int(round(float(value) * 1e6)) * 1000


@dataclass
class Sample:
    ts: float
    value: float


@dataclass
class MetricSeries:
    labels: dict[str, str]
    samples: list[Sample]


class LokiClient:
    """Small Loki client. `session`, `sleep` and `clock` are injected so tests and the scheduler control
    the outside world. Errors reaching Loki are retried with exponential backoff; 4xx answers are not
    retried and raise LokiQueryError with Loki's own error text."""

    def __init__(self, url: str = "http://127.0.0.1:3100", *, timeout: float = 10.0, retries: int = 3,
                 backoff: float = 0.5, max_backoff: float = 10.0, page_limit: int = 5000,
                 tenant: str | None = None, headers: dict[str, str] | None = None,
                 session: requests.Session | None = None, sleep: Callable[[float], None] = time.sleep,
                 on_error: Callable[[Exception], None] | None = None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.page_limit = page_limit
        self.headers = dict(headers or {})
        if tenant:
            self.headers["X-Scope-OrgID"] = tenant
        self.session = session or requests.Session()
        self.sleep = sleep
        self.on_error = on_error  # e.g. increments rigwatch_detector_source_errors_total{source="loki"}
        self.truncated_instants = 0  # nanoseconds holding a full page: lines past it unreachable

    @staticmethod
    def check_config(section: dict | None) -> dict:
        """The `loki:` mapping of detector.yml checked at load time: an unknown key, a wrong type or an
        out-of-range number raises ConfigError naming `loki.<key>`. Returns the section as given."""
        section = cv.mapping(section, "loki")
        cv.check_keys(section, _CONFIG_KEYS, "loki")
        for key, value in section.items():
            _CONFIG_KEYS[key](value, f"loki.{key}")
        return section

    @classmethod
    def from_config(cls, section: dict | None, **injected) -> LokiClient:
        """From the `loki:` mapping of detector.yml (checked by `check_config`: ConfigError naming the
        key). `query` belongs to the caller: see `query_from_config`."""
        kwargs = {k: v for k, v in cls.check_config(section).items() if k != "query"}
        return cls(**kwargs, **injected)

    @staticmethod
    def query_from_config(section: dict | None) -> str:
        return (section or {}).get("query") or DEFAULT_QUERY

    # -- transport ----------------------------------------------------------------------------
    def _get(self, path: str, params) -> dict | list:
        url = self.url + path
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self.sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
            try:
                response = self.session.get(url, params=params, timeout=self.timeout, headers=self.headers)
            except requests.RequestException as e:
                # requests puts the URL (and so any password in it) into its messages
                last = LokiError(redact_text(f"Loki at {self.url} unreachable ({path}): {e}"))
                self._count(last)
                continue
            if 400 <= response.status_code < 500 and response.status_code != 429:
                error = LokiQueryError(
                    f"Loki rejected {path} ({response.status_code}): {_error_text(response)}",
                    response.status_code)
                self._count(error)
                raise error
            if response.status_code != 200:
                last = LokiError(f"Loki {path} answered {response.status_code}: {_error_text(response)}",
                                 response.status_code)
                self._count(last)
                continue
            try:
                body = response.json()
            except ValueError:
                last = LokiError(f"Loki {path} answered non-JSON: {response.text[:200]!r}")
                self._count(last)
                continue
            if isinstance(body, dict) and body.get("status") not in (None, "success"):
                raise LokiError(f"Loki {path} status {body.get('status')}: {body.get('error', body)}")
            return body
        assert last is not None
        raise LokiError(f"{last} (gave up after {self.retries + 1} attempts)", getattr(last, "status", None))

    def _count(self, error: Exception) -> None:
        if self.on_error is not None:
            self.on_error(error)

    def ready(self) -> bool:
        try:
            response = self.session.get(self.url + "/ready", timeout=self.timeout, headers=self.headers)
        except requests.RequestException:
            return False
        return response.status_code == 200

    # -- queries ------------------------------------------------------------------------------
    def query_range_raw(self, query: str, start, end, *, limit: int | None = None,
                        direction: str = "forward", step: str | float | None = None) -> dict:
        """One /loki/api/v1/query_range call; returns Loki's `data` object as is."""
        params = {"query": query, "start": str(to_ns(start)), "end": str(to_ns(end)),
                  "direction": direction}
        if limit is not None:
            params["limit"] = str(limit)
        if step is not None:
            params["step"] = str(step)
        body = self._get("/loki/api/v1/query_range", params)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict) or "resultType" not in data:
            raise LokiError(f"Loki query_range answer has no data.resultType: {str(body)[:200]}")
        return data

    def query_range(self, query: str, start, end, *, page_limit: int | None = None,
                    max_entries: int | None = None) -> list[LogEntry]:
        """All log entries of a stream query in [start, end), oldest first, paging as needed."""
        limit = page_limit or self.page_limit
        start_ns, end_ns = to_ns(start), to_ns(end)
        out: list[LogEntry] = []
        seen_at_boundary: set[tuple] = set()
        while start_ns < end_ns:
            data = self.query_range_raw(query, start_ns, end_ns, limit=limit, direction="forward")
            if data["resultType"] != "streams":
                raise LokiError(f"expected a log query, got resultType {data['resultType']!r}: {query}")
            page = []
            for stream in data.get("result", []):
                labels = dict(stream.get("stream") or {})
                key = tuple(sorted(labels.items()))
                for ts, line, *_structured in stream.get("values", []):
                    if start_ns <= int(ts) < end_ns:  # never trust a page to respect the window
                        page.append((int(ts), key, line, labels))
            page.sort(key=lambda item: item[0])
            fresh = [item for item in page if (item[0], item[1], item[2]) not in seen_at_boundary]
            for ts, _key, line, labels in fresh:
                out.append(LogEntry(ts=ts / 1e9, message=line, labels=dict(labels)))
                if max_entries is not None and len(out) >= max_entries:
                    return out
            if len(page) < limit:
                break
            last_ns = page[-1][0]
            boundary = {(item[0], item[1], item[2]) for item in page if item[0] == last_ns}
            if last_ns == start_ns:
                if not fresh:
                    # a full page inside one nanosecond: Loki cannot page within it, so lines past
                    # `limit` at that instant (if any) are out of reach; move on and say so
                    self.truncated_instants += 1
                    log.warning("Loki query %s: %d or more lines at %d ns, the page limit; lines beyond it "
                                "at that instant may be missing (raise page_limit)", query, limit, last_ns)
                    start_ns, seen_at_boundary = last_ns + 1, set()
                    continue
                seen_at_boundary |= boundary
            else:
                seen_at_boundary = boundary
            start_ns = last_ns
        return out

    def metric_query(self, query: str, start, end, step: str | float) -> list[MetricSeries]:
        """A metric query (count_over_time, rate, ...) over a range: Loki's `matrix` result."""
        data = self.query_range_raw(query, start, end, step=step)
        if data["resultType"] != "matrix":
            raise LokiError(f"expected a metric query (matrix), got {data['resultType']!r}: {query}")
        return [MetricSeries(labels=dict(series.get("metric") or {}),
                             samples=[Sample(float(t), float(v)) for t, v in series.get("values", [])])
                for series in data.get("result", [])]

    def labels(self, start=None, end=None) -> list[str]:
        return list(self._get("/loki/api/v1/labels", _range_params(start, end)).get("data") or [])

    def label_values(self, name: str, start=None, end=None, query: str | None = None) -> list[str]:
        params = _range_params(start, end)
        if query:
            params["query"] = query
        return list(self._get(f"/loki/api/v1/label/{name}/values", params).get("data") or [])

    def series(self, matchers: list[str] | str, start=None, end=None) -> list[dict[str, str]]:
        params = list(_range_params(start, end).items())
        for matcher in [matchers] if isinstance(matchers, str) else matchers:
            params.append(("match[]", matcher))
        return list(self._get("/loki/api/v1/series", params).get("data") or [])


def _range_params(start, end) -> dict[str, str]:
    params = {}
    if start is not None:
        params["start"] = str(to_ns(start))
    if end is not None:
        params["end"] = str(to_ns(end))
    return params


def _error_text(response: requests.Response) -> str:
    """Loki answers errors as plain text (`parse error at line 1, col 5: ...`); some proxies as JSON."""
    try:
        body = response.json()
        if isinstance(body, dict):
            return str(body.get("error") or body.get("message") or body)
    except ValueError:
        pass
    return response.text.strip()[:500] or response.reason or "no error text"
