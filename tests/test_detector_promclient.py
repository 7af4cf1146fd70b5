"""Prometheus client against the documented HTTP API response shapes, served by `responses`."""
from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
import requests
import responses

from detector.promclient import PromClient, PromError, counter_increases, find_gaps, stale_mask

URL = "http://prom.test:9090"


def matrix(*series):
    return {"status": "success", "data": {"resultType": "matrix", "result": list(series)}}


def one(labels, points):
    return {"metric": labels, "values": [[t, str(v)] for t, v in points]}


def client(**kw):
    sleeps = []
    c = PromClient(URL, retries=kw.pop("retries", 2), backoff=0.1, sleep=sleeps.append, **kw)
    return c, sleeps


@responses.activate
def test_query_range_parses_matrix_and_drops_name():
    responses.get(URL + "/api/v1/query_range", json=matrix(
        one({"__name__": "gpu_temperature_celsius", "gpu": "0", "uuid": "GPU-a"}, [(60, 41), (120, "NaN")])))
    c, _ = client()
    (s,) = c.query_range("gpu_temperature_celsius", 60, 120, 60)
    assert s.labels == {"gpu": "0", "uuid": "GPU-a"}
    assert s.name == "gpu_temperature_celsius"
    assert s.t.tolist() == [60.0, 120.0]
    assert s.y[0] == 41.0 and np.isnan(s.y[1])


@responses.activate
def test_instant_vector_and_scalar():
    responses.get(URL + "/api/v1/query", json={"status": "success", "data": {
        "resultType": "vector", "result": [{"metric": {"job": "x"}, "value": [1700000000.5, "1"]}]}})
    c, _ = client()
    (s,) = c.query("up")
    assert s.labels == {"job": "x"} and s.t.tolist() == [1700000000.5] and s.y.tolist() == [1.0]
    responses.replace(responses.GET, URL + "/api/v1/query", json={
        "status": "success", "data": {"resultType": "scalar", "result": [1700000000, "+Inf"]}})
    (s,) = c.query("scalar(vector(1))")
    assert s.y[0] == float("inf")


@responses.activate
def test_long_range_is_split_under_point_limit_and_stitched():
    calls = []

    def handler(request):
        q = parse_qs(urlparse(request.url).query)
        start, end, step = float(q["start"][0]), float(q["end"][0]), float(q["step"][0])
        calls.append((start, end))
        assert (end - start) / step + 1 <= 100
        ts = np.arange(start, end + 1, step)
        series = [one({"a": "1"}, [(t, t) for t in ts])]
        if start > 0:  # a series that appears only in later chunks is kept too
            series.append(one({"a": "2"}, [(t, 1) for t in ts]))
        return 200, {}, __import__("json").dumps(matrix(*series))

    responses.add_callback(responses.GET, URL + "/api/v1/query_range", callback=handler)
    c, _ = client(max_points=100)
    out = {s.labels["a"]: s for s in c.query_range("x", 0, 60 * 250, 60)}
    assert len(calls) == 3
    t = out["1"].t
    assert t[0] == 0 and t[-1] == 60 * 250 and len(t) == 251 and np.all(np.diff(t) == 60)
    assert out["2"].t[0] == 60 * 100


@responses.activate
def test_retries_with_backoff_then_succeeds_and_counts_errors():
    errors = []
    responses.get(URL + "/api/v1/query", status=503, body="overloaded")
    responses.get(URL + "/api/v1/query", body=requests.ConnectionError("refused"))
    responses.get(URL + "/api/v1/query", json={"status": "success", "data": {"resultType": "vector", "result": []}})
    c, sleeps = client(retries=3, on_error=errors.append)
    assert c.query("up") == []
    assert sleeps == [0.1, 0.2]
    assert len(errors) == 2 and all(isinstance(e, PromError) for e in errors)


@responses.activate
def test_bad_query_is_not_retried_and_error_says_why():
    responses.get(URL + "/api/v1/query", status=400, json={
        "status": "error", "errorType": "bad_data", "error": "1:5: parse error: unexpected \"}\""})
    c, sleeps = client(retries=3)
    with pytest.raises(PromError) as ei:
        c.query("up{}}")
    assert ei.value.status == 400 and ei.value.error_type == "bad_data"
    assert "parse error" in str(ei.value)
    assert sleeps == [] and len(responses.calls) == 1


@responses.activate
def test_gives_up_after_retries():
    responses.get(URL + "/api/v1/query", body=requests.ConnectionError("refused"))
    c, sleeps = client(retries=2)
    with pytest.raises(PromError) as ei:
        c.query("up")
    assert ei.value.retryable
    assert len(responses.calls) == 3 and sleeps == [0.1, 0.2]


@responses.activate
def test_series_endpoint_sends_match_list():
    responses.get(URL + "/api/v1/series", json={"status": "success", "data": [
        {"__name__": "gpu_up", "gpu": "0"}]})
    c, _ = client()
    out = c.series(["gpu_up", "gpu_info"], start=0, end=60)
    assert out == [{"__name__": "gpu_up", "gpu": "0"}]
    q = parse_qs(urlparse(responses.calls[0].request.url).query)
    assert q["match[]"] == ["gpu_up", "gpu_info"]


def test_gaps_from_sample_timestamps():
    t = np.array([0, 60, 120, 600, 660], float)
    assert find_gaps(t, 60) == [(120.0, 600.0)]
    # Prometheus keeps answering with the last sample for 5 minutes: only timestamp() shows it
    steps = np.array([120, 180, 240, 300], float)
    sample_ts = np.array([120, 120, 120, 120], float)
    assert stale_mask(steps, sample_ts, 90).tolist() == [False, False, True, True]


def test_counter_increases_reset_and_first_appearance():
    assert counter_increases(np.array([3, 4, 4, 1, 2]), appeared=False).tolist() == [0, 1, 0, 1, 1]
    # gpu_xid_errors_total{xid="79"} shows up already at 1: that is an increase from 0
    assert counter_increases(np.array([1, 1]), appeared=True).tolist() == [1, 0]
