"""Incident schedule parsing: durations, strict validation naming the key, the packaged default."""
import pytest
import yaml

from exporter.sim.containers import NAMES
from exporter.sim.schedule import KINDS, ScheduleError, load_schedule, parse_duration, parse_schedule


@pytest.mark.parametrize("text,seconds", [("45m", 2700), ("2d5h", 190800), ("1h30m15s", 5415),
                                          ("500ms", 0.5), (90, 90), ("1.5h", 5400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "m5", "5 m x", "-3", True, None, "1h-5m"])
def test_parse_duration_rejects(text):
    with pytest.raises(ScheduleError, match="^at:"):
        parse_duration(text, "at")


def _one(**item):
    return parse_schedule({"incidents": [item]}, n_gpus=2, containers=set(NAMES))


@pytest.mark.parametrize("item,key", [
    ({"kind": "fan_falure", "at": "1h", "gpu": 0}, r"incidents\[0\]\.kind: unknown kind 'fan_falure'"),
    ({"kind": "fan_failure", "gpu": 0}, r"incidents\[0\]\.at: missing"),
    ({"kind": "fan_failure", "at": "1h"}, r"incidents\[0\]\.gpu: required"),
    ({"kind": "fan_failure", "at": "1h", "gpu": 2}, r"incidents\[0\]\.gpu: expected a GPU index 0\.\.1"),
    ({"kind": "fan_failure", "at": "1h", "gpu": "0"}, r"incidents\[0\]\.gpu:"),
    ({"kind": "fan_failure", "at": "1x", "gpu": 0}, r"incidents\[0\]\.at: expected a duration"),
    ({"kind": "fan_failure", "at": "1h", "gpu": 0, "duration": "0s"}, r"incidents\[0\]\.duration: must be positive"),
    ({"kind": "fan_failure", "at": "1h", "gpu": 0, "speed": 3}, r"incidents\[0\]\.speed: not a key of fan_failure"),
    ({"kind": "container_restart_loop", "at": "1h"}, r"incidents\[0\]\.container: required"),
    ({"kind": "container_restart_loop", "at": "1h", "container": "olama"},
     r"incidents\[0\]\.container: unknown container 'olama'"),
    ({"kind": "container_restart_loop", "at": "1h", "container": "ollama", "period": "soon"},
     r"incidents\[0\]\.period: expected a duration"),
    ({"kind": "degraded_cooling", "at": "1h", "gpu": 1, "factor": "big"}, r"incidents\[0\]\.factor: expected float"),
    ({"kind": "ssh_scanner_noise", "at": "1h", "attempts": 0}, r"incidents\[0\]\.attempts: must be positive"),
    ({"kind": "vram_leak", "at": "1h", "gpu": 0, "container": "redis"}, r"incidents\[0\]\.container:"),
])
def test_validation_errors_name_the_key(item, key):
    with pytest.raises(ScheduleError, match=key):
        _one(**item)


def test_top_level_errors_name_the_key():
    with pytest.raises(ScheduleError, match="^incident: unknown top-level key"):
        parse_schedule({"incident": []})
    with pytest.raises(ScheduleError, match=r"^incidents: expected a list"):
        parse_schedule({"incidents": {"kind": "gpu_lost"}})
    with pytest.raises(ScheduleError, match=r"^incidents\[1\]: expected a mapping"):
        parse_schedule({"incidents": [{"kind": "planned_reboot", "at": "1h"}, "gpu_lost"]})


def test_bad_yaml_file_is_a_schedule_error(tmp_path):
    p = tmp_path / "s.yml"
    p.write_text("incidents: [\n")
    with pytest.raises(ScheduleError, match="not valid YAML"):
        load_schedule(p)
    with pytest.raises(ScheduleError, match="cannot read"):
        load_schedule(tmp_path / "missing.yml")


def test_labels_and_defaults():
    inc = _one(kind="vram_leak", at="2d5h", gpu=1, container="ollama")[0]
    assert inc.at == 2 * 86400 + 5 * 3600 and inc.duration == KINDS["vram_leak"].default_duration
    assert inc.labels() == {"gpu": "1", "container": "ollama"}
    assert not inc.benign
    assert _one(kind="planned_reboot", at="1h")[0].benign


def test_default_schedules_cover_every_kind_spaced_out_over_a_week():
    from exporter.sim.box import SimBox
    kinds = set()
    for box in ("aibox", "studio"):
        incidents = SimBox.load_incidents(None, box)
        kinds |= {i.kind for i in incidents}
        assert max(i.end for i in incidents) <= 7 * 86400
        for a, b in zip(incidents, incidents[1:], strict=False):
            assert b.at - a.end >= 3600, f"{box}: {a.kind} and {b.kind} too close to tell apart"
    assert kinds == set(KINDS)
    assert load_schedule(None, containers=set(NAMES)) == SimBox.load_incidents(None, "aibox")
    studio = SimBox.load_incidents(None, "studio")
    real = [i for i in studio if not i.benign]
    assert len(real) >= 10 and all("gpu" in i.labels() or "container" in i.labels() for i in real)
    assert {"batch_at_power_cap", "big_model_load", "planned_reboot", "model_swaps", "busy_request_log"} <= \
        {i.kind for i in studio if i.benign}


@pytest.mark.parametrize("box,item,key,message", [
    ("studio", {"kind": "gpu_lost", "at": "1h", "gpu": 2}, "incidents[0].gpu", "0..1"),
    ("aibox", {"kind": "container_restart_loop", "at": "1h", "container": "librechat"},
     "incidents[0].container", "unknown container 'librechat'"),
    ("studio", {"kind": "container_restart_loop", "at": "1h", "container": "open-webui"},
     "incidents[0].container", "unknown container 'open-webui'"),
    ("aibox", {"kind": "batch_at_power_cap", "at": "1h", "gpu": 0}, "incidents[0].gpu", "serves vLLM (none"),
    ("studio", {"kind": "batch_at_power_cap", "at": "1h", "gpu": 1}, "incidents[0].gpu", "serves vLLM (0)"),
    ("studio", {"kind": "model_swaps", "at": "1h", "gpu": 0}, "incidents[0].gpu", "runs Ollama (1)"),
    ("studio", {"kind": "big_model_load", "at": "1h", "gpu": 1}, "incidents[0].model", "unknown model 'gemma2:27b'"),
    ("studio", {"kind": "model_swaps", "at": "1h", "gpu": 1, "every": "often"}, "incidents[0].every", ""),
])
def test_schedules_are_validated_against_the_selected_box(tmp_path, box, item, key, message):
    from exporter.sim.box import SimBox
    p = tmp_path / "s.yml"
    p.write_text(yaml.safe_dump({"incidents": [item]}))
    with pytest.raises(ScheduleError) as err:
        SimBox.load_incidents(p, box)
    assert str(err.value).startswith(key) and message in str(err.value)


def test_parse_schedule_round_trips_yaml_text():
    data = yaml.safe_load("incidents:\n  - {kind: gpu_lost, at: 30m, duration: 10m, gpu: 1}\n")
    (inc,) = parse_schedule(data)
    assert (inc.kind, inc.at, inc.end, inc.gpu) == ("gpu_lost", 1800, 2400, 1)
