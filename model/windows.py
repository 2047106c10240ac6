"""Bounded tables of online state: an LRU table, and sliding-window event counts that tolerate late rows.

Rows do not reach otad in time order across batches: each signal's exporter batches on its own schedule, so a
batch of logs can arrive after spans seconds (in a replay at speed, minutes) younger than it. A count "in the
last 60 s" of such a row must cover its own last 60 s, not every younger event already seen.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

_V = TypeVar("_V")

# Events are kept this many windows behind the newest one seen, and always the current row's own window: a live
# row up to one window late is counted exactly, and so is a backlog drained in time order after newer rows
# (the rows staged while the first model trained, scored once it is ready).
KEEP_WINDOWS = 2
PRUNE_MIN = 64  # expired events are dropped in runs of at least this many (a list's head is not free to pop)


def lru_entry(table: OrderedDict[Any, _V], key: object, factory: Callable[[], _V], max_keys: int) -> _V:
    """The entry for key (created by factory when new), marked most recent; the oldest key goes past max_keys."""
    entry = table.get(key)
    if entry is None:
        entry = table[key] = factory()
        if len(table) > max_keys:
            table.popitem(last=False)
    else:
        table.move_to_end(key)
    return entry


class Windows:
    """Event timestamps per key, sorted; counts over [t - window, t] of the asking row's own time t."""

    def __init__(self, window_ms: int, max_keys: int):
        self.window_ms = window_ms
        self.max_keys = max_keys
        self.events: OrderedDict[object, list[int]] = OrderedDict()

    def add_and_count(self, key: object, t_ms: int) -> int:
        """Events of key in the window ending at t_ms (before this one), then add this one."""
        q = lru_entry(self.events, key, list, self.max_keys)
        count = self._count(q, t_ms)
        if not q or t_ms >= q[-1]:
            q.append(t_ms)
        else:  # a late row: keep the list sorted
            insort(q, t_ms)
        cut = bisect_left(q, min(t_ms - self.window_ms, q[-1] - KEEP_WINDOWS * self.window_ms))
        if cut >= PRUNE_MIN or cut * 2 > len(q):
            del q[:cut]
        return count

    def peek(self, key: object, t_ms: int) -> int:
        """Events of key in the window ending at t_ms (an event at t_ms itself included)."""
        q = self.events.get(key)
        return self._count(q, t_ms) if q else 0

    def _count(self, q: list[int], t_ms: int) -> int:
        return bisect_right(q, t_ms) - bisect_left(q, t_ms - self.window_ms)
