"""A fleet's write path with real binaries and the committed configs: two simulated boxes, each a
Prometheus 2.42 in agent mode (prometheus/agent.yml) remote-writing through vmauth (the vmauth.yml
`make secrets` writes) into a real VictoriaMetrics; every series carries its box's `box` label. The
LAN entry takes only the password from the secret file and only the two write paths; log pushes
(what Alloy's agent/write.alloy sends) reach Loki (the in-repo stand-in) through it."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import requests

from harness.fleet import AGENT_CONFIG, ROOT, PrometheusAgent, VMAuthServer, make_secrets
from harness.loki_standin import LokiTestServer
from harness.processes import Process, free_port, require_binary, wait_until
from harness.victoria import VictoriaMetricsServer

pytestmark = pytest.mark.integration

BOXES = ("box-a", "box-b")
JOBS = {(box, job) for box in BOXES for job in ("rigwatch-exporter", "node", "prometheus-agent")}


def _exporter(tmp_path, box: str, seed: int) -> Process:
    port = free_port()
    return Process(f"exporter-{box}", [sys.executable, "-m", "exporter.cli", "--backend", "sim", "--seed", str(seed),
                                       "--listen", f"127.0.0.1:{port}"],
                   tmp_path / f"exporter-{box}.log", ready_url=f"http://127.0.0.1:{port}/metrics")




@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    secrets = make_secrets(tmp / "secrets")
    # latency offset 1s: the store shows what arrived at once (the product keeps VictoriaMetrics' 30 s)
    with LokiTestServer() as loki, VictoriaMetricsServer(tmp / "vm", latency_offset="1s") as vm, \
            VMAuthServer(tmp / "vmauth", secrets, vm.url, loki.url) as auth:
        node_port = free_port()  # one real node-exporter stands in for each box's own
        node = Process("node-exporter", [require_binary("prometheus-node-exporter"),
                                         f"--web.listen-address=127.0.0.1:{node_port}"],
                       tmp / "node-exporter.log", ready_url=f"http://127.0.0.1:{node_port}/metrics").start()
        exporters = [_exporter(tmp, box, seed).start() for seed, box in enumerate(BOXES)]
        agents = []
        try:
            for box, exp in zip(BOXES, exporters, strict=True):
                target = exp.ready_url.split("//", 1)[1].removesuffix("/metrics")
                agents.append(PrometheusAgent(tmp / box, box, target, auth.url, secrets, scrape_interval="2s",
                                              node_exporter=f"127.0.0.1:{node_port}").start())
            yield vm, auth, loki, secrets
        finally:
            for p in [*agents, *exporters, node]:
                p.stop()


def test_every_box_s_series_arrive_labelled_with_its_box(fleet):
    vm, *_ = fleet

    def boxes():
        vm.flush()
        return {(s["metric"].get("box"), s["metric"]["job"]) for s in vm.query("up == 1")} >= JOBS

    wait_until(boxes, 60, "every job of both boxes up")
    # the exporter's own labels survive beside the box's, and nothing arrives without a box
    assert {(s["metric"]["box"], s["metric"]["job"]) for s in vm.query("gpu_up")} == \
        {(box, "rigwatch-exporter") for box in BOXES}
    assert vm.query("count(up) - count(up{box=~'box-.+'})")[0]["value"][1] == "0"
    assert vm.query("count(node_load1) by (box)")  # node-exporter's series too


def test_the_overview_s_fleet_panel_lists_every_box(fleet):
    """The overview's "Boxes at a glance" queries (empty on a single box: tests/test_stack_promql.py
    only parses them) answer a row per box from the fleet's store: up and its GPUs."""
    vm, *_ = fleet
    dash = json.loads((ROOT / "grafana" / "dashboards" / "aibox-overview.json").read_text())
    (panel,) = [p for p in dash["panels"] if p["title"].startswith("Boxes at a glance")]
    by_legend = {t["legendFormat"]: t["expr"] for t in panel["targets"]}
    for legend in ("up", "GPUs"):
        rows = {s["metric"]["box"]: float(s["value"][1]) for s in vm.query(by_legend[legend])}
        assert set(rows) == set(BOXES), (legend, rows)
    assert all(v == 1 for v in (float(s["value"][1]) for s in vm.query(by_legend["up"])))
    assert all(v == 2 for v in (float(s["value"][1]) for s in vm.query(by_legend["GPUs"])))  # the sim's two cards


def test_the_lan_entry_takes_only_the_secret_and_only_the_write_paths(fleet):
    vm, auth, loki, secrets = fleet
    password = (secrets / "remote_write_password").read_text().strip()
    body = b"not a snappy protobuf"
    wrong = requests.post(auth.url + "/api/v1/write", data=body, auth=("rigwatch", password + "x"), timeout=5)
    none = requests.post(auth.url + "/api/v1/write", data=body, timeout=5)
    right = requests.post(auth.url + "/api/v1/write", data=body, auth=("rigwatch", password), timeout=5)
    # vmauth 1.79 answers an unknown password 400, a missing one 401; the right one reaches
    # VictoriaMetrics, which refuses the body itself
    assert none.status_code == 401 and wrong.status_code == 400 and "auth token" in wrong.text
    assert right.status_code == 400 and "snappy" in right.text
    # the query API is not reachable from the LAN, even with the password
    query = requests.get(auth.url + "/api/v1/query", params={"query": "up"}, auth=("rigwatch", password), timeout=5)
    assert query.status_code >= 400 and "result" not in query.text
    # a log push as Alloy's central writer sends it reaches Loki, with the box label it set
    push = {"streams": [{"stream": {"job": "systemd-journal", "unit": "ollama.service", "box": "box-a"},
                         "values": [[str(time.time_ns()), "ollama: model loaded"]]}]}
    r = requests.post(auth.url + "/loki/api/v1/push", data=json.dumps(push), auth=("rigwatch", password),
                      headers={"Content-Type": "application/json"}, timeout=5)
    assert r.status_code == 204, r.text
    assert any(dict(k).get("box") == "box-a" for k in loki.store.streams)
    unauth = requests.post(auth.url + "/loki/api/v1/push", data=json.dumps(push),
                           headers={"Content-Type": "application/json"}, timeout=5)
    assert unauth.status_code == 401 and len(loki.store.streams) == 1


@pytest.mark.parametrize("extra, ok", [("", True), ("rule_files: [rules.yml]\n", False)])
def test_promtool_checks_the_agent_config_in_agent_mode(tmp_path, extra, ok):
    """The committed file as Prometheus' agent mode reads it (which refuses rules: they run centrally)."""
    config = tmp_path / "agent.yml"
    config.write_text(AGENT_CONFIG.read_text() + extra)
    out = subprocess.run([require_binary("promtool"), "check", "config", "--agent", str(config)],
                         capture_output=True, text=True)
    assert (out.returncode == 0) == ok, out.stdout + out.stderr
