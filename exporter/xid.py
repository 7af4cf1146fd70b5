"""Xid critical-error events from NVML, counted per GPU uuid and Xid code.

Counts are keyed by uuid, not by handle or index, so they survive the GPU being lost (Xid 79 is
"fallen off the bus") and its index shifting when it comes back.
"""
from __future__ import annotations

import logging
import threading

import pynvml

from exporter.gpu_reader import handle_key
from exporter.read_errors import ReadErrors

log = logging.getLogger("rigwatch.exporter.xid")

XID_CRITICAL_ERROR = 0x8  # nvmlEventTypeXidCriticalError


class XidWatcher:
    def __init__(self, nvml, errors: ReadErrors):
        self.nvml = nvml
        self.errors = errors
        self._event_set = None
        self._uuid_by_handle: dict[int, str] = {}
        self._counts: dict[str, dict[int, int]] = {}
        self._lock = threading.Lock()
        self._unsupported: set[str] = set()

    def register(self, dev) -> None:
        """Listen for Xid events on `dev` (a GpuDevice); called for new and recovered GPUs."""
        nvml = self.nvml
        with self._lock:
            if self._event_set is None:
                try:
                    self._event_set = nvml.nvmlEventSetCreate()
                except pynvml.NVMLError as e:
                    self.errors.inc("xid_events")
                    log.warning("cannot create an NVML event set, no Xid counts: %s", e)
                    return
            self._uuid_by_handle[handle_key(dev.handle)] = dev.uuid
        try:
            nvml.nvmlDeviceRegisterEvents(dev.handle, XID_CRITICAL_ERROR, self._event_set)
        except pynvml.NVMLError as e:
            if e.value == pynvml.NVML_ERROR_NOT_SUPPORTED:
                if dev.uuid not in self._unsupported:
                    self._unsupported.add(dev.uuid)
                    log.info("GPU %s: Xid events NOT_SUPPORTED", dev.uuid)
            else:
                self.errors.inc("xid_events")
                log.warning("GPU %s: cannot register for Xid events: %s", dev.uuid, e)

    def poll(self, timeout_ms: int = 0) -> int:
        """Drain pending events, waiting up to `timeout_ms` for the first. Returns how many."""
        event_set = self._event_set
        if event_set is None:
            return 0
        wait = getattr(self.nvml, "nvmlEventSetWait_v2", None) or self.nvml.nvmlEventSetWait
        seen = 0
        while True:
            try:
                data = wait(event_set, timeout_ms)
            except pynvml.NVMLError as e:
                if e.value != pynvml.NVML_ERROR_TIMEOUT:
                    # GPU_IS_LOST here just means a registered GPU fell off; its Xid already came.
                    if e.value != pynvml.NVML_ERROR_GPU_IS_LOST:
                        self.errors.inc("xid_events")
                    return -1 if seen == 0 else seen
                return seen
            timeout_ms = 0
            if not data.eventType & XID_CRITICAL_ERROR:
                continue
            code = int(data.eventData)
            with self._lock:
                uuid = self._uuid_by_handle.get(handle_key(data.device))
                if uuid is None:
                    continue
                per_gpu = self._counts.setdefault(uuid, {})
                per_gpu[code] = per_gpu.get(code, 0) + 1
            seen += 1
            log.warning("Xid %d on GPU %s", code, uuid)

    def counts(self) -> dict[str, dict[int, int]]:
        with self._lock:
            return {uuid: dict(codes) for uuid, codes in self._counts.items()}

    def run(self, stop: threading.Event, wait_ms: int = 500) -> None:
        """Thread body: block in NVML for events until `stop` is set."""
        while not stop.is_set():
            if self._event_set is None or self.poll(wait_ms) < 0:
                # No event set (NVML down) or a failing wait: don't spin.
                stop.wait(wait_ms / 1000.0)

    def close(self) -> None:
        with self._lock:
            event_set, self._event_set = self._event_set, None
        if event_set is not None:
            try:
                self.nvml.nvmlEventSetFree(event_set)
            except pynvml.NVMLError:
                pass
