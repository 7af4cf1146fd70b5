"""The detector plugin protocol: what a family of detectors gives the service and the backtest.

A plugin owns one family of detectors — the metric side (a model per configured PromQL query),
the log side (pattern, template, rate and sequence detectors over Loki), or a new one — with its
data source, its models and their state. Everything it needs (clients, the model store, the
source-health counters) comes in through its constructor, which starts nothing. `DetectorService`
is handed the plugins (see `detector.plugins` for which ones the config turns on) and only runs
them: it schedules `fit`/`score`, feeds the returned scores to the incident tracker (and, for a
plugin that `publishes_scores`, to `rigwatch_anomaly_score`), serves their `families()` beside its
own metrics, and answers the API from `models()`. `run_backtest` replays each plugin's
`backtest()` over a range and merges the parts into one report.

    load()            last good stored state, at start-up (-> detectors loaded)
    fit(now, only)    a scheduled fit (only=None: what is due) or a retrain of `only`; saves to the store
    score(now)        scores what is new since the last pass -> ScorePass(batches, ok)
    backtest(...)     replays [start, end] exactly as fit/score run live -> BacktestPart

A new family goes in its own module (or package) implementing this class, plus one line in
`detector.plugins` that builds it when its config section is present.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from detector.context.events import ContextEvent
from detector.incidents import IncidentPolicy
from detector.scores import ScoreBatch

__all__ = ["BacktestPart", "DetectorPlugin", "IncidentPolicy", "ScorePass"]


@dataclass
class ScorePass:
    """What one scoring pass produced: scored points in time order, and whether it completed."""

    batches: list[ScoreBatch] = field(default_factory=list)
    ok: bool = True


@dataclass
class BacktestPart:
    """One plugin's share of a backtest report."""

    detectors: list[dict[str, Any]] = field(default_factory=list)  # entries of the report's "detectors"
    incidents: list[dict[str, Any]] = field(default_factory=list)  # report incidents, times as RFC3339
    section: dict[str, Any] | None = None  # the report's `report_section` entry, if the plugin has one
    plots: list[str] = field(default_factory=list)  # PNG files written for --plot


class DetectorPlugin(ABC):
    """One family of detectors run by `DetectorService` and replayed by `run_backtest`."""

    #: scheduler task names (rigwatch_detector_last_success_timestamp_seconds{task})
    fit_task: str = "fit"
    score_task: str = "score"
    #: sources it reads (rigwatch_detector_source_up{source}); `required_sources` gate /readyz
    sources: tuple[str, ...] = ()
    required_sources: tuple[str, ...] = ()
    #: its scores are published as rigwatch_anomaly_score (else it publishes its own families)
    publishes_scores: bool = True
    #: key of its own section in the backtest report (None: it has none)
    report_section: str | None = None
    #: the model registry of its detectors (detector.registry.Registry), None when it keeps none;
    #: the API's promote/rollback go through it
    registry = None

    @abstractmethod
    def detector_names(self) -> list[str]:
        """The detectors it reports incidents under (also what POST /api/v1/retrain accepts)."""

    @abstractmethod
    def load(self) -> int:
        """Load the last good stored state of its detectors; how many loaded."""

    @abstractmethod
    def fit(self, now: float, only: set[str] | None = None) -> bool:
        """Fit and store. only=None: the scheduled fit (what is due); else refit those now."""

    @abstractmethod
    def score(self, now: float) -> ScorePass:
        """Score what is new since the last pass."""

    @abstractmethod
    def backtest(self, start: float, end: float, *, threshold: float, plot_dir: str | None = None,
                 progress=None) -> BacktestPart:
        """Replay [start, end] as the service would: fit on what came before, score causally.
        `progress` (a tqdm bar, or None) gets `update(hours)` as replayed hours go by (see
        `backtest_hours`) and may get `set_postfix_str(detector)`."""

    def incident_policy(self) -> dict[str, IncidentPolicy]:
        """Per detector, how its anomalous scores merge into incidents (default: IncidentPolicy())."""
        return {}

    def needs_fit(self, now: float) -> bool:
        """Something has no (fresh) model: the service fits at start-up rather than a period later."""
        return False

    def models_missing(self) -> list[str]:
        """Detectors that cannot score yet (GET /readyz answers 503 while any is listed)."""
        return []

    def reconfigure(self, config) -> list[str]:
        """Take a reloaded config; returns the detectors to fit now. Default: keep running as is."""
        return []

    def families(self) -> Iterable:
        """Its own metric families, built fresh from its cached state on every scrape."""
        return ()

    def models(self) -> list[dict[str, Any]]:
        """GET /api/v1/models entries."""
        return []

    def drift_report(self) -> list[dict[str, Any]]:
        """GET /api/v1/drift entries: per detector, its series' drift figures (default: none)."""
        return []

    def model_info(self) -> list[tuple[str, str, str]]:
        """(detector, model kind, stored version) for rigwatch_detector_model_info."""
        return []

    def series_tracked(self) -> int:
        return 0

    def context_events(self, start: float, end: float) -> list[ContextEvent]:
        """Events of the box it has seen (in `score` or `backtest`) overlapping [start, end] that
        explain incidents rather than raise them (detector/context/events.py). Default: none."""
        return []

    def annotate(self, incidents: list[dict[str, Any]], to_time=None) -> None:
        """Add what it knows about each incident's context to its dict in place (the workload on
        the incident's GPU); `to_time` reads the dicts' times (None: epoch). Default: nothing."""
        return None

    def backtest_hours(self, start: float, end: float) -> float:
        """Hours of replay `backtest` will report to its progress bar."""
        return 0.0
