"""Box restarts (detector/context/restarts.py): a reboot is one `box_restart` event per host, from the
exporters' boot-time series — the pure rule, then the ContextPlugin over a real Prometheus holding
backfilled boot times (live scoring and backtest)."""
from __future__ import annotations

import numpy as np
import pytest

from detector.config import ConfigError, parse_config
from detector.context.events import fold
from detector.context.plugin import ContextPlugin
from detector.context.restarts import BootSamples, restart_events
from detector.promclient import PromClient
from detector.timefmt import iso
from harness.processes import backfill_openmetrics
from harness.servers import PrometheusServer

T0 = 1_796_000_040.0  # a minute boundary: the range queries' grid falls on the samples
OLD, NEW = T0 - 5 * 86400 + 0.4, T0 + 3600 + 250.0  # booted five days ago; again 1h04m10s in
SETTLE = 900.0


def samples(instance, times, boots, metric="gpu_exporter_host_boot_time_seconds"):
    return BootSamples(instance, np.asarray(times, float), np.asarray(boots, float), metric)


def before_and_after(instance, down=(T0 + 3600, T0 + 3900), every=15.0, new=NEW, old=OLD):
    """Samples every `every` s for 2 h, none while the box is down, the new boot time after it."""
    t = np.arange(T0, T0 + 7200, every)
    t = t[(t < down[0]) | (t >= down[1])]
    return samples(instance, t, np.where(t < down[0], old, new))


def test_one_reboot_is_one_event_from_the_last_old_sample_to_the_first_new_plus_settle():
    (ev,) = restart_events([before_and_after("10.0.0.5:9842")], SETTLE)
    last_old, first_new = T0 + 3600 - 15, T0 + 3900
    assert (ev.kind, ev.start, ev.end) == ("box_restart", last_old, first_new + SETTLE)
    assert ev.scope == {"host": "10.0.0.5"} and not ev.detectors
    assert ev.summary == f"box 10.0.0.5 restarted (down 5 min, booted {iso(NEW)})"
    assert ev.details["down_seconds"] == 315 and ev.details["boot_time_seconds"] == NEW
    assert ev.details["boot_time"] == iso(NEW) and ev.details["previous_boot_time"] == iso(OLD)


def test_two_exporters_of_one_host_are_one_event_another_host_its_own():
    gpu = before_and_after("10.0.0.5:9842")
    # node-exporter scraped at other instants, its btime read a second apart from the GPU exporter's
    node = samples("10.0.0.5:9100", before_and_after("x", every=30.0).t + 7,
                   before_and_after("x", every=30.0, new=NEW + 1, old=OLD - 1).boot, "node_boot_time_seconds")
    other = before_and_after("10.0.0.6:9842", down=(T0 + 3610, T0 + 3700), new=T0 + 3650)
    evs = restart_events([gpu, node, other], SETTLE)
    assert [e.scope["host"] for e in evs] == ["10.0.0.6", "10.0.0.5"]  # in the order they booted
    ev = evs[1]
    assert ev.details["instances"] == ["10.0.0.5:9100", "10.0.0.5:9842"]
    assert ev.details["metrics"] == ["gpu_exporter_host_boot_time_seconds", "node_boot_time_seconds"]
    assert ev.start == T0 + 3600 - 30 + 7  # node-exporter's last old sample: the earlier of the two
    assert ev.end == T0 + 3900 + 7 + SETTLE  # node-exporter's first new one: the later of the two


def test_a_scrape_gap_or_an_exporter_restart_with_the_same_boot_time_is_no_event():
    gap = before_and_after("10.0.0.5:9842", new=OLD)  # the network was away, the box was not
    t = np.arange(T0, T0 + 7200, 15.0)
    # an exporter restart: a gap, then the same boot time, re-read a second off (NTP slewing btime)
    restart = samples("10.0.0.7:9842", t, np.where(t < T0 + 3600, OLD, OLD + 1))
    backwards = samples("10.0.0.8:9842", t, np.where(t < T0 + 3600, OLD, OLD - 3600))  # a clock fix
    assert restart_events([gap, restart, backwards], SETTLE) == []


def test_the_event_explains_what_lies_inside_it_on_its_host_only():
    (ev,) = restart_events([before_and_after("10.0.0.5:9842")], SETTLE)
    lost = {"id": "a", "detector": "gpu_missing", "start": T0 + 3620, "end": T0 + 3960,
            "series_labels": {"instance": "10.0.0.5:9842", "gpu": "1"}}
    other_box = dict(lost, id="b", series_labels={"instance": "10.0.0.6:9842", "gpu": "1"})
    still_missing = dict(lost, id="c", end=T0 + 3900 + SETTLE + 600)  # past the settle time: stays
    kept, events = fold([lost, other_box, still_missing], [ev])
    assert [i["id"] for i in kept] == ["b", "c"]
    assert [x["id"] for x in events[0]["explains"]] == ["a"]


def test_restart_settle_is_a_checked_duration():
    assert parse_config({"inference": {"restart_settle": "30m"}}).inference.restart_settle == 1800
    assert parse_config({"inference": None}).inference.restart_settle == 900
    with pytest.raises(ConfigError, match="inference.restart_settle"):
        parse_config({"inference": {"restart_settle": "2d"}})


# ------------------------------------------------------------------ the plugin over a real Prometheus

START, END, STEP = T0, T0 + 7200, 60.0


def _series(name, instance, s: BootSamples):
    return [f'{name}{{job="j",instance="{instance}"}} {b:.0f} {t:.0f}' for t, b in zip(s.t, s.boot, strict=True)]


@pytest.fixture(scope="module")
def prom(tmp_path_factory):
    """aibox (GPU exporter and node-exporter) reboots once, down 5 min; studio's exporter is away
    for 10 min but the box is not rebooted. Backfilled: no staleness markers, as in the backtests."""
    work = tmp_path_factory.mktemp("restarts")
    gpu = before_and_after("aibox:9842")
    node = before_and_after("aibox:9100", every=30.0, new=NEW + 1, old=OLD - 1)
    studio = before_and_after("studio:9842", down=(T0 + 1800, T0 + 2400), new=OLD)
    text = ["# TYPE gpu_exporter_host_boot_time_seconds gauge",
            *_series("gpu_exporter_host_boot_time_seconds", "aibox:9842", gpu),
            *_series("gpu_exporter_host_boot_time_seconds", "studio:9842", studio),
            "# TYPE node_boot_time_seconds gauge", *_series("node_boot_time_seconds", "aibox:9100", node),
            "# EOF"]
    (work / "h.om").write_text("\n".join(text) + "\n")
    backfill_openmetrics(work / "h.om", work / "tsdb")
    with PrometheusServer(work / "prom", "global: {scrape_interval: 1h}\n", storage=work / "tsdb") as server:
        yield server


def plugin(url):
    cfg = parse_config({"prometheus": {"url": url}, "inference": {"restart_settle": "10m"},
                        "schedule": {"step": "60s", "context": "1h", "warmup": "1h"}})
    return ContextPlugin(cfg, PromClient(url, retries=0, timeout=5))


def _only_aibox_event(p):
    (ev,) = p.context_events(START, END)
    assert ev.kind == "box_restart" and ev.scope == {"host": "aibox"}
    # the last sample before the pause, not the grid points repeating it into the gap
    assert ev.start == T0 + 3600 - 30  # node-exporter's, scraped every 30 s
    assert ev.end == T0 + 3900 + 600
    assert ev.details["instances"] == ["aibox:9100", "aibox:9842"]
    assert p.context_events(START, T0 + 3500) == [] and p.context_events(T0 + 4600, END) == []


@pytest.mark.integration
def test_backtest_sees_the_reboot_as_one_event(prom):
    p = plugin(prom.url)
    p.backtest(START, END, threshold=1.0)
    _only_aibox_event(p)


@pytest.mark.integration
def test_live_scoring_sees_a_reboot_between_two_passes(prom):
    p = plugin(prom.url)
    p.score(T0 + 3700)  # the box is down: nothing yet
    assert p.context_events(START, END) == []
    p.score(END)  # back: the pass reads on from where the last one stopped
    _only_aibox_event(p)
    p.score(END + 60)  # nothing new: still one
    assert len(p.context_events(START, END + 60)) == 1


def test_prometheus_down_loses_no_restart_and_fails_no_pass():
    p = plugin("http://127.0.0.1:9")
    assert p.score(END).ok is False  # the busy rule's pass fails as before; the restarts wait
    assert p.context_events(START, END) == [] and p.boot_to_ is None
