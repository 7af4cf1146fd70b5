"""Every PromQL expression of the stack (alert and recording rules, dashboard panels, variables and
annotations, Grafana variables substituted) checked by a real Prometheus:

1. it parses (Prometheus answers 400 bad_data otherwise), with an empty TSDB;
2. against a real Prometheus holding one simulated day — `rigwatch-sim history` backfilled with
   promtool — it returns data, so a misspelt metric or label fails. Expressions that are
   legitimately empty on healthy data (alert conditions, Xid panels) must instead name only
   metrics that exist there or that the contracts say appear only on an event.

SYNTHETIC DATA: the detector's and the log side's metrics (rigwatch_anomaly_*, rigwatch_detector_*,
rigwatch_log_*) are not in the simulator's history. Until the end-to-end test runs the real
detector, this module writes them itself as a small OpenMetrics block with exactly the names and
labels of the contracts in issues 3 and 4, aligned on the simulated GPUs and containers. It also
writes the request series of inference servers the simulated box does not run (issue 12): vLLM and
llama.cpp as Prometheus scrapes them directly, and the exporter's ComfyUI `inference_requests_running`,
so `inference:requests_active:sum` is checked against data too.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import requests

from harness.processes import backfill_openmetrics
from harness.servers import PrometheusServer
from tests.test_stack_helpers import dashboard_queries, metric_names, rules, substitute_grafana_vars

pytestmark = pytest.mark.integration

EMPTY_CONFIG = "global:\n  scrape_interval: 15s\nscrape_configs: []\n"
STEP = 60  # the simulator's scrape interval

# Series Prometheus itself writes (never in a backfill): only ever used in annotations/alerts.
PROMETHEUS_GENERATED = {"ALERTS"}
# Contract metrics that exist only once something happened (issue 2): a healthy day has none.
EVENT_ONLY = {"gpu_xid_errors_total", "gpu_exporter_read_errors_total", "gpu_ecc_errors_total"}
# Exporter self-monitoring the simulator's history writer does not record (it drives the collector
# without the HTTP server). Contract names from issue 2, checked for existence only.
NOT_IN_SIM_HISTORY = {"gpu_exporter_collect_duration_seconds"}
# A fleet's own expressions (issue 14): they select the agents' `box` label, which a single box's
# series never carry; tests/test_fleet_write_path.py runs them against a fleet's VictoriaMetrics.
FLEET_ONLY = 'box!=""'


# ------------------------------------------------------------------ the expressions


def inline_recorded(expr: str, recorded: dict[str, str]) -> str:
    """A panel's use of a recording rule's series, with the rule's expression in its place: backfilled
    history was never seen by the rule evaluator, so the recorded series do not exist in it."""
    for name, rule_expr in recorded.items():
        expr = re.sub(rf"(?<![\w:]){re.escape(name)}(?![\w:])", lambda _m, e=rule_expr: f"({e})", expr)
    return expr


def all_expressions() -> list[tuple[str, str, bool]]:
    """(origin, PromQL with Grafana variables substituted, must_return_data)."""
    out = []
    recorded = {r.name: r.expr for r in rules() if r.kind == "record"}
    for r in rules():
        # An alert condition is empty while all is well; a recording rule must produce series.
        out.append((f"{r.file}: {r.name}", r.expr, r.kind == "record"))
    for q in dashboard_queries():
        if q.datasource_uid != "rigwatch-prometheus":
            continue
        expr = inline_recorded(substitute_grafana_vars(q.expr), recorded)
        may_be_empty = bool(metric_names(expr) & (EVENT_ONLY | PROMETHEUS_GENERATED | NOT_IN_SIM_HISTORY)) \
            or FLEET_ONLY in expr
        out.append((q.origin, expr, not may_be_empty))
    return out


EXPRESSIONS = all_expressions()


def test_expressions_were_found():
    assert len(EXPRESSIONS) > 60, len(EXPRESSIONS)
    assert sum(1 for *_, must in EXPRESSIONS if must) > 40


# ------------------------------------------------------------------ parse, with an empty TSDB


@pytest.fixture(scope="module")
def empty_prometheus(tmp_path_factory):
    with PrometheusServer(tmp_path_factory.mktemp("prom-empty"), EMPTY_CONFIG) as prom:
        yield prom


def _instant(prom, expr: str, at: float | None = None) -> requests.Response:
    params = {"query": expr}
    if at is not None:
        params["time"] = at
    return requests.get(prom.url + "/api/v1/query", params=params, timeout=30)


def test_every_expression_parses(empty_prometheus):
    bad = []
    for origin, expr, _ in EXPRESSIONS:
        r = _instant(empty_prometheus, expr)
        if r.status_code != 200:
            bad.append(f"{origin}: {r.status_code} {r.json().get('error')}\n    {expr}")
    assert not bad, "\n".join(bad)


def test_parse_check_catches_a_syntax_error(empty_prometheus):
    r = _instant(empty_prometheus, 'rate(gpu_temperature_celsius{gpu=~".*"}[5m]')
    assert r.status_code == 400 and r.json()["errorType"] == "bad_data"


# ------------------------------------------------------------------ data: simulated day + synthetic block


def _labels(text: str) -> dict[str, str]:
    return dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', text))


def _fmt(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def sim_identities(om: Path) -> tuple[list[dict], list[dict]]:
    """GPU identities (from gpu_info) and container workload identities found in the sim's history."""
    gpus, workloads = {}, {}
    with om.open() as f:
        for line in f:
            if line.startswith("gpu_info{"):
                lb = _labels(line[: line.rindex("}") + 1])
                gpus.setdefault(lb["uuid"], {k: lb[k] for k in ("job", "instance", "gpu", "uuid", "name")})
            elif line.startswith("gpu_workload_memory_used_bytes{") and 'workload_kind="container"' in line:
                lb = _labels(line[: line.rindex("}") + 1])
                workloads.setdefault((lb["uuid"], lb["workload"]), lb)
    return list(gpus.values()), list(workloads.values())


def write_synthetic_block(path: Path, start: int, end: int, gpus: list[dict], workloads: list[dict]) -> None:
    """Detector and log-side series with the contract names and labels (issues 3 and 4). Scores
    hold one anomalous episode (> 1) two hours before the end, so the 'anomalous points' overlays
    and the 'anomalous streams' variables have something to show."""
    times = range(start, end + 1, STEP)
    episode = (end - 3 * 3600, end - 2 * 3600)

    def score(t, base=0.3, peak=2.5):
        return peak if episode[0] <= t < episode[1] else base

    fam: dict[str, tuple[str, list[tuple[dict, object]]]] = {}  # family -> (type, [(labels, value_fn)])

    def add(family, typ, labels, fn):
        fam.setdefault(family, (typ, []))[1].append((labels, fn))

    det_self = {"job": "rigwatch-detector", "instance": "detector:9843"}
    gpu_detectors = {"gpu_thermal": ("thermal", 62.0, 6.0), "gpu_temperature": ("robust_z", 60.0, 15.0),
                     "gpu_power": ("seasonal_esd", 150.0, 120.0), "gpu_utilization": ("seasonal_esd", 0.4, 0.6),
                     "gpu_memory_used": ("robust_z", 8e9, 4e9), "gpu_sm_clock": ("robust_z", 1.6e9, 1.2e9)}
    for g in gpus:
        for det, (model, expected, dev) in gpu_detectors.items():
            lb = {**g, "detector": det, "model": model}
            anomalous = g["gpu"] == "0"
            add("rigwatch_anomaly_score", "gauge", lb, lambda t, a=anomalous: score(t) if a else 0.3)
            add("rigwatch_anomaly_expected", "gauge", lb, lambda t, e=expected: e)
            add("rigwatch_anomaly_lower", "gauge", lb, lambda t, e=expected, d=dev: e - d)
            add("rigwatch_anomaly_upper", "gauge", lb, lambda t, e=expected, d=dev: e + d)
    for w in workloads:
        lb = {**{k: w[k] for k in ("job", "instance", "gpu", "uuid", "name", "workload", "workload_kind")},
              "container": w["workload"], "detector": "gpu_workload_memory", "model": "robust_z"}
        add("rigwatch_anomaly_score", "gauge", lb, lambda t: score(t))
        for fam_name, v in (("expected", 2e9), ("lower", 0.0), ("upper", 4e9)):
            add(f"rigwatch_anomaly_{fam_name}", "gauge", lb, lambda t, v=v: v)
    for task in ("score", "fit"):
        add("rigwatch_detector_last_success_timestamp_seconds", "gauge", {**det_self, "task": task},
            lambda t: t - 30)
        add("rigwatch_detector_task_duration_seconds", "gauge", {**det_self, "task": task}, lambda t: 0.4)
    for source in ("prometheus", "loki"):
        add("rigwatch_detector_source_up", "gauge", {**det_self, "source": source}, lambda t: 1)
        add("rigwatch_detector_source_errors", "counter", {**det_self, "source": source},
            lambda t: (t - start) // 3600)
    add("rigwatch_detector_series_tracked", "gauge", det_self, lambda t: 42)
    for det in ("gpu_thermal", "gpu_power"):
        add("rigwatch_detector_query_ok", "gauge", {**det_self, "detector": det}, lambda t: 1)
        add("rigwatch_detector_query_errors", "counter", {**det_self, "detector": det}, lambda t: 0)
    add("rigwatch_detector_config_last_reload_successful", "gauge", det_self, lambda t: 1)
    add("rigwatch_detector_config_last_reload_success_timestamp_seconds", "gauge", det_self, lambda t: start)
    for det, model in (("gpu_thermal", "thermal"), ("gpu_power", "seasonal_esd")):
        add("rigwatch_detector_model_info", "gauge", {**det_self, "detector": det, "model": model, "version": "3"},
            lambda t: 1)
    add("rigwatch_detector_shard_info", "gauge", {**det_self, "shard": "0", "shards": "1"}, lambda t: 1)
    for det in ("gpu_thermal", "gpu_power"):
        add("rigwatch_detector_shard_series", "gauge", {**det_self, "detector": det}, lambda t: 2)
    add("rigwatch_detector_challenger_info", "gauge",
        {**det_self, "detector": "gpu_thermal", "version": "4", "state": "rejected"}, lambda t: 1)
    # added by the model lifecycle issue: drift, anomaly rate, model age (the model-health dashboard)
    for det, model in (("gpu_thermal", "thermal"), ("gpu_power", "seasonal_esd")):
        for feature in (("value", "power_watts") if model == "thermal" else ("value",)):
            add("rigwatch_feature_drift", "gauge", {**det_self, "detector": det, "feature": feature,
                                                    "statistic": "psi"}, lambda t: 0.08)
            add("rigwatch_feature_drift", "gauge", {**det_self, "detector": det, "feature": feature,
                                                    "statistic": "wasserstein"}, lambda t: 0.3)
        add("rigwatch_drifted_series", "gauge", {**det_self, "detector": det}, lambda t: 0)
        for window in ("1h", "24h"):
            add("rigwatch_anomaly_rate", "gauge", {**det_self, "detector": det, "window": window}, lambda t: 0.01)
        add("rigwatch_detector_model_fit_timestamp_seconds", "gauge", {**det_self, "detector": det},
            lambda t: t - t % 21600)
    add("rigwatch_detector_fit_interval_seconds", "gauge", det_self, lambda t: 21600)
    # added by the model lifecycle issue (feedback and maintenance windows): bounded labels
    for det in ("gpu_thermal", "gpu_power"):
        for verdict, n in (("true_positive", 2), ("false_positive", 1)):
            add("rigwatch_feedback_labels", "gauge", {**det_self, "detector": det, "label": verdict},
                lambda t, n=n: n)
    for state, n in (("active", 0), ("scheduled", 1)):
        add("rigwatch_maintenance_windows", "gauge", {**det_self, "state": state}, lambda t, n=n: n)
    # added by the model lifecycle issue (gate): decisions by outcome, the last evaluation's figures
    for outcome in ("promoted", "rejected"):
        add("rigwatch_detector_gate_decisions", "counter", {**det_self, "detector": "gpu_thermal", "outcome": outcome},
            lambda t, o=outcome: (t - start) // (21600 if o == "promoted" else 86400))
    for model, n in (("champion", 1), ("challenger", 3)):
        add("rigwatch_detector_gate_incidents", "gauge", {**det_self, "detector": "gpu_thermal", "model": model},
            lambda t, n=n: n)
        add("rigwatch_detector_gate_alarm_seconds", "gauge",
            {**det_self, "detector": "gpu_thermal", "model": model}, lambda t, n=n: 300 * n)
    # added by issue 12 (detection in context): per GPU, busy with nobody asking
    for g in gpus:
        add("rigwatch_gpu_busy_without_requests", "gauge", g, lambda t: 1 if episode[0] <= t < episode[1] else 0)
        add("rigwatch_gpu_busy_without_requests_seconds", "gauge", g,
            lambda t: t - episode[0] + 600 if episode[0] <= t < episode[1] else 0)
    add("up", "gauge", det_self, lambda t: 1)
    log_streams = [
        {"detector": "log_novel", "job": "systemd-journal", "unit": "ssh.service", "identifier": "sshd",
         "priority": "6", "transport": "syslog", "instance": "detector:9843"},
        {"detector": "log_rate", "job": "docker", "container": "ollama", "instance": "detector:9843"},
    ]
    for lb in log_streams:
        add("rigwatch_log_anomaly_score", "gauge", lb, lambda t: score(t, 0.2, 4.0))
    for i in range(5):
        add("rigwatch_log_template_rate", "gauge", {"template_id": f"T{i}", "instance": "detector:9843"},
            lambda t, i=i: 0.1 * (i + 1))
    add("rigwatch_log_novel_templates", "counter", {"instance": "detector:9843"}, lambda t: (t - start) // 7200)
    # inference servers the sim does not run (issue 12): scraped directly, or ComfyUI via the exporter
    exporter = {k: gpus[0][k] for k in ("job", "instance")}
    add("vllm:num_requests_running", "gauge", {"job": "vllm", "instance": "vllm:8000",
                                              "model_name": "Qwen/Qwen2.5-7B-Instruct", "engine": "0"},
        lambda t: (t // 600) % 4)
    add("llamacpp:requests_processing", "gauge", {"job": "llamacpp", "instance": "llamacpp:8080"},
        lambda t: (t // 900) % 2)
    add("inference_requests_running", "gauge", {**exporter, "server": "comfyui"}, lambda t: (t // 1800) % 2)

    with path.open("w") as f:
        for family, (typ, series) in fam.items():
            f.write(f"# TYPE {family} {typ}\n")
            sample = family + "_total" if typ == "counter" else family
            for labels, fn in series:
                lbl = _fmt(labels)
                f.writelines(f"{sample}{lbl} {fn(t)} {t}\n" for t in times)
        f.write("# EOF\n")


@pytest.fixture(scope="module")
def sim_prometheus(tmp_path_factory):
    work = tmp_path_factory.mktemp("prom-sim")
    hist = work / "history"
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from exporter.sim.cli import main; sys.exit(main())",
         "history", "--out", str(hist), "--days", "1", "--seed", "3"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"rigwatch-sim history failed:\n{out.stderr[-3000:]}"
    truth = json.loads((hist / "truth.json").read_text())
    start = int(datetime.fromisoformat(truth["start"].replace("Z", "+00:00")).timestamp())
    end = int(datetime.fromisoformat(truth["end"].replace("Z", "+00:00")).timestamp()) - STEP
    gpus, workloads = sim_identities(hist / "metrics.om")
    assert len(gpus) == 2 and workloads, (gpus, workloads)
    synthetic = work / "synthetic.om"
    write_synthetic_block(synthetic, start, end, gpus, workloads)
    storage = work / "data"
    backfill_openmetrics(hist / "metrics.om", storage)
    backfill_openmetrics(synthetic, storage)
    with PrometheusServer(work / "prom", EMPTY_CONFIG, storage=storage) as prom:
        prom.range = (start, end)
        names = requests.get(prom.url + "/api/v1/label/__name__/values", timeout=10).json()["data"]
        prom.names = set(names)
        yield prom


def returns_data(prom, expr: str) -> bool:
    start, end = prom.range
    r = requests.get(prom.url + "/api/v1/query_range",
                     params={"query": expr, "start": start, "end": end, "step": 600}, timeout=60)
    assert r.status_code == 200, f"{r.status_code}: {r.text[:300]}"
    return bool(r.json()["data"]["result"])


def unknown_names(prom, expr: str) -> set[str]:
    return metric_names(expr) - prom.names - PROMETHEUS_GENERATED - EVENT_ONLY - NOT_IN_SIM_HISTORY


def test_expressions_return_data_from_the_simulated_box(sim_prometheus):
    """Every expression evaluates over the whole day without an execution error (e.g. a
    many-to-many match, which only data reveals); the ones that must return data do."""
    empty = [f"{origin}\n    {expr}" for origin, expr, must in EXPRESSIONS
             if not returns_data(sim_prometheus, expr) and must]
    assert not empty, "no data for:\n" + "\n".join(empty)


def test_legitimately_empty_expressions_name_existing_metrics(sim_prometheus):
    unknown = [(origin, unknown_names(sim_prometheus, expr)) for origin, expr, _ in EXPRESSIONS]
    unknown = [u for u in unknown if u[1]]
    assert not unknown, f"metric names that exist nowhere: {unknown}"


def test_a_misspelt_metric_fails_both_checks(sim_prometheus):
    good = 'gpu_temperature_celsius{instance=~".*", gpu=~".*"}'
    bad = 'gpu_temperatur_celsius{instance=~".*", gpu=~".*"}'
    assert returns_data(sim_prometheus, good) and not unknown_names(sim_prometheus, good)
    assert not returns_data(sim_prometheus, bad)
    assert unknown_names(sim_prometheus, bad) == {"gpu_temperatur_celsius"}
    # A wrong label value is caught by the data check too.
    assert not returns_data(sim_prometheus, 'gpu_clock_hertz{clock="shader"}')


def test_synthetic_block_is_limited_to_contract_names(sim_prometheus):
    """The synthetic series stand in for the detector only under the contract's names."""
    contract = {
        "rigwatch_anomaly_score", "rigwatch_anomaly_expected", "rigwatch_anomaly_lower", "rigwatch_anomaly_upper",
        "rigwatch_detector_last_success_timestamp_seconds", "rigwatch_detector_source_up",
        "rigwatch_detector_series_tracked", "rigwatch_detector_task_duration_seconds",
        "rigwatch_detector_source_errors_total", "rigwatch_detector_model_info",
        "rigwatch_log_anomaly_score", "rigwatch_log_template_rate", "rigwatch_log_novel_templates_total",
        # added by the hardening issue: a refused query pauses its detector; a refused reload
        "rigwatch_detector_query_ok", "rigwatch_detector_query_errors_total",
        "rigwatch_detector_config_last_reload_successful",
        "rigwatch_detector_config_last_reload_success_timestamp_seconds",
        # added by the model lifecycle issue: a fit kept from scoring (the registry's challenger)
        "rigwatch_detector_challenger_info",
        # added by the model lifecycle issue (drift): bounded labels, no per-series ones
        "rigwatch_feature_drift", "rigwatch_drifted_series", "rigwatch_anomaly_rate",
        "rigwatch_detector_model_fit_timestamp_seconds", "rigwatch_detector_fit_interval_seconds",
        # added by the model lifecycle issue: the operator's labels (feedback, maintenance windows)
        "rigwatch_feedback_labels", "rigwatch_maintenance_windows",
        # added by the model lifecycle issue (gate): bounded labels (detector, outcome, model)
        "rigwatch_detector_gate_decisions_total", "rigwatch_detector_gate_incidents",
        "rigwatch_detector_gate_alarm_seconds",
        # added by issue 12 (detection in context): the context plugin's own families
        "rigwatch_gpu_busy_without_requests", "rigwatch_gpu_busy_without_requests_seconds",
        # added by issue 14 (a fleet): which shard of how many a detector replica is
        "rigwatch_detector_shard_info", "rigwatch_detector_shard_series",
    }
    synthetic = {n for n in sim_prometheus.names if n.startswith("rigwatch_")}
    assert synthetic == contract
    # the inference servers' request series under the names their servers publish (issue 12)
    assert {"vllm:num_requests_running", "llamacpp:requests_processing", "inference_requests_running"} <= \
        sim_prometheus.names



@pytest.fixture(scope="module")
def throttle_prometheus(tmp_path_factory):
    """Two GPUs pegged at 100 % drawing 30 % of their limit for an hour: GPU 0 under a thermal
    slowdown for its first half hour (its reasons family says so), GPU 1 publishing no reasons."""
    work = tmp_path_factory.mktemp("prom-throttle")
    start = 1_793_491_200
    times = range(start, start + 3600, 60)
    gpus = [{"gpu": str(i), "uuid": f"GPU-{i}", "job": "rigwatch-exporter", "instance": "box:9842"} for i in (0, 1)]
    lines = []
    for fam, fn in (("gpu_utilization_ratio", lambda g, t: 1.0), ("gpu_power_usage_watts", lambda g, t: 100.0),
                    ("gpu_power_limit_watts", lambda g, t: 350.0)):
        lines.append(f"# TYPE {fam} gauge")
        lines += [f"{fam}{_fmt(g)} {fn(g, t)} {t}" for g in gpus for t in times]
    lines.append("# TYPE gpu_clocks_event_reason_active gauge")
    for reason in ("sw_thermal_slowdown", "gpu_idle"):
        on = reason == "sw_thermal_slowdown"
        lines += [f"gpu_clocks_event_reason_active{_fmt({**gpus[0], 'reason': reason})} "
                  f"{int(on and t < start + 1800)} {t}" for t in times]
    path = work / "throttle.om"
    path.write_text("\n".join(lines) + "\n# EOF\n")
    backfill_openmetrics(path, work / "data")
    with PrometheusServer(work / "prom", EMPTY_CONFIG, storage=work / "data") as prom:
        prom.range = (start, start + 3540)
        yield prom


def _range(prom, expr: str) -> dict[tuple[str, float], float]:
    start, end = prom.range
    r = requests.get(prom.url + "/api/v1/query_range",
                     params={"query": expr, "start": start, "end": end, "step": 60}, timeout=60)
    assert r.status_code == 200, f"{r.status_code}: {r.text[:300]}"
    return {(s["metric"]["gpu"], float(t)): float(v) for s in r.json()["data"]["result"] for t, v in s["values"]}


def test_gpu_stuck_is_silent_while_a_slowdown_explains_the_low_draw(throttle_prometheus):
    """The preset's gpu_stuck reads 0 whenever a thermal/hardware slowdown or power brake is active
    (the throttle, not a spinning kernel, holds the power down), reads the plain load-and-power
    condition otherwise, and still covers a card that publishes no slowdown reasons."""
    import yaml

    preset = yaml.safe_load(Path("detector/default_preset.yml").read_text())
    expr = next(d["query"] for d in preset["detectors"] if d["name"] == "gpu_stuck")
    plain = "(gpu_utilization_ratio >= bool 0.9) * ((gpu_power_usage_watts / gpu_power_limit_watts) < bool 0.75)"
    slowed = ('max without (reason) (gpu_clocks_event_reason_active{reason=~"hw_slowdown|hw_thermal_slowdown|'
              'hw_power_brake_slowdown|sw_thermal_slowdown"})')
    stuck, raw, slow = (_range(throttle_prometheus, e) for e in (expr, plain, slowed))
    assert set(stuck) == set(raw) and all(v == 1 for v in raw.values())
    throttled = {k for k, v in slow.items() if v == 1}
    assert throttled and all(g == "0" for g, _ in throttled)
    assert all(stuck[k] == (0 if k in throttled else 1) for k in raw)
    # GPU 1 publishes no reasons at all: judged on load and power alone, never dropped
    assert any(g == "1" for g, _ in stuck) and all(v == 1 for (g, _), v in stuck.items() if g == "1")
