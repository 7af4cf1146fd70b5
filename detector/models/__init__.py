"""rigwatch's anomaly models and their registry.

``MODELS`` maps a config ``model:`` kind to its class; ``make_model(kind, **params)`` builds one
with a clear error for an unknown kind or parameter; ``model_from_state(d)`` rebuilds any model
from ``get_state()`` output.  Importing this package builds nothing: heavy libraries
(statsmodels) are imported inside ``fit``.
"""
from __future__ import annotations

from .base import BaseModel, NotFittedError, ScoreFrame, UnivariateModel
from .iforest import IsolationForestModel
from .onsets import OnsetFilter
from .robust import RobustZ
from .seasonal import SeasonalESD, detect_period, generalized_esd
from .thermal import ThermalModel

MODELS: dict[str, type[BaseModel]] = {
    "seasonal_esd": SeasonalESD,
    "robust_z": RobustZ,
    "thermal": ThermalModel,
    "iforest": IsolationForestModel,
}

UNIVARIATE = ("seasonal_esd", "robust_z")
MULTIVARIATE = ("thermal", "iforest")


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


def model_from_state(d: dict) -> BaseModel:
    return model_class(d.get("kind")).from_state(d)


__all__ = ["MODELS", "UNIVARIATE", "MULTIVARIATE", "make_model", "model_class", "model_from_state",
           "ScoreFrame", "NotFittedError", "BaseModel", "UnivariateModel", "RobustZ", "SeasonalESD",
           "ThermalModel", "IsolationForestModel", "OnsetFilter", "detect_period", "generalized_esd"]
