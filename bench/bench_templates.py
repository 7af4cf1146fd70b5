"""Grouping Accuracy and throughput of rigwatch's template miner on Loghub-2k.

Usage: .venv/bin/python bench/bench_templates.py [--repeat N] [--no-drain3] [--systems A,B]

Reads ``$RIGWATCH_SHARED/datasets/loghub-2k/<System>/<System>_2k.log_structured.csv`` (default
RIGWATCH_SHARED = ../shared relative to the repo root): the ``Content`` column is the input,
``EventId`` the truth. The corrected Loghub-2.0 annotations (``loghub-2.0-2k-corrected``) are a
second view of the same lines. One default MinerConfig, identical for every system, is used; the
truth labels are only read here, to score.

Grouping Accuracy (Zhu et al., ICSE-SEIP 2019): a message is parsed correctly iff the set of
messages in its predicted group equals the set in its ground-truth group; GA = correct / all.
Throughput: lines mined per second of this process's CPU time (one thread), masking included,
miner construction excluded (best of ``--repeat`` passes per system, a fresh miner each pass).
CPU time rather than wall time, so that other jobs on a shared machine do not skew it.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchlib import shared_root  # noqa: E402

from detector.logs.miner import MinerConfig, TemplateMiner  # noqa: E402

SYSTEMS = [
    "Android",
    "Apache",
    "BGL",
    "HDFS",
    "HPC",
    "Hadoop",
    "HealthApp",
    "Linux",
    "Mac",
    "OpenSSH",
    "OpenStack",
    "Proxifier",
    "Spark",
    "Thunderbird",
    "Windows",
    "Zookeeper",
]


def read_structured(path: Path) -> tuple[list[str], list[str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r["Content"] for r in rows], [r["EventId"] for r in rows]


def _groups(truth: list[str], predicted: list) -> tuple[dict[str, set[int]], dict[object, set[int]]]:
    """Message indexes per true group and per predicted group."""
    truth_groups: dict[str, set[int]] = defaultdict(set)
    pred_groups: dict[object, set[int]] = defaultdict(set)
    for i, (t, p) in enumerate(zip(truth, predicted, strict=True)):
        truth_groups[t].add(i)
        pred_groups[p].add(i)
    return truth_groups, pred_groups


def grouping_accuracy(truth: list[str], predicted: list) -> float:
    """Share of messages whose predicted group is exactly their true group (as message sets)."""
    truth_groups, pred_groups = _groups(truth, predicted)
    correct = 0
    for members in pred_groups.values():
        first = next(iter(members))
        if truth_groups[truth[first]] == members:
            correct += len(members)
    return correct / len(truth)


def mine_rigwatch(messages: list[str], config: MinerConfig | None = None) -> tuple[list[str], float]:
    miner = TemplateMiner(config)
    add = miner.add
    # CPU time of this process: on a shared machine wall time mostly measures the neighbours
    start = time.process_time()
    ids = [add(m).template_id for m in messages]
    elapsed = time.process_time() - start
    return [miner.resolve(i) for i in ids], elapsed


def mine_drain3(messages: list[str]) -> tuple[list[int], float]:
    """drain3 0.9 out of the box: no masking, default depth 4 / sim_th 0.4, final cluster ids."""
    import logging

    from drain3 import TemplateMiner as Drain3Miner
    from drain3.template_miner_config import TemplateMinerConfig

    logging.getLogger("drain3").setLevel(logging.WARNING)
    cfg = TemplateMinerConfig()
    cfg.profiling_enabled = False
    miner = Drain3Miner(config=cfg)
    start = time.process_time()
    ids = [miner.add_log_message(m)["cluster_id"] for m in messages]
    elapsed = time.process_time() - start
    return ids, elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="timing passes (best one counts)")
    ap.add_argument("--no-drain3", action="store_true", help="skip the drain3 baseline")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--show-errors", type=int, default=0, help="print N wrongly grouped templates per system")
    args = ap.parse_args(argv)

    root = shared_root() / "datasets"
    original = root / "loghub-2k"
    corrected = root / "loghub-2.0-2k-corrected"
    if not original.is_dir():
        print(f"data not found: {original} (set RIGWATCH_SHARED)", file=sys.stderr)
        return 2
    systems = [s for s in args.systems.split(",") if s]

    print(
        f"{'system':<12} {'GA':>6} {'GA-2.0':>7} {'drain3':>7} {'templates':>9} {'truth':>6} {'lines/s':>9}"
    )
    rows = []
    total_lines = 0
    d3_time = 0.0
    best_time = defaultdict(lambda: float("inf"))
    for system in systems:
        messages, truth = read_structured(original / system / f"{system}_2k.log_structured.csv")
        total_lines += len(messages)
        for _ in range(max(1, args.repeat)):
            predicted, elapsed = mine_rigwatch(messages)
            best_time[system] = min(best_time[system], elapsed)
        ga = grouping_accuracy(truth, predicted)
        corr_path = corrected / system / f"{system}_2k.log_structured_corrected.csv"
        ga2 = None
        if corr_path.is_file():
            corr_messages, corr_truth = read_structured(corr_path)
            if corr_messages == messages:
                ga2 = grouping_accuracy(corr_truth, predicted)
        d3 = None
        if not args.no_drain3:
            d3_ids, d3_elapsed = mine_drain3(messages)
            d3 = grouping_accuracy(truth, d3_ids)
            d3_time += d3_elapsed
        rows.append((system, ga, ga2, d3))
        print(
            f"{system:<12} {ga:6.3f} {'' if ga2 is None else f'{ga2:.3f}':>7} "
            f"{'' if d3 is None else f'{d3:.3f}':>7} {len(set(predicted)):>9} {len(set(truth)):>6} "
            f"{len(messages) / best_time[system]:>9,.0f}"
        )
        if args.show_errors:
            show_errors(messages, truth, predicted, args.show_errors)

    n = len(rows)
    avg = sum(r[1] for r in rows) / n
    v2 = [r[2] for r in rows if r[2] is not None]
    d3s = [r[3] for r in rows if r[3] is not None]
    throughput = total_lines / sum(best_time.values())
    print("-" * 62)
    print(f"average GA (loghub-2k, {n} systems):           {avg:.3f}")
    if v2:
        print(f"average GA (loghub-2.0 corrected, {len(v2)} systems): {sum(v2) / len(v2):.3f}")
    if d3s:
        print(
            f"drain3 0.9 untuned average GA ({len(d3s)} systems):    {sum(d3s) / len(d3s):.3f}"
            f"  ({total_lines / d3_time:,.0f} lines/s, one pass)"
        )
    print(
        f"throughput: {throughput:,.0f} lines/s over {total_lines} lines (one process, CPU time, masking included)"
    )
    worst, unit = worst_masking_seconds()
    print(f"worst masking time of a 20,000-char pathological line: {worst * 1000:.1f} ms ({unit!r} repeated)")
    return 0


PATHOLOGICAL_UNITS = [
    "a.",
    "a@",
    "a/",
    "x1-",
    "a-",
    "1.",
    "ab:",
    "0:",
    "Jan ",
    "1 ",
    "a.1",
    "a1_",
    "-1",
    "a%",
    "1 sec",
]


def worst_masking_seconds(length: int = 20_000) -> tuple[float, str]:
    """Slowest masking of a long line built from a repeated fragment (regex backtracking guard)."""
    from detector.logs.masking import Masker

    masker = Masker()
    worst = (0.0, "")
    for unit in PATHOLOGICAL_UNITS:
        line = (unit * (length // len(unit) + 1))[:length]
        start = time.process_time()
        masker.mask(line)
        worst = max(worst, (time.process_time() - start, unit))
    return worst


def show_errors(messages, truth, predicted, limit) -> None:
    """Debug aid: the predicted groups that are not exactly one true group."""
    truth_groups, pred_groups = _groups(truth, predicted)
    shown = 0
    for t, members in sorted(truth_groups.items(), key=lambda kv: -len(kv[1])):
        preds = Counter(predicted[i] for i in members)
        if len(preds) == 1 and pred_groups[next(iter(preds))] == members:
            continue
        examples = {}
        for i in sorted(members):
            examples.setdefault(predicted[i], i)
        print(f"    truth {t} ({len(members)}) -> {dict(preds)}")
        for p, i in list(examples.items())[:3]:
            others = Counter(truth[j] for j in pred_groups[p])
            print(f"       [{p} holds {dict(others)}] {messages[i][:150]}")
        shown += 1
        if shown >= limit:
            break


if __name__ == "__main__":
    sys.exit(main())
