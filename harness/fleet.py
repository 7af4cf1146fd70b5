"""A fleet on 127.0.0.1, from the committed configs: boxes whose Prometheus runs in agent mode
(prometheus/agent.yml) remote-writing through vmauth (the config `make secrets` writes) into a real
VictoriaMetrics (`harness.victoria`). Compose's host names become this machine's ports; nothing else
in the configs changes. `central_scrape_config` is what the central VictoriaMetrics scrapes itself
(victoriametrics/scrape.yml: the detector shards among them), its targets swapped the same way.

    secrets = make_secrets(tmp / "secrets")
    with VictoriaMetricsServer(tmp / "vm") as vm, VMAuthServer(tmp / "auth", secrets, vm.url, loki_url) as auth, \\
            PrometheusAgent(tmp / "box-a", "box-a", exporter_url, auth.url, secrets) as agent:
        ...
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from harness.processes import require_binary
from harness.servers import BinaryServer

ROOT = Path(__file__).resolve().parents[1]
AGENT_CONFIG = ROOT / "prometheus" / "agent.yml"
SCRAPE_CONFIG = ROOT / "victoriametrics" / "scrape.yml"
INIT_SECRETS = ROOT / "scripts" / "init-secrets.sh"
SECRET_PATH = "/run/secrets/remote_write_password"  # where compose mounts the password file


def make_secrets(directory: Path) -> Path:
    """`make secrets` into `directory` (remote_write_password and vmauth.yml among them)."""
    subprocess.run(["sh", str(INIT_SECRETS), str(directory)], check=True, capture_output=True)
    return Path(directory)


def agent_config(exporter: str, central_url: str, password_file: Path, node_exporter: str | None = None,
                 scrape_interval: str | None = None, itself: str = "localhost:9090") -> str:
    """prometheus/agent.yml with compose's names swapped for HOST:PORTs on this machine."""
    text = AGENT_CONFIG.read_text()
    text = text.replace('"localhost:9090"', f'"{itself}"')
    text = text.replace('"rigwatch-exporter:9842"', f'"{exporter}"')
    text = text.replace('"node-exporter:9100"', f'"{node_exporter or exporter}"')
    text = text.replace("http://rigwatch-central:8427", central_url)
    text = text.replace(SECRET_PATH, str(password_file))
    if scrape_interval is not None:
        text = text.replace("scrape_interval: 15s", f"scrape_interval: {scrape_interval}")
        text = text.replace("scrape_timeout: 10s", f"scrape_timeout: {scrape_interval}")
    return text


class PrometheusAgent(BinaryServer):
    """A real Prometheus 2.42 in agent mode for one box: `RIGWATCH_BOX` set in its environment,
    expanded into the `box` external label (2.42 needs the expand-external-labels feature)."""

    def __init__(self, workdir: Path, box: str, exporter: str, central_url: str, secrets: Path,
                 node_exporter: str | None = None, scrape_interval: str | None = None):
        super().__init__(f"agent-{box}", workdir, env={**os.environ, "RIGWATCH_BOX": box})
        self.config_path.write_text(agent_config(exporter, central_url, Path(secrets) / "remote_write_password",
                                                 node_exporter, scrape_interval, itself=f"127.0.0.1:{self.port}"))

    def command(self) -> list[str]:
        return [require_binary("prometheus"), "--enable-feature=agent,expand-external-labels",
                f"--config.file={self.config_path}", f"--storage.agent.path={self.workdir / 'wal'}",
                f"--web.listen-address=127.0.0.1:{self.port}"]


class VMAuthServer(BinaryServer):
    """A real vmauth with the vmauth.yml `make secrets` wrote, its upstreams pointed at this
    machine's VictoriaMetrics and Loki."""

    def __init__(self, workdir: Path, secrets: Path, vm_url: str, loki_url: str):
        text = (Path(secrets) / "vmauth.yml").read_text()
        text = text.replace("http://victoriametrics:9090", vm_url).replace("http://loki:3100", loki_url)
        super().__init__("vmauth", workdir, config=text, ready_path="/health")

    def command(self) -> list[str]:
        return [require_binary("vmauth"), f"-auth.config={self.config_path}", f"-httpListenAddr=127.0.0.1:{self.port}"]


def central_scrape_config(targets: dict[str, str], scrape_interval: str | None = None) -> str:
    """victoriametrics/scrape.yml (what the central VictoriaMetrics scrapes itself) with compose's
    HOST:PORTs swapped by `targets` (every committed target must be given one: a target added to
    the file and not here fails loudly) and, when given, every interval set to `scrape_interval`.
    Jobs and honor_labels stay as committed."""
    cfg = yaml.safe_load(SCRAPE_CONFIG.read_text())
    if scrape_interval is not None:
        cfg.setdefault("global", {})["scrape_interval"] = scrape_interval
    for job in cfg["scrape_configs"]:
        if scrape_interval is not None and "scrape_interval" in job:
            job["scrape_interval"] = scrape_interval
        for static in job.get("static_configs", []):
            static["targets"] = [targets[t] for t in static["targets"]]
    return yaml.safe_dump(cfg, sort_keys=False)
