"""The detector's Prometheus client against a real VictoriaMetrics (the fleet's central store), beside
a real Prometheus holding the same samples: the simulated box's history is backfilled into
Prometheus with promtool and imported into VictoriaMetrics with its own timestamps. What differs
between the two engines and what the client does about it:

- step alignment: both answer on the grid the client asks for (it floors start and end to the step);
- the 11,000-points limit: a longer range is split and stitched the same way from both;
- `/api/v1/series` answers the same label sets;
- a series that ended: Prometheus repeats its last sample for 5 minutes (its lookback delta), VM for
  about one sample interval; nothing else differs;
- VictoriaMetrics hides its newest 30 s (`-search.latencyOffset`), answering for them with the last
  visible value: a live pass stays `prometheus.latency_offset` behind (`fetch.grid_end`).
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from detector.config import DetectorConfig, load_config
from detector.fetch import fetch_series, grid_end
from detector.promclient import PromClient
from harness.processes import backfill_openmetrics, wait_until
from harness.servers import PrometheusServer
from harness.victoria import VictoriaMetricsServer

pytestmark = pytest.mark.integration

HOURS = 12
LOOKBACK_DELTA = 300.0  # Prometheus' default --query.lookback-delta


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def openmetrics_to_import(text: str) -> str:
    """OpenMetrics (timestamps in seconds) as VictoriaMetrics' Prometheus text import (milliseconds)."""
    out = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            head, ts = line.rsplit(" ", 1)
            out.append(f"{head} {round(float(ts) * 1000)}")
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """(Prometheus, VictoriaMetrics, start, end) holding the same 12 hours of the simulated box."""
    d = tmp_path_factory.mktemp("vm")
    start = (int(time.time()) // 86400) * 86400 - 86400
    out = subprocess.run([sys.executable, "-m", "exporter.sim.cli", "history", "--out", str(d / "h"),
                          "--days", str(HOURS / 24), "--seed", "5", "--start", _iso(start)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    backfill_openmetrics(d / "h" / "metrics.om", d / "tsdb")
    with PrometheusServer(d / "prom", "global: {scrape_interval: 1h}\n", storage=d / "tsdb") as prom, \
            VictoriaMetricsServer(d / "vm") as vm:
        vm.import_text(openmetrics_to_import((d / "h" / "metrics.om").read_text()))
        yield prom, vm, float(start), float(start + HOURS * 3600)


def test_every_preset_detector_reads_the_same_series_from_both(both):
    prom, vm, start, end = both
    pc, vc = PromClient(prom.url, retries=0), PromClient(vm.url, retries=0)
    s, e = start + 3600, end - 60
    seen = 0
    for det in load_config(None).detectors:
        a, b = fetch_series(pc, det, s, e, 60), fetch_series(vc, det, s, e, 60)
        assert set(a) == set(b), det.name
        for sid in a:
            pa, va = a[sid], b[sid]
            assert pa.labels == va.labels
            only_prom = np.setdiff1d(pa.t, va.t)
            assert np.setdiff1d(va.t, pa.t).size == 0, (det.name, sid)  # VM never answers where Prometheus does not
            common_p, common_v = np.isin(pa.t, va.t), np.isin(va.t, pa.t)
            np.testing.assert_allclose(pa.y[common_p], va.y[common_v], rtol=1e-9, err_msg=f"{det.name} {sid}")
            # what only Prometheus answers is its lookback tail after a series' last sample
            for t in only_prom:
                assert ((va.t < t) & (va.t >= t - LOOKBACK_DELTA)).any(), (det.name, sid, t)
            seen += len(va.t)
    assert seen > 10_000  # the sim's GPU, container and workload series were there to compare


def test_a_range_over_the_points_limit_is_split_the_same_way(both):
    prom, vm, start, end = both
    det = DetectorConfig(name="t", query="gpu_temperature_celsius", model="robust_z")
    step = 3.0  # 12 h at 3 s = 14,400 points a series: two requests under 11,000
    a = fetch_series(PromClient(prom.url, retries=0), det, start, end, step)
    b = fetch_series(PromClient(vm.url, retries=0), det, start, end, step)
    assert set(a) == set(b) and len(a) == 2
    for sid in a:
        assert len(a[sid].t) > 11_000
        np.testing.assert_array_equal(a[sid].t, b[sid].t)
        np.testing.assert_allclose(a[sid].y, b[sid].y)
        assert np.all(np.diff(b[sid].t) == step)  # stitched without a duplicate or a hole


def test_series_endpoint_answers_the_same_label_sets(both):
    prom, vm, start, end = both
    a = PromClient(prom.url).series("gpu_info", start, end)
    b = PromClient(vm.url).series("gpu_info", start, end)
    assert len(a) == 2 and sorted(map(sorted, (x.items() for x in a))) == sorted(map(sorted, (x.items() for x in b)))


def test_latency_offset_keeps_live_passes_off_the_hidden_newest_samples(tmp_path):
    """Samples written live (value = their own timestamp); VictoriaMetrics hides the newest 4 s. At the
    grid end with `latency_offset` 4 s every point is a fresh sample; without it the newest points
    carry a value seconds older than their time (the last visible one)."""
    with VictoriaMetricsServer(tmp_path, latency_offset="4s") as vm:
        stop = threading.Event()

        def write():
            while not stop.is_set():
                t = time.time()
                vm.import_text(f'live_ts{{box="a"}} {t:.3f} {round(t * 1000)}\n')
                stop.wait(0.25)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        try:
            # ~6 s of samples visible past the hidden 4 s (a loaded machine writes late: wait, not sleep)
            wait_until(lambda: (r := vm.query("count_over_time(live_ts[30s])")) and float(r[0]["value"][1]) >= 24,
                       60, "6 s of live samples", interval=0.25)
            client, det, step = PromClient(vm.url, retries=0), DetectorConfig(name="t", query="live_ts",
                                                                              model="robust_z"), 1.0
            now = time.time()
            end = grid_end(now, step, latency_offset=4.0)
            (fresh,) = fetch_series(client, det, end - 3, end, step).values()
            naive_end = grid_end(now, step)
            (naive,) = fetch_series(client, det, naive_end - 8, naive_end, step).values()
        finally:
            stop.set()
            writer.join()
            vm.stop(timeout=1)  # its data is not needed: no graceful flush
    # fresh: every point a sample from within its last 2 s (written every 0.25 s). naive: its newest
    # grid point is not real data: either missing or the last visible value, ~4 s older than its time
    assert len(fresh.t) == 4 and np.all(fresh.t - fresh.y < 2.0), fresh.t - fresh.y
    assert naive.t[-1] < naive_end or naive.t[-1] - naive.y[-1] > 2.5, (naive_end, naive.t, naive.t - naive.y)
