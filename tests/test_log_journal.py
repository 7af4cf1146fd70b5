"""journalctl -o json lines and plain text -> LogEntry with the stream-label contract."""
from __future__ import annotations

import json

import pytest

from detector.logs.journal import entry_from_journal, read_journal_lines, read_log_file, read_plain_lines

UNIT_LINE = ('{"__REALTIME_TIMESTAMP":"1732600000123456","_BOOT_ID":"8f1e","PRIORITY":"3","_TRANSPORT":"syslog",'
             '"SYSLOG_IDENTIFIER":"sshd","_SYSTEMD_UNIT":"ssh.service","_PID":"812","_HOSTNAME":"rig",'
             '"MESSAGE":"error: kex_exchange_identification: Connection closed by remote host"}')
KERNEL_LINE = ('{"__REALTIME_TIMESTAMP":"1732600001000000","_BOOT_ID":"8f1e","PRIORITY":"4","_TRANSPORT":"kernel",'
               '"SYSLOG_IDENTIFIER":"kernel","MESSAGE":"NVRM: Xid (PCI:0000:02:00): 79, pid=\'<unknown>\', name=<unknown>, '
               'GPU has fallen off the bus."}')
CONTAINER_LINE = ('{"__REALTIME_TIMESTAMP":"1732600002000000","PRIORITY":"3","_TRANSPORT":"journal",'
                  '"CONTAINER_NAME":"ollama","CONTAINER_ID":"0123456789ab","SYSLOG_IDENTIFIER":"0123456789ab",'
                  '"_SYSTEMD_UNIT":"docker.service","_PID":"900","MESSAGE":"time=2024-11-26 level=INFO msg=\\"listening\\""}')


def test_unit_line_maps_to_journal_stream_labels():
    entry = entry_from_journal(json.loads(UNIT_LINE))
    assert entry.ts == pytest.approx(1732600000.123456)
    assert entry.labels == {"job": "systemd-journal", "unit": "ssh.service", "identifier": "sshd",
                            "priority": "3", "transport": "syslog"}
    assert entry.message.startswith("error: kex_exchange")
    assert entry.priority == 3 and entry.meta["boot_id"] == "8f1e" and entry.meta["pid"] == "812"


def test_kernel_line_has_no_unit_label():
    entry = entry_from_journal(json.loads(KERNEL_LINE))
    assert entry.labels == {"job": "systemd-journal", "identifier": "kernel", "priority": "4", "transport": "kernel"}
    assert "pid" not in entry.meta


def test_container_line_gets_only_docker_labels_and_stderr_is_no_priority():
    entry = entry_from_journal(json.loads(CONTAINER_LINE))
    assert entry.labels == {"job": "docker", "container": "ollama"}  # never the journal labels too
    assert entry.priority is None and entry.meta["stream"] == "stderr"
    assert entry.message == 'time=2024-11-26 level=INFO msg="listening"'


def test_non_utf8_message_as_byte_array_and_null_message():
    record = json.loads(UNIT_LINE)
    record["MESSAGE"] = list("café ".encode()) + [0xFF]
    assert entry_from_journal(record).message == "café \ufffd"
    record["MESSAGE"] = None
    assert entry_from_journal(record).message == ""


def test_read_journal_lines_skips_blank_and_bad_lines_unless_strict():
    lines = [UNIT_LINE, "", "not json", KERNEL_LINE.encode(), '{"MESSAGE":"no timestamp"}']
    assert [e.labels["identifier"] for e in read_journal_lines(lines)] == ["sshd", "kernel"]
    with pytest.raises(ValueError, match="journal line 3"):
        list(read_journal_lines(lines, strict=True))


def test_boot_id_change_is_kept_in_meta():
    first = json.loads(UNIT_LINE)
    second = dict(first, _BOOT_ID="a7c2", __REALTIME_TIMESTAMP="1732700000000000")
    assert [e.meta["boot_id"] for e in read_journal_lines([json.dumps(first), json.dumps(second)])] == ["8f1e", "a7c2"]


def test_plain_text_and_autodetection(tmp_path):
    entries = list(read_plain_lines(["first line\n", "\n", "third\r\n"], start_ts=100.0, step_s=2.0))
    assert [(e.ts, e.message, e.labels) for e in entries] == [(100.0, "first line", {"job": "file"}),
                                                              (104.0, "third", {"job": "file"})]
    journal = tmp_path / "j.jsonl"
    journal.write_text(UNIT_LINE + "\n" + CONTAINER_LINE + "\n")
    assert [e.labels["job"] for e in read_log_file(journal)] == ["systemd-journal", "docker"]
    plain = tmp_path / "p.log"
    plain.write_text("kernel: something happened\n")
    assert read_log_file(plain)[0].message == "kernel: something happened"
