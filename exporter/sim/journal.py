"""Journal entries shaped like `journalctl -o json` output, plus the box's routine background chatter.

Facts kept faithful because the log detector depends on them: every value is a string; kernel lines
carry no _PID/_SYSTEMD_UNIT; container lines come through Docker's journald driver with
CONTAINER_NAME/CONTAINER_ID and a PRIORITY of 3 (stderr) or 6 (stdout) only; _BOOT_ID changes at boot.
"""
from __future__ import annotations

import random
from collections import deque
from datetime import UTC, datetime

HOSTNAME = "aibox"
LAN_ADMIN_IPS = ("192.168.1.20", "192.168.1.34")


def _hex(rng: random.Random, nbytes: int) -> str:
    return f"{rng.getrandbits(nbytes * 8):0{nbytes * 2}x}"


class Journal:
    """Builds entries for one machine; `entries` is a bounded buffer the box's users drain."""

    def __init__(self, rng: random.Random, maxlen: int | None = None, hostname: str = HOSTNAME):
        self.rng = rng
        self.hostname = hostname
        self.machine_id = _hex(rng, 16)
        self.boot_id = _hex(rng, 16)
        self.boot_time = 0.0
        self.seq = 0
        self.entries: deque[dict[str, str]] = deque(maxlen=maxlen)

    def new_boot(self, t: float) -> None:
        self.boot_id = _hex(self.rng, 16)
        self.boot_time = t

    def drain(self) -> list[dict[str, str]]:
        out = list(self.entries)
        self.entries.clear()
        return out

    def _base(self, t: float, priority: int, transport: str, message: str) -> dict[str, str]:
        self.seq += 1
        us = int(round(t * 1_000_000))
        mono = max(0, int(round((t - self.boot_time) * 1_000_000)))
        return {
            "__CURSOR": f"s={self.machine_id};i={self.seq:x};b={self.boot_id};m={mono:x};t={us:x};x=0",
            "__REALTIME_TIMESTAMP": str(us),
            "__MONOTONIC_TIMESTAMP": str(mono),
            "_BOOT_ID": self.boot_id,
            "_MACHINE_ID": self.machine_id,
            "_HOSTNAME": self.hostname,
            "PRIORITY": str(priority),
            "_TRANSPORT": transport,
            "MESSAGE": message,
        }

    def kernel(self, t: float, message: str, priority: int = 6) -> None:
        e = self._base(t, priority, "kernel", message)
        e.update({"SYSLOG_IDENTIFIER": "kernel", "SYSLOG_FACILITY": "0"})
        self.entries.append(e)

    def unit(self, t: float, unit: str, ident: str, pid: int, message: str, priority: int = 6,
             transport: str = "syslog", comm: str | None = None, facility: int = 3) -> None:
        e = self._base(t, priority, transport, message)
        e.update({"SYSLOG_IDENTIFIER": ident, "SYSLOG_FACILITY": str(facility), "_PID": str(pid),
                  "_COMM": comm or ident[:15], "_SYSTEMD_UNIT": unit, "_UID": "0", "_GID": "0"})
        if transport == "syslog":
            e["SYSLOG_PID"] = str(pid)
        self.entries.append(e)

    def systemd(self, t: float, message: str, priority: int = 6) -> None:
        self.unit(t, "init.scope", "systemd", 1, message, priority, transport="journal")

    def container(self, t: float, name: str, cid: str, image: str, message: str, stderr: bool,
                  dockerd_pid: int) -> None:
        # Docker's journald driver: PRIORITY only says which stream the line came from.
        e = self._base(t, 3 if stderr else 6, "journal", message)
        e.update({"CONTAINER_NAME": name, "CONTAINER_ID": cid[:12], "CONTAINER_ID_FULL": cid,
                  "CONTAINER_TAG": cid[:12], "SYSLOG_IDENTIFIER": cid[:12], "IMAGE_NAME": image,
                  "_PID": str(dockerd_pid), "_COMM": "dockerd", "_SYSTEMD_UNIT": "docker.service",
                  "_UID": "0", "_GID": "0"})
        self.entries.append(e)


def iso_ms(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(t * 1000) % 1000:03d}Z"


def gin_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y/%m/%d - %H:%M:%S")


class Background:
    """Routine lines of a healthy box: cron, systemd timers, admin SSH logins, database chatter.

    Each source keeps its next due time; `emit_until(t)` writes everything due up to t, in time order
    per source (sources interleave; the history writer sorts the final file)."""

    def __init__(self, journal: Journal, rng: random.Random, t0: float, pids):
        self.j = journal
        self.rng = rng
        self.pids = pids  # callable(name) -> a fresh pid
        self.next_cron = (t0 // 3600 + 1) * 3600 + 17 * 60
        self.next_ssh = t0 + rng.expovariate(1 / 14400)
        self.next_timer = t0 + rng.uniform(600, 5400)
        self.session_no = rng.randint(3, 30)

    def emit_until(self, t: float) -> None:
        while self.next_cron <= t:
            self._cron(self.next_cron)
            self.next_cron += 3600
        while self.next_ssh <= t:
            self._ssh_login(self.next_ssh)
            hour = datetime.fromtimestamp(self.next_ssh, UTC).hour
            mean = 9000 if 8 <= hour <= 22 else 40000
            self.next_ssh += self.rng.expovariate(1 / mean) + 300
        while self.next_timer <= t:
            self._timer(self.next_timer)
            self.next_timer += self.rng.uniform(3 * 3600, 9 * 3600)

    def _cron(self, t: float) -> None:
        pid = self.pids("cron")
        self.j.unit(t, "cron.service", "CRON", pid,
                    "pam_unix(cron:session): session opened for user root(uid=0) by root(uid=0)", 6,
                    comm="cron", facility=10)
        self.j.unit(t + 0.004, "cron.service", "CRON", pid,
                    "(root) CMD (cd / && run-parts --report /etc/cron.hourly)", 6, comm="cron", facility=9)
        self.j.unit(t + 0.05, "cron.service", "CRON", pid,
                    "pam_unix(cron:session): session closed for user root", 6, comm="cron", facility=10)

    def _ssh_login(self, t: float) -> None:
        pid = self.pids("sshd")
        ip = self.rng.choice(LAN_ADMIN_IPS)
        port = self.rng.randint(40000, 65000)
        fp = "SHA256:q3b8Jk1xVv0m2cT9ZrYhFh0kq1y4uS7Wn6oE5p8aLsE"
        self.session_no += 1
        self.j.unit(t, "ssh.service", "sshd", pid,
                    f"Accepted publickey for admin from {ip} port {port} ssh2: ED25519 {fp}", 6, facility=4)
        self.j.unit(t + 0.01, "ssh.service", "sshd", pid,
                    "pam_unix(sshd:session): session opened for user admin(uid=1000) by (uid=0)", 6,
                    facility=10)
        self.j.unit(t + 0.02, "systemd-logind.service", "systemd-logind", 612,
                    f"New session {self.session_no} of user admin.", 6, transport="journal", facility=4)
        self.j.systemd(t + 0.03, f"Started session-{self.session_no}.scope - Session {self.session_no} of "
                                 "User admin.")
        end = t + self.rng.uniform(120, 2400)
        self.j.unit(end, "ssh.service", "sshd", pid, f"Received disconnect from {ip} port {port}:11: "
                                                      "disconnected by user", 6, facility=4)
        self.j.unit(end + 0.01, "ssh.service", "sshd", pid,
                    "pam_unix(sshd:session): session closed for user admin", 6, facility=10)
        self.j.systemd(end + 0.02, f"session-{self.session_no}.scope: Deactivated successfully.")

    def _timer(self, t: float) -> None:
        unit, desc = self.rng.choice([
            ("apt-daily.service", "Daily apt download activities"),
            ("apt-daily-upgrade.service", "Daily apt upgrade and clean activities"),
            ("logrotate.service", "Rotate log files"),
            ("man-db.service", "Daily man-db regeneration"),
            ("systemd-tmpfiles-clean.service", "Cleanup of Temporary Directories"),
            ("e2scrub_all.service", "Online ext4 Metadata Check for All Filesystems"),
        ])
        self.j.systemd(t, f"Starting {unit} - {desc}...")
        dur = self.rng.uniform(0.2, 40)
        self.j.systemd(t + dur, f"{unit}: Deactivated successfully.")
        self.j.systemd(t + dur + 0.001, f"Finished {unit} - {desc}.")
