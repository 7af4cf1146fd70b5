"""The whole rigwatch path, every part real, at wall-clock time (issue 5, "End to end, here").

Three hours of clean sim history are backfilled with promtool (the detector's training data, ending
"now"); then the sim exporter plays a schedule live at speed 1 while a real Prometheus scrapes it and
the detector, evaluates the committed rule files and sends to a real Alertmanager running the
committed alertmanager.yml (only the webhook URL, templates path and group_wait changed), which
notifies the webhook receiver in this test. Loki's place is taken by the API-faithful LokiTestServer:
the history's journal is pushed into it for the log side's training, the live sim's journal is
shipped into it as it is written, and the detector reads it (`--loki-url`).

Phase 1 (clean): from start-up until the incident, with the detector fitted and scoring, no
notification may arrive. Phase 2: GPU 1 falls off the bus (Xid 79, gpu_lost) at a fixed offset;
the receiver must get the GpuLost and Xid notifications for that GPU and nothing else (log alerts
about the same GPU accepted), the detector must have published rigwatch_anomaly_score > 1 for that
GPU through Prometheus, and the kernel's Xid 79 line must give rigwatch_log_anomaly_score > 1 for it.
"""
from __future__ import annotations

import copy
import json
import subprocess
import time
import urllib.request

import pytest
import yaml

from detector.logs.patterns import normalize_pci_bus_id
from harness.log_shipping import JournalShipper
from harness.loki_standin import LokiTestServer
from harness.pipeline import ROOT, Pipeline, PipelineOptions
from harness.processes import free_port, require_binary
from harness.webhook import WebhookReceiver
from tests.test_stack_helpers import dashboard_queries, metric_names, rules

INCIDENT_AT = 50.0  # seconds after the exporter starts; everything before it is the clean phase
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


def _journal_line(usec: int, message: str, **fields) -> str:
    return json.dumps({"__REALTIME_TIMESTAMP": str(usec), "MESSAGE": message, **fields}) + "\n"


def test_journal_shipper_pushes_complete_lines_under_the_contract_labels_and_retries(tmp_path):
    path = tmp_path / "journal.jsonl"
    kernel = dict(_TRANSPORT="kernel", PRIORITY="4", SYSLOG_IDENTIFIER="kernel")
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: the push fails
    shipper = JournalShipper(path, dead)
    assert shipper.ship_once() == 0  # no file yet
    path.write_text(_journal_line(1_700_000_000_000_001, "NVRM: Xid (PCI:0000:02:00): 79, GPU has fallen off the bus.",
                                  **kernel)
                    + _journal_line(1_700_000_001_000_000, "GET /api/tags 200", CONTAINER_NAME="ollama",
                                    PRIORITY="3", _SYSTEMD_UNIT="docker.service")
                    + '{"__REALTIME_TIMESTAMP": "17000000020')  # half-written: waits for the rest
    assert shipper.ship_once() == 0 and shipper.errors == 1  # kept for the next try
    with LokiTestServer() as loki:
        shipper.loki_url = loki.url
        assert shipper.ship_once() == 2 and shipper.shipped == 2
        with open(path, "a") as fh:
            fh.write('00000", "MESSAGE": "late half", "_TRANSPORT": "kernel"}\n')
        assert shipper.ship_once() == 1 and shipper.ship_once() == 0
        streams = {tuple(sorted(k)): v for k, v in loki.store.streams.items()}
    assert streams == {
        (("identifier", "kernel"), ("job", "systemd-journal"), ("priority", "4"), ("transport", "kernel")):
            [(1_700_000_000_000_001_000, "NVRM: Xid (PCI:0000:02:00): 79, GPU has fallen off the bus.")],
        (("container", "ollama"), ("job", "docker")): [(1_700_000_001_000_000_000, "GET /api/tags 200")],
        (("job", "systemd-journal"), ("transport", "kernel")): [(1_700_000_002_000_000_000, "late half")],
    }


@pytest.mark.integration
def test_generated_configs_are_the_committed_ones_and_pass_the_real_checkers(tmp_path):
    pipe = Pipeline(tmp_path, PipelineOptions(group_wait=5))
    try:
        committed = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())
        ours = yaml.safe_load(pipe.alertmanager_config())
        # only the receiver URL, the templates path and group_wait differ from the committed file
        expected = copy.deepcopy(committed)
        expected["templates"] = [str(ROOT / "alertmanager" / "templates" / "*.tmpl")]
        expected["receivers"][0]["webhook_configs"][0]["url"] = pipe.webhook.url
        for route in [expected["route"], *expected["route"]["routes"]]:
            route["group_wait"] = "5s"
        assert ours == expected
        (tmp_path / "am.yml").write_text(pipe.alertmanager_config())
        out = subprocess.run([require_binary("amtool"), "check-config", str(tmp_path / "am.yml")],
                             capture_output=True, text=True)
        assert out.returncode == 0 and " - 1 templates" in out.stdout, out.stdout + out.stderr
        (tmp_path / "prom.yml").write_text(pipe.prometheus_config())
        out = subprocess.run([require_binary("promtool"), "check", "config", str(tmp_path / "prom.yml")],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
        assert sorted(p.name for p in (tmp_path / "rules").iterdir()) == \
            sorted(p.name for p in (ROOT / "prometheus" / "rules").glob("*.yml"))
        jobs = {j["job_name"]: j for j in yaml.safe_load(pipe.prometheus_config())["scrape_configs"]}
        assert jobs["rigwatch-detector"]["honor_labels"] is True and "rigwatch-exporter" in jobs
    finally:
        pipe.stop()


@pytest.mark.integration
def test_gpu_lost_is_notified_end_to_end_and_a_clean_run_is_quiet(tmp_path):
    for b in ("prometheus", "promtool", "prometheus-alertmanager"):
        require_binary(b)
    received: list[tuple[float, dict]] = []
    loki = LokiTestServer().start()
    pipe = Pipeline(tmp_path, PipelineOptions(schedule=SCHEDULE, speed=1.0, seed=3, loki_url=loki.url),
                    on_notification=lambda n: received.append((time.time(), n)), log=lambda s: None)
    try:
        pipe.start()
        # the history's journal reached Loki under the contract's stream labels, kernel lines included
        streams = [dict(k) for k in loki.store.streams]
        assert {"job": "docker", "container": "ollama"} in streams, streams
        assert all(s["job"] in ("systemd-journal", "docker") for s in streams), streams
        assert all(set(s) <= {"job", "unit", "identifier", "priority", "transport"} for s in streams
                   if s["job"] == "systemd-journal"), streams
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
        # the log side was trained on the pushed history, scores the shipped live journal, and finds
        # nothing anomalous in it
        assert pipe.prom.query('rigwatch_detector_source_up{source="loki"} == 1'), (
            f"the detector does not read Loki:\n{pipe.procs[3].tail()}")
        assert pipe.prom.query("rigwatch_log_template_rate"), "the log side published no template rates"
        clean_s = int(clean_until - pipe.sim_start)
        log_high = pipe.prom.query(f"max_over_time(rigwatch_log_anomaly_score[{clean_s}s]) > 1")
        assert log_high == [], f"log anomaly during the clean run: {log_high}"
        scores = pipe.prom.query('rigwatch_anomaly_score{job="rigwatch-exporter"}')
        assert scores, "the detector published no rigwatch_anomaly_score during the clean phase"
        # the thermal model was trained on the backfilled history and goes on into live data: its
        # expected temperature must be a temperature (a counter reset where history met the live
        # exporter once made rate(energy) read 100 kW and the expectation 4600 C) ...
        expected = pipe.prom.query('rigwatch_anomaly_expected{detector="gpu_thermal"}')
        assert len(expected) == 2, expected
        assert all(15 < float(r["value"][1]) < 100 for r in expected), expected
        # ... because the live exporter is the history's box playing on: no energy counter reset
        assert not pipe.prom.query("resets(gpu_energy_consumption_joules_total[1d]) > 0"), (
            pipe.prom.query("resets(gpu_energy_consumption_joules_total[1d])"))
        assert pipe.prom.query('up{job="rigwatch-detector"} == 1'), "Prometheus does not scrape the detector"
        uuid = pipe.prom.query(f'gpu_up{{gpu="{LOST_GPU}"}}')[0]["metric"]["uuid"]
        pci = normalize_pci_bus_id(pipe.prom.query(f'gpu_info{{gpu="{LOST_GPU}"}}')[0]["metric"]["pci_bus_id"])

        def about_lost_gpu(labels: dict) -> bool:
            # metric alerts carry the uuid; log alerts the gpu, or the Xid line's PCI address
            return (labels.get("uuid") == uuid or labels.get("gpu") == LOST_GPU
                    or (labels.get("pci_bus_id") is not None and normalize_pci_bus_id(labels["pci_bus_id"]) == pci))

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
            # (other detectors may also score the GPU around its loss: wait for the ones about the loss)
            high = pipe.prom.query(f'max_over_time(rigwatch_anomaly_score{{job="rigwatch-exporter",'
                                   f'uuid="{uuid}",detector=~"gpu_xid|gpu_vanished"}}[5m]) > 1')
            if high or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert high, ("no rigwatch_anomaly_score > 1 for the lost GPU in Prometheus; scores: "
                      f"{pipe.prom.query('rigwatch_anomaly_score')}\ndetector log:\n{pipe.procs[3].tail()}")
        assert {r["metric"]["detector"] for r in high} & {"gpu_xid", "gpu_vanished"}, high

        # the dashboards and rules are tested elsewhere against synthetic detector series: here the
        # detector-side names they use must exist in a Prometheus that holds only the REAL detector's
        # output, log side included (rigwatch_log_anomaly_score exists only once a log line scored:
        # checked below)
        used = set().union(*(metric_names(q.expr) for q in dashboard_queries()),
                           *(metric_names(r.expr) for r in rules()))
        # (the registry's challenger and the gate's last figures exist only once a refit was kept
        # from scoring or evaluated: none in this short run; the gate's decision counter starts at 0)
        after_a_refit = {"rigwatch_detector_challenger_info", "rigwatch_detector_gate_incidents",
                         "rigwatch_detector_gate_alarm_seconds"}
        detector_side = {n for n in used if n.startswith(("rigwatch_anomaly_", "rigwatch_detector_", "rigwatch_log_"))
                         and n != "rigwatch_log_anomaly_score" and n not in after_a_refit}
        present = set(json.loads(urllib.request.urlopen(
            f"{pipe.prom.url}/api/v1/label/__name__/values", timeout=10).read())["data"])
        assert detector_side and detector_side <= present, sorted(detector_side - present)

        # nothing but this incident was notified: metric alerts for the lost GPU, log alerts for it
        # (LogAnomaly* carry no uuid) or for the kernel lines it wrote when it fell off the bus
        def about_incident(a: dict) -> bool:
            labels = a["labels"]
            if about_lost_gpu(labels):
                return True
            return (labels.get("alertname", "").startswith("LogAnomaly") and labels.get("transport") == "kernel"
                    and a.get("startsAt", "") >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(incident - 5)))

        others = [a["labels"] for a in pipe.webhook.alerts() if not about_incident(a)]
        assert others == [], f"notifications not about the incident: {others}"
        assert pipe.webhook.bad_requests == 0

        # the kernel's Xid 79 line went sim journal -> shipper -> Loki -> detector -> Prometheus
        deadline = time.monotonic() + 15  # the line reached Loki long ago: one detector pass and a scrape
        while True:
            log_high = pipe.prom.query('max_over_time(rigwatch_log_anomaly_score{xid="79"}[5m]) > 1')
            log_high = [r for r in log_high if about_lost_gpu(r["metric"])]
            if log_high or time.monotonic() > deadline:
                break
            time.sleep(2)
        xid_in_loki = [e for v in loki.store.streams.values() for e in v if "NVRM: Xid" in e[1] and ": 79," in e[1]]
        assert xid_in_loki, "the live sim's Xid 79 kernel line never reached Loki"
        assert log_high, ("the late-arriving Xid 79 line got no rigwatch_log_anomaly_score > 1; log scores: "
                          f"{pipe.prom.query('rigwatch_log_anomaly_score')}; in Loki: {xid_in_loki}")
        # tied to the metrics side: the detector maps the line's PCI id through gpu_info to gpu="1"
        assert any(r["metric"].get("gpu") == LOST_GPU for r in log_high), log_high
        # ... and only there: a log anomaly is not also a metric anomaly (MetricAnomaly would fire twice)
        assert not pipe.prom.query('count_over_time(rigwatch_anomaly_score{model="logs"}[30m])'), (
            pipe.prom.query('rigwatch_anomaly_score{model="logs"}'))

    finally:
        pipe.stop()
        loki.stop()
