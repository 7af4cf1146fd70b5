"""Loading the champion from the MLflow registry: `mlflow.pyfunc.load_model("models:/rigwatch-<d>@champion")`
and one predict on a small DataFrame, for the detectors of the 2,000-series mix (bench_registry's
store: bench_drift's series generator, fitted by MetricPlugin.fit with MLflow tracking into a SQLite
backend in a temp folder, the champion alias mirrored from the local registry as in serve).

Timed after `import mlflow` (and `import mlflow.pyfunc`), which are reported on their own: they are
paid once per process, the load once per model. Each load is of a fresh model (MLflow copies the
artifacts out of the store and runs detector/mlflow_model.py); the median of --load-repeat and the
first are printed. thermal and iforest read feature inputs, which the pyfunc refuses (see
detector/mlflow_model.py), so their predict is not timed.

    .venv/bin/python bench/bench_mlflow_load.py [--seasonal 1700 --robust 260 --thermal 30 --iforest 10 --days 7]
                                                [--load-repeat 3] [--predict-series 5] [--predict-points 60]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

assert "mlflow" not in sys.modules  # the import below is timed: nothing may have paid it yet
t0 = time.perf_counter()
import mlflow  # noqa: E402

IMPORT_MLFLOW_S = time.perf_counter() - t0
t0 = time.perf_counter()
import mlflow.pyfunc  # noqa: E402

IMPORT_PYFUNC_S = time.perf_counter() - t0

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from bench_drift import fleet  # noqa: E402  (the series generator, shared)
from bench_registry import NOW, STEP, FleetSource, mix_config  # noqa: E402  (the 2,000-series mix store)
from benchlib import add_series_mix_args  # noqa: E402

from detector.config import TrackingConfig  # noqa: E402
from detector.metric_plugin import MetricPlugin  # noqa: E402
from detector.mlflow_tracking import mlflow_tracker  # noqa: E402
from detector.persistence import FilePersistence  # noqa: E402
from detector.store import ModelStore  # noqa: E402


def small_frame(model, n_series: int, n_points: int) -> pd.DataFrame:
    """`n_points` new minutes after the training window for the first `n_series` series of the version."""
    ids = list(model.unwrap_python_model().series)[:n_series]
    t = NOW + STEP * np.arange(1, n_points + 1)
    ys = fleet(len(ids), t, seed=3, shift_from=None)
    return pd.DataFrame({"series": np.repeat(ids, n_points), "t": np.tile(t, len(ids)),
                         "y": np.concatenate([s.y for s in ys.values()])})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_series_mix_args(p)
    p.add_argument("--load-repeat", type=int, default=3)
    p.add_argument("--predict-series", type=int, default=5)
    p.add_argument("--predict-points", type=int, default=60)
    a = p.parse_args(argv)
    counts = {"mix_seasonal": a.seasonal, "mix_robust": a.robust, "mix_thermal": a.thermal, "mix_iforest": a.iforest}
    with tempfile.TemporaryDirectory() as root:
        uri = f"sqlite:///{root}/mlflow.db"
        tracker = mlflow_tracker(TrackingConfig(uri))
        plugin = MetricPlugin(mix_config(a.days), None, store=ModelStore(FilePersistence(f"{root}/store")),
                              source=FleetSource(counts), tracker=tracker)
        w = time.perf_counter()
        assert plugin.fit(NOW)
        fit_s = time.perf_counter() - w
        w = time.perf_counter()
        assert tracker.flush(600), "the tracker did not log the fit in 600 s"
        logged_s = time.perf_counter() - w
        tracker.close(10)
        assert tracker.errors == 0, tracker.errors
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        client = mlflow.MlflowClient(uri)
        print(f"import mlflow {IMPORT_MLFLOW_S:.2f} s, import mlflow.pyfunc {IMPORT_PYFUNC_S:.2f} s (once per process)")
        print(f"store: {sum(counts.values())} series ({', '.join(f'{k[4:]} {v}' for k, v in counts.items())}), "
              f"{a.days:g} d at {STEP:g} s; fitted in {fit_s:.1f} s, logged to MLflow "
              f"(runs, models, versions, champion aliases) {logged_s:.1f} s after")
        for name in counts:
            alias = client.get_model_version_by_alias(f"rigwatch-{name}", "champion")
            assert alias.tags["rigwatch.store_version"] == str(plugin.registry.record(name)["champion"])
            loads = []
            for _ in range(a.load_repeat):
                w = time.perf_counter()
                model = mlflow.pyfunc.load_model(f"models:/rigwatch-{name}@champion")
                loads.append(time.perf_counter() - w)
            text = (f"  {name:13s} ({counts[name]:4d} series): load_model @champion (version {alias.version}) "
                    f"median {statistics.median(loads):.3f} s ({', '.join(f'{x:.3f}' for x in loads)})")
            frame = small_frame(model, a.predict_series, a.predict_points)
            w = time.perf_counter()
            try:
                out = model.predict(frame)
            except Exception as e:  # noqa: BLE001 - the multivariate kinds are refused: said, not timed
                text += f"; predict n/a ({' '.join(str(e).split())[:60]})"
            else:
                assert len(out) == len(frame)
                text += (f"; predict {len(frame)} rows ({a.predict_series} series x {a.predict_points}) "
                         f"{(time.perf_counter() - w) * 1e3:.1f} ms")
            print(text, flush=True)


if __name__ == "__main__":
    main()
