"""PID -> workload through /proc/<pid>/cgroup: literal cgroup texts and the fixture /proc tree."""
from pathlib import Path

import pytest

from exporter.attribution import CONTAINER, PROCESS, SYSTEMD_UNIT, Attributor, Owner, parse_cgroup
from exporter.read_errors import ReadErrors

PROC = Path(__file__).parent / "fixtures" / "proc"
ID = "9e0c6a49e01e3e519a4f5bb9663075b4299ec2175e6e7f5e0bf0a210cb7faf77"


@pytest.mark.parametrize("text, expected", [
    (f"0::/system.slice/docker-{ID}.scope\n", Owner(CONTAINER, ID)),                      # v2 systemd
    (f"0::/docker/{ID}\n", Owner(CONTAINER, ID)),                                         # v2 cgroupfs
    (f"11:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n", Owner(CONTAINER, ID)),    # v1 cgroupfs
    (f"4:cpu,cpuacct:/system.slice/docker-{ID}.scope\n", Owner(CONTAINER, ID)),           # v1 systemd
    (f"0::/../../system.slice/docker-{ID}.scope\n", Owner(CONTAINER, ID)),                # private ns
    (f"0::/kubepods/burstable/pod1-2/{ID}\n", Owner(CONTAINER, ID)),                      # k8s cgroupfs
    (f"0::/machine.slice/libpod-{ID}.scope/container\n", Owner(CONTAINER, ID)),          # podman
    ("0::/system.slice/ollama.service\n", Owner(SYSTEMD_UNIT, "ollama.service")),
    ("12:pids:/\n1:name=systemd:/system.slice/ollama.service\n", Owner(SYSTEMD_UNIT, "ollama.service")),
    ("0::/process_api/0123456789abcdef0123456789abcdef\n", None),  # H100: 32 hex is not a container
    ("0::/user.slice/user-1000.slice/session-2.scope\n", None),
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope\n", None),
    ("0::/\n", None),
    ("", None),
    (f"0::/system.slice/docker-{ID[:63]}.scope\n", None),  # one hex short
])
def test_parse_cgroup(text, expected):
    assert parse_cgroup(text) == expected


@pytest.mark.parametrize("pid, kind, key", [
    (1001, CONTAINER, "9e0c6a49e01e3e519a4f5bb9663075b4299ec2175e6e7f5e0bf0a210cb7faf77"),
    (1002, CONTAINER, "32612a53e61297b9b47f0a011426a4cf61a16e1874c08cc8b29c0c008926a7b9"),
    (1003, CONTAINER, "1fa324c975a89f283923740d9ab882cf2e793e87700bbf098ba4d93bfce1a2b7"),
    (1004, CONTAINER, "e84ade0d7fe5abb67038ae7dc67ffbf36cf819bcd0a39ebb0b4acad87a134f33"),
    (1005, SYSTEMD_UNIT, "ollama.service"),
    (1006, SYSTEMD_UNIT, "ollama.service"),
    (1007, PROCESS, "python"),
    (1008, PROCESS, "blender"),
    (1009, PROCESS, "python3"),
    (1010, CONTAINER, "934cf62c030a2b5a7053d709d3b9ed9d17c074e1539d05e3ccb647809aee59bd"),
    (1011, CONTAINER, "14afd74d170601b1109b51fbf986627b8eb801475014fc37381253dff9401115"),
    (1012, PROCESS, "llama-server"),   # cgroup unreadable: the comm still names it
    (1013, PROCESS, "unknown"),        # no /proc entry at all: never an empty label
])
def test_attributor_on_fixture_tree(pid, kind, key):
    assert Attributor(PROC).owner(pid) == Owner(kind, key)


def test_attributor_caches_until_refresh(tmp_path):
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text("0::/system.slice/ollama.service\n")
    att = Attributor(tmp_path, ReadErrors())
    assert att.owner(42) == Owner(SYSTEMD_UNIT, "ollama.service")
    # The PID is reused by a container process: the cache answers until the off-scrape refresh.
    (tmp_path / "42" / "cgroup").write_text(f"0::/system.slice/docker-{ID}.scope\n")
    assert att.owner(42) == Owner(SYSTEMD_UNIT, "ollama.service")
    att.refresh()
    assert att.owner(42) == Owner(CONTAINER, ID)
    att.retain(set())
    (tmp_path / "42" / "cgroup").write_text("0::/system.slice/llama.service\n")
    assert att.owner(42) == Owner(SYSTEMD_UNIT, "llama.service")
