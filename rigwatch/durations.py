"""The one duration grammar of rigwatch's configuration: sim schedules and detector.yml.

A duration is a number of seconds (int or float, not a bool) or a string of one or more
`<number><unit>` parts, units ms, s, m, h, d and w (a week): `90s`, `5m`, `1.5h`, `1h30m`, `2d5h`,
`1w`, `500ms`; spaces between parts are allowed (`1h 30m`). Callers keep their own range checks and
wrap the ValueError into their own error naming the key.
"""
from __future__ import annotations

import math
import re
from typing import Any

UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")  # "ms" before "m": 5ms is not 5 minutes and an s


def parse_duration(value: Any) -> float:
    """Seconds in `value`, a number as it is (negative included: the range is the caller's).
    ValueError, naming the value, when it is not a duration or not finite."""
    seconds = _seconds(value)
    if seconds is None:
        raise ValueError(f"expected a duration like 90s, 5m, 1h30m or 2d5h (got {value!r})")
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite duration (got {value!r})")
    return seconds


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:  # an int too large for a float
            return math.inf
    if not isinstance(value, str):
        return None
    text = value.strip().replace(" ", "")
    pos, total = 0, 0.0
    while (m := _PART.match(text, pos)) is not None:
        total += float(m.group(1)) * UNIT_SECONDS[m.group(2)]
        pos = m.end()
    return total if 0 < pos == len(text) else None
