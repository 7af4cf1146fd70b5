"""Log side of the detector: masking and template mining (Drain-style), with persisted state."""

from detector.logs.masking import PLACEHOLDER, Masker
from detector.logs.miner import MatchResult, MinerConfig, TemplateMiner

__all__ = [
    "PLACEHOLDER",
    "Masker",
    "MatchResult",
    "MinerConfig",
    "TemplateMiner",
]
