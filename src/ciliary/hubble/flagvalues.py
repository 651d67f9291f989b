"""The values of ``hubble observe``'s filter flags, parsed as upstream parses them.

One function per kind of value (identities by number or reserved name, workloads, TCP flags,
event types with sub-types, verdicts, drop reasons, ...), each raising :class:`FlagError` with
upstream's message. :mod:`ciliary.hubble.filterflags` says which flag takes which.
"""

from __future__ import annotations

from ciliary.core.flow import MESSAGE_TYPES, MSG_AGENT, MSG_TRACE, TRACE_POINTS
from ciliary.hubble.api.flow import flow_pb2


class FlagError(ValueError):
    """A filter/selector flag that upstream would reject; ``str()`` is the one-line reason."""


# Reserved identity names ``--identity`` accepts (Cilium's GetAllReservedIdentities order).
RESERVED_IDENTITIES: dict[str, int] = {
    "host": 1,
    "world": 2,
    "unmanaged": 3,
    "health": 4,
    "init": 5,
    "remote-node": 6,
    "kube-apiserver": 7,
    "ingress": 8,
    "world-ipv4": 9,
    "world-ipv6": 10,
}

AGENT_EVENT_SUBTYPES: dict[str, int] = {
    "unspecified": 0,
    "message": 1,
    "agent-started": 2,
    "endpoint-regenerate-success": 3,
    "endpoint-regenerate-failure": 4,
    "policy-updated": 5,
    "policy-deleted": 6,
    "endpoint-created": 7,
    "endpoint-deleted": 8,
    "ipcache-upserted": 9,
    "ipcache-deleted": 10,
}

_TCP_FLAGS = ("SYN", "FIN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")


def parse_identity(value: str) -> int:
    """A reserved identity name (``world``) or a number (``12345``, ``0x3039``)."""
    if value in RESERVED_IDENTITIES:
        return RESERVED_IDENTITIES[value]
    try:
        number = int(value, 0)
    except ValueError:
        number = -1
    if not 0 <= number < 2**32:
        names = " ".join(RESERVED_IDENTITIES)
        raise FlagError(f"invalid security identity, expected one of [{names}] or a numeric value")
    return number


def parse_workload(value: str) -> flow_pb2.Workload:
    """``name``, ``Kind/name`` or ``Kind/`` (any workload of that kind)."""
    if not value:
        return flow_pb2.Workload()
    kind, sep, name = value.partition("/")
    if not sep:
        return flow_pb2.Workload(name=value)
    return flow_pb2.Workload(kind=kind, name=name)


def parse_tcp_flags(value: str) -> flow_pb2.TCPFlags:
    flags = flow_pb2.TCPFlags()
    for part in value.split(","):
        name = part.upper()
        if name not in _TCP_FLAGS:
            raise FlagError(f"unknown tcp flag: {part}")
        setattr(flags, name, True)
    return flags


def parse_ip_version(value: str) -> int:
    v = value.lower()
    if v in ("4", "v4", "ipv4", "ip4"):
        return flow_pb2.IPv4
    if v in ("6", "v6", "ipv6", "ip6"):
        return flow_pb2.IPv6
    return flow_pb2.IP_NOT_USED


def _go_parse_uint(text: str, bits: int = 32) -> int:
    if not text.isdigit():
        raise FlagError(f'strconv.ParseUint: parsing "{text}": invalid syntax')
    number = int(text)
    if number >= 2**bits:
        raise FlagError(f'strconv.ParseUint: parsing "{text}": value out of range')
    return number


def parse_event_type(value: str) -> flow_pb2.EventTypeFilter:
    """``drop``, ``trace:to-endpoint``, ``4:2``, ``agent:policy-updated`` → EventTypeFilter."""
    name, sep, sub = value.partition(":")
    filt = flow_pb2.EventTypeFilter()
    known = MESSAGE_TYPES.get(name)
    if known is not None:
        filt.type = known
    else:
        try:
            filt.type = _go_parse_uint(name)
        except FlagError as err:
            raise FlagError(
                f"unable to parse type '{name}', not a known type name and unable to parse "
                f"as numeric value: {err}"
            ) from err
    if sep:
        if filt.type == MSG_TRACE:
            for code, point in TRACE_POINTS.items():
                if point == sub:
                    filt.match_sub_type, filt.sub_type = True, code
                    break
        elif filt.type == MSG_AGENT and sub in AGENT_EVENT_SUBTYPES:
            filt.match_sub_type, filt.sub_type = True, AGENT_EVENT_SUBTYPES[sub]
        if not filt.match_sub_type:
            try:
                filt.sub_type = _go_parse_uint(sub)
            except FlagError as err:
                raise FlagError(
                    f"unable to parse event sub-type '{sub}', not a known sub-type name and "
                    f"unable to parse as numeric value: {err}"
                ) from err
            filt.match_sub_type = True
    return filt


def text(value: str) -> str:
    """A value taken as it is."""
    return value


def parse_verdict(value: str) -> int:
    try:
        return flow_pb2.Verdict.Value(value)
    except ValueError:
        raise FlagError(f"invalid --verdict value: {value}") from None


def parse_drop_reason(value: str) -> int:
    if not value:
        raise FlagError("empty --drop-reason-desc value")
    try:
        return flow_pb2.DropReason.Value(value)
    except ValueError:
        raise FlagError(f"invalid --drop-reason-desc value: {value}") from None


def parse_http_header(value: str) -> flow_pb2.HTTPHeader:
    key, sep, hval = value.partition(":")
    if not sep:
        raise FlagError(f'invalid http-header value "{value}", expected name:value')
    return flow_pb2.HTTPHeader(key=key, value=hval)


def parse_ip_trace_id(value: str) -> int:
    if value == "0":
        raise FlagError("invalid --ip-trace-id value; must be greater than 0")
    try:
        return _go_parse_uint(value, 64)
    except FlagError as err:
        raise FlagError(f"invalid --ip-trace-id value: {err}") from None


def parse_traffic_direction(value: str) -> int:
    td = value.lower()
    if td not in ("ingress", "egress"):
        raise FlagError(f"{td}: invalid traffic direction, expected ingress or egress")
    return flow_pb2.INGRESS if td == "ingress" else flow_pb2.EGRESS
