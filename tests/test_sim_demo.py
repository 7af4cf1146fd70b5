"""`make demo` end to end: sim exporter + backfilled history + a real Prometheus, stopped cleanly."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_demo_runs_and_stops_cleanly(tmp_path):
    if shutil.which("prometheus") is None or shutil.which("promtool") is None:
        pytest.fail("prometheus/promtool not installed: run `make deps`")
    out = subprocess.run([sys.executable, "-m", "scripts.demo", "--duration", "14", "--interval", "2",
                          "--history-days", "0.05", "--speed", "120", "--workdir", str(tmp_path / "wd")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "backfilled 0.05 day(s) of sim history" in text
    assert "prometheus:                http://127.0.0.1:" in text
    assert "hottest in the backfilled day: gpu 0" in text
    readings = [ln for ln in text.splitlines() if ln.startswith("  gpu 0:")]
    assert readings and " C " in readings[-1] and " W " in readings[-1]
    assert text.rstrip().endswith("stopping")
    # both children were stopped: their logs end and nothing holds the TSDB lock
    assert (tmp_path / "wd" / "tsdb").is_dir()
    assert not (tmp_path / "wd" / "tsdb" / "lock").exists()
