"""`rigwatch-exporter --backend sim --sim-journal FILE`: the live sim appends its journal to FILE."""
from __future__ import annotations

import json
import time

from exporter.cli import build_collector, build_parser


def _box(argv):
    args = build_parser().parse_args(argv)
    collector, box = build_collector(args)
    return collector, box


def test_sim_journal_flag_appends_journalctl_json_lines_while_the_box_plays(tmp_path):
    journal = tmp_path / "journal.jsonl"
    schedule = tmp_path / "s.yml"
    schedule.write_text("incidents:\n  - {kind: gpu_lost, at: 20s, duration: 10m, gpu: 1}\n")
    collector, box = _box(["--backend", "sim", "--sim-config", str(schedule), "--speed", "100",
                           "--sim-journal", str(journal)])
    try:
        assert not journal.exists()  # nothing is written before the box plays
        box.start()
        deadline = time.monotonic() + 10
        text = ""
        while time.monotonic() < deadline and "Xid" not in text:
            time.sleep(0.1)
            text = journal.read_text() if journal.exists() else ""
        box.stop()
    finally:
        box.close()
        collector.gpus.shutdown()
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    assert records and all(r["__REALTIME_TIMESTAMP"].isdigit() for r in records)
    stamps = [int(r["__REALTIME_TIMESTAMP"]) for r in records]
    assert stamps == sorted(stamps)
    xid = [r for r in records if "NVRM: Xid" in r["MESSAGE"]]
    assert xid and ": 79," in xid[0]["MESSAGE"] and xid[0]["_TRANSPORT"] == "kernel"


def test_without_the_flag_the_sim_keeps_its_journal_in_memory(tmp_path):
    collector, box = _box(["--backend", "sim"])
    try:
        assert box.journal_path is None
    finally:
        box.close()
        collector.gpus.shutdown()
    assert build_parser().parse_args(["--backend", "sim", "--sim-journal", "x.jsonl"]).sim_journal == "x.jsonl"
