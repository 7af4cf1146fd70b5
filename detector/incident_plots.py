"""Pictures of incidents for `backtest --plot`: each scored series kept as a trace, one PNG per
incident with the value, the expected band, the flagged points and the score."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from detector.incidents import Incident
from detector.scores import ScoreBatch, series_id


@dataclass
class SeriesTrace:
    """Everything scored for one series (kept for --plot)."""

    labels: dict[str, str]
    t: list[np.ndarray] = field(default_factory=list)
    y: list[np.ndarray] = field(default_factory=list)
    score: list[np.ndarray] = field(default_factory=list)
    lower: list[np.ndarray] = field(default_factory=list)
    upper: list[np.ndarray] = field(default_factory=list)
    expected: list[np.ndarray] = field(default_factory=list)

    def add(self, b: ScoreBatch) -> None:
        for k in ("t", "y", "score", "lower", "upper", "expected"):
            getattr(self, k).append(getattr(b, k))

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: (np.concatenate(getattr(self, k)) if getattr(self, k) else np.zeros(0))
                for k in ("t", "y", "score", "lower", "upper", "expected")}


def plot_incidents(incidents: list[Incident], traces: dict, out_dir: Path, threshold: float) -> list[str]:
    """One PNG per incident: the series with its band and the flagged points, an hour either side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for n, inc in enumerate(incidents, 1):
        tr = traces.get((inc.detector, series_id(inc.series_labels)))
        if tr is None:
            continue
        a = tr.arrays()
        pad = max(3600.0, inc.end - inc.start)
        m = (a["t"] >= inc.start - pad) & (a["t"] <= inc.end + pad)
        if not m.any():
            continue
        t = [datetime.fromtimestamp(x, tz=UTC) for x in a["t"][m]]
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 5), sharex=True, height_ratios=[3, 1])
        ax.plot(t, a["y"][m], lw=1, label="value")
        if np.isfinite(a["lower"][m]).any():
            ax.fill_between(t, a["lower"][m], a["upper"][m], alpha=0.2, label="expected band", step="mid")
        flagged = np.nan_to_num(a["score"][m]) > threshold
        ax.scatter(np.array(t)[flagged], a["y"][m][flagged], s=10, color="red", label="anomalous", zorder=3)
        ax.axvspan(datetime.fromtimestamp(inc.start, tz=UTC),
                   datetime.fromtimestamp(inc.end, tz=UTC), color="red", alpha=0.08)
        ax.set_title(inc.summary[:110], fontsize=8)
        ax.legend(fontsize=7, loc="upper left")
        ax2.plot(t, a["score"][m], lw=1, color="black")
        ax2.axhline(threshold, color="red", lw=0.8, ls="--")
        ax2.set_ylabel("score")
        labels = "_".join(f"{v}" for _, v in sorted(inc.labels.items()))[:60]
        name = f"{n:03d}_{inc.detector}_{labels}".replace("/", "_").replace(" ", "_") + ".png"
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=80)
        plt.close(fig)
        written.append(str(out_dir / name))
    return written
