"""rigwatch's anomaly models, model-free rules, and the one registry of their kinds.

``MODELS`` maps a config ``model:`` kind to its class, ``RULES`` a ``rule:`` kind; ``KINDS`` holds
both plus the ``none`` fallback. Config validation and the metric detector derive everything from
these (which kinds exist, which take features, which read a heartbeat) and from the classes'
own attributes — no other module lists kinds. ``make_model(kind, **params)`` builds a model with a
clear error for an unknown kind or parameter; ``model_from_state(d)`` rebuilds any kind from
``get_state()`` output. Importing this package builds nothing: heavy libraries (statsmodels) are
imported inside ``fit``.
"""
from __future__ import annotations

from .base import BaseModel, NoOpinion, NotFittedError, ScoreFrame, UnivariateModel
from .ensemble import Ensemble
from .iforest import IsolationForestModel
from .level_shift import LevelShift
from .novelty import ValueNovelty
from .onsets import OnsetFilter
from .robust import RobustZ
from .rules import RULES, CounterIncreaseRule, HeldActiveRule, SeriesVanishedRule, SteadyIncreaseRule
from .seasonal import SeasonalESD, detect_period, generalized_esd
from .thermal import ThermalModel
from .volatility import VolatilityShift

MODELS: dict[str, type[BaseModel]] = {
    "seasonal_esd": SeasonalESD,
    "robust_z": RobustZ,
    "thermal": ThermalModel,
    "iforest": IsolationForestModel,
    "level_shift": LevelShift,
    "value_novelty": ValueNovelty,
    "volatility_shift": VolatilityShift,
    "ensemble": Ensemble,
}
#: every kind a stored series state can name: models, rules and the `fallback: none` stand-in
KINDS: dict[str, type] = {**MODELS, **RULES, NoOpinion.kind: NoOpinion}
#: what a detector's `fallback:` may name (the model a series gets while it lacks history)
FALLBACKS = ("robust_z", NoOpinion.kind)

MULTIVARIATE = tuple(k for k, c in MODELS.items() if c.multivariate)
UNIVARIATE = tuple(k for k in MODELS if k not in MULTIVARIATE)
#: model kinds whose X comes from the detector's `features:` queries
FEATURE_KINDS = tuple(k for k, c in MODELS.items() if c.takes_features)


def kind_class(kind: str) -> type:
    try:
        return KINDS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown kind {kind!r} (known: {', '.join(sorted(KINDS))})") from None


def model_class(kind: str) -> type[BaseModel]:
    try:
        return MODELS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model kind {kind!r} (known: {', '.join(sorted(MODELS))})") from None


def make_model(kind: str, **params) -> BaseModel:
    """Build a model of ``kind``; a parameter the model does not take raises ValueError naming it."""
    cls = model_class(kind)
    valid = set(cls._param_names())
    unknown = sorted(set(params) - valid)
    if unknown:
        raise ValueError(f"model {kind!r}: unknown parameter(s) {', '.join(map(repr, unknown))} "
                         f"(valid: {', '.join(sorted(valid))})")
    model = cls(**params)
    model._check_params()
    return model


def model_from_state(d: dict):
    """Any kind (model, rule or the none fallback) back from its get_state()."""
    return kind_class(d.get("kind")).from_state(d)


__all__ = ["MODELS", "RULES", "KINDS", "FALLBACKS", "UNIVARIATE", "MULTIVARIATE", "FEATURE_KINDS",
           "kind_class", "make_model", "model_class", "model_from_state",
           "ScoreFrame", "NotFittedError", "BaseModel", "UnivariateModel", "NoOpinion", "RobustZ",
           "SeasonalESD", "LevelShift", "ValueNovelty", "VolatilityShift", "Ensemble", "ThermalModel", "IsolationForestModel", "OnsetFilter", "detect_period",
           "generalized_esd", "CounterIncreaseRule", "HeldActiveRule", "SeriesVanishedRule",
           "SteadyIncreaseRule"]
