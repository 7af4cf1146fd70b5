"""Prometheus's HTTP query API: instant and range queries, their `result` list, errors raised."""
from __future__ import annotations

import json
import urllib.parse

from harness.processes import http_get


class PrometheusAPI:
    def __init__(self, url: str):
        self.url = url

    def query(self, promql: str, at: float | None = None) -> list[dict]:
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        body = json.loads(http_get(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}", timeout=10))
        if body.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {body}")
        return body["data"]["result"]

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[dict]:
        params = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        body = json.loads(http_get(f"{self.url}/api/v1/query_range?{urllib.parse.urlencode(params)}",
                                   timeout=30))
        if body.get("status") != "success":
            raise RuntimeError(f"query_range {promql!r} failed: {body}")
        return body["data"]["result"]
