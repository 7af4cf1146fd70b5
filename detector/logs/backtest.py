"""`rigwatch-detector backtest --journal-file FILE`: the log side's part of the backtest report.

detector/backtest.py calls `run_journal_backtest(path, config=, start=, end=, threshold=)` and merges
the returned `incidents` into its own list; everything else in the answer goes under "logs".
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from detector.logs.detector import LogDetectorConfig, incidents_from_entries
from detector.logs.journal import read_log_file
from detector.logs.patterns import gpu_index_by_pci
from detector.timefmt import iso

log = logging.getLogger(__name__)


def gpu_map_from_prometheus(url: str | None, timeout: float = 5.0) -> dict[str, str]:
    """{PCI id: gpu index} from the exporter's gpu_info series; empty (Xid incidents then carry the PCI
    id only) when Prometheus cannot be asked."""
    if not url:
        return {}
    import requests

    try:
        response = requests.get(url.rstrip("/") + "/api/v1/series", params={"match[]": "gpu_info"}, timeout=timeout)
        response.raise_for_status()
        return gpu_index_by_pci(response.json().get("data") or [])
    except (requests.RequestException, ValueError) as e:
        log.warning("gpu_info not readable from %s (%s): Xid incidents will name the PCI id only", url, e)
        return {}


def run_journal_backtest(journal_file: str | Path, *, config: Any = None, start: float | None = None,
                         end: float | None = None, threshold: float = 1.0,
                         gpu_by_pci: dict[str, str] | None = None) -> dict[str, Any]:
    wall = time.perf_counter()
    logs_config = LogDetectorConfig.from_dict(getattr(config, "logs", None) or {})
    entries = read_log_file(journal_file)
    if start is not None:
        entries = [e for e in entries if e.ts >= start]
    if end is not None:
        entries = [e for e in entries if e.ts < end]
    train_until = None
    schedule = getattr(config, "schedule", None)
    if start is not None and getattr(schedule, "warmup", None):
        train_until = start + float(schedule.warmup)  # the same training part as the metric side
    if gpu_by_pci is None:
        prometheus = getattr(config, "prometheus", None)
        gpu_by_pci = gpu_map_from_prometheus(getattr(prometheus, "url", None))
    incidents = incidents_from_entries(entries, logs_config, gpu_by_pci=gpu_by_pci, train_until=train_until,
                                       threshold=threshold)
    for incident in incidents:
        incident["start"], incident["end"] = iso(incident["start"]), iso(incident["end"])
        incident["peak_score"] = round(float(incident["peak_score"]), 3)
    return {"incidents": incidents, "lines": len(entries), "journal_file": str(journal_file),
            "trained_until": iso(train_until) if train_until else None,
            "wall_seconds": round(time.perf_counter() - wall, 2)}
