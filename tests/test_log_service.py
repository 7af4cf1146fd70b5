"""The log plugin inside the real DetectorService (as `serve` builds it): fit/score tasks over the Loki
test server, metric families, incidents behind GET /api/v1/anomalies, model store round trip, Loki
outage."""
from __future__ import annotations

import base64
import json
import logging
import pickle

import pytest
import requests

from detector.api import create_app
from detector.config import parse_config
from detector.logs.detector import LogDetector
from detector.logs.journal import LogEntry
from detector.logs.plugin import LogPlugin
from detector.persistence import MemoryPersistence
from detector.plugins import build_service
from detector.store import ModelStore
from harness.loki_standin import LokiTestServer
from harness.processes import free_port

T0 = 1_790_000_000.0


def line(t, message, **labels):
    return {"stream": labels, "values": [[str(int(t * 1e9)), message]]}


def journal(t, message, unit="cron.service", identifier="CRON", priority="6"):
    return line(t, message, job="systemd-journal", unit=unit, identifier=identifier, priority=priority,
                transport="syslog")


def _push(server, *streams):
    assert requests.post(server.url + "/loki/api/v1/push", json={"streams": list(streams)},
                         timeout=5).status_code == 204


class Rig:
    """`serve`'s service with the log side on, over a clock the test moves."""

    def __init__(self, loki_url, store=None, logs=None, step="60s"):
        config = parse_config({"loki": {"url": loki_url, "retries": 0, "timeout": 2},
                               **({"logs": logs} if logs else {}), "prometheus": {"retries": 0},
                               "schedule": {"step": step, "lookback": "2h", "fit_every": "6h"}, "detectors": []})
        self.now = T0
        self.service = build_service(config, store=store or ModelStore(MemoryPersistence()), clock=lambda: self.now)
        (self.logs,) = [p for p in self.service.plugins if isinstance(p, LogPlugin)]
        self.service.load_models()

    def fit(self, t):
        self.now = t
        return self.service.fit()

    def score(self, t):
        self.now = t
        return self.service.score()

    def source(self, name):
        up, errors = self.service.health.snapshot()
        return up[name], errors[name]


@pytest.fixture
def loki():
    with LokiTestServer() as server:
        streams = [journal(T0 - 7200 + k * 30, f"(root) CMD (run-parts /etc/cron.d job{k % 3})") for k in range(240)]
        streams += [journal(T0 + 30, "nvidia-smi: GPU 0000:02:00.0 fatal error: device lost", "gpu-check.service",
                            "gpu-check", "3")]
        streams += [line(T0 + 40, "NVRM: Xid (PCI:0000:02:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen "
                                  "off the bus.", job="systemd-journal", identifier="kernel", priority="4",
                         transport="kernel")]
        _push(server, *streams)
        yield server


def test_no_log_side_without_a_loki_section():
    config = parse_config({"detectors": []})
    service = build_service(config, store=ModelStore(MemoryPersistence()))
    assert not [p for p in service.plugins if isinstance(p, LogPlugin)]
    assert "log_pattern" not in service.detector_names()


def test_fit_score_publish_and_restart(loki):
    store = ModelStore(MemoryPersistence())
    rig = Rig(loki.url, store)
    rig.fit(T0)
    assert rig.source("loki")[0] == 1 and "log_fit" in rig.service.snapshot.last_success
    rig.score(T0 + 60)
    families = {f.name: f for f in rig.service.extra_families()}
    samples = families["rigwatch_log_anomaly_score"].samples
    xid = [s for s in samples if s.labels.get("pattern") == "nvidia_xid"]
    assert xid and xid[0].value > 1 and xid[0].labels["detector"] == "log_pattern"
    assert any(s.labels.get("unit") == "gpu-check.service" and s.value > 1 for s in samples)
    assert families["rigwatch_log_novel_templates"].samples[0].value >= 2  # counter: name without _total
    assert {s.labels["template_id"] for s in families["rigwatch_log_template_rate"].samples}
    client = create_app(rig.service).test_client()
    body = client.get("/api/v1/anomalies?detector=log_pattern").get_json()
    assert any("Xid 79" in a["summary"] for a in body["anomalies"]), body
    assert client.get("/api/v1/anomalies?detector=log_nonsense").status_code == 404

    # restart: a fresh service on the same store loads the model and templates, no refit needed
    templates = rig.logs.detector.miner_.templates()
    rig2 = Rig(loki.url, store)
    assert rig2.logs.detector is not None and rig2.logs.detector.miner_.templates() == templates
    rig2.fit(T0 + 120)  # within fit_every of the stored fit: skipped
    assert store.versions("logs") == [1]


def test_log_anomalies_are_published_as_log_scores_only(loki):
    """One Xid line is one log anomaly: it shows in rigwatch_log_anomaly_score and in the API, never
    also as rigwatch_anomaly_score{model="logs"} (MetricAnomaly would fire a second alert for it)."""
    from prometheus_client import CollectorRegistry

    from detector.metrics import DetectorCollector

    rig = Rig(loki.url)
    rig.fit(T0)
    rig.score(T0 + 60)
    rig.service._publish()
    registry = CollectorRegistry()
    registry.register(DetectorCollector(lambda: rig.service.snapshot, rig.service.extra_families))
    xid = {"detector": "log_pattern", "job": "systemd-journal", "pattern": "nvidia_xid", "xid": "79",
           "pci_bus_id": "0000:02:00.0"}
    assert registry.get_sample_value("rigwatch_log_anomaly_score", xid) == 5.0
    published = [s for m in registry.collect() if m.name == "rigwatch_anomaly_score" for s in m.samples]
    assert not [s for s in published if s.labels.get("model") == "logs"], published
    assert any(i.detector == "log_pattern" for i in rig.service.tracker.recent()), "not in the incident tracker"


def test_loki_outage_is_reported_and_survived(loki):
    rig = Rig(loki.url)
    rig.fit(T0)
    port = free_port()
    rig.logs.loki.url = f"http://127.0.0.1:{port}"  # nothing listens there
    assert rig.score(T0 + 60) is False
    assert rig.source("loki")[0] == 0 and rig.source("loki")[1] >= 1
    rig.logs.loki.url = loki.url
    rig.score(T0 + 120)  # resumes, and reads the lines it missed while Loki was away
    assert rig.source("loki")[0] == 1
    assert any(a.labels.get("pattern") == "nvidia_xid" for _t, a in rig.logs.latest.values())
    json.dumps([a.to_dict() for _t, a in rig.logs.latest.values()])


def test_anomalies_api_explains_log_anomalies_with_template_and_example_lines(loki):
    rig = Rig(loki.url)
    rig.fit(T0)
    rig.score(T0 + 60)
    client = create_app(rig.service).test_client()
    body = client.get("/api/v1/anomalies?detector=log_template").get_json()
    gpu_check = [a for a in body["anomalies"] if a["labels"].get("unit") == "gpu-check.service"]
    assert gpu_check, body
    explanation = gpu_check[0]["explanation"]
    assert "template: nvidia-smi: GPU <*> fatal error: device lost" in explanation, explanation
    assert "example: nvidia-smi: GPU 0000:02:00.0 fatal error: device lost" in explanation
    assert gpu_check[0]["peak_score"] > 1


def test_template_rate_series_are_capped_by_config_and_novel_templates_counted():
    with LokiTestServer() as server:
        # four training templates, 40/30/20/10 lines: only the top two get a rate series
        messages = ["session opened for user {k}", "(root) CMD (run-parts /etc/cron.hourly) #{k}",
                    "Started Daily apt download activities run {k}.", "systemd-logind: New seat seat{k}."]
        streams = [journal(T0 - 7000 + 7 * (40 * m + k), messages[m].format(k=k))
                   for m, count in enumerate((40, 30, 20, 10)) for k in range(count)]
        streams += [journal(T0 + 10, "pam_unix(sudo:auth): conversation failed"),
                    journal(T0 + 20, "usb 1-4: new high-speed USB device number 7 using xhci_hcd")]
        _push(server, *streams)
        rig = Rig(server.url, logs={"top_templates": 2})
        rig.fit(T0)
        rig.score(T0 + 60)
        families = {f.name: f for f in rig.service.extra_families()}
        rates = {s.labels["template_id"]: s.value for s in families["rigwatch_log_template_rate"].samples}
        templates = rig.logs.detector.miner_.templates()
        assert len(rates) == 2, rates
        assert {templates[t].split()[0] for t in rates} == {"session", "(root)"}
        assert families["rigwatch_log_novel_templates"].samples[0].value == 2
        # the unit's own stream gets a score gauge, also below 1
        scores = families["rigwatch_log_anomaly_score"].samples
        assert any(s.labels.get("detector") == "log_template" and s.labels.get("unit") == "cron.service"
                   for s in scores)


def test_a_line_that_reaches_loki_late_is_scored_once():
    """Shippers deliver lines after their timestamps: a pass re-reads a little before the previous
    one, so a late line is still scored, and a line is never handed to the detector twice."""
    with LokiTestServer() as server:
        training = [journal(T0 - 7200 + k * 30, f"(root) CMD (run-parts /etc/cron.d job{k % 3})") for k in range(240)]
        _push(server, *training)
        rig = Rig(server.url)
        rig.fit(T0)
        seen: list[str] = []
        original = rig.logs.detector.score

        def spy(entries, now):
            seen.extend(e.message for e in entries)
            return original(entries, now)

        rig.logs.detector.score = spy
        rig.score(T0 + 60)  # covers T0+50, but the line below is not in Loki yet
        xid = "NVRM: Xid (PCI:0000:02:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."
        late = line(T0 + 50, xid, job="systemd-journal", identifier="kernel", priority="4", transport="kernel")
        _push(server, late)
        rig.score(T0 + 70)
        rig.score(T0 + 80)
        assert seen.count(xid) == 1, seen
        assert any(a.labels.get("pattern") == "nvidia_xid" for _t, a in rig.logs.latest.values())
        assert not [m for m in seen if "CMD (run-parts" in m], "training lines re-read within the slack were scored"


def test_restart_reads_back_the_lines_that_reached_loki_while_the_detector_was_down(loki):
    store = ModelStore(MemoryPersistence())
    rig = Rig(loki.url, store)
    rig.fit(T0)
    rig.score(T0 + 60)
    # the detector stops; a disk error reaches Loki at T0+1000; it starts again at T0+1800
    _push(loki, journal(T0 + 1000, "fatal: backup volume /mnt/backup is corrupted", "backup.service", "backup", "3"))
    rig2 = Rig(loki.url, store)
    assert rig2.logs.last_scored == T0 + 60
    reads = []
    query_range = rig2.logs.loki.query_range
    rig2.logs.loki.query_range = lambda query, start, end: (reads.append(end - start), query_range(query, start, end))[1]
    rig2.fit(T0 + 1800)  # the stored fit is recent: no refit, nothing trained on the backlog
    rig2.score(T0 + 1800)
    # the backlog is read in chunks (bounded memory), each re-reading the ingestion slack
    assert len(reads) == 2 and max(reads) <= 900 + rig2.logs.ingest_slack_s, reads
    body = create_app(rig2.service).test_client().get("/api/v1/anomalies?detector=log_template").get_json()
    backup = [a for a in body["anomalies"] if a["labels"].get("unit") == "backup.service"]
    assert backup, body
    # played back in steps: the incident keeps the time of the pass that would have seen it
    from detector.timefmt import parse_rfc3339
    assert T0 + 1000 <= parse_rfc3339(backup[0]["start"]) <= T0 + 1000 + 2 * 60


def test_restart_keeps_a_half_counted_repeat(loki):
    store = ModelStore(MemoryPersistence())
    rig = Rig(loki.url, store)
    rig.fit(T0)
    refused = "worker: connection to database refused"
    _push(loki, *[journal(T0 + 100 + 20 * k, refused, "worker.service", "worker", "6") for k in range(3)])
    rig.score(T0 + 180)
    rig2 = Rig(loki.url, store)
    _push(loki, *[journal(T0 + 200 + 20 * k, refused, "worker.service", "worker", "6") for k in range(2)])
    rig2.score(T0 + 240)
    repeats = [a for _t, a in rig2.logs.latest.values()
               if a.detector == "log_rate" and a.labels.get("unit") == "worker.service"]
    assert repeats and "5 lines" in repeats[0].summary and repeats[0].score > 1, repeats


def test_an_unusable_cursor_is_ignored_and_a_long_outage_is_read_back_only_catch_up_s_far(loki):
    store = ModelStore(MemoryPersistence())
    rig = Rig(loki.url, store, logs={"catch_up_s": 600})
    rig.fit(T0)
    rig.score(T0 + 60)
    _push(loki, journal(T0 + 200, "fatal: backup volume /mnt/backup is corrupted", "backup.service", "backup", "3"),
          journal(T0 + 1500, "raid: disk sdb failed, array degraded", "mdadm.service", "mdadm", "2"))
    rig2 = Rig(loki.url, store, logs={"catch_up_s": 600})
    rig2.score(T0 + 1800)  # 1740 s behind: reads back from T0+1200 only
    units = {a.labels.get("unit") for _t, a in rig2.logs.latest.values() if a.score > 1}
    assert "mdadm.service" in units and "backup.service" not in units, units
    store.write_blob("logs/cursor.json", b"{not json")
    rig3 = Rig(loki.url, store)
    assert rig3.logs.detector is not None and rig3.logs.last_scored is None  # model kept, cursor dropped
    rig3.score(T0 + 1900)


def test_a_restart_does_not_score_the_lines_of_the_last_slack_again(loki):
    store = ModelStore(MemoryPersistence())
    rig = Rig(loki.url, store)
    rig.fit(T0)
    rig.score(T0 + 60)  # scores the Xid line at T0+40
    rig2 = Rig(loki.url, store)
    seen: list[str] = []
    original = rig2.logs.detector.score
    rig2.logs.detector.score = lambda entries, now: (seen.extend(e.message for e in entries), original(entries, now))[1]
    rig2.score(T0 + 80)  # re-reads T0+30.. for late lines: the Xid line is no news to it
    assert not [m for m in seen if "Xid" in m], seen


def test_a_log_anomaly_is_an_incident_at_its_first_pass_whatever_the_step(loki):
    """A log line is an event: the metric side's minimum incident duration (60 s by default) must not
    hide it when the detector scores every 10 s."""
    rig = Rig(loki.url, step="10s")
    rig.fit(T0)
    rig.score(T0 + 50)
    body = create_app(rig.service).test_client().get("/api/v1/anomalies?detector=log_pattern").get_json()
    assert [a["labels"].get("xid") for a in body["anomalies"]] == ["79"], body
    # an event has no value to show: the summary is what happened, not "value nan"
    assert body["anomalies"][0]["summary"] == (
        "log_pattern (pattern=nvidia_xid, xid=79): NVIDIA Xid 79 on GPU at 0000:02:00.0: "
        "GPU has fallen off the bus (score 5.00)"), body  # no Prometheus here: no gpu_info to map the PCI id


UNPICKLED: list[str] = []


def _record_unpickling():
    UNPICKLED.append("code ran")


class _Tripwire:
    """What the pickle in an old store could hold: unpickling runs code (here it only records that)."""

    def __reduce__(self):
        return (_record_unpickling, ())


def previous_release_state() -> dict:
    """The log state the previous release stored: a JSON string with the sequence model pickled."""
    inner = {"version": 1, "config": {}, "miner": "{}", "line": {}, "rate": {}, "patterns": {},
             "sequence": base64.b64encode(pickle.dumps(_Tripwire())).decode("ascii")}
    return {"log_detector": json.dumps(inner)}


def test_a_pickled_state_of_the_previous_release_is_refused_unread():
    with pytest.raises(ValueError, match="previous release"):
        LogDetector.from_state(previous_release_state())
    assert UNPICKLED == []


def test_a_store_of_the_previous_release_is_never_unpickled_the_log_side_refits_once(loki, caplog):
    store = ModelStore(MemoryPersistence())
    store.save("logs", previous_release_state(), {"training_window": {"start": T0 - 7200, "end": T0 - 60}})
    with caplog.at_level(logging.WARNING, logger="detector.logs.plugin"):
        rig = Rig(loki.url, store)
    assert rig.logs.detector is None and rig.logs.needs_fit(T0)
    assert "stored log model v1 not usable" in caplog.text and "previous release" in caplog.text
    rig.fit(T0)  # refits, and stores the new format
    assert store.versions("logs") == [1, 2] and UNPICKLED == []
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="detector.logs.plugin"):
        rig2 = Rig(loki.url, store)
    assert rig2.logs.detector is not None and "not usable" not in caplog.text
    rig2.fit(T0 + 120)  # the refit model is recent: no second refit
    assert store.versions("logs") == [1, 2] and UNPICKLED == []


def test_a_store_of_the_previous_sequence_model_is_refused_and_refitted_once(loki, caplog):
    """State version 2 held the sequence model as a forest over template counts (issue 12 replaced
    it): such a stored model is refused by its version, the log side refits once and stores v3."""
    entries = [LogEntry(T0 - 7200 + k * 30, f"(root) CMD (run-parts /etc/cron.d job{k % 3})",
                        {"job": "systemd-journal", "unit": "cron.service"}) for k in range(240)]
    state = LogDetector().fit(entries).get_state()
    state.update(version=2, sequence={"params": {"vocabulary_size": 100, "n_estimators": 100}, "vocabulary": ["T1"],
                                      "forest": None})
    store = ModelStore(MemoryPersistence())
    store.save("logs", state, {"training_window": {"start": T0 - 7200, "end": T0 - 60}})
    with caplog.at_level(logging.WARNING, logger="detector.logs.plugin"):
        rig = Rig(loki.url, store)
    assert rig.logs.detector is None and rig.logs.needs_fit(T0)
    assert "stored log model v1 not usable" in caplog.text and "state version 2" in caplog.text
    rig.fit(T0)
    assert store.versions("logs") == [1, 2]
    rig2 = Rig(loki.url, store)
    assert rig2.logs.detector is not None and rig2.logs.detector.get_state()["version"] == 3
    assert rig2.logs.detector.sequence_ is not None
