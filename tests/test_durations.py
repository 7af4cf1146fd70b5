"""rigwatch.durations: the one duration grammar of sim schedules and detector.yml, and how both
callers wrap it (their own error naming the key, their own range)."""
import math

import pytest

from detector.config import ConfigError
from detector.config import parse_duration as config_duration
from exporter.sim.schedule import ScheduleError
from exporter.sim.schedule import parse_duration as schedule_duration
from rigwatch.durations import parse_duration


@pytest.mark.parametrize("value,seconds", [
    (90, 90.0), (0, 0.0), (1.5, 1.5), (-3, -3.0),
    ("90s", 90.0), ("5m", 300.0), ("6h", 21600.0), ("7d", 604800.0), ("1w", 604800.0), ("500ms", 0.5),
    ("1.5h", 5400.0), ("0s", 0.0), (" 45m ", 2700.0),
    # compound: the sim's grammar, now detector.yml's too (the detector refused these before)
    ("1h30m", 5400.0), ("2d5h", 190800.0), ("1h30m15s", 5415.0), ("1h 30m", 5400.0), ("1m500ms", 60.5),
    # weeks: the detector's unit, now the sim's too (the sim refused these before)
    ("2w", 1209600.0), ("1w2d", 777600.0),
])
def test_parses(value, seconds):
    assert parse_duration(value) == seconds
    assert isinstance(parse_duration(value), float)


@pytest.mark.parametrize("value", [
    "", "   ", "5", "s", "5x", "m5", "5 m x", "-3", "-3s", "1h-5m", "1h30", ".5h", "5 min", "1y", "5S",
    True, False, None, [], {}, b"5s",
])
def test_rejects_what_is_not_a_duration(value):
    with pytest.raises(ValueError, match=r"^expected a duration like 90s, 5m, 1h30m or 2d5h \(got "):
        parse_duration(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400, "9" * 400 + "s"])
def test_rejects_what_is_not_finite(value):
    # both old grammars took NaN and infinity as a number of seconds
    with pytest.raises(ValueError, match=r"^expected a finite duration \(got "):
        parse_duration(value)


def test_the_message_names_the_value():
    with pytest.raises(ValueError, match=r"\(got '1x'\)$"):
        parse_duration("1x")


def test_detector_config_names_the_key_and_wants_more_than_zero():
    assert config_duration("1h30m", "schedule.step") == 5400.0  # refused before: one unit only
    assert config_duration("1w", "schedule.lookback") == 604800.0
    with pytest.raises(ConfigError, match=r"^schedule\.step: expected a duration like 90s"):
        config_duration("1x", "schedule.step")
    with pytest.raises(ConfigError, match=r"^schedule\.step: expected a finite duration"):
        config_duration(math.nan, "schedule.step")  # returned nan before
    for zero_or_less in (0, "0s", -5):
        with pytest.raises(ConfigError, match=r"^schedule\.step: must be > 0"):
            config_duration(zero_or_less, "schedule.step")


def test_sim_schedule_names_the_key_and_allows_zero():
    assert schedule_duration("1w", "incidents[0].at") == 604800.0  # refused before: no weeks
    assert schedule_duration("2d5h", "incidents[0].at") == 190800.0
    assert schedule_duration(0, "incidents[0].at") == 0.0  # the start itself
    with pytest.raises(ScheduleError, match=r"^incidents\[0\]\.at: expected a duration like 90s"):
        schedule_duration("1x", "incidents[0].at")
    with pytest.raises(ScheduleError, match=r"^incidents\[0\]\.at: expected a finite duration"):
        schedule_duration(math.inf, "incidents[0].at")  # returned inf before
    with pytest.raises(ScheduleError, match=r"^incidents\[0\]\.at: must not be negative"):
        schedule_duration(-1, "incidents[0].at")
