"""What several benchmarks share: where the shared datasets are, this process's memory, and the
2,000-series mix the scale benchmarks hold (one place, so bench_scoring_scale and
bench_engine_memory measure the same thing). Imported by scripts in this folder only."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def shared_root() -> Path:
    """The shared data root: $RIGWATCH_SHARED, else ../shared beside the repository."""
    return Path(os.environ.get("RIGWATCH_SHARED") or REPO.parent / "shared")


def proc_status_mb(key: str = "VmRSS") -> float:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM...) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def add_series_mix_args(parser: argparse.ArgumentParser) -> None:
    """The series mix of a serve-like detector at 2,000 series, and their history length."""
    parser.add_argument("--seasonal", type=int, default=1700)
    parser.add_argument("--robust", type=int, default=260)
    parser.add_argument("--thermal", type=int, default=30)
    parser.add_argument("--iforest", type=int, default=10)
    parser.add_argument("--days", type=float, default=7.0)
