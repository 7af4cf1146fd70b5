"""BGL log anomaly benchmark (Loghub 2k sample): windows of 20 lines, step 10.

A window is abnormal when any of its lines is an alert (raw first field not "-"). Only the message
`Content` and its `Level` are fed to the detector; the label column is read for scoring alone. The
template miner, line scorer and sequence model are fitted on the first part of the file (unlabelled:
alerts in it are training noise, as in real life) and score the later part online, in order.

Scores follow rigwatch's convention and are judged at its default threshold, score > 1, with no
tuning on these labels; ROC-AUC and the best-threshold F1 are printed beside it for reference.
How the default came about: the keyword and level lists and the line-score formula (severity weight
x keyword factor x surprise) were written from general knowledge of system logs before this script
first ran. After that run the false-positive lines were read to understand them (FATAL/ERROR lines
BGL labels normal: `ciod: LOGIN chdir(...) failed`, `rts tree/torus link training failed`, core-dump
register lines); two variants tried then (linear surprise decay, severity weight shrunk by its share
of training lines) scored no better and were dropped. A later, general change was then made, knowing
these labels had been read: severity is news only where a template has not shown it in training
(LineScorer docstring); its figures before and after are in the log-quality report, for train
fractions 0.3, 0.5 and 0.7. Variants measured and not adopted: the detector's repeat rule (5 trouble
lines of one template in the window) over line windows (F1 0.69-0.70: BGL's normal FATALs repeat),
and treating a (template, level) pair as routine after its first online sighting (recall falls).
Status: the goal (F1 >= 0.85 at score > 1) is not met - 0.800 / 0.831 / 0.800 at train fractions
0.3 / 0.5 / 0.7, best-threshold F1 0.821 / 0.857 / 0.852 - and the line scorer has not been changed
for BGL since: with these labels read, any further change would be tuned on them.

The sequence model became order and combination of known templates (issue 12: never volume) and
takes each window's lines in order; it scored no BGL window above 1 before or after, so the
combined figures did not move (its own ROC-AUC fell: BGL's alerts are new or louder lines).

    .venv/bin/python bench/bench_bgl.py [--train-fraction 0.3 0.5 0.7]
Data: ../shared/datasets/loghub-2k/BGL (override the shared root with RIGWATCH_SHARED).
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
from benchlib import shared_root
from sklearn.metrics import f1_score, precision_recall_curve, precision_score, recall_score, roc_auc_score

from detector.logs.miner import TemplateMiner
from detector.logs.scoring import LineScorer, SequenceModel, level_priority

WINDOW, STEP = 20, 10
DEFAULT_THRESHOLD = 1.0


def load_bgl(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    contents = [row["Content"] for row in rows]
    levels = [row["Level"] for row in rows]
    labels = np.array([row["Label"] != "-" for row in rows])
    return contents, levels, labels


def windows(n: int, start: int = 0) -> list[tuple[int, int]]:
    return [(s, s + WINDOW) for s in range(start, n - WINDOW + 1, STEP)]


def run(train_fraction: float) -> dict:
    path = shared_root() / "datasets" / "loghub-2k" / "BGL" / "BGL_2k.log_structured.csv"
    if not path.exists():
        sys.exit(f"BGL data not found at {path} (set RIGWATCH_SHARED)")
    contents, levels, line_labels = load_bgl(path)
    n = len(contents)
    split = int(n * train_fraction) // STEP * STEP

    t0 = time.perf_counter()
    miner = TemplateMiner()
    train_ids = [miner.add(message).template_id for message in contents[:split]]
    train_ids = [miner.resolve(t) for t in train_ids]
    scorer = LineScorer().fit(train_ids, [level_priority(level) for level in levels[:split]])
    train_windows = [train_ids[a:b] for a, b in windows(split)]  # one stream, in order
    sequence = SequenceModel().fit(train_windows)

    # score the later part online, line by line: each line is judged against everything seen
    # before it (training + earlier test lines), then learned
    line_scores = np.zeros(n)
    ids: list[str] = list(train_ids)
    for i in range(split, n):
        current = scorer.counts_
        match = miner.add(contents[i])
        template_id = miner.resolve(match.template_id)
        if not match.is_new and template_id not in scorer.counts_:
            scorer.remap(miner.resolve)  # clusters merged: the counts follow them, as in LogDetector
            current = scorer.counts_
        line_scores[i] = scorer.score(None if match.is_new else template_id, contents[i],
                                      level_priority(levels[i]))
        current[template_id] += 1
        ids.append(template_id)
    test = windows(n, split)
    seq_scores = sequence.score([[miner.resolve(t) for t in ids[a:b]] for a, b in test])
    elapsed = time.perf_counter() - t0

    truth = np.array([line_labels[a:b].any() for a, b in test])
    line_window = np.array([line_scores[a:b].max() for a, b in test])
    combined = np.maximum(line_window, seq_scores)
    report = {"lines": n, "train_lines": split, "test_windows": len(test),
              "abnormal_windows": int(truth.sum()), "templates": len(miner.templates()), "seconds": elapsed}
    for name, scores in (("rigwatch (line+sequence)", combined), ("line scorer only", line_window),
                         ("sequence (order/combination) only", seq_scores),
                         ("all windows abnormal", np.ones(len(test)) * 2)):
        predicted = scores > DEFAULT_THRESHOLD
        precision, recall, _t = precision_recall_curve(truth, scores)
        best = float(np.max(2 * precision * recall / np.maximum(precision + recall, 1e-12)))
        report[name] = {
            "f1": f1_score(truth, predicted, zero_division=0),
            "precision": precision_score(truth, predicted, zero_division=0),
            "recall": recall_score(truth, predicted, zero_division=0),
            "roc_auc": roc_auc_score(truth, scores) if len(set(scores)) > 1 else 0.5,
            "best_threshold_f1": best,
        }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-fraction", type=float, nargs="+", default=[0.5],
                        help="share(s) of the file (from its start) used for fitting (default 0.5)")
    args = parser.parse_args(argv)
    for fraction in args.train_fraction:
        print_report(run(fraction))
    return 0


def print_report(report: dict) -> None:
    print(f"BGL 2k: {report['lines']} lines, fit on the first {report['train_lines']}, "
          f"{report['test_windows']} test windows ({report['abnormal_windows']} abnormal), "
          f"{report['templates']} templates, {report['seconds']:.2f} s")
    print(f"{'detector':34s} {'F1@1':>6s} {'prec':>6s} {'recall':>6s} {'ROC-AUC':>8s} {'bestF1':>7s}")
    for name, figures in report.items():
        if isinstance(figures, dict):
            print(f"{name:34s} {figures['f1']:6.3f} {figures['precision']:6.3f} {figures['recall']:6.3f} "
                  f"{figures['roc_auc']:8.3f} {figures['best_threshold_f1']:7.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
