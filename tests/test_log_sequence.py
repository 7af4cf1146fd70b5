"""The log sequence model judges order and combination of known templates, never volume (issue 12):
small literal windows for SequenceModel, then a day of journal-like lines through LogDetector."""
from __future__ import annotations

import random
import re

import pytest

from detector.logs.detector import STATE_VERSION, LogDetector
from detector.logs.journal import LogEntry
from detector.logs.scoring import SequenceModel

# -- SequenceModel on literal windows --------------------------------------------------------------
# two streams: a request cycle (R -> P -> D, repeated) and a job chain (S -> J... -> F, acyclic)


def _window(requests: int, jobs: int) -> list[list[str]]:
    return [["R", "P", "D"] * requests, ["S"] + ["J"] * jobs + ["F"]]


TRAINING = [_window(2 + i % 4, 1 + i % 3) for i in range(80)]


@pytest.fixture(scope="module")
def model() -> SequenceModel:
    return SequenceModel().fit(TRAINING)


@pytest.mark.parametrize("factor", [0.3, 3, 10])
def test_the_same_known_mix_at_another_volume_scores_nothing(model, factor):
    requests = max(1, round(4 * factor))
    scaled = [_window(requests, max(1, round(2 * factor))),
              # every line repeated: the same order, more lines
              [[t for t in ["R", "P", "D"] * 2 for _ in range(max(1, round(factor)))], ["S", "J", "F"]],
              # concurrent requests interleave the steps of the cycle: still the cycle
              [["R", "R", "P", "R", "D", "P", "P", "D", "D"] * max(1, round(factor)), ["S", "J", "F"]],
              [["R", "P", "D"] * requests]]  # the job stream silent: fewer lines, nothing new
    assert model.score(scaled).max() <= 0.0


def test_a_transition_between_known_templates_never_seen_in_training_is_flagged(model):
    # the job's finish line followed by another job line: both known, never in that order
    window = [["R", "P", "D"] * 3, ["S", "J", "F", "J"]]
    (score,) = model.score([window])
    assert score > 1
    top = model.findings(window)[0]
    assert (top["kind"], top["first"], top["second"], top["stream"]) == ("transition", "F", "J", 1)


def test_a_combination_never_seen_in_training_is_flagged():
    # one stream in two modes that never share a window (a power profile by time of day), with a
    # common line between them
    training = [["C", "X" if i % 2 else "Y", "C"] for i in range(160)]
    model = SequenceModel().fit(training)
    assert model.score([["C", "X", "C"], ["C", "Y", "C", "C"]]).max() <= 0
    window = [["X", "C", "Y"]]
    (score,) = model.score([window])
    assert score > 1
    top = model.findings(window)[0]
    assert (top["kind"], top["first"], top["second"]) == ("combination", "X", "Y")
    assert top["share_first"] == top["share_second"] == 0.5


def test_templates_unknown_to_training_are_left_to_the_line_scorer(model):
    # a new template between two known ones breaks the chain: no transition S -> F is invented
    # (the job's start straight to its finish), and new templates combine with nothing
    assert model.score([[["R", "P", "D"], ["S", "NEW", "F"], ["NEW2", "OTHER"]]]).max() <= 0
    assert model.score([[["R", "P", "D"], ["S", "F"]]]).max() > 1


def test_the_threshold_comes_from_held_out_training_windows():
    # training where ordinary windows keep showing new pairs (each window holds 2 of 12 templates):
    # the held-out halves show them too, so a new pair there is no finding
    rng = random.Random(1)
    names = [f"K{i}" for i in range(12)]
    training = [[rng.sample(names, 2)] for _ in range(200)]
    model = SequenceModel().fit(training)
    seen = {frozenset(w[0]) for w in training}
    new_pair = next([a, b] for a in names for b in names if a < b and frozenset((a, b)) not in seen)
    assert model.score([[new_pair]])[0] <= 1


# -- LogDetector on a day of lines -----------------------------------------------------------------
T0 = 1_790_000_000.0
OLLAMA = {"job": "docker", "container": "ollama"}
BACKUP = {"job": "systemd-journal", "unit": "backup.service", "priority": "6"}
POWER = {"job": "systemd-journal", "unit": "gpu-power.service", "priority": "6"}
CRON = {"job": "systemd-journal", "unit": "cron.service", "priority": "6"}


def _lines(start: float, hours: float, requests_per_min: float = 1.0, seed: int = 0) -> list[LogEntry]:
    """Requests to an inference server (three lines each, overlapping when busy), a backup every
    30 min (started, 3 shares, finished), cron every 5 min, and a power profile by time of day."""
    rng = random.Random(seed)
    out: list[LogEntry] = []
    end = start + hours * 3600
    t = start
    while requests_per_min > 0:
        t += rng.expovariate(requests_per_min / 60)
        if t >= end:
            break
        n = rng.randint(1, 9)
        out += [LogEntry(t, f'[GIN] 200 | {rng.randint(100, 900)}ms | 172.17.0.{n} | POST "/api/generate"', OLLAMA),
                LogEntry(t + rng.uniform(0.1, 2), f"prompt eval: {rng.randint(10, 900)} tokens", OLLAMA),
                LogEntry(t + rng.uniform(2, 30), f"request done: generated {rng.randint(10, 900)} tokens", OLLAMA)]
    for k in range(int(hours * 12)):
        w = start + k * 300
        out.append(LogEntry(w + 5, "(root) CMD (command -v debian-sa1 > /dev/null && debian-sa1 1 1)", CRON))
        quiet = (w // 3600) % 24 < 8
        out += [LogEntry(w + 20, "power check ok", POWER),
                LogEntry(w + 21, f"power profile {'quiet' if quiet else 'balanced'} applied", POWER),
                LogEntry(w + 22, "power check ok", POWER)]
        if k % 6 == 2:
            out += [LogEntry(w + 30, "backup started for 3 shares", BACKUP)]
            out += [LogEntry(w + 40 + 10 * i, f"backup of /srv/share{i} done", BACKUP) for i in range(3)]
            out += [LogEntry(w + 90, f"backup finished in {rng.randint(50, 70)} s", BACKUP)]
    return sorted(out, key=lambda e: e.ts)


@pytest.fixture(scope="module")
def trained() -> LogDetector:
    return LogDetector({"window_s": 300}).fit(_lines(T0, 24))


def _sequence_scores(detector: LogDetector, entries: list[LogEntry], start: float, end: float):
    """Score minute by minute as the service does; the log_sequence anomalies of every step."""
    out, index, t = [], 0, start + 60
    while t <= end:
        batch = []
        while index < len(entries) and entries[index].ts < t:
            batch.append(entries[index])
            index += 1
        out += [a for a in detector.score(batch, t) if a.detector == "log_sequence"]
        t += 60
    return out


@pytest.mark.parametrize("factor", [0.3, 3, 10])
def test_a_busy_or_quiet_inference_server_raises_no_sequence_incident(trained, factor):
    detector = LogDetector.from_state(trained.get_state())
    start = T0 + 24 * 3600
    entries = _lines(start, 2, requests_per_min=factor, seed=int(factor * 10))
    anomalies = _sequence_scores(detector, entries, start, start + 2 * 3600)
    assert anomalies and max(a.score for a in anomalies) <= 1, max(anomalies, key=lambda a: a.score).summary


def test_a_transition_never_seen_is_an_incident_that_reads_as_text(trained):
    detector = LogDetector.from_state(trained.get_state())
    start = T0 + 24 * 3600
    entries = _lines(start, 1, seed=7)
    # a backup line after the backup said it finished
    entries.append(LogEntry(start + 2 * 300 + 95, "backup of /srv/share7 done", BACKUP))
    entries.sort(key=lambda e: e.ts)
    anomalies = [a for a in _sequence_scores(detector, entries, start, start + 3600) if a.score > 1]
    assert anomalies
    summary = anomalies[0].summary
    assert summary.startswith("Unusual log sequence in unit backup.service in the last 5 min: ")
    assert '(e.g. "backup of /srv/share7 done")' in summary and "came right after" in summary
    assert '"backup finished in' in summary and "never seen in training" in summary
    assert not re.search(r"\bT\d+\b", summary), summary
    assert "backup of /srv/share7 done" in anomalies[0].examples
    assert anomalies[0].template is not None and "backup of" in anomalies[0].template


def test_a_combination_never_seen_is_an_incident_that_reads_as_text(trained):
    detector = LogDetector.from_state(trained.get_state())
    start = T0 + 25 * 3600  # afternoon (T0 is 14:13 UTC): the balanced profile
    entries = _lines(start, 1, seed=8)
    entries.append(LogEntry(start + 600 + 23, "power profile quiet applied", POWER))
    entries.sort(key=lambda e: e.ts)
    anomalies = [a for a in _sequence_scores(detector, entries, start, start + 3600) if a.score > 1]
    assert anomalies
    summary = anomalies[0].summary
    assert summary.startswith("Unusual log combination in unit gpu-power.service")
    assert '(e.g. "power profile quiet applied")' in summary and '(e.g. "power profile balanced applied")' in summary
    assert not re.search(r"\bT\d+\b", summary), summary


def test_a_state_of_the_previous_sequence_model_is_refused(trained):
    state = trained.get_state()
    assert state["version"] == STATE_VERSION == 3
    with pytest.raises(ValueError, match="unsupported log detector state version 2"):
        LogDetector.from_state({**state, "version": 2})
    restored = LogDetector.from_state(state)
    assert restored.sequence_.get_state()["vocabulary"] == trained.sequence_.get_state()["vocabulary"]


def test_rate_summaries_name_templates_by_text_not_id(trained):
    detector = LogDetector.from_state(trained.get_state())
    start = T0 + 24 * 3600
    silent = [e for e in _lines(start, 0.5, seed=3) if e.labels is not CRON]  # cron went silent
    anomalies = [a for a in detector.score(silent, start + 1800) if a.detector == "log_rate"]
    assert any("template_id" in a.labels for a in anomalies)  # per-template rates among them
    for anomaly in anomalies:
        assert not re.search(r"\bT\d+\b", anomaly.summary), anomaly.summary
