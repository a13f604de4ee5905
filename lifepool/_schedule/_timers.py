"""Deadlines, soonest first: what the dispatcher's ``select`` sleeps until.

Entries are ``(when, seq, what)``: a weak reference to a Call (its timeout), or ``(record,
purpose)`` (a kill armed for that purpose, or the "scaledown" check of an
elastic pool's idle container). An entry is never removed when what it
guards is over; it is skipped as stale when it comes due (the owner checks),
so arming costs one ``heappush`` and disarming nothing.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Iterator
from typing import Any


class Timers:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Any]] = []
        self._seq = itertools.count()

    def add(self, when: float, what: Any) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), what))

    def next_timeout(self) -> float | None:
        """Seconds until the soonest deadline (0 if past), or None with none."""
        if not self._heap:
            return None
        return max(0.0, self._heap[0][0] - time.monotonic())

    def due(self) -> Iterator[tuple[float, Any]]:
        """Pop and yield ``(when, what)`` for each deadline that has passed."""
        now = time.monotonic()
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, what = heapq.heappop(heap)
            yield when, what
