"""The cached text encoder writes what prometheus_client's generate_latest writes."""
import subprocess

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from exporter.collector import RigCollector
from exporter.containers import ContainerState
from exporter.exposition import CachedTextEncoder, format_value
from exporter.sim.fake_nvml import FakeGPU, FakeNVML, FakeProcess
from harness.processes import require_binary


class Odd:
    """Label values and docs that need escaping, and non-finite values."""

    def collect(self):
        g = GaugeMetricFamily("odd_gauge", 'doc with \\ backslash\nand "quotes"', labels=["v"])
        g.add_metric(['a"b\\c\nd'], float("nan"))
        g.add_metric(["inf"], float("inf"))
        g.add_metric(["-inf"], float("-inf"))
        g.add_metric(["big"], 2.5769803776e10)
        yield g
        c = CounterMetricFamily("odd_events_total", "events", labels=["k"])
        c.add_metric(["x"], 3)
        yield c


def parsed(text: str):
    return sorted((s.name, tuple(sorted(s.labels.items())), repr(s.value))
                  for fam in text_string_to_metric_families(text) for s in fam.samples)


def rig_registry(odd: bool = True):
    gpu = FakeGPU(compute_processes=[FakeProcess(1, 10)], fan_rpms=[1000, 1000])
    source = type("S", (), {"snapshot": lambda self: [ContainerState("a" * 64, "ollama", "img", True, 2, 5.0,
                                                                      False, "healthy")]})()
    c = RigCollector(FakeNVML([gpu]), container_source=source)
    c.refresh_slow()
    c.refresh_containers()
    reg = CollectorRegistry()
    reg.register(c)
    if odd:
        reg.register(Odd())
    return reg


def test_same_samples_as_generate_latest():
    reg = rig_registry()
    enc = CachedTextEncoder()
    for _ in range(2):  # second pass from the cache
        ours = enc.encode(reg).decode()
        theirs = generate_latest(reg).decode()
        # the collect duration differs between the two scrapes
        drop = [line for line in theirs.splitlines() if line.startswith("gpu_exporter_collect_duration")]
        assert parsed(ours.replace(next(x for x in ours.splitlines()
                                         if x.startswith("gpu_exporter_collect_duration")), drop[0])) \
            == parsed(theirs)
        assert [x for x in ours.splitlines() if x.startswith("#")] == \
               [x for x in theirs.splitlines() if x.startswith("#")]


@pytest.mark.parametrize("value, text", [(1, "1.0"), (0.25, "0.25"), (float("nan"), "NaN"),
                                         (float("inf"), "+Inf"), (float("-inf"), "-Inf")])
def test_format_value(value, text):
    assert format_value(value) == text


def test_other_metric_types_fall_back_to_generate_latest():
    reg = CollectorRegistry()
    Histogram("h_seconds", "h", registry=reg).observe(0.3)
    Counter("c", "c", registry=reg).inc()
    assert CachedTextEncoder().encode(reg) == generate_latest(reg)


@pytest.mark.integration
def test_promtool_lints_the_exposition():
    out = subprocess.run([require_binary("promtool"), "check", "metrics"],
                         input=CachedTextEncoder().encode(rig_registry(odd=False)), capture_output=True)
    # Exit 1 is a parse error; 3 means lint remarks only. The one remark is about a contract name
    # (`gpu_process_count` looks like a summary's _count to the linter) that cannot be renamed.
    remarks = (out.stdout + out.stderr).decode().strip().splitlines()
    assert out.returncode in (0, 3), remarks
    assert remarks == ['gpu_process_count non-histogram and non-summary metrics should not have "_count" suffix']
