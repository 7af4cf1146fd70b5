"""What every detector plugin hands the service: scored points (`ScoreBatch`) and series identity.

Shared by the metric side, the log side, the incident tracker, the service and the backtest, so
none of them imports another's internals for these.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# labels that say *where* a series came from or describe it, rather than identify it: kept in
# metrics, dropped from incident labels (an incident says gpu="0", container="ollama").
LOCATION_LABELS = ("job", "instance", "uuid", "name", "image")


def series_id(labels: dict[str, str]) -> str:
    """Stable identity of a source series. GPUs are keyed on uuid: an index can shift at boot."""
    items = {k: v for k, v in labels.items() if not ("uuid" in labels and k in ("gpu", "name"))}
    return ",".join(f"{k}={items[k]}" for k in sorted(items))


def incident_labels(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k not in LOCATION_LABELS}


@dataclass
class ScoreBatch:
    """Scored points of one series (arrays of equal length) plus what the model was."""

    detector: str
    model: str
    labels: dict[str, str]
    t: np.ndarray
    y: np.ndarray
    score: np.ndarray
    expected: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    explanation: list[str] | None = None
