"""RFC3339 in and out, as the API, the backtest report and the log side write and read times."""
from __future__ import annotations

from datetime import UTC, datetime


def iso(t: float) -> str:
    """Epoch seconds -> RFC3339 UTC to the second, e.g. 2026-11-26T10:00:00Z."""
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: str) -> float:
    """RFC3339 with a zone (Z or +hh:mm) -> epoch seconds; ValueError for a zoneless time."""
    dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone (add Z or +00:00)")
    return dt.timestamp()


def parse_time(value: str, name: str) -> float:
    """Epoch seconds or RFC3339 (2026-11-26T10:00:00Z) -> epoch seconds; ValueError naming the param."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return parse_rfc3339(value)
    except ValueError as e:
        raise ValueError(f"{name}: expected epoch seconds or RFC3339 with a zone (Z or +00:00), "
                         f"got {value!r}") from e
