"""Journal lines in `journalctl -o json` shape, with failures and the benign look-alikes."""
import re

from exporter.sim.box import SimBox
from exporter.sim.schedule import parse_schedule

START = 1_793_520_000.0  # 2026-11-01T08:00:00Z


def play(items, hours, seed=3):
    box = SimBox(parse_schedule({"incidents": items}), seed=seed, start=START, journal_maxlen=None)
    try:
        box.advance_to(START + hours * 3600)
        return box, box.journal.drain()
    finally:
        box.close()


SCHEDULE = [
    {"kind": "ssh_scanner_noise", "at": "20m", "duration": "20m", "attempts": 4},
    {"kind": "gpu_lost", "at": "1h", "duration": "30m", "gpu": 1},
    {"kind": "container_restart_loop", "at": "2h", "duration": "10m", "container": "open-webui"},
    {"kind": "unit_failure_at_boot", "at": "3h", "duration": "3m"},
]


def test_every_value_is_a_string_and_required_fields_are_there():
    _, entries = play(SCHEDULE, 4)
    assert len(entries) > 100
    for e in entries:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in e.items()), e
        for field in ("__REALTIME_TIMESTAMP", "_BOOT_ID", "PRIORITY", "SYSLOG_IDENTIFIER", "_TRANSPORT", "MESSAGE"):
            assert field in e, (field, e)
        assert e["__REALTIME_TIMESTAMP"].isdigit() and re.fullmatch(r"[0-9a-f]{32}", e["_BOOT_ID"])
        assert e["PRIORITY"] in {"0", "1", "2", "3", "4", "5", "6", "7"}


def test_kernel_lines_have_no_pid_or_unit_and_carry_the_xid():
    _, entries = play(SCHEDULE, 4)
    kernel = [e for e in entries if e["_TRANSPORT"] == "kernel"]
    assert kernel
    for e in kernel:
        assert "_PID" not in e and "_SYSTEMD_UNIT" not in e and e["SYSLOG_IDENTIFIER"] == "kernel"
    xid = [e for e in kernel if "Xid" in e["MESSAGE"]]
    assert len(xid) == 1
    m = re.search(r"NVRM: Xid \(PCI:(0000:[0-9a-f]{2}:[0-9a-f]{2})\): 79, pid=.*, GPU has fallen off the bus\.",
                  xid[0]["MESSAGE"])
    assert m and m.group(1) == "0000:02:00"  # the 3060 at NVML pci_bus_id 00000000:02:00.0
    assert int(xid[0]["__REALTIME_TIMESTAMP"]) == int((START + 3600) * 1e6)


def test_container_lines_come_through_the_journald_driver():
    _, entries = play(SCHEDULE, 4)
    cont = [e for e in entries if "CONTAINER_NAME" in e]
    assert {e["CONTAINER_NAME"] for e in cont} >= {"ollama", "open-webui"}
    for e in cont:
        assert e["PRIORITY"] in ("3", "6")
        assert re.fullmatch(r"[0-9a-f]{12}", e["CONTAINER_ID"]) and e["_SYSTEMD_UNIT"] == "docker.service"
    # routine Ollama INFO goes to stderr: PRIORITY 3 without any trouble
    assert any(e["CONTAINER_NAME"] == "ollama" and e["PRIORITY"] == "3" and "level=INFO" in e["MESSAGE"]
               for e in cont)
    crashes = [e for e in cont if e["CONTAINER_NAME"] == "open-webui" and "Database connection failed" in e["MESSAGE"]]
    assert len(crashes) >= 5, "a restart loop repeats its failure"


def test_benign_look_alikes_are_few_and_routine():
    box, entries = play(SCHEDULE, 4)
    failed = [e for e in entries if e["MESSAGE"].startswith("Failed password")]
    assert len(failed) == 4 and all(e["_SYSTEMD_UNIT"] == "ssh.service" for e in failed)
    assert not any(re.search(r"from 192\.168\.", e["MESSAGE"]) for e in failed), "scanners come from the internet"
    unit_fail = [e for e in entries if "Failed with result" in e["MESSAGE"]]
    assert len(unit_fail) == 1 and "systemd-networkd-wait-online.service" in unit_fail[0]["MESSAGE"]
    boots = {e["_BOOT_ID"] for e in entries}
    assert len(boots) == 2, "the reboot starts a new _BOOT_ID"
    after = [e for e in entries if int(e["__REALTIME_TIMESTAMP"]) > (START + 3 * 3600 + 180) * 1e6]
    assert {e["_BOOT_ID"] for e in after} == {box.journal.boot_id}


def test_healthy_box_has_routine_background():
    _, entries = play([], 6)
    idents = {e["SYSLOG_IDENTIFIER"] for e in entries}
    assert {"CRON", "sshd", "systemd"} <= idents
    assert not any("Xid" in e["MESSAGE"] or "Failed password" in e["MESSAGE"] for e in entries)
