"""A batch of trace records (the ring reader's numpy rows) into Hubble flows as columns (#17).

Why: building a ``Flow`` per datapath record was most of the agent's CPU under load
(/work/notes/design17.md). Within one batch the agent's state does not change (the batch is
enriched in one go on the event loop), so records that differ only in what a flow takes
verbatim per record (the time, the L4 source port) become the same flow but for those: one
template per group, built by the decoder's ``threefour`` family itself (one code path: the flow
is field for field what :meth:`FlowDecoder.decode` makes of a record), and per record only its
group, time and source port (:class:`~ciliary.hubble.ring.FlowRows`). The observer counts
metrics once per template and keeps the rows as columns; a flow is made whole only when someone
reads it.

The grouping key is the record's bytes with the per-row fields zeroed: the ring header,
``ts_ns``, ``ct_created_ns`` and ``pkt_len`` (no flow field reads the last three but ``time``)
and the row's own port, plus the one thing that port decides besides itself: its Service (a
Service frontend at that address and port), looked up once per distinct (address, family,
port, rev-NAT index, reply) of the batch and put in the key as a small number. numpy's
``unique`` on the keys as opaque bytes gives the groups (~0.2 µs a record).

The row's own port is the client's: the source port, except for a forwarded reply (a trace of
conntrack state reply), whose destination port it is (``ring.DESTINATION_PORT``) when the
batch's forwarded replies have more distinct destination ports than source ports. Short
connections so make a few templates a batch, not one per reply (#17: connrate's SYN-ACK and
server FIN were a template each, most of the agent's CPU). A forwarded reply's template can
leave its destination port to the row because no metric reads a reply's destination port
(port-distribution counts requests, flows-to-world forwarded requests and drops only): the
metrics test of ``tests/unit/agent/test_flowrows.py`` holds that.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ciliary.agent.flows import FlowDecoder
from ciliary.core.flow import CTState, EventType, Verdict
from ciliary.datapath.maps.events import (
    TRACE_RECORD_DTYPE,
    TRACE_RECORD_STRIDE,
    decode_trace_rows,
    row_addresses,
)
from ciliary.hubble.ring import DESTINATION_PORT, FlowRows, flow_template

__all__ = ["decode_rows"]

_PER_ROW = ("ring_len", "ring_pgoff", "ts_ns", "ct_created_ns", "pkt_len", "sport")
"""Fields not in a group's key (see the module doc); a forwarded reply's row swaps ``sport``
for ``dport``."""
_SOURCE_SERVICE_KEY = ("saddr", "family", "sport", "rev_nat_index", "is_reply")
"""What a flow's ``source_service`` is a function of (with the agent's state)."""
_DESTINATION_SERVICE_KEY = ("daddr", "family", "dport", "rev_nat_index", "is_reply")
"""What a flow's ``destination_service`` is a function of (with the agent's state)."""
_SERVICE_SLOT = "ring_len"
"""Where the number of the row's own port's Service goes in the key (a per-row field, zeroed)."""
_SIDE_SLOT = "ts_ns"
"""Where a forwarded reply's key is marked (a per-row field, zeroed)."""
_TRACE, _FORWARDED, _CT_REPLY = int(EventType.TRACE), int(Verdict.FORWARDED), int(CTState.REPLY)


def _byte_span(name: str) -> tuple[int, int]:
    dtype, offset = TRACE_RECORD_DTYPE.fields[name][:2]  # type: ignore[index]
    return int(offset), int(offset) + int(dtype.itemsize)


def _keep_mask() -> npt.NDArray[np.uint8]:
    keep = np.ones(TRACE_RECORD_STRIDE, dtype=np.uint8)
    for name in _PER_ROW:
        start, end = _byte_span(name)
        keep[start:end] = 0
    return keep


_KEEP = _keep_mask()
_SOURCE_SERVICE_BYTES = np.concatenate(
    [np.arange(*_byte_span(name)) for name in _SOURCE_SERVICE_KEY]
)
_DESTINATION_SERVICE_BYTES = np.concatenate(
    [np.arange(*_byte_span(name)) for name in _DESTINATION_SERVICE_KEY]
)
_SLOT_START, _SLOT_END = _byte_span(_SERVICE_SLOT)
_SPORT_START, _SPORT_END = _byte_span("sport")
_DPORT_START, _DPORT_END = _byte_span("dport")
_SIDE_BYTE = _byte_span(_SIDE_SLOT)[0]
if _SLOT_END - _SLOT_START != 4:  # pragma: no cover - a layout edit
    raise ImportError("flowrows.py: the source Service's number needs a 4-byte per-row field")


def _unique(keys: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.intp], ...]:
    """First row, row → group and rows per group of byte rows (each row one opaque key)."""
    flat = np.ascontiguousarray(keys).view(f"V{keys.shape[1]}").ravel()
    _, first, inverse, counts = np.unique(
        flat, return_index=True, return_inverse=True, return_counts=True
    )
    return first, inverse.reshape(-1), counts


def _services(
    decoder: FlowDecoder,
    rows: npt.NDArray[np.void],
    raw: npt.NDArray[np.uint8],
    *,
    destination: bool,
) -> npt.NDArray[np.uint32]:
    """Per row, a number standing for its flow's ``source_service`` (``destination_service``
    with ``destination``; 0: none). Only rows at a Service frontend's address or whose rev-NAT
    index names the frontend on this side are looked up: the others have none."""
    out = np.zeros(len(rows), dtype=np.uint32)
    asked = _may_have_service(decoder, rows, destination=destination)
    if not asked.any():
        return out
    rows, raw = rows[asked], raw[asked]
    key = _DESTINATION_SERVICE_BYTES if destination else _SOURCE_SERVICE_BYTES
    first, inverse, _ = _unique(raw[:, key])
    distinct = rows[first]
    numbers: dict[tuple[str, str] | None, int] = {None: 0}
    per_key = np.zeros(len(first), dtype=np.uint32)
    srcs, dsts = row_addresses(distinct, "saddr"), row_addresses(distinct, "daddr")
    port_field = "dport" if destination else "sport"
    lookup = decoder.destination_service if destination else decoder.source_service
    columns = zip(
        srcs,
        dsts,
        distinct[port_field].tolist(),
        distinct["rev_nat_index"].tolist(),
        distinct["is_reply"].tolist(),
        strict=True,
    )
    for i, (src, dst, port, rev_nat, reply) in enumerate(columns):
        if src is None or dst is None:
            continue
        found = lookup(dst if destination else src, port, rev_nat, bool(reply))
        per_key[i] = numbers.setdefault(found, len(numbers))
    out[asked] = per_key[inverse]
    return out


def _may_have_service(
    decoder: FlowDecoder, rows: npt.NDArray[np.void], *, destination: bool
) -> npt.NDArray[np.bool_]:
    """Per row, whether its destination (``destination``) or source address (with its port) may
    be a Service frontend: the address is one (``FlowGetters.service_addresses``, once per
    batch) or a rev-NAT index names the frontend instead, which it does on the client's far
    side only (a request's destination, a reply's source: FlowDecoder.source_service and
    destination_service; #14: a ClusterIP connection's client side is its client's port, one
    lookup per connection otherwise). A superset: the lookup decides."""
    addresses = decoder.getters.service_addresses
    if addresses is None:
        return np.ones(len(rows), dtype=np.bool_)
    far_side = rows["is_reply"] == 0 if destination else rows["is_reply"] != 0
    asked: npt.NDArray[np.bool_] = np.asarray(
        (rows["rev_nat_index"] != 0) & far_side, dtype=np.bool_
    )
    frontends = addresses()  # sorted 16-byte items: one binary search per row, any count
    if len(frontends):
        column = "daddr" if destination else "saddr"
        mine = np.ascontiguousarray(rows[column]).view("V16").reshape(len(rows))
        at = np.minimum(np.searchsorted(frontends, mine), len(frontends) - 1)
        asked |= frontends[at] == mine
    return asked


def decode_rows(decoder: FlowDecoder, rows: npt.NDArray[np.void]) -> FlowRows:
    """The flows of trace records read as :data:`TRACE_RECORD_DTYPE` (drops, traces, policy
    verdicts: the ``threefour`` family), as templates and columns (see the module doc)."""
    n = len(rows)
    rows = np.ascontiguousarray(rows)
    raw = rows.view(np.uint8).reshape(n, TRACE_RECORD_STRIDE)
    reply = (
        (rows["type"] == _TRACE) & (rows["ct_state"] == _CT_REPLY) & (rows["verdict"] == _FORWARDED)
    )
    if reply.any():  # the client's port varies: usually the destination port of a reply
        sports, dports = rows["sport"][reply], rows["dport"][reply]
        if len(np.unique(dports)) <= len(np.unique(sports)):
            reply[:] = False
    keys = raw * _KEEP
    services = np.zeros(n, dtype=np.uint32)
    request = ~reply
    services[request] = _services(decoder, rows[request], raw[request], destination=False)
    if reply.any():  # the row's own port is the destination port (see the module doc)
        keys[reply, _SPORT_START:_SPORT_END] = raw[reply, _SPORT_START:_SPORT_END]
        keys[reply, _DPORT_START:_DPORT_END] = 0
        keys[reply, _SIDE_BYTE] = 1
        services[reply] = _services(decoder, rows[reply], raw[reply], destination=True)
    keys[:, _SLOT_START:_SLOT_END] = services.view(np.uint8).reshape(n, 4)
    first, inverse, counts = _unique(keys)
    templates = [
        flow_template(decoder.decode(ev), destination=bool(side))
        for ev, side in zip(decode_trace_rows(rows[first]), reply[first].tolist(), strict=True)
    ]
    ports = rows["sport"].astype(np.uint32)
    ports[reply] = rows["dport"][reply].astype(np.uint32) | DESTINATION_PORT
    wall_offset = decoder.clock.wall_ns(0)  # the monotonic → wall offset decode() adds
    return FlowRows(
        templates=templates,
        template_index=inverse.astype(np.intp, copy=False),
        counts=counts.astype(np.intp, copy=False),
        time_ns=rows["ts_ns"].astype(np.int64) + wall_offset,
        source_port=ports,
    )
