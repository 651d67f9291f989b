"""decode_trace_event: the struct-unpacking fast path gives exactly the values of the C layout
(the ctypes mirror builds the records), with address objects and MAC strings reused;
decode_event: the dispatch on a record's first byte, its type."""

from __future__ import annotations

import socket
from ipaddress import ip_address

import pytest

from ciliary.core.flow import EventType
from ciliary.datapath.maps.endpoints import format_mac
from ciliary.datapath.maps.events import (
    RECORD_MIRRORS,
    RawSockEvent,
    RawTraceEvent,
    TraceEventC,
    TraceSockNotifyC,
    decode_event,
    decode_trace_event,
)


def _record(**fields: object) -> bytes:
    ev = TraceEventC()
    for name, value in fields.items():
        if name in ("saddr", "daddr", "smac", "dmac"):
            raw = bytes(value)  # type: ignore[call-overload]
            getattr(ev, name)[: len(raw)] = list(raw)
        else:
            setattr(ev, name, value)
    return bytes(ev)


def test_every_field_comes_from_its_offset() -> None:
    # distinct values everywhere, so a field read from a neighbour's offset shows
    rec = _record(
        ts_ns=2**63 + 5, ct_created_ns=7, saddr=bytes(range(1, 17)), daddr=bytes(range(17, 33)),
        smac=b"\x02\x00\x00\x00\x00\xaa", dmac=b"\x0a\x0b\x0c\x0d\x0e\x0f", sport=65535,
        dport=53, src_sec_id=2**32 - 1, dst_sec_id=20002, ifindex=9, pkt_len=1500, ep_id=11,
        dst_ep_id=12, type=4, obs_point=101, verdict=1, drop_reason=133,
        family=socket.AF_INET6, proto=6, tcp_flags=0x12, is_reply=1, icmp_type=3, icmp_code=4,
        ct_state=2, policy_match=5, traffic_direction=2, pad=0xFF, rev_nat_index=300,
        policy_cookie=0xDEADBEEF,
    )  # fmt: skip
    assert decode_trace_event(rec + b"trailer") == RawTraceEvent(
        ts_ns=2**63 + 5, ct_created_ns=7, src=ip_address(bytes(range(1, 17))),
        dst=ip_address(bytes(range(17, 33))), smac="02:00:00:00:00:aa",
        dmac="0a:0b:0c:0d:0e:0f", sport=65535, dport=53, src_sec_id=2**32 - 1,
        dst_sec_id=20002, ifindex=9, pkt_len=1500, ep_id=11, dst_ep_id=12, type=4,
        obs_point=101, verdict=1, drop_reason=133, family=socket.AF_INET6, proto=6,
        tcp_flags=0x12, is_reply=True, icmp_type=3, icmp_code=4, ct_state=2, policy_match=5,
        traffic_direction=2, policy_cookie=0xDEADBEEF, rev_nat_index=300,
    )  # fmt: skip


def test_ipv4_and_non_ip_addresses() -> None:
    v4 = decode_trace_event(_record(family=socket.AF_INET, saddr=bytes([10, 0, 0, 1, 9, 9])))
    assert v4.src == ip_address("10.0.0.1") and v4.dst == ip_address("0.0.0.0")
    none = decode_trace_event(_record(family=0, saddr=bytes([10, 0, 0, 1])))
    assert none.src is None and none.dst is None and none.is_reply is False


def test_repeated_values_are_reused_and_the_result_is_frozen() -> None:
    rec = _record(family=socket.AF_INET, saddr=bytes([10, 1, 2, 3]))
    a, b = decode_trace_event(rec), decode_trace_event(bytes(rec))
    assert a.src is b.src and a.smac is b.smac and a == b
    with pytest.raises(AttributeError):
        a.sport = 1  # type: ignore[misc]


def test_a_short_record_is_refused() -> None:
    with pytest.raises(ValueError, match="trace_event record is 10 bytes, expected 104"):
        decode_trace_event(bytes(10))


def test_format_mac() -> None:
    assert format_mac(b"\x02\xab\x00\x10\xff\x01extra") == "02:ab:00:10:ff:01"


def test_every_record_layout_starts_with_its_type() -> None:
    for mirror in RECORD_MIRRORS:
        assert mirror.type.offset == 0, mirror  # type: ignore[attr-defined]
    assert _record(type=EventType.POLICY_VERDICT)[0] == EventType.POLICY_VERDICT


@pytest.mark.parametrize("kind", [EventType.DROP, EventType.TRACE, EventType.POLICY_VERDICT])
def test_the_threefour_types_decode_as_trace_events(kind: EventType) -> None:
    # ts_ns's low byte was where a length-and-byte guess looked for a trace-sock type
    ev = decode_event(_record(type=kind, ts_ns=0x0107, family=socket.AF_INET))
    assert isinstance(ev, RawTraceEvent) and ev.type == kind and ev.ts_ns == 0x0107


def test_a_trace_sock_record_is_told_by_its_type() -> None:
    rec = TraceSockNotifyC(type=EventType.TRACE_SOCK, xlate_point=2, l4_proto=1, dst_port=80)
    rec.dst_ip[:4] = [10, 96, 0, 10]
    ev = decode_event(bytes(rec))
    assert isinstance(ev, RawSockEvent)
    assert (ev.xlate_point, ev.dport, ev.dst) == (2, 80, ip_address("10.96.0.10"))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty ring buffer record"),
        (bytes([EventType.ACCESS_LOG]) + bytes(103), "unknown type 129 \\(104 bytes\\)"),
        (bytes([0]) + bytes(39), "unknown type 0 \\(40 bytes\\)"),
        (bytes([EventType.TRACE_SOCK]) + bytes(103), "not a trace_sock_notify record"),
        (bytes([EventType.TRACE]) + bytes(39), "trace_event record is 40 bytes, expected 104"),
    ],
)
def test_records_no_decoder_takes_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_event(data)
