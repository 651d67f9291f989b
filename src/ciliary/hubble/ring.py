"""The per-node event ring: the only memory a Hubble server has of past flows.

Upstream (``pkg/hubble/container/ring.go``) keeps decoded events in a fixed ring whose
capacity is ``2**n - 1`` and hands readers absolute positions; a reader the writer has
overtaken learns it from a ``LostEvent`` with source ``HUBBLE_RING_BUFFER`` instead of
silently skipping data. This ring keeps those contracts with Python's unbounded ints as
positions (no cycle arithmetic): position ``p`` is valid while ``oldest <= p < written``.

Concurrency contract: ``write`` may be called from any thread (the agent's decoder may run in
one); readers run on an asyncio loop. Writes store the slot before publishing the new
``written`` count, and readers re-check ``written`` after loading a slot, so a slot replaced
under a reader is reported as lost rather than returned as the wrong event. Waiting readers
are woken with ``call_soon_threadsafe`` on their own loop.

One deviation from upstream, deliberately: a lapped follower gets *one* LostEvent carrying the
number of events it missed (upstream emits one LostEvent per missed slot) and resumes at the
oldest event still held.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from ciliary.hubble.api.flow import flow_pb2

DEFAULT_CAPACITY = 4095
MAX_CAPACITY = 65535


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a ring: a flow, a lost-events notice or an agent event, with its time."""

    time_ns: int
    flow: flow_pb2.Flow | None = None
    lost: flow_pb2.LostEvent | None = None
    agent_event: flow_pb2.AgentEvent | None = None

    def __post_init__(self) -> None:
        kinds = (self.flow is not None) + (self.lost is not None) + (self.agent_event is not None)
        if kinds != 1:
            raise ValueError("an Event carries exactly one of flow, lost, agent_event")


def validate_capacity(capacity: int) -> int:
    """Returns ``capacity`` if it is ``2**n - 1`` in 1..65535, else raises ValueError."""
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise ValueError(f"invalid ring capacity {capacity!r}: must be an integer")
    if not 1 <= capacity <= MAX_CAPACITY:
        raise ValueError(
            f"invalid ring capacity {capacity}: must be between 1 and {MAX_CAPACITY} "
            "(one less than a power of two: 1, 3, 7, ..., 4095, ..., 65535)"
        )
    if capacity & (capacity + 1):
        raise ValueError(
            f"invalid ring capacity {capacity}: must be one less than a power of two "
            "(1, 3, 7, ..., 4095, ..., 65535)"
        )
    return capacity


def ring_lost_event(num_lost: int, time_ns: int | None = None) -> Event:
    """The event a reader gets in place of ``num_lost`` entries overwritten before it read them."""
    return Event(
        time_ns=time.time_ns() if time_ns is None else time_ns,
        lost=flow_pb2.LostEvent(
            source=flow_pb2.LostEventSource.HUBBLE_RING_BUFFER, num_events_lost=num_lost
        ),
    )


class Ring:
    """Fixed-capacity ring of :class:`Event` addressed by absolute positions."""

    def __init__(
        self, capacity: int = DEFAULT_CAPACITY, on_lapped: Callable[[int], None] | None = None
    ) -> None:
        """``on_lapped(n)`` is called whenever a reader learns it lost ``n`` events (metrics)."""
        self.capacity = validate_capacity(capacity)
        self._slots: list[Event | None] = [None] * capacity
        self._written = 0
        self._lock = threading.Lock()  # serialises writers and waiter registration
        self._waiters: list[asyncio.Future[None]] = []
        self._on_lapped = on_lapped

    @property
    def written(self) -> int:
        """Total number of events ever written (the position the next write takes)."""
        return self._written

    @property
    def oldest(self) -> int:
        """Position of the oldest event still held."""
        return max(0, self._written - self.capacity)

    def __len__(self) -> int:
        return min(self._written, self.capacity)

    def write(self, ev: Event) -> None:
        with self._lock:
            pos = self._written
            self._slots[pos % self.capacity] = ev
            self._written = pos + 1
            waiters, self._waiters = self._waiters, []
        for fut in waiters:
            with contextlib.suppress(RuntimeError):  # loop closed: nobody left to wake
                fut.get_loop().call_soon_threadsafe(_wake, fut)

    def get(self, pos: int) -> Event | None:
        """The event at ``pos``, or None if it was overwritten or is not written yet."""
        if pos < 0 or pos >= self._written:
            return None
        ev = self._slots[pos % self.capacity]
        if pos < self._written - self.capacity:  # overwritten while we loaded it
            return None
        return ev

    def last(self, n: int) -> list[Event]:
        """The newest ``n`` events (fewer if the ring holds fewer), oldest first."""
        end = self._written
        start = max(self.oldest, end - max(n, 0))
        out = [ev for ev in (self.get(p) for p in range(start, end)) if ev is not None]
        return out

    def backward(self, start: int | None = None) -> Iterator[tuple[int, Event]]:
        """Yields ``(pos, event)`` from ``start - 1`` (default: newest) down to the oldest.

        Stops early, without error, where a concurrent writer overtook the iteration.
        """
        pos = (self._written if start is None else min(start, self._written)) - 1
        while pos >= 0:
            ev = self.get(pos)
            if ev is None:
                return
            yield pos, ev
            pos -= 1

    def reader(self, start: int) -> RingReader:
        """A forward reader starting at absolute position ``start``."""
        return RingReader(self, start)

    async def follow(self, start: int) -> AsyncIterator[Event]:
        """Yields events from ``start`` on forever, waiting for new writes; a LostEvent
        (HUBBLE_RING_BUFFER, with the count) replaces whatever was overwritten unread."""
        reader = RingReader(self, start)
        while True:
            yield await reader.next_follow()

    async def _wait_beyond(self, pos: int) -> None:
        """Returns once ``written > pos``."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._written > pos:
                return
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            with self._lock:
                if fut in self._waiters:
                    self._waiters.remove(fut)
            raise

    def _lapped(self, n: int) -> Event:
        if self._on_lapped is not None:
            self._on_lapped(n)
        return ring_lost_event(n)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class RingReader:
    """Reads a :class:`Ring` forward from a position; ``position`` is the next one to read."""

    def __init__(self, ring: Ring, start: int) -> None:
        self.ring = ring
        self.position = max(0, start)

    def next(self) -> Event | None:
        """The next event, a HUBBLE_RING_BUFFER LostEvent if this reader was lapped (it then
        continues at the oldest held event), or None when it has caught up with the writer."""
        ring = self.ring
        pos = self.position
        if pos >= ring.written:
            return None
        ev = ring.get(pos)
        if ev is None:  # overwritten: skip to the oldest event still held
            oldest = ring.oldest
            lost = max(1, oldest - pos)
            self.position = max(oldest, pos + 1)
            return ring._lapped(lost)
        self.position = pos + 1
        return ev

    async def next_follow(self) -> Event:
        """Like :meth:`next` but waits for a write instead of returning None."""
        while True:
            ev = self.next()
            if ev is not None:
                return ev
            await self.ring._wait_beyond(self.position)
