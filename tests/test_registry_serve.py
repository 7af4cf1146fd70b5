"""A real `rigwatch-detector serve` follows a rollback made with `rigwatch-detector models` at its
next scoring step, and a restart keeps the rolled-back version."""
from __future__ import annotations

import subprocess
import sys
import time

import requests

from detector.cli import main
from detector.persistence import FilePersistence
from detector.registry import Registry
from detector.store import ModelStore
from harness.processes import free_port, wait_http_ok
from harness.servers import PrometheusServer
from tests.faults.test_store import NAME, REPO, _fitted_state


def scoring_version(url: str) -> int | None:
    (model,) = requests.get(url + "/api/v1/models", timeout=2).json()["models"]
    return model["version"]


def test_a_rollback_reaches_the_running_serve_and_survives_its_restart(tmp_path, capsys):
    store_dir = tmp_path / "store"
    store = ModelStore(FilePersistence(store_dir))
    registry = Registry(store)
    for _ in range(2):
        state, meta = _fitted_state()
        registry.propose(NAME, store.save(NAME, state, meta, prune=False).version)
    with PrometheusServer(tmp_path / "prom", "global: {scrape_interval: 1s}\n"
                          "scrape_configs: [{job_name: prometheus, static_configs: [{targets: []}]}]\n") as prom:
        config = tmp_path / "detector.yml"
        config.write_text(f"prometheus: {{url: '{prom.url}'}}\nstore: {{path: '{store_dir}'}}\n"
                          f"schedule: {{step: 2s}}\n"
                          f"detectors: [{{name: {NAME}, query: up, model: robust_z}}]\n")

        def serve(log_name: str):
            port = free_port()
            with open(tmp_path / log_name, "w") as log:
                proc = subprocess.Popen([sys.executable, "-m", "detector.cli", "serve", "--config", str(config),
                                         "--listen", f"127.0.0.1:{port}"], cwd=REPO, stdout=log,
                                        stderr=subprocess.STDOUT)
            wait_http_ok(f"http://127.0.0.1:{port}/readyz", timeout=30, proc=proc)
            return proc, f"http://127.0.0.1:{port}"

        proc, url = serve("serve1.log")
        try:
            assert scoring_version(url) == 2
            assert main(["models", "rollback", NAME, "--config", str(config)]) == 0
            assert "rolled back to v1" in capsys.readouterr().out
            deadline = time.monotonic() + 20
            while scoring_version(url) != 1 and time.monotonic() < deadline:
                time.sleep(0.3)
            assert scoring_version(url) == 1
            metrics = requests.get(url + "/metrics", timeout=2).text
            assert f'rigwatch_detector_model_info{{detector="{NAME}",model="robust_z",version="1"}} 1.0' in metrics
        finally:
            proc.terminate()
            proc.wait(timeout=15)
        proc, url = serve("serve2.log")
        try:
            assert scoring_version(url) == 1
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    assert f"{NAME} now scores with v1" in (tmp_path / "serve1.log").read_text()
    assert f"loaded {NAME} v1" in (tmp_path / "serve2.log").read_text()
