"""What the exporter, the sim and the detector share: small pieces with one meaning across rigwatch.

- `durations` — the one duration grammar of schedules and detector.yml (`90s`, `1h30m`, `2d5h`, `1w`).
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rigwatch")
except PackageNotFoundError:  # run from a checkout without installing it
    __version__ = "0+unknown"
