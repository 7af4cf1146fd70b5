"""LokiClient against Loki's documented HTTP response shapes (mocked with `responses`)."""
from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs, urlparse

import pytest
import requests
import responses

from detector.logs.loki import LokiClient, LokiError, LokiQueryError, to_ns

URL = "http://loki.test:3100"
QR = URL + "/loki/api/v1/query_range"
T = 1_700_000_000_000_000_000  # ns


def streams(*result):
    return {"status": "success", "data": {"resultType": "streams", "result": list(result),
                                          "stats": {"summary": {"bytesProcessedPerSecond": 1}}}}


def params(call) -> dict[str, list[str]]:
    return parse_qs(urlparse(call.request.url).query)


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def client(sleeps):
    return LokiClient(URL, retries=2, backoff=0.5, sleep=sleeps.append, page_limit=3)


def test_to_ns_accepts_seconds_datetimes_rfc3339_and_ns_strings():
    assert to_ns(1_700_000_000) == T
    assert to_ns(1_700_000_000.5) == T + 500_000_000
    assert to_ns("2023-11-14T22:13:20Z") == T
    assert to_ns(datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)) == T
    assert to_ns(str(T + 7)) == T + 7


@responses.activate
def test_stream_query_returns_entries_with_labels_and_sends_ns_strings(client):
    responses.get(QR, json=streams(
        {"stream": {"job": "systemd-journal", "unit": "ssh.service"}, "values": [[str(T + 2), "b"], [str(T + 1), "a"]]},
        {"stream": {"job": "docker", "container": "ollama"}, "values": [[str(T + 3), "c ü"]]}))
    entries = client.query_range('{job=~".+"}', T, T + 10**9, page_limit=10)
    assert [(e.message, e.labels.get("unit") or e.labels["container"]) for e in entries] == [
        ("a", "ssh.service"), ("b", "ssh.service"), ("c ü", "ollama")]
    assert entries[0].ts == pytest.approx(1_700_000_000.000000001)
    sent = params(responses.calls[0])
    assert sent["start"] == [str(T)] and sent["end"] == [str(T + 10**9)]
    assert sent["direction"] == ["forward"] and sent["limit"] == ["10"] and sent["query"] == ['{job=~".+"}']


@responses.activate
def test_paging_moves_the_window_and_drops_boundary_duplicates(client):
    s = {"job": "x"}
    # page 1 is full (limit 3) and ends with two lines at T+5; page 2 starts at T+5 and repeats them
    responses.get(QR, json=streams({"stream": s, "values": [[str(T + 1), "l1"], [str(T + 5), "l2"], [str(T + 5), "l3"]]}))
    responses.get(QR, json=streams({"stream": s, "values": [[str(T + 5), "l2"], [str(T + 5), "l3"], [str(T + 5), "l4"]]}))
    responses.get(QR, json=streams({"stream": s, "values": [[str(T + 5), "l2"], [str(T + 5), "l3"], [str(T + 5), "l4"]]}))
    responses.get(QR, json=streams({"stream": s, "values": [[str(T + 7), "l5"]]}))
    # a full page inside one nanosecond cannot be paged further: it moves on 1 ns later and says so
    assert [e.message for e in client.query_range('{job="x"}', T, T + 100)] == ["l1", "l2", "l3", "l4", "l5"]
    assert client.truncated_instants == 1
    assert params(responses.calls[3])["start"] == [str(T + 6)]
    responses.reset()
    responses.get(QR, json=streams({"stream": s, "values": [[str(T + 1), "l1"], [str(T + 5), "l2"], [str(T + 5), "l3"]]}))
    responses.get(QR, json=streams({"stream": s, "values": [[str(T + 5), "l2"], [str(T + 5), "l3"], [str(T + 9), "l4"]]}))
    responses.get(QR, json=streams({"stream": s, "values": [[str(T + 9), "l4"], [str(T + 12), "l5"]]}))
    entries = client.query_range('{job="x"}', T, T + 100)
    assert [e.message for e in entries] == ["l1", "l2", "l3", "l4", "l5"]
    assert [params(c)["start"][0] for c in responses.calls] == [str(T), str(T + 5), str(T + 9)]


@responses.activate
def test_metric_query_returns_matrix_series(client):
    responses.get(QR, json={"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {"unit": "ssh.service"}, "values": [[1700000000, "3"], [1700000060.5, "12"]]}], "stats": {}}})
    series = client.metric_query('count_over_time({unit="ssh.service"}[1m])', T, T + 60 * 10**9, step="60s")
    assert series[0].labels == {"unit": "ssh.service"}
    assert [(s.ts, s.value) for s in series[0].samples] == [(1700000000.0, 3.0), (1700000060.5, 12.0)]
    assert params(responses.calls[0])["step"] == ["60s"]


@responses.activate
def test_stream_query_refuses_matrix_and_metric_refuses_streams(client):
    responses.get(QR, json={"status": "success", "data": {"resultType": "matrix", "result": []}})
    with pytest.raises(LokiError, match="expected a log query"):
        client.query_range("count_over_time({a=\"b\"}[1m])", T, T + 1)
    responses.get(QR, json=streams())
    with pytest.raises(LokiError, match="expected a metric query"):
        client.metric_query('{a="b"}', T, T + 1, step=60)


@responses.activate
def test_server_error_is_retried_with_backoff_then_succeeds(client, sleeps):
    responses.get(QR, body="too many outstanding requests", status=503)
    responses.get(QR, json=streams({"stream": {"job": "x"}, "values": [[str(T), "ok"]]}))
    assert [e.message for e in client.query_range('{job="x"}', T, T + 1)] == ["ok"]
    assert len(responses.calls) == 2 and sleeps == [0.5]


@responses.activate
def test_unreachable_loki_is_retried_counted_and_reported(sleeps):
    errors = []
    client = LokiClient(URL, retries=2, backoff=0.5, sleep=sleeps.append, on_error=errors.append)
    responses.get(QR, body=requests.ConnectionError("refused"))
    with pytest.raises(LokiError, match="unreachable.*gave up after 3 attempts"):
        client.query_range('{job="x"}', T, T + 1)
    assert sleeps == [0.5, 1.0] and len(errors) == 3


@responses.activate
def test_bad_query_400_surfaces_lokis_text_without_retry(client, sleeps):
    responses.get(QR, body="parse error at line 1, col 6: syntax error: unexpected IDENTIFIER, expecting = or =~",
                  status=400, content_type="text/plain")
    with pytest.raises(LokiQueryError) as info:
        client.query_range("{job x}", T, T + 1)
    assert info.value.status == 400
    assert "parse error at line 1, col 6" in str(info.value) and "400" in str(info.value)
    assert len(responses.calls) == 1 and sleeps == []


@responses.activate
def test_labels_label_values_and_series(client):
    responses.get(URL + "/loki/api/v1/labels", json={"status": "success", "data": ["container", "job", "unit"]})
    responses.get(URL + "/loki/api/v1/label/unit/values", json={"status": "success", "data": ["cron.service", "ssh.service"]})
    responses.get(URL + "/loki/api/v1/series", json={"status": "success", "data": [{"job": "docker", "container": "ollama"}]})
    assert client.labels(T, T + 1) == ["container", "job", "unit"]
    assert client.label_values("unit") == ["cron.service", "ssh.service"]
    assert client.series(['{job="docker"}', '{job="x"}'], T, T + 1) == [{"job": "docker", "container": "ollama"}]
    assert params(responses.calls[2])["match[]"] == ['{job="docker"}', '{job="x"}']
    assert params(responses.calls[0])["start"] == [str(T)]


@responses.activate
def test_ready(client):
    responses.get(URL + "/ready", body="ready\n")
    assert client.ready() is True
    responses.replace(responses.GET, URL + "/ready", body="Ingester not ready", status=503)
    assert client.ready() is False


def test_from_config_validates_keys_and_types():
    client = LokiClient.from_config({"url": "http://127.0.0.1:3100", "timeout": 3, "tenant": "rig"})
    assert client.timeout == 3 and client.headers["X-Scope-OrgID"] == "rig"
    assert LokiClient.query_from_config(None) == '{job=~"systemd-journal|docker"}'
    with pytest.raises(ValueError, match=r"loki\.timout: unknown key"):
        LokiClient.from_config({"timout": 3})
    with pytest.raises(ValueError, match=r"loki\.retries: expected an integer"):
        LokiClient.from_config({"retries": "3"})
