"""The one duration grammar of rigwatch's configuration: sim schedules and detector.yml.

A duration is a number of seconds (int or float, not a bool) or a string of one or more
`<number><unit>` parts, units ms, s, m, h, d and w (a week): `90s`, `5m`, `1.5h`, `1h30m`, `2d5h`,
`1w`, `500ms`; spaces between parts are allowed (`1h 30m`). Callers keep their own range checks and
wrap the ValueError into their own error naming the key.

Whatever the input, the only exception is ValueError: a value that is not finite, or longer than
MAX_SECONDS, is refused here, so no caller can hand a duration to datetime.timedelta or a scheduler
that overflows there (`99999999999w` is finite as a float, and an OverflowError far from the config).
"""
from __future__ import annotations

import math
import re
from typing import Any

UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")  # "ms" before "m": 5ms is not 5 minutes and an s
#: 100 years: longer than any schedule or window rigwatch has, far under timedelta's ~2.7 million years
MAX_SECONDS = 100 * 365.25 * 86400.0


def parse_duration(value: Any) -> float:
    """Seconds in `value`, a number as it is (negative included: the range is the caller's).
    ValueError, naming the value, when it is not a duration, not finite or beyond +-MAX_SECONDS."""
    seconds = _seconds(value)
    if seconds is None:
        raise ValueError(f"expected a duration like 90s, 5m, 1h30m or 2d5h (got {_short(value)})")
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite duration (got {_short(value)})")
    if abs(seconds) > MAX_SECONDS:
        raise ValueError(f"a duration of at most 100 years is expected (got {_short(value)})")
    return seconds


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


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
