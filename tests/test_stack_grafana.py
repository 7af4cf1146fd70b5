"""Grafana provisioning and dashboard JSON, structurally (Grafana does not run here). Whether the
PromQL in them parses and returns data is tested against a real Prometheus in test_stack_promql.py."""
from __future__ import annotations

import re

import pytest

from tests.test_stack_helpers import (
    DASHBOARD_FILES,
    DATASOURCE_FILES,
    GRAFANA_BUILTINS,
    ROOT,
    alert_rules,
    all_panels,
    dashboard_queries,
    dashboards,
    grafana_variables_used,
    load_yaml,
)

EXPECTED_DASHBOARDS = {"aibox-overview.json", "logs.json", "detector-health.json", "model-health.json"}
LOKI_STREAM_LABELS = {"job", "unit", "identifier", "priority", "transport", "container"}


def provisioned_datasources() -> dict[str, dict]:
    out = {}
    for path in DATASOURCE_FILES:
        for ds in load_yaml(path)["datasources"]:
            assert ds["uid"] not in out, f"duplicate datasource uid {ds['uid']}"
            out[ds["uid"]] = ds
    return out


def test_datasources_have_fixed_uids_and_compose_urls():
    ds = provisioned_datasources()
    by_type = {d["type"]: d for d in ds.values()}
    assert set(by_type) == {"prometheus", "loki", "alertmanager"}
    assert by_type["prometheus"]["url"] == "http://prometheus:9090"
    assert by_type["loki"]["url"] == "http://loki:3100"
    assert by_type["alertmanager"]["url"] == "http://alertmanager:9093"
    assert by_type["alertmanager"]["jsonData"]["implementation"] == "prometheus"
    assert [d for d in ds.values() if d.get("isDefault")] == [by_type["prometheus"]]
    compose = load_yaml(ROOT / "docker-compose.yml")["services"]
    for host in ("prometheus", "loki", "alertmanager"):
        assert host in compose


def test_dashboard_provider_path_matches_compose_mount():
    provider = load_yaml(ROOT / "grafana" / "provisioning" / "dashboards" / "rigwatch.yml")["providers"][0]
    path = provider["options"]["path"]
    vols = load_yaml(ROOT / "docker-compose.yml")["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{path}:ro" in vols


def test_expected_dashboards_exist():
    assert {p.name for p in DASHBOARD_FILES} == EXPECTED_DASHBOARDS


@pytest.mark.parametrize("fname", sorted(EXPECTED_DASHBOARDS))
def test_dashboard_structure(fname):
    dash = dashboards()[fname]
    for key in ("uid", "title", "schemaVersion", "panels", "templating", "annotations", "time"):
        assert key in dash, key
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dash["uid"])
    panels = all_panels(dash)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for p in panels:
        assert p.get("type") and p.get("title"), p
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, (p["title"], g)
        if p["type"] != "row":
            assert p.get("targets"), f"{p['title']}: no queries"
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), f"{p['title']}: duplicate refIds"


def test_dashboard_uids_unique_and_alert_links_resolve():
    uids = {d["uid"] for d in dashboards().values()}
    assert len(uids) == len(dashboards())
    for a in alert_rules():
        m = re.match(r"^/d/([^/?]+)/", a.raw["annotations"]["dashboard"])
        assert m and m.group(1) in uids, f"{a.name}: dashboard link {a.raw['annotations']['dashboard']}"


def test_every_datasource_uid_is_provisioned():
    ds = provisioned_datasources()
    for fname, dash in dashboards().items():
        refs = []
        for p in all_panels(dash):
            if "datasource" in p:
                refs.append((p["title"], p["datasource"]))
            refs += [(p["title"], t["datasource"]) for t in p.get("targets", []) if "datasource" in t]
        refs += [(f"${v['name']}", v["datasource"]) for v in dash["templating"]["list"] if "datasource" in v]
        refs += [(a["name"], a["datasource"]) for a in dash["annotations"]["list"]]
        for where, ref in refs:
            assert isinstance(ref, dict), f"{fname}: {where}: datasource must be {{type, uid}}"
            assert ref["uid"] in ds, f"{fname}: {where}: unknown datasource uid {ref['uid']}"
            assert ref["type"] == ds[ref["uid"]]["type"], f"{fname}: {where}: type mismatch"


def test_every_variable_referenced_is_defined():
    for fname, dash in dashboards().items():
        defined = {v["name"] for v in dash["templating"]["list"]}
        texts = [q.expr for q in dashboard_queries() if q.origin.startswith(fname)]
        texts += [p["title"] for p in all_panels(dash)]
        for text in texts:
            undefined = grafana_variables_used(text) - defined - set(GRAFANA_BUILTINS)
            assert not undefined, f"{fname}: {text!r} uses undefined variables {undefined}"
        for p in all_panels(dash):
            if p.get("repeat"):
                assert p["repeat"] in defined, f"{fname}: {p['title']} repeats over undefined ${p['repeat']}"
                var = next(v for v in dash["templating"]["list"] if v["name"] == p["repeat"])
                assert var["multi"] or var["includeAll"], f"{fname}: repeat over single-valued ${var['name']}"


def test_overview_draws_bands_anomalies_and_alerts():
    dash = dashboards()["aibox-overview.json"]
    band_panels = []
    for p in all_panels(dash):
        legends = {t.get("legendFormat") for t in p.get("targets", [])}
        if {"upper", "lower", "actual", "anomalous"} <= legends:
            fill = [o for o in p["fieldConfig"]["overrides"]
                    if o["matcher"] == {"id": "byName", "options": "upper"}
                    and {"id": "custom.fillBelowTo", "value": "lower"} in o["properties"]]
            assert fill, f"{p['title']}: upper must fill down to lower (the expected band)"
            points = [o for o in p["fieldConfig"]["overrides"] if o["matcher"]["options"] == "anomalous"]
            assert {"id": "custom.drawStyle", "value": "points"} in points[0]["properties"]
            exprs = {t["legendFormat"]: t["expr"] for t in p["targets"]}
            assert "rigwatch_anomaly_upper" in exprs["upper"] and "rigwatch_anomaly_lower" in exprs["lower"]
            assert "rigwatch_anomaly_score" in exprs["anomalous"] and "> 1" in exprs["anomalous"]
            band_panels.append(p["title"])
    for signal in ("Temperature", "Power", "Utilisation", "VRAM used", "SM clock", "GPU memory of $container"):
        assert signal in band_panels, f"no band panel for {signal}"
    titles = " ".join(p["title"] for p in all_panels(dash))
    for needed in ("Clock-event", "Xid", "restarts", "GPU memory per workload"):
        assert needed in titles
    ann = [a["expr"] for a in dash["annotations"]["list"]]
    assert any(a.startswith("ALERTS{") for a in ann), "alert annotations on the time axis"
    assert {v["name"] for v in dash["templating"]["list"]} >= {"instance", "gpu"}


def test_logs_dashboard_queries_only_contract_stream_labels():
    dash = dashboards()["logs.json"]
    loki = [q for q in dashboard_queries() if q.origin.startswith("logs.json") and q.datasource_uid == "rigwatch-loki"]
    assert loki, "the logs dashboard has live log panels"
    for q in loki:
        selector = re.match(r"^\s*\{([^}]*)\}", q.expr)
        assert selector, q.expr
        labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!=|!~|=)", selector.group(1)))
        assert labels <= LOKI_STREAM_LABELS, (q.origin, labels)
    exprs = " ".join(q.expr for q in dashboard_queries() if q.origin.startswith("logs.json"))
    for metric in ("rigwatch_log_anomaly_score", "rigwatch_log_template_rate", "rigwatch_log_novel_templates_total"):
        assert metric in exprs
    # The live panels follow the streams scored anomalous.
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert "> 1" in variables["unit"]["query"]["query"] and "> 1" in variables["container"]["query"]["query"]
