"""detector/evaluation.py: the figures the sim benchmark prints (delays, per detector)."""
from detector.evaluation import evaluate

TRUTH = {"start": "2026-11-01T00:00:00Z", "end": "2026-11-03T00:00:00Z", "incidents": [
    {"kind": "fan_failure", "start": "2026-11-01T10:00:00Z", "end": "2026-11-01T10:40:00Z",
     "labels": {"gpu": "1"}, "benign": False},
    {"kind": "gpu_lost", "start": "2026-11-01T20:00:00Z", "end": "2026-11-01T21:00:00Z",
     "labels": {"gpu": "0"}, "benign": False},
    {"kind": "vram_leak", "start": "2026-11-02T08:00:00Z", "end": "2026-11-02T09:00:00Z",
     "labels": {"gpu": "0", "container": "ollama"}, "benign": False},
    {"kind": "planned_reboot", "start": "2026-11-02T03:00:00Z", "end": "2026-11-02T03:04:00Z",
     "labels": {}, "benign": True}]}


def inc(detector, labels, start, end):
    return {"detector": detector, "labels": labels, "start": start, "end": end, "peak_score": 2.0,
            "summary": f"{detector} {labels}"}


def test_delays_and_per_detector_counts():
    report = {"range": {}, "incidents": [
        inc("gpu_thermal", {"gpu": "1"}, "2026-11-01T10:03:00Z", "2026-11-01T10:30:00Z"),
        inc("gpu_vanished", {"gpu": "0"}, "2026-11-01T20:01:00Z", "2026-11-01T21:00:00Z"),
        inc("gpu_xid", {"gpu": "0", "xid": "79"}, "2026-11-01T20:02:00Z", "2026-11-01T20:10:00Z"),
        # the wrong GPU at the leak's time: not found, not false either (it overlaps a real window)
        inc("gpu_memory_growth", {"gpu": "1"}, "2026-11-02T08:05:00Z", "2026-11-02T08:30:00Z"),
        inc("gpu_vanished", {"gpu": "0"}, "2026-11-02T03:00:00Z", "2026-11-02T03:05:00Z"),  # the reboot
        inc("gpu_thermal", {"gpu": "0"}, "2026-11-02T15:00:00Z", "2026-11-02T15:10:00Z")]}  # false
    r = evaluate(report, TRUTH)
    s = r["summary"]
    assert (s["found"], s["injected"], s["false"], s["on_benign"]) == (2, 3, 1, 1)
    assert s["median_delay_seconds"] == 120.0 and s["max_delay_seconds"] == 180.0
    assert s["per_detector"] == {
        "gpu_thermal": {"found": 1, "false": 1, "on_benign": 0},
        "gpu_vanished": {"found": 1, "false": 0, "on_benign": 1},
        "gpu_xid": {"found": 1, "false": 0, "on_benign": 0}}


def test_nothing_found_has_no_delay():
    s = evaluate({"range": {}, "incidents": []}, TRUTH)["summary"]
    assert s["median_delay_seconds"] is None and s["max_delay_seconds"] is None
    assert s["per_detector"] == {} and s["missed"] == 3


def test_a_reboot_is_seen_as_one_event_when_one_box_restart_event_overlaps_it():
    truth = dict(TRUTH, instance="aibox:9842", incidents=TRUTH["incidents"] + [
        {"kind": "planned_reboot", "start": "2026-11-02T18:00:00Z", "end": "2026-11-02T18:03:00Z",
         "labels": {}, "benign": True}])
    restart = {"kind": "box_restart", "start": "2026-11-02T02:59:45Z", "end": "2026-11-02T03:19:00Z",
               "summary": "box aibox restarted (down 4 min, booted 2026-11-02T03:04:00Z)",
               "scope": {"host": "aibox"}, "explains": [{"id": "x", "detector": "gpu_vanished"}]}
    elsewhere = dict(restart, start="2026-11-02T17:59:00Z", end="2026-11-02T18:20:00Z", scope={"host": "studio"})
    model = {"kind": "model_change", "start": "2026-11-02T17:59:00Z", "end": "2026-11-02T18:20:00Z",
             "summary": "ollama loaded x", "scope": {"host": "aibox"}, "explains": []}
    report = {"range": {}, "incidents": [], "events": [restart, elsewhere, model]}
    r = evaluate(report, truth)
    assert (r["summary"]["restarts"], r["summary"]["restarts_as_one_event"]) == (2, 1)
    assert r["restarts_as_one_event"] == [{"kind": "planned_reboot", "start": "2026-11-02T03:00:00Z",
                                           "event": restart["summary"], "explains": 1}]
    # two events over one reboot are not one event; a report without events sees none
    twice = dict(report, events=[restart, dict(restart, start="2026-11-02T03:02:00Z")])
    assert evaluate(twice, truth)["summary"]["restarts_as_one_event"] == 0
    assert evaluate({"range": {}, "incidents": []}, truth)["summary"]["restarts_as_one_event"] == 0
