"""Timestamps per key over sliding windows: the counting behind the log side's rate conditions (a
brute force, a restart loop, a failure that repeats), with JSON-able state so a restart keeps a
half-counted condition."""
from __future__ import annotations

from collections import deque


class SlidingWindows:
    def __init__(self):
        self._events: dict[tuple, deque] = {}

    def add(self, key: tuple, ts: float, window: float) -> int:
        """Record an event of `key` at ts; returns how many fall in the `window` seconds up to ts
        (events must come in time order for the windows to mean anything)."""
        events = self._events.setdefault(key, deque())
        events.append(ts)
        while events and events[0] < ts - window:
            events.popleft()
        return len(events)

    def count(self, key: tuple) -> int:
        """Events of `key` in its window as of its last `add`."""
        return len(self._events.get(key, ()))

    def get_state(self) -> list:
        return [[list(key), list(times)] for key, times in self._events.items() if times]

    def set_state(self, state: list) -> SlidingWindows:
        self._events = {tuple(key): deque(float(t) for t in times) for key, times in state}
        return self
