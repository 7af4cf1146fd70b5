"""``models`` command: the model registry of a store, read and changed from the shell.

    rigwatch-detector models list [--json]                every detector's versions, aliases, states
    rigwatch-detector models show DETECTOR [VERSION]      one detector (or version) in JSON
    rigwatch-detector models promote DETECTOR VERSION     make a stored version champion
    rigwatch-detector models rollback DETECTOR            back to the previous champion

The store is `--store DIR`, else the store of `--config FILE` (else the built-in preset's); with
`--shard I/N` (or the config's `shard:` when the store is the config's) shard I's, `<store>/shard-I`. A
running `serve` on the same store picks a promotion or rollback up at its next scoring step. Exit 2:
an unknown detector or version, no rollback target, a store that is not there.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from detector.config import ConfigError, load_config
from detector.persistence import FilePersistence
from detector.registry import Registry, RegistryError
from detector.sharding import Shard, parse_shard
from detector.store import ModelStore
from detector.timefmt import iso

_COLUMNS = ("detector", "version", "alias", "state", "created", "fingerprint")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("models", help="list, show, promote or roll back stored model versions",
                                   description=__doc__.splitlines()[0])
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--store", help="model store directory (default: the config's store.path)")
    where.add_argument("--config", help="detector.yml whose store.path to use (default: the built-in preset)")
    where.add_argument("--shard", metavar="I/N", help="the models of shard I (serve --shard): <store>/shard-I")
    sub = parser.add_subparsers(dest="models_command", required=True, parser_class=type(parser))
    ls = sub.add_parser("list", parents=[where], help="every detector's versions as a table")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    show = sub.add_parser("show", parents=[where], help="one detector's versions (or one version) as JSON")
    show.add_argument("detector")
    show.add_argument("version", nargs="?", type=int)
    promote = sub.add_parser("promote", parents=[where], help="make a stored version the champion")
    promote.add_argument("detector")
    promote.add_argument("version", type=int)
    rollback = sub.add_parser("rollback", parents=[where], help="back to the previous champion")
    rollback.add_argument("detector")
    parser.set_defaults(func=run)
    return parser


def _fail(msg: str) -> int:
    print(f"rigwatch-detector models: error: {msg}", file=sys.stderr)
    return 2


def _registry(args) -> Registry:
    """The registry of the chosen store; ConfigError naming the flag when there is none."""
    shard = parse_shard(args.shard, "--shard") if args.shard is not None else None
    if args.store:
        path, flag = (shard or Shard()).store_path(args.store), "--store"
    else:
        cfg = load_config(args.config)
        path, flag = (shard or cfg.shard).store_path(cfg.store_path), \
            f"config {args.config or '<default preset>'}: store.path"
    if not os.path.isdir(path):
        raise ConfigError(flag, f"no such directory: {path}")
    # a serve may be writing this store: its temp files are no orphans
    return Registry(ModelStore(FilePersistence(path), sole_writer=False))


def _row_text(row: dict) -> list[str]:
    return [row["detector"], str(row["version"]), ",".join(row["aliases"]) or "-",
            row["state"] or ("unusable" if row["unusable"] else "-"),
            iso(row["created"]) if isinstance(row["created"], int | float) else "-", row["fingerprint"] or "-"]


def _table(rows: list[dict]) -> str:
    lines = [[c.upper() for c in _COLUMNS]] + [_row_text(r) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def run(args) -> int:
    try:
        registry = _registry(args)
    except ConfigError as e:
        return _fail(str(e))
    try:
        if args.models_command == "list":
            rows = [r for d in registry.detectors() for r in registry.rows(d)]
            print(json.dumps({"models": rows}, indent=1) if args.json else _table(rows))
        elif args.models_command == "show":
            rows = registry.rows(args.detector) if args.detector in registry.detectors() else []
            if not rows:
                raise RegistryError(f"unknown detector {args.detector!r}")
            if args.version is not None:
                rows = [r for r in rows if r["version"] == args.version]
                if not rows:
                    raise RegistryError(f"unknown version {args.version} of {args.detector!r}")
                print(json.dumps({**rows[0], "metadata": registry.store.metadata(args.detector, args.version)
                                  if not rows[0]["unusable"] else None}, indent=1, default=str))
            else:
                record = registry.record(args.detector)
                print(json.dumps({"detector": args.detector, "versions": rows,
                                  "decisions": record["decisions"]}, indent=1))
        elif args.models_command == "promote":
            d = registry.promote(args.detector, args.version)
            print(f"{d.detector}: v{d.version} is champion (a running serve scores with it from its next step)")
        else:
            d = registry.rollback(args.detector)
            print(f"{d.detector}: rolled back to v{d.version} (a running serve scores with it from its next step)")
    except (RegistryError, ValueError) as e:
        return _fail(str(e.args[0]) if e.args else str(e))
    return 0
