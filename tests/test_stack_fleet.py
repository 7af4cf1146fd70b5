"""docker-compose.agent.yml and docker-compose.central.yml (a fleet: README "From one box to many"),
resolved by Docker Compose's own `config` (extends, !override, interpolation) with an empty .env:
the same security rules as the single box's file, the shards and the scrape config agreeing, and
every secret file they mount made by `make secrets`. The configs' behaviour with real binaries is
tests/test_fleet_write_path.py's and tests/test_victoria_metrics.py's."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.test_stack_compose import _env, _host_ip, run_compose
from tests.test_stack_helpers import ROOT, load_yaml

pytestmark = pytest.mark.integration

AGENT, CENTRAL = ROOT / "docker-compose.agent.yml", ROOT / "docker-compose.central.yml"
ROOT_ALLOWED = {"alloy"}  # as in docker-compose.yml: reads the host journal with no capabilities
# the one-shot chown of VictoriaMetrics' fresh volume (root-owned) to nobody: CHOWN only, no network
INIT_ONLY = {"storage-init": ["CHOWN"]}
OWN_IMAGES = {"gpu-exporter", "sim-exporter", "detector-0", "detector-1"}  # USER from our Dockerfiles


def _resolve(tmp_path_factory, path, *profiles, **env) -> dict:
    args = [a for p in profiles for a in ("--profile", p)]
    out = run_compose(tmp_path_factory.mktemp("fleet"), *args, "config", "--format", "json", env=_env(**env),
                      file=path)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    return _resolve(tmp_path_factory, AGENT, "gpu", "sim")


@pytest.fixture(scope="module")
def central(tmp_path_factory):
    return _resolve(tmp_path_factory, CENTRAL, "tracking")


def test_agent_runs_only_the_box_s_parts(agent):
    assert set(agent["services"]) == {"prometheus-agent", "node-exporter", "gpu-exporter", "sim-exporter",
                                      "docker-exporter-proxy", "docker-socket-proxy", "alloy"}
    prom = agent["services"]["prometheus-agent"]
    assert "--agent" in prom["command"] and "--config.file=/etc/prometheus/agent.yml" in prom["command"]
    assert prom["environment"] == {"RIGWATCH_BOX": ""}  # from .env; unset here
    assert any(v["target"] == "/prometheus" and v["type"] == "volume" for v in prom["volumes"]), "the WAL survives"


def test_central_runs_the_store_rules_and_two_shards(central):
    svcs = central["services"]
    assert set(svcs) == {"storage-init", "victoriametrics", "vmauth", "vmalert", "detector-0", "detector-1",
                         "alertmanager", "loki", "grafana", "mlflow"}  # mlflow: profile tracking, the shards' one server
    vm = svcs["victoriametrics"]
    assert "prometheus" in vm["networks"]["default"]["aliases"]  # Grafana, vmalert, detectors: prometheus:9090
    assert "-httpListenAddr=:9090" in vm["command"]
    shards, stores = set(), set()
    for name in ("detector-0", "detector-1"):
        cmd = svcs[name]["command"]
        shards.add(next(a for a in cmd if a.startswith("--shard=")))
        assert "--prometheus-latency-offset=30s" in cmd and "--prometheus-url=http://prometheus:9090" in cmd
        stores |= {v["source"] for v in svcs[name]["volumes"] if v["type"] == "volume"}
    assert shards == {"--shard=0/2", "--shard=1/2"} and len(stores) == 2, "each shard its own store"
    scrape = load_yaml(ROOT / "victoriametrics" / "scrape.yml")
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "rigwatch-detector")
    assert job["honor_labels"] is True
    assert sorted(job["static_configs"][0]["targets"]) == ["detector-0:9843", "detector-1:9843"]
    vmalert = svcs["vmalert"]["command"]
    assert "-rule=/etc/prometheus/rules/*.yml" in vmalert and "-notifier.url=http://alertmanager:9093" in vmalert


@pytest.mark.parametrize("which", ["agent", "central"])
def test_fleet_files_keep_the_single_box_security_rules(which, agent, central):
    resolved = agent if which == "agent" else central
    for name, svc in resolved["services"].items():
        assert svc.get("cap_drop") == ["ALL"], name
        assert svc.get("cap_add", []) == INIT_ONLY.get(name, []), name
        assert "no-new-privileges:true" in (svc.get("security_opt") or []), name
        user = str(svc.get("user", ""))
        if name in INIT_ONLY:
            assert svc["restart"] == "no" and svc["network_mode"] == "none" and svc["read_only"] is True
            assert [v["source"] for v in svc["volumes"]] == ["vm-data"]
        elif name in ROOT_ALLOWED:
            assert user.split(":")[0] == "0"
        elif name not in OWN_IMAGES:
            assert user and user.split(":")[0] not in {"0", "root"}, f"{name}: runs as root ({user!r})"
        image = svc["image"]
        assert ":" in image.split("/")[-1] and not image.endswith(":latest"), f"{name}: {image} not pinned"
        for port in svc.get("ports", []):
            if name != "grafana":  # the one LAN-facing default, behind its password
                assert _host_ip(port) == "127.0.0.1", f"{name}: {port} open beyond localhost by default"
        assert not any("docker.sock" in str(v.get("source", "")) for v in svc.get("volumes", [])
                       if not name.startswith("docker-")), name


def test_vmauth_opens_to_the_lan_only_when_asked(tmp_path_factory):
    opened = _resolve(tmp_path_factory, CENTRAL, RIGWATCH_CENTRAL_LISTEN="192.168.1.10")
    (port,) = opened["services"]["vmauth"]["ports"]
    assert _host_ip(port) == "192.168.1.10" and port["published"] == "8427"


def test_every_secret_file_the_fleet_mounts_is_made_by_make_secrets(tmp_path, agent, central):
    subprocess.run(["sh", str(ROOT / "scripts" / "init-secrets.sh"), str(tmp_path / "s")], check=True,
                   capture_output=True)
    made = {p.name for p in (tmp_path / "s").iterdir()}
    mounted = {s["file"].rsplit("/", 1)[1] for r in (agent, central) for s in r["secrets"].values()}
    assert mounted <= made, mounted - made
    auth = load_yaml(tmp_path / "s" / "vmauth.yml")
    (user,) = auth["users"]
    assert user["password"] == (tmp_path / "s" / "remote_write_password").read_text().strip()
    assert {p for m in user["url_map"] for p in m["src_paths"]} == {"/api/v1/write", "/loki/api/v1/push"}
