"""Draw a watched series with the detector's expected band and its anomaly score, from Prometheus.

    python -m scripts.plot_score --prometheus-url http://127.0.0.1:9090 [--detector gpu_thermal]
        [--match 'gpu="0"'] [--minutes 30] [--output docs/demo-score.png]

Top panel: the detector's input (rigwatch_anomaly_expected's source, e.g. gpu_temperature_celsius)
with rigwatch_anomaly_expected and the band between rigwatch_anomaly_lower and _upper; bottom panel:
rigwatch_anomaly_score with the alerting threshold 1. Everything comes from /api/v1/query_range, so
it draws what Grafana's overlay panels draw.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime

from harness.prometheus_api import PrometheusAPI

SOURCE = {"gpu_thermal": "gpu_temperature_celsius"}  # detector -> the series it watches


def _series(api: PrometheusAPI, q: str, start: float, end: float, step: float) -> tuple[list, list]:
    res = api.query_range(q, start, end, step)
    if not res:
        return [], []
    vals = res[0]["values"]
    return [datetime.fromtimestamp(float(t), UTC) for t, _ in vals], [float(v) for _, v in vals]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="plot_score", description=__doc__.split("\n\n")[0])
    p.add_argument("--prometheus-url", required=True)
    p.add_argument("--detector", default="gpu_thermal")
    p.add_argument("--match", default='gpu="0"', help="extra label matchers, e.g. gpu=\"0\"")
    p.add_argument("--source", default=None, help="PromQL of the watched series (default: known per detector)")
    p.add_argument("--minutes", type=float, default=30.0, help="how far back from --end (default 30)")
    p.add_argument("--end", type=float, default=None, help="epoch seconds (default now)")
    p.add_argument("--step", type=float, default=5.0)
    p.add_argument("--output", default="docs/demo-score.png")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    api = PrometheusAPI(args.prometheus_url.rstrip("/"))
    end = args.end or time.time()
    start = end - args.minutes * 60
    sel = f'detector="{args.detector}",{args.match}' if args.match else f'detector="{args.detector}"'
    source = args.source or f"{SOURCE.get(args.detector, args.detector)}{{{args.match}}}"
    got = {name: _series(api, q, start, end, args.step) for name, q in {
        "value": source,
        "expected": f"rigwatch_anomaly_expected{{{sel}}}",
        "lower": f"rigwatch_anomaly_lower{{{sel}}}",
        "upper": f"rigwatch_anomaly_upper{{{sel}}}",
        "score": f"rigwatch_anomaly_score{{{sel}}}",
    }.items()}
    if not got["score"][0]:
        print(f"no rigwatch_anomaly_score{{{sel}}} in the range", file=sys.stderr)
        return 1
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6), height_ratios=[2, 1])
    if got["lower"][0] and got["upper"][0] and len(got["lower"][0]) == len(got["upper"][0]):
        top.fill_between(got["lower"][0], got["lower"][1], got["upper"][1], color="tab:green", alpha=0.2,
                         label="expected band", step="post")
    if got["expected"][0]:
        top.plot(*got["expected"], color="tab:green", lw=1, label="expected")
    if got["value"][0]:
        top.plot(*got["value"], color="black", lw=1.2, label=source)
    top.set_title(f"rigwatch detector {args.detector} ({args.match})")
    top.legend(loc="upper left", fontsize=8)
    t, s = got["score"]
    bottom.plot(t, s, color="tab:red", lw=1.2, label="rigwatch_anomaly_score")
    bottom.axhline(1.0, color="gray", ls="--", lw=1, label="threshold 1")
    bottom.fill_between(t, 0, s, where=[v > 1 for v in s], color="tab:red", alpha=0.25, step="post")
    bottom.set_ylabel("score")
    bottom.legend(loc="upper left", fontsize=8)
    bottom.set_xlabel("UTC")
    fig.tight_layout()
    fig.savefig(args.output, dpi=100)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
