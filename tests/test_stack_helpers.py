"""Helpers shared by the tests/test_stack_*.py modules (config loaders, PromQL extraction from
rules and dashboards, a Prometheus-faithful relabel engine, a small Alloy-syntax reader), with
literal input/expected tests of the helpers themselves: the stack tests are only as good as these.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULE_FILES = sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
RULE_TEST_FILES = sorted((ROOT / "prometheus" / "tests").glob("*.yml"))
DASHBOARD_FILES = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
DATASOURCE_FILES = sorted((ROOT / "grafana" / "provisioning" / "datasources").glob("*.yml"))

# Grafana's built-in variables and the values the tests substitute for them (an interval that
# covers several 60 s samples, a range that covers the simulated day).
GRAFANA_BUILTINS = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1d",
    "__range_s": "86400",
    "__interval_ms": "60000",
}


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


# ------------------------------------------------------------------ rules


@dataclass(frozen=True)
class Rule:
    file: str
    group: str
    name: str  # alert or record name
    kind: str  # "alert" | "record"
    expr: str
    raw: dict


def rules() -> list[Rule]:
    out = []
    for path in RULE_FILES:
        for group in load_yaml(path)["groups"]:
            for r in group["rules"]:
                kind = "alert" if "alert" in r else "record"
                out.append(Rule(path.name, group["name"], r[kind], kind, r["expr"], r))
    return out


def alert_rules() -> list[Rule]:
    return [r for r in rules() if r.kind == "alert"]


# ------------------------------------------------------------------ dashboards


def dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in DASHBOARD_FILES}


def all_panels(dash: dict) -> list[dict]:
    """Every panel, rows' nested panels included."""
    out = []
    for p in dash.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


@dataclass(frozen=True)
class DashQuery:
    origin: str  # "<file>: <panel title> [refId]" etc.
    expr: str  # as written, Grafana variables unsubstituted
    kind: str  # "panel" | "variable" | "annotation"
    datasource_uid: str


_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<sel>.*),\s*(?P<label>[a-zA-Z_][a-zA-Z0-9_]*)\)\s*$", re.S)
_QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.*)\)\s*$", re.S)


def variable_promql(query: str) -> str | None:
    """The PromQL inside a Grafana Prometheus variable query (label_values(selector, label),
    query_result(expr), or a bare expression); None for label_values(label) with no selector."""
    m = _LABEL_VALUES.match(query)
    if m:
        return m.group("sel")
    m = _QUERY_RESULT.match(query)
    if m:
        return m.group("expr")
    if re.match(r"^\s*(label_names|label_values|metrics)\(", query):
        return None
    return query


def dashboard_queries() -> list[DashQuery]:
    out = []
    for fname, dash in dashboards().items():
        for panel in all_panels(dash):
            for t in panel.get("targets", []):
                uid = (t.get("datasource") or panel.get("datasource") or {}).get("uid", "")
                out.append(DashQuery(f"{fname}: {panel.get('title')} [{t.get('refId')}]", t["expr"], "panel", uid))
        for var in dash.get("templating", {}).get("list", []):
            if var.get("type") != "query":
                continue
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            expr = variable_promql(q)
            if expr is not None:
                out.append(DashQuery(f"{fname}: variable ${var['name']}", expr, "variable",
                                     var["datasource"]["uid"]))
        for ann in dash.get("annotations", {}).get("list", []):
            if "expr" in ann:
                out.append(DashQuery(f"{fname}: annotation {ann['name']}", ann["expr"], "annotation",
                                     ann["datasource"]["uid"]))
    return out


_VAR = re.compile(r"\$(?:\{(?P<braced>[a-zA-Z0-9_]+)(?::[a-z]+)?\}|(?P<plain>[a-zA-Z_][a-zA-Z0-9_]*))")


def grafana_variables_used(expr: str) -> set[str]:
    return {m.group("braced") or m.group("plain") for m in _VAR.finditer(expr)}


def substitute_grafana_vars(expr: str, user_value: str = ".*") -> str:
    """Replace Grafana variables the way Grafana would for 'All' (a regex, used with =~) and the
    built-in intervals with fixed durations."""
    def repl(m: re.Match) -> str:
        name = m.group("braced") or m.group("plain")
        return GRAFANA_BUILTINS.get(name, user_value)
    return _VAR.sub(repl, expr)


# ------------------------------------------------------------------ PromQL metric names

_PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
    "unless", "inf", "nan", "atan2", "start", "end",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![A-Za-z0-9_:.])([A-Za-z_:][A-Za-z0-9_:]*)(?![A-Za-z0-9_:])(\s*\()?")
_NUMBER_UNIT = re.compile(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?(?:ms|[smhdwy])?\b", re.I)


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (function names, keywords, label names and grouping
    labels excluded). Good enough for the project's own expressions; tested below."""
    s = _STRING.sub('""', expr)
    names = set()
    # {__name__="x"} selectors
    for m in re.finditer(r'__name__\s*=\s*"((?:[^"\\]|\\.)*)"', expr):
        names.add(m.group(1))
    s = _BRACES.sub(" ", s)
    s = _BRACKETS.sub(" ", s)
    s = _GROUPING.sub(" ", s)
    s = _NUMBER_UNIT.sub(" ", s)
    for m in _IDENT.finditer(s):
        ident, call = m.group(1), m.group(2)
        if call or ident.lower() in _PROMQL_KEYWORDS:
            continue
        names.add(ident)
    return names


@pytest.mark.parametrize("expr,expected", [
    ("up", {"up"}),
    ('gpu_temperature_celsius{gpu=~"0|1"} > 80', {"gpu_temperature_celsius"}),
    ("rate(gpu_energy_consumption_joules_total[5m])", {"gpu_energy_consumption_joules_total"}),
    ("sum without (reason) (gpu_clocks_event_reason_active{reason!=\"gpu_idle\"})",
     {"gpu_clocks_event_reason_active"}),
    ("max by (instance, job, uuid, name) (max_over_time(gpu_up[1h])) unless on (instance, job, uuid) gpu_up "
     "unless on (instance, job) (up == 0)", {"gpu_up", "up"}),
    ("a / on(uuid) group_left(name) b offset 10m", {"a", "b"}),
    ("time() - rigwatch_detector_last_success_timestamp_seconds{task=\"score\"} > 600",
     {"rigwatch_detector_last_success_timestamp_seconds"}),
    ("instance_gpu:gpu_memory_used:ratio > 0.9", {"instance_gpu:gpu_memory_used:ratio"}),
    ('{__name__="gpu_up", gpu="0"}', {"gpu_up"}),
    ("histogram_quantile(0.9, sum by (le) (rate(x_bucket[5m])))", {"x_bucket"}),
    ('label_replace(foo, "dst", "$1", "src", "(.*)")', {"foo"}),
    ("1e9 * 2", set()),
])
def test_metric_names(expr, expected):
    assert metric_names(expr) == expected


def test_substitute_grafana_vars():
    e = 'rate(x{instance=~"$instance", gpu=~"${gpu}"}[$__rate_interval]) and y[$__range]'
    assert substitute_grafana_vars(e) == 'rate(x{instance=~".*", gpu=~".*"}[5m]) and y[1d]'
    assert grafana_variables_used(e) == {"instance", "gpu", "__rate_interval", "__range"}


def test_variable_promql():
    assert variable_promql('label_values(gpu_info{instance=~"$instance"}, gpu)') == 'gpu_info{instance=~"$instance"}'
    assert variable_promql("query_result(max(x) > 1)") == "max(x) > 1"
    assert variable_promql("label_values(instance)") is None


# ------------------------------------------------------------------ relabelling (Prometheus semantics)


def _go_replacement(replacement: str) -> str:
    """Go's regexp.Expand template ($1, ${1}, $name) -> Python's re template."""
    out = re.sub(r"\$\{(\w+)\}", r"\\g<\1>", replacement)
    return re.sub(r"\$(\w+)", r"\\g<\1>", out)


def relabel(rules: list[dict], labels: dict[str, str]) -> dict[str, str] | None:
    """Apply relabel_configs (Prometheus/Promtail/Alloy semantics) to a label set.
    Returns the resulting public labels (names starting with "__" removed), or None if dropped."""
    lbls = dict(labels)
    for r in rules:
        action = r.get("action", "replace").lower()
        sep = r.get("separator", ";")
        regex = re.compile("^(?:" + r.get("regex", "(.*)") + ")$")
        value = sep.join(lbls.get(name, "") for name in r.get("source_labels", []))
        if action == "replace":
            m = regex.match(value)
            if m is None:
                continue
            target = m.expand(_go_replacement(r.get("target_label", "")))
            res = m.expand(_go_replacement(str(r.get("replacement", "$1"))))
            if not target:
                continue
            if res == "":
                lbls.pop(target, None)
            else:
                lbls[target] = res
        elif action == "keep":
            if not regex.match(value):
                return None
        elif action == "drop":
            if regex.match(value):
                return None
        elif action == "labeldrop":
            lbls = {k: v for k, v in lbls.items() if not regex.match(k)}
        elif action == "labelkeep":
            lbls = {k: v for k, v in lbls.items() if regex.match(k)}
        elif action == "labelmap":
            for k, v in list(lbls.items()):
                m = regex.match(k)
                if m:
                    lbls[m.expand(_go_replacement(r.get("replacement", "$1")))] = v
        else:
            raise ValueError(f"relabel action {action!r} not simulated")
    return {k: v for k, v in lbls.items() if not k.startswith("__")}


def test_relabel_semantics():
    rules = [
        {"source_labels": ["__meta_docker_container_name"], "regex": "/?(.+)", "target_label": "container"},
        {"target_label": "job", "replacement": "docker"},
        {"source_labels": ["a", "b"], "regex": ";(.+)", "target_label": "only_b"},
    ]
    assert relabel(rules, {"__meta_docker_container_name": "/ollama", "b": "x"}) == {
        "container": "ollama", "job": "docker", "b": "x", "only_b": "x"}
    assert relabel(rules, {"__meta_docker_container_name": "/ollama", "a": "1", "b": "x"})["container"] == "ollama"
    assert "only_b" not in relabel(rules, {"a": "1", "b": "x"})
    assert relabel([{"source_labels": ["x"], "regex": ".+", "action": "drop"}], {"x": "1"}) is None
    assert relabel([{"source_labels": ["x"], "regex": ".+", "action": "drop"}], {"y": "1"}) == {"y": "1"}
    # The regex is anchored at both ends, as in Prometheus.
    assert relabel([{"source_labels": ["x"], "regex": "b", "target_label": "t", "replacement": "y"}],
                   {"x": "abc"}) == {"x": "abc"}


# ------------------------------------------------------------------ Alloy syntax (the subset used)


def _strip_alloy_comments(text: str) -> str:
    out, i, in_str = [], 0, False
    while i < len(text):
        c = text[i]
        if in_str:
            out.append(c)
            if c == "\\":
                out.append(text[i + 1])
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
            out.append(c)
        elif text.startswith("//", i):
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


@dataclass
class AlloyBlock:
    name: str  # e.g. "loki.relabel"
    label: str | None  # e.g. "journal"
    attrs: dict[str, object]  # value: parsed JSON-compatible literal, or the raw expression text
    blocks: list[AlloyBlock]


_HEADER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_.]*)\s*(?:"([^"]*)")?\s*\{')
_ATTR = re.compile(r"\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*")


def _read_value(text: str, i: int) -> tuple[object, int]:
    """Read an attribute value up to the end of the line (balanced brackets may span lines)."""
    depth, j, in_str = 0, i, False
    while j < len(text):
        c = text[j]
        if in_str:
            if c == "\\":
                j += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "[{(":
            depth += 1
        elif c in "]})":
            if depth == 0:
                break
            depth -= 1
        elif c == "\n" and depth == 0:
            break
        j += 1
    raw = text[i:j].strip().rstrip(",")
    try:
        value = json.loads(re.sub(r",\s*([\]}])", r"\1", raw))
    except json.JSONDecodeError:
        value = raw  # an expression such as loki.write.default.receiver or a list of them
    return value, j


def _parse_body(text: str, i: int) -> tuple[dict, list[AlloyBlock], int]:
    attrs, blocks = {}, []
    while True:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        if i >= len(text) or text[i] == "}":
            return attrs, blocks, i + 1
        m = _ATTR.match(text, i)
        if m and not _HEADER.match(text, i):
            value, i = _read_value(text, m.end())
            attrs[m.group(1)] = value
            continue
        m = _HEADER.match(text, i)
        if not m:
            raise ValueError(f"cannot parse Alloy config near: {text[i:i + 60]!r}")
        a, b, i = _parse_body(text, m.end())
        blocks.append(AlloyBlock(m.group(1), m.group(2), a, b))


def parse_alloy(text: str) -> list[AlloyBlock]:
    text = _strip_alloy_comments(text)
    attrs, blocks, _ = _parse_body(text + "\n}", 0)
    assert not attrs, f"top-level attributes are not valid Alloy: {attrs}"
    return blocks


def test_parse_alloy_subset():
    blocks = parse_alloy('''
    // comment with "quotes" and { braces }
    loki.write "default" {
      endpoint {
        url = "http://loki:3100/loki/api/v1/push" // trailing
      }
    }
    loki.relabel "j" {
      forward_to = []
      rule {
        source_labels = ["a", "b"]
        regex         = ";(.+)"
        target_label  = "t"
      }
    }
    loki.source.docker "c" {
      targets    = discovery.relabel.containers.output
      forward_to = [loki.write.default.receiver]
    }
    ''')
    assert [(b.name, b.label) for b in blocks] == [("loki.write", "default"), ("loki.relabel", "j"),
                                                     ("loki.source.docker", "c")]
    assert blocks[0].blocks[0].attrs == {"url": "http://loki:3100/loki/api/v1/push"}
    assert blocks[1].blocks[0].attrs == {"source_labels": ["a", "b"], "regex": ";(.+)", "target_label": "t"}
    assert blocks[2].attrs["targets"] == "discovery.relabel.containers.output"
    assert blocks[2].attrs["forward_to"] == "[loki.write.default.receiver]"
