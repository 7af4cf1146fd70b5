"""What the GPUs hold (detector/context/workload.py): model loads and unloads per GPU as context events
on literal series, what they fold, and the plugin naming the workload of incidents against a real
Prometheus holding backfilled history."""
from __future__ import annotations

import numpy as np
import pytest

from detector.config import ConfigError, parse_config
from detector.context.config import DEFAULT_MODEL_CHANGE_EXPLAINS, InferenceConfig
from detector.context.events import fold
from detector.context.plugin import ContextPlugin
from detector.context.workload import change_events, describe, gpu_workloads, model_changes
from detector.promclient import PromClient, Series
from detector.timefmt import iso, parse_rfc3339
from harness.processes import backfill_openmetrics
from harness.servers import PrometheusServer

GIB = 1024**3
STEP = 60.0
CFG = InferenceConfig()
NAN = np.nan


def series(values, **labels):
    """One Series on the grid 0, 60, ...: a value per step, None where absent."""
    t = np.array([i * STEP for i, v in enumerate(values) if v is not None])
    return Series(labels, t, np.array([v for v in values if v is not None], float))


def grid(n):
    return np.arange(n) * STEP


def work(name, gpu, values, instance="box:9842"):
    return series(values, workload=name, gpu=gpu, uuid=f"GPU-{gpu}", name=f"card {gpu}", instance=instance)


def model(name, values, server="ollama", instance="box:9842"):
    return series(values, server=server, model=name, instance=instance)


def up(n, server="ollama", instance="box:9842", values=None):
    return series(values or [1] * n, server=server, instance=instance)


def changes(models, workloads, ups, n=6):
    return [(c.t, c.uuid, c.server, c.model, c.action) for c in
            model_changes(grid(n), models, ups, workloads, CFG.server_for)]


# -- model changes on literal series --------------------------------------------------------------------
def test_a_load_is_a_change_on_the_card_its_server_holds():
    w = [work("ollama", "1", [0.4 * GIB] * 3 + [7 * GIB] * 3)]
    m = [model("qwen2.5:32b", [None] * 3 + [6.5 * GIB] * 3)]
    assert changes(m, w, [up(6)]) == [(180.0, "GPU-1", "ollama", "qwen2.5:32b", "loaded")]
    (ev,) = change_events(model_changes(grid(6), m, [up(6)], w, CFG.server_for), step=STEP, settle=300,
                          explains=DEFAULT_MODEL_CHANGE_EXPLAINS)
    assert (ev.kind, ev.start, ev.end) == ("model_change", 120.0, 480.0)
    assert ev.scope == {"uuid": "GPU-1", "host": "box"} and ev.summary == "ollama loaded qwen2.5:32b on GPU 1 (card 1)"
    assert "gpu_memory_growth" in ev.detectors and not {"gpu_xid", "gpu_thermal"} & ev.detectors


def test_an_unload_and_a_big_vram_move_are_changes_a_small_one_is_not():
    w = [work("ollama", "0", [7 * GIB, 7 * GIB, 10 * GIB, 10 * GIB, 10 * GIB, 0.3 * GIB])]
    m = [model("llama3.1:8b", [6 * GIB, 6.2 * GIB, 9 * GIB, 9 * GIB, 9 * GIB, None])]
    assert changes(m, w, [up(6)]) == [(120.0, "GPU-0", "ollama", "llama3.1:8b", "resized"),
                                      (300.0, "GPU-0", "ollama", "llama3.1:8b", "unloaded")]
    (ev,) = change_events(model_changes(grid(6), m, [up(6)], w, CFG.server_for), step=STEP, settle=300,
                          explains=DEFAULT_MODEL_CHANGE_EXPLAINS)
    assert ev.summary == "ollama resized llama3.1:8b (9.0 GiB) and unloaded llama3.1:8b on GPU 0 (card 0)"


def test_a_server_that_stops_answering_unloads_nothing():
    w = [work("ollama", "0", [7 * GIB] * 6)]
    m = [model("llama3.1:8b", [6 * GIB] * 2 + [None] * 2 + [6 * GIB] * 2)]
    assert changes(m, w, [up(6, values=[1, 1, 0, 0, 1, 1])]) == []
    assert changes(m, w, []) == []  # no inference_server_up at all: nothing read


def test_two_servers_on_one_gpu_each_change_is_its_own_servers():
    w = [work("ollama", "0", [1 * GIB] * 2 + [6 * GIB] * 4), work("vllm-openai", "0", [20 * GIB] * 6)]
    m = [model("llama3.1:8b", [None] * 2 + [5 * GIB] * 4)]
    got = model_changes(grid(6), m, [up(6)], w, CFG.server_for)
    assert [(c.uuid, c.server, c.action) for c in got] == [("GPU-0", "ollama", "loaded")]
    # at an instant: both workloads, vLLM with its model and requests, Ollama's requests unknown
    at = [Series(s.labels, s.t[-1:], s.y[-1:]) for s in w]
    held = gpu_workloads("GPU-0", at, [Series({"server": "ollama", "model": "llama3.1:8b", "instance": "box:9842"},
                                              np.array([0.0]), np.array([5.0 * GIB])),
                                       Series({"server": "vllm", "model": "Qwen2.5-7B"}, np.array([0.0]),
                                              np.array([3.0]))],
                         [Series({"server": "vllm"}, np.array([0.0]), np.array([3.0]))], CFG.server_for,
                         min_bytes=512 * 1024**2, instance="box:9842")
    assert [(h["workload"], h["server"], h["models"], h["requests"]) for h in held] == [
        ("vllm-openai", "vllm", ["Qwen2.5-7B"], 3), ("ollama", "ollama", ["llama3.1:8b"], None)]
    assert describe(held, 0) == ("on the GPU: vllm-openai (vllm) serving Qwen2.5-7B (3 requests), "
                                 "ollama serving llama3.1:8b, no model change during it")


def test_ollama_over_two_cards_a_change_lands_where_its_memory_moved():
    # a big model spread over both cards: memory moves on both -> an event on each
    w = [work("ollama", "0", [0.3 * GIB] * 3 + [11 * GIB] * 3), work("ollama", "1", [0.3 * GIB] * 3 + [8 * GIB] * 3)]
    m = [model("llama3.3:70b", [None] * 3 + [18 * GIB] * 3)]
    assert [c[1] for c in changes(m, w, [up(6)])] == ["GPU-0", "GPU-1"]
    # a small model on card 1 only, the big one holding card 0 unchanged: only card 1
    w = [work("ollama", "0", [11 * GIB] * 6), work("ollama", "1", [0.3 * GIB] * 3 + [6 * GIB] * 3)]
    m = [model("llama3.1:8b", [None] * 3 + [5.5 * GIB] * 3)]
    assert [c[1] for c in changes(m, w, [up(6)])] == ["GPU-1"]


def test_changes_closer_than_settle_are_one_event_and_a_leak_past_it_stays_an_incident():
    w = [work("ollama", "1", [6 * GIB] * 3 + [0.3 * GIB] + [7 * GIB] * 8)]
    m = [model("gemma2:9b", [6 * GIB] * 3 + [None] * 9), model("phi4:14b", [None] * 4 + [10 * GIB] * 8)]
    cs = model_changes(grid(12), m, [up(12)], w, CFG.server_for)
    (ev,) = change_events(cs, step=STEP, settle=300, explains=DEFAULT_MODEL_CHANGE_EXPLAINS)
    assert ev.summary == "ollama unloaded gemma2:9b and loaded phi4:14b on GPU 1 (card 1)"
    assert [(c["at"], c["action"], c["model"]) for c in ev.details["changes"]] == [
        ("1970-01-01T00:03:00Z", "unloaded", "gemma2:9b"), ("1970-01-01T00:04:00Z", "loaded", "phi4:14b")]
    assert (ev.start, ev.end) == (120.0, 540.0)

    def inc(detector, start, end, uuid="GPU-1"):
        return {"id": f"{detector}@{start}", "detector": detector, "start": start, "end": end, "summary": "x",
                "series_labels": {"uuid": uuid, "instance": "box:9842"}}
    items = [inc("gpu_memory_growth", 240, 480),  # the load's step: explained
             inc("gpu_workload_memory_growth", 240, 1800),  # a climb running on past the window: a leak
             inc("gpu_joint", 200, 400, uuid="GPU-0"),  # another card
             inc("gpu_xid", 240, 300)]  # hardware: never a load's doing
    kept, (out,) = fold(items, [ev], step=STEP)
    assert [i["id"] for i in kept] == ["gpu_workload_memory_growth@240", "gpu_joint@200", "gpu_xid@240"]
    assert [x["id"] for x in out["explains"]] == ["gpu_memory_growth@240"]


@pytest.mark.parametrize("section, key", [
    ({"model_change_settle": "2h"}, "inference.model_change_settle"),
    ({"model_change_settle": "0s"}, "inference.model_change_settle"),
    ({"model_change_explains": []}, "inference.model_change_explains"),
    ({"model_change_explains": ["gpu-joint"]}, "inference.model_change_explains[0]"),
])
def test_bad_model_change_keys_name_themselves(section, key):
    with pytest.raises(ConfigError) as e:
        parse_config({"inference": section})
    assert str(e.value).startswith(key)


def test_model_change_keys_read():
    got = parse_config({"inference": {"model_change_settle": "2m", "model_change_explains": ["gpu_joint"]}}).inference
    assert got.model_change_settle == 120 and got.model_change_explains == frozenset({"gpu_joint"})


# -- the plugin on a real Prometheus ------------------------------------------------------------------
END = 1_790_000_040.0  # on the 60 s grid
START = END - 90 * 60
LOAD = START + 45 * 60  # Ollama loads a model on GPU 1
JOB = 'job="exp",instance="box:9842"'


def write_history(path):
    lines: dict[str, list[str]] = {k: [] for k in ("gpu_workload_memory_used_bytes", "inference_server_up",
                                                   "inference_model_vram_bytes", "vllm:num_requests_running")}
    for t in np.arange(START, END + 1, STEP):
        ollama = 7 * GIB if t >= LOAD else 0.4 * GIB
        for gpu, workload, used in (("0", "vllm", 20 * GIB), ("0", "Xorg", 0.2 * GIB), ("1", "ollama", ollama),
                                    ("2", "ollama", 9 * GIB)):  # the same Ollama holding another model on card 2
            lab = f'gpu="{gpu}",uuid="GPU-{gpu}",name="card {gpu}",workload="{workload}",workload_kind="container",{JOB}'
            lines["gpu_workload_memory_used_bytes"].append(f"gpu_workload_memory_used_bytes{{{lab}}} {used:.0f} {t:.0f}")
        lines["inference_server_up"].append(f'inference_server_up{{server="ollama",{JOB}}} 1 {t:.0f}')
        lines["inference_model_vram_bytes"].append(
            f'inference_model_vram_bytes{{server="ollama",model="llama3.1:8b",{JOB}}} {8.5 * GIB:.0f} {t:.0f}')
        if t >= LOAD:
            lines["inference_model_vram_bytes"].append(
                f'inference_model_vram_bytes{{server="ollama",model="qwen2.5:32b",{JOB}}} {6.5 * GIB:.0f} {t:.0f}')
        lines["vllm:num_requests_running"].append(
            f'vllm:num_requests_running{{model_name="Qwen2.5-7B",job="vllm",instance="vllm:8000"}} 3 {t:.0f}')
    with path.open("w") as f:
        for name, ls in lines.items():
            f.write(f"# TYPE {name} gauge\n" + "\n".join(ls) + "\n")
        f.write("# EOF\n")


@pytest.fixture(scope="module")
def prom(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("workload")
    write_history(work_dir / "h.om")
    backfill_openmetrics(work_dir / "h.om", work_dir / "tsdb")
    with PrometheusServer(work_dir / "prom", "global: {scrape_interval: 1h}\n", storage=work_dir / "tsdb") as server:
        yield server


class CountingClient(PromClient):
    """The real client, counting the instant queries it sends (the annotation cache's test)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.instant = 0

    def query(self, promql, at=None):
        self.instant += 1
        return super().query(promql, at)


def plugin(url):
    cfg = parse_config({"prometheus": {"url": url}, "inference": {"model_change_settle": "5m"},
                        "schedule": {"step": "60s", "context": "1h", "warmup": "10m"}})
    return ContextPlugin(cfg, CountingClient(url, retries=0, timeout=5))


def incident(detector, uuid, start, end, gpu):
    return {"id": f"{detector}-{uuid}", "detector": detector, "start": iso(start), "end": iso(end),
            "peak_time": iso(end), "summary": f"{detector} on GPU {gpu}",
            "series_labels": {"gpu": gpu, "uuid": uuid, "instance": "box:9842", "job": "exp"}}


def test_backtest_and_live_scoring_see_the_load_as_an_event(prom):
    p = plugin(prom.url)
    p.backtest(START, END, threshold=1.0)
    (ev,) = p.context_events(START, END)
    assert ev.summary == "ollama loaded qwen2.5:32b on GPU 1 (card 1)" and ev.start == LOAD - STEP
    assert ev.scope == {"uuid": "GPU-1", "host": "box"}
    assert p.context_events(START, LOAD - 10 * 60) == []  # a range before it: none
    live = plugin(prom.url)
    live.score(LOAD + 10 * 60)  # the first pass looks back `context` (1h): the load is in it
    assert [e.summary for e in live.context_events(LOAD - 3600, LOAD + 3600)] == [ev.summary]
    # step by step, the load read in the pass that first sees it: on card 1, where Ollama's memory
    # moved, not card 2, where the same server holds its other model unchanged
    step_by_step = plugin(prom.url)
    for t in np.arange(LOAD - 3 * STEP, LOAD + 3 * STEP, STEP):
        step_by_step.score(t)
    assert [e.scope["uuid"] for e in step_by_step.context_events(START, END)] == ["GPU-1"]


def test_annotate_names_the_workload_and_the_model_changes_once_per_incident(prom):
    p = plugin(prom.url)
    during = incident("gpu_memory_growth", "GPU-1", LOAD - 20 * 60, LOAD + 20 * 60, "1")
    steady = incident("gpu_thermal", "GPU-0", START + 10 * 60, START + 30 * 60, "0")
    other = {"id": "c", "detector": "container_restarts", "start": iso(START), "end": iso(END),
             "summary": "restarts", "series_labels": {"container": "x"}}
    p.annotate([during, steady, other], to_time=parse_rfc3339)
    assert steady["workload"] == [{"workload": "vllm", "server": "vllm", "memory_bytes": 20 * GIB,
                                   "models": ["Qwen2.5-7B"], "requests": 3}]  # Xorg's 200 MiB: no workload
    assert steady["model_changes"] == 0
    assert steady["summary"] == "gpu_thermal on GPU 0; on the GPU: vllm serving Qwen2.5-7B (3 requests), no model change during it"
    # a model has no GPU label: a server's models are listed on every card it holds memory on
    assert during["model_changes"] == 1 and during["workload"][0]["models"] == ["llama3.1:8b", "qwen2.5:32b"]
    assert during["summary"].endswith("on the GPU: ollama serving llama3.1:8b, qwen2.5:32b, 1 model change during it")
    assert "workload" not in other and other["summary"] == "restarts"
    # the live API hands fresh dicts on every GET: the same incident is not asked of Prometheus again
    asked = p.client.instant
    again = incident("gpu_thermal", "GPU-0", START + 10 * 60, START + 30 * 60, "0")
    p.annotate([again], to_time=parse_rfc3339)
    assert p.client.instant == asked and again["summary"] == steady["summary"]


def test_annotate_with_prometheus_down_leaves_incidents_as_they_were():
    p = plugin("http://127.0.0.1:9")
    items = [incident("gpu_thermal", "GPU-0", END - 600, END, "0")]
    before = [dict(i) for i in items]
    p.annotate(items, to_time=parse_rfc3339)
    assert items == before
    assert p.context_events(0, END) == [] and p.score(END).ok is False
