"""``templates`` command: mine event templates from a text file, one message per line.

Contract (keep stable): ``--input FILE --output FILE.csv`` writes a CSV with header
``line,template_id,template`` where ``line`` is the 1-based line number of the input. Each line
gets the id and text of its template *after* the whole file is mined, so lines of one event share
one id even when the template was generalised after they were first seen. ``--state FILE`` loads
the miner state before (when the file exists) and saves it after, so ids stay stable across runs.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from detector.logs.miner import TemplateMiner
from detector.persistence import FilePersistence

HEADER = ("line", "template_id", "template")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "templates",
        help="mine log templates from a text file (one message per line) into a CSV",
        description=__doc__.splitlines()[0],
    )
    _add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="text file, one message per line ('-' = stdin)")
    parser.add_argument(
        "--output", required=True, help="CSV to write: line,template_id,template ('-' = stdout)"
    )
    parser.add_argument("--state", help="miner state file to load first (if present) and save after")


def run(args: argparse.Namespace) -> int:
    persistence, state_name = None, "templates.json"
    if args.state:  # the state file is one blob, named by its file name, in its directory
        persistence, state_name = FilePersistence(Path(args.state).parent), Path(args.state).name
    miner = TemplateMiner(persistence=persistence, state_name=state_name)
    if persistence is not None:
        try:
            miner.load()
        except ValueError as exc:
            print(f"error: --state {args.state}: {exc}", file=sys.stderr)
            return 2
    try:
        ids = _mine(miner, args.input)
    except OSError as exc:
        print(f"error: --input {args.input}: {exc}", file=sys.stderr)
        return 2
    templates = miner.templates()
    try:
        _write(args.output, ids, miner, templates)
    except OSError as exc:
        print(f"error: --output {args.output}: {exc}", file=sys.stderr)
        return 2
    if persistence is not None:
        try:
            miner.save()
        except OSError as exc:
            print(f"error: --state {args.state}: {exc}", file=sys.stderr)
            return 2
    return 0


def _mine(miner: TemplateMiner, path: str) -> list[str]:
    # Binary lines split on b"\n" only; a stray \r inside a message stays part of it, a CRLF
    # ending is dropped, and invalid UTF-8 becomes U+FFFD instead of failing the whole file.
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")
    ids = []
    try:
        for raw in stream:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            ids.append(miner.add(line).template_id)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    return ids


def _write(path: str, ids: list[str], miner: TemplateMiner, templates: dict[str, str]) -> None:
    if path == "-":
        out = open(sys.stdout.fileno(), "w", encoding="utf-8", newline="", closefd=False)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        out = open(path, "w", encoding="utf-8", newline="")
    with out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(HEADER)
        for number, tid in enumerate(ids, start=1):
            live = miner.resolve(tid)
            writer.writerow((number, live, templates[live]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rigwatch-detector templates", description=__doc__.splitlines()[0])
    _add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
