"""``ciliary_ct`` (bpf/lib/conntrack.h): the node's connection tracking table, read and GC'd.

The datapath creates and refreshes entries and treats expired ones as absent; this side lists
them and removes the expired ones. Timestamps are ``bpf_ktime_get_ns()``, i.e. CLOCK_MONOTONIC,
which is what :func:`time.monotonic_ns` reads on Linux.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass

from ciliary.datapath.libbpf import Map
from ciliary.datapath.maps.endpoints import IPAddress, check_map_layout, decode_addr

__all__ = [
    "CT_F_LOOPBACK",
    "CT_F_PROXY_REDIRECT",
    "CT_F_PROXY_SHARED",
    "CT_F_PROXY_UPSTREAM",
    "CT_F_REPLY_REPORTED",
    "CT_F_REPLY_SEEN",
    "CT_F_RX_CLOSING",
    "CT_F_TX_CLOSING",
    "CT_F_VIA_STACK",
    "CT_SCOPE_SERVICE",
    "CTEntryC",
    "CTKeyC",
    "CTMap",
    "CTRecord",
]

CT_F_TX_CLOSING = 0x1
CT_F_RX_CLOSING = 0x2
CT_F_REPLY_SEEN = 0x4
CT_F_REPLY_REPORTED = 0x8
CT_F_VIA_STACK = 0x10
"""Requests came through the node stack (maybe NATed): replies go back through it."""
CT_F_LOOPBACK = 0x20
"""A hairpinned service connection (the pod was its own backend): its source was rewritten to
the loopback address 169.254.42.1 or fe80::1, the reply goes back to the pod (bpf/lib/lb.h)."""
CT_F_PROXY_REDIRECT = 0x40
"""The connection goes through the node's L7 proxy on the entry's ``proxy_port``
(bpf/lib/proxy.h)."""
CT_F_PROXY_UPSTREAM = 0x80
"""The connection's client side is an L7 proxy's upstream socket (opened with the proxy mark):
a reply the node stack routes to the pod goes back to that socket (bpf/lib/proxy.h)."""
CT_F_PROXY_SHARED = 0x100
"""A pod's connection on the tuple of an L7 proxy's upstream connection, which may outlive it:
closing does not shorten the entry's lifetime (bpf/lib/conntrack.h ``ct_syn_reopens``)."""
CT_SCOPE_SERVICE = 1
"""``ct_key.scope`` of a service entry (bpf/lib/lb.h): keyed on the tuple the client sent to a
frontend, it remembers the connection's backend; connection entries have scope 0."""


class CTKeyC(ctypes.Structure):
    """Mirror of C ``struct ct_key`` (bpf/lib/common.h); ports in host order."""

    C_NAME = "ct_key"
    _fields_ = [
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("scope", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class CTEntryC(ctypes.Structure):
    """Mirror of C ``struct ct_entry`` (bpf/lib/common.h)."""

    C_NAME = "ct_entry"
    _fields_ = [
        ("created_ns", ctypes.c_uint64),
        ("last_seen_ns", ctypes.c_uint64),
        ("expires_ns", ctypes.c_uint64),
        ("last_report_ns", ctypes.c_uint64),
        ("tx_packets", ctypes.c_uint64),
        ("tx_bytes", ctypes.c_uint64),
        ("rx_packets", ctypes.c_uint64),
        ("rx_bytes", ctypes.c_uint64),
        ("src_sec_id", ctypes.c_uint32),
        ("dst_sec_id", ctypes.c_uint32),
        ("tx_flags_seen", ctypes.c_uint8),
        ("rx_flags_seen", ctypes.c_uint8),
        ("flags", ctypes.c_uint16),
        ("rev_nat_index", ctypes.c_uint16),
        ("proxy_port", ctypes.c_uint16),
        ("backend_id", ctypes.c_uint32),
        ("policy_rev", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class CTRecord:
    """One connection, keyed by the tuple of the packet that opened it (tx = that direction)."""

    family: int
    proto: int
    src: IPAddress
    dst: IPAddress
    sport: int
    dport: int
    created_ns: int
    last_seen_ns: int
    expires_ns: int
    last_report_ns: int
    tx_packets: int
    tx_bytes: int
    rx_packets: int
    rx_bytes: int
    tx_flags_seen: int
    rx_flags_seen: int
    flags: int
    src_sec_id: int
    dst_sec_id: int
    scope: int = 0
    """CT_SCOPE_SERVICE: the service entry of a connection to a frontend."""
    rev_nat_index: int = 0
    """The frontend the connection was sent to (its replies get it back as source), 0 = none."""
    backend_id: int = 0


_FAMILY_OFFSET = CTKeyC.family.offset


def _is_expired(value_raw: bytes, now_ns: int) -> bool:
    return int(CTEntryC.from_buffer_copy(value_raw).expires_ns) <= now_ns


class CTMap:
    """Typed view of ciliary_ct over a :class:`Map` it does not own."""

    def __init__(self, bpf_map: Map) -> None:
        check_map_layout(bpf_map, CTKeyC, CTEntryC)
        self.map = bpf_map

    def items(self) -> list[CTRecord]:
        return [_record(k, v) for k, v in self.map.items()]

    def count(self) -> int:
        return self.map.count()

    def gc(self, now_ns: int | None = None, in_use: set[IPAddress] | None = None) -> int:
        """Deletes entries with ``expires_ns <= now_ns`` (default: now); returns how many.
        With ``in_use``, the addresses at both ends of the entries the pass keeps are added to
        it (the DNS cache keeps the IPs of expired answers while connections use them, as
        upstream's CT GC marks its DNS zombies alive).

        Each candidate is re-read just before the delete so that an entry the datapath
        refreshed since the scan survives; one refreshed between that re-read and the delete is
        lost, and its next packet opens a new entry (what the LRU eviction can do anyway)."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        candidates = []
        ends: set[tuple[bytes, int]] = set()
        for k, v in self.map.items():
            if _is_expired(v, now):
                candidates.append(k)
            elif in_use is not None:
                family = k[_FAMILY_OFFSET]
                ends.add((k[:16], family))
                ends.add((k[16:32], family))
        if in_use is not None:
            in_use.update(decode_addr(raw, family) for raw, family in ends)
        expired = []
        for key in candidates:
            current = self.map.lookup(key)
            if current is not None and _is_expired(current, now):
                expired.append(key)
        return self.map.delete_batch(expired)

    def flush(self) -> int:
        """Deletes every entry; returns how many."""
        return self.map.delete_batch([k for k, _ in self.map.items()])


def _record(key_raw: bytes, value_raw: bytes) -> CTRecord:
    key = CTKeyC.from_buffer_copy(key_raw)
    e = CTEntryC.from_buffer_copy(value_raw)
    family = int(key.family)
    return CTRecord(
        family=family,
        proto=int(key.proto),
        src=decode_addr(bytes(key.saddr), family),
        dst=decode_addr(bytes(key.daddr), family),
        sport=int(key.sport),
        dport=int(key.dport),
        created_ns=int(e.created_ns),
        last_seen_ns=int(e.last_seen_ns),
        expires_ns=int(e.expires_ns),
        last_report_ns=int(e.last_report_ns),
        tx_packets=int(e.tx_packets),
        tx_bytes=int(e.tx_bytes),
        rx_packets=int(e.rx_packets),
        rx_bytes=int(e.rx_bytes),
        tx_flags_seen=int(e.tx_flags_seen),
        rx_flags_seen=int(e.rx_flags_seen),
        flags=int(e.flags),
        src_sec_id=int(e.src_sec_id),
        dst_sec_id=int(e.dst_sec_id),
        scope=int(key.scope),
        rev_nat_index=int(e.rev_nat_index),
        backend_id=int(e.backend_id),
    )
