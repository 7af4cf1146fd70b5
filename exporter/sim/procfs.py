"""A fake /proc tree holding just what the exporter reads: <pid>/comm and <pid>/cgroup (GPU-process
attribution) and `stat` (the host's boot time, its `btime` line)."""
from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path


class FakeProcTree:
    """Writes cgroup v2 (systemd driver) entries under a private temp dir; `sync` adds/removes pids."""

    def __init__(self, root: str | Path | None = None):
        self._owned = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="rigwatch-sim-proc-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self._pids: dict[int, tuple[str, str]] = {}
        if self._owned:  # the live exporter only calls box.stop(): remove our temp tree at exit anyway
            self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.root), True)
        self._write(1, "systemd", "/init.scope")
        # The exporter itself, as if run from an admin's shell session.
        self._write_dir(self.root / "self", "python3", "/user.slice/user-1000.slice/session-3.scope")

    @staticmethod
    def _write_dir(d: Path, comm: str, cgroup: str) -> None:
        d.mkdir(parents=True, exist_ok=True)
        (d / "comm").write_text(comm + "\n")
        (d / "cgroup").write_text(f"0::{cgroup}\n")

    def _write(self, pid: int, comm: str, cgroup: str) -> None:
        # Build the entry aside and rename it into place: a concurrent reader (the live exporter's
        # attribution thread) sees either no /proc/<pid> or a complete one.
        final = self.root / str(pid)
        tmp = self.root / f".new-{pid}"
        shutil.rmtree(tmp, ignore_errors=True)
        self._write_dir(tmp, comm, cgroup)
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)

    def set_boot_time(self, t: float) -> None:
        """Serve `t` as /proc/stat's btime (whole seconds, as the kernel writes it), replaced whole so
        a concurrent reader never sees half a file. The other lines are there for the shape only."""
        text = (f"cpu  0 0 0 0 0 0 0 0 0 0\nintr 0\nctxt 0\nbtime {int(t)}\n"
                "processes 0\nprocs_running 1\nprocs_blocked 0\n")
        tmp = self.root / ".new-stat"
        tmp.write_text(text)
        os.replace(tmp, self.root / "stat")

    def sync(self, wanted: dict[int, tuple[str, str]]) -> None:
        """wanted: pid -> (comm, cgroup path such as /system.slice/docker-<id>.scope)."""
        for pid in list(self._pids):
            if pid not in wanted:
                shutil.rmtree(self.root / str(pid), ignore_errors=True)
                del self._pids[pid]
        for pid, entry in wanted.items():
            if self._pids.get(pid) != entry:
                self._write(pid, *entry)
                self._pids[pid] = entry

    def cleanup(self) -> None:
        if self._owned:
            self._finalizer()
