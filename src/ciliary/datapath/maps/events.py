"""``ciliary_events`` / ``ciliary_events_lost`` (bpf/lib/events.h): the datapath's notifications.

Every ring buffer record starts with its type byte (``EventType``, Cilium's monitor message
types; bpf/lib/common.h ``EVENT_HDR_CHECK``), and :func:`decode_event` dispatches on it, as
upstream's Hubble parser on ``data[0]`` (:data:`RECORD_DECODERS`): a drop, trace or policy
verdict is one C ``struct trace_event`` (the tc programs' packets), a trace-sock record one C
``struct trace_sock_notify`` (socket-LB's translations, bpf/lib/trace_sock.h). The ring reader
(``ciliary.agent.monitor``) decodes each record once, here, for every consumer (Hubble's flows,
``ciliary monitor``). :func:`decode_trace_event` and :func:`decode_sock_event` turn each into
plain Python values
without interpreting them (the numbers are Hubble's and Cilium's, see bpf/lib/common.h; giving
them meaning is the agent's job). :func:`decode_batch` decodes a whole span of the ring at
once (the reader's batches): trace records as one numpy array of :data:`TRACE_RECORD_DTYPE`,
into the same values field for field; :func:`trace_rows` is its fast path alone, the array
itself (Hubble's rows path, #17: no object per record). Records the datapath could not reserve
are counted per CPU in ``ciliary_events_lost``.
"""

from __future__ import annotations

import ctypes
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from ciliary.core.flow import EventType
from ciliary.datapath.libbpf import RINGBUF_HDR_SZ, Map, ring_records
from ciliary.datapath.maps.endpoints import (
    AF_INET4,
    AF_INET6,
    IPAddress,
    check_map_layout,
    decode_addr,
    format_mac,
)

__all__ = [
    "TRACE_RECORD_DTYPE",
    "TRACE_RECORD_STRIDE",
    "EventBatch",
    "EventsLostMap",
    "RawEvent",
    "RawSockEvent",
    "RawTraceEvent",
    "TraceEventC",
    "TraceSockNotifyC",
    "decode_batch",
    "decode_event",
    "decode_sock_event",
    "decode_trace_event",
    "decode_trace_rows",
    "row_addresses",
    "trace_rows",
]

TRACE_SOCK_F_IPV6 = 0x1
"""``trace_sock_notify.flags``: the address is IPv6 (a flag of this record's layout only)."""
_MSG_TRACE_SOCK = int(EventType.TRACE_SOCK)


class TraceEventC(ctypes.Structure):
    """Mirror of C ``struct trace_event`` (bpf/lib/common.h)."""

    C_NAME = "trace_event"
    _fields_ = [
        ("type", ctypes.c_uint8),
        ("obs_point", ctypes.c_uint8),
        ("verdict", ctypes.c_uint8),
        ("drop_reason", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("tcp_flags", ctypes.c_uint8),
        ("is_reply", ctypes.c_uint8),
        ("ts_ns", ctypes.c_uint64),
        ("ct_created_ns", ctypes.c_uint64),
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
        ("smac", ctypes.c_uint8 * 6),
        ("dmac", ctypes.c_uint8 * 6),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("src_sec_id", ctypes.c_uint32),
        ("dst_sec_id", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("pkt_len", ctypes.c_uint32),
        ("ep_id", ctypes.c_uint16),
        ("dst_ep_id", ctypes.c_uint16),
        ("icmp_type", ctypes.c_uint8),
        ("icmp_code", ctypes.c_uint8),
        ("ct_state", ctypes.c_uint8),
        ("policy_match", ctypes.c_uint8),
        ("traffic_direction", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("rev_nat_index", ctypes.c_uint16),
        ("policy_cookie", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class RawTraceEvent:
    """A decoded ``struct trace_event``; ``src``/``dst`` are None when the packet was not IP
    (family 0, e.g. a drop before L3 was parsed)."""

    ts_ns: int
    ct_created_ns: int
    src: IPAddress | None
    dst: IPAddress | None
    smac: str
    dmac: str
    sport: int
    dport: int
    src_sec_id: int
    dst_sec_id: int
    ifindex: int
    pkt_len: int
    ep_id: int
    dst_ep_id: int
    type: int
    obs_point: int
    verdict: int
    drop_reason: int
    family: int
    proto: int
    tcp_flags: int
    is_reply: bool
    icmp_type: int
    icmp_code: int
    ct_state: int
    policy_match: int = 0
    traffic_direction: int = 0
    policy_cookie: int = 0
    rev_nat_index: int = 0
    """The service frontend (its rev-NAT index) of a connection this node translated; events
    are taken after the translation, so this is how a flow knows the address the client sent
    to."""


def _addr(raw: bytes, family: int) -> IPAddress | None:
    try:
        return decode_addr(raw, family)
    except ValueError:
        return None


_TRACE_EVENT = struct.Struct("@8BQQ16s16s6s6sHHIIIIHH6BHI")
"""``struct trace_event`` unpacked in one C call (native alignment, as the ctypes mirror, which
stays the layout's reference: the sizes are compared at import)."""
if _TRACE_EVENT.size != ctypes.sizeof(TraceEventC):  # pragma: no cover - a layout edit
    raise ImportError(
        f"events.py: trace_event unpacks {_TRACE_EVENT.size} bytes, "
        f"the ctypes mirror is {ctypes.sizeof(TraceEventC)}"
    )
_TRACE_FIELDS = tuple(f.name for f in dataclass_fields(RawTraceEvent))
_CACHE_MAX = 16_384
_addrs: dict[tuple[bytes, int], IPAddress | None] = {}
_macs: dict[bytes, str] = {}


def _cached_addr(raw: bytes, family: int) -> IPAddress | None:
    """Address objects by their raw bytes: a node sees few distinct addresses, and building an
    ``ip_address`` per record was a tenth of the decode (the objects are immutable)."""
    key = (raw, family)
    addr = _addrs.get(key, _addrs)
    if addr is _addrs:
        if len(_addrs) >= _CACHE_MAX:
            _addrs.clear()
        addr = _addrs[key] = _addr(raw, family)
    return addr  # type: ignore[return-value]


def _cached_mac(raw: bytes) -> str:
    mac = _macs.get(raw)
    if mac is None:
        if len(_macs) >= _CACHE_MAX:
            _macs.clear()
        mac = _macs[raw] = format_mac(raw)
    return mac


def decode_trace_event(data: bytes) -> RawTraceEvent:
    """Decodes one ring buffer record; ``data`` may be longer than the struct (never shorter).

    Per record this is one ``struct`` unpack, cached address and MAC values and one dict
    for the frozen dataclass (filled as its generated ``__init__`` would, without the 29
    ``object.__setattr__`` calls a frozen ``__init__`` makes)."""
    size = _TRACE_EVENT.size
    if len(data) < size:
        raise ValueError(f"trace_event record is {len(data)} bytes, expected {size}")
    (
        type_, obs_point, verdict, drop_reason, family, proto, tcp_flags, is_reply,
        ts_ns, ct_created_ns, saddr, daddr, smac, dmac, sport, dport, src_sec_id, dst_sec_id,
        ifindex, pkt_len, ep_id, dst_ep_id, icmp_type, icmp_code, ct_state, policy_match,
        traffic_direction, _pad, rev_nat_index, policy_cookie,
    ) = _TRACE_EVENT.unpack_from(data)  # fmt: skip
    values = (
        ts_ns, ct_created_ns, _cached_addr(saddr, family), _cached_addr(daddr, family),
        _cached_mac(smac), _cached_mac(dmac), sport, dport, src_sec_id, dst_sec_id,
        ifindex, pkt_len, ep_id, dst_ep_id, type_, obs_point, verdict, drop_reason,
        family, proto, tcp_flags, bool(is_reply), icmp_type, icmp_code, ct_state,
        policy_match, traffic_direction, policy_cookie, rev_nat_index,
    )  # fmt: skip
    ev = object.__new__(RawTraceEvent)
    ev.__dict__.update(zip(_TRACE_FIELDS, values, strict=True))
    return ev


class TraceSockNotifyC(ctypes.Structure):
    """Mirror of C ``struct trace_sock_notify`` (bpf/lib/trace_sock.h)."""

    C_NAME = "trace_sock_notify"
    C_OBJECT = "bpf_sock.o"
    _fields_ = [
        ("type", ctypes.c_uint8),
        ("xlate_point", ctypes.c_uint8),
        ("l4_proto", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("dst_port", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
        ("sock_cookie", ctypes.c_uint64),
        ("cgroup_id", ctypes.c_uint64),
        ("dst_ip", ctypes.c_uint8 * 16),
    ]


@dataclass(frozen=True)
class RawSockEvent:
    """A decoded ``struct trace_sock_notify``: one translation point of a socket (its
    ``dst`` is the frontend before a forward translation, the backend after it; the reverse
    way round for a reverse one)."""

    type: ClassVar[int] = _MSG_TRACE_SOCK
    """The record type (a trace-sock record's first byte), as ``RawTraceEvent.type``."""

    ts_ns: int
    """When the agent read it (the record has no timestamp, as upstream's)."""
    xlate_point: int
    l4_proto: int
    """upstream's enum l4_protocol: 1 TCP, 2 UDP, 0 unknown"""
    family: int
    dst: IPAddress | None
    dport: int
    sock_cookie: int
    cgroup_id: int


RawEvent = RawTraceEvent | RawSockEvent
"""What a ring buffer record decodes to."""


def decode_sock_event(data: bytes, ts_ns: int) -> RawSockEvent:
    """Decodes one trace_sock_notify record (``data`` exactly its size)."""
    size = ctypes.sizeof(TraceSockNotifyC)
    if len(data) != size or data[0] != _MSG_TRACE_SOCK:
        raise ValueError(f"not a trace_sock_notify record ({len(data)} bytes, type {data[:1]!r})")
    ev = TraceSockNotifyC.from_buffer_copy(data)
    family = AF_INET6 if ev.flags & TRACE_SOCK_F_IPV6 else AF_INET4
    return RawSockEvent(
        ts_ns=ts_ns,
        xlate_point=int(ev.xlate_point),
        l4_proto=int(ev.l4_proto),
        family=family,
        dst=_addr(bytes(ev.dst_ip), family),
        dport=int(ev.dst_port),
        sock_cookie=int(ev.sock_cookie),
        cgroup_id=int(ev.cgroup_id),
    )


def _decode_sock_now(data: bytes) -> RawSockEvent:
    return decode_sock_event(data, time.monotonic_ns())


RECORD_DECODERS: dict[int, Callable[[bytes], RawEvent]] = {
    int(EventType.DROP): decode_trace_event,
    int(EventType.TRACE): decode_trace_event,
    int(EventType.POLICY_VERDICT): decode_trace_event,
    _MSG_TRACE_SOCK: _decode_sock_now,
}
"""The record types the datapath writes, by their first byte, and each one's decoder."""

RECORD_MIRRORS: tuple[type[ctypes.Structure], ...] = (TraceEventC, TraceSockNotifyC)
"""Every record layout of the ring buffer: each starts with its type byte."""
for _mirror in RECORD_MIRRORS:
    if _mirror.type.offset != 0:  # pragma: no cover - a layout edit
        raise ImportError(f"events.py: {_mirror.__name__} does not start with its type")


def decode_event(data: bytes) -> RawEvent:
    """Decodes one ring buffer record: dispatched on its first byte, the record type (see the
    module doc); a record of a type no decoder knows is a ValueError (the reader counts it as
    malformed and goes on)."""
    try:
        decoder = RECORD_DECODERS[data[0]]
    except IndexError:
        raise ValueError("empty ring buffer record") from None
    except KeyError:
        raise ValueError(
            f"ring buffer record of unknown type {data[0]} ({len(data)} bytes)"
        ) from None
    return decoder(data)


# ---- batches: a ring buffer span at a time -------------------------------------------------

_TRACE_SIZE = ctypes.sizeof(TraceEventC)
TRACE_RECORD_STRIDE = (RINGBUF_HDR_SZ + _TRACE_SIZE + 7) & ~7
"""Bytes from one trace_event record's ring header to the next's (header, struct, alignment)."""


def _record_dtype(mirror: type[ctypes.Structure], stride: int) -> np.dtype[np.void]:
    """A numpy structured dtype of one ring record of ``mirror``: the ring header's two words
    (``ring_len``: length and BUSY/DISCARD flags, ``ring_pgoff``), then every field of the
    ctypes mirror at its offset; byte arrays (addresses, MACs) as opaque ``V<n>`` (``bytes``)."""
    names = ["ring_len", "ring_pgoff"]
    formats: list[np.dtype[Any]] = [np.dtype("=u4"), np.dtype("=u4")]
    offsets = [0, 4]
    for name, ctype in mirror._fields_:  # type: ignore[misc]
        field = getattr(mirror, name)
        names.append(name)
        is_array = issubclass(ctype, ctypes.Array)
        formats.append(np.dtype(f"V{field.size}") if is_array else np.dtype(ctype))
        offsets.append(RINGBUF_HDR_SZ + field.offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": stride})


TRACE_RECORD_DTYPE = _record_dtype(TraceEventC, TRACE_RECORD_STRIDE)
"""One trace/drop/verdict ring record (header included) as numpy reads a batch of them."""
_TRACE_TYPES = (int(EventType.DROP), int(EventType.TRACE), int(EventType.POLICY_VERDICT))
_IS_TRACE_TYPE = np.zeros(256, dtype=bool)
_IS_TRACE_TYPE[list(_TRACE_TYPES)] = True
_STRIDE_BYTES = np.arange(TRACE_RECORD_STRIDE)
_PENDING = ValueError("trace record not decoded yet")
_COLUMNS = tuple(
    name for name in _TRACE_FIELDS if name not in ("src", "dst", "smac", "dmac", "is_reply")
)


@dataclass(frozen=True, slots=True)
class EventBatch:
    """The records of one ring buffer span, decoded, in ring order."""

    events: list[RawEvent | ValueError]
    """Each record's event, or the ValueError that refused it (the reader counts it)."""
    ends: Sequence[int]
    """The span offset just after each event's record: advance the ring that far once it is
    taken."""
    end: int
    """Where the span's committed records end (its first BUSY record or its end, discarded
    records included): advance the ring that far once every event is taken."""


def row_addresses(rows: npt.NDArray[np.void], column: str) -> list[IPAddress | None]:
    """The addresses of a ``saddr``/``daddr`` column of trace rows (None where the family is
    not IP), as :func:`decode_trace_event` decodes them (the same cache)."""
    family = rows["family"].tolist()
    return [_cached_addr(a, f) for a, f in zip(rows[column].tolist(), family, strict=True)]


def decode_trace_rows(rows: npt.NDArray[np.void]) -> list[RawTraceEvent]:
    """``RawTraceEvent``s of trace records read with :data:`TRACE_RECORD_DTYPE`: each column is
    turned into Python values in one numpy call; per row remain the address/MAC caches and the
    dataclass's dict (as :func:`decode_trace_event`, field for field)."""
    columns = {name: rows[name].tolist() for name in _COLUMNS}
    columns["src"] = row_addresses(rows, "saddr")
    columns["dst"] = row_addresses(rows, "daddr")
    columns["smac"] = [_cached_mac(m) for m in rows["smac"].tolist()]
    columns["dmac"] = [_cached_mac(m) for m in rows["dmac"].tolist()]
    columns["is_reply"] = rows["is_reply"].astype(bool).tolist()
    out: list[RawTraceEvent] = []
    new = object.__new__
    for values in zip(*(columns[name] for name in _TRACE_FIELDS), strict=True):
        ev = new(RawTraceEvent)
        ev.__dict__.update(zip(_TRACE_FIELDS, values, strict=True))
        out.append(ev)
    return out


def trace_rows(span: bytes) -> npt.NDArray[np.void] | None:
    """The span as an array of :data:`TRACE_RECORD_DTYPE` when it is whole trace/drop/verdict
    records only (every header the struct's length with no flag, every type byte a trace
    type: one vectorised check), else None (walk it with :func:`decode_batch`). Record ``i``
    ends at ``(i + 1) * TRACE_RECORD_STRIDE``."""
    count, rest = divmod(len(span), TRACE_RECORD_STRIDE)
    if not count or rest:
        return None
    rows = np.frombuffer(span, TRACE_RECORD_DTYPE)
    if (rows["ring_len"] == _TRACE_SIZE).all() and _IS_TRACE_TYPE[rows["type"]].all():
        return rows
    return None


def decode_batch(span: bytes) -> EventBatch:
    """Decodes a ring buffer span (``RingBuffer.peek``: records with their 8-byte headers).

    Fixed-stride fast path: when the span is whole trace_event records only (every header says
    the struct's length with no flag, every type byte a trace/drop/verdict type: one vectorised
    check), numpy reads it as an array of :data:`TRACE_RECORD_DTYPE` at once. Otherwise the
    headers are walked (``ring_records``: BUSY ends the span, DISCARD is skipped); the trace
    records among them are still gathered into one array, every other record goes through
    :func:`decode_event` (its type's decoder)."""
    rows = trace_rows(span)
    if rows is not None:
        strided = range(TRACE_RECORD_STRIDE, len(span) + 1, TRACE_RECORD_STRIDE)
        return EventBatch([*decode_trace_rows(rows)], strided, len(span))
    records, end = ring_records(span)
    events: list[RawEvent | ValueError] = []
    trace_slots: list[int] = []
    for offset, length in records:
        if length == _TRACE_SIZE and span[offset] in _TRACE_TYPES:
            trace_slots.append(len(events))
            events.append(_PENDING)
            continue
        try:
            events.append(decode_event(span[offset : offset + length]))
        except ValueError as err:
            events.append(err)
    if trace_slots:
        starts = np.array([records[i][0] - RINGBUF_HDR_SZ for i in trace_slots])
        gathered = np.frombuffer(span, np.uint8)[starts[:, None] + _STRIDE_BYTES]
        rows = gathered.view(TRACE_RECORD_DTYPE).reshape(-1)
        for slot, ev in zip(trace_slots, decode_trace_rows(rows), strict=True):
            events[slot] = ev
    ends = [(offset + length + 7) & ~7 for offset, length in records]
    return EventBatch(events, ends, end)


_KEY = bytes(ctypes.sizeof(ctypes.c_uint32))  # index 0


class EventsLostMap:
    """Typed view of ciliary_events_lost (per-CPU ``__u64`` at index 0)."""

    def __init__(self, bpf_map: Map) -> None:
        if not bpf_map.is_percpu:
            raise ValueError(f"map {bpf_map.info.name!r} is not a per-CPU map")
        check_map_layout(bpf_map, ctypes.c_uint32, ctypes.c_uint64)
        self.map = bpf_map

    def per_cpu(self) -> list[int]:
        values = self.map.lookup_percpu(_KEY) or []
        return [int.from_bytes(v, sys.byteorder) for v in values]

    def total(self) -> int:
        """Events lost since the map was created, over all CPUs."""
        return sum(self.per_cpu())
