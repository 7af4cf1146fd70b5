"""Feature drift: has the data a model now sees moved away from the data it was trained on?

Pure functions, no clock, no store. A model's training window is summarised once, at fit time, as
a small `Reference` per series and feature (stored with the model version, never the raw data):

    edges           PSI bin edges: the training data's deciles (ties merged, padded with +inf)
    hour_counts     training points per UTC hour of the day and PSI bin       (24 x BINS)
    hour_quantiles  the training data's 2.5, 7.5, ..., 97.5 % quantiles per hour (24 x QUANTILES)
    scale           robust spread of the training data (IQR / 1.349, floored)

`drift(reference, t, x)` compares recent points against the training points *at the same hours of
the day*: each hour of the day present in the recent window weighs its own part of the training
distribution by how many recent points fell in it. A daily rhythm (a GPU busy by day, idle by
night) therefore is not drift, even when the recent window is only a few hours long; a recent point
at an hour the training window never saw is left out (nothing to compare it with).

    PSI          sum (q - p) ln(q / p) over the fixed training bins, both shares floored at EPS; the
                 training shares are mixed hour by hour in the recent window's proportions
    wasserstein  per hour of the day, scipy's 1-D Wasserstein distance between the recent points of
                 that hour and the training quantiles of the same hour, averaged over the hours
                 (weighted by recent points) and divided by the training scale ("1.0" = one robust
                 standard deviation of the training data, whatever the metric's unit). Being
                 per hour, it also sees a changed rhythm (busy at night now) that leaves the
                 day's pooled distribution, and so PSI, unmoved.

THRESHOLDS, the one place (the alert rules' header table quotes them): PSI > 0.25 is the usual
rule of thumb for a significant population shift (< 0.1 stable, 0.1-0.25 moderate); PSI alone
misses a shift inside one bin (a constant series moving to another constant), so a series also
counts as drifted when its distribution moved by more than one training standard deviation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import wasserstein_distance

HOURS = 24
BINS = 10
QUANTILES = (np.arange(20) + 0.5) / 20  # mid-points of 20 equal-mass slices: each stands for 5 %
EPS = 1e-4  # floor of a bin's share in PSI: an empty bin costs a bounded amount, never log(0)
# fewer finite points than this (training or recent): drift is unknown. Two samples of one
# distribution differ by chance: PSI's expected value is about (BINS - 1) / n, 0.09 at n = 100,
# safely under PSI_THRESHOLD; at n = 20 chance alone would cross it.
MIN_POINTS = 100
SCALE_FLOOR = 1e-9  # absolute floor of the robust scale (a constant series divides by this)
SCALE_REL_FLOOR = 1e-3  # ... and relative to the training median: 0.1 % of the level
PSI_THRESHOLD = 0.25
WASSERSTEIN_THRESHOLD = 1.0
STATISTICS = ("psi", "wasserstein")
REFERENCE_FORMAT = 1  # the stored sketch's layout; another number is read as "no reference"


@dataclass(frozen=True)
class Reference:
    """One series' one feature over its training window (see the module docstring)."""

    edges: np.ndarray  # (BINS - 1,)
    hour_counts: np.ndarray  # (HOURS, BINS)
    hour_quantiles: np.ndarray  # (HOURS, len(QUANTILES)), NaN for an hour without training data
    scale: float


def hour_of_day(t: np.ndarray) -> np.ndarray:
    """UTC hour of the day (0-23) of unix times."""
    return (np.floor(np.asarray(t, dtype=float) / 3600.0) % HOURS).astype(int)


def robust_scale(x: np.ndarray) -> float:
    """IQR / 1.349 (the standard deviation for normal data, unmoved by outliers), floored so a
    constant series never divides by zero."""
    q25, q50, q75 = np.percentile(x, [25, 50, 75])
    return float(max((q75 - q25) / 1.349, SCALE_REL_FLOOR * abs(q50), SCALE_FLOOR))


def _finite(t, x) -> tuple[np.ndarray, np.ndarray]:
    t, x = np.asarray(t, dtype=float), np.asarray(x, dtype=float)
    ok = np.isfinite(t) & np.isfinite(x)
    return t[ok], x[ok]


def reference(t: np.ndarray, x: np.ndarray) -> Reference | None:
    """The sketch of training points (t, x); None when too few are finite."""
    t, x = _finite(t, x)
    if len(x) < MIN_POINTS:
        return None
    inner = np.unique(np.quantile(x, np.linspace(0, 1, BINS + 1)[1:-1]))
    edges = np.full(BINS - 1, np.inf)
    edges[:len(inner)] = inner
    hours = hour_of_day(t)
    bins = np.digitize(x, edges)
    counts = np.bincount(hours * BINS + bins, minlength=HOURS * BINS).reshape(HOURS, BINS).astype(float)
    return Reference(edges, counts, _hour_quantiles(hours, x), robust_scale(x))


def _hour_quantiles(hours: np.ndarray, x: np.ndarray) -> np.ndarray:
    """QUANTILES of x within each hour of the day (linear interpolation, as np.quantile), all hours
    from one sort rather than 24 masked passes."""
    order = np.lexsort((x, hours))
    xs = x[order]
    n = np.bincount(hours, minlength=HOURS)
    start = np.concatenate(([0], np.cumsum(n)[:-1]))
    pos = QUANTILES[None, :] * np.maximum(n - 1, 0)[:, None]  # (HOURS, Q) position within the hour
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, np.maximum(n - 1, 0)[:, None])
    frac = pos - lo
    base = start[:, None]
    has = n > 0
    out = np.full((HOURS, len(QUANTILES)), np.nan)
    a, b = xs[(base + lo)[has]], xs[(base + hi)[has]]
    out[has] = a + (b - a) * frac[has]
    return out


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two vectors of bin shares (each floored at EPS)."""
    p = np.maximum(np.asarray(expected, dtype=float), EPS)
    q = np.maximum(np.asarray(actual, dtype=float), EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def drift(ref: Reference, t: np.ndarray, x: np.ndarray) -> dict[str, float] | None:
    """{"psi", "wasserstein"} of recent points (t, x) against `ref` at the same hours of the day;
    None (unknown) when fewer than MIN_POINTS recent points fall in hours the training saw."""
    t, x = _finite(t, x)
    hours = hour_of_day(t)
    seen = ref.hour_counts.sum(axis=1) > 0
    keep = seen[hours]
    x, hours = x[keep], hours[keep]
    if len(x) < MIN_POINTS:
        return None
    weight = np.bincount(hours, minlength=HOURS).astype(float)  # recent points per hour of the day
    per_hour = ref.hour_counts / np.maximum(ref.hour_counts.sum(axis=1, keepdims=True), 1.0)
    expected = weight @ per_hour / weight.sum()
    actual = np.bincount(np.digitize(x, ref.edges), minlength=BINS) / len(x)
    w = sum(weight[h] * wasserstein_distance(x[hours == h], ref.hour_quantiles[h])
            for h in np.flatnonzero(weight)) / weight.sum()
    return {"psi": psi(expected, actual), "wasserstein": float(w / ref.scale)}


def drifted(stats: dict[str, float]) -> bool:
    return stats["psi"] > PSI_THRESHOLD or stats["wasserstein"] > WASSERSTEIN_THRESHOLD


# -- storage with the model version: stacked arrays per feature (one npz entry each, not per series)

def pack(refs: dict[str, dict[str, Reference]], trained_until: float) -> dict[str, Any]:
    """{feature: {series id: Reference}} -> a document for the version's state."""
    features = {}
    for feature, by_series in refs.items():
        sids = list(by_series)
        if not sids:
            continue
        rs = [by_series[s] for s in sids]
        features[feature] = {"series": sids,
                             "edges": np.stack([r.edges for r in rs]),
                             "hour_counts": np.stack([r.hour_counts for r in rs]).astype(np.float32),
                             # float32: ample for a distance in standard deviations, half the bytes
                             "hour_quantiles": np.stack([r.hour_quantiles for r in rs]).astype(np.float32),
                             "scale": np.array([r.scale for r in rs])}
    return {"format": REFERENCE_FORMAT, "trained_until": float(trained_until), "features": features}


def unpack(doc: Any) -> tuple[dict[str, dict[str, Reference]], float] | None:
    """`pack`'s document -> ({feature: {series id: Reference}}, trained_until); None when absent or
    of another format (a version stored before drift existed: drift unknown, never zero). Raises
    ValueError on a malformed one."""
    if not isinstance(doc, dict) or doc.get("format") != REFERENCE_FORMAT:
        return None
    out: dict[str, dict[str, Reference]] = {}
    try:
        for feature, f in doc["features"].items():
            sids = f["series"]
            edges, counts = np.asarray(f["edges"], float), np.asarray(f["hour_counts"], float)
            quantiles, scale = np.asarray(f["hour_quantiles"], float), np.asarray(f["scale"], float)
            n = len(sids)
            if (edges.shape != (n, BINS - 1) or counts.shape != (n, HOURS, BINS)
                    or quantiles.shape != (n, HOURS, len(QUANTILES)) or scale.shape != (n,)):
                raise ValueError(f"drift reference of {feature!r}: arrays of the wrong shape")
            out[feature] = {str(s): Reference(edges[i], counts[i], quantiles[i], float(scale[i]))
                            for i, s in enumerate(sids)}
        return out, float(doc["trained_until"])
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"drift reference unreadable: {e!r}") from e
