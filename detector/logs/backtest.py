"""`rigwatch-detector backtest --journal-file FILE`: the log side's part of the backtest report.

The log plugin's backtest merges the returned `incidents` into the report's list; everything else
in the answer goes under "logs".
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from detector.logs.detector import LogDetectorConfig, incidents_from_entries
from detector.logs.journal import read_log_file
from detector.logs.patterns import gpu_index_by_pci
from detector.promclient import PromClient, PromError
from detector.timefmt import iso
from rigwatch.redact import redact_url

log = logging.getLogger(__name__)


def gpu_map_from_prometheus(client: PromClient | None) -> dict[str, str]:
    """{PCI id: gpu index} from the exporter's gpu_info series, asked through the configured client
    (its headers, timeout and retries: behind an authenticating proxy too); empty (Xid incidents
    then carry the PCI id only) when Prometheus cannot be asked."""
    if client is None:
        return {}
    try:
        return gpu_index_by_pci(client.series("gpu_info"))
    except PromError as e:
        log.warning("gpu_info not readable from %s (%s): Xid incidents will name the PCI id only",
                    redact_url(client.base_url), e)
        return {}


def run_journal_backtest(journal_file: str | Path, *, logs_config: LogDetectorConfig, start: float | None = None,
                         end: float | None = None, warmup: float | None = None, threshold: float = 1.0,
                         gpu_by_pci: dict[str, str] | None = None) -> dict[str, Any]:
    """The journal's lines in [start, end) replayed: trained before start + warmup (the metric side's
    training part), scored after."""
    wall = time.perf_counter()
    entries = read_log_file(journal_file)
    if start is not None:
        entries = [e for e in entries if e.ts >= start]
    if end is not None:
        entries = [e for e in entries if e.ts < end]
    train_until = start + float(warmup) if start is not None and warmup else None
    incidents = incidents_from_entries(entries, logs_config, gpu_by_pci=gpu_by_pci or {}, train_until=train_until,
                                       threshold=threshold)
    for incident in incidents:
        incident["start"], incident["end"] = iso(incident["start"]), iso(incident["end"])
        incident["peak_score"] = round(float(incident["peak_score"]), 3)
    return {"incidents": incidents, "lines": len(entries), "journal_file": str(journal_file),
            "trained_until": iso(train_until) if train_until else None,
            "wall_seconds": round(time.perf_counter() - wall, 2)}
