"""decode_batch over ring buffer spans (records with their 8-byte headers, as
``RingBuffer.peek`` copies them): the numpy fixed-stride path gives exactly the per-record
decoder's values; the walked path stops at a BUSY record, skips DISCARD records, decodes
other record types by their decoder and reports a record no decoder takes; ``ends`` say how
far to advance the ring after each record."""

from __future__ import annotations

import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from ciliary.core.flow import EventType
from ciliary.datapath.libbpf import RINGBUF_BUSY_BIT, RINGBUF_DISCARD_BIT, ring_records
from ciliary.datapath.maps import events
from ciliary.datapath.maps.events import (
    TRACE_RECORD_DTYPE,
    RawSockEvent,
    TraceEventC,
    TraceSockNotifyC,
    decode_batch,
    decode_event,
)

TRACE_TYPES = [int(EventType.DROP), int(EventType.TRACE), int(EventType.POLICY_VERDICT)]


def ring(*payloads: bytes, flags: dict[int, int] | None = None) -> bytes:
    """A ring span: each payload behind its header (``flags`` by index), 8-byte aligned."""
    out = b""
    for i, payload in enumerate(payloads):
        word = len(payload) | (flags or {}).get(i, 0)
        out += struct.pack("=II", word, 0) + payload + bytes(-len(payload) % 8)
    return out


def trace(sport: int, **fields: int) -> bytes:
    ev = TraceEventC(type=int(EventType.TRACE), family=socket.AF_INET, proto=17, sport=sport)
    ev.saddr[:4] = [10, 0, 0, 1]
    ev.daddr[:4] = [10, 0, 0, 2]
    for name, value in fields.items():
        setattr(ev, name, value)
    return bytes(ev)


def sock() -> bytes:
    ev = TraceSockNotifyC(type=int(EventType.TRACE_SOCK), xlate_point=1, l4_proto=1)
    ev.dst_port, ev.sock_cookie = 80, 99
    ev.dst_ip[:4] = [10, 96, 0, 1]
    return bytes(ev)


def test_the_record_dtype_mirrors_the_c_struct_behind_the_ring_header() -> None:
    assert TRACE_RECORD_DTYPE.itemsize == 112  # 8 + sizeof(struct trace_event) 104
    for name, _ctype in TraceEventC._fields_:
        assert TRACE_RECORD_DTYPE.fields[name][1] == 8 + getattr(TraceEventC, name).offset, name
    assert TRACE_RECORD_DTYPE.fields["ring_len"][1] == 0


@given(
    st.lists(
        st.tuples(
            st.sampled_from(TRACE_TYPES),
            st.sampled_from([0, 2, 10]),
            st.binary(min_size=103, max_size=103),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_the_numpy_path_gives_the_per_record_decoders_fields(
    rows: list[tuple[int, int, bytes]],
) -> None:
    payloads = []
    for type_, family, rest in rows:
        raw = bytearray(bytes([type_]) + rest)
        raw[4] = family  # trace_event.family: addresses decode by it (0: none)
        payloads.append(bytes(raw))
    span = ring(*payloads)
    batch = decode_batch(span)
    expected = [decode_event(p) for p in payloads]
    assert [vars(e) for e in batch.events] == [vars(e) for e in expected]
    assert list(batch.ends) == [112 * (i + 1) for i in range(len(payloads))]
    assert batch.end == len(span)


def test_a_busy_record_ends_the_batch() -> None:
    span = ring(trace(1), trace(2), trace(3), flags={1: RINGBUF_BUSY_BIT})
    batch = decode_batch(span)
    assert [e.sport for e in batch.events] == [1]  # type: ignore[union-attr]
    assert batch.end == 112 and list(batch.ends) == [112]  # record 2 waits, record 3 behind it


def test_discarded_records_are_skipped_and_consumed() -> None:
    span = ring(trace(1), trace(2), trace(3), flags={1: RINGBUF_DISCARD_BIT})
    batch = decode_batch(span)
    assert [e.sport for e in batch.events] == [1, 3]  # type: ignore[union-attr]
    assert list(batch.ends) == [112, 336] and batch.end == 336
    assert ring_records(ring(trace(1), flags={0: RINGBUF_DISCARD_BIT})) == ([], 112)


def test_mixed_records_keep_their_order_and_each_its_decoder() -> None:
    span = ring(trace(1), sock(), trace(2, type=int(EventType.DROP), drop_reason=133), b"\x63xyz")
    batch = decode_batch(span)
    first, translated, dropped, unknown = batch.events
    assert first == decode_event(trace(1))
    assert isinstance(translated, RawSockEvent) and translated.sock_cookie == 99
    assert dropped == decode_event(trace(2, type=int(EventType.DROP), drop_reason=133))
    assert isinstance(unknown, ValueError) and "unknown type 99" in str(unknown)
    assert list(batch.ends) == [112, 160, 272, 288] and batch.end == len(span) == 288


def test_an_empty_span_is_an_empty_batch() -> None:
    batch = decode_batch(b"")
    assert (batch.events, list(batch.ends), batch.end) == ([], [], 0)
    assert events.TRACE_RECORD_STRIDE == 112


def test_a_record_the_span_cuts_short_waits_for_the_next_peek() -> None:
    whole = ring(trace(1), sock(), trace(2))
    for cut in (112 + 8, 112 + 47, 160 + 111):  # inside the sock record / the second trace
        records, end = ring_records(whole[:cut])
        batch = decode_batch(whole[:cut])
        taken = 1 if cut < 160 else 2
        assert len(records) == len(batch.events) == taken
        assert end == batch.end == (112 if taken == 1 else 160)
    cut_fixed = ring(trace(1), trace(2))[: 112 + 56]  # the fast path's stride does not fit
    assert [e.sport for e in decode_batch(cut_fixed).events] == [1]  # type: ignore[union-attr]
