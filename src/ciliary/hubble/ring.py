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

Columns, decoded on read (#17): besides whole events, the ring takes L3/L4 flows a batch at a
time as :class:`FlowRows`, which is how the agent's decoder hands over a ring buffer batch: per
row only what differs between the flows of one (endpoints, identities, verdict, ports, ...)
group is kept (the wall-clock time and the L4 source port, in numpy columns, slice-assigned per
batch), and a reference to the group's *template*, the one ``Flow`` the decoder built for the
group with the agent's state at event time (so a flow still names a pod deleted since). A
``Flow`` is made from a row only when a reader asks for that position (:meth:`Ring.get`), and
then always the same one: its UUID is derived from the position (:meth:`Ring.uuid_at`).
Positions, lapping and LostEvents do not depend on how an entry was written.

A row's own port is the one that differs between the flows of a group: the source port of a
request, the destination port of a reply (the client's port either way), so the rows of short
connections share a few templates instead of one per reply; :data:`DESTINATION_PORT` in a row's
port word says which of the two it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ciliary.hubble.api.flow import flow_pb2

DEFAULT_CAPACITY = 4095
MAX_CAPACITY = 65535
_UUID_TAIL = (1 << 48) - 1
DESTINATION_PORT = 1 << 16
"""Set in a row's port word (``FlowRows.source_port``, the ring's port column) when the row's
own port is its flow's destination port, its template's destination port being the one zeroed;
the port is the word's low 16 bits. A word without it is the source port, as before."""


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a ring: a flow, a lost-events notice or an agent event, with its time."""

    time_ns: int
    flow: flow_pb2.Flow | None = None
    lost: flow_pb2.LostEvent | None = None
    agent_event: flow_pb2.AgentEvent | None = None
    row: tuple[int, str, int] | None = None
    """Set on a row read without making its flow (``Ring.get(pos, whole=False)``): ``flow``
    is then the row's template and this its (source port, UUID, L7 latency); :meth:`whole`
    makes the flow."""

    def __post_init__(self) -> None:
        kinds = (self.flow is not None) + (self.lost is not None) + (self.agent_event is not None)
        if kinds != 1:
            raise ValueError("an Event carries exactly one of flow, lost, agent_event")

    def whole(self) -> Event:
        """This event with its whole flow (itself unless it is a row read as its template)."""
        if self.row is None or self.flow is None:
            return self
        port, uuid, latency_ns = self.row
        flow = flow_from_template(self.flow, self.time_ns, port, uuid, latency_ns=latency_ns)
        return Event(self.time_ns, flow=flow)


@dataclass(frozen=True, slots=True)
class FlowRows:
    """Flows of one batch as columns: each row is its group's template (``templates[
    template_index[row]]``: every field of the flow but ``time``, ``uuid``, the L4 source
    port and the L7 latency) plus the row's own ``time_ns`` (wall clock), ``source_port`` and,
    for L7 flows, ``latency_ns`` (``l7.latency_ns``; None: no row has one). ``counts`` is the
    number of rows of each template (what metrics count per template)."""

    templates: Sequence[flow_pb2.Flow]
    """Shared: never modified (readers copy)."""
    template_index: npt.NDArray[np.intp]
    counts: npt.NDArray[np.intp]
    time_ns: npt.NDArray[np.int64]
    source_port: npt.NDArray[np.uint16] | npt.NDArray[np.uint32]
    """The row's own port word: its source port, or its destination port with
    :data:`DESTINATION_PORT` set (all rows of a template name the same side). Metrics see the
    template: a template whose rows carry their destination port must be one no metric reads
    the destination port of (``flowrows``: forwarded replies)."""
    latency_ns: npt.NDArray[np.int64] | None = None

    def __len__(self) -> int:
        return len(self.template_index)

    def flow(self, row: int, uuid: str) -> flow_pb2.Flow:
        """The flow of ``row`` (a new message)."""
        return flow_from_template(
            self.templates[int(self.template_index[row])],
            int(self.time_ns[row]),
            int(self.source_port[row]),
            uuid,
            latency_ns=0 if self.latency_ns is None else int(self.latency_ns[row]),
        )


_PORT_PROTOCOLS = ("TCP", "UDP", "SCTP")
_PORT_FIELDS: tuple[str | None, ...] = (None, *_PORT_PROTOCOLS)
"""A template's L4 message with a source port, by the code the ring keeps per row."""


def port_field_code(template: flow_pb2.Flow) -> int:
    """Index in :data:`_PORT_FIELDS` of the template's L4 message with ports (0: none)."""
    which = template.l4.WhichOneof("protocol")
    return _PORT_FIELDS.index(which) if which in _PORT_PROTOCOLS else 0


def flow_from_template(
    template: flow_pb2.Flow,
    time_ns: int,
    source_port: int,
    uuid: str,
    port_code: int = -1,
    *,
    latency_ns: int = 0,
) -> flow_pb2.Flow:
    """A row's flow: a copy of its template with the row's time, UUID, source port and L7
    latency (``port_code``: :func:`port_field_code` of the template, if known)."""
    flow = flow_pb2.Flow()
    flow.CopyFrom(template)
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    ts = flow.time
    ts.seconds = seconds
    ts.nanos = nanos
    flow.uuid = uuid
    if source_port:
        which = _PORT_FIELDS[port_field_code(template) if port_code < 0 else port_code]
        if which is None:
            pass
        elif source_port & DESTINATION_PORT:
            getattr(flow.l4, which).destination_port = source_port & 0xFFFF
        else:
            getattr(flow.l4, which).source_port = source_port
    if latency_ns:
        flow.l7.latency_ns = latency_ns
    return flow


def flow_template(flow: flow_pb2.Flow, *, destination: bool = False) -> flow_pb2.Flow:
    """``flow`` made a template (in place, returned): without time, UUID, source port and L7
    latency."""
    flow.ClearField("time")
    flow.uuid = ""
    if flow.HasField("l7"):
        flow.l7.latency_ns = 0
    which = flow.l4.WhichOneof("protocol")
    if which in _PORT_PROTOCOLS:
        if destination:  # the rows' own port is the destination port (see DESTINATION_PORT)
            getattr(flow.l4, which).destination_port = 0
        else:
            getattr(flow.l4, which).source_port = 0
    return flow


def _object_array(items: Sequence[object]) -> npt.NDArray[np.object_]:
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):  # never as nested sequences (numpy would try)
        out[i] = item
    return out


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
        """Whole events, None where a row of :class:`FlowRows` is (the columns; a list: one
        event a write stays as cheap as before the columns)."""
        self._templates: npt.NDArray[np.object_] = np.full(capacity, None, dtype=object)
        self._times = np.zeros(capacity, dtype=np.int64)
        self._ports = np.zeros(capacity, dtype=np.uint32)  # port words
        self._port_codes = np.zeros(capacity, dtype=np.uint8)
        self._latencies = np.zeros(capacity, dtype=np.int64)
        salt = os.urandom(16).hex()  # a version 4 UUID's random bits, its last 48 per position
        variant = "89ab"[int(salt[16], 16) & 3]
        self._uuid_head = f"{salt[:8]}-{salt[8:12]}-4{salt[13:16]}-{variant}{salt[17:20]}-"
        self._uuid_base = int(salt[20:], 16)
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
            slot = pos % self.capacity
            self._slots[slot] = ev  # the row columns of the slot are left: never read
            self._written = pos + 1
            waiters, self._waiters = self._waiters, []
        self._wake_all(waiters)

    def write_rows(self, rows: FlowRows) -> None:
        """Appends a batch of flows as columns (positions ``written`` to ``written + len``);
        a batch longer than the ring keeps its newest ``capacity`` rows."""
        n = len(rows)
        if not n:
            return
        cap = self.capacity
        keep = min(n, cap)
        index = rows.template_index[n - keep :]
        templates = _object_array(rows.templates)[index]
        codes = np.array([port_field_code(t) for t in rows.templates], dtype=np.uint8)[index]
        times = rows.time_ns[n - keep :]
        ports = rows.source_port[n - keep :]
        latencies = (
            np.zeros(keep, dtype=np.int64)
            if rows.latency_ns is None
            else rows.latency_ns[n - keep :]
        )
        with self._lock:
            pos = self._written
            first = (pos + n - keep) % cap
            head = min(keep, cap - first)
            for column, values in (
                (self._templates, templates),
                (self._times, times),
                (self._ports, ports),
                (self._port_codes, codes),
                (self._latencies, latencies),
            ):
                column[first : first + head] = values[:head]
                column[: keep - head] = values[head:]
            self._slots[first : first + head] = [None] * head
            self._slots[: keep - head] = [None] * (keep - head)
            self._written = pos + n
            waiters, self._waiters = self._waiters, []
        self._wake_all(waiters)

    @staticmethod
    def _wake_all(waiters: list[asyncio.Future[None]]) -> None:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for fut in waiters:
            if fut.get_loop() is running:
                _wake(fut)  # the writer's own loop: the reader runs at its next turn
                continue
            with contextlib.suppress(RuntimeError):  # loop closed: nobody left to wake
                fut.get_loop().call_soon_threadsafe(_wake, fut)

    def uuid_at(self, pos: int) -> str:
        """The UUID of the flow written as a row at ``pos``: random per ring, unique per
        position (2**48 of them), the same at every read."""
        return f"{self._uuid_head}{(self._uuid_base + pos) & _UUID_TAIL:012x}"

    def get(self, pos: int, whole: bool = True) -> Event | None:
        """The event at ``pos``, or None if it was overwritten or is not written yet. A row
        of :class:`FlowRows` becomes its flow here (a new message at every call), or with
        ``whole=False`` an event whose flow is the row's template (``Event.row`` set: for
        filters that read no per-row field, see ``filters.reads_row_fields``)."""
        if pos < 0 or pos >= self._written:
            return None
        slot = pos % self.capacity
        ev = self._slots[slot]
        template = self._templates[slot]
        time_ns = int(self._times[slot])
        port = int(self._ports[slot])
        code = int(self._port_codes[slot])
        latency = int(self._latencies[slot])
        if pos < self._written - self.capacity:  # overwritten while we loaded it
            return None
        if ev is not None:
            return ev
        if not whole:
            return Event(time_ns=time_ns, flow=template, row=(port, self.uuid_at(pos), latency))
        flow = flow_from_template(
            template, time_ns, port, self.uuid_at(pos), code, latency_ns=latency
        )
        return Event(time_ns=time_ns, flow=flow)

    def row_at(self, pos: int) -> tuple[flow_pb2.Flow, int, int] | None:
        """``(template, time_ns, port word)`` when ``pos`` holds a row of :class:`FlowRows`,
        else None (a whole event, overwritten or not written yet): what a reader needs to pass
        over a row its filter rejects without making anything."""
        if pos < 0 or pos >= self._written:
            return None
        slot = pos % self.capacity
        template = self._templates[slot]
        time_ns = int(self._times[slot])
        port = int(self._ports[slot])
        if pos < self._written - self.capacity or self._slots[slot] is not None:
            return None
        return template, time_ns, port

    def time_at(self, pos: int) -> tuple[int, bool] | None:
        """``(time_ns, is a flow)`` of the event at ``pos`` without making its flow; None as
        :meth:`get`."""
        if pos < 0 or pos >= self._written:
            return None
        slot = pos % self.capacity
        ev = self._slots[slot]
        time_ns = int(self._times[slot])
        if pos < self._written - self.capacity:
            return None
        if ev is not None:
            return ev.time_ns, ev.flow is not None
        return time_ns, True

    def last(self, n: int) -> list[Event]:
        """The newest ``n`` events (fewer if the ring holds fewer), oldest first."""
        end = self._written
        start = max(self.oldest, end - max(n, 0))
        out = [ev for ev in (self.get(p) for p in range(start, end)) if ev is not None]
        return out

    def backward(self, start: int | None = None, whole: bool = True) -> Iterator[tuple[int, Event]]:
        """Yields ``(pos, event)`` from ``start - 1`` (default: newest) down to the oldest
        (``whole`` as :meth:`get`).

        Stops early, without error, where a concurrent writer overtook the iteration.
        """
        pos = (self._written if start is None else min(start, self._written)) - 1
        while pos >= 0:
            ev = self.get(pos, whole)
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

    def next(self, whole: bool = True) -> Event | None:
        """The next event, a HUBBLE_RING_BUFFER LostEvent if this reader was lapped (it then
        continues at the oldest held event), or None when it has caught up with the writer
        (``whole`` as :meth:`Ring.get`)."""
        ring = self.ring
        pos = self.position
        if pos >= ring.written:
            return None
        ev = ring.get(pos, whole)
        if ev is None:  # overwritten: skip to the oldest event still held
            oldest = ring.oldest
            lost = max(1, oldest - pos)
            self.position = max(oldest, pos + 1)
            return ring._lapped(lost)
        self.position = pos + 1
        return ev

    async def next_follow(self, whole: bool = True) -> Event:
        """Like :meth:`next` but waits for a write instead of returning None."""
        while True:
            ev = self.next(whole)
            if ev is not None:
                return ev
            await self.ring._wait_beyond(self.position)
