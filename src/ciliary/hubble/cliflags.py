"""``hubble observe`` flags → ``GetFlowsRequest``, with upstream's exact semantics.

The filter flags are order-sensitive, which is why they are applied here as an ordered list of
``(flag, value)`` pairs rather than as parsed options:

* ``--not`` sends only the *next* filter flag to the denylist (``--not --not`` and a trailing
  ``--not`` are errors);
* each flag is one field of a ``FlowFilter``; repeating a flag ORs its values, different flags
  AND. A bidirectional flag (``--pod``, ``--ip``, ``--label``, ``--port``, ``--identity``,
  ``--fqdn``, ``--service``, ``--workload``, ``--cluster``) builds two filters — one on the
  source field, one on the destination field — and every other flag is added to both, so
  ``--pod x --verdict DROPPED`` means "(from x OR to x) AND dropped";
* ``--namespace``/``--from-namespace``/``--to-namespace`` (and ``--all-namespaces``) qualify
  pod and service names when the filters are materialised (``--namespace n`` alone becomes
  ``source_pod: ["n/"]`` OR ``destination_pod: ["n/"]``);
* some flags cannot be combined (``--ip`` with ``--fqdn``, ``--port`` with ``--to-port``, ...):
  ``filters --X and --Y cannot be combined``.

Also here: ``--since``/``--until`` parsing (Go durations like ``1h30m`` or absolute times),
``--last/--first/--all/--follow`` defaults and checks, ``--allowlist``/``--denylist`` raw JSON
filters and the ``--print-raw-filters`` YAML. Nothing here does I/O, so the mapping is tested
as a table.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.api.observer import observer_pb2
from ciliary.hubble.printer import MESSAGE_TYPES, TRACE_POINTS, message_json

DEFAULT_LAST = 20
"""Flows printed by a plain ``observe`` (upstream's ``FlowPrintCount``)."""

ALL_FLOWS = 2**64 - 1
"""``--all`` asks for ``number = uint64 max``."""

MSG_TRACE, MSG_AGENT = 4, 130


class FlagError(ValueError):
    """A filter/selector flag that upstream would reject; ``str()`` is the one-line reason."""


@dataclass(frozen=True)
class FilterFlag:
    """One filter flag of ``observe``: its name, short form, and whether it takes a value."""

    name: str
    help: str
    short: str | None = None
    takes_value: bool = True
    implicit: str = "true"
    """Value used when the flag takes none (``-4`` → ``v4``, ``--all-namespaces`` → ``true``)."""


def _bidi(
    noun: str, example: str = "", short: str | None = None
) -> tuple[FilterFlag, FilterFlag, FilterFlag]:
    ex = f" (e.g. {example})" if example else ""
    return (
        FilterFlag(f"from-{noun}", f"flows originating at the given {noun}{ex}"),
        FilterFlag(
            noun, f"flows related to the given {noun} (source or destination){ex}", short=short
        ),
        FilterFlag(f"to-{noun}", f"flows terminating at the given {noun}{ex}"),
    )


FILTER_FLAGS: tuple[FilterFlag, ...] = (
    FilterFlag(
        "not",
        "reverses the next filter to be a denylist, e.g. --not --from-ip 2.2.2.2",
        takes_value=False,
    ),
    FilterFlag("uuid", "show the only flow matching this unique flow identifier, if any"),
    FilterFlag("node-name", 'flows observed on the given node names (e.g. "k8s*")'),
    FilterFlag("node-label", "flows observed on nodes matching the label filter"),
    FilterFlag("from-cluster", "flows originating in the given cluster"),
    FilterFlag("cluster", "flows related to the given cluster names"),
    FilterFlag("to-cluster", "flows terminating in the given cluster"),
    FilterFlag(
        "protocol", "L4/L7 protocol (icmp, icmpv4, icmpv6, sctp, tcp, udp, dns, http, kafka)"
    ),
    FilterFlag("tcp-flags", 'TCP flags (e.g. "syn", "syn,ack", "fin")'),
    FilterFlag(
        "type",
        "event type TYPE[:SUBTYPE]: capture, drop, l7, policy-verdict, "
        "trace[:to-endpoint|to-proxy|to-host|to-stack|to-overlay|to-network|"
        "from-endpoint|from-proxy|from-host|from-stack|from-overlay|from-network|"
        "from-crypto|to-crypto], trace-sock",
        short="t",
    ),
    FilterFlag(
        "verdict", "verdict [FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR, TRACED, TRANSLATED]"
    ),
    FilterFlag("drop-reason-desc", 'drop reason (e.g. "POLICY_DENIED")'),
    FilterFlag("http-status", 'HTTP status code prefix (e.g. "404", "5+")'),
    FilterFlag("http-method", 'HTTP method (e.g. "get", "post")'),
    FilterFlag("http-path", 'HTTP path regular expression (e.g. "/page/\\d+")'),
    FilterFlag("http-url", "HTTP URL regular expression"),
    FilterFlag("http-header", 'HTTP header key:value (e.g. "foo:bar")'),
    FilterFlag("trace-id", "trace ID"),
    FilterFlag("ip-trace-id", "IP trace ID"),
    *_bidi("fqdn", '"*.cilium.io"'),
    FilterFlag("from-ip", "flows originating at the given IP address or CIDR"),
    FilterFlag("snat-ip", "flows SNATed with the given IP address or CIDR"),
    FilterFlag("ip", "flows originating or terminating at the given IP address or CIDR"),
    FilterFlag("to-ip", "flows terminating at the given IP address or CIDR"),
    FilterFlag("ipv4", "only IPv4 flows", short="4", takes_value=False, implicit="v4"),
    FilterFlag("ipv6", "only IPv6 flows", short="6", takes_value=False, implicit="v6"),
    FilterFlag("ip-version", 'only IPv4, IPv6 or non-IP flows ("v4", "v6", "none")'),
    FilterFlag("from-pod", "flows originating in the given pod name prefix ([namespace/]<pod>)"),
    FilterFlag("pod", "flows related to the given pod name prefix ([namespace/]<pod>)"),
    FilterFlag("to-pod", "flows terminating in the given pod name prefix ([namespace/]<pod>)"),
    FilterFlag("from-namespace", "flows originating in the given namespace"),
    FilterFlag("namespace", "flows related to the given namespace", short="n"),
    FilterFlag("to-namespace", "flows terminating in the given namespace"),
    FilterFlag("from-all-namespaces", "flows originating in any namespace", takes_value=False),
    FilterFlag("all-namespaces", "flows in any namespace", short="A", takes_value=False),
    FilterFlag("to-all-namespaces", "flows terminating in any namespace", takes_value=False),
    *_bidi("label", '"key1=value1", "reserved:world"', short="l"),
    *_bidi("service", "[namespace/]<svc-name>"),
    *_bidi("port", "8080"),
    *_bidi("workload", "[Kind/]name"),
    *_bidi("identity", 'a number or a reserved name: "world", "host", ...'),
    FilterFlag("traffic-direction", "traffic direction (ingress or egress)"),
    FilterFlag("cel-expression", "filter flows using the given CEL expression"),
    FilterFlag("interface", "flows observed at the given interface name (e.g. eth0)"),
)

# Flags that cannot be given together (upstream's conflict groups, same order).
_CONFLICTS: tuple[tuple[str, ...], ...] = (
    (
        "from-fqdn",
        "from-ip",
        "ip",
        "fqdn",
        "from-namespace",
        "namespace",
        "from-all-namespaces",
        "all-namespaces",
    ),
    ("from-fqdn", "from-ip", "ip", "fqdn", "from-pod", "pod"),
    (
        "to-fqdn",
        "to-ip",
        "ip",
        "fqdn",
        "to-namespace",
        "namespace",
        "to-all-namespaces",
        "all-namespaces",
    ),
    ("to-fqdn", "to-ip", "ip", "fqdn", "to-pod", "pod"),
    ("to-pod", "namespace", "all-namespaces"),
    ("from-pod", "namespace", "all-namespaces"),
    ("to-service", "namespace", "all-namespaces"),
    ("from-service", "namespace", "all-namespaces"),
    ("label", "from-label"),
    ("label", "to-label"),
    ("service", "from-service"),
    ("service", "to-service"),
    ("port", "to-port"),
    ("port", "from-port"),
    ("identity", "to-identity"),
    ("identity", "from-identity"),
    ("workload", "to-workload"),
    ("workload", "from-workload"),
)

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

# bidirectional flag → (source field, destination field)
_BIDI_FIELDS: dict[str, tuple[str, str]] = {
    "fqdn": ("source_fqdn", "destination_fqdn"),
    "pod": ("source_pod", "destination_pod"),
    "ip": ("source_ip", "destination_ip"),
    "label": ("source_label", "destination_label"),
    "service": ("source_service", "destination_service"),
    "port": ("source_port", "destination_port"),
    "cluster": ("source_cluster_name", "destination_cluster_name"),
}
# one-directional / plain string flags → field
_STRING_FIELDS: dict[str, str] = {
    "uuid": "uuid",
    "from-fqdn": "source_fqdn",
    "to-fqdn": "destination_fqdn",
    "from-pod": "source_pod",
    "to-pod": "destination_pod",
    "from-ip": "source_ip",
    "snat-ip": "source_ip_xlated",
    "to-ip": "destination_ip",
    "from-label": "source_label",
    "to-label": "destination_label",
    "from-service": "source_service",
    "to-service": "destination_service",
    "from-port": "source_port",
    "to-port": "destination_port",
    "trace-id": "trace_id",
    "http-status": "http_status_code",
    "http-method": "http_method",
    "http-path": "http_path",
    "http-url": "http_url",
    "protocol": "protocol",
    "node-name": "node_name",
    "node-label": "node_labels",
    "from-cluster": "source_cluster_name",
    "to-cluster": "destination_cluster_name",
}


# --------------------------------------------------------------------------- value parsers


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


# --------------------------------------------------------------------------- filter builder


def _namespace_of(name: str) -> str:
    parts = name.split("/")
    return parts[0] if len(parts) > 1 else ""


def _add_namespaces(names: Sequence[str], namespaces: Sequence[str]) -> list[str]:
    if not namespaces or not names:
        return list(names)
    out: list[str] = []
    for name in names:
        if "/" in name:
            out.append(name)
            continue
        out.extend(f"{ns}/{name}" for ns in namespaces)
    return out


def _ns_conflicts(namespaces: Sequence[str], names: Sequence[str]) -> list[str]:
    return [
        f'namespace conflict: "{ns}" does not contain "{name}"'
        for ns in namespaces
        for name in names
        if (nn := _namespace_of(name)) and nn != ns
    ][:1]


def _inconsistent(pods: Sequence[str], services: Sequence[str]) -> list[str]:
    for pod in pods:
        pod_ns = _namespace_of(pod)
        if not pod_ns:
            continue
        for svc in services:
            if _namespace_of(svc) != pod_ns:
                return [f'namespace of service "{svc}" conflict with pod "{pod_ns}"']
    return []


Update = Callable[[flow_pb2.FlowFilter], None]


@dataclass
class _Tracker:
    """One list (allow or deny): the filter pair ``left OR right`` plus namespace modifiers."""

    left: flow_pb2.FlowFilter | None = None
    right: flow_pb2.FlowFilter | None = None
    ns: list[str] = field(default_factory=list)
    src_ns: list[str] = field(default_factory=list)
    dst_ns: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def apply_left(self, update: Update) -> None:
        if self.left is None:
            self.left = flow_pb2.FlowFilter()
        update(self.left)

    def apply_right(self, update: Update) -> None:
        if self.right is None:
            self.right = flow_pb2.FlowFilter()
        update(self.right)

    def apply(self, update: Update) -> None:
        self.apply_left(update)
        self.apply_right(update)

    def check_conflicts(self) -> None:
        for group in _CONFLICTS:
            for flag in group:
                if flag not in self.changed:
                    continue
                for other in group:
                    if other != flag and other in self.changed:
                        raise FlagError(f"filters --{flag} and --{other} cannot be combined")

    def check_namespaces(self) -> None:
        errors: list[str] = []
        for ff in (self.left, self.right):
            if ff is None:
                continue
            errors += _ns_conflicts(self.ns, ff.source_pod)
            errors += _ns_conflicts(self.ns, ff.source_service)
            errors += _ns_conflicts(self.ns, ff.destination_pod)
            errors += _ns_conflicts(self.ns, ff.destination_service)
            errors += _ns_conflicts(self.src_ns, ff.source_pod)
            errors += _ns_conflicts(self.src_ns, ff.source_service)
            errors += _ns_conflicts(self.dst_ns, ff.destination_pod)
            errors += _ns_conflicts(self.dst_ns, ff.destination_service)
            errors += _inconsistent(ff.source_pod, ff.source_service)
            errors += _inconsistent(ff.destination_pod, ff.destination_service)
            if errors:
                raise FlagError(errors[0])

    def flow_filters(self) -> list[flow_pb2.FlowFilter]:
        """The materialised filters: ``[left]`` when both sides are equal, else both."""
        if self.left is None and self.right is None and not (self.ns or self.src_ns or self.dst_ns):
            return []
        left = copy.deepcopy(self.left) if self.left is not None else flow_pb2.FlowFilter()
        right = copy.deepcopy(self.right) if self.right is not None else flow_pb2.FlowFilter()

        def apply_src(ff: flow_pb2.FlowFilter, nss: Sequence[str]) -> None:
            if not ff.source_pod and not ff.source_service:
                ff.source_pod.append("")
            pods = _add_namespaces(ff.source_pod, nss)
            svcs = _add_namespaces(ff.source_service, nss)
            del ff.source_pod[:], ff.source_service[:]
            ff.source_pod.extend(pods)
            ff.source_service.extend(svcs)

        def apply_dst(ff: flow_pb2.FlowFilter, nss: Sequence[str]) -> None:
            if not ff.destination_pod and not ff.destination_service:
                ff.destination_pod.append("")
            pods = _add_namespaces(ff.destination_pod, nss)
            svcs = _add_namespaces(ff.destination_service, nss)
            del ff.destination_pod[:], ff.destination_service[:]
            ff.destination_pod.extend(pods)
            ff.destination_service.extend(svcs)

        if self.dst_ns:
            apply_dst(left, self.dst_ns)
            apply_dst(right, self.dst_ns)
        if self.src_ns:
            apply_src(left, self.src_ns)
            apply_src(right, self.src_ns)
        if self.ns:
            apply_src(left, self.ns)
            apply_dst(right, self.ns)
        return [left] if left == right else [left, right]


class FilterBuilder:
    """Feeds ``(flag, value)`` pairs in command-line order; yields allow/deny filter lists."""

    def __init__(self) -> None:
        self.allow: _Tracker | None = None
        self.deny: _Tracker | None = None
        self.negate_next = False

    def add(self, name: str, value: str) -> None:
        """Applies one flag; FlagError names the flag and value like pflag does."""
        try:
            self._add(name, value)
        except FlagError as err:
            if name == "not":
                raise
            raise FlagError(f'invalid argument "{value}" for "--{name}" flag: {err}') from None

    def _add(self, name: str, value: str) -> None:
        if name == "not":
            if self.negate_next:
                raise FlagError("consecutive --not statements")
            self.negate_next = True
            return
        if self.negate_next:
            self.negate_next = False
            if self.deny is None:
                self.deny = _Tracker()
            tracker = self.deny
        else:
            if self.allow is None:
                self.allow = _Tracker()
            tracker = self.allow
        if name not in tracker.changed:
            tracker.changed.append(name)
        tracker.check_conflicts()
        _apply(tracker, name, value)
        tracker.check_namespaces()

    def finish(self) -> tuple[list[flow_pb2.FlowFilter], list[flow_pb2.FlowFilter]]:
        """(allowlist, denylist); FlagError on a trailing ``--not``."""
        if self.negate_next:
            raise FlagError("trailing --not found in the arguments")
        allow = self.allow.flow_filters() if self.allow else []
        deny = self.deny.flow_filters() if self.deny else []
        return allow, deny


def _append(field_name: str, value: object) -> Update:
    def update(ff: flow_pb2.FlowFilter) -> None:
        getattr(ff, field_name).append(value)

    return update


def _append_msg(field_name: str, msg: object) -> Update:
    def update(ff: flow_pb2.FlowFilter) -> None:
        getattr(ff, field_name).append(msg)

    return update


def _apply(t: _Tracker, name: str, value: str) -> None:
    if name in _BIDI_FIELDS:
        src, dst = _BIDI_FIELDS[name]
        t.apply_left(_append(src, value))
        t.apply_right(_append(dst, value))
    elif name in _STRING_FIELDS:
        t.apply(_append(_STRING_FIELDS[name], value))
    elif name in ("ipv4", "ipv6", "ip-version"):
        version = {"ipv4": flow_pb2.IPv4, "ipv6": flow_pb2.IPv6}.get(name)
        t.apply(_append("ip_version", parse_ip_version(value) if version is None else version))
    elif name == "namespace":
        t.ns.append(value)
    elif name == "from-namespace":
        t.src_ns.append(value)
    elif name == "to-namespace":
        t.dst_ns.append(value)
    elif name == "all-namespaces":
        t.ns.append("")
    elif name == "from-all-namespaces":
        t.src_ns.append("")
    elif name == "to-all-namespaces":
        t.dst_ns.append("")
    elif name == "verdict":
        try:
            verdict = flow_pb2.Verdict.Value(value)
        except ValueError:
            raise FlagError(f"invalid --verdict value: {value}") from None
        t.apply(_append("verdict", verdict))
    elif name == "drop-reason-desc":
        if not value:
            raise FlagError("empty --drop-reason-desc value")
        try:
            reason = flow_pb2.DropReason.Value(value)
        except ValueError:
            raise FlagError(f"invalid --drop-reason-desc value: {value}") from None
        t.apply(_append("drop_reason_desc", reason))
    elif name == "http-header":
        key, sep, hval = value.partition(":")
        if not sep:
            raise FlagError(f'invalid http-header value "{value}", expected name:value')
        t.apply(_append_msg("http_header", flow_pb2.HTTPHeader(key=key, value=hval)))
    elif name == "ip-trace-id":
        if value == "0":
            raise FlagError("invalid --ip-trace-id value; must be greater than 0")
        try:
            trace_id = _go_parse_uint(value, 64)
        except FlagError as err:
            raise FlagError(f"invalid --ip-trace-id value: {err}") from None
        t.apply(_append("ip_trace_id", trace_id))
    elif name == "type":
        t.apply(_append_msg("event_type", parse_event_type(value)))
    elif name == "workload":
        wl = parse_workload(value)
        t.apply_left(_append_msg("source_workload", wl))
        t.apply_right(_append_msg("destination_workload", wl))
    elif name in ("from-workload", "to-workload"):
        target = "source_workload" if name == "from-workload" else "destination_workload"
        t.apply(_append_msg(target, parse_workload(value)))
    elif name == "identity":
        ident = parse_identity(value)
        t.apply_left(_append("source_identity", ident))
        t.apply_right(_append("destination_identity", ident))
    elif name in ("from-identity", "to-identity"):
        target = "source_identity" if name == "from-identity" else "destination_identity"
        t.apply(_append(target, parse_identity(value)))
    elif name == "tcp-flags":
        t.apply(_append_msg("tcp_flags", parse_tcp_flags(value)))
    elif name == "traffic-direction":
        td = value.lower()
        if td not in ("ingress", "egress"):
            raise FlagError(f"{td}: invalid traffic direction, expected ingress or egress")
        direction = flow_pb2.INGRESS if td == "ingress" else flow_pb2.EGRESS
        t.apply(_append("traffic_direction", direction))
    elif name == "cel-expression":

        def cel(ff: flow_pb2.FlowFilter) -> None:
            ff.experimental.cel_expression.append(value)

        t.apply(cel)
    elif name == "interface":
        t.apply(_append_msg("interface", flow_pb2.NetworkInterface(name=value)))
    else:
        raise FlagError(f"unknown filter flag --{name}")


def build_filters(
    pairs: Sequence[tuple[str, str]],
) -> tuple[list[flow_pb2.FlowFilter], list[flow_pb2.FlowFilter]]:
    """(allowlist, denylist) for filter flags given in command-line order."""
    builder = FilterBuilder()
    for name, value in pairs:
        builder.add(name, value)
    return builder.finish()


# --------------------------------------------------------------------------- raw filters


def parse_raw_filters(texts: Sequence[str]) -> list[flow_pb2.FlowFilter]:
    """JSON FlowFilters (proto field or JSON names), several objects per string allowed."""
    out: list[flow_pb2.FlowFilter] = []
    decoder = json.JSONDecoder()
    for text in texts:
        pos = 0
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos >= len(text):
                break
            try:
                obj, pos = decoder.raw_decode(text, pos)
                out.append(json_format.ParseDict(obj, flow_pb2.FlowFilter()))
            except (ValueError, json_format.ParseError) as err:
                raise FlagError(f"failed to decode '{text}': {err}") from None
    return out


def raw_filters_yaml(req: observer_pb2.GetFlowsRequest) -> str:
    """``--print-raw-filters``: the request's filters as YAML that ``--allowlist``/
    ``--denylist`` accept back (one JSON FlowFilter per item)."""

    def items(filters: Sequence[flow_pb2.FlowFilter]) -> list[str]:
        return ["    - '" + message_json(f).replace("'", "''") + "'" for f in filters]

    lines: list[str] = []
    if req.whitelist:
        lines += ["allowlist:", *items(req.whitelist)]
    if req.blacklist:
        lines += ["denylist:", *items(req.blacklist)]
    return "\n".join(lines) + "\n" if lines else "{}\n"


# --------------------------------------------------------------------------- time


_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> int | None:
    """Go's ``time.ParseDuration`` in nanoseconds (``1h30m``, ``90s``, ``1.5h``), else None."""
    s = text
    sign = 1
    if s[:1] in "+-" and s:
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        return None
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            return None
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return sign * int(total)


_ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
_YMD = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_YMDH = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2})(?::(\d{2}))?(Z|[+-]\d{2}:\d{2})")
_RFC1123Z = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}")


def parse_time(text: str, now_ns: int | None = None) -> int:
    """``--since``/``--until`` value → nanoseconds since the epoch.

    A Go duration means that long ago (``5m``, ``1h30m``); otherwise one of upstream's layouts:
    ``2006-01-02``, ``2006-01-02T15Z07:00``, ``2006-01-02T15:04Z07:00``, RFC 3339 with optional
    fraction, RFC 1123 with numeric zone.
    """
    now = time.time_ns() if now_ns is None else now_ns
    duration = parse_go_duration(text)
    if duration is not None:
        return now - duration
    try:
        if _ISO.fullmatch(text):
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
            frac = text.split(".", 1)[1] if "." in text else ""
            digits = re.match(r"\d*", frac)
            nanos = int((digits.group(0) if digits else "").ljust(9, "0")[:9] or "0")
            whole = int(dt.replace(microsecond=0).timestamp())
            return whole * 1_000_000_000 + nanos
        if m := _YMD.fullmatch(text):
            dt = datetime(int(m[1]), int(m[2]), int(m[3]), tzinfo=UTC)
            return int(dt.timestamp()) * 1_000_000_000
        if m := _YMDH.fullmatch(text):
            zone = "+00:00" if m[4] == "Z" else m[4]
            dt = datetime.fromisoformat(f"{m[1]}T{m[2]}:{m[3] or '00'}:00{zone}")
            return int(dt.timestamp()) * 1_000_000_000
        if _RFC1123Z.fullmatch(text):
            return int(parsedate_to_datetime(text).timestamp()) * 1_000_000_000
    except ValueError:
        pass
    raise FlagError(f"failed to convert {text} to time")


def timestamp_from_ns(ns: int) -> Timestamp:
    seconds, nanos = divmod(ns, 1_000_000_000)
    return Timestamp(seconds=seconds, nanos=nanos)


# --------------------------------------------------------------------------- the request


@dataclass(frozen=True)
class Selector:
    """``--last``, ``--first``, ``--all``, ``--follow``, ``--since``, ``--until``."""

    last: int = 0
    first: int = 0
    all: bool = False
    follow: bool = False
    since: str = ""
    until: str = ""
    from_file: bool = False
    """Reading ``--input-file``: no implicit ``--last 20``."""


def build_request(
    selector: Selector,
    *,
    allow: Sequence[flow_pb2.FlowFilter] = (),
    deny: Sequence[flow_pb2.FlowFilter] = (),
    raw_allow: Sequence[str] = (),
    raw_deny: Sequence[str] = (),
    now_ns: int | None = None,
) -> observer_pb2.GetFlowsRequest:
    """The GetFlowsRequest upstream's ``observe`` sends; FlagError with its messages."""
    first, last = selector.first > 0, selector.last > 0
    if first and last:
        raise FlagError("cannot set both --first and --last")
    if first and selector.all:
        raise FlagError("cannot set both --first and --all")
    if first and selector.follow:
        raise FlagError("cannot set both --first and --follow")
    if last and selector.all:
        raise FlagError("cannot set both --last and --all")
    since = until = None
    if selector.since:
        try:
            since = timestamp_from_ns(parse_time(selector.since, now_ns))
        except FlagError as err:
            raise FlagError(f"failed to parse the since time: {err}") from None
    if selector.until and not selector.follow:
        try:
            until = timestamp_from_ns(parse_time(selector.until, now_ns))
        except FlagError as err:
            raise FlagError(f"failed to parse the until time: {err}") from None
    number = selector.last
    if since is None and until is None and not first:
        if selector.all:
            number = ALL_FLOWS
        elif number == 0 and not selector.follow and not selector.from_file:
            number = DEFAULT_LAST
    if first:
        number = selector.first
    try:
        extra_allow = parse_raw_filters(raw_allow)
    except FlagError as err:
        raise FlagError(f"invalid --allowlist flag: {err}") from None
    try:
        extra_deny = parse_raw_filters(raw_deny)
    except FlagError as err:
        raise FlagError(f"invalid --denylist flag: {err}") from None
    req = observer_pb2.GetFlowsRequest(
        number=number,
        first=first,
        follow=selector.follow,
        whitelist=[*allow, *extra_allow],
        blacklist=[*deny, *extra_deny],
    )
    if since is not None:
        req.since.CopyFrom(since)
    if until is not None:
        req.until.CopyFrom(until)
    return req
