"""Busy with nobody asking, end to end (issue 12): the studio box's vLLM card hangs — pegged, with
vLLM reporting no request — and the whole path, every part real, turns it into one notification
naming the GPU and "no active requests"; a batch at the power cap on the same card earlier in the
same run, with requests flowing, stays silent.

Both are played in the backfilled history (the hang runs on into the live part), so the detector's
first scoring pass after start-up — its context reaching back over both — already decides: exporter
(sim, vLLM-like metrics) -> history backfilled with promtool + live scrapes -> Prometheus -> detector
(gpu_busy_without_requests) -> rigwatch_gpu_busy_without_requests -> GpuBusyWithoutRequests (committed
rules) -> Alertmanager (committed routing) -> webhook.
"""
from __future__ import annotations

import json
import time

import pytest

from detector.timefmt import parse_rfc3339
from harness.pipeline import Pipeline, PipelineOptions
from harness.processes import require_binary

pytestmark = pytest.mark.integration

HISTORY_H = 3.0
BATCH = (80 * 60, 130 * 60)  # offsets from the history's start: a 50 min batch at the power cap...
HANG = (145 * 60, 215 * 60)  # ...then the card hangs, 35 min before the history ends, into the live part
HISTORY_SCHEDULE = (
    "incidents:\n"
    f"  - {{kind: batch_at_power_cap, at: {BATCH[0]}s, duration: {BATCH[1] - BATCH[0]}s, gpu: 0, concurrency: 16}}\n"
    f"  - {{kind: gpu_stuck, at: {HANG[0]}s, duration: {HANG[1] - HANG[0]}s, gpu: 0}}\n")


def test_a_hung_vllm_card_is_notified_and_the_batch_before_it_is_not(tmp_path):
    for b in ("prometheus", "promtool", "prometheus-alertmanager"):
        require_binary(b)
    pipe = Pipeline(tmp_path, PipelineOptions(box="studio", seed=5, history_hours=HISTORY_H,
                                              history_schedule=HISTORY_SCHEDULE,
                                              detector_context=HISTORY_H * 3600 - BATCH[0] + 600),
                    log=lambda s: None)
    try:
        pipe.start()
        truth = json.loads((tmp_path / "history" / "truth.json").read_text())
        start = parse_rfc3339(truth["start"])
        assert [i["kind"] for i in truth["incidents"]] == ["batch_at_power_cap", "gpu_stuck"], truth
        pipe.wait_detector_ready(timeout=120)
        alert = pipe.webhook.wait_for(
            lambda a: a["labels"].get("alertname") == "GpuBusyWithoutRequests" and a["status"] == "firing",
            timeout=240)
        dead = pipe.dead()
        assert alert is not None, (f"no GpuBusyWithoutRequests notification; got {pipe.webhook.alerts()}\n"
                                   + (dead.tail() if dead else pipe.procs[-1].tail()))
        assert alert["labels"]["gpu"] == "0" and alert["labels"]["severity"] == "critical"
        assert "no active requests" in alert["annotations"]["summary"]
        assert alert["annotations"]["description"].startswith("GPU 0 (NVIDIA GeForce RTX 4090"), alert
        assert alert["annotations"]["runbook_url"] == "RUNBOOK.md#gpubusywithoutrequests"
        assert "On the GPU: vllm (" in alert["annotations"]["description"], alert  # the workload, named
        # no GPU but the hung one was notified as busy without requests
        busy = [a for a in pipe.webhook.alerts() if a["labels"].get("alertname") == "GpuBusyWithoutRequests"]
        assert {a["labels"]["gpu"] for a in busy} == {"0"}, busy

        # the detector's incidents: one, on the hang (after its hold), none over the batch — which its
        # first scoring pass judged too: the context reaches back 10 min before the batch began
        incidents = [i for i in pipe.anomalies() if i["detector"] == "gpu_busy_without_requests"]
        assert len(incidents) == 1, incidents
        (inc,) = incidents
        began = parse_rfc3339(inc["start"])
        assert start + HANG[0] + 9 * 60 <= began <= start + HANG[0] + 12 * 60, (inc, start)
        assert "vllm: 0 requests running" in inc["summary"] and "no active requests" in inc["summary"], inc
        assert [w["workload"] for w in inc["workload"]] == ["vllm"] and inc["model_changes"] == 0, inc
        assert time.time() - start < HISTORY_H * 3600 + 900  # the test stayed short
    finally:
        pipe.stop()
