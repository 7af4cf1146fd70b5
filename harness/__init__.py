"""The harness that starts the local rigwatch stack on 127.0.0.1: for `make demo`, the tests and the
benchmarks alike.

Imported from the repository root, as scripts/ is (it is not part of the installed wheel). It uses
the standard library and the package's own dependencies only, and never imports pytest or tests/
(a missing binary raises `processes.MissingBinary`; the tests turn it into a failure).

- `processes`      free ports, HTTP readiness polling, `Process` (one child process with its log),
                   the Debian binaries (`require_binary`) and promtool backfill
- `servers`        a real Prometheus / Alertmanager as a `Process`
- `prometheus_api` instant and range queries against Prometheus's HTTP API
- `webhook`        an Alertmanager webhook receiver in this process
- `log_shipping`   Promtail's part: journal records pushed to Loki, a live journal tailed into it
- `loki_standin`   the in-repo, API-faithful Loki stand-in (Loki cannot run here)
- `fake_docker_api` a Docker Engine API on a unix socket for the real Docker SDK client
- `mlflow_server` a real `mlflow server` (SQLite backend, its own folder, 127.0.0.1, a free port)
- `pipeline`       `Pipeline`: the whole path (sim exporter, detector, Prometheus, Alertmanager) in order
"""
