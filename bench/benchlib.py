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


MIX_KINDS = ("seasonal", "robust", "thermal", "iforest")


def mix_counts(args, scale: int = 1) -> dict[str, int]:
    """How many series of each kind of the mix (add_series_mix_args), `scale` times over."""
    return {k: getattr(args, k) * scale for k in MIX_KINDS}


def mix_series(kind: str, index: int, t):
    """One series of the mix on the time grid `t`: (model kind, X or None, y). Seeded by (kind,
    index), so every process draws the same series whichever others it draws (sharded benchmarks
    generate only the ones their shard owns). `seasonal` series go to the caller's univariate model."""
    import numpy as np

    rng = np.random.default_rng([MIX_KINDS.index(kind), index])
    n = len(t)
    if kind == "seasonal":
        phase = 2 * np.pi * np.arange(n) / 1440
        return "seasonal", None, 40 + rng.uniform(2, 10) * np.sin(phase + rng.uniform(0, 6)) + rng.normal(0, 1, n)
    if kind == "robust":
        return "robust_z", None, 10 + rng.normal(0, 1, n)
    if kind == "thermal":
        power = np.repeat(rng.uniform(30, 350, n // 30 + 1), 30)[:n]
        fan = np.clip(30 + 0.2 * power, 30, 100)
        return "thermal", np.c_[power, fan], 30 + 0.12 * power + rng.normal(0, 0.5, n)
    return "iforest", rng.normal(0, 1, (n, 6)), None


def fit_mix_series(kind: str, index: int, t, univariate_model: str):
    """The fitted model of one series of the mix (as MetricDetector would fit it)."""
    from detector.models import make_model

    model_kind, X, y = mix_series(kind, index, t)
    if model_kind == "seasonal":
        return make_model(univariate_model).fit(t, y)
    if model_kind == "thermal":
        return make_model("thermal").fit(t, X, y)
    if model_kind == "iforest":
        return make_model("iforest", random_state=index).fit(t, X)
    return make_model(model_kind).fit(t, y)


def score_cycles(models, t_last: float, step: float, cycles: int, batched: bool = True) -> list[float]:
    """Wall seconds of each scoring cycle over fitted mix models [(kind, model)]: every series scores
    one new point, as the service does each step. `batched`: as the service scores them (the
    univariate models of a cycle together, detector/models/batch.py; the multivariate ones one by
    one); otherwise every series on its own."""
    import time

    import numpy as np

    from detector.models.batch import can_score_points, score_point_batch

    together = [m for _, m in models if batched and can_score_points(m)]
    alone = [(kind, m) for kind, m in models if not (batched and can_score_points(m))]
    out = []
    for c in range(cycles):
        tn, yn = np.array([t_last + step * (c + 1)]), np.array([40.0])
        Xth, Xif = np.array([[200.0, 70.0]]), np.zeros((1, 6))
        c0 = time.perf_counter()
        if together:
            score_point_batch(together, tn[0], np.full(len(together), 40.0))
        for kind, m in alone:
            if kind == "thermal":
                m.score(tn, Xth, yn)
            elif kind == "iforest":
                m.score(tn, Xif)
            else:
                m.score(tn, yn)
        out.append(time.perf_counter() - c0)
    return out
