"""Time-ordering of events that arrive from many nodes at once (sans-IO).

Each node streams its own events in time order, but the relay's client wants one stream for
the whole cluster. Two tools, both pure and clock-free so they are tested without sockets:

- :func:`sort_by_time` merges the histories of non-follow requests (each node has applied the
  request's ``number``/``first`` to its own ring, as upstream: N per node, not N overall);
- :class:`SortBuffer` is upstream's bounded priority queue for *follow* requests: events wait
  in a min-heap keyed by their timestamp; when the heap is full the oldest leaves, and events
  older than a drain horizon leave on a timer. Within the buffer's window the output is in
  time order; an event that arrives later than the window is passed on as soon as possible
  (never dropped), which is the price of bounded memory and latency.

Ties on equal timestamps keep arrival order, so one node's events never swap places.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

T = TypeVar("T")


def timestamp_ns(ts: Timestamp) -> int:
    """A protobuf Timestamp as integer nanoseconds since the epoch."""
    return ts.seconds * 1_000_000_000 + ts.nanos


def ns_timestamp(ns: int) -> Timestamp:
    """Integer nanoseconds since the epoch as a protobuf Timestamp."""
    ts = Timestamp()
    ts.seconds, ts.nanos = divmod(ns, 1_000_000_000)
    return ts


class SortBuffer(Generic[T]):
    """A bounded min-heap of ``(time_ns, item)``; see the module docstring.

    ``capacity`` must be at least 1. :meth:`push` returns what the push forced out (the
    oldest item, when the buffer was full), :meth:`pop_older_than` what the drain timer
    releases, :meth:`drain` everything, each list oldest first.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"sort buffer capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self._heap: list[tuple[int, int, T]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, time_ns: int, item: T) -> list[T]:
        out: list[T] = []
        while len(self._heap) >= self.capacity:
            out.append(heapq.heappop(self._heap)[2])
        self._seq += 1
        heapq.heappush(self._heap, (time_ns, self._seq, item))
        return out

    def pop_older_than(self, limit_ns: int) -> list[T]:
        """Removes and returns the items whose time is at or before ``limit_ns``."""
        out: list[T] = []
        while self._heap and self._heap[0][0] <= limit_ns:
            out.append(heapq.heappop(self._heap)[2])
        return out

    def drain(self) -> list[T]:
        out = [heapq.heappop(self._heap)[2] for _ in range(len(self._heap))]
        return out


def sort_by_time(items: Sequence[T], time_of: Callable[[T], int]) -> list[T]:
    """Stable sort by time: equal timestamps keep their arrival order."""
    return sorted(items, key=time_of)
