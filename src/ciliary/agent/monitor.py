"""From the datapath's ring buffer to decoded, enriched events for ``ciliary monitor``.

The ring buffer's epoll fd sits in the event loop (``add_reader``), so records are consumed as
they arrive without a thread. Each record becomes a ``MonitorEvent`` named the way Cilium's
monitor names things and enriched from the agent's own state (endpoint ids → pods), never guessed
from addresses. Subscribers get bounded queues; a slow subscriber loses events and the loss is
counted (``dropped_by_subscribers``), never blocking the reader.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

from ciliary.core.flow import (
    IP_PROTOCOLS,
    CTState,
    EventType,
    ObservationPoint,
    Verdict,
    drop_reason_text,
    tcp_flag_names,
)
from ciliary.core.models import MonitorEvent
from ciliary.datapath.libbpf import RingBuffer
from ciliary.datapath.loader import NodeDatapath
from ciliary.datapath.maps.events import RawTraceEvent, decode_trace_event

log = logging.getLogger(__name__)
_DIRECTIONS: dict[int, Literal["ingress", "egress", "unknown"]] = {1: "ingress", 2: "egress"}
ICMP4_TYPES = {0: "EchoReply", 3: "DestinationUnreachable", 8: "EchoRequest", 11: "TimeExceeded"}
ICMP6_TYPES = {1: "DestinationUnreachable", 3: "TimeExceeded", 128: "EchoRequest", 129: "EchoReply"}


def summary_of(raw: RawTraceEvent) -> str:
    """Hubble's ``Summary`` string for an L3/L4 flow."""
    if raw.proto == 6:
        return "TCP Flags: " + ", ".join(tcp_flag_names(raw.tcp_flags)) if raw.tcp_flags else "TCP"
    if raw.proto == 17:
        return "UDP"
    if raw.proto == 1:
        return "ICMPv4 " + ICMP4_TYPES.get(raw.icmp_type, f"type {raw.icmp_type}")
    if raw.proto == 58:
        return "ICMPv6 " + ICMP6_TYPES.get(raw.icmp_type, f"type {raw.icmp_type}")
    return IP_PROTOCOLS.get(raw.proto, f"proto {raw.proto}")


class Monitor:
    def __init__(
        self,
        node: str,
        datapath: NodeDatapath,
        pod_of_endpoint: Callable[[int], str | None],
        queue_size: int = 4096,
        explain: Callable[[int], list[str]] = lambda _cookie: [],
    ) -> None:
        self._explain = explain
        self._node = node
        self._dp = datapath
        self._pod_of = pod_of_endpoint
        self._queue_size = queue_size
        self._subs: set[asyncio.Queue[MonitorEvent]] = set()
        self._rb: RingBuffer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ifnames: dict[int, str] = {}
        self._wall_offset_ns = time.time_ns() - time.monotonic_ns()
        self.received = 0
        self.dropped_by_subscribers = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._rb = RingBuffer(self._dp.events_map.fd, self._on_record)
        self._loop.add_reader(self._rb.epoll_fd(), self._drain)
        self._drain()

    def stop(self) -> None:
        if self._rb is not None and self._loop is not None:
            self._loop.remove_reader(self._rb.epoll_fd())
            self._rb.close()
            self._rb = None

    def subscribe(self) -> asyncio.Queue[MonitorEvent]:
        q: asyncio.Queue[MonitorEvent] = asyncio.Queue(self._queue_size)
        self._subs.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[MonitorEvent]) -> None:
        self._subs.discard(q)

    def _drain(self) -> None:
        if self._rb is None:
            return
        try:
            self._rb.consume()
        except Exception:
            log.exception("ring buffer consumption failed")

    def _on_record(self, data: bytes) -> None:
        self.received += 1
        if not self._subs:
            return
        event = self.decode(decode_trace_event(data))
        for q in self._subs:
            try:
                q.put_nowait(event)
            except asyncio.QueueFull:
                self.dropped_by_subscribers += 1

    def _ifname(self, ifindex: int) -> str:
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
        is_drop = raw.type == EventType.DROP
        try:
            obs = ObservationPoint(raw.obs_point).cli_name
        except ValueError:
            obs = str(raw.obs_point)
        try:
            ct_state = CTState(raw.ct_state).name.lower()
        except ValueError:
            ct_state = str(raw.ct_state)
        return MonitorEvent(
            time=wall.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            ts_ns=raw.ts_ns,
            ct_created_ns=raw.ct_created_ns,
            node=self._node,
            type="drop" if is_drop else "trace",
            verdict=Verdict(raw.verdict).name
            if raw.verdict in Verdict._value2member_map_
            else str(raw.verdict),
            drop_reason=raw.drop_reason,
            drop_reason_desc=drop_reason_text(raw.drop_reason) if is_drop else "",
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
            ifname=self._ifname(raw.ifindex),
            length=raw.pkt_len,
            src_mac=raw.smac,
            dst_mac=raw.dmac,
            src_pod=self._src_pod(raw),
            dst_pod=self._pod_of(raw.dst_ep_id) if raw.dst_ep_id else None,
            traffic_direction=_DIRECTIONS.get(raw.traffic_direction, "unknown"),
            policy_match_type=raw.policy_match,
            policy_rules=self._explain(raw.policy_cookie) if raw.policy_cookie else [],
            verdict_reason=(
                "default deny"
                if is_drop and raw.drop_reason == 133 and not raw.policy_cookie
                else ""
            ),
            summary=summary_of(raw),
        )

    def _src_pod(self, raw: RawTraceEvent) -> str | None:
        # from-container events carry the sender's endpoint; to-container ones the receiver's
        if raw.ep_id and raw.ep_id != raw.dst_ep_id:
            return self._pod_of(raw.ep_id)
        return None
