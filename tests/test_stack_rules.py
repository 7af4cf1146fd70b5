"""Prometheus rules and Alertmanager config: checked by the real promtool/amtool/Alertmanager, plus
alert hygiene read from the files (names, for:, severity, annotations, runbook anchors)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import requests
import yaml

from harness.processes import free_port, require_binary
from harness.servers import AlertmanagerServer
from tests.test_stack_helpers import ROOT, RULE_FILES, RULE_TEST_FILES, alert_rules, load_yaml, rules

RUNBOOK = ROOT / "RUNBOOK.md"
AM_CONFIG = ROOT / "alertmanager" / "alertmanager.yml"
AM_TEMPLATES = ROOT / "alertmanager" / "templates"
WEBHOOK_PLACEHOLDER = "http://rigwatch-webhook.invalid/alerts"


def run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)


# ------------------------------------------------------------------ promtool, for real


@pytest.mark.integration
def test_promtool_check_config_resolves_rule_files():
    out = run([require_binary("promtool"), "check", "config", str(ROOT / "prometheus" / "prometheus.yml")])
    assert out.returncode == 0, out.stdout + out.stderr
    # The glob in rule_files must find every rule file (an empty glob is not an error for promtool).
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in out.stdout, out.stdout


# A commented-out scrape job: "  # - job_name: ..." and its "  #   ..." lines (prose comments never
# start with "#   ").
_COMMENTED_JOB_LINE = re.compile(r"^(\s*)# ((?:- job_name:|  ).*)$")


@pytest.mark.integration
def test_optional_inference_scrape_jobs_work_once_uncommented(tmp_path):
    """vLLM and llama.cpp are scraped directly by Prometheus; their jobs ship commented out and must
    be valid config the moment a user uncomments them."""
    text = (ROOT / "prometheus" / "prometheus.yml").read_text()
    uncommented = "\n".join(_COMMENTED_JOB_LINE.sub(r"\1\2", line) for line in text.splitlines()) + "\n"
    assert uncommented != text
    jobs = {j["job_name"]: j for j in yaml.safe_load(uncommented)["scrape_configs"]}
    assert jobs["vllm"]["static_configs"][0]["targets"] == ["vllm:8000"]
    assert jobs["llamacpp"]["static_configs"][0]["targets"] == ["llamacpp:8080"]
    assert "vllm" not in {j["job_name"] for j in load_yaml(ROOT / "prometheus" / "prometheus.yml")["scrape_configs"]}
    (tmp_path / "prometheus.yml").write_text(uncommented)
    (tmp_path / "rules").symlink_to(ROOT / "prometheus" / "rules")
    out = run([require_binary("promtool"), "check", "config", str(tmp_path / "prometheus.yml")])
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.integration
def test_promtool_check_rules():
    out = run([require_binary("promtool"), "check", "rules", *map(str, RULE_FILES)])
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.integration
@pytest.mark.parametrize("broken", [False, True])
def test_vmalert_accepts_the_committed_rules(tmp_path, broken):
    """A fleet's rules run in vmalert against VictoriaMetrics: it parses every expression and template
    of the committed files (and refuses a broken expression, so the check can fail)."""
    files = list(map(str, RULE_FILES))
    if broken:
        bad = tmp_path / "bad.yml"
        bad.write_text("groups:\n- name: x\n  rules:\n  - alert: X\n    expr: up ==\n")
        files.append(str(bad))
    out = run([require_binary("vmalert"), "-dryRun", *(f"-rule={f}" for f in files)])
    assert (out.returncode != 0) == broken, out.stdout[-2000:] + out.stderr[-2000:]


@pytest.mark.integration
def test_promtool_test_rules():
    assert RULE_TEST_FILES, "no promtool unit tests under prometheus/tests"
    out = run([require_binary("promtool"), "test", "rules", *map(str, RULE_TEST_FILES)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAILED" not in out.stdout


# ------------------------------------------------------------------ unit-test coverage of alerts


def _alert_cases() -> dict[str, dict[str, int]]:
    """alertname -> {"firing": n, "not_firing": n} over every promtool test file."""
    cases: dict[str, dict[str, int]] = {}
    for path in RULE_TEST_FILES:
        for test in load_yaml(path).get("tests", []):
            for case in test.get("alert_rule_test", []) or []:
                c = cases.setdefault(case["alertname"], {"firing": 0, "not_firing": 0})
                c["firing" if case.get("exp_alerts") else "not_firing"] += 1
    return cases


ALWAYS_FIRING = {"Watchdog"}  # by design: it has no not-firing case, only firing ones at several times


def test_every_alert_has_firing_and_not_firing_cases():
    cases = _alert_cases()
    missing = [(a.name, cases.get(a.name)) for a in alert_rules()
               if not cases.get(a.name) or not cases[a.name]["firing"]
               or not cases[a.name]["not_firing"] and a.name not in ALWAYS_FIRING]
    for name in ALWAYS_FIRING:
        assert cases[name]["firing"] >= 2 and not cases[name]["not_firing"], name
    assert not missing, f"alerts lacking a firing or a not-firing promtool case: {missing}"
    unknown = set(cases) - {a.name for a in alert_rules()}
    assert not unknown, f"promtool cases for alerts that do not exist: {unknown}"


def test_every_recording_rule_is_unit_tested():
    tested = set()
    for path in RULE_TEST_FILES:
        for test in load_yaml(path).get("tests", []):
            for case in test.get("promql_expr_test", []) or []:
                tested.add(case["expr"].strip())
    missing = [r.name for r in rules() if r.kind == "record" and r.name not in tested]
    assert not missing, f"recording rules without a promql_expr_test: {missing}"


# ------------------------------------------------------------------ hygiene


def github_anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower-case, punctuation dropped, spaces -> '-'."""
    anchors = set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_alert_hygiene():
    anchors = github_anchors(RUNBOOK.read_text())
    problems = []
    names = [a.name for a in alert_rules()]
    for a in alert_rules():
        r = a.raw
        if not re.fullmatch(r"(?:[A-Z][a-z0-9]+)+", a.name):
            problems.append(f"{a.name}: not CamelCase")
        if "for" not in r:
            problems.append(f"{a.name}: no for:")
        if r.get("labels", {}).get("severity") not in {"info", "warning", "critical"}:
            problems.append(f"{a.name}: severity must be info, warning or critical")
        ann = r.get("annotations", {})
        for key in ("summary", "description", "runbook_url", "dashboard", "explanation"):
            if not ann.get(key):
                problems.append(f"{a.name}: no {key} annotation")
        if "{{" in ann.get("summary", ""):
            problems.append(f"{a.name}: summary must be static (it is the grouping-friendly title)")
        if "{{" not in ann.get("description", ""):
            problems.append(f"{a.name}: description must be templated (actual values)")
        url = ann.get("runbook_url", "")
        if not url.startswith("RUNBOOK.md#") or url.split("#", 1)[1] not in anchors:
            problems.append(f"{a.name}: runbook_url {url!r} has no matching section in RUNBOOK.md")
    assert len(names) == len(set(names)), "duplicate alert names"
    assert not problems, "\n".join(problems)


def test_hard_failures_do_not_wait():
    """for: 0m where waiting only delays a hard failure (Xid, a lost GPU)."""
    by_name = {a.name: a.raw for a in alert_rules()}
    for name in ("GpuXidError", "GpuXidErrorCritical", "GpuLost"):
        assert by_name[name]["for"] == "0m", name


def test_threshold_table_matches_rules():
    """The header of alerts.yml is the one place thresholds are listed: every alert appears there
    with its severity and its `for:` duration, and nothing else does."""
    text = (ROOT / "prometheus" / "rules" / "alerts.yml").read_text()
    table = {}
    for m in re.finditer(r"^#\s+([A-Z][A-Za-z]+) \.+ (.+?)\s+(info|warning|critical)\s*$", text, re.M):
        table[m.group(1)] = (m.group(2), m.group(3))
    alerts = {a.name: a.raw for a in alert_rules()}
    assert set(table) == set(alerts)
    for name, (text_, severity) in table.items():
        assert alerts[name]["labels"]["severity"] == severity, name
        assert f"for {alerts[name]['for']}" in text_, f"{name}: header says {text_!r}, rule has for: {alerts[name]['for']}"


def test_anomaly_alert_families_cover_every_detector():
    """One rule family per score metric, no per-detector rules: a new detector is alerted on
    without editing the rules."""
    for metric in ("rigwatch_anomaly_score", "rigwatch_log_anomaly_score"):
        using = [a for a in alert_rules() if metric in a.expr]
        assert len(using) == 2, (metric, [a.name for a in using])
        for a in using:
            assert "detector=" not in a.expr, f"{a.name} singles out a detector"
        assert {a.raw["labels"]["severity"] for a in using} == {"warning", "critical"}


# ------------------------------------------------------------------ Alertmanager


def _am_config_for(templates_dir: Path, webhook_url: str | None = None) -> str:
    text = AM_CONFIG.read_text().replace("/etc/alertmanager/templates/", f"{templates_dir}/")
    if webhook_url:
        text = text.replace(WEBHOOK_PLACEHOLDER, webhook_url)
    return text


def test_alertmanager_config_has_no_committed_secret_and_a_placeholder():
    text = AM_CONFIG.read_text()
    cfg = load_yaml(AM_CONFIG)
    hooks = [w["url"] for r in cfg["receivers"] for w in r.get("webhook_configs", [])]
    assert hooks == [WEBHOOK_PLACEHOLDER], "the only active receiver is the placeholder webhook"
    active = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for secret_key in ("auth_password:", "api_url:", "bot_token:", "webhook_url:", "credentials:"):
        assert secret_key not in active, f"{secret_key} set in the committed config"
    # The ready examples are there, commented.
    for channel in ("email_configs", "discord_configs", "slack_configs", "telegram_configs", "ntfy"):
        assert channel in text, channel
    render = (ROOT / "alertmanager" / "render-config.sh").read_text()
    assert WEBHOOK_PLACEHOLDER in render, "the compose entrypoint must replace the same placeholder"


def test_alertmanager_routing_and_inhibition_shape():
    cfg = load_yaml(AM_CONFIG)
    route = cfg["route"]
    assert route["receiver"] == "default-webhook"
    assert {"alertname", "instance"} <= set(route["group_by"])
    severities = {m for r in route["routes"] for m in r["matchers"]}
    assert {'severity="critical"', 'severity="warning"', 'severity="info"'} <= severities
    inhibit = cfg["inhibit_rules"]
    restart = [r for r in inhibit if r["source_matchers"] == ['alertname="BoxRestarted"']]
    assert restart and restart[0]["equal"] == ["box", "instance"], "a reboot holds back its box's alerts"
    assert restart[0]["target_matchers"] == ['severity=~"warning|critical"']
    gpu = [r for r in inhibit if "uuid" in r.get("equal", []) and 'severity="critical"' in r["source_matchers"]]
    ctr = [r for r in inhibit if "container" in r.get("equal", []) and 'severity="critical"' in r["source_matchers"]]
    assert gpu and ctr, "critical must inhibit warning for the same GPU (uuid) and container"


@pytest.mark.integration
def test_amtool_check_config(tmp_path):
    cfg = tmp_path / "alertmanager.yml"
    cfg.write_text(_am_config_for(AM_TEMPLATES))
    out = run([require_binary("amtool"), "check-config", str(cfg)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 templates" in out.stdout, "the notification templates must be found and parse"


@pytest.mark.integration
def test_amtool_renders_every_template():
    text = next(AM_TEMPLATES.glob("*.tmpl")).read_text()
    names = re.findall(r'{{\s*define\s+"([^"]+)"', text)
    assert {"rigwatch.title", "rigwatch.text", "rigwatch.grafana_url"} <= set(names)
    for name in names:
        # Per-alert templates take one alert: call them the way the notification templates do.
        call = f'{{{{ template "{name}" . }}}}'
        if ".alert." in name:
            call = f"{{{{ range .Alerts }}}}{call}{{{{ end }}}}"
        out = run([require_binary("amtool"), "template", "render", f"--template.glob={AM_TEMPLATES}/*.tmpl",
                   f"--template.text={call}"])
        assert out.returncode == 0, (name, out.stderr)


class _Webhook:
    """A webhook receiver on 127.0.0.1 recording Alertmanager's JSON notifications."""

    def __init__(self):
        self.received: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = HTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _alert(name, severity, **labels):
    return {"labels": {"alertname": name, "severity": severity, "instance": "aibox:9842", **labels},
            "annotations": {"summary": name, "description": f"{name} test",
                            "dashboard": "/d/rigwatch-aibox/aibox-overview", "runbook_url": f"RUNBOOK.md#{name.lower()}"}}


@pytest.mark.integration
def test_alertmanager_routes_to_webhook_and_inhibits_warning_for_same_gpu(tmp_path):
    """The committed config in a real Alertmanager: a critical GPU alert is delivered to the webhook
    with its annotations; the warning about the same GPU (uuid) is inhibited; a warning about the
    other GPU is not. On another box that just rebooted (BoxRestarted, info), its critical alert is
    held back and the info alert is not. A fleet, in the same Alertmanager: two boxes with compose's
    same instance name, box-a rebooting holds back box-a's critical alert, not box-b's, which reaches
    the webhook with its box; the Watchdog reaches its own receiver only (none by default), never the
    people's webhook."""
    require_binary("prometheus-alertmanager")
    shutil.copytree(AM_TEMPLATES, tmp_path / "templates")
    with _Webhook() as hook, AlertmanagerServer(tmp_path / "am", _am_config_for(tmp_path / "templates", hook.url)) as am:
        alerts = [
            _alert("GpuAtSlowdownTemperature", "critical", uuid="GPU-3090", gpu="0"),
            _alert("GpuTemperatureNearSlowdown", "warning", uuid="GPU-3090", gpu="0"),
            _alert("GpuTemperatureNearSlowdown", "warning", uuid="GPU-3060", gpu="1"),
            dict(_alert("BoxRestarted", "info"), labels={"alertname": "BoxRestarted", "severity": "info",
                                                         "instance": "studio:9842"}),
            dict(_alert("GpuMissing", "critical"), labels={"alertname": "GpuMissing", "severity": "critical",
                                                           "instance": "studio:9842", "uuid": "GPU-4090"}),
        ]
        fleet = {"instance": "rigwatch-exporter:9842"}
        alerts += [
            {**_alert("BoxRestarted", "info"), "labels": {"alertname": "BoxRestarted", "severity": "info",
                                                          "box": "box-a", **fleet}},
            {**_alert("GpuLost", "critical"), "labels": {"alertname": "GpuLost", "severity": "critical",
                                                         "box": "box-a", "uuid": "GPU-a", **fleet}},
            {**_alert("GpuLost", "critical"), "labels": {"alertname": "GpuLost", "severity": "critical",
                                                         "box": "box-b", "uuid": "GPU-b", **fleet}},
            {**_alert("Watchdog", "info"), "labels": {"alertname": "Watchdog", "severity": "info"}},
        ]
        requests.post(am.url + "/api/v2/alerts", json=alerts, timeout=5).raise_for_status()

        def sent():
            return [(a["labels"]["alertname"], a["labels"].get("box")) for n in hook.received for a in n["alerts"]]
        deadline = time.monotonic() + 40  # critical: group_wait 10s
        while time.monotonic() < deadline and not {("GpuAtSlowdownTemperature", None), ("GpuLost", "box-b")} <= set(sent()):
            time.sleep(0.2)
        assert hook.received, f"no notification within 40s; alertmanager log:\n{am.tail()}"
        (first,) = [n for n in hook.received if n["alerts"][0]["labels"]["alertname"] == "GpuAtSlowdownTemperature"]
        assert first["status"] == "firing"
        assert [a["labels"]["alertname"] for a in first["alerts"]] == ["GpuAtSlowdownTemperature"]
        assert first["alerts"][0]["annotations"]["runbook_url"] == "RUNBOOK.md#gpuatslowdowntemperature"
        assert ("GpuLost", "box-b") in sent() and ("GpuLost", "box-a") not in sent()
        assert not any(name == "Watchdog" for name, _ in sent())  # group_wait 0s: it would be there by now

        state = {(a["labels"]["alertname"], a["labels"].get("uuid")): a["status"]
                 for a in requests.get(am.url + "/api/v2/alerts", timeout=5).json()}
        assert state[("GpuTemperatureNearSlowdown", "GPU-3090")]["state"] == "suppressed"
        assert state[("GpuTemperatureNearSlowdown", "GPU-3090")]["inhibitedBy"]
        assert state[("GpuTemperatureNearSlowdown", "GPU-3060")]["state"] == "active"
        assert state[("GpuAtSlowdownTemperature", "GPU-3090")]["state"] == "active"
        assert state[("GpuMissing", "GPU-4090")]["state"] == "suppressed"
        assert state[("BoxRestarted", None)]["state"] == "active"
        by_box = {(a["labels"]["alertname"], a["labels"].get("box")): a["status"]["state"]
                  for a in requests.get(am.url + "/api/v2/alerts", timeout=5).json()}
        assert by_box[("GpuLost", "box-a")] == "suppressed" and by_box[("GpuLost", "box-b")] == "active"
        assert by_box[("Watchdog", None)] == "active"
