"""Busy with nobody asking (detector/context): the rule on literal arrays, the activity readers, the
`inference:` section, and the plugin against a real Prometheus holding backfilled history and the
Loki stand-in holding an Ollama request log."""
from __future__ import annotations

import numpy as np
import pytest
import requests

from detector.config import ConfigError, load_config, parse_config
from detector.context.activity import Activity, ServerActivity, from_log_counts, from_metrics, merge
from detector.context.busy import GpuContext, run_seconds, scores, unexplained_busy
from detector.context.config import DEFAULT_REQUESTS_QUERY, InferenceConfig, stream_selector
from detector.context.plugin import NAME, ContextPlugin
from detector.logs.loki import LokiClient, MetricSeries, Sample
from detector.promclient import PromClient, Series
from harness.loki_standin import LokiTestServer
from harness.processes import backfill_openmetrics
from harness.servers import PrometheusServer

F, T = False, True
N = frozenset()


def ctx(util, servers, others=None):
    n = len(util)
    return GpuContext(np.array(util, float), [frozenset(servers)] * n, [frozenset(others or ())] * n)


def activity(n, **servers):
    """servers: name -> (known, active) as strings of '1'/'0' per step."""
    a = Activity(np.arange(n) * 60.0)
    for name, (known, active) in servers.items():
        a.servers[name] = ServerActivity(np.array([c == "1" for c in known]), np.array([c == "1" for c in active]))
    return a


# -- the rule ------------------------------------------------------------------------------------------
def test_run_seconds_counts_each_run_from_its_first_step():
    assert run_seconds(np.array([F, T, T, F, T]), 60).tolist() == [0, 60, 120, 0, 60]


def test_busy_gpu_whose_server_is_known_idle_is_unexplained():
    a = activity(4, ollama=("1111", "0000"))
    assert unexplained_busy(ctx([1, 1, 0.5, 0.95], {"ollama"}), a, 0.9).tolist() == [T, T, F, T]


def test_a_request_in_flight_explains_the_load():
    a = activity(3, vllm=("111", "010"))
    assert unexplained_busy(ctx([1, 1, 1], {"vllm"}), a, 0.9).tolist() == [T, F, T]


def test_unknown_activity_concludes_nothing():
    a = activity(3, ollama=("000", "000"))
    assert not unexplained_busy(ctx([1, 1, 1], {"ollama"}), a, 0.9).any()
    assert not unexplained_busy(ctx([1, 1, 1], {"comfyui"}), activity(3), 0.9).any()  # no reading at all


def test_another_workload_or_no_server_explains_nothing_to_conclude():
    a = activity(3, ollama=("111", "000"))
    assert not unexplained_busy(ctx([1, 1, 1], {"ollama"}, {"lora-train.service"}), a, 0.9).any()
    assert not unexplained_busy(ctx([1, 1, 1], set()), a, 0.9).any()


def test_every_server_on_the_gpu_must_be_idle():
    a = activity(2, ollama=("11", "00"), comfyui=("11", "10"))
    assert unexplained_busy(ctx([1, 1], {"ollama", "comfyui"}), a, 0.9).tolist() == [F, T]


def test_score_passes_one_after_hold_whatever_the_power():
    a = activity(12, ollama=("1" * 12, "0" * 12))
    s = scores(ctx([1.0] * 12, {"ollama"}), a, busy_utilization=0.9, hold=600, step=60)
    assert s[9] == pytest.approx(1.0) and s[10] > 1 and (s[:10] <= 1).all()


# -- activity readers ----------------------------------------------------------------------------------
def test_metrics_say_known_where_a_sample_is_and_active_where_positive():
    grid = np.arange(4) * 60.0
    got = from_metrics(grid, [Series({"server": "vllm"}, np.array([60.0, 120, 180]), np.array([0.0, 2, np.nan]))])
    assert got["vllm"].known.tolist() == [F, T, T, F] and got["vllm"].active.tolist() == [F, F, T, F]


def test_logs_say_known_only_while_the_stream_was_seen():
    grid = np.arange(4) * 60.0
    counts = [MetricSeries({}, [Sample(120.0, 3)])]
    presence = [MetricSeries({}, [Sample(60.0, 5), Sample(120.0, 8), Sample(180.0, 8)])]
    a = from_log_counts(grid, counts, presence)
    assert a.known.tolist() == [F, T, T, T] and a.active.tolist() == [F, F, T, F]


def test_metrics_win_where_they_speak_logs_fill_the_rest():
    grid = np.arange(3) * 60.0
    m = {"ollama": ServerActivity(np.array([T, F, F]), np.array([F, F, F]))}
    lg = {"ollama": ServerActivity(np.array([T, T, F]), np.array([T, T, F]), by_logs=np.array([T, T, F]))}
    a = merge(grid, m, lg).get("ollama")
    assert a.known.tolist() == [T, T, F] and a.active.tolist() == [F, T, F]
    assert [a.read_in_logs(i) for i in range(3)] == [F, T, F]  # the incident text says where it was read


# -- config --------------------------------------------------------------------------------------------
def test_the_default_preset_turns_it_on():
    cfg = load_config()
    assert cfg.inference is not None and cfg.inference.hold == 600
    assert [s.name for s in cfg.inference.servers] == ["ollama", "vllm", "llamacpp", "comfyui"]
    assert cfg.inference.server_for("ollama") .name == "ollama" and cfg.inference.server_for("vllm-openai").name == "vllm"
    assert cfg.inference.server_for("lora-train.service") is None and cfg.inference.server_for("open-webui") is None


def test_an_empty_section_means_the_defaults_and_no_section_means_off():
    assert parse_config({"inference": None}).inference == InferenceConfig()
    assert parse_config({}).inference is None


@pytest.mark.parametrize("section, key", [
    ({"hold": "0s"}, "inference.hold"),
    ({"busy_utilization": 1.5}, "inference.busy_utilization"),
    ({"holdd": "5m"}, "inference.holdd"),
    ({"servers": {"ollama": {"workload": "("}}}, "inference.servers.ollama.workload"),
    ({"servers": {"ollama": {"workload": "x", "requests_log": '|= "x"'}}}, "inference.servers.ollama.requests_log"),
    ({"servers": {"ollama": {"workload": "x", "port": 1}}}, "inference.servers.ollama.port"),
])
def test_bad_values_name_their_key(section, key):
    with pytest.raises(ConfigError) as e:
        parse_config({"inference": section})
    assert str(e.value).startswith(key)


def test_stream_selector_respects_quotes():
    assert stream_selector('{a="}", b=~"x\\"}"} |~ "y"') == '{a="}", b=~"x\\"}"}'
    with pytest.raises(ValueError):
        stream_selector('{a="b"')


# -- the plugin on a real Prometheus and the Loki stand-in ----------------------------------------------
STEP = 60
END = 1_790_000_000.0  # a fixed past instant: promtool backfills it
START = END - 4 * 3600
JOB = 'job="exp",instance="box:9842"'
GPUS = {"0": "GPU-aaaa", "1": "GPU-bbbb", "2": "GPU-cccc"}
OLLAMA_HANG = (END - 40 * 60, END)  # GPU 0 pegged, Ollama silent
VLLM_BATCH = (START + 30 * 60, START + 150 * 60)  # GPU 1 pegged with requests flowing: work
VLLM_HANG = (START + 170 * 60, START + 200 * 60)  # GPU 1 pegged, vLLM running 0
LORA = (START + 60 * 60, START + 180 * 60)  # GPU 2 pegged by a training unit: a known workload


def _in(t, span):
    return span[0] <= t < span[1]


def write_history(path):
    ts = np.arange(START, END + 1, STEP)
    lines = {"gpu_utilization_ratio": [], "gpu_workload_memory_used_bytes": [], "vllm:num_requests_running": []}
    for t in ts:
        busy = {"0": _in(t, OLLAMA_HANG), "1": _in(t, VLLM_BATCH) or _in(t, VLLM_HANG), "2": _in(t, LORA)}
        for gpu, uuid in GPUS.items():
            lab = f'gpu="{gpu}",uuid="{uuid}",name="card",{JOB}'
            lines["gpu_utilization_ratio"].append(f"gpu_utilization_ratio{{{lab}}} {1.0 if busy[gpu] else 0.05} {t:.0f}")
        for gpu, workload, kind, used in (("0", "ollama", "container", 6e9), ("1", "vllm", "container", 20e9)):
            lab = f'gpu="{gpu}",uuid="{GPUS[gpu]}",name="card",workload="{workload}",workload_kind="{kind}",{JOB}'
            lines["gpu_workload_memory_used_bytes"].append(f"gpu_workload_memory_used_bytes{{{lab}}} {used:.0f} {t:.0f}")
        if _in(t, LORA):
            lab = f'gpu="2",uuid="GPU-cccc",name="card",workload="lora-train.service",workload_kind="unit",{JOB}'
            lines["gpu_workload_memory_used_bytes"].append(f"gpu_workload_memory_used_bytes{{{lab}}} 9e9 {t:.0f}")
        running = 4 if _in(t, VLLM_BATCH) else 0
        lines["vllm:num_requests_running"].append(
            f'vllm:num_requests_running{{model_name="qwen",job="vllm",instance="vllm:8000"}} {running} {t:.0f}')
    with path.open("w") as f:
        for name, ls in lines.items():
            f.write(f"# TYPE {name} gauge\n" + "\n".join(ls) + "\n")
        f.write("# EOF\n")


def ollama_log(loki_url):
    """Ollama answering a chat every 3 minutes until the hang, then nothing."""
    values = []
    for t in np.arange(START, OLLAMA_HANG[0], 180):
        values.append([str(int(t * 1e9)), '[GIN] 2026/09/21 - 10:00:00 | 200 |  2.1s |  172.18.0.3 | POST     "/api/chat"'])
    body = {"streams": [{"stream": {"job": "docker", "container": "ollama"}, "values": values}]}
    assert requests.post(loki_url + "/loki/api/v1/push", json=body, timeout=5).status_code == 204


@pytest.fixture(scope="module")
def prom(tmp_path_factory):
    work = tmp_path_factory.mktemp("context")
    write_history(work / "h.om")
    backfill_openmetrics(work / "h.om", work / "tsdb")
    with PrometheusServer(work / "prom", "global: {scrape_interval: 1h}\n", storage=work / "tsdb") as server:
        yield server


def plugin(prom_url, loki=None):
    cfg = parse_config({"prometheus": {"url": prom_url}, "inference": {"hold": "10m"},
                        "schedule": {"step": "60s", "context": "1h", "warmup": "1h"}})
    return ContextPlugin(cfg, PromClient(prom_url, retries=0, timeout=5), loki=loki)


def test_backtest_finds_the_vllm_hang_not_the_batch_nor_the_training_job(prom):
    part = plugin(prom.url).backtest(START, END, threshold=1.0)
    got = [(i["labels"].get("gpu"), i["start"]) for i in part.incidents]
    assert [g for g, _ in got] == ["1"], got  # GPU 0's Ollama has no metrics: unknown, nothing concluded
    inc = part.incidents[0]
    assert "no active requests" in inc["summary"] and "vllm: 0 requests running" in inc["summary"]
    from detector.timefmt import parse_rfc3339
    assert VLLM_HANG[0] + 9 * 60 <= parse_rfc3339(inc["start"]) <= VLLM_HANG[0] + 11 * 60


def test_sharded_the_hang_is_judged_by_the_one_shard_owning_its_gpu(prom):
    from detector.sharding import Shard

    found = []
    for i in range(2):
        cfg = parse_config({"inference": {"hold": "10m"}, "shard": f"{i}/2",
                            "schedule": {"step": "60s", "context": "1h", "warmup": "1h"}})
        p = ContextPlugin(cfg, PromClient(prom.url, retries=0, timeout=5))
        found.append([inc["labels"]["gpu"] for inc in p.backtest(START, END, threshold=1.0).incidents])
    owner = Shard(0, 2).owns({"uuid": GPUS["1"]})
    assert found == ([["1"], []] if owner else [[], ["1"]])


def test_live_scoring_reads_ollama_silence_from_its_request_log(prom):
    with LokiTestServer() as loki:
        ollama_log(loki.url)
        p = plugin(prom.url, LokiClient(loki.url, retries=0, timeout=5))
        batches = p.score(END).batches
    by_gpu = {b.labels["gpu"]: b for b in batches}
    gpu1 = by_gpu["1"]
    assert by_gpu["0"].score[-1] > 1 and (gpu1.score[gpu1.t >= VLLM_HANG[1]] == 0).all()
    assert (by_gpu["2"].score == 0).all()
    assert "ollama: no request lines in its log" in by_gpu["0"].explanation[0]
    # nothing new since: the next pass at the same time scores no point twice
    assert all(len(b.t) == 0 for b in p.score(END).batches)


def test_without_the_request_log_ollama_stays_unknown(prom):
    with LokiTestServer() as loki:  # Loki up, but Ollama's logs never shipped
        p = plugin(prom.url, LokiClient(loki.url, retries=0, timeout=5))
        batches = p.score(END).batches
    assert all((b.score == 0).all() for b in batches if b.labels["gpu"] == "0")


def test_prometheus_down_is_a_failed_pass_not_an_exception():
    p = plugin("http://127.0.0.1:9")
    assert p.score(END).ok is False


def test_the_detector_query_is_the_recording_rule_over_each_step():
    rules = open("prometheus/rules/recording.yml").read()
    assert "inference:requests_active:sum" in rules
    for part in ("vllm:num_requests_running", "llamacpp:requests_processing", "inference_requests_running"):
        assert part in rules and part in DEFAULT_REQUESTS_QUERY


def test_the_service_publishes_it(prom):
    from prometheus_client import CollectorRegistry

    from detector.metrics import DetectorCollector
    from detector.persistence import MemoryPersistence
    from detector.plugins import build_service
    from detector.store import ModelStore

    cfg = parse_config({"prometheus": {"url": prom.url, "retries": 0}, "inference": {"hold": "10m"},
                        "schedule": {"step": "60s"}})
    service = build_service(cfg, store=ModelStore(MemoryPersistence()), clock=lambda: END)
    assert NAME in service.detector_names()
    assert service.score()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DetectorCollector(lambda: service.snapshot, service.extra_families))
    gpu = {"gpu": "0", "uuid": "GPU-aaaa", "name": "card", "job": "exp", "instance": "box:9842"}
    # GPU 0 is pegged at the end, but its Ollama's activity is unknown here (no Loki): nothing said
    assert registry.get_sample_value("rigwatch_gpu_busy_without_requests", gpu) == 0.0
    assert registry.get_sample_value("rigwatch_anomaly_score", {**gpu, "detector": NAME, "model": "context"}) is None


def test_the_service_publishes_a_hang_and_lists_its_incident(prom):
    from prometheus_client import CollectorRegistry

    from detector.metrics import DetectorCollector
    from detector.persistence import MemoryPersistence
    from detector.plugins import build_service
    from detector.store import ModelStore

    with LokiTestServer() as loki:
        ollama_log(loki.url)
        cfg = parse_config({"prometheus": {"url": prom.url, "retries": 0}, "inference": {"hold": "10m"},
                            "loki": {"url": loki.url, "retries": 0}, "schedule": {"step": "60s"}})
        service = build_service(cfg, store=ModelStore(MemoryPersistence()), clock=lambda: END)
        assert service.score()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DetectorCollector(lambda: service.snapshot, service.extra_families))
    gpu = {"gpu": "0", "uuid": "GPU-aaaa", "name": "card", "job": "exp", "instance": "box:9842"}
    assert registry.get_sample_value("rigwatch_gpu_busy_without_requests", gpu) == 1.0
    assert registry.get_sample_value("rigwatch_gpu_busy_without_requests_seconds", gpu) == pytest.approx(
        OLLAMA_HANG[1] - OLLAMA_HANG[0] + STEP, abs=STEP)
    incidents = {i.labels["gpu"]: i for i in service.incidents() if i.detector == NAME}
    assert set(incidents) == {"0", "1"}  # the Ollama hang now, the vLLM one 40 min before (in the context)
    assert "no active requests" in incidents["0"].summary and "ollama: no request lines" in incidents["0"].summary


def test_the_incident_text_describes_the_longest_run_not_the_last_blip():
    """A batch holding a 30 min hang and, at its end, the first minute of another run: the text (the
    incident's summary is taken where the score peaks) says how long the hang lasted."""
    p = plugin("http://127.0.0.1:9")  # no query is made
    n = 40
    c = ctx([1.0] * n, {"vllm"})
    a = activity(n, vllm=("1" * n, "0" * n))
    flags = np.array([T] * 30 + [F] * 9 + [T])
    sc = run_seconds(flags, 60) / 600
    text = p._explain(c, a, {"vllm": ["qwen"]}, sc)
    assert "for 30 min" in text and "vllm: 0 requests running, holding qwen" in text, text
