"""DockerContainerSource through the real Docker SDK against an API-faithful server on a unix socket."""
import pytest

from exporter.docker_source import (
    DockerContainerSource,
    DockerUnavailable,
    container_state,
    parse_docker_time,
)
from harness.fake_docker_api import FakeDockerAPI, inspect_doc

OLLAMA = "9e0c6a49e01e3e519a4f5bb9663075b4299ec2175e6e7f5e0bf0a210cb7faf77"
WEBUI = "32612a53e61297b9b47f0a011426a4cf61a16e1874c08cc8b29c0c008926a7b9"


@pytest.mark.parametrize("text, expected", [
    ("2026-01-05T10:00:00.123456789Z", 1767607200.123456),
    ("2026-01-05T10:00:00Z", 1767607200.0),
    ("2026-01-05T12:00:00.5+02:00", 1767607200.5),
    ("0001-01-01T00:00:00Z", None),
    ("", None),
    (None, None),
])
def test_parse_docker_time(text, expected):
    assert parse_docker_time(text) == (pytest.approx(expected) if expected else None)


def test_container_state_from_inspect():
    doc = inspect_doc(OLLAMA, "ollama", "ollama/ollama:0.5.7", restart_count=4, oom_killed=True,
                      health="unhealthy", started_at="2026-01-05T10:00:00Z")
    s = container_state(doc)
    assert (s.id, s.name, s.image, s.running, s.restart_count, s.started_at, s.oom_killed, s.health) == (
        OLLAMA, "ollama", "ollama/ollama:0.5.7", True, 4, 1767607200.0, True, "unhealthy")
    assert container_state(inspect_doc(WEBUI, "webui", "x", running=False)).health is None


def test_snapshot_over_unix_socket(tmp_path):
    docs = [inspect_doc(OLLAMA, "ollama", "ollama/ollama:0.5.7", health="healthy"),
            inspect_doc(WEBUI, "open-webui", "ghcr.io/open-webui/open-webui:main", running=False,
                        started_at="0001-01-01T00:00:00Z")]
    with FakeDockerAPI(tmp_path / "docker.sock", docs) as api:
        source = DockerContainerSource(api.url)
        snap = source.snapshot()
        assert [(c.name, c.running, c.health, c.started_at) for c in snap] == [
            ("ollama", True, "healthy", pytest.approx(1767607200.123456)),
            ("open-webui", False, None, None)]
        # The daemon is asked once for its version, then one list + one inspect per container.
        docs.pop()
        assert [c.name for c in source.snapshot()] == ["ollama"]
        assert sum(r.endswith("/version") for r in api.requests) == 1
    source.close()


def test_missing_socket_raises_a_clear_error(tmp_path):
    source = DockerContainerSource(f"unix://{tmp_path}/docker.sock", timeout=1)
    with pytest.raises(DockerUnavailable, match="docker.sock"):
        source.snapshot()


def test_daemon_going_away_is_reported_and_recovered(tmp_path):
    sock = tmp_path / "docker.sock"
    with FakeDockerAPI(sock, [inspect_doc(OLLAMA, "ollama", "ollama/ollama:0.5.7")]) as api:
        source = DockerContainerSource(api.url, timeout=1)
        assert len(source.snapshot()) == 1
    with pytest.raises(DockerUnavailable):
        source.snapshot()
    with FakeDockerAPI(sock, [inspect_doc(OLLAMA, "ollama", "ollama/ollama:0.5.7")]):
        assert len(source.snapshot()) == 1
