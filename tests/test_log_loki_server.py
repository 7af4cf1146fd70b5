"""The Loki test server answers like Loki: push, LogQL subset, limits, direction, errors."""
from __future__ import annotations

import pytest
import requests

from detector.logs.loki import LokiClient, LokiQueryError
from harness.loki_standin import LokiTestServer

T = 1_700_000_000 * 10**9  # 2023-11-14T22:13:20Z


@pytest.fixture(scope="module")
def loki():
    with LokiTestServer() as server:
        body = {"streams": [
            {"stream": {"job": "systemd-journal", "unit": "ssh.service", "priority": "6"},
             "values": [[str(T + i * 10**9), f"Failed password for root from 203.0.113.{i} port 22 ssh2"] for i in range(5)]},
            {"stream": {"job": "systemd-journal", "unit": "cron.service", "priority": "6"},
             "values": [[str(T + 500_000_000), "(root) CMD (run-parts /etc/cron.hourly)"],
                        [str(T + 2 * 10**9), "pam_unix(cron:session): session closed for user root"]]},
            {"stream": {"job": "docker", "container": "ollama"},
             "values": [[str(T + 3 * 10**9), 'level=ERROR msg="CUDA error: out of memory"']]},
        ]}
        response = requests.post(server.url + "/loki/api/v1/push", json=body, timeout=5)
        assert response.status_code == 204
        yield server


def get(loki, **params):
    return requests.get(loki.url + "/loki/api/v1/query_range", params=params, timeout=5)


def test_streams_shape_direction_and_limit(loki):
    body = get(loki, query='{job="systemd-journal"}', start=str(T), end=str(T + 60 * 10**9), limit=3).json()
    assert body["status"] == "success" and body["data"]["resultType"] == "streams"
    values = [v for s in body["data"]["result"] for v in s["values"]]
    # default direction is backward: the 3 newest lines
    assert sorted(int(ts) for ts, _line in values) == [T + 2 * 10**9, T + 3 * 10**9, T + 4 * 10**9]
    assert all(isinstance(ts, str) for ts, _line in values)
    forward = get(loki, query='{job="systemd-journal"}', start=str(T), end=str(T + 60 * 10**9), limit=2,
                  direction="forward").json()
    got = sorted(int(v[0]) for s in forward["data"]["result"] for v in s["values"])
    assert got == [T, T + 500_000_000]


@pytest.mark.parametrize("query,count", [
    ('{unit="ssh.service"}', 5),
    ('{job="systemd-journal", unit!="ssh.service"}', 2),
    ('{unit=~"ssh.*|cron.service"}', 7),
    ('{job=~".+", unit!~"ssh.*"}', 3),             # a missing label matches as ""
    ('{job="systemd-journal"} |= "root" != "cron"', 5),
    ('{job="systemd-journal"} |~ "203\\\\.0\\\\.113\\\\.[0-2] " ', 3),
    ('{job=~".+"} !~ "Failed|CMD"', 2),
    ("{container=`ollama`} |= `CUDA error`", 1),
])
def test_matchers_and_line_filters(loki, query, count):
    body = get(loki, query=query, start=str(T), end=str(T + 60 * 10**9), limit=100).json()
    assert sum(len(s["values"]) for s in body["data"]["result"]) == count


def test_start_inclusive_end_exclusive_and_rfc3339(loki):
    body = get(loki, query='{unit="ssh.service"}', start="2023-11-14T22:13:21Z", end=str(T + 3 * 10**9)).json()
    assert sorted(int(v[0]) for s in body["data"]["result"] for v in s["values"]) == [T + 10**9, T + 2 * 10**9]


def test_count_over_time_matrix(loki):
    body = get(loki, query='count_over_time({unit="ssh.service"}[2s])', start=str(T + 10**9),
               end=str(T + 4 * 10**9), step="1").json()
    assert body["data"]["resultType"] == "matrix"
    series = body["data"]["result"][0]
    assert series["metric"] == {"job": "systemd-journal", "unit": "ssh.service", "priority": "6"}
    assert series["values"] == [[1700000001.0, "2"], [1700000002.0, "2"], [1700000003.0, "2"], [1700000004.0, "2"]]


@pytest.mark.parametrize("query,text", [
    ('{job="x"', "parse error at line 1"),
    ('{job=""}', "at least one regexp or equality matcher that does not have an empty-compatible value"),
    ('{job=~".*"}', "empty-compatible"),
    ('{job="x"} |~ "("', "invalid regex"),
    ('rate({job="x"}[1m])', "parse error"),
    ('count_over_time({job="x"}[5x])', "not a valid duration"),
])
def test_bad_query_is_400_with_loki_style_text(loki, query, text):
    response = get(loki, query=query, start=str(T), end=str(T + 10**9))
    assert response.status_code == 400 and response.headers["Content-Type"].startswith("text/plain")
    assert text in response.text


def test_bad_parameters_are_400(loki):
    assert get(loki, query='{job="x"}', start="yesterday").status_code == 400
    assert get(loki, query='{job="x"}', direction="sideways").status_code == 400
    assert get(loki, query='{job="x"}', limit="100000").status_code == 400
    assert requests.post(loki.url + "/loki/api/v1/push", json={"nope": 1}, timeout=5).status_code == 400


def test_labels_values_series_ready_through_the_client(loki):
    client = LokiClient(loki.url, retries=0)
    assert client.ready()
    assert client.labels(T, T + 60 * 10**9) == ["container", "job", "priority", "unit"]
    assert client.label_values("unit", T, T + 60 * 10**9) == ["cron.service", "ssh.service"]
    assert client.series('{job="docker"}', T, T + 60 * 10**9) == [{"container": "ollama", "job": "docker"}]
    entries = client.query_range('{job=~".+"}', T, T + 60 * 10**9, page_limit=2)
    assert len(entries) == 8 and [e.ts for e in entries] == sorted(e.ts for e in entries)
    with pytest.raises(LokiQueryError, match="parse error"):
        client.query_range("{job}", T, T + 1)
