"""The range flags `backtest` and `dataset export` share (--prometheus-url, --start, --end) and the
error that refuses a flag's value (exit 2, naming the flag)."""
from __future__ import annotations

import argparse

from detector.timefmt import parse_rfc3339
from rigwatch.redact import redact_url


class UsageError(Exception):
    """A flag's value refused; the message names the flag (exit 2)."""


def add_range_args(p: argparse.ArgumentParser) -> None:
    """--prometheus-url, --start, --end: a range read from Prometheus (backtest, dataset export)."""
    p.add_argument("--prometheus-url", required=True)
    p.add_argument("--start", required=True, help="RFC3339, e.g. 2026-11-20T00:00:00Z")
    p.add_argument("--end", required=True, help="RFC3339")


def range_args(args) -> tuple[float, float]:
    """--start/--end as epoch seconds, --prometheus-url checked: the flags backtest and dataset
    export share."""
    try:
        start = parse_rfc3339(args.start)
    except ValueError as e:
        raise UsageError(f"--start: expected RFC3339 such as 2026-11-20T00:00:00Z ({e})") from None
    try:
        end = parse_rfc3339(args.end)
    except ValueError as e:
        raise UsageError(f"--end: expected RFC3339 such as 2026-11-21T00:00:00Z ({e})") from None
    if end <= start:
        raise UsageError("--end: must be after --start")
    if not args.prometheus_url.startswith(("http://", "https://")):
        raise UsageError(f"--prometheus-url: must start with http:// or https:// "
                         f"(got {redact_url(args.prometheus_url)!r})")
    return start, end
