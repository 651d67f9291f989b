"""The derived tables of ciliary.core.flow read as upstream's monitor API spells them."""

from __future__ import annotations

from ciliary.core.flow import (
    MESSAGE_TYPES,
    TRACE_POINTS,
    EventType,
    tcp_flag_names,
)
from ciliary.hubble.gopacket import TCP_SUMMARY_FLAGS


def test_trace_points_in_monitor_numbering() -> None:
    # pkg/monitor/api: TraceToLxc is 0, the rest as flow.TraceObservationPoint
    assert TRACE_POINTS == {
        0: "to-endpoint",
        1: "to-proxy",
        2: "to-host",
        3: "to-stack",
        4: "to-overlay",
        5: "from-endpoint",
        6: "from-proxy",
        7: "from-host",
        8: "from-stack",
        9: "from-overlay",
        10: "from-network",
        11: "to-network",
        12: "from-crypto",
        13: "to-crypto",
    }


def test_message_types_are_the_record_types() -> None:
    assert {name: EventType(n).name for name, n in MESSAGE_TYPES.items()} == {
        "drop": "DROP",
        "debug": "DEBUG",
        "capture": "CAPTURE",
        "trace": "TRACE",
        "policy-verdict": "POLICY_VERDICT",
        "recorder": "RECORDER",
        "trace-sock": "TRACE_SOCK",
        "l7": "ACCESS_LOG",
        "agent": "AGENT",
    }
    assert (EventType.ACCESS_LOG, EventType.AGENT) == (129, 130)


def test_tcp_flags_wire_and_summary_order() -> None:
    assert tcp_flag_names(0x12) == ["SYN", "ACK"]
    assert tcp_flag_names(0xFF)[0] == "FIN"
    assert list(TCP_SUMMARY_FLAGS)[:4] == ["SYN", "ACK", "RST", "FIN"]
    assert TCP_SUMMARY_FLAGS["ECE"] == 0x40
