"""The datapath's event vocabulary, one home: numbered names with upstream's numbers.

Everything a datapath record or a flow carries as a number is named here and nowhere else:
the record types of the ring buffer (Cilium's monitor message types, ``pkg/monitor/api``, which
are also a flow's ``event_type.type``), verdicts, trace observation points (in the flow enum's
numbering and in the monitor's, where ``to-endpoint`` is 0), socket translation points, traffic
directions, policy match types, conntrack states, drop reasons (Cilium's ``DROP_*`` list and
Hubble's ``DropReason`` names), TCP flag bits, IP protocols and reserved identities. The C side
(``bpf/lib/*.h``) defines the numbers it emits once more, as ``#define``s:
``tests/bpf/test_event_vocabulary.py`` compiles the datapath and checks that every number C
emits is the one named here. C returns them as they are and user space only names them, so a
flow printed by ciliary reads the same as one printed by Hubble.

Hot paths compare plain ints (the ``MSG_*`` values, ``int(Enum.X)``): an enum attribute costs
ten times an int comparison, per event.
"""

from __future__ import annotations

import enum


class Verdict(enum.IntEnum):
    VERDICT_UNKNOWN = 0
    FORWARDED = 1
    DROPPED = 2
    ERROR = 3
    AUDIT = 4
    REDIRECTED = 5
    TRACED = 6
    TRANSLATED = 7


class ObservationPoint(enum.IntEnum):
    UNKNOWN_POINT = 0
    TO_PROXY = 1
    TO_HOST = 2
    TO_STACK = 3
    TO_OVERLAY = 4
    FROM_ENDPOINT = 5
    FROM_PROXY = 6
    FROM_HOST = 7
    FROM_STACK = 8
    FROM_OVERLAY = 9
    FROM_NETWORK = 10
    TO_NETWORK = 11
    FROM_CRYPTO = 12
    TO_CRYPTO = 13
    TO_ENDPOINT = 101

    @property
    def cli_name(self) -> str:
        """The hyphenated name Cilium's monitor and hubble print (``to-endpoint``)."""
        return self.name.lower().replace("_", "-")


TRACE_TO_LXC = 0
"""The monitor's number for to-endpoint traces (``TraceToLxc``): a trace flow's
``event_type.sub_type`` is the observation point but for this one (101 in the flow enum)."""

TRACE_POINTS: dict[int, str] = {
    (TRACE_TO_LXC if p is ObservationPoint.TO_ENDPOINT else int(p)): p.cli_name
    for p in ObservationPoint
    if p is not ObservationPoint.UNKNOWN_POINT
}
"""Trace observation points by monitor number (``sub_type`` of a trace event) → CLI name."""


class EventType(enum.IntEnum):
    """Monitor message types (``CiliumEventType.type``): the type byte every ring buffer record
    starts with (``EVENT_HDR_CHECK`` in ``bpf/lib/common.h``), and the ``event_type.type`` of the
    flow made from it. Records of the proxies (L7) and of the agent never cross the ring."""

    DROP = 1
    DEBUG = 2
    CAPTURE = 3
    TRACE = 4
    POLICY_VERDICT = 5
    RECORDER = 6
    TRACE_SOCK = 7
    """Socket-LB's translations (bpf/lib/trace_sock.h), Hubble's SOCK flows."""
    ACCESS_LOG = 129
    """L7 records of the proxies (upstream's ``MessageTypeAccessLog``), Hubble's L7 flows."""
    AGENT = 130


MSG_DROP = EventType.DROP.value
MSG_DEBUG = EventType.DEBUG.value
MSG_CAPTURE = EventType.CAPTURE.value
MSG_TRACE = EventType.TRACE.value
MSG_POLICY_VERDICT = EventType.POLICY_VERDICT.value
MSG_RECORDER = EventType.RECORDER.value
MSG_TRACE_SOCK = EventType.TRACE_SOCK.value
MSG_ACCESS_LOG = EventType.ACCESS_LOG.value
MSG_AGENT = EventType.AGENT.value

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
"""Message type names, as ``--type`` (hubble observe, ciliary monitor) spells them."""


class TrafficDirection(enum.IntEnum):
    """Hubble's ``TrafficDirection``: the datapath's direction of a policy decision."""

    TRAFFIC_DIRECTION_UNKNOWN = 0
    INGRESS = 1
    EGRESS = 2


class PolicyMatchType(enum.IntEnum):
    """What a deciding policy entry matched on (upstream's ``PolicyMatchType``)."""

    NONE = 0
    L3_ONLY = 1
    L3_L4 = 2
    L4_ONLY = 3
    ALL = 4


POLICY_MATCH_TYPES: dict[int, str] = {0: "none", 1: "L3-Only", 2: "L3-L4", 3: "L4-Only", 4: "all"}
"""``policy_match_type`` names (``PolicyMatchType.String()``; metrics use them lower-cased)."""


class L7FlowType(enum.IntEnum):
    """An L7 record's kind (Hubble's ``L7FlowType``; upstream's accesslog ``FlowType``)."""

    UNKNOWN_L7_TYPE = 0
    REQUEST = 1
    RESPONSE = 2
    SAMPLE = 3


class SockL4Protocol(enum.IntEnum):
    """A trace-sock record's ``l4_proto`` (upstream's C ``enum l4_protocol``, not IP numbers)."""

    UNKNOWN = 0
    TCP = 1
    UDP = 2


class SockXlatePoint(enum.IntEnum):
    """Where a trace-sock record was taken (Hubble's ``SocketTranslationPoint``): before or
    after the translation, forward (connect, sendmsg) or reverse (recvmsg, getpeername)."""

    SOCK_XLATE_POINT_UNKNOWN = 0
    SOCK_XLATE_POINT_PRE_DIRECTION_FWD = 1
    SOCK_XLATE_POINT_POST_DIRECTION_FWD = 2
    SOCK_XLATE_POINT_PRE_DIRECTION_REV = 3
    SOCK_XLATE_POINT_POST_DIRECTION_REV = 4

    @property
    def is_reverse(self) -> bool:
        return self in (
            SockXlatePoint.SOCK_XLATE_POINT_PRE_DIRECTION_REV,
            SockXlatePoint.SOCK_XLATE_POINT_POST_DIRECTION_REV,
        )

    @property
    def is_pre(self) -> bool:
        return self in (
            SockXlatePoint.SOCK_XLATE_POINT_PRE_DIRECTION_FWD,
            SockXlatePoint.SOCK_XLATE_POINT_PRE_DIRECTION_REV,
        )


class CTState(enum.IntEnum):
    NEW = 0
    ESTABLISHED = 1
    REPLY = 2
    RELATED = 3
    UNTRACKED = 4


class ReservedIdentity(enum.IntEnum):
    UNKNOWN = 0
    HOST = 1
    WORLD = 2
    UNMANAGED = 3
    HEALTH = 4
    INIT = 5
    REMOTE_NODE = 6
    KUBE_APISERVER = 7
    INGRESS = 8
    WORLD_IPV4 = 9
    WORLD_IPV6 = 10

    @property
    def label(self) -> str:
        """``reserved:host`` style label of this identity."""
        return "reserved:" + self.name.lower().replace("_", "-")


MIN_ALLOCATED_IDENTITY = 256
"""First identity number handed out for a label set (Cilium's MinimalNumericIdentity)."""

DROP_REASONS: dict[int, str] = {
    130: "Invalid source mac",
    131: "Invalid destination mac",
    132: "Invalid source ip",
    133: "Policy denied",
    134: "Invalid packet",
    135: "CT: Truncated or invalid header",
    136: "CT: Missing TCP ACK flag",
    137: "CT: Unknown L4 protocol",
    138: "CT: Can't create entry from packet",
    139: "Unsupported L3 protocol",
    140: "Missed tail call",
    141: "Error writing to packet",
    142: "Unknown L4 protocol",
    143: "Unknown ICMPv4 code",
    144: "Unknown ICMPv4 type",
    145: "Unknown ICMPv6 code",
    146: "Unknown ICMPv6 type",
    147: "Error retrieving tunnel key",
    148: "Error retrieving tunnel options",
    149: "Invalid Geneve option",
    150: "Unknown L3 target address",
    151: "Stale or unroutable IP",
    152: "No matching local container found",
    153: "Error while correcting L3 checksum",
    154: "Error while correcting L4 checksum",
    155: "CT: Map insertion failed",
    156: "Invalid IPv6 extension header",
    157: "IP fragmentation not supported",
    158: "Service backend not found",
    160: "No tunnel/encapsulation endpoint (datapath BUG!)",
    161: "Failed to insert into proxymap",
    162: "Reached EDT rate-limiting drop horizon",
    163: "Unknown connection tracking state",
    164: "Local host is unreachable",
    165: "No configuration available to perform policy decision",
    166: "Unsupported L2 protocol",
    167: "No mapping for NAT masquerade",
    168: "Unsupported protocol for NAT masquerade",
    169: "FIB lookup failed",
    170: "Encapsulation traffic is prohibited",
    171: "Invalid identity",
    172: "Unknown sender",
    173: "NAT not needed",
    174: "Is a ClusterIP",
    175: "First logical datagram fragment not found",
    176: "Forbidden ICMPv6 message",
    177: "Denied by LB src range check",
    178: "Socket lookup failed",
    179: "Socket assign failed",
    180: "Proxy redirection not supported for protocol",
    181: "Policy denied by denylist",
    182: "VLAN traffic disallowed by VLAN filter",
    183: "Incorrect VNI from VTEP",
    184: "Failed to update or lookup TC buffer",
    185: "No SID was found for the IP address",
    186: "SRv6 state was removed during tail call",
    187: "L3 translation from IPv4 to IPv6 failed (NAT46)",
    188: "L3 translation from IPv6 to IPv4 failed (NAT64)",
    189: "Authentication required",
    190: "No conntrack map found",
    191: "No nat map found",
    192: "Invalid ClusterID",
    193: "Unsupported packet protocol for DSR encapsulation",
    194: "No egress gateway found",
    196: "TTL exceeded",
    197: "No node ID found",
    202: "Host datapath not ready",
    203: "Endpoint policy program not available",
}

DROP_REASON_NAMES: dict[int, str] = {
    130: "INVALID_SOURCE_MAC",
    131: "INVALID_DESTINATION_MAC",
    132: "INVALID_SOURCE_IP",
    133: "POLICY_DENIED",
    134: "INVALID_PACKET_DROPPED",
    135: "CT_TRUNCATED_OR_INVALID_HEADER",
    136: "CT_MISSING_TCP_ACK_FLAG",
    137: "CT_UNKNOWN_L4_PROTOCOL",
    138: "CT_CANNOT_CREATE_ENTRY_FROM_PACKET",
    139: "UNSUPPORTED_L3_PROTOCOL",
    140: "MISSED_TAIL_CALL",
    141: "ERROR_WRITING_TO_PACKET",
    142: "UNKNOWN_L4_PROTOCOL",
    147: "ERROR_RETRIEVING_TUNNEL_KEY",
    150: "UNKNOWN_L3_TARGET_ADDRESS",
    155: "CT_MAP_INSERTION_FAILED",
    157: "IP_FRAGMENTATION_NOT_SUPPORTED",
    158: "SERVICE_BACKEND_NOT_FOUND",
    166: "UNSUPPORTED_L2_PROTOCOL",
    167: "NO_MAPPING_FOR_NAT_MASQUERADE",
    168: "UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE",
    169: "FIB_LOOKUP_FAILED",
    171: "INVALID_IDENTITY",
    177: "DENIED_BY_LB_SRC_RANGE_CHECK",
    178: "SOCKET_LOOKUP_FAILED",
    179: "SOCKET_ASSIGN_FAILED",
    180: "PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL",
    181: "POLICY_DENY",
    196: "TTL_EXCEEDED",
    202: "DROP_HOST_NOT_READY",
    203: "DROP_EP_NOT_READY",
}
"""Names of the Hubble ``DropReason`` enum for the reasons our datapath (and the proxy redirect,
178-180) can emit."""


DROP_POLICY = 133
"""No rule allows (default deny); C's ``DROP_POLICY``."""
DROP_POLICY_DENY = 181
"""A deny rule matched; C's ``DROP_POLICY_DENY``."""
POLICY_DROPS = (DROP_POLICY, DROP_POLICY_DENY)
"""The drop reasons of a policy decision."""


def drop_reason_text(code: int) -> str:
    """Human text for a drop reason, as ``cilium monitor`` prints it."""
    return DROP_REASONS.get(code, f"Unknown drop reason ({code})")


TCP_FLAG_BITS: dict[str, int] = {
    "FIN": 0x01,
    "SYN": 0x02,
    "RST": 0x04,
    "PSH": 0x08,
    "ACK": 0x10,
    "URG": 0x20,
    "ECE": 0x40,
    "CWR": 0x80,
}
"""The TCP header's flags byte (a trace record's ``tcp_flags``), lowest bit first; gopacket's
summary order is :data:`ciliary.hubble.gopacket.TCP_FLAG_ORDER`."""


def tcp_flag_names(flags: int) -> list[str]:
    """Names of the TCP flags set in the header byte ``flags`` (lowest bit first)."""
    return [name for name, bit in TCP_FLAG_BITS.items() if flags & bit]


IP_PROTOCOLS: dict[int, str] = {1: "ICMPv4", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}
