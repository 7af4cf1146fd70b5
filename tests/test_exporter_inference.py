"""Inference servers as a signal, exporter side: the Ollama/ComfyUI parsers, the HTTP sources against a
real HTTP server (harness/fake_inference_api.py), the collector's `inference_*` families and the
exporter's flags."""
import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry, generate_latest

from exporter.cli import build_collector, build_parser, check_inference_urls, main
from exporter.collector import RigCollector
from exporter.inference import LoadedModel, ServerState, parse_comfyui_queue, parse_ollama_ps, parse_rfc3339
from exporter.inference_http import ComfyUISource, OllamaSource
from exporter.sim.fake_nvml import FakeGPU, FakeNVML
from harness.fake_inference_api import FakeInferenceAPI
from harness.processes import free_port

PROC = Path(__file__).parent / "fixtures" / "proc"
GIB = 1024**3

# An Ollama 0.5-era /api/ps answer: two models, one partly on the CPU (size_vram < size), Go's
# RFC3339Nano expiry (nanoseconds, Z and an offset), context_length only on the newer entry.
OLLAMA_PS = {"models": [
    {"name": "llama3.1:8b", "model": "llama3.1:8b", "size": 6_654_289_920,
     "digest": "46e0c10c039e019119339687c3c1757cc81b9da49709a3b3924863ba87ca666e",
     "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                 "parameter_size": "8.0B", "quantization_level": "Q4_K_M"},
     "expires_at": "2026-12-04T08:14:31.837530123Z", "size_vram": 6_654_289_920, "context_length": 8192},
    {"name": "qwen2.5:32b", "model": "qwen2.5:32b", "size": 24_000_000_000,
     "digest": "9f13ba1299af0f1a0b62d5c1f5b0d1e9d1a4d7c5f1e2b3c4d5e6f708192a3b4c",
     "details": {"format": "gguf", "family": "qwen2", "parameter_size": "32.8B", "quantization_level": "Q4_K_M"},
     "expires_at": "2026-12-04T09:14:31.5-07:00", "size_vram": 20_000_000_000},
]}
# `ollama run --keepalive -1`: the model never expires, which Ollama writes as Go's zero time... or far
# in the future depending on the version; the zero time must read as unknown, never as year 1.
OLLAMA_PINNED = {"models": [{"name": "nomic-embed-text:latest", "model": "nomic-embed-text:latest",
                             "size": 849_000_000, "size_vram": 849_000_000,
                             "expires_at": "0001-01-01T00:00:00Z"}]}
# ComfyUI /queue: each entry is [number, prompt_id, prompt, extra_data, outputs_to_execute].
COMFY_QUEUE = {"queue_running": [[7, "b1c2", {"3": {"class_type": "KSampler"}}, {"client_id": "x"}, ["9"]]],
               "queue_pending": [[8, "c3d4", {}, {}, ["9"]], [9, "d5e6", {}, {}, ["9"]]]}


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# ------------------------------------------------------------------ parsers


def test_ollama_ps_real_document():
    a, b = parse_ollama_ps(OLLAMA_PS)
    assert a == LoadedModel("llama3.1:8b", 6_654_289_920, 6_654_289_920,
                            epoch("2026-12-04T08:14:31.837530+00:00"), 8192)
    assert b.name == "qwen2.5:32b"
    assert b.vram_bytes < b.size_bytes  # spilled to CPU
    assert b.context_length is None  # not reported: unknown
    assert b.expires_at == pytest.approx(epoch("2026-12-04T16:14:31.5+00:00"))


def test_nanosecond_and_zero_times():
    # nanoseconds are cut to microseconds, not rounded into the next second or refused
    assert parse_rfc3339("2026-12-04T08:14:31.999999999Z") == pytest.approx(epoch("2026-12-04T08:14:31.999999+00:00"))
    assert parse_rfc3339("2026-12-04T08:14:31Z") == datetime(2026, 12, 4, 8, 14, 31, tzinfo=UTC).timestamp()
    assert parse_rfc3339("0001-01-01T00:00:00Z") is None
    assert parse_rfc3339("2026-12-04T08:14:31") is None  # no zone: ambiguous
    assert parse_rfc3339("tomorrow") is None
    (m,) = parse_ollama_ps(OLLAMA_PINNED)
    assert m.expires_at is None


def test_ollama_ps_without_size_vram_or_models():
    (m,) = parse_ollama_ps({"models": [{"model": "phi3:mini", "size": 100}]})
    assert (m.name, m.size_bytes, m.vram_bytes) == ("phi3:mini", 100, 100)
    assert parse_ollama_ps({"models": []}) == ()
    assert parse_ollama_ps({}) == ()


@pytest.mark.parametrize("doc", [[], "models", {"models": "x"}, {"models": [1]}, {"models": [{"name": "a"}]},
                                 {"models": [{"size": 1}]}])
def test_ollama_ps_wrong_shape_raises_value_error(doc):
    with pytest.raises(ValueError, match="Ollama"):
        parse_ollama_ps(doc)


def test_comfyui_queue():
    assert parse_comfyui_queue(COMFY_QUEUE) == (1, 2)
    assert parse_comfyui_queue({"queue_running": [], "queue_pending": []}) == (0, 0)
    for doc in ([], {"queue_running": 3}, {"queue_pending": {}}):
        with pytest.raises(ValueError, match="ComfyUI"):
            parse_comfyui_queue(doc)


# ------------------------------------------------------------------ HTTP sources, real server


@pytest.fixture
def api():
    with FakeInferenceAPI(ollama_ps=OLLAMA_PS, queue=COMFY_QUEUE) as a:
        yield a


def test_sources_up(api):
    seen = []
    session = requests.Session()
    session.hooks["response"].append(lambda r, *a, **kw: seen.append(r.url))
    ollama = OllamaSource(api.url + "/", session=session)  # a trailing slash is not doubled
    st = ollama.poll()
    assert st == ServerState("ollama", True, parse_ollama_ps(OLLAMA_PS), None, None)
    assert seen == [api.url + "/api/ps"]  # the injected session did the asking
    st = ComfyUISource(api.url, server="comfy-2").poll()
    assert st == ServerState("comfy-2", True, (), 1, 2)
    assert api.requests == ["/api/ps", "/queue"]


def test_connection_refused_is_down():
    st = OllamaSource(f"http://127.0.0.1:{free_port()}", timeout=1).poll()
    assert st == ServerState("ollama", up=False)


@pytest.mark.parametrize("mode", ["status", "garbage"])
def test_error_status_and_garbage_are_down(api, mode):
    api.answer_with(mode, 500)
    assert OllamaSource(api.url).poll() == ServerState("ollama", up=False)
    assert ComfyUISource(api.url).poll() == ServerState("comfyui", up=False)


def test_wrong_document_and_wrong_server_are_down(api):
    api.ollama_ps = {"models": "not a list"}
    assert not OllamaSource(api.url).poll().up
    api.ollama_ps = {"models": [{"name": "x", "size": float("inf")}]}  # JSON Infinity: no int
    assert not OllamaSource(api.url).poll().up
    api.queue = None  # /queue answers 404: this is not ComfyUI
    assert not ComfyUISource(api.url).poll().up


def test_hung_server_is_down_after_the_timeout(api):
    api.answer_with("hang")
    started = time.monotonic()
    st = ComfyUISource(api.url, timeout=0.3).poll()
    elapsed = time.monotonic() - started
    assert st == ServerState("comfyui", up=False)
    assert api.hung.is_set()  # it did reach the server and was held there
    assert elapsed < 5  # ~0.3 s; the server would have held it 60 s


def test_down_is_logged_once_per_transition_with_credentials_redacted(api, caplog):
    url = api.url.replace("http://", "http://admin:s3cret@")
    src = OllamaSource(url)
    with caplog.at_level(logging.INFO, logger="rigwatch.exporter.inference"):
        api.answer_with("status", 503)
        for _ in range(3):
            assert not src.poll().up
        api.answer_with("json")
        assert src.poll().up
        assert src.poll().up
        api.answer_with("garbage")
        assert not src.poll().up
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(warnings) == 2 and len(infos) == 1, caplog.text
    assert "HTTP 503" in warnings[0] and "is back" in infos[0]
    assert "s3cret" not in caplog.text and "admin:***@" in warnings[0]


# ------------------------------------------------------------------ collector


class StaticSource:
    """A source whose next answer the test sets (or an exception it raises)."""

    def __init__(self, server: str, state=None):
        self.server = server
        self.state = state if state is not None else ServerState(server, up=False)
        self.polls = 0

    def poll(self):
        self.polls += 1
        if isinstance(self.state, Exception):
            raise self.state
        return self.state


def make(sources, **kw):
    c = RigCollector(FakeNVML([FakeGPU()]), proc_root=PROC, inference_sources=sources, **kw)
    reg = CollectorRegistry()
    reg.register(c)
    return c, reg


def m(server, model):
    return {"server": server, "model": model}


def test_collector_families_from_the_cache():
    ollama = StaticSource("ollama", ServerState("ollama", True, parse_ollama_ps(OLLAMA_PS)))
    comfy = StaticSource("comfyui", ServerState("comfyui", True, (), 0, 3))
    c, reg = make([ollama, comfy])
    v = reg.get_sample_value
    assert v("inference_server_up", {"server": "ollama"}) is None  # never polled: unknown, not down
    c.refresh_inference()
    assert v("inference_server_up", {"server": "ollama"}) == 1
    assert v("inference_server_up", {"server": "comfyui"}) == 1
    assert v("inference_model_loaded", m("ollama", "llama3.1:8b")) == 1
    assert v("inference_model_loaded", m("ollama", "qwen2.5:32b")) == 1
    assert v("inference_model_size_bytes", m("ollama", "qwen2.5:32b")) == 24_000_000_000
    assert v("inference_model_vram_bytes", m("ollama", "qwen2.5:32b")) == 20_000_000_000
    assert v("inference_model_expires_timestamp_seconds", m("ollama", "llama3.1:8b")) == pytest.approx(
        epoch("2026-12-04T08:14:31.837530+00:00"))
    assert v("inference_model_context_length", m("ollama", "llama3.1:8b")) == 8192
    assert v("inference_model_context_length", m("ollama", "qwen2.5:32b")) is None  # unknown: left out
    # Ollama says nothing about requests: no series, never 0. ComfyUI's idle 0 is a real 0.
    assert v("inference_requests_running", {"server": "ollama"}) is None
    assert v("inference_requests_waiting", {"server": "ollama"}) is None
    assert v("inference_requests_running", {"server": "comfyui"}) == 0
    assert v("inference_requests_waiting", {"server": "comfyui"}) == 3
    assert v("inference_model_loaded", m("comfyui", "unknown")) is None
    assert v("gpu_exporter_read_errors_total", {"field": "inference"}) is None
    # scrapes read the cache only
    for _ in range(3):
        generate_latest(reg)
    assert (ollama.polls, comfy.polls) == (1, 1)


def test_a_server_going_down_drops_its_models_and_is_counted():
    ollama = StaticSource("ollama", ServerState("ollama", True, parse_ollama_ps(OLLAMA_PINNED)))
    c, reg = make([ollama])
    v = reg.get_sample_value
    c.refresh_inference()
    assert v("inference_model_loaded", m("ollama", "nomic-embed-text:latest")) == 1
    assert v("inference_model_expires_timestamp_seconds", m("ollama", "nomic-embed-text:latest")) is None
    ollama.state = ServerState("ollama", up=False)
    c.refresh_inference()
    c.refresh_inference()
    assert v("inference_server_up", {"server": "ollama"}) == 0
    assert v("inference_model_loaded", m("ollama", "nomic-embed-text:latest")) is None
    assert v("gpu_exporter_read_errors_total", {"field": "inference"}) == 2
    ollama.state = ServerState("ollama", True, ())  # back, nothing loaded
    c.refresh_inference()
    assert v("inference_server_up", {"server": "ollama"}) == 1
    assert "inference_model_loaded" not in generate_latest(reg).decode()


def test_a_raising_source_does_not_stop_the_others(caplog):
    broken = StaticSource("broken", RuntimeError("bug in a source"))
    comfy = StaticSource("comfyui", ServerState("comfyui", True, (), 2, 0))
    c, reg = make([broken, comfy])
    with caplog.at_level(logging.ERROR):
        c.refresh_inference()
    v = reg.get_sample_value
    assert v("inference_server_up", {"server": "broken"}) == 0
    assert v("inference_server_up", {"server": "comfyui"}) == 1
    assert v("inference_requests_running", {"server": "comfyui"}) == 2
    assert v("gpu_exporter_read_errors_total", {"field": "inference"}) == 1
    assert "bug in a source" in caplog.text


def test_model_listed_twice_is_one_series_and_server_names_are_unique():
    twice = parse_ollama_ps({"models": [{"name": "a", "size": 1}, {"name": "a", "size": 2}]})
    c, reg = make([StaticSource("ollama", ServerState("ollama", True, twice))])
    c.refresh_inference()
    assert reg.get_sample_value("inference_model_size_bytes", m("ollama", "a")) == 1
    with pytest.raises(ValueError, match="ollama"):
        make([StaticSource("ollama"), StaticSource("ollama")])


def test_http_sources_through_the_collector(api):
    c, reg = make([OllamaSource(api.url), ComfyUISource(f"http://127.0.0.1:{free_port()}", timeout=1)])
    c.refresh_inference()
    v = reg.get_sample_value
    assert v("inference_server_up", {"server": "ollama"}) == 1
    assert v("inference_model_vram_bytes", m("ollama", "llama3.1:8b")) == 6_654_289_920
    assert v("inference_server_up", {"server": "comfyui"}) == 0
    assert v("inference_requests_running", {"server": "comfyui"}) is None


class Watched:
    """Wraps a source and says when its poll has returned."""

    def __init__(self, source):
        self.server = source.server
        self.source = source
        self.returned = threading.Event()

    def poll(self):
        self.returned.clear()
        try:
            return self.source.poll()
        finally:
            self.returned.set()


def test_a_hung_server_never_holds_up_a_scrape(api):
    """The background poll is held by the server (which waits on an Event the test never sets before
    the scrape); the scrape answers from the cache while that poll is still in flight."""
    src = Watched(ComfyUISource(api.url, timeout=120))
    c, reg = make([src], inference_interval=3600)
    c.refresh_inference()  # a good first poll fills the cache
    api.answer_with("hang")
    c.start()  # the inference thread polls at once and gets stuck
    try:
        assert api.hung.wait(30), "the background poll never reached the server"
        text = generate_latest(reg).decode()
        assert not src.returned.is_set()  # the scrape finished while the poll was still held
        assert 'inference_server_up{server="comfyui"} 1.0' in text
        assert 'inference_requests_waiting{server="comfyui"} 2.0' in text
    finally:
        api.release()
        c.stop()


# ------------------------------------------------------------------ flags


def parse(*argv, environ=None):
    args = build_parser().parse_args(list(argv))
    return args, check_inference_urls(args, environ or {})


@pytest.mark.parametrize("argv, flag", [
    (["--ollama-url", "ftp://127.0.0.1:11434"], "--ollama-url"),
    (["--ollama-url", "localhost:11434"], "--ollama-url"),
    (["--comfyui-url", "http://"], "--comfyui-url"),
    (["--comfyui-url", "http://127.0.0.1:99999"], "--comfyui-url"),
    (["--backend", "sim", "--ollama-url", "http://127.0.0.1:11434"], "--ollama-url"),
    (["--backend", "sim", "--comfyui-url", "http://127.0.0.1:8188"], "--comfyui-url"),
    (["--inference-interval", "0"], "--inference-interval"),
])
def test_bad_flags_exit_2_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv, environ={})
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err


def test_bad_url_from_the_environment_names_flag_and_variable(capsys):
    with pytest.raises(SystemExit) as e:
        main([], environ={"RIGWATCH_COMFYUI_URL": "comfyui:8188"})
    assert e.value.code == 2
    assert "--comfyui-url (from $RIGWATCH_COMFYUI_URL)" in capsys.readouterr().err


def test_credentials_in_a_refused_url_are_redacted():
    _, error = parse("--ollama-url", "ftp://admin:s3cret@nas/ollama")
    assert error and "s3cret" not in error and "admin:***@" in error


def test_urls_flag_over_environment_and_sources_built():
    env = {"RIGWATCH_OLLAMA_URL": "http://env-ollama:11434", "RIGWATCH_COMFYUI_URL": "https://comfy.lan"}
    args, error = parse("--docker-url", "none", "--ollama-url", "http://127.0.0.1:11434",
                        "--inference-interval", "2.5", environ=env)
    assert error is None
    assert (args.ollama_url, args.comfyui_url) == ("http://127.0.0.1:11434", "https://comfy.lan")
    collector, box = build_collector(args)
    try:
        assert box is None
        assert [(type(s), s.server, s.url) for s in collector.inference_sources] == [
            (OllamaSource, "ollama", "http://127.0.0.1:11434"), (ComfyUISource, "comfyui", "https://comfy.lan")]
        assert collector.inference_interval == 2.5
    finally:
        collector.gpus.shutdown()


def test_default_is_off_and_sim_ignores_the_environment():
    args, error = parse("--docker-url", "none")
    assert error is None and (args.ollama_url, args.comfyui_url) == (None, None)
    args, error = parse("--backend", "sim", environ={"RIGWATCH_OLLAMA_URL": "http://127.0.0.1:11434"})
    assert error is None and args.ollama_url is None
