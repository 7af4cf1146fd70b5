"""`make demo` end to end: the demo brings the whole pipeline up, streams an anomaly and an alert as
they happen, shows the model lifecycle (models, a gated retrain, feedback on the first incident) and
its MLflow side (a real `mlflow server`: the UI address, each gated refit's run, registered version
and champion alias read back), and stops every part cleanly on Ctrl-C (SIGINT)."""
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from detector.timefmt import iso

ROOT = Path(__file__).resolve().parents[1]
# GPU 1 falls off the bus 30 s after the live start: the hard guard alerts at once and the detector
# scores it. Not sooner: the detector comes up some 15 s after the live start (backfill, Prometheus, the
# mlflow server), and its log side's first fit trains on every journal line Loki holds by then — an Xid
# line already there would be training data, never scored.
SCHEDULE = "incidents:\n  - {kind: gpu_lost, at: 30s, duration: 10m, gpu: 1}\n"


def _closed(url: str) -> bool:
    host, port = re.match(r"http://([\d.]+):(\d+)", url).groups()
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) != 0


@pytest.mark.integration
def test_demo_streams_an_anomaly_and_an_alert_and_stops_on_ctrl_c(tmp_path):
    for b in ("prometheus", "promtool", "prometheus-alertmanager"):
        if shutil.which(b) is None:
            pytest.fail(f"{b} not installed: run `make deps`")
    (tmp_path / "schedule.yml").write_text(SCHEDULE)
    wd = tmp_path / "wd"
    proc = subprocess.Popen([sys.executable, "-m", "scripts.demo", "--workdir", str(wd), "--schedule",
                             str(tmp_path / "schedule.yml"), "--history-hours", "2.5", "--interval", "5",
                             "--duration", "150"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            text = "".join(lines)
            if ("  ALERT     GpuLost (critical) gpu=1" in text and "  ANOMALY   gpu_xid" in text
                    and "  ANOMALY   log_pattern" in text and "  gated:    " in text and "  feedback: " in text
                    and set(lifecycle_lines(text, "gated")) <= set(tracked_lines(text))):
                break
            time.sleep(0.5)
        text = "".join(lines)
        assert proc.poll() is None, f"demo exited early:\n{text}"
        assert "  ALERT     GpuLost (critical) gpu=1 -> default-webhook: GPU 1" in text, text
        # the sim's inference servers, read by the exporter through Prometheus (aibox: Ollama and ComfyUI)
        assert re.search(r"  servers:  comfyui up, \d+ running, \d+ queued \| ollama up, ", text), text
        assert re.search(r"ANOMALY   gpu_xid \(counter_increase\) gpu=1 xid=79: score [\d.]+ > 1", text), text
        # the log side: the sim's Xid 79 kernel line, shipped into the Loki stand-in, read by the detector
        assert re.search(r"ANOMALY   log_pattern \(logs\) pattern=nvidia_xid gpu=1 xid=79: score [\d.]+ > 1",
                         text), text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    text = "".join(lines)
    assert "backfilled 2.5 h of clean sim history" in text
    urls = re.findall(r"http://127\.0\.0\.1:\d+", text)
    assert len(set(urls)) >= 5, text  # exporter, detector, prometheus, alertmanager, Loki stand-in
    assert "(the in-repo Loki stand-in, not Loki)" in text
    assert "detector ready" in text and re.search(r"gpu 0: +\d+ C", text), text
    assert re.search(r"stopping: [1-9]\d* anomaly score\(s\) crossed 1, [1-9]\d* alert notification", text), text
    assert text.rstrip().endswith("stopped")
    # every part was stopped: nothing answers on the printed ports and Prometheus released its TSDB
    assert all(_closed(u) for u in set(urls)), text
    assert (wd / "tsdb").is_dir() and not (wd / "tsdb" / "lock").exists()
    check_lifecycle(text, wd / "models")
    check_mlflow(text, wd)


def lifecycle_lines(text: str, prefix: str) -> dict[str, re.Match]:
    """Per detector, the parsed `models:` / `gated:` line naming it (detectors with the same text share one)."""
    out = {}
    for line in re.findall(rf"  {prefix}: +(.*)", text):
        m = re.fullmatch(r"(?P<names>[\w, ]+?) v(?P<version>\d+) (?P<rest>.*)", line)
        assert m, line
        for name in m["names"].split(", "):
            out[name] = m
    return out


def check_lifecycle(text: str, store: Path) -> None:
    """The lifecycle lines say what the registry and the label store recorded (read here from the
    files the detector wrote), not a fixed text."""
    records = {p.parent.name: json.loads(p.read_text()) for p in store.glob("*/registry.json")}
    models, gated = lifecycle_lines(text, "models"), lifecycle_lines(text, "gated")
    metric = set(records) - {"logs"}  # the log side keeps a registry too but is not in /api/v1/models
    assert metric and set(models) == set(gated) == metric, (sorted(models), sorted(gated), sorted(records))
    assert f"retrain:  POST /api/v1/retrain accepted for {len(metric)} detector(s)" in text, text
    for name, rec in records.items():
        if name == "logs":
            continue
        decided = {d["version"]: d for d in rec["decisions"]}
        first = models[name]
        state, rest = re.fullmatch(r"(\w+) \(([^;]*); (.*)\)", first["rest"]).group(1, 3)
        v1 = int(first["version"])
        assert decided[v1]["reason"] == rest and state == "champion", (name, first.group(0), rec)
        later = gated[name]
        v2 = int(later["version"])
        assert v2 > v1, later.group(0)
        outcome, reason = re.match(r"(\w+(?: \w+)?): (.*?)(?: \[.*\])? -> ", later["rest"]).groups()
        assert (decided[v2]["outcome"], decided[v2]["reason"]) == (outcome, reason), (later.group(0), rec)
        scoring = rec["champion"]
        assert f"-> v{scoring} scores (champion v{scoring}," in later["rest"], (later.group(0), rec)
    (fb,) = re.findall(r"  feedback: (\w+) incident ([0-9a-f]{16}) marked (\w+) \(.*\); (\d+) label\(s\) "
                       r"stored for (\w+)", text)
    detector, incident, label, count, again = fb
    items = json.loads((store / "feedback" / "labels.json").read_text())["items"]
    assert detector == again and int(count) == sum(1 for i in items if i["detector"] == detector) >= 1
    (item,) = [i for i in items if i["incident"] == incident]
    assert (item["detector"], item["label"]) == (detector, label)
    # the incident labelled is the first one the demo printed
    first = re.search(r"  INCIDENT  (\w+) .* since (\S+)", text)
    assert first and first.groups() == (detector, iso(item["start"])), (first and first.group(0), item)


TRACKED = re.compile(r"  tracked:  (?P<name>\w+) v(?P<store>\d+) -> run (?P<run>[0-9a-f]{32}), rigwatch-(?P=name) "
                     r"version (?P<version>\d+); @champion: version (?P<champion>\d+) \(store v(?P<champion_store>\d+)\)")


def tracked_lines(text: str) -> dict[str, re.Match]:
    return {m["name"]: m for m in TRACKED.finditer(text)}


def check_mlflow(text: str, wd: Path) -> None:
    """The MLflow lines say what the server recorded: each gated refit's run and registered version
    (read again here from the server's SQLite database, the server stopped) and the champion alias on
    the version of the local registry's champion."""
    from mlflow import MlflowClient

    (ui,) = re.findall(r"  mlflow:   UI at (http://127\.0\.0\.1:\d+) \(experiment rigwatch\)", text)
    assert _closed(ui)  # stopped with the rest
    assert "without MLflow" not in text, text
    records = {p.parent.name: json.loads(p.read_text()) for p in (wd / "models").glob("*/registry.json")}
    gated, tracked = lifecycle_lines(text, "gated"), tracked_lines(text)
    assert tracked and set(tracked) == set(gated), (sorted(tracked), sorted(gated), text)
    client = MlflowClient(tracking_uri=f"sqlite:///{wd / 'mlflow' / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "rigwatch"]
    for name, m in tracked.items():
        assert int(m["store"]) == int(gated[name]["version"]), (m.group(0), gated[name].group(0))
        # the alias names the version of the champion the local registry recorded
        assert int(m["champion_store"]) == records[name]["champion"], (m.group(0), records[name])
        model = f"rigwatch-{name}"
        assert int(client.get_registered_model(model).aliases["champion"]) == int(m["champion"]), m.group(0)
        assert client.get_model_version(model, m["champion"]).tags["rigwatch.store_version"] == m["champion_store"]
        refit = client.get_model_version(model, m["version"])
        assert (refit.run_id, refit.tags["rigwatch.store_version"]) == (m["run"], m["store"]), m.group(0)
        assert client.get_run(m["run"]).info.experiment_id == experiment.experiment_id


def test_the_first_incident_is_labelled_by_the_schedule_not_guessed():
    """true_positive only inside a scheduled fault's window (with slack) and on its GPU."""
    from exporter.sim.schedule import parse_schedule
    from scripts.demo_lifecycle import Lifecycle

    faults = parse_schedule({"incidents": [{"kind": "gpu_lost", "at": "2m", "duration": "5m", "gpu": 1}]},
                            containers=set())
    start = 1_800_000_000.0
    life = Lifecycle("http://unused.invalid", "t", print, schedule=faults, sim_start=start, speed=1.0)

    def verdict(offset, gpu):
        return life.truth({"start": iso(start + offset), "labels": {"gpu": gpu} if gpu else {}})[0]

    assert verdict(125, "1") == verdict(120 + 300 + 30, "1") == verdict(130, None) == "true_positive"
    assert verdict(125, "0") == verdict(10, "1") == verdict(120 + 300 + 120, "1") == "false_positive"
    assert Lifecycle("http://unused.invalid", "t", print).truth(
        {"start": iso(start), "labels": {}}) == ("false_positive", "no scheduled fault at that time")


def test_the_demo_goes_on_without_mlflow(tmp_path):
    """No mlflow CLI, or a server that does not answer in time: one line each, no URI for the
    detector, nothing left running, and the read-back does nothing."""
    from scripts.demo_mlflow import DemoMlflow

    said: list[str] = []
    missing = DemoMlflow(tmp_path / "a", said.append, executable=tmp_path / "no-such-mlflow")
    missing.start()
    assert missing.uri() is None
    missing.step({"gpu_thermal": ({"decision": {"version": 2}, "champion": 2}, 0.0)})
    assert len(said) == 1 and said[0].startswith("mlflow:   not started (") and "without MLflow" in said[0], said

    said.clear()
    slow = DemoMlflow(tmp_path / "b", said.append, start_timeout=0.0)
    slow.start()
    assert slow.uri() is None
    assert slow.server.proc.poll() is not None  # stopped, not left behind
    assert said == ["mlflow:   mlflow server did not answer /health within 0 s: the demo goes on without MLflow"]
