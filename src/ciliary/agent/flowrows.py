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
and ``sport``, plus the one thing the source port decides besides itself: the source Service
(a Service frontend at the source address and port), looked up once per distinct (address,
family, port, rev-NAT index, reply) of the batch and put in the key as a small number. numpy's
``unique`` on the keys as opaque bytes gives the groups (~0.2 µs a record).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ciliary.agent.flows import FlowDecoder
from ciliary.datapath.maps.events import (
    TRACE_RECORD_DTYPE,
    TRACE_RECORD_STRIDE,
    decode_trace_rows,
    row_addresses,
)
from ciliary.hubble.ring import FlowRows, flow_template

__all__ = ["decode_rows"]

_PER_ROW = ("ring_len", "ring_pgoff", "ts_ns", "ct_created_ns", "pkt_len", "sport")
"""Fields not in a group's key (see the module doc)."""
_SERVICE_KEY = ("saddr", "family", "sport", "rev_nat_index", "is_reply")
"""What a flow's ``source_service`` is a function of (with the agent's state)."""
_SERVICE_SLOT = "ring_len"
"""Where the source Service's number goes in the key (a per-row field, zeroed)."""


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
_SERVICE_BYTES = np.concatenate([np.arange(*_byte_span(name)) for name in _SERVICE_KEY])
_SLOT_START, _SLOT_END = _byte_span(_SERVICE_SLOT)
if _SLOT_END - _SLOT_START != 4:  # pragma: no cover - a layout edit
    raise ImportError("flowrows.py: the source Service's number needs a 4-byte per-row field")


def _unique(keys: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.intp], ...]:
    """First row, row → group and rows per group of byte rows (each row one opaque key)."""
    flat = np.ascontiguousarray(keys).view(f"V{keys.shape[1]}").ravel()
    _, first, inverse, counts = np.unique(
        flat, return_index=True, return_inverse=True, return_counts=True
    )
    return first, inverse.reshape(-1), counts


def _source_services(
    decoder: FlowDecoder, rows: npt.NDArray[np.void], raw: npt.NDArray[np.uint8]
) -> npt.NDArray[np.uint32]:
    """Per row, a number standing for its flow's ``source_service`` (0: none)."""
    first, inverse, _ = _unique(raw[:, _SERVICE_BYTES])
    distinct = rows[first]
    numbers: dict[tuple[str, str] | None, int] = {None: 0}
    per_key = np.zeros(len(first), dtype=np.uint32)
    srcs, dsts = row_addresses(distinct, "saddr"), row_addresses(distinct, "daddr")
    columns = zip(
        srcs,
        dsts,
        distinct["sport"].tolist(),
        distinct["rev_nat_index"].tolist(),
        distinct["is_reply"].tolist(),
        strict=True,
    )
    for i, (src, dst, sport, rev_nat, reply) in enumerate(columns):
        if src is None or dst is None:
            continue
        found = decoder.source_service(src, sport, rev_nat, bool(reply))
        per_key[i] = numbers.setdefault(found, len(numbers))
    return per_key[inverse]


def decode_rows(decoder: FlowDecoder, rows: npt.NDArray[np.void]) -> FlowRows:
    """The flows of trace records read as :data:`TRACE_RECORD_DTYPE` (drops, traces, policy
    verdicts: the ``threefour`` family), as templates and columns (see the module doc)."""
    n = len(rows)
    rows = np.ascontiguousarray(rows)
    raw = rows.view(np.uint8).reshape(n, TRACE_RECORD_STRIDE)
    keys = raw * _KEEP
    keys[:, _SLOT_START:_SLOT_END] = (
        _source_services(decoder, rows, raw).view(np.uint8).reshape(n, 4)
    )
    first, inverse, counts = _unique(keys)
    templates = [flow_template(decoder.decode(ev)) for ev in decode_trace_rows(rows[first])]
    wall_offset = decoder.clock.wall_ns(0)  # the monotonic → wall offset decode() adds
    return FlowRows(
        templates=templates,
        template_index=inverse.astype(np.intp, copy=False),
        counts=counts.astype(np.intp, copy=False),
        time_ns=rows["ts_ns"].astype(np.int64) + wall_offset,
        source_port=rows["sport"].astype(np.uint16),
    )
