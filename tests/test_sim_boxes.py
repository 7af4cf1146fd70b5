"""The sim's box profiles and inference servers: the studio box, Ollama's /api/ps and ComfyUI's /queue
through the exporter's own parsers, the vLLM-like metrics through a registry, the hung kernel that
nobody is asking anything of, and the new look-alikes."""
import json
import re
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from exporter import cli as exporter_cli
from exporter.inference import parse_ollama_ps, parse_rfc3339
from exporter.sim import cli as sim_cli
from exporter.sim.box import SimBox
from exporter.sim.boxes import AIBOX, BOXES, STUDIO
from exporter.sim.schedule import parse_schedule
from exporter.sim.vllm import SimVLLMCollector

START = 1_793_520_000.0  # 2026-11-01T08:00:00Z (a Sunday)
VLLM_MODEL = STUDIO.vllm.model


def make(box, *items, seed=5, start=START, **kw):
    return SimBox(parse_schedule({"incidents": list(items)}, n_gpus=2), seed=seed, start=start, box=box,
                  journal_maxlen=None, **kw)


def vllm_registry(box):
    reg = CollectorRegistry()
    reg.register(SimVLLMCollector(box))
    return reg


def lines(entries, container, pattern, t0=0.0, t1=float("inf")):
    rx = re.compile(pattern)
    return [e for e in entries if e.get("CONTAINER_NAME") == container and rx.search(e["MESSAGE"])
            and t0 * 1e6 <= int(e["__REALTIME_TIMESTAMP"]) < t1 * 1e6]


def test_each_box_builds_with_its_own_cards_containers_and_host(closing):
    seen = {}
    for name in BOXES:
        box = make(name)
        closing(box)
        names = [g.name for g in box.nvml.gpus]
        containers = {c.name for c in box.container_source.snapshot()}
        box.advance_to(START + 3600)
        hosts = {e["_HOSTNAME"] for e in box.journal.drain()}
        seen[name] = (names, containers, hosts)
    assert seen["aibox"][0] == ["NVIDIA GeForce RTX 3090", "NVIDIA GeForce RTX 3060"]
    assert seen["studio"][0] == ["NVIDIA GeForce RTX 4090", "NVIDIA RTX A4000"]
    assert seen["aibox"][2] == {"aibox"} and seen["studio"][2] == {"studio"}
    assert {"vllm", "ollama", "librechat", "traefik", "qdrant", "n8n"} <= seen["studio"][1]
    assert seen["studio"][1] - {"ollama"} <= seen["studio"][1] - seen["aibox"][1], "other names than the aibox's"
    a4000 = STUDIO.specs[1]
    assert (a4000.fans, a4000.memory_total, a4000.power_limit_w) == (1, 16 * 2**30, 140.0)


def test_unknown_box_is_exit_2_naming_the_flag_and_listing_the_boxes(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        sim_cli.main(["history", "--out", str(tmp_path / "h"), "--box", "garage"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--box" in err and "aibox" in err and "studio" in err
    with pytest.raises(SystemExit) as e:
        sim_cli.main(["check-schedule", "--box", "garage"])
    assert e.value.code == 2
    assert exporter_cli.main(["--backend", "sim", "--box", "garage", "--listen", "127.0.0.1:0"]) == 2
    err = capsys.readouterr().err
    assert "--box" in err and "aibox, studio" in err and "Traceback" not in err


def test_check_schedule_validates_against_the_chosen_box(capsys, tmp_path):
    assert sim_cli.main(["check-schedule", "--box", "studio"]) == 0
    assert "batch_at_power_cap" in capsys.readouterr().out
    p = tmp_path / "s.yml"
    p.write_text("incidents:\n  - {kind: container_restart_loop, at: 1h, container: open-webui}\n")
    assert sim_cli.main(["check-schedule", str(p)]) == 0
    assert sim_cli.main(["check-schedule", str(p), "--box", "studio"]) == 2
    assert "incidents[0].container: unknown container 'open-webui'" in capsys.readouterr().err


GO_RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")


@pytest.mark.parametrize("name", ["aibox", "studio"])
def test_ollama_api_ps_is_ollamas_shape_and_the_shared_parser_reads_it(closing, name):
    box = make(name)
    closing(box)
    doc = box.ollama_api_ps()
    json.dumps(doc)  # plain JSON, servable as is
    (m,) = doc["models"]  # one model loaded from the first scrape
    warm = BOXES[name].warm_model
    assert set(m) == {"name", "model", "size", "digest", "details", "expires_at", "size_vram", "context_length"}
    assert m["name"] == m["model"] == warm and m["size_vram"] == m["size"] == BOXES[name].catalog[warm].size
    assert re.fullmatch(r"[0-9a-f]{64}", m["digest"]) and GO_RFC3339_NANO.match(m["expires_at"])
    assert set(m["details"]) == {"parent_model", "format", "family", "families", "parameter_size",
                                 "quantization_level"}
    (parsed,) = parse_ollama_ps(doc)
    assert (parsed.name, parsed.size_bytes, parsed.vram_bytes, parsed.context_length) == \
        (warm, m["size"], m["size"], 8192)
    assert box.t < parsed.expires_at == pytest.approx(parse_rfc3339(m["expires_at"]))
    (state,) = [s.poll() for s in box.inference_sources() if s.server == "ollama"]
    assert state.up and state.models == (parsed,) and state.requests_running is None
    # The digest is the model's, not the moment's: the same name gives the same digest on any box.
    other = make(name, seed=99)
    closing(other)
    assert other.ollama_api_ps()["models"][0]["digest"] == m["digest"]


def test_the_aibox_warm_model_leaves_before_the_first_chat_can_arrive(closing):
    for seed in range(6):
        box = make("aibox", seed=seed)
        closing(box)
        first_session = box.workload.next_session
        assert first_session >= START + 60
        box.advance_to(START + 55)
        assert box.ollama_api_ps() == {"models": []}
        assert box.workload.next_session == first_session, "no chat arrived while it was loaded"
        gpu1 = box.nvml.gpus[1].memory_used
        assert gpu1 < 2 * 2**30, "small enough never to cost power on the 3060"


def test_polling_the_servers_never_changes_what_the_box_plays(closing):
    quiet, polled = make("aibox", seed=8), make("aibox", seed=8)
    closing(quiet)
    closing(polled)
    for k in range(1, 13 * 12):
        t = START + 10 * 3600 + 300 * k
        quiet.advance_to(t)
        polled.advance_to(t)
        for s in polled.inference_sources():
            s.poll()
        polled.ollama_api_ps()
        polled.comfyui_queue()
        assert [g.power_usage_mw for g in quiet.nvml.gpus] == [g.power_usage_mw for g in polled.nvml.gpus]
    assert quiet.journal.drain() == polled.journal.drain()


def test_sources_say_down_while_the_box_is_off(closing):
    box = make("aibox", {"kind": "planned_reboot", "at": "10m", "duration": "5m"})
    closing(box)
    box.advance_to(START + 12 * 60)
    assert [(s.server, s.poll().up) for s in box.inference_sources()] == [("ollama", False), ("comfyui", False)]
    assert box.ollama_api_ps() is None and box.comfyui_queue() is None


def test_comfyui_queue_counts_running_and_pending_prompts_in_the_evening(closing):
    box = make("aibox", start=1_793_552_400.0)  # 2026-11-01T17:00:00Z: evening, weekend
    closing(box)
    (comfy,) = [s for s in box.inference_sources() if s.server == "comfyui"]
    seen = []
    for k in range(1, 7 * 60):
        box.advance_to(box.start_time + 60 * k)
        st = comfy.poll()
        assert st.up and st.models == ()
        seen.append((st.requests_running, st.requests_waiting))
        doc = box.comfyui_queue()
        assert all(len(item) == 5 and isinstance(item[1], str) for item in doc["queue_running"] + doc["queue_pending"])
    assert max(r for r, _ in seen) == 1, "ComfyUI renders one prompt at a time"
    assert max(w for _, w in seen) >= 2 and (0, 0) in seen


def test_vllm_families_through_a_registry(closing):
    box = make("studio", start=1_793_570_400.0)  # 2026-11-01T22:00:00Z: the night owl's peak
    closing(box)
    reg = vllm_registry(box)
    label = {"model_name": VLLM_MODEL}
    assert reg.get_sample_value("vllm:num_requests_running", label) == 0  # up from the first scrape
    running, totals = [], []
    for k in range(1, 121):
        box.advance_to(box.start_time + 30 * k)
        running.append(reg.get_sample_value("vllm:num_requests_running", label))
        assert reg.get_sample_value("vllm:num_requests_waiting", label) >= 0
        assert 0 <= reg.get_sample_value("vllm:kv_cache_usage_perc", label) <= 1
        totals.append((reg.get_sample_value("vllm:prompt_tokens_total", label),
                       reg.get_sample_value("vllm:generation_tokens_total", label)))
    assert max(running) >= 2 and min(running) == 0, "bursty: busy and idle within an hour"
    assert totals == sorted(totals) and totals[-1][0] > totals[0][0] > 0 and totals[-1][1] > 0
    entries = box.journal.drain()
    assert len(lines(entries, "vllm", r'^INFO:     172\.19\.0\.\d+:\d+ - "POST /v1/chat/completions HTTP/1\.1" '
                                       r'200 OK$')) > 20
    stats = lines(entries, "vllm", r"Avg prompt throughput: [\d.]+ tokens/s, Avg generation throughput: [\d.]+ "
                                   r"tokens/s, Running: \d+ reqs, Swapped: 0 reqs, Pending: \d+ reqs, GPU KV cache "
                                   r"usage: [\d.]+%")
    gaps = {round((int(b["__REALTIME_TIMESTAMP"]) - int(a["__REALTIME_TIMESTAMP"])) / 1e6)
            for a, b in zip(stats, stats[1:], strict=False)}
    assert stats and min(gaps) == 10, "every ~10 s while busy"
    # The vLLM GPU holds ~90 % of its memory from the first scrape, in the vllm container's process.
    assert box.nvml.gpus[0].memory_used / box.nvml.gpus[0].memory_total == pytest.approx(0.90, abs=0.01)


def test_a_box_without_vllm_has_no_vllm_families(closing):
    box = make("aibox")
    closing(box)
    box.advance_to(START + 600)
    assert list(vllm_registry(box).collect()) == []


def test_hung_kernel_on_the_vllm_card_no_requests_while_it_stays_pegged(closing):
    box = make("studio", {"kind": "gpu_stuck", "at": "30m", "duration": "40m", "gpu": 0},
               start=1_793_570_400.0)
    closing(box)
    reg = vllm_registry(box)
    label = {"model_name": VLLM_MODEL}
    t0, t1 = box.start_time + 1800, box.start_time + 1800 + 2400
    box.advance_to(t0 - 5)
    before = box.journal.drain()
    assert lines(before, "vllm", "POST /v1/chat/completions"), "answering before the hang"
    gen0 = reg.get_sample_value("vllm:generation_tokens_total", label)
    for k in range(1, 40):
        box.advance_to(t0 + 60 * k)
        assert box.nvml.gpus[0].utilization_gpu == 100
        assert reg.get_sample_value("vllm:num_requests_running", label) == 0
        assert reg.get_sample_value("vllm:num_requests_waiting", label) == 0
    assert reg.get_sample_value("vllm:generation_tokens_total", label) == gen0
    during = box.journal.drain()
    assert not lines(during, "vllm", "POST /v1/chat/completions|Avg prompt throughput", t0, t1)
    box.advance_to(t1 + 1800)
    assert lines(box.journal.drain(), "vllm", "POST /v1/chat/completions"), "answering again after it"


@pytest.mark.parametrize("name,gpu", [("aibox", 0), ("aibox", 1), ("studio", 1)])
def test_hung_kernel_on_an_ollama_card_nothing_reaches_it(closing, name, gpu):
    start = 1_793_556_000.0  # 2026-11-01T18:00:00Z: busy on both boxes, ComfyUI's evening
    box = make(name, {"kind": "gpu_stuck", "at": "20m", "duration": "60m", "gpu": gpu}, start=start, seed=2)
    closing(box)
    t0, t1 = start + 1200, start + 1200 + 3600
    box.advance_to(t0 + 60)
    for k in range(2, 60):
        box.advance_to(t0 + 60 * k)
        assert box.nvml.gpus[gpu].utilization_gpu == 100
        assert not [j for j in box.workload.jobs if j.gpu == gpu and j.start >= t0 + 30], "no work reaches it"
        for s in box.inference_sources():
            st = s.poll()
            if st.server == "comfyui" and gpu == BOXES[name].comfy_gpu:
                assert st.requests_running == 0 and st.requests_waiting == 0
    # The same seed without the hang: work does reach that card in that hour.
    control = make(name, start=start, seed=2)
    closing(control)
    reached = set()
    for k in range(2, 60):
        control.advance_to(t0 + 60 * k)
        reached |= {j.start for j in control.workload.jobs if j.gpu == gpu and j.start >= t0 + 30}
    assert len(reached) >= 3
    models_there = {m.name for m in BOXES[name].catalog.values() if m.gpu == gpu}
    assert {m["name"] for m in box.ollama_api_ps()["models"]} & models_there, "the wedged runner holds its model"
    if name == "studio":  # all of the studio's Ollama models live on that card: no answer at all
        assert not lines(box.journal.drain(), "ollama", r"\[GIN\] .* \| 200 \|", t0, t1)


def test_batch_at_power_cap_runs_requests_at_the_cap(closing):
    box = make("studio", {"kind": "batch_at_power_cap", "at": "10m", "duration": "2h", "gpu": 0, "concurrency": 24},
               start=START + 4 * 3600)  # 12:00 UTC, quiet hours for the night owl
    closing(box)
    reg = vllm_registry(box)
    label = {"model_name": VLLM_MODEL}
    spec = STUDIO.specs[0]
    samples = []
    for k in range(1, 24):
        box.advance_to(box.start_time + 900 + 300 * k)
        samples.append((box.nvml.gpus[0].power_usage_mw / 1000, box.nvml.gpus[0].utilization_gpu,
                        reg.get_sample_value("vllm:num_requests_running", label)))
    assert all(p >= 0.95 * spec.power_limit_w and u >= 90 and r > 0 for p, u, r in samples), samples
    done = lines(box.journal.drain(), "vllm", "POST /v1/chat/completions", box.start_time + 900)
    assert len(done) > 1000, "completions stream out the whole time"


def test_model_swaps_and_a_busy_request_log(closing):
    box = make("studio", {"kind": "model_swaps", "at": "1h", "duration": "1h", "gpu": 1, "every": "90s"},
               {"kind": "busy_request_log", "at": "3h", "duration": "30m", "gpu": 0, "rate_per_min": 60},
               start=START + 4 * 3600)
    closing(box)
    box.advance_to(box.start_time + 3600)
    quiet = box.journal.drain()
    box.advance_to(box.start_time + 7200)
    swaps = box.journal.drain()
    loads = lambda es: len(lines(es, "ollama", "starting llama server"))  # noqa: E731
    assert loads(swaps) >= 15 and loads(swaps) > 3 * loads(quiet)
    box.advance_to(box.start_time + 3 * 3600)
    before = len(lines(box.journal.drain(), "vllm", "POST /v1/chat/completions", box.start_time + 9000))
    box.advance_to(box.start_time + 3 * 3600 + 1800)
    burst = len(lines(box.journal.drain(), "vllm", "POST /v1/chat/completions"))
    assert burst >= 1200 and burst > 5 * max(1, before)


def test_big_model_load_fills_the_a4000_to_about_94_percent(closing):
    box = make("studio", {"kind": "big_model_load", "at": "10m", "duration": "30m", "gpu": 1,
                          "model": "qwen2.5:32b-instruct-q3_K_S"})
    closing(box)
    box.advance_to(box.start_time + 1200)
    g = box.nvml.gpus[1]
    assert g.memory_used / g.memory_total == pytest.approx(0.94, abs=0.015)
    assert "qwen2.5:32b-instruct-q3_K_S" in {m["name"] for m in box.ollama_api_ps()["models"]}


def test_studio_is_deterministic_per_seed(closing):
    def play(seed):
        box = make("studio", {"kind": "batch_at_power_cap", "at": "1h", "duration": "30m", "gpu": 0}, seed=seed)
        closing(box)
        reg = vllm_registry(box)
        out = []
        for k in range(1, 48):
            box.advance_to(START + 300 * k)
            out.append(([(g.power_usage_mw, g.memory_used, g.utilization_gpu) for g in box.nvml.gpus],
                        box.ollama_api_ps(), [(m.name, [s.value for s in m.samples]) for m in reg.collect()]))
        return out, box.journal.drain()
    assert play(4) == play(4)
    assert play(4) != play(5)


def test_studio_history_has_vllm_families_and_says_its_box(tmp_path):
    out = tmp_path / "h"
    assert sim_cli.main(["history", "--out", str(out), "--box", "studio", "--days", "0.05", "--seed", "2",
                         "--start", "2026-11-01T20:00:00Z"]) == 0
    truth = json.loads((out / "truth.json").read_text())
    assert truth["box"] == "studio" and truth["instance"] == "studio:9842"
    text = (out / "metrics.om").read_text()
    for fam in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert f"# TYPE {fam} gauge" in text
    assert "# TYPE vllm:prompt_tokens counter" in text and "vllm:generation_tokens_total{model_name=" in text
    assert 'name="NVIDIA RTX A4000"' in text
    assert datetime.fromisoformat(truth["start"].replace("Z", "+00:00")) == datetime(2026, 11, 1, 20, tzinfo=UTC)
    assert sim_cli.main(["history", "--out", str(tmp_path / "a"), "--days", "0.01"]) == 0
    truth = json.loads((tmp_path / "a" / "truth.json").read_text())
    assert (truth["box"], truth["instance"]) == (AIBOX.name, "aibox:9842")
    assert "vllm:" not in (tmp_path / "a" / "metrics.om").read_text()


def test_the_documents_served_over_real_http_read_back_the_same(closing):
    """A fake Ollama/ComfyUI over real HTTP answers with the box's documents, as a real one would."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import requests

    from exporter.inference import parse_comfyui_queue
    from harness.server_thread import ServerThread

    box = make("aibox", start=1_793_552_400.0)
    closing(box)
    routes = {"/api/ps": box.ollama_api_ps, "/queue": box.comfyui_queue}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = json.dumps(routes[self.path]()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with ServerThread(server, "fake-ollama"):
        url = f"http://127.0.0.1:{server.server_address[1]}"
        for k in range(1, 60):
            box.advance_to(box.start_time + 120 * k)
            ps = requests.get(url + "/api/ps", timeout=5).json()
            assert parse_ollama_ps(ps) == next(s for s in box.inference_sources() if s.server == "ollama").poll().models
            q = requests.get(url + "/queue", timeout=5).json()
            st = next(s for s in box.inference_sources() if s.server == "comfyui").poll()
            assert parse_comfyui_queue(q) == (st.requests_running, st.requests_waiting)


@pytest.mark.parametrize("name", ["aibox", "studio"])
def test_the_collector_publishes_the_sims_inference_series_from_the_first_scrape(closing, name):
    from exporter.collector import RigCollector

    box = make(name)
    closing(box)
    collector = RigCollector(box.nvml, container_source=box.container_source, proc_root=box.proc_root,
                             clock=lambda: box.t, inference_sources=box.inference_sources())
    reg = CollectorRegistry()
    reg.register(collector)
    collector.refresh_inference()
    warm = BOXES[name].warm_model
    assert reg.get_sample_value("inference_server_up", {"server": "ollama"}) == 1
    assert reg.get_sample_value("inference_model_loaded", {"server": "ollama", "model": warm}) == 1
    assert reg.get_sample_value("inference_model_vram_bytes", {"server": "ollama", "model": warm}) == \
        BOXES[name].catalog[warm].size
    assert reg.get_sample_value("inference_requests_running", {"server": "ollama"}) is None, "unknown, never 0"
    comfy = reg.get_sample_value("inference_requests_running", {"server": "comfyui"})
    assert comfy == (0 if name == "aibox" else None)
