"""Promtail's part for the local stack: `journalctl -o json` records pushed to Loki under the
stream-label contract (`loki_push`), and a live journal file tailed into Loki as it is written
(`JournalShipper`)."""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

from detector.logs.journal import entry_from_journal

JOURNAL_BATCH = 2000  # entries per push request


def loki_push(loki_url: str, records: list[dict], timeout: float = 10.0) -> int:
    """Push `journalctl -o json` records to Loki as Promtail would: one stream per label set (the
    stream-label contract, mapped by detector.logs.journal), the MESSAGE as the line, the journal's
    microsecond timestamp as nanoseconds. Returns the number of entries sent."""
    streams: dict[tuple, list[list[str]]] = {}
    for record in records:
        entry = entry_from_journal(record)
        ts_ns = str(int(record["__REALTIME_TIMESTAMP"]) * 1000)
        streams.setdefault(entry.stream_key, []).append([ts_ns, entry.message])
    sent = 0
    for key, values in streams.items():
        for i in range(0, len(values), JOURNAL_BATCH):
            body = json.dumps({"streams": [{"stream": dict(key), "values": values[i:i + JOURNAL_BATCH]}]}).encode()
            req = urllib.request.Request(f"{loki_url.rstrip('/')}/loki/api/v1/push", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=timeout) as r:
                if r.status // 100 != 2:
                    raise RuntimeError(f"Loki push answered {r.status}")
            sent += len(values[i:i + JOURNAL_BATCH])
    return sent


def read_journal_records(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return [json.loads(line) for line in fh if line.strip()]


class JournalShipper:
    """Promtail's part for the live sim: tails a `journalctl -o json` file the exporter appends to and
    pushes each complete new line to Loki, every `interval` seconds. A failed push is kept and retried
    with the next batch (counted in `errors`), so no line is lost to a Loki hiccup."""

    def __init__(self, path: Path, loki_url: str, interval: float = 0.5):
        self.path = Path(path)
        self.loki_url = loki_url
        self.interval = interval
        self.shipped = 0
        self.errors = 0
        self._offset = 0
        self._pending: list[dict] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ship_once(self) -> int:
        """Read the complete lines appended since the last call and push them (with any left over from a
        failed push). Returns the number pushed."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            data = b""
        complete = data[:data.rfind(b"\n") + 1]  # a half-written last line waits for the next round
        self._offset += len(complete)
        for line in complete.decode("utf-8", errors="replace").splitlines():
            if line.strip():
                try:
                    self._pending.append(json.loads(line))
                except ValueError:
                    self.errors += 1  # not JSON: nothing Promtail could ship either
        if not self._pending:
            return 0
        try:
            n = loki_push(self.loki_url, self._pending)
        except urllib.error.HTTPError as e:
            self.errors += 1
            if 400 <= e.code < 500:  # Loki refused the lines themselves: retrying cannot help
                self._pending = []
            return 0
        except (OSError, RuntimeError):
            self.errors += 1
            return 0
        self._pending = []
        self.shipped += n
        return n

    def start(self) -> JournalShipper:
        def run():
            while not self._stop.wait(self.interval):
                self.ship_once()

        self._thread = threading.Thread(target=run, name="journal-shipper", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None
