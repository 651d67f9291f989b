"""The node's event fan-out (upstream's monitor agent): the datapath's ring buffer reader, the
proxies' L7 records, and decoded, enriched events for ``ciliary monitor``.

The ring buffer's epoll fd sits in the event loop (``add_reader``), so records are consumed as
they arrive without a thread, a batch per wake-up (read in batches, #17: after a drain that
emptied the ring the reader leaves the fd for :data:`HOLDOFF_S` before it waits on it again,
so a steady load is read a few hundred records at a time instead of the few the datapath wrote
since the last wake-up, each wake-up and batch having its own cost; a lone event after a quiet
spell is still read at once, and none waits longer than the hold-off): the reader copies the
span of committed records out of the ring's memory mapping (no call per record) and decodes it
at once (``ciliary.datapath.maps.events.decode_batch``: trace/drop/verdict records as one numpy
array,
every other record by the one per-record decoder, a dispatch on its type byte). Each record is
decoded once, and the typed record is handed to every sink (Hubble's events queue, whose
parser dispatches on the same type) and, while someone runs ``ciliary monitor``, a
``RawTraceEvent`` is turned into a ``MonitorEvent`` named the way Cilium's monitor names things
and enriched from the agent's own state (endpoint ids → pods), never guessed from addresses.
Socket-LB's trace-sock records
(``RawSockEvent``) go to the sinks (Hubble's SOCK flows) only, not to ``ciliary monitor``; so do
the proxies' L7 records (``L7Record``), which enter at :meth:`Monitor.publish` instead of the
ring, as upstream's proxies' access log records enter its monitor agent.
Rows (#17): when the one sink takes rows too (Hubble), a span of trace records only is handed
over as the numpy rows themselves (``trace_rows``), with no Python object per record; the sink
says how many it took, and the ring advances past those. While someone runs ``ciliary monitor``
those records are also decoded one by one for it (its events are per record anyway).
Sinks and subscribers must not block: subscribers get bounded queues; a slow subscriber loses
events and the loss is counted (``dropped_by_subscribers``), never blocking the reader. Drain
hooks run after every drain of the ring (Hubble reads the datapath's lost-event counters there).

Backpressure: a sink returns False when it has no room left after a record (it kept it; one it
had to refuse it would count as lost, which this pause avoids). The reader then stops draining,
leaving the rest in the datapath's ring, until the sink calls :meth:`Monitor.resume`. One loop
runs the reader and Hubble's decoder; reading records only to drop them would take the time the
decoder needs, so the ring buffer is the buffer, and what it cannot hold the datapath counts as
lost.

Restart: the ring buffer is pinned, so events the datapath wrote while no agent ran wait in it.
The first drain at :meth:`Monitor.start` reads that backlog, so every sink must be added before
(the daemon starts Hubble first, after the endpoints are restored: the backlog is enriched from
the same state as live events). :attr:`Monitor.caught_up` turns true after the first drain that
emptied the ring: whatever the datapath counted as lost before that happened after the backlog.
``ciliary monitor`` subscribers see none of the backlog: the API socket opens after the start,
so no one has subscribed yet (except for the part of a backlog larger than the sink's queue that
is still unread when someone subscribes, which they see live, as upstream's monitor shows only
what it reads after it connects).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

import numpy as np
import numpy.typing as npt

from ciliary.agent.flows import Event
from ciliary.core.flow import (
    DROP_POLICY,
    IP_PROTOCOLS,
    MESSAGE_TYPES,
    CTState,
    ObservationPoint,
    TrafficDirection,
    Verdict,
    drop_reason_text,
    tcp_flag_names,
)
from ciliary.core.l7record import L7Batch, L7Record
from ciliary.core.models import MONITOR_EVENT_TYPES, MonitorEvent, MonitorEventType
from ciliary.datapath.libbpf import RingBuffer
from ciliary.datapath.loader import NodeDatapath
from ciliary.datapath.maps.events import (
    TRACE_RECORD_STRIDE,
    RawEvent,
    RawTraceEvent,
    decode_batch,
    decode_trace_rows,
    trace_rows,
)
from ciliary.hubble.gopacket import ICMP4_TYPE_NAMES, ICMP6_TYPE_NAMES
from ciliary.policy.explain import DefaultDeny
from ciliary.policy.mapstate import Direction

log = logging.getLogger(__name__)
READ_BATCH_BYTES = 1024 * TRACE_RECORD_STRIDE
"""The most the reader takes from the ring at once: 1,024 trace records (~5 ms to decode)."""
HOLDOFF_S = 0.025
"""After a drain that emptied the ring, how long the reader leaves the ring's fd alone: the most
an event waits before it is read (see the module doc); at most 1/HOLDOFF_S drains a second."""
RowsSink = Callable[[npt.NDArray[np.void]], tuple[int, bool]]
"""Takes trace records as numpy rows; returns (rows taken, full after them)."""
_EVENT_TYPES: dict[int, MonitorEventType] = {MESSAGE_TYPES[t]: t for t in MONITOR_EVENT_TYPES}
_DIRECTIONS: dict[int, Literal["ingress", "egress", "unknown"]] = {
    TrafficDirection.INGRESS: "ingress",
    TrafficDirection.EGRESS: "egress",
}


def summary_of(raw: RawTraceEvent) -> str:
    """The monitor event's summary: TCP flags in wire order, ICMP types by gopacket's names."""
    if raw.proto == 6:
        return "TCP Flags: " + ", ".join(tcp_flag_names(raw.tcp_flags)) if raw.tcp_flags else "TCP"
    if raw.proto == 17:
        return "UDP"
    if raw.proto == 1:
        return "ICMPv4 " + ICMP4_TYPE_NAMES.get(raw.icmp_type, f"type {raw.icmp_type}")
    if raw.proto == 58:
        return "ICMPv6 " + ICMP6_TYPE_NAMES.get(raw.icmp_type, f"type {raw.icmp_type}")
    return IP_PROTOCOLS.get(raw.proto, f"proto {raw.proto}")


class Monitor:
    def __init__(
        self,
        node: str,
        datapath: NodeDatapath,
        pod_of_endpoint: Callable[[int], str | None],
        *,
        queue_size: int = 4096,
        explain: Callable[[int], list[str]] = lambda _cookie: [],
        default_deny: Callable[[int, Direction], DefaultDeny | None] = lambda _ep, _d: None,
    ) -> None:
        self._explain = explain
        self._default_deny = default_deny
        self._node = node
        self._dp = datapath
        self._pod_of = pod_of_endpoint
        self._queue_size = queue_size
        self._subs: set[asyncio.Queue[MonitorEvent]] = set()
        self._sinks: list[Callable[[Event], bool | None]] = []
        self._rows_sinks: list[RowsSink | None] = []
        self._drain_hooks: list[Callable[[], None]] = []
        self._rb: RingBuffer | None = None
        self._paused = False
        self._armed = False
        """The ring's fd is in the loop (not while paused or holding off after a drain)."""
        self._holdoff: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ifnames: dict[int, str] = {}
        self._wall_offset_ns = time.time_ns() - time.monotonic_ns()
        self.caught_up = False
        """True once a drain has emptied the ring: the backlog of a restart is read."""
        self.received = 0
        self.published = 0
        """L7 records the proxies published (:meth:`publish`)."""
        self.malformed = 0
        self.dropped_by_subscribers = 0

    def add_sink(self, sink: Callable[[Event], bool | None], rows: RowsSink | None = None) -> None:
        """``sink(event)`` gets every record, decoded once, from the reader and every published
        L7 record (must not block); it returns False when it is full after that record: reading
        pauses until :meth:`resume`. ``rows(array)``, when given, takes trace records as numpy
        rows instead (see the module doc) and returns (how many it took, full after them)."""
        self._sinks.append(sink)
        self._rows_sinks.append(rows)

    @property
    def paused(self) -> bool:
        return self._paused

    def resume(self) -> None:
        """A full sink has room again: read on (no-op unless paused)."""
        if not self._paused or self._rb is None or self._loop is None:
            return
        self._paused = False
        self._loop.call_soon(self._drain)

    def _pause(self) -> None:
        if not self._paused and self._rb is not None and self._loop is not None:
            self._paused = True
            self._disarm()

    def _arm(self) -> None:
        """Waits on the ring's fd (level-triggered: records written meanwhile wake it at once)."""
        self._holdoff = None
        if self._armed or self._paused or self._rb is None or self._loop is None:
            return
        self._armed = True
        self._loop.add_reader(self._rb.epoll_fd(), self._drain)

    def _disarm(self) -> None:
        if self._holdoff is not None:
            self._holdoff.cancel()
            self._holdoff = None
        if self._armed and self._rb is not None and self._loop is not None:
            self._armed = False
            self._loop.remove_reader(self._rb.epoll_fd())

    def add_drain_hook(self, hook: Callable[[], None]) -> None:
        """``hook()`` runs after every drain of the ring buffer."""
        self._drain_hooks.append(hook)

    def start(self) -> None:
        """Starts reading, backlog first: every sink must be added before (see module doc)."""
        self._loop = asyncio.get_running_loop()
        self._rb = RingBuffer(self._dp.events_map.fd)
        self._drain()

    def stop(self) -> None:
        if self._rb is not None and self._loop is not None:
            self._disarm()
            self._rb.close()
            self._rb = None

    def subscribe(self) -> asyncio.Queue[MonitorEvent]:
        q: asyncio.Queue[MonitorEvent] = asyncio.Queue(self._queue_size)
        self._subs.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[MonitorEvent]) -> None:
        self._subs.discard(q)

    def _drain(self) -> None:
        """One batch, then: paused (a sink is full) until :meth:`resume`; the next batch at
        the loop's next turn when records remain; else the fd again after the hold-off."""
        if self._rb is None or self._loop is None or self._paused:
            return
        self._disarm()
        emptied = False
        try:
            emptied = self._read_batch()
        except Exception:
            log.exception("ring buffer consumption failed")
        for hook in self._drain_hooks:
            try:
                hook()
            except Exception:
                log.exception("ring buffer drain hook %r failed", hook)
        if self._paused or self._rb is None:
            return
        if emptied:
            self._holdoff = self._loop.call_later(HOLDOFF_S, self._arm)
        else:
            self._arm()  # records remain: the fd is readable, the next batch at the next turn

    def _read_batch(self) -> bool:
        """One batch: the ring's records between the consumer and producer positions, decoded
        at once (``decode_batch``), handed over in order; the ring is advanced past what was
        taken, so when a sink fills up the rest stays in the ring (see the module doc). One
        batch of at most :data:`READ_BATCH_BYTES` per wake-up: the ring's fd stays readable
        while records remain, so the loop's other work runs between batches, and a backlog of
        megabytes is not decoded whole when a sink has room for a fraction of it. True when
        the batch read up to the producer (the ring was emptied)."""
        assert self._rb is not None
        span = self._rb.peek(READ_BATCH_BYTES)
        rows_sink = self._rows_sinks[0] if len(self._rows_sinks) == 1 else None
        rows = trace_rows(span) if rows_sink is not None else None
        if rows_sink is not None and rows is not None:
            try:
                taken, full = rows_sink(rows)
            except Exception:
                log.exception("event sink %r failed", rows_sink)
                taken, full = len(rows), False
            self.received += taken
            if self._subs:  # ciliary monitor: its events, one per record it was handed
                for raw in decode_trace_rows(rows[:taken]):
                    self._to_subscribers(raw)
            if full or taken < len(rows):
                self._rb.advance(taken * TRACE_RECORD_STRIDE)
                self._pause()
                return False
            self._rb.advance(len(span))
            if len(span) < READ_BATCH_BYTES:
                self.caught_up = True
            return len(span) < READ_BATCH_BYTES
        batch = decode_batch(span)
        for index, event in enumerate(batch.events):
            if self._on_event(event):
                self._rb.advance(batch.ends[index])
                self._pause()
                return False
        self._rb.advance(batch.end)
        if len(span) < READ_BATCH_BYTES:  # read up to the producer: the ring was emptied
            self.caught_up = True
            return True
        return False

    def _on_event(self, raw: RawEvent | ValueError) -> bool:
        """Hands one record's event to the sinks and subscribers; True when a sink is full."""
        self.received += 1
        if isinstance(raw, ValueError):
            self.malformed += 1
            if self.malformed == 1 or self.malformed % 1000 == 0:
                log.warning(
                    "skipping malformed ring buffer record (%d so far): %s", self.malformed, raw
                )
            return False
        full = self._to_sinks(raw)
        if self._subs and isinstance(raw, RawTraceEvent):  # trace-sock: Hubble's only
            self._to_subscribers(raw)
        return full

    def _to_subscribers(self, raw: RawTraceEvent) -> None:
        event = self.decode(raw)
        for q in self._subs:
            try:
                q.put_nowait(event)
            except asyncio.QueueFull:
                self.dropped_by_subscribers += 1

    def publish(self, record: L7Record | L7Batch) -> None:
        """A proxy's L7 record (or a batch of them, ``L7Batch``: each of its events counts)
        into the fan-out: every sink gets it as a ring buffer record (Hubble: an L7 flow,
        ``FlowDecoder.decode_l7``). Never blocks: a sink that is full after it pauses the ring
        reader as a full ring record would; one that had no room counts it as lost (Hubble's
        ``OBSERVER_EVENTS_QUEUE``)."""
        self.published += record.events if isinstance(record, L7Batch) else 1
        if self._to_sinks(record):
            self._pause()

    def _to_sinks(self, event: Event) -> bool:
        """Hands ``event`` to every sink; True when one of them is full."""
        full = False
        for sink in self._sinks:
            try:
                full |= sink(event) is False
            except Exception:
                log.exception("event sink %r failed", sink)
        return full

    def forget_ifnames(self) -> None:
        """Device indexes are reused once a pod is gone: called on every endpoint change."""
        self._ifnames.clear()

    def ifname(self, ifindex: int) -> str:
        """The device name of ``ifindex`` (cached; Hubble's flows use the same cache)."""
        name = self._ifnames.get(ifindex)
        if name is None:
            try:
                name = socket.if_indextoname(ifindex)
            except OSError:
                return ""
            self._ifnames[ifindex] = name
        return name

    def decode(self, raw: RawTraceEvent) -> MonitorEvent:
        wall = datetime.fromtimestamp((raw.ts_ns + self._wall_offset_ns) / 1e9, tz=UTC)
        try:
            obs = ObservationPoint(raw.obs_point).cli_name
        except ValueError:
            obs = str(raw.obs_point)
        try:
            ct_state = CTState(raw.ct_state).name.lower()
        except ValueError:
            ct_state = str(raw.ct_state)
        why = self.why_default_deny(raw)
        return MonitorEvent(
            time=wall.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            ts_ns=raw.ts_ns,
            ct_created_ns=raw.ct_created_ns,
            node=self._node,
            type=_EVENT_TYPES.get(raw.type, "trace"),
            verdict=Verdict(raw.verdict).name
            if raw.verdict in Verdict._value2member_map_
            else str(raw.verdict),
            drop_reason=raw.drop_reason,
            drop_reason_desc=drop_reason_text(raw.drop_reason) if raw.drop_reason else "",
            observation_point=obs,
            ip_version=4 if raw.family == socket.AF_INET else 6,
            protocol=IP_PROTOCOLS.get(raw.proto, str(raw.proto)),
            src_ip=str(raw.src),
            dst_ip=str(raw.dst),
            src_port=raw.sport,
            dst_port=raw.dport,
            icmp_type=raw.icmp_type,
            icmp_code=raw.icmp_code,
            tcp_flags=tcp_flag_names(raw.tcp_flags),
            is_reply=bool(raw.is_reply),
            ct_state=ct_state,
            src_identity=raw.src_sec_id,
            dst_identity=raw.dst_sec_id,
            endpoint_id=raw.ep_id,
            dst_endpoint_id=raw.dst_ep_id,
            ifindex=raw.ifindex,
            ifname=self.ifname(raw.ifindex),
            length=raw.pkt_len,
            src_mac=raw.smac,
            dst_mac=raw.dmac,
            src_pod=self._src_pod(raw),
            dst_pod=self._pod_of(raw.dst_ep_id) if raw.dst_ep_id else None,
            traffic_direction=_DIRECTIONS.get(raw.traffic_direction, "unknown"),
            policy_match_type=raw.policy_match,
            policy_rules=self._explain(raw.policy_cookie) if raw.policy_cookie else [],
            verdict_reason="default deny" if why is not None else "",
            default_deny_by=[str(p) for p in why.policies] if why is not None else [],
            explanation=why.text if why is not None else "",
            summary=summary_of(raw),
        )

    def why_default_deny(self, raw: RawTraceEvent) -> DefaultDeny | None:
        """A default-deny drop (no rule matched: no cookie) explained by the policies that put
        the deciding endpoint into default deny: the receiver for ingress, the sender for
        egress (``bpf_lxc.c`` reports both ids with every policy drop)."""
        if raw.drop_reason != DROP_POLICY or raw.policy_cookie:
            return None
        direction = _DIRECTIONS.get(raw.traffic_direction)
        if direction == "ingress":
            ep_id = raw.dst_ep_id
        elif direction == "egress":
            ep_id = raw.ep_id
        else:
            return None
        why = self._default_deny(ep_id, direction) if ep_id else None
        # the endpoint may be gone by the time the event is read: still a default deny
        return why or DefaultDeny(self._pod_of(ep_id) or f"endpoint {ep_id}", direction, ())

    def _src_pod(self, raw: RawTraceEvent) -> str | None:
        # from-container events carry the sender's endpoint; to-container ones the receiver's
        if raw.ep_id and raw.ep_id != raw.dst_ep_id:
            return self._pod_of(raw.ep_id)
        return None
