"""The log side attached to the real DetectorService: fit/score tasks over the Loki test server,
metric families, incidents behind GET /api/v1/anomalies, model store round trip, Loki outage."""
from __future__ import annotations

import json

import pytest
import requests

from detector.api import create_app
from detector.config import parse_config
from detector.logs.service import attach
from detector.service import DetectorService
from detector.store import MemoryPersistence, ModelStore
from tests.support.binaries import free_port
from tests.support.loki_server import LokiTestServer

T0 = 1_790_000_000.0


def line(t, message, **labels):
    return {"stream": labels, "values": [[str(int(t * 1e9)), message]]}


def journal(t, message, unit="cron.service", identifier="CRON", priority="6"):
    return line(t, message, job="systemd-journal", unit=unit, identifier=identifier, priority=priority,
                transport="syslog")


def make_service(loki_url, store=None, logs=None):
    config = parse_config({"loki": {"url": loki_url, "retries": 0, "timeout": 2}, **({"logs": logs} if logs else {}),
                           "schedule": {"step": "60s", "lookback": "2h", "fit_every": "6h"}, "detectors": []})
    service = DetectorService(config, store=store or ModelStore(MemoryPersistence()), clock=lambda: T0)
    return service, attach(service)


@pytest.fixture
def loki():
    with LokiTestServer() as server:
        streams = [journal(T0 - 7200 + k * 30, f"(root) CMD (run-parts /etc/cron.d job{k % 3})") for k in range(240)]
        streams += [journal(T0 + 30, "nvidia-smi: GPU 0000:02:00.0 fatal error: device lost", "gpu-check.service",
                            "gpu-check", "3")]
        streams += [line(T0 + 40, "NVRM: Xid (PCI:0000:02:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen "
                                  "off the bus.", job="systemd-journal", identifier="kernel", priority="4",
                         transport="kernel")]
        response = requests.post(server.url + "/loki/api/v1/push", json={"streams": streams}, timeout=5)
        assert response.status_code == 204
        yield server


def test_not_attached_without_a_loki_section():
    config = parse_config({"detectors": []})
    service = DetectorService(config, store=ModelStore(MemoryPersistence()))
    assert attach(service) is None and not service._tasks


def test_fit_score_publish_and_restart(loki):
    store = ModelStore(MemoryPersistence())
    service, logs = make_service(loki.url, store)
    assert {name for name, _i, _f in service._tasks} == {"log_fit", "log_score"}
    logs.fit(T0)
    assert service._up["loki"] == 1
    logs.score(T0 + 60)
    families = {f.name: f for f in service.extra_families()}
    samples = families["rigwatch_log_anomaly_score"].samples
    xid = [s for s in samples if s.labels.get("pattern") == "nvidia_xid"]
    assert xid and xid[0].value > 1 and xid[0].labels["detector"] == "log_pattern"
    assert any(s.labels.get("unit") == "gpu-check.service" and s.value > 1 for s in samples)
    assert families["rigwatch_log_novel_templates"].samples[0].value >= 2  # counter: name without _total
    assert {s.labels["template_id"] for s in families["rigwatch_log_template_rate"].samples}
    client = create_app(service).test_client()
    body = client.get("/api/v1/anomalies?detector=log_pattern").get_json()
    assert any("Xid 79" in a["summary"] for a in body["anomalies"]), body
    assert client.get("/api/v1/anomalies?detector=log_nonsense").status_code == 404

    # restart: a fresh service on the same store loads the model and templates, no refit needed
    templates = logs.detector.miner_.templates()
    service2, logs2 = make_service(loki.url, store)
    assert logs2.detector is not None and logs2.detector.miner_.templates() == templates
    logs2.fit(T0 + 120)  # within fit_every of the stored fit: skipped
    assert store.versions("logs") == [1]


def test_loki_outage_is_reported_and_survived(loki):
    service, logs = make_service(loki.url)
    logs.fit(T0)
    port = free_port()
    logs.loki.url = f"http://127.0.0.1:{port}"  # nothing listens there
    with pytest.raises(Exception, match="Loki unreachable"):
        logs.score(T0 + 60)
    assert service._up["loki"] == 0 and service._errors["loki"] >= 1
    logs.loki.url = loki.url
    logs.score(T0 + 120)  # resumes, and reads the lines it missed while Loki was away
    assert service._up["loki"] == 1
    assert any(a.labels.get("pattern") == "nvidia_xid" for _t, a in logs.latest.values())
    json.dumps([a.to_dict() for _t, a in logs.latest.values()])


def test_anomalies_api_explains_log_anomalies_with_template_and_example_lines(loki):
    service, logs = make_service(loki.url)
    logs.fit(T0)
    logs.score(T0 + 60)
    client = create_app(service).test_client()
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
        assert requests.post(server.url + "/loki/api/v1/push", json={"streams": streams}, timeout=5).status_code == 204
        service, logs = make_service(server.url, logs={"top_templates": 2})
        logs.fit(T0)
        logs.score(T0 + 60)
        families = {f.name: f for f in service.extra_families()}
        rates = {s.labels["template_id"]: s.value for s in families["rigwatch_log_template_rate"].samples}
        templates = logs.detector.miner_.templates()
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
        requests.post(server.url + "/loki/api/v1/push", json={"streams": training}, timeout=5)
        service, logs = make_service(server.url)
        logs.fit(T0)
        seen: list[str] = []
        original = logs.detector.score

        def spy(entries, now):
            seen.extend(e.message for e in entries)
            return original(entries, now)

        logs.detector.score = spy
        logs.score(T0 + 60)  # covers T0+50, but the line below is not in Loki yet
        xid = "NVRM: Xid (PCI:0000:02:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."
        late = line(T0 + 50, xid, job="systemd-journal", identifier="kernel", priority="4", transport="kernel")
        requests.post(server.url + "/loki/api/v1/push", json={"streams": [late]}, timeout=5)
        logs.score(T0 + 70)
        logs.score(T0 + 80)
        assert seen.count(xid) == 1, seen
        assert any(a.labels.get("pattern") == "nvidia_xid" for _t, a in logs.latest.values())
        assert not [m for m in seen if "CMD (run-parts" in m], "training lines re-read within the slack were scored"
