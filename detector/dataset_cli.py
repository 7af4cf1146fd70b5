"""`dataset export` and `fit --dataset`: the reproducible data stages on the command line.

    rigwatch-detector dataset export --prometheus-url URL [--loki-url URL] --start T --end T --out DIR
                                     [--config FILE]
        the stages the metric models see over [start, end] (detector.dataset), with DIR/manifest.json
    rigwatch-detector fit --dataset DIR --store DIR [--config FILE]
        fits every enabled detector on the dataset's whole range, as the live fit does on its lookback
        window (same code, the dataset standing in for Prometheus), and saves a version per detector
        recording the dataset's fingerprint. A dataset whose files do not match its manifest, or a
        config asking for other queries or another step, is refused (exit 2, naming the file or key).
Exit codes as for the other commands: 0 done, 1 Prometheus unavailable, 2 usage, config or dataset.
"""
from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from detector.cli_args import UsageError, add_range_args, range_args
from detector.config import ConfigError, load_config
from rigwatch.redact import redact_text, redact_url


def add_parsers(sub) -> None:
    d = sub.add_parser("dataset", help="export the data stages the models see (Parquet + manifest)")
    dsub = d.add_subparsers(dest="dataset_command", required=True, parser_class=type(d))
    e = dsub.add_parser("export", help="write ingested/, processed/, features/ and manifest.json")
    add_range_args(e)
    e.add_argument("--loki-url", help="also export the log lines of the range (the config's loki query)")
    e.add_argument("--out", required=True, help="directory to create (must not exist or be empty)")
    e.add_argument("--config", help="detector.yml (default: the built-in preset)")
    e.set_defaults(func=cmd_export)

    f = sub.add_parser("fit", help="fit the models offline from an exported dataset into a store")
    f.add_argument("--dataset", required=True, help="directory written by `dataset export`")
    f.add_argument("--store", required=True, help="model store directory")
    f.add_argument("--config", help="detector.yml (default: the built-in preset)")
    f.set_defaults(func=cmd_fit)


def _error(msg: str) -> int:
    print(f"rigwatch-detector: error: {msg}", file=sys.stderr)
    return 2


def _config(path: str | None):
    """The config and its text (the manifest records the text's sha256); UsageError naming the key."""
    try:
        cfg = load_config(path)
    except ConfigError as e:
        raise UsageError(f"config {path or '<default preset>'}: {e}") from None
    text = Path(path).read_text() if path else \
        resources.files("detector").joinpath("default_preset.yml").read_text()
    return cfg, text


def cmd_export(args) -> int:
    from detector.dataset import export_dataset
    from detector.fetch import DetectorQueryError
    from detector.logs.loki import LokiClient, LokiError
    from detector.plugins import prometheus_client
    from detector.promclient import PromError

    try:
        cfg, text = _config(args.config)
        start, end = range_args(args)
    except UsageError as e:
        return _error(str(e))
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        return _error(f"--out: {out} exists and is not an empty directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return _error(f"--out: {e}")
    loki = None
    if args.loki_url:
        try:
            section = {k: v for k, v in (cfg.loki or {}).items() if k != "query"}
            loki = LokiClient.from_config({**section, "url": args.loki_url})
        except ConfigError as e:
            return _error(f"--loki-url: {e}")
    try:
        manifest = export_dataset(cfg, prometheus_client(cfg, url=args.prometheus_url), start, end, out,
                                  config_text=text, source_url=redact_url(args.prometheus_url), loki=loki,
                                  loki_url=redact_url(args.loki_url) if args.loki_url else None)
    except DetectorQueryError as e:  # the config's fault: name its key
        index = next(i for i, d in enumerate(cfg.detectors) if d.name == e.detector)
        return _error(f"config detectors[{index}].{e.key}: {redact_text(str(e))}")
    except PromError as e:
        print(f"rigwatch-detector: dataset export failed: prometheus: {redact_text(str(e))}", file=sys.stderr)
        return 1
    except LokiError as e:
        print(f"rigwatch-detector: dataset export failed: loki: {redact_text(str(e))}", file=sys.stderr)
        return 1
    n = sum(d["series"] for d in manifest["detectors"].values())
    print(f"{len(manifest['detectors'])} detector(s), {n} series, {len(manifest['files'])} files written "
          f"to {out} (fingerprint {manifest['fingerprint'][:16]})", file=sys.stderr)
    return 0


def cmd_fit(args) -> int:
    from detector.dataset import DatasetError, DatasetSource, open_dataset
    from detector.metric_plugin import MetricPlugin
    from detector.persistence import FilePersistence
    from detector.store import ModelStore

    try:
        cfg, _ = _config(args.config)
        ds = open_dataset(args.dataset)
        ds.check_config(cfg)
    except UsageError as e:
        return _error(str(e))
    except DatasetError as e:
        return _error(f"--dataset: {e}")
    store = ModelStore(FilePersistence(args.store))
    plugin = MetricPlugin(cfg, None, store=store, source=DatasetSource(ds))
    if not plugin.fit_window(ds.start, ds.end):
        print("rigwatch-detector: fit failed: a model could not be saved (see the log)", file=sys.stderr)
        return 1
    for name, det in plugin.detectors.items():
        print(f"{name}: v{det.version} ({len(det.series)} series)", file=sys.stderr)
    print(f"fitted from dataset {ds.fingerprint[:16]} into {args.store}", file=sys.stderr)
    return 0
