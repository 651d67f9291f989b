"""Packet vocabulary as upstream's packet decoder (gopacket) names it.

Hubble's summaries (``ICMPv4 DestinationUnreachable(Port)``, ``TCP Flags: SYN, ACK``), its
``hubble_icmp_total`` labels and ``cilium monitor``'s lines all spell ICMP types and TCP flags
the way Go's gopacket prints them. The agent's flow decoder, the metrics, the flow printer and
``ciliary monitor`` read them from here so that they can never disagree on a name.
"""

from __future__ import annotations

from collections.abc import Mapping

from ciliary.core.flow import TCP_FLAG_BITS

IcmpTable = Mapping[int, tuple[str, tuple[str, ...] | None]]
"""ICMP type → (type name, code names by code or None when the type has no named codes)."""

ICMP4: IcmpTable = {
    0: ("EchoReply", None),
    3: ("DestinationUnreachable", (
        "Net", "Host", "Protocol", "Port", "FragmentationNeeded", "SourceRoutingFailed",
        "NetUnknown", "HostUnknown", "SourceIsolated", "NetAdminProhibited",
        "HostAdminProhibited", "NetTOS", "HostTOS", "CommAdminProhibited", "HostPrecedence",
        "PrecedenceCutoff",
    )),
    4: ("SourceQuench", None),
    5: ("Redirect", ("Net", "Host", "TOS+Net", "TOS+Host")),
    8: ("EchoRequest", None),
    9: ("RouterAdvertisement", None),
    10: ("RouterSolicitation", None),
    11: ("TimeExceeded", ("TTLExceeded", "FragmentReassemblyTimeExceeded")),
    12: ("ParameterProblem", ("PointerIndicatesError", "MissingOption", "BadLength")),
    13: ("TimestampRequest", None),
    14: ("TimestampReply", None),
    15: ("InfoRequest", None),
    16: ("InfoReply", None),
    17: ("AddressMaskRequest", None),
    18: ("AddressMaskReply", None),
}  # fmt: skip
"""ICMPv4 type (and code) names (gopacket's ``ICMPv4TypeCode.String()``)."""

ICMP6: IcmpTable = {
    1: ("DestinationUnreachable", (
        "NoRouteToDst", "AdminProhibited", "BeyondScopeOfSrc", "AddressUnreachable",
        "PortUnreachable", "SrcAddressFailedPolicy", "RejectRouteToDst",
    )),
    2: ("PacketTooBig", None),
    3: ("TimeExceeded", ("HopLimitExceeded", "FragmentReassemblyTimeExceeded")),
    # sic: gopacket names code 2 like code 1; kept so that summaries match upstream's
    4: ("ParameterProblem", (
        "ErroneousHeaderField", "UnrecognizedNextHeader", "UnrecognizedNextHeader",
    )),
    128: ("EchoRequest", None),
    129: ("EchoReply", None),
    133: ("RouterSolicitation", None),
    134: ("RouterAdvertisement", None),
    135: ("NeighborSolicitation", None),
    136: ("NeighborAdvertisement", None),
    137: ("Redirect", None),
}  # fmt: skip
"""ICMPv6 type (and code) names (gopacket's ``ICMPv6TypeCode.String()``)."""


def icmp_text(table: IcmpTable, typ: int, code: int) -> str:
    """An ICMP type/code as gopacket prints it: ``EchoRequest``, ``DestinationUnreachable(Port)``,
    ``Redirect(Code: 9)`` for an unnamed code, ``42(0)`` for an unknown type."""
    known = table.get(typ)
    if known is None:
        return f"{typ}({code})"
    name, codes = known
    if codes is None:
        return name if code == 0 else f"{name}(Code: {code})"
    return f"{name}({codes[code]})" if code < len(codes) else f"{name}(Code: {code})"


ICMP4_TYPE_NAMES: dict[int, str] = {
    0: "EchoReply",
    3: "DestinationUnreachable",
    5: "Redirect",
    8: "EchoRequest",
    11: "TimeExceeded",
    12: "ParameterProblem",
}
"""The ICMPv4 types the type-only renderings name (a flow without a ``Summary``, a ``cilium
monitor`` line); any other type is printed by number."""

ICMP6_TYPE_NAMES: dict[int, str] = {
    1: "DestinationUnreachable",
    2: "PacketTooBig",
    3: "TimeExceeded",
    4: "ParameterProblem",
    128: "EchoRequest",
    129: "EchoReply",
    133: "RouterSolicitation",
    134: "RouterAdvertisement",
    135: "NeighborSolicitation",
    136: "NeighborAdvertisement",
}
"""The ICMPv6 counterpart of :data:`ICMP4_TYPE_NAMES`."""

TCP_FLAG_ORDER: tuple[str, ...] = ("SYN", "ACK", "RST", "FIN", "PSH", "URG", "ECE", "CWR", "NS")
"""Summary order of every flag ``flow.TCPFlags`` has (gopacket's order, not the wire's; ``NS``
lives outside the flags byte)."""

TCP_SUMMARY_FLAGS: dict[str, int] = {n: TCP_FLAG_BITS[n] for n in TCP_FLAG_ORDER if n != "NS"}
"""The flags byte's flags (:data:`ciliary.core.flow.TCP_FLAG_BITS`) in summary order."""

DNS_RCODE_NAMES: dict[int, str] = {
    0: "No Error",
    1: "Format Error",
    2: "Server Failure",
    3: "Non-Existent Domain",
    4: "Not Implemented",
    5: "Query Refused",
    6: "Name Exists when it should not",
    7: "RR Set Exists when it should not",
    8: "RR Set that should exist does not",
    9: "Not Authorized",
    10: "Name not contained in zone",
    11: "DSO-TYPE Not Implemented",
    16: "Bad OPT Version",
    17: "Key not recognized",
    18: "Signature out of time window",
    19: "Bad TKEY Mode",
    20: "Duplicate key name",
    21: "Algorithm not supported",
    22: "Bad Truncation",
    23: "Bad/missing Server Cookie",
}
"""DNS response code names as Hubble spells them: the ``rcode`` label of
``hubble_dns_responses_total`` (upstream's metrics table) and a DNS answer's summary
``RCode: Query Refused`` (gopacket's ``DNSResponseCode.String()``: the same names but for 9,
which gopacket calls "Server Not Authoritative for zone")."""
