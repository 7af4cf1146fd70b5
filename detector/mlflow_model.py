"""A detector version as an MLflow pyfunc, "models from code": MLflow runs this file at load time
and gets the model from `set_model`; no Python object is pickled. The state is the store's own
npz artifact (detector.store.pack_state) and its metadata JSON, logged with the run as artifacts.

    model = mlflow.pyfunc.load_model("models:/rigwatch-<detector>/<n>")   # or runs:/<run id>/model
    model.predict(pd.DataFrame({"series": [...], "t": [...], "y": [...]}))
        -> series, t, y, score, expected, lower, upper (rows in input order within each series)

`series` is the series id as in the run's series.csv. Models of y alone (robust_z, seasonal_esd and
the rules over one series) score here; models with feature inputs (thermal, iforest) need the
features and are refused with a clear error. Scoring advances a series' state, as in the service.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

from detector.models import model_from_state
from detector.store import unpack_state

COLUMNS = ["series", "t", "y", "score", "expected", "lower", "upper"]



class DetectorVersionModel(PythonModel):
    def load_context(self, context):
        with open(context.artifacts["state"], "rb") as f:
            state = unpack_state(f.read())
        with open(context.artifacts["metadata"]) as f:
            self.metadata = json.load(f)
        self.series = {sid: model_from_state(s["model"]) for sid, s in state["series"].items()}

    def predict(self, context, model_input, params=None):  # a DataFrame in, a DataFrame out
        missing = {"series", "t", "y"} - set(model_input.columns)
        if missing:
            raise ValueError(f"model input lacks the column(s) {sorted(missing)} (series, t, y)")
        parts = []
        for sid, rows in model_input.groupby("series", sort=False):
            model = self.series.get(sid)
            if model is None:
                raise ValueError(f"series {sid!r} is not in this version ({len(self.series)} series)")
            if model.multivariate:
                raise ValueError(f"series {sid!r}: a {model.kind} model needs its feature inputs")
            t, y = rows["t"].to_numpy(float), rows["y"].to_numpy(float)
            frame = model.score(t, y)
            parts.append(pd.DataFrame({"series": sid, "t": t, "y": y,
                                       **{c: np.asarray(getattr(frame, c), float)
                                          for c in ("score", "expected", "lower", "upper")}}))
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)


set_model(DetectorVersionModel())
