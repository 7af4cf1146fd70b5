"""Loki, Promtail and Alloy configs, structurally: neither binary runs here. The relabel rules are
run over sample journal/Docker meta labels with a Prometheus-faithful relabel engine
(tests/test_stack_helpers.relabel) and must produce exactly the log issue's stream labels."""
from __future__ import annotations

import copy

import pytest

from tests.test_stack_helpers import ROOT, load_yaml, parse_alloy, relabel

LOKI = ROOT / "loki" / "loki.yml"
PROMTAIL = ROOT / "promtail" / "promtail.yml"
ALLOY = ROOT / "alloy" / "config.alloy"
ALLOY_WRITE = ROOT / "alloy" / "write.alloy"  # loaded with it from one directory (docker-compose.yml)
ALLOY_AGENT_WRITE = ROOT / "alloy" / "agent" / "write.alloy"  # in its place on a fleet's box

JOURNAL_LABELS = {"job", "unit", "identifier", "priority", "transport"}
DOCKER_LABELS = {"job", "container"}

# What journald hands the shipper: every field as __journal_<lower-case field name>, strings only.
SERVICE_ENTRY = {
    "__journal__systemd_unit": "ollama.service", "__journal_syslog_identifier": "ollama",
    "__journal_priority": "6", "__journal__transport": "stdout", "__journal__pid": "1234",
    "__journal__boot_id": "5b2c0f0e", "__journal__hostname": "aibox", "__journal__comm": "ollama",
}
KERNEL_ENTRY = {  # kernel lines carry no _PID or _SYSTEMD_UNIT; NVIDIA Xid messages are here
    "__journal_syslog_identifier": "kernel", "__journal_priority": "4", "__journal__transport": "kernel",
    "__journal__boot_id": "5b2c0f0e", "__journal__hostname": "aibox",
}
SSHD_ENTRY = {
    "__journal__systemd_unit": "ssh.service", "__journal_syslog_identifier": "sshd",
    "__journal_priority": "6", "__journal__transport": "syslog", "__journal__pid": "811",
}
# A container line from Docker's journald log driver.
JOURNALD_DRIVER_ENTRY = {
    "__journal_container_name": "open-webui", "__journal_container_id": "3f4e5d6c7b8a",
    "__journal_container_id_full": "3f4e5d6c7b8a" + "0" * 52, "__journal_container_tag": "3f4e5d6c7b8a",
    "__journal_syslog_identifier": "3f4e5d6c7b8a", "__journal__systemd_unit": "docker.service",
    "__journal_priority": "3", "__journal__transport": "journal", "__journal_image_name": "ghcr.io/open-webui/open-webui:main",
}
# What Docker service discovery hands the shipper for one container (one target per network/port).
DOCKER_TARGET = {
    "__address__": "172.18.0.5:8080", "__meta_docker_container_id": "3f4e5d6c7b8a" + "0" * 52,
    "__meta_docker_container_name": "/open-webui", "__meta_docker_container_network_mode": "rigwatch_default",
    "__meta_docker_container_label_com_docker_compose_service": "open-webui",
    "__meta_docker_network_name": "rigwatch_default", "__meta_docker_network_ip": "172.18.0.5",
    "__meta_docker_port_private": "8080", "__meta_docker_port_public": "3001",
}

EXPECTED_DEFAULT = {
    "service": {"job": "systemd-journal", "unit": "ollama.service", "identifier": "ollama", "priority": "6",
                "transport": "stdout"},
    "kernel": {"job": "systemd-journal", "identifier": "kernel", "priority": "4", "transport": "kernel"},
    "sshd": {"job": "systemd-journal", "unit": "ssh.service", "identifier": "sshd", "priority": "6",
             "transport": "syslog"},
    "journald_driver": None,  # shipped by Docker service discovery instead: never twice
    "docker_target": {"job": "docker", "container": "open-webui"},
}


# ------------------------------------------------------------------ Loki


def test_loki_single_binary_tsdb_v13_filesystem_retention():
    cfg = load_yaml(LOKI)
    assert cfg["auth_enabled"] is False
    assert cfg["server"]["http_listen_port"] == 3100
    schemas = cfg["schema_config"]["configs"]
    latest = schemas[-1]
    assert latest["store"] == "tsdb" and latest["schema"] == "v13" and latest["object_store"] == "filesystem"
    assert latest["index"]["period"] == "24h", "tsdb needs a 24h index period (and retention relies on it)"
    assert cfg["storage_config"]["tsdb_shipper"]["active_index_directory"]
    assert cfg["common"]["storage"]["filesystem"]["chunks_directory"]
    assert cfg["common"]["replication_factor"] == 1 and cfg["common"]["ring"]["kvstore"]["store"] == "inmemory"
    # Retention: the compactor deletes, limits_config says how old.
    assert cfg["compactor"]["retention_enabled"] is True
    assert cfg["compactor"]["delete_request_store"] == "filesystem", "Loki 3 refuses retention without it"
    assert cfg["limits_config"]["retention_period"].endswith("h")
    assert cfg["limits_config"]["allow_structured_metadata"] is True


def test_loki_unauthenticated_so_compose_binds_it_to_localhost():
    compose = load_yaml(ROOT / "docker-compose.yml")
    ports = compose["services"]["loki"]["ports"]
    assert ports and all(str(p).startswith("127.0.0.1:") for p in ports)


# ------------------------------------------------------------------ Promtail


def _promtail_jobs(cfg=None) -> dict[str, dict]:
    cfg = cfg or load_yaml(PROMTAIL)
    return {j["job_name"]: j for j in cfg["scrape_configs"]}


def test_promtail_structure():
    cfg = load_yaml(PROMTAIL)
    assert cfg["clients"][0]["url"] == "http://loki:3100/loki/api/v1/push"
    assert cfg["positions"]["filename"]
    jobs = _promtail_jobs(cfg)
    assert set(jobs) == {"journal", "docker"}
    assert jobs["journal"]["journal"]["path"] == "/var/log/journal"
    sd = jobs["docker"]["docker_sd_configs"][0]
    assert sd["host"].startswith("tcp://docker-socket-proxy:"), "the Docker API only through the read-only proxy"


def _promtail_streams(jobs) -> dict[str, dict | None]:
    j, d = jobs["journal"]["relabel_configs"], jobs.get("docker", {}).get("relabel_configs")
    static = jobs["journal"]["journal"].get("labels", {})
    out = {name: relabel(j, {**static, **entry}) for name, entry in [
        ("service", SERVICE_ENTRY), ("kernel", KERNEL_ENTRY), ("sshd", SSHD_ENTRY),
        ("journald_driver", JOURNALD_DRIVER_ENTRY)]}
    if d is not None:
        out["docker_target"] = relabel(d, DOCKER_TARGET)
    return out


def test_promtail_produces_exactly_the_contract_labels():
    assert _promtail_streams(_promtail_jobs()) == EXPECTED_DEFAULT


def test_promtail_journald_driver_alternative_as_documented():
    """Removing the (*) drop rule and the docker job, as the header says, ships container lines
    from the journal as {job="docker", container} — the same stream, still exactly once."""
    jobs = copy.deepcopy(_promtail_jobs())
    rules = jobs["journal"]["relabel_configs"]
    drop = [r for r in rules if r.get("action") == "drop"]
    assert len(drop) == 1 and drop[0]["source_labels"] == ["__journal_container_name"]
    rules.remove(drop[0])
    del jobs["docker"]
    streams = _promtail_streams(jobs)
    assert streams["journald_driver"] == {"job": "docker", "container": "open-webui"}
    assert {k: streams[k] for k in ("service", "kernel", "sshd")} == {
        k: EXPECTED_DEFAULT[k] for k in ("service", "kernel", "sshd")}


def test_promtail_label_sets_are_within_the_contract():
    for name, labels in _promtail_streams(_promtail_jobs()).items():
        if labels is None:
            continue
        allowed = DOCKER_LABELS if labels["job"] == "docker" else JOURNAL_LABELS
        assert set(labels) <= allowed, (name, labels)
        assert all(v != "" for v in labels.values()), "never an empty label value"


# ------------------------------------------------------------------ Alloy


@pytest.fixture(scope="module")
def alloy():
    return {(b.name, b.label): b for b in parse_alloy(ALLOY.read_text() + "\n" + ALLOY_WRITE.read_text())}


def _rules(block) -> list[dict]:
    return [dict(b.attrs) for b in block.blocks if b.name == "rule"]


def test_alloy_pipeline_is_wired(alloy):
    assert set(alloy) == {("loki.relabel", "journal"), ("loki.source.journal", "journal"),
                          ("discovery.docker", "containers"), ("discovery.relabel", "containers"),
                          ("loki.source.docker", "containers"), ("loki.write", "default")}
    journal = alloy[("loki.source.journal", "journal")].attrs
    assert journal["path"] == "/var/log/journal"
    assert journal["relabel_rules"] == "loki.relabel.journal.rules"
    assert journal["forward_to"] == "[loki.write.default.receiver]"
    assert alloy[("discovery.relabel", "containers")].attrs["targets"] == "discovery.docker.containers.targets"
    src = alloy[("loki.source.docker", "containers")].attrs
    assert src["targets"] == "discovery.relabel.containers.output"
    assert src["forward_to"] == "[loki.write.default.receiver]"
    for key in (("discovery.docker", "containers"), ("loki.source.docker", "containers")):
        assert alloy[key].attrs["host"].startswith("tcp://docker-socket-proxy:"), key
    endpoint = alloy[("loki.write", "default")].blocks[0]
    assert endpoint.name == "endpoint" and endpoint.attrs["url"] == "http://loki:3100/loki/api/v1/push"


def _alloy_streams(alloy, journal_rules=None, with_docker=True):
    j = journal_rules if journal_rules is not None else _rules(alloy[("loki.relabel", "journal")])
    out = {name: relabel(j, entry) for name, entry in [
        ("service", SERVICE_ENTRY), ("kernel", KERNEL_ENTRY), ("sshd", SSHD_ENTRY),
        ("journald_driver", JOURNALD_DRIVER_ENTRY)]}
    if with_docker:
        out["docker_target"] = relabel(_rules(alloy[("discovery.relabel", "containers")]), DOCKER_TARGET)
    return out


def test_alloy_produces_exactly_the_contract_labels(alloy):
    assert _alloy_streams(alloy) == EXPECTED_DEFAULT


def test_alloy_journald_driver_alternative_as_documented(alloy):
    rules = _rules(alloy[("loki.relabel", "journal")])
    drop = [r for r in rules if r.get("action") == "drop"]
    assert len(drop) == 1 and drop[0]["source_labels"] == ["__journal_container_name"]
    streams = _alloy_streams(alloy, [r for r in rules if r is not drop[0]], with_docker=False)
    assert streams["journald_driver"] == {"job": "docker", "container": "open-webui"}


def test_alloy_and_promtail_are_equivalent(alloy):
    """Same rules, same order: whichever shipper a user runs, the streams are identical."""
    jobs = _promtail_jobs()
    assert _rules(alloy[("loki.relabel", "journal")]) == jobs["journal"]["relabel_configs"]
    assert _rules(alloy[("discovery.relabel", "containers")]) == jobs["docker"]["relabel_configs"]


def test_compose_runs_alloy_with_the_journal_and_the_proxy():
    svc = load_yaml(ROOT / "docker-compose.yml")["services"]
    assert "alloy" in svc and "promtail" not in svc, "one shipper only: two would ship every line twice"
    vols = svc["alloy"]["volumes"]
    assert "./alloy/config.alloy:/etc/alloy/config.alloy:ro" in vols
    assert "./alloy/write.alloy:/etc/alloy/write.alloy:ro" in vols
    assert "/var/log/journal:/var/log/journal:ro" in vols
    assert not any("docker.sock" in v for v in vols), "Alloy reaches Docker only through the proxy"
    assert "/etc/alloy" in svc["alloy"]["command"]  # the directory: both files, as one configuration


def test_agent_writes_the_same_pipeline_to_the_central_loki_with_the_box_label():
    """A fleet's box: the same pipeline, its writer swapped for the central one (basic auth from the
    secret file, through vmauth), every stream labelled with the box."""
    pipeline = parse_alloy(ALLOY.read_text())
    assert ("loki.write", "default") not in {(b.name, b.label) for b in pipeline}, "the writer lives beside it"
    (writer,) = parse_alloy(ALLOY_AGENT_WRITE.read_text())
    assert (writer.name, writer.label) == ("loki.write", "default")
    (endpoint,) = writer.blocks
    assert endpoint.attrs["url"] == "http://rigwatch-central:8427/loki/api/v1/push"
    (auth,) = endpoint.blocks
    assert auth.name == "basic_auth" and auth.attrs["password_file"] == "/run/secrets/remote_write_password"
    assert "password" not in auth.attrs, "a password written into the file would be committed"
    assert 'sys.env("RIGWATCH_BOX")' in writer.attrs["external_labels"]
