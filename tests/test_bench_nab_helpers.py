"""bench/bench_nab.py's pure helpers: incidents as NAB detection rows, overrides and candidates, LOCO."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))  # a script folder, no package
import bench_nab as b  # noqa: E402

T = np.arange(0, 3000, 300.0)  # 5-minute rows from the epoch


def test_an_incident_is_detected_at_the_row_the_service_first_lists_it():
    incs = [{"start": "1970-01-01T00:05:00Z", "peak_score": 4.0},  # listed at once (min_duration < step)
            {"start": "1970-01-01T00:25:00Z", "peak_score": 1.0}]  # a peak rounded to 1.0 still detects
    rows = b.detection_rows(incs, T, 120.0, 300.0)
    assert rows.tolist() == [0, 4.0, 0, 0, 0, b.DETECTED, 0, 0, 0, 0]
    # min_duration 15m at a 5m step: listed once it spans 3 steps, at start + 10m
    assert np.nonzero(b.detection_rows(incs[:1], T, 900.0, 300.0))[0].tolist() == [3]


def test_overrides_and_candidates():
    doc = {"defaults": {"model": "seasonal_esd", "onsets": None}, "schedule": {}}
    out = b.apply_overrides(doc, b.parse_candidate("defaults.onsets.horizon=12h,defaults.params={a: 1, b: 2}"))
    assert out["defaults"] == {"model": "seasonal_esd", "onsets": {"horizon": "12h"}, "params": {"a": 1, "b": 2}}
    assert doc["defaults"]["onsets"] is None  # the base config is left as it was
    for bad in ("model=x", "schedule.step=5m", "defaults.model"):
        with pytest.raises(ValueError):
            b.parse_override(bad)


def test_loco_takes_each_category_from_the_candidate_best_on_the_others():
    corpus = [{"key": f"{c}/f.csv"} for c in ("a", "b", "c")]
    good = {"a/f.csv": 1, "b/f.csv": 1, "c/f.csv": 0}  # best on a and b, worst on c

    def fake_score(scores, files, profiles, threshold):  # the standard score: the sum over the files
        return {"standard": {"score": sum(scores[f["key"]] for f in files)}}

    held, chosen = b.loco([{k: 0.5 for k in good}, good], corpus, {}, fake_score)
    assert chosen == {"a": 0, "b": 0, "c": 1} and held["c/f.csv"] == 0
