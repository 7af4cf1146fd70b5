"""Every enabled detector's PromQL checked against Prometheus, at start-up and before a hot reload.

A query Prometheus refuses (400 bad_data, 422 execution) is a config error naming its key,
`detectors[N].query` / `.features.NAME` / `.heartbeat`, exactly like a bad model name. The check is a
range query over a single step at the detector's resolution: cheap, and it refuses what the
detector's own range queries would (an instant query accepts a range vector such as `x[5m]`, a
range query does not). An unavailable Prometheus is no config error: the check is skipped with a
warning, and a query refused later pauses only its own detector (see metric_plugin).
"""
from __future__ import annotations

import logging
import math
import time

from detector.config import Config, ConfigError
from detector.fetch import detector_queries
from detector.promclient import PromClient, PromError, PromQueryError

log = logging.getLogger(__name__)


class QueryChecker:
    """`check(config)` raises ConfigError for the first query Prometheus refuses."""

    def __init__(self, client: PromClient, clock=time.time):
        """`client`: one that does not retry (an unreachable Prometheus must not delay start-up)."""
        self.client = client
        self.clock = clock

    def check(self, config: Config) -> bool:
        """True when every query was checked and accepted; False when Prometheus could not be asked."""
        step = config.schedule.step
        end = math.floor(self.clock() / step) * step
        for i, det in enumerate(config.detectors):
            if not det.enabled:
                continue
            for key, promql in detector_queries(det).items():
                try:
                    self.client.query_range(promql, end - step, end, step)
                except PromQueryError as e:
                    raise ConfigError(f"detectors[{i}].{key}",
                                      f"prometheus refuses this query ({e.error_type}): {e.reason}") from None
                except PromError as e:
                    log.warning("prometheus unavailable, detector queries not checked (%s); a query it "
                                "refuses later pauses only its own detector", e)
                    return False
        return True
