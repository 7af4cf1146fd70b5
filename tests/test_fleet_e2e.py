"""Several AI boxes, one stack (issue 14), end to end on 127.0.0.1 with real binaries and the committed
configs: three simulated boxes, each a Prometheus 2.42 in agent mode (prometheus/agent.yml, its own
`box` label) remote-writing through vmauth into one real VictoriaMetrics; two detector shards
(`serve --shard 0/2` and `1/2`, each with its own store) reading from it; their /metrics scraped back by
VictoriaMetrics itself (victoriametrics/scrape.yml, honor_labels as committed); a real vmalert
evaluating the committed rules over every box and sending to a real Alertmanager with the committed
routing, which notifies the webhook in this test.

Box b's GPU 1 falls off the bus shortly after start: GpuLost must reach the webhook naming box b (and
no other box). Every watched series must be scored by exactly one shard, the shards together scoring
every GPU of every box, and both shards' rigwatch_detector_shard_info must be in VictoriaMetrics.

The sim's aibox cards have the same uuids on every simulated box (real cards never do): ownership
follows the uuid (detector/sharding.py), so one shard owns GPU 0 of all three boxes and the other GPU 1,
and the identities the shards score still differ by their `box` label.
"""
from __future__ import annotations

import sys
import time

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from harness.fleet import PrometheusAgent, VMAuthServer, central_scrape_config, make_secrets
from harness.loki_standin import LokiTestServer
from harness.pipeline import ROOT, alertmanager_config, detector_config
from harness.processes import Process, free_port, wait_until
from harness.servers import AlertmanagerServer
from harness.victoria import VictoriaMetricsServer, VMAlertServer
from harness.webhook import WebhookReceiver

pytestmark = pytest.mark.integration

BOXES = {"box-a": 11, "box-b": 12, "box-c": 13}  # box -> sim seed
FAULTY_BOX, LOST_GPU, LOST_AT = "box-b", "1", 15  # seconds after that exporter starts
INTERVAL = 2  # every scrape, rule evaluation and detector step: seconds
LATENCY_OFFSET = "2s"  # VictoriaMetrics' -search.latencyOffset, and the detectors' matching offset
# the preset's model-free per-GPU detectors: they score from their first pass, no fit to wait for
DETECTORS = {"gpu_vanished", "gpu_temperature_headroom", "gpu_memory_growth", "gpu_xid"}


def _wait(what: str, fn, timeout: float, procs=()):
    """wait_until, failing at once with its log when one of `procs` has exited."""
    def poll():
        dead = [p for p in procs if p.proc is not None and p.proc.poll() is not None]
        assert not dead, f"{dead[0].name} exited:\n{dead[0].tail()}"
        return fn()
    return wait_until(poll, timeout, what)


def _scores(shard_url: str) -> set[frozenset]:
    """The identities (label sets) of the rigwatch_anomaly_score series a shard publishes."""
    text = requests.get(shard_url + "/metrics", timeout=5).text
    return {frozenset(s.labels.items()) for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.name == "rigwatch_anomaly_score"}


def _gpus(identities) -> set[tuple[str, str]]:
    return {(dict(i)["box"], dict(i)["uuid"]) for i in identities if "uuid" in dict(i)}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet-e2e")
    secrets = make_secrets(tmp / "secrets")
    webhook = WebhookReceiver().start()
    ports = {name: free_port() for name in ("detector-0", "detector-1", "vmalert", "alertmanager")}
    vm_port = free_port()
    procs: list[Process] = []

    def run(p: Process, timeout: float = 30.0) -> Process:
        procs.append(p)  # stopped below, also when it never comes up
        return p.start(timeout=timeout)

    loki = LokiTestServer().start()  # vmauth's second upstream; the logs are not this test's subject
    try:
        am = run(AlertmanagerServer(tmp / "am", alertmanager_config(webhook.url, group_wait=1),
                                    port=ports["alertmanager"]))
        vm_targets = {"detector-0:9843": f"127.0.0.1:{ports['detector-0']}",
                      "detector-1:9843": f"127.0.0.1:{ports['detector-1']}",
                      "localhost:9090": f"127.0.0.1:{vm_port}", "vmalert:8880": f"127.0.0.1:{ports['vmalert']}",
                      "alertmanager:9093": f"127.0.0.1:{ports['alertmanager']}"}
        scrape = tmp / "scrape.yml"
        vm = VictoriaMetricsServer(tmp / "vm", port=vm_port, latency_offset=LATENCY_OFFSET,
                                   extra_args=[f"-promscrape.config={scrape}"])
        auth = VMAuthServer(tmp / "vmauth", secrets, vm.url, loki.url)
        vm_targets["vmauth:8427"] = f"127.0.0.1:{auth.port}"
        scrape.write_text(central_scrape_config(vm_targets, scrape_interval=f"{INTERVAL}s"))
        run(vm)
        run(auth)
        run(VMAlertServer(tmp / "vmalert", [str(ROOT / "prometheus" / "rules" / "*.yml")], vm.url, am.url,
                          evaluation_interval=f"{INTERVAL}s", port=ports["vmalert"]))
        started = {}
        for box, seed in BOXES.items():
            schedule = tmp / f"{box}-schedule.yml"
            incidents = ([{"kind": "gpu_lost", "at": f"{LOST_AT}s", "duration": "10m", "gpu": int(LOST_GPU)}]
                         if box == FAULTY_BOX else [])
            schedule.write_text(yaml.safe_dump({"incidents": incidents}))
            port = free_port()
            run(Process(f"exporter-{box}", [sys.executable, "-m", "exporter.cli", "--backend", "sim",
                                            "--seed", str(seed), "--sim-config", str(schedule),
                                            "--listen", f"127.0.0.1:{port}"],
                        tmp / f"exporter-{box}.log", ready_url=f"http://127.0.0.1:{port}/metrics"), timeout=60)
            started[box] = time.time()
            # no node-exporter: the agent's node job scrapes a port nobody listens on (pointing it at
            # the exporter would publish every GPU series a second time, under job="node")
            run(PrometheusAgent(tmp / box, box, f"127.0.0.1:{port}", auth.url, secrets,
                                node_exporter=f"127.0.0.1:{free_port()}", scrape_interval=f"{INTERVAL}s"))
        shards = []
        for i in range(2):
            name = f"detector-{i}"
            cfg = yaml.safe_load(detector_config(vm.url, f"127.0.0.1:{ports[name]}", tmp / name / "models",
                                                 step=INTERVAL, lookback=600, context=120))
            cfg["detectors"] = [d for d in cfg["detectors"] if d["name"] in DETECTORS]
            (tmp / f"{name}.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
            url = f"http://127.0.0.1:{ports[name]}"
            shards.append(url)
            run(Process(name, [sys.executable, "-m", "detector.cli", "serve", "--config", str(tmp / f"{name}.yml"),
                               "--shard", f"{i}/2", "--prometheus-url", vm.url, "--store", str(tmp / name / "models"),
                               "--prometheus-latency-offset", LATENCY_OFFSET, "--listen", f"127.0.0.1:{ports[name]}"],
                        tmp / f"{name}.log", ready_url=url + "/healthz"), timeout=90)
        yield {"vm": vm, "webhook": webhook, "shards": shards, "procs": procs, "started": started}
    finally:
        for p in reversed(procs):
            p.stop()
        loki.stop()
        webhook.stop()


def test_a_gpu_lost_on_one_box_is_notified_naming_that_box(fleet):
    vm, webhook, procs = fleet["vm"], fleet["webhook"], fleet["procs"]
    # gpu_up stays, at 0, for a lost card (its other series vanish)
    uuid = _wait("the faulty box's GPU in VictoriaMetrics",
                 lambda: vm.query(f'gpu_up{{box="{FAULTY_BOX}",gpu="{LOST_GPU}"}}'), 30, procs)[0]["metric"]["uuid"]
    # a minute after the loss, however long the shards took to start
    left = max(LOST_AT + 60 - (time.time() - fleet["started"][FAULTY_BOX]), 20)
    lost = webhook.wait_for(lambda a: a["labels"].get("alertname") == "GpuLost" and a["status"] == "firing",
                            timeout=left)
    vmalert = next(p for p in procs if p.name == "vmalert")
    assert lost is not None, f"no GpuLost notification; got {webhook.alerts()}\nvmalert log:\n{vmalert.tail()}"
    assert lost["labels"]["box"] == FAULTY_BOX and lost["labels"]["uuid"] == uuid, lost["labels"]
    assert lost["labels"]["gpu"] == LOST_GPU and lost["labels"]["severity"] == "critical"
    # the committed annotations rendered by vmalert, the committed routing through Alertmanager
    assert f"GPU {LOST_GPU}" in lost["annotations"]["description"], lost["annotations"]
    assert lost["annotations"]["runbook_url"] == "RUNBOOK.md#gpulost"
    # only that box lost a GPU: the two others' cards share the uuid (one sim) and must not be named
    others = [a["labels"] for a in webhook.alerts() if a["labels"].get("alertname") == "GpuLost"
              and a["labels"].get("box") != FAULTY_BOX]
    assert others == [], others
    assert {r["metric"]["box"] for r in vm.query("gpu_up == 0")} == {FAULTY_BOX}
    # vmalert wrote the alert's state back (-remoteWrite.url: what it restores from after a restart)

    def alert_state():
        vm.flush()
        return vm.query('ALERTS{alertname="GpuLost",alertstate="firing"}')

    assert {r["metric"]["box"] for r in _wait("GpuLost's state in VictoriaMetrics", alert_state, 20, procs)} \
        == {FAULTY_BOX}


def test_every_watched_series_is_scored_by_exactly_one_shard(fleet):
    vm, shards, procs = fleet["vm"], fleet["shards"], fleet["procs"]

    def gpus_in_vm():
        gpus = {(r["metric"]["box"], r["metric"]["uuid"]) for r in vm.query("gpu_info")}
        return gpus if {box for box, _ in gpus} == set(BOXES) else None

    every_gpu = _wait("every box's GPUs in VictoriaMetrics", gpus_in_vm, 30, procs)
    assert len(every_gpu) == 2 * len(BOXES), every_gpu  # the aibox has two cards

    def scored_everywhere():  # each shard scores what it owns: until the two have scored every GPU
        parts = [_scores(url) for url in shards]
        return parts if _gpus(parts[0] | parts[1]) >= every_gpu else None

    parts = _wait("the shards to score every GPU of every box", scored_everywhere, 60, procs)
    assert parts[0] and parts[1], "one shard scores nothing"
    assert parts[0].isdisjoint(parts[1]), sorted(map(dict, parts[0] & parts[1]), key=str)
    assert _gpus(parts[0] | parts[1]) == every_gpu
    # a GPU's series all on one shard (ownership follows the uuid), across its detectors
    assert _gpus(parts[0]).isdisjoint(_gpus(parts[1]))
    for p in parts:
        assert {dict(i)["detector"] for i in p} <= DETECTORS


def test_both_shards_and_their_scores_are_scraped_back_into_victoriametrics(fleet):
    vm, procs = fleet["vm"], fleet["procs"]

    def shards_in_vm():
        vm.flush()
        return {(r["metric"]["shard"], r["metric"]["shards"]) for r in vm.query("rigwatch_detector_shard_info == 1")}

    assert _wait("both shards' shard_info in VictoriaMetrics", lambda: shards_in_vm() >= {("0", "2"), ("1", "2")},
                 30, procs)
    assert shards_in_vm() == {("0", "2"), ("1", "2")}
    # each shard's series count, and the scores under the watched series' own labels (honor_labels):
    # every box's, the job the exporter's, not the scrape's
    assert {r["metric"]["job"] for r in vm.query("rigwatch_detector_shard_series")} == {"rigwatch-detector"}

    def scores_of_every_box():
        scores = vm.query("rigwatch_anomaly_score")
        return scores if {r["metric"].get("box") for r in scores} == set(BOXES) else None

    scores = _wait("scores of every box in VictoriaMetrics", scores_of_every_box, 30, procs)
    assert {r["metric"]["job"] for r in scores} == {"rigwatch-exporter"}
    # every job of victoriametrics/scrape.yml answers: the central box watches its own parts
    committed = {j["job_name"] for j in yaml.safe_load((ROOT / "victoriametrics" / "scrape.yml").read_text())
                 ["scrape_configs"]}
    assert _wait("every central job up", lambda: {r["metric"]["job"] for r in vm.query("up == 1")} >= committed,
                 30, procs)


def test_vmalert_runs_every_committed_rule_without_an_evaluation_error(fleet):
    """MetricsQL is not PromQL to the letter: every committed rule must load and evaluate in vmalert."""
    procs = fleet["procs"]
    vmalert = next(p for p in procs if p.name == "vmalert")
    committed = {(g["name"], r.get("alert") or r.get("record"))
                 for f in sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
                 for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]}

    def evaluated():
        groups = requests.get(f"http://127.0.0.1:{vmalert.port}/api/v1/rules", timeout=5).json()["data"]["groups"]
        rules = {(g["name"], r["name"]): r for g in groups for r in g["rules"]}
        return rules if all(r.get("lastEvaluation", "").startswith("2") for r in rules.values()) else None

    rules = _wait("every rule evaluated once", evaluated, 30, procs)
    assert set(rules) == committed
    failing = {k: r["lastError"] for k, r in rules.items() if r.get("lastError")}
    assert failing == {}, failing
