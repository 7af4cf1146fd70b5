"""End to end: simulated journal lines -> Loki test server (push) -> LokiClient (query_range) ->
LogDetector. Injected failures must be flagged, benign look-alikes must not, and a restart
(get_state/from_state + the miner's FilePersistence) must keep the template state."""
from __future__ import annotations

import json
import random
from collections import defaultdict
from datetime import UTC, datetime

import pytest
import responses

from detector.logs.detector import LogDetector, incidents_from_journal
from detector.logs.loki import LokiClient
from detector.logs.patterns import gpu_index_by_pci
from detector.persistence import FilePersistence
from harness.log_shipping import loki_push
from harness.loki_standin import LokiTestServer

T0 = datetime(2026, 11, 20, tzinfo=UTC).timestamp()
H = 3600.0
TRAIN_END = T0 + 8 * H
END = T0 + 12 * H
GPU_INFO = [{"gpu": "0", "pci_bus_id": "00000000:01:00.0"}, {"gpu": "1", "pci_bus_id": "00000000:02:00.0"}]

# injected failures: name -> (start, end) in epoch seconds
FAILURES = {
    "restart_loop": (T0 + 9.5 * H, T0 + 9.5 * H + 240),
    "xid79": (T0 + 10 * H, T0 + 10 * H + 5),
    "oom": (T0 + 10.5 * H, T0 + 10.5 * H + 5),
    "bruteforce": (T0 + 11 * H, T0 + 11 * H + 240),
    "container_loop": (T0 + 11.5 * H, T0 + 11.5 * H + 360),
    "log_spam": (T0 + 11.75 * H, T0 + 11.75 * H + 600),
}
BENIGN = {
    "one_failed_password": T0 + 8.5 * H,
    "one_container_restart": T0 + 8.75 * H,
    "boot_with_unit_failure": T0 + 9 * H,
}
RESTART_AT = T0 + 10.25 * H


class Journal:
    """Writes `journalctl -o json` records: every value a string, kernel lines without _PID and
    _SYSTEMD_UNIT, container lines with CONTAINER_NAME and PRIORITY 3/6 only."""

    def __init__(self):
        self.records: list[dict] = []
        self.boot = "b0" * 16

    def _base(self, t, priority, transport, message):
        return {"__REALTIME_TIMESTAMP": str(int(t * 1e6)), "_BOOT_ID": self.boot, "PRIORITY": str(priority),
                "_TRANSPORT": transport, "_HOSTNAME": "rig", "MESSAGE": message}

    def kernel(self, t, message, priority=6):
        self.records.append({**self._base(t, priority, "kernel", message), "SYSLOG_IDENTIFIER": "kernel"})

    def unit(self, t, unit, ident, message, priority=6, transport="syslog", pid=100):
        self.records.append({**self._base(t, priority, transport, message), "SYSLOG_IDENTIFIER": ident,
                             "_SYSTEMD_UNIT": unit, "_PID": str(pid)})

    def systemd(self, t, message, priority=6, subject=None):
        record = {**self._base(t, priority, "journal", message), "SYSLOG_IDENTIFIER": "systemd",
                  "_SYSTEMD_UNIT": "init.scope", "_PID": "1"}
        if subject:
            record["UNIT"] = subject
        self.records.append(record)

    def container(self, t, name, message, stderr):
        self.records.append({**self._base(t, 3 if stderr else 6, "journal", message), "CONTAINER_NAME": name,
                             "CONTAINER_ID": "abcdef012345", "SYSLOG_IDENTIFIER": name,
                             "_SYSTEMD_UNIT": "docker.service", "_PID": "900"})


def _stamp(t, fmt):
    return datetime.fromtimestamp(t, UTC).strftime(fmt)


def ollama_startup(j: Journal, t: float, rng: random.Random):
    j.container(t, "ollama", f'time={_stamp(t, "%Y-%m-%dT%H:%M:%S.000Z")} level=INFO source=routes.go:1172 '
                'msg="Listening on [::]:11434 (version 0.4.1)"', True)
    j.container(t + 0.1, "ollama", f'time={_stamp(t, "%Y-%m-%dT%H:%M:%S.000Z")} level=INFO source=gpu.go:221 '
                'msg="looking for compatible GPUs"', True)
    for index, (uuid, name) in enumerate((("GPU-1b2c", "NVIDIA GeForce RTX 3090"), ("GPU-7d8e", "NVIDIA GeForce RTX 3060"))):
        j.container(t + 0.5 + index * 0.01, "ollama",
                    f'time={_stamp(t, "%Y-%m-%dT%H:%M:%S.000Z")} level=INFO source=types.go:123 msg="inference compute" '
                    f'id={uuid} library=cuda compute=8.6 driver=12.4 name="{name}" total="{23.7 - 12 * index:.1f} GiB"', True)
    veth = f"veth{rng.randrange(16**7):07x}"
    for state in ("entered blocking state", "entered forwarding state"):
        j.kernel(t - 0.5, f"docker0: port 1({veth}) {state}")


def webui_startup(j: Journal, t: float):
    for k, line in enumerate(("INFO:     Started server process [1]", "INFO:     Waiting for application startup.",
                              "INFO:     Application startup complete.",
                              "INFO:     Uvicorn running on http://0.0.0.0:8080 (Press CTRL+C to quit)")):
        j.container(t + k * 0.1, "open-webui", line, False)


def boot(j: Journal, t: float, rng: random.Random, failing_unit: bool = False):
    j.boot = f"{rng.randrange(16**32):032x}"
    j.kernel(t, "Linux version 6.1.0-26-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14) 12.2.0) "
                "#1 SMP PREEMPT_DYNAMIC Debian 6.1.112-1 (2024-09-30)", 5)
    j.kernel(t + 0.01, "Command line: BOOT_IMAGE=/boot/vmlinuz-6.1.0-26-amd64 root=UUID=2b3c4d5e-6f70-4a1b-9c2d-3e4f5a6b7c8d ro quiet")
    j.kernel(t + 2, "nvidia: loading out-of-tree module taints kernel.", 4)
    j.kernel(t + 2.1, "NVRM: loading NVIDIA UNIX x86_64 Kernel Module  550.127.05  Tue Oct  8 03:22:07 UTC 2024", 5)
    j.kernel(t + 3, "EXT4-fs (nvme0n1p2): mounted filesystem 2b3c4d5e-6f70-4a1b-9c2d-3e4f5a6b7c8d with ordered data mode. Quota mode: none.")
    for k, unit in enumerate(("llm-proxy.service - LLM proxy", "cron.service - Regular background program processing daemon",
                              "ssh.service - OpenBSD Secure Shell server", "docker.service - Docker Application Container Engine")):
        j.systemd(t + 5 + k, f"Started {unit}.")
    j.unit(t + 6, "llm-proxy.service", "llm-proxy", "llm-proxy listening on 127.0.0.1:8000", transport="stdout", pid=700)
    if failing_unit:
        j.unit(t + 7, "nvidia-persistenced.service", "nvidia-persistenced",
               "Failed to query NVIDIA devices. Please ensure that the NVIDIA device files (/dev/nvidia*) exist, "
               "and that user 143 has read and write permissions for those files.", 3, pid=812)
        j.systemd(t + 7.1, "nvidia-persistenced.service: Control process exited, code=exited, status=1/FAILURE", 5,
                  "nvidia-persistenced.service")
        j.systemd(t + 7.2, "nvidia-persistenced.service: Failed with result 'exit-code'.", 4, "nvidia-persistenced.service")
        j.systemd(t + 7.3, "Failed to start nvidia-persistenced.service - NVIDIA Persistence Daemon.", 3,
                  "nvidia-persistenced.service")
    ollama_startup(j, t + 10, rng)
    webui_startup(j, t + 12)
    j.systemd(t + 20, f"Startup finished in 5.{rng.randrange(999):03d}s (kernel) + 20.{rng.randrange(999):03d}s "
                      "(userspace) = 25.579s.")


def routine(j: Journal, start: float, end: float, rng: random.Random, skip: list[tuple[float, float]]):
    """Healthy background: chat requests, web UI polling, cron, hourly timers, admin SSH logins."""
    def quiet(t):
        return any(a <= t < b for a, b in skip)

    t = start
    while t < end:
        t += rng.expovariate(1 / 30)
        if not quiet(t):
            j.container(t, "ollama", f"[GIN] {_stamp(t, '%Y/%m/%d - %H:%M:%S')} | 200 | {rng.uniform(0.2, 9):6.2f}s | "
                                     f' 172.17.0.1 | POST     "/api/chat"', True)
    t = start
    while t < end:
        t += rng.expovariate(1 / 20)
        if not quiet(t):
            j.container(t, "open-webui", f'INFO:     172.18.0.3:{rng.randrange(30000, 60000)} - "GET /api/v1/chats/ '
                                         'HTTP/1.1" 200 OK', False)
    t = start - start % 300
    while t + 300 < end:
        t += 300
        if quiet(t):
            continue
        pid = rng.randrange(2000, 30000)
        j.unit(t, "cron.service", "CRON", "pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)", pid=pid)
        j.unit(t + 0.01, "cron.service", "CRON", "(root) CMD (command -v debian-sa1 > /dev/null && debian-sa1 1 1)", pid=pid)
        j.unit(t + 0.5, "cron.service", "CRON", "pam_unix(cron:session): session closed for user root", pid=pid)
        if int(t) % 3600 == 0:
            j.systemd(t + 1, "Starting sysstat-collect.service - system activity accounting tool...")
            j.systemd(t + 2, "sysstat-collect.service: Deactivated successfully.")
            j.systemd(t + 2.1, "Finished sysstat-collect.service - system activity accounting tool.")
    t = start + 1800
    while t < end:
        if not quiet(t):
            port = rng.randrange(40000, 60000)
            j.unit(t, "ssh.service", "sshd", f"Accepted publickey for admin from 192.168.1.20 port {port} ssh2: "
                                             "ED25519 SHA256:Qm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0", pid=5000)
            j.unit(t + 0.1, "ssh.service", "sshd", "pam_unix(sshd:session): session opened for user admin(uid=1000) by (uid=0)", pid=5000)
            j.unit(t + 600, "ssh.service", "sshd", "pam_unix(sshd:session): session closed for user admin", pid=5000)
        t += rng.uniform(1.5, 2.5) * H


def build_journal(seed: int = 3) -> list[dict]:
    rng = random.Random(seed)
    j = Journal()
    reboot = BENIGN["boot_with_unit_failure"]
    boot(j, T0 + 2 * H, rng)
    routine(j, T0, END, rng, skip=[(T0 + 2 * H - 120, T0 + 2 * H), (reboot - 120, reboot)])

    # benign: one failed password from an internet scanner
    t = BENIGN["one_failed_password"]
    j.unit(t, "ssh.service", "sshd", "Invalid user admin from 198.51.100.23 port 48212", 6, pid=6001)
    j.unit(t + 0.1, "ssh.service", "sshd", "pam_unix(sshd:auth): check pass; user unknown", 5, pid=6001)
    j.unit(t + 0.2, "ssh.service", "sshd", "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 "
                                          "tty=ssh ruser= rhost=198.51.100.23", 5, pid=6001)
    j.unit(t + 2, "ssh.service", "sshd", "Failed password for invalid user admin from 198.51.100.23 port 48212 ssh2", 6, pid=6001)
    j.unit(t + 2.5, "ssh.service", "sshd", "Connection closed by invalid user admin 198.51.100.23 port 48212 [preauth]", 6, pid=6001)
    # benign: one container restart during an update
    t = BENIGN["one_container_restart"]
    for k, line in enumerate(("INFO:     Shutting down", "INFO:     Waiting for application shutdown.",
                              "INFO:     Application shutdown complete.", "INFO:     Finished server process [1]")):
        j.container(t + k * 0.1, "open-webui", line, False)
    webui_startup(j, t + 15)
    # benign: a reboot with one unit failure at boot
    boot(j, reboot, rng, failing_unit=True)

    # failure: systemd restart loop
    start = FAILURES["restart_loop"][0]
    for n in range(1, 9):
        t = start + (n - 1) * 30
        j.unit(t, "llm-proxy.service", "llm-proxy", "Error: connect ECONNREFUSED 127.0.0.1:11434", transport="stdout", pid=700 + n)
        j.systemd(t + 0.1, "llm-proxy.service: Main process exited, code=exited, status=1/FAILURE", 5, "llm-proxy.service")
        j.systemd(t + 0.2, "llm-proxy.service: Failed with result 'exit-code'.", 4, "llm-proxy.service")
        j.systemd(t + 5, f"llm-proxy.service: Scheduled restart job, restart counter is at {n}.", 6, "llm-proxy.service")
        j.systemd(t + 5.1, "Stopped llm-proxy.service - LLM proxy.", 6, "llm-proxy.service")
        j.systemd(t + 5.2, "Started llm-proxy.service - LLM proxy.", 6, "llm-proxy.service")
    # failure: GPU 1 falls off the bus
    t = FAILURES["xid79"][0]
    j.kernel(t, "NVRM: GPU at PCI:0000:02:00: GPU-7d8e9f00-1122-3344-5566-778899aabbcc")
    j.kernel(t + 0.01, "NVRM: Xid (PCI:0000:02:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.", 4)
    j.kernel(t + 0.02, "NVRM: GPU 0000:02:00.0: GPU has fallen off the bus.", 3)
    # failure: kernel OOM kill
    t = FAILURES["oom"][0]
    j.kernel(t, "python3 invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=0", 4)
    j.kernel(t + 0.1, "Out of memory: Killed process 4242 (python3) total-vm:34359738kB, anon-rss:30000000kB, "
                      "file-rss:0kB, shmem-rss:0kB, UID:1000 pgtables:60000kB oom_score_adj:0", 3)
    j.kernel(t + 0.2, "oom_reaper: reaped process 4242 (python3), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB")
    # failure: SSH brute force
    start = FAILURES["bruteforce"][0]
    for k in range(40):
        t, port = start + k * 6, 30000 + k
        j.unit(t, "ssh.service", "sshd", "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh "
                                         "ruser= rhost=203.0.113.7  user=root", 5, pid=7000 + k)
        j.unit(t + 2, "ssh.service", "sshd", f"Failed password for root from 203.0.113.7 port {port} ssh2", 6, pid=7000 + k)
        j.unit(t + 2.5, "ssh.service", "sshd", f"Connection closed by authenticating user root 203.0.113.7 port {port} [preauth]",
               6, pid=7000 + k)
    # failure: container restart loop (ollama crashes on start)
    start = FAILURES["container_loop"][0]
    for k in range(8):
        t = start + k * 45
        ollama_startup(j, t, rng)
        j.container(t + 20, "ollama", "Error: llama runner process has terminated: signal: segmentation fault (core dumped)", True)
    # failure: log spam - a client polls the web UI in a tight loop, 4 ordinary lines a second
    start, end = FAILURES["log_spam"]
    for k in range(int((end - start) * 4)):
        j.container(start + k / 4, "open-webui", f'INFO:     172.18.0.9:{40000 + k % 20000} - "GET /api/v1/chats/ '
                                                 'HTTP/1.1" 200 OK', False)
    # the export ends at END (a session closing after it would leave a near-empty tail window)
    records = [r for r in j.records if int(r["__REALTIME_TIMESTAMP"]) < END * 1e6]
    return sorted(records, key=lambda r: int(r["__REALTIME_TIMESTAMP"]))


def _near(ts: float, span: tuple[float, float], after: float = 420.0) -> bool:
    return span[0] - 1 <= ts <= span[1] + after


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    """Fit on the training hours read back from Loki, then score minute by minute, restarting the
    detector from its saved state once in the middle."""
    records = build_journal()
    tmp = tmp_path_factory.mktemp("logs")
    with LokiTestServer() as loki:
        assert loki_push(loki.url, records) == len(records)
        client = LokiClient(loki.url, page_limit=1000)
        query = '{job=~"systemd-journal|docker"}'
        training = client.query_range(query, T0, TRAIN_END)
        persistence = FilePersistence(tmp)  # the miner saves tmp/templates.json
        detector = LogDetector({"window_s": 300}, persistence=persistence,
                               gpu_by_pci=gpu_index_by_pci(GPU_INFO)).fit(training)
        templates_before = restored_templates = None
        anomalies = []
        t = TRAIN_END
        while t < END:
            if t <= RESTART_AT < t + 60:
                state = detector.get_state()
                templates_before = detector.miner_.templates()
                detector = LogDetector.from_state(state, persistence=FilePersistence(tmp),
                                                  gpu_by_pci=gpu_index_by_pci(GPU_INFO))
                restored_templates = detector.miner_.templates()
            batch = client.query_range(query, t, t + 60)
            anomalies += [a for a in detector.score(batch, t + 60) if a.score > 1]
            t += 60
    return {"records": records, "training": training, "anomalies": anomalies, "detector": detector,
            "templates_before": templates_before, "restored_templates": restored_templates, "tmp": tmp}


def test_loki_round_trip_keeps_every_line(replay):
    expected = sum(1 for r in replay["records"] if int(r["__REALTIME_TIMESTAMP"]) < TRAIN_END * 1e6)
    assert len(replay["training"]) == expected  # paged past the 1000-entry limit, nothing lost or doubled
    assert {e.labels["job"] for e in replay["training"]} == {"systemd-journal", "docker"}


def test_injected_failures_are_flagged(replay):
    found = defaultdict(list)
    for a in replay["anomalies"]:
        for name, span in FAILURES.items():
            if _near(a.ts, span):
                found[name].append(a)
    patterns = {name: {(a.labels.get("pattern"), a.labels.get("unit"), a.labels.get("gpu"), a.labels.get("xid"),
                        a.labels.get("source_ip")) for a in found[name] if a.detector == "log_pattern"}
                for name in FAILURES}
    assert ("unit_restart_loop", "llm-proxy.service", None, None, None) in patterns["restart_loop"]
    assert ("nvidia_xid", None, "1", "79", None) in patterns["xid79"]
    assert any(p[0] == "oom_kill" for p in patterns["oom"])
    assert ("ssh_bruteforce", None, None, None, "203.0.113.7") in {(p[0], None, None, None, p[4]) for p in patterns["bruteforce"]}
    assert any(a.labels.get("container") == "ollama" for a in found["container_loop"])
    spam = [a for a in found["log_spam"] if a.detector == "log_rate" and a.labels.get("container") == "open-webui"]
    assert spam and "log spam" in spam[0].summary, [(a.detector, a.labels, a.summary) for a in found["log_spam"]]
    xid = next(a for a in found["xid79"] if a.labels.get("pattern") == "nvidia_xid")
    assert "Xid 79" in xid.summary and "GPU 1" in xid.summary and xid.examples


def test_benign_look_alikes_raise_nothing(replay):
    false_alarms = [a for a in replay["anomalies"] if not any(_near(a.ts, span) for span in FAILURES.values())]
    assert false_alarms == [], "\n".join(f"{a.detector} {a.labels} {a.score:.2f} {a.summary}" for a in false_alarms)


def test_restart_keeps_template_state(replay):
    assert replay["templates_before"] and replay["restored_templates"] == replay["templates_before"]
    # the miner's own persistence holds the latest templates: a fresh miner loads them all
    detector = replay["detector"]
    restored = LogDetector.from_state(detector.get_state(), persistence=FilePersistence(replay["tmp"]))
    assert restored.miner_.templates() == detector.miner_.templates()
    routine_line = "pam_unix(cron:session): session closed for user root"
    assert restored.miner_.match(routine_line) is not None


def test_backtest_incidents_from_journal_file(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in build_journal(seed=5)) + "\n")
    incidents = incidents_from_journal(path, {"window_s": 300}, gpu_by_pci=gpu_index_by_pci(GPU_INFO),
                                       train_until=TRAIN_END)
    assert all(set(i) == {"detector", "labels", "start", "end", "peak_score", "summary", "template"} for i in incidents)
    for incident in incidents:
        assert any(_near(incident["start"], span) for span in FAILURES.values()), incident
        assert incident["end"] - incident["start"] <= 900, incident
    labels = [i["labels"] for i in incidents]
    assert {"pattern": "nvidia_xid", "gpu": "1", "xid": "79", "job": "systemd-journal"} in labels
    assert any(lab.get("unit") == "llm-proxy.service" for lab in labels)
    assert any(lab.get("container") == "ollama" for lab in labels)


def test_run_journal_backtest_gives_iso_incidents(tmp_path):
    from detector.logs.backtest import run_journal_backtest
    from detector.logs.detector import LogDetectorConfig

    path = tmp_path / "journal.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in build_journal(seed=7)) + "\n")
    config = LogDetectorConfig.from_dict({"window_s": 300})
    report = run_journal_backtest(path, logs_config=config, start=T0, end=END, warmup=8 * H,
                                  gpu_by_pci=gpu_index_by_pci(GPU_INFO))
    assert report["trained_until"] == "2026-11-20T08:00:00Z"
    xid = [i for i in report["incidents"] if i["labels"].get("pattern") == "nvidia_xid"]
    assert len(xid) == 1 and xid[0]["labels"]["gpu"] == "1" and xid[0]["start"] == "2026-11-20T10:00:00Z"
    # a range with no history before it still runs: everything is novel, nothing crashes
    empty = run_journal_backtest(path, logs_config=LogDetectorConfig(), start=T0 + 11.9 * H, end=END,
                                 gpu_by_pci={})
    assert isinstance(empty["incidents"], list)


@responses.activate
def test_xid_lines_are_mapped_to_gpus_through_the_configured_prometheus_client(tmp_path):
    """Behind an authenticating proxy the gpu_info lookup must send the configured headers (it used
    to call requests.get on the bare URL, so every Xid incident lost its gpu label)."""
    from detector.backtest import run_backtest
    from detector.config import parse_config
    from detector.plugins import backtest_plugins, prometheus_client

    prom = "http://prom.test:9090"

    def series(request):
        if request.headers.get("Authorization") != "Bearer s3cret":
            return 401, {}, json.dumps({"status": "error", "errorType": "unauthorized", "error": "no token"})
        return 200, {}, json.dumps({"status": "success", "data": [{"__name__": "gpu_info", **g} for g in GPU_INFO]})

    responses.add_callback(responses.GET, prom + "/api/v1/series", callback=series)
    path = tmp_path / "journal.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in build_journal(seed=7)) + "\n")
    config = parse_config({"prometheus": {"url": prom, "retries": 0, "headers": {"Authorization": "Bearer s3cret"}},
                           "logs": {"window_s": 300}, "schedule": {"warmup": "8h"}, "detectors": []})
    plugins = backtest_plugins(config, client=prometheus_client(config), journal_file=str(path))
    report = run_backtest(config, plugins, T0, END, show_progress=False,
                          source={"prometheus_url": prom, "journal_file": str(path)})
    xid = [i for i in report["incidents"] if i["labels"].get("pattern") == "nvidia_xid"]
    assert xid and xid[0]["labels"].get("gpu") == "1", xid
    assert report["logs"]["journal_file"] == str(path) and report["source"]["prometheus_url"] == prom
