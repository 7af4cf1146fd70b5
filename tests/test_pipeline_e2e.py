"""The whole rigwatch path, every part real, at wall-clock time (issue 5, "End to end, here").

Three hours of clean sim history are backfilled with promtool (the detector's training data, ending
"now"); then the sim exporter plays a schedule live at speed 1 while a real Prometheus scrapes it and
the detector, evaluates the committed rule files and sends to a real Alertmanager running the
committed alertmanager.yml (only the webhook URL, templates path and group_wait changed), which
notifies the webhook receiver in this test.

Phase 1 (clean): from start-up until the incident, with the detector fitted and scoring, no
notification may arrive. Phase 2: GPU 1 falls off the bus (Xid 79, gpu_lost) at a fixed offset;
the receiver must get the GpuLost and Xid notifications for that GPU and nothing else, and the
detector must have published rigwatch_anomaly_score > 1 for that GPU through Prometheus.
"""
from __future__ import annotations

import json
import time
import urllib.request

import pytest

from scripts.launcher import Pipeline, PipelineOptions
from tests.support.binaries import require_binary
from tests.support.webhook import WebhookReceiver

INCIDENT_AT = 60.0  # seconds after the exporter starts; everything before it is the clean phase
LOST_GPU = "1"
SCHEDULE = f"incidents:\n  - {{kind: gpu_lost, at: {INCIDENT_AT:g}s, duration: 10m, gpu: {LOST_GPU}}}\n"


def _post(url: str, body: bytes) -> int:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_webhook_receiver_keeps_notifications_and_refuses_garbage():
    got = []
    rx = WebhookReceiver(on_notification=got.append).start()
    try:
        note = {"status": "firing", "alerts": [{"status": "firing", "labels": {"alertname": "X"}}]}
        assert _post(rx.url, json.dumps(note).encode()) == 200
        assert _post(rx.url, b"{not json") == 400
        assert _post(rx.url.replace("/alerts", "/other"), json.dumps(note).encode()) == 400
        assert got == [note] and rx.notifications == [note] and rx.bad_requests == 2
        assert rx.wait_for(lambda a: a["labels"]["alertname"] == "X", timeout=1)["status"] == "firing"
        assert rx.wait_for(lambda a: a["labels"]["alertname"] == "Y", timeout=0.2) is None
    finally:
        rx.stop()


@pytest.mark.integration
def test_gpu_lost_is_notified_end_to_end_and_a_clean_run_is_quiet(tmp_path):
    for b in ("prometheus", "promtool", "prometheus-alertmanager"):
        require_binary(b)
    received: list[tuple[float, dict]] = []
    pipe = Pipeline(tmp_path, PipelineOptions(schedule=SCHEDULE, speed=1.0, seed=3),
                    on_notification=lambda n: received.append((time.time(), n)), log=lambda s: None)
    try:
        pipe.start()
        waited = pipe.wait_detector_ready(timeout=60)
        incident = pipe.sim_start + INCIDENT_AT
        # the sim's clock starts on a 5 s tick at or before sim_start: the incident may come 5 s early
        clean_until = incident - 5
        assert clean_until - time.time() > 25, (
            f"start-up took too long for a meaningful clean phase (detector ready after {waited:.0f} s)")

        # -- phase 1: clean. The exporter, detector and rules run; nothing may be notified.
        while time.time() < clean_until:
            dead = pipe.dead()
            assert dead is None, f"{dead.name} exited during the clean phase:\n{dead.tail()}"
            time.sleep(1)
        clean_notes = [n for t, n in received if t < clean_until]
        assert clean_notes == [], f"notification during the clean run: {clean_notes}"
        scores = pipe.prom.query('rigwatch_anomaly_score{job="rigwatch-exporter"}')
        assert scores, "the detector published no rigwatch_anomaly_score during the clean phase"
        # the thermal model was trained on the backfilled history and continues across the seam
        # into live data: its expected temperature must be a temperature (a counter reset at the
        # seam once made rate(energy) read 100 kW and the expectation 4600 C)
        expected = pipe.prom.query('rigwatch_anomaly_expected{detector="gpu_thermal"}')
        assert len(expected) == 2, expected
        assert all(15 < float(r["value"][1]) < 100 for r in expected), expected
        assert pipe.prom.query('up{job="rigwatch-detector"} == 1'), "Prometheus does not scrape the detector"
        uuid = pipe.prom.query(f'gpu_up{{gpu="{LOST_GPU}"}}')[0]["metric"]["uuid"]

        # -- phase 2: GPU 1 falls off the bus.
        lost = pipe.webhook.wait_for(
            lambda a: a["labels"].get("alertname") == "GpuLost" and a["labels"].get("uuid") == uuid
            and a["status"] == "firing", timeout=INCIDENT_AT + 60 - (time.time() - pipe.sim_start))
        assert lost is not None, (f"no GpuLost notification; got {pipe.webhook.alerts()}\n"
                                  f"prometheus log:\n{pipe.procs[2].tail()}")
        xid = pipe.webhook.wait_for(
            lambda a: a["labels"].get("alertname") == "GpuXidErrorCritical" and a["labels"].get("xid") == "79"
            and a["labels"].get("uuid") == uuid, timeout=20)
        assert xid is not None, f"no Xid 79 notification; got {pipe.webhook.alerts()}"
        # the committed annotations and routing made it through Alertmanager
        assert lost["labels"]["severity"] == "critical" and lost["labels"]["gpu"] == LOST_GPU
        assert f"GPU {LOST_GPU}" in lost["annotations"]["description"]
        assert lost["annotations"]["runbook_url"] == "RUNBOOK.md#gpulost"
        note = next(n for _, n in received if any(a["labels"].get("alertname") == "GpuLost" for a in n["alerts"]))
        assert note["receiver"] == "default-webhook" and note["groupLabels"]["alertname"] == "GpuLost"

        # the detector saw it too, and its score went through Prometheus (honor_labels: the exporter's job)
        deadline = time.monotonic() + 40
        while True:
            high = pipe.prom.query(f'max_over_time(rigwatch_anomaly_score{{job="rigwatch-exporter",'
                                   f'uuid="{uuid}"}}[5m]) > 1')
            if high or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert high, ("no rigwatch_anomaly_score > 1 for the lost GPU in Prometheus; scores: "
                      f"{pipe.prom.query('rigwatch_anomaly_score')}\ndetector log:\n{pipe.procs[3].tail()}")
        assert {r["metric"]["detector"] for r in high} & {"gpu_xid", "gpu_vanished"}, high

        # nothing but this incident was notified
        others = [a["labels"] for a in pipe.webhook.alerts() if a["labels"].get("uuid") != uuid]
        assert others == [], f"notifications not about the incident: {others}"
        assert pipe.webhook.bad_requests == 0
    finally:
        pipe.stop()
