"""Write days of simulated history without waiting: the real exporter collector is stepped over sim
time and its samples written as timestamped OpenMetrics (for `promtool tsdb create-blocks-from
openmetrics`), with the journal lines of the same run and the ground truth of the injected windows.

Output directory:
- metrics.om     OpenMetrics, one block per family, samples in time order, ending `# EOF`
- journal.jsonl  `journalctl -o json` lines, sorted by __REALTIME_TIMESTAMP
- truth.json     {"start", "end", "step_seconds", "seed", "box", "incidents": [{kind, start, end, labels, benign}]}

A box that runs vLLM also gets its vLLM-like families (sim/vllm.py), as a Prometheus scraping that
server beside the exporter would have stored them.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from exporter.collector import RigCollector

from .box import SimBox, rfc3339
from .boxes import DEFAULT_BOX
from .schedule import Incident
from .vllm import SimVLLMCollector

DEFAULT_JOB = "rigwatch-exporter"
DEFAULT_INSTANCE = "aibox:9842"
# Wall-clock timing of our own collect() is neither simulated nor reproducible: left out of history.
_SKIP_FAMILIES = {"gpu_exporter_collect_duration_seconds"}


@dataclass
class HistoryResult:
    out: Path
    steps: int
    samples: int
    journal_lines: int
    seconds: float


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_value(v: float) -> str:
    if v != v:
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


class _OpenMetricsWriter:
    """Collects samples per family in temporary files, then concatenates them so every family's
    samples are contiguous (OpenMetrics) while memory stays flat over days of data."""

    def __init__(self, extra_labels: dict[str, str]):
        self.tmp = Path(tempfile.mkdtemp(prefix="rigwatch-om-"))
        self.extra = "".join(f',{k}="{_escape(v)}"' for k, v in extra_labels.items())
        self.files: dict[str, tuple[object, str, str]] = {}  # family -> (file, type, help)
        self.samples = 0
        self._label_cache: dict[tuple, str] = {}

    def _file(self, name: str, typ: str, doc: str):
        entry = self.files.get(name)
        if entry is None:
            fh = open(self.tmp / f"{len(self.files)}.om", "w", buffering=1 << 16)
            entry = self.files[name] = (fh, typ, doc)
        return entry[0]

    def _labels(self, labels: dict[str, str]) -> str:
        key = tuple(labels.items())
        s = self._label_cache.get(key)
        if s is None:
            inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + self.extra
            s = self._label_cache[key] = "{" + inner.lstrip(",") + "}"
        return s

    def add_family(self, fam, ts: str) -> None:
        typ = fam.type if fam.type in ("counter", "gauge") else "unknown"
        fh = self._file(fam.name, typ, fam.documentation)
        lines = []
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue  # Prometheus' text scrape of a client would not carry these as series
            lines.append(f"{s.name}{self._labels(s.labels)} {_fmt_value(s.value)} {ts}\n")
        fh.write("".join(lines))
        self.samples += len(lines)

    def add_sample(self, family: str, typ: str, doc: str, labels: dict[str, str], value: float, ts: str) -> None:
        fh = self._file(family, typ, doc)
        fh.write(f"{family}{self._labels(labels)} {_fmt_value(value)} {ts}\n")
        self.samples += 1

    def finish(self, path: Path) -> None:
        with open(path, "w") as out:
            for name, (fh, typ, doc) in self.files.items():
                fh.close()
                out.write(f"# HELP {name} {_escape(doc)}\n# TYPE {name} {typ}\n")
                with open(fh.name) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
            out.write("# EOF\n")
        shutil.rmtree(self.tmp, ignore_errors=True)

    def abort(self) -> None:
        for fh, _, _ in self.files.values():
            fh.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def write_history(out: str | Path, start: float, days: float = 7.0, step: float = 60.0, seed: int = 0,
                  schedule: str | Path | None = None, job: str = DEFAULT_JOB,
                  instance: str = DEFAULT_INSTANCE, box: SimBox | None = None,
                  close_box: bool = True, box_name: str = DEFAULT_BOX) -> HistoryResult:
    """Play `days` of the sim from `start` and scrape it every `step` seconds with RigCollector.
    `box_name` picks the profile (boxes.py) when no box is given.
    With close_box=False a given box stays usable, to play on live (see `box_with_history`)."""
    if step <= 0 or days <= 0:
        raise ValueError("step and days must be positive")
    t_wall = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if box is None:
        box = SimBox.from_config(schedule, seed=seed, start=start, journal_maxlen=None, box=box_name)
    start = box.start_time
    end = start + days * 86400.0
    now = [start]
    om = _OpenMetricsWriter({"job": job, "instance": instance})
    vllm = SimVLLMCollector(box)
    journal: list[dict[str, str]] = []
    collector = None
    boot = -1
    steps = 0
    try:
        t = start
        while t < end - 1e-9:
            box.advance_to(t)
            now[0] = t
            ts = str(int(t)) if t == int(t) else repr(t)
            steps += 1
            if box.down:
                # The box is off: the scrape fails, exactly what Prometheus would record.
                om.add_sample("up", "gauge", "Scrape target reachable.", {}, 0, ts)
                collector = None
            else:
                if collector is None or box.boot_count != boot:
                    # A new boot is a new exporter process: its counters (Xid, read errors) start again.
                    collector = RigCollector(box.nvml, container_source=box.container_source,
                                             proc_root=box.proc_root, clock=lambda: now[0],
                                             inference_sources=box.inference_sources())
                    boot = box.boot_count
                collector.refresh_slow()
                collector.refresh_containers()
                collector.refresh_inference()
                collector.poll_events(0)
                om.add_sample("up", "gauge", "Scrape target reachable.", {}, 1, ts)
                for fam in collector.collect():
                    if fam.name not in _SKIP_FAMILIES:
                        om.add_family(fam, ts)
                for fam in vllm.collect():
                    om.add_family(fam, ts)
            journal.extend(box.journal.drain())
            t = start + steps * step
        box.advance_to(end)
        journal.extend(e for e in box.journal.drain())
        om.finish(out / "metrics.om")
    except BaseException:
        om.abort()
        raise
    finally:
        if close_box:
            box.close()
    end_us = int(end * 1_000_000)
    start_us = int(start * 1_000_000)
    journal = [e for e in journal if start_us <= int(e["__REALTIME_TIMESTAMP"]) < end_us]
    journal.sort(key=lambda e: int(e["__REALTIME_TIMESTAMP"]))
    with open(out / "journal.jsonl", "w") as fh:
        for e in journal:
            fh.write(json.dumps(e, ensure_ascii=False) + "\n")
    truth = {"start": rfc3339(start), "end": rfc3339(end), "step_seconds": step, "seed": box.seed,
             "job": job, "instance": instance, "box": box.profile.name,
             "incidents": [d for d, i in zip(box.truth(), box.incidents, strict=True)
                           if start + i.at < end]}
    (out / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    return HistoryResult(out, steps, om.samples, len(journal), time.perf_counter() - t_wall)


def box_with_history(out: str | Path, hours: float, step: float = 15.0, *, incidents: Sequence[Incident] = (),
                     seed: int = 0, speed: float = 1.0, job: str = DEFAULT_JOB, instance: str = DEFAULT_INSTANCE,
                     journal_path: str | Path | None = None,
                     clock: Callable[[], float] = time.time,
                     box_name: str = DEFAULT_BOX,
                     history_incidents: Sequence[Incident] = ()) -> tuple[SimBox, HistoryResult]:
    """One simulated box, played twice over: `hours` of clean history ending now, written to `out`
    (for promtool and Loki), then the same box, ready to `start()` live. Counters (energy, restarts),
    temperatures and the workload carry on from the history's last tick, as on a box whose exporter
    kept running: no seam where rate() sees a counter reset. The `incidents` (see
    SimBox.load_incidents) count from the live start (their offsets are shifted past the history), so
    a demo's "fan fails 30 s in" still means 30 s after the exporter starts serving.
    `history_incidents` are played in the history instead (offsets from its start; one may run on
    past it into the live part): a test that needs an incident already under way when the detector
    starts scoring waits for none of it."""
    start = (clock() - hours * 3600.0) // step * step
    box = SimBox(list(history_incidents), seed=seed, speed=speed, start=start, journal_path=journal_path,
                 box=box_name)
    try:
        result = write_history(out, start, days=hours / 24.0, step=step, job=job, instance=instance, box=box,
                               close_box=False)
        box.advance_to(clock())  # the seconds spent writing, played too: live starts at now
        shift = box.t - box.start_time
        # the history's incidents keep their places (the box's started/ended bookkeeping is by index)
        box.incidents = list(history_incidents) + [replace(i, at=i.at + shift) for i in incidents]
    except BaseException:
        box.close()
        raise
    return box, result
