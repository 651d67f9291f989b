"""Cilium's monitor API numbering, as Hubble flows carry it in ``event_type``.

A flow's ``event_type.type`` is the monitor message type (``pkg/monitor/api/types.go``) and,
for traces, ``event_type.sub_type`` the monitor's trace observation point, numbered from 0 for
``to-endpoint`` (unlike ``flow.TraceObservationPoint``, where it is 101). The printer, the
``--type`` flag parser, the filters, the metrics and the agent's decoder all speak these
numbers; they read them from here so that a name always means the same number.
"""

from __future__ import annotations

MSG_DROP = 1
MSG_DEBUG = 2
MSG_CAPTURE = 3
MSG_TRACE = 4
MSG_POLICY_VERDICT = 5
MSG_RECORDER = 6
MSG_TRACE_SOCK = 7
MSG_ACCESS_LOG = 129
"""L7 (proxy access log) events."""
MSG_AGENT = 130

MESSAGE_TYPES: dict[str, int] = {
    "drop": MSG_DROP,
    "debug": MSG_DEBUG,
    "capture": MSG_CAPTURE,
    "trace": MSG_TRACE,
    "policy-verdict": MSG_POLICY_VERDICT,
    "recorder": MSG_RECORDER,
    "trace-sock": MSG_TRACE_SOCK,
    "l7": MSG_ACCESS_LOG,
    "agent": MSG_AGENT,
}
"""Message type names, as ``--type`` accepts them."""

TRACE_TO_LXC = 0
"""The monitor's number for to-endpoint traces (``TraceToLxc``)."""

TRACE_POINTS: dict[int, str] = {
    TRACE_TO_LXC: "to-endpoint",
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
"""Trace observation points by monitor number: the ``sub_type`` of a trace event (the numbers
of ``flow.TraceObservationPoint``, but for ``to-endpoint``)."""

POLICY_MATCH_TYPES: dict[int, str] = {0: "none", 1: "L3-Only", 2: "L3-L4", 3: "L4-Only", 4: "all"}
"""``policy_match_type`` names (``PolicyMatchType.String()``; metrics use them lower-cased)."""
