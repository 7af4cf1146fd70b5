"""Log side of the detector: masking and template mining (Drain-style), with persisted state."""

from detector.logs.masking import PLACEHOLDER, Masker
from detector.logs.miner import (
    FilePersistence,
    MatchResult,
    MemoryPersistence,
    MinerConfig,
    StatePersistence,
    TemplateMiner,
)

__all__ = [
    "PLACEHOLDER",
    "FilePersistence",
    "Masker",
    "MatchResult",
    "MemoryPersistence",
    "MinerConfig",
    "StatePersistence",
    "TemplateMiner",
]
