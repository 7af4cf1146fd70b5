"""Pictures of incidents for `backtest --plot`: each scored series kept as a trace, one PNG per
incident with the value, the expected band, the flagged points and the score. `draw_band` is the
one band plot: the tracking run's PNG of the most anomalous series (plot_series) draws with it too."""
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


def draw_band(ax, ax2, a: dict[str, np.ndarray], threshold: float, title: str) -> None:
    """The value, its expected band and the points scored above `threshold` on `ax`; the score and
    the threshold on `ax2`. `a`: equal-length arrays t, y, score, lower, upper."""
    t = [datetime.fromtimestamp(x, tz=UTC) for x in a["t"]]
    ax.plot(t, a["y"], lw=1, label="value")
    if np.isfinite(a["lower"]).any():
        ax.fill_between(t, a["lower"], a["upper"], alpha=0.2, label="expected band", step="mid")
    flagged = np.nan_to_num(a["score"]) > threshold
    ax.scatter(np.array(t)[flagged], a["y"][flagged], s=10, color="red", label="anomalous", zorder=3)
    ax.set_title(title[:110], fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    ax2.plot(t, a["score"], lw=1, color="black")
    ax2.axhline(threshold, color="red", lw=0.8, ls="--")
    ax2.set_ylabel("score")


def plot_series(series: list[dict[str, np.ndarray]], titles: list[str], threshold: float = 1.0) -> bytes:
    """One PNG (bytes) with each series' band plot stacked: the tracking run's most anomalous
    series of the training window. `series`: arrays as draw_band takes them."""
    import io

    # a Figure of its own (Agg canvas), not pyplot's global state: drawn in the tracking worker
    # thread while the process may be doing anything else
    from matplotlib.figure import Figure

    n = max(len(series), 1)
    fig = Figure(figsize=(10, 3.2 * n))
    axes = fig.subplots(2 * n, 1, height_ratios=[3, 1] * n, squeeze=False)
    for i, (a, title) in enumerate(zip(series, titles, strict=True)):
        draw_band(axes[2 * i][0], axes[2 * i + 1][0], a, threshold, title)
    if not series:
        axes[0][0].set_title("no scored series", fontsize=8)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=70)
    return out.getvalue()


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
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 5), sharex=True, height_ratios=[3, 1])
        draw_band(ax, ax2, {k: v[m] for k, v in a.items()}, threshold, inc.summary)
        ax.axvspan(datetime.fromtimestamp(inc.start, tz=UTC),
                   datetime.fromtimestamp(inc.end, tz=UTC), color="red", alpha=0.08)
        labels = "_".join(f"{v}" for _, v in sorted(inc.labels.items()))[:60]
        name = f"{n:03d}_{inc.detector}_{labels}".replace("/", "_").replace(" ", "_") + ".png"
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=80)
        plt.close(fig)
        written.append(str(out_dir / name))
    return written
