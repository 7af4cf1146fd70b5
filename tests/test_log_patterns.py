"""Known critical patterns: literal lines -> score, summary and labels; rate conditions."""
from __future__ import annotations

import pytest

from detector.logs.journal import LogEntry
from detector.logs.patterns import PatternTracker, gpu_index_by_pci, normalize_pci_bus_id, rate_score

KERNEL = {"job": "systemd-journal", "identifier": "kernel", "transport": "kernel", "priority": "4"}
SYSTEMD = {"job": "systemd-journal", "unit": "init.scope", "identifier": "systemd", "transport": "journal"}
SSHD = {"job": "systemd-journal", "unit": "ssh.service", "identifier": "sshd", "transport": "syslog"}


def one(tracker, message, labels, ts=0.0):
    hits = tracker.observe(LogEntry(ts, message, dict(labels)))
    assert len(hits) == 1, hits
    return hits[0]


@pytest.mark.parametrize("value,expected", [
    ("00000000:02:00.0", "0000:02:00.0"),   # NVML / gpu_info
    ("PCI:0000:02:00", "0000:02:00.0"),      # Xid line
    ("0000:0A:00.1", "0000:0a:00.1"),        # kernel
    ("01:00.0", "0000:01:00.0"),             # lspci short form
    ("GPU-1234", None),
])
def test_normalize_pci_bus_id(value, expected):
    assert normalize_pci_bus_id(value) == expected


def test_xid_maps_pci_to_gpu_index_with_code_in_summary():
    gpus = gpu_index_by_pci([{"gpu": "0", "pci_bus_id": "00000000:01:00.0"},
                             {"gpu": "1", "pci_bus_id": "00000000:02:00.0"}])
    hit = one(PatternTracker(gpu_by_pci=gpus),
              "NVRM: Xid (PCI:0000:02:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.", KERNEL)
    assert hit.pattern == "nvidia_xid" and hit.score > 1
    assert hit.labels == {"gpu": "1", "xid": "79", "pci_bus_id": "0000:02:00.0"}
    assert hit.summary == "NVIDIA Xid 79 on GPU 1 (0000:02:00.0): GPU has fallen off the bus"


def test_application_xid_scores_lower_but_still_anomalous_and_unknown_pci_keeps_address():
    hit = one(PatternTracker(), "NVRM: Xid (PCI:0000:01:00): 13, pid=4242, name=python3, Graphics Exception", KERNEL)
    assert 1 < hit.score < 5 and "gpu" not in hit.labels and "GPU at 0000:01:00.0" in hit.summary


def test_oom_killer():
    hit = one(PatternTracker(), "Out of memory: Killed process 4242 (python3) total-vm:34359738kB, anon-rss:30000000kB",
              KERNEL)
    assert hit.pattern == "oom_kill" and hit.score > 1
    assert hit.summary == "Kernel OOM killer killed process python3 (pid 4242)"


def test_cuda_oom_in_a_container():
    hit = one(PatternTracker(), "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
              {"job": "docker", "container": "comfyui"})
    assert hit.pattern == "cuda_oom" and hit.score > 1 and hit.labels == {"container": "comfyui"}


def test_disk_full():
    hit = one(PatternTracker(), "postgres: could not write to file \"base/16384/2619\": No space left on device",
              {"job": "docker", "container": "db"})
    assert hit.pattern == "disk_full" and hit.score > 1 and hit.summary.endswith("reported by db")


def test_restart_counter_is_a_loop_from_three():
    tracker = PatternTracker()
    scores = [one(tracker, f"llm-proxy.service: Scheduled restart job, restart counter is at {n}.", SYSTEMD).score
              for n in (1, 2, 3, 5)]
    assert scores[0] < 1 and scores[1] < 1 and 1 < scores[2] < scores[3]
    hit = one(tracker, "llm-proxy.service: Start request repeated too quickly.", SYSTEMD)
    assert hit.score > 1 and hit.labels == {"unit": "llm-proxy.service"}


def test_one_unit_failure_is_routine_a_repeated_one_is_the_incident():
    tracker = PatternTracker()
    first = one(tracker, "backup.service: Failed with result 'exit-code'.", SYSTEMD, ts=0)
    companion = one(tracker, "Failed to start backup.service - Nightly backup.", SYSTEMD, ts=1)
    assert first.score < 1 and companion.score < 1 and companion.labels == {"unit": "backup.service"}
    one(tracker, "backup.service: Failed with result 'exit-code'.", SYSTEMD, ts=100)
    third = one(tracker, "backup.service: Failed with result 'exit-code'.", SYSTEMD, ts=200)
    assert third.score > 1 and "3 times" in third.summary
    # failures spread wider than the window stay routine
    late = one(tracker, "backup.service: Failed with result 'exit-code'.", SYSTEMD, ts=200 + 3600)
    assert late.score < 1


def test_one_failed_password_is_routine_a_brute_force_is_not():
    tracker = PatternTracker()
    hits = [one(tracker, f"Failed password for root from 203.0.113.7 port {40000 + k} ssh2", SSHD, ts=k * 5.0)
            for k in range(12)]
    assert hits[0].score < 0.2 and hits[8].score < 1 and hits[9].score > 1
    assert hits[9].labels == {"source_ip": "203.0.113.7", "unit": "ssh.service"}
    assert "10 failed logins from 203.0.113.7" in hits[9].summary
    # companion lines of an attempt are claimed but not counted again
    companion = one(tracker, "Invalid user admin from 198.51.100.23 port 4444", SSHD, ts=70)
    assert companion.score < 1


def test_container_exits_repeating_make_a_restart_loop():
    tracker = PatternTracker()
    scores = [one(tracker, "Container ollama exited with code 137", {"job": "docker", "container": "ollama"},
                  ts=k * 45.0).score for k in range(3)]
    assert scores[0] < 1 and scores[1] < 1 and scores[2] > 1


def test_ordinary_lines_match_nothing_and_state_round_trips():
    tracker = PatternTracker()
    assert tracker.observe(LogEntry(0, "Started cron.service - Regular background program processing daemon.",
                                    dict(SYSTEMD))) == []
    one(tracker, "Failed password for root from 203.0.113.7 port 1 ssh2", SSHD)
    restored = PatternTracker()
    restored.set_state(tracker.get_state())
    assert one(restored, "Failed password for root from 203.0.113.7 port 2 ssh2", SSHD).summary.startswith(
        "SSH brute force: 2 failed logins")


def test_rate_score_stays_below_one_under_the_threshold():
    assert rate_score(2, 3) < 1 < rate_score(3, 3) < rate_score(6, 3)
