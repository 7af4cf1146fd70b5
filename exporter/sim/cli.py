"""`rigwatch-sim`: the simulated AI box's command line.

    rigwatch-sim history --out DIR [--box NAME] [--start RFC3339] [--days 7] [--step 60s] [--seed N]
                         [--schedule FILE]
    rigwatch-sim check-schedule [--box NAME] [FILE]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import datetime

from .boxes import BOXES, DEFAULT_BOX
from .schedule import ScheduleError, parse_duration


def parse_rfc3339(text: str) -> float:
    s = text.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    try:
        d = datetime.fromisoformat(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected RFC3339 like 2026-11-19T00:00:00Z, got {text!r}") from None
    if d.tzinfo is None:
        raise argparse.ArgumentTypeError(f"RFC3339 needs a timezone (Z or +hh:mm): {text!r}")
    return d.timestamp()


def _duration(text: str) -> float:
    try:
        return parse_duration(text, "step")
    except ScheduleError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rigwatch-sim", description="The simulated home-lab AI box.")
    sub = p.add_subparsers(dest="command", required=True)
    h = sub.add_parser("history", help="write OpenMetrics history, journal lines and ground truth")
    h.add_argument("--out", required=True, help="output directory (metrics.om, journal.jsonl, truth.json)")
    h.add_argument("--start", type=parse_rfc3339, default=None,
                   help="RFC3339 start (default: --days before now, so the history ends now)")
    h.add_argument("--days", type=float, default=7.0, help="length in days (default 7)")
    h.add_argument("--step", type=_duration, default=60.0, help="scrape interval, e.g. 60s, 15s (default 60s)")
    h.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    h.add_argument("--box", choices=sorted(BOXES), default=DEFAULT_BOX,
                   help=f"which simulated box (default {DEFAULT_BOX})")
    h.add_argument("--schedule", default=None, help="incident schedule YAML (default: the box's packaged 7-day one)")
    h.add_argument("--job", default="rigwatch-exporter", help="job label (default rigwatch-exporter)")
    h.add_argument("--instance", default=None, help="instance label (default BOX:9842, e.g. aibox:9842)")
    h.add_argument("-v", "--verbose", action="store_true", help="show the collector's log lines")
    c = sub.add_parser("check-schedule", help="validate a schedule against a box and print its incidents")
    c.add_argument("file", nargs="?", default=None, help="schedule YAML (default: the box's packaged one)")
    c.add_argument("--box", choices=sorted(BOXES), default=DEFAULT_BOX,
                   help=f"the box whose GPUs and containers it must fit (default {DEFAULT_BOX})")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "check-schedule":
        from .box import SimBox
        try:
            incidents = SimBox.load_incidents(args.file, args.box)
        except ScheduleError as e:
            print(f"rigwatch-sim: {args.file or '(default)'} on box {args.box}: {e}", file=sys.stderr)
            return 2
        for i in incidents:
            print(f"{i.at / 3600:8.2f}h  {i.kind:24s} {i.duration / 60:6.1f} min  {json.dumps(i.labels())}")
        return 0
    if args.days <= 0 or args.step <= 0:
        parser.error("--days and --step must be positive")
    from .history import write_history  # imports the collector only when writing history
    # The collector logs each lost-GPU retry, as it should live; over days of replay that is noise.
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")
    start = args.start if args.start is not None else (time.time() - args.days * 86400) // args.step * args.step
    try:
        res = write_history(args.out, start=start, days=args.days, step=args.step, seed=args.seed,
                            schedule=args.schedule, job=args.job, instance=args.instance or f"{args.box}:9842",
                            box_name=args.box)
    except ScheduleError as e:
        print(f"rigwatch-sim: schedule {args.schedule or '(default)'} on box {args.box}: {e}", file=sys.stderr)
        return 2
    print(f"wrote {res.out}/metrics.om ({res.samples} samples, {res.steps} scrapes), "
          f"journal.jsonl ({res.journal_lines} lines), truth.json in {res.seconds:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
