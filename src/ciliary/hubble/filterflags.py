"""``hubble observe``'s filter flags → allow/deny ``FlowFilter`` lists, with upstream's semantics.

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

Each flag's field and value parser is one row of a table, so adding a flag is adding a row.
Nothing here does I/O; :mod:`ciliary.hubble.cliflags` puts the lists into the request.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.flagvalues import (
    FlagError,
    parse_drop_reason,
    parse_event_type,
    parse_http_header,
    parse_identity,
    parse_ip_trace_id,
    parse_ip_version,
    parse_tcp_flags,
    parse_traffic_direction,
    parse_verdict,
    parse_workload,
    text,
)


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

# --------------------------------------------------------------------------- flag → field

Parse = Callable[[str], object]

_BIDI_FIELDS: dict[str, tuple[str, str, Parse]] = {
    "fqdn": ("source_fqdn", "destination_fqdn", text),
    "pod": ("source_pod", "destination_pod", text),
    "ip": ("source_ip", "destination_ip", text),
    "label": ("source_label", "destination_label", text),
    "service": ("source_service", "destination_service", text),
    "port": ("source_port", "destination_port", text),
    "cluster": ("source_cluster_name", "destination_cluster_name", text),
    "workload": ("source_workload", "destination_workload", parse_workload),
    "identity": ("source_identity", "destination_identity", parse_identity),
}
"""Bidirectional flag → (source field, destination field, value parser): the source field
goes to the left filter, the destination field to the right one."""

_FIELDS: dict[str, tuple[str, Parse]] = {
    "uuid": ("uuid", text),
    "from-fqdn": ("source_fqdn", text),
    "to-fqdn": ("destination_fqdn", text),
    "from-pod": ("source_pod", text),
    "to-pod": ("destination_pod", text),
    "from-ip": ("source_ip", text),
    "snat-ip": ("source_ip_xlated", text),
    "to-ip": ("destination_ip", text),
    "from-label": ("source_label", text),
    "to-label": ("destination_label", text),
    "from-service": ("source_service", text),
    "to-service": ("destination_service", text),
    "from-port": ("source_port", text),
    "to-port": ("destination_port", text),
    "trace-id": ("trace_id", text),
    "http-status": ("http_status_code", text),
    "http-method": ("http_method", text),
    "http-path": ("http_path", text),
    "http-url": ("http_url", text),
    "protocol": ("protocol", text),
    "node-name": ("node_name", text),
    "node-label": ("node_labels", text),
    "from-cluster": ("source_cluster_name", text),
    "to-cluster": ("destination_cluster_name", text),
    "ipv4": ("ip_version", lambda _v: flow_pb2.IPv4),
    "ipv6": ("ip_version", lambda _v: flow_pb2.IPv6),
    "ip-version": ("ip_version", parse_ip_version),
    "verdict": ("verdict", parse_verdict),
    "drop-reason-desc": ("drop_reason_desc", parse_drop_reason),
    "http-header": ("http_header", parse_http_header),
    "ip-trace-id": ("ip_trace_id", parse_ip_trace_id),
    "type": ("event_type", parse_event_type),
    "from-workload": ("source_workload", parse_workload),
    "to-workload": ("destination_workload", parse_workload),
    "from-identity": ("source_identity", parse_identity),
    "to-identity": ("destination_identity", parse_identity),
    "tcp-flags": ("tcp_flags", parse_tcp_flags),
    "traffic-direction": ("traffic_direction", parse_traffic_direction),
    "cel-expression": ("experimental.cel_expression", text),
    "interface": ("interface", lambda v: flow_pb2.NetworkInterface(name=v)),
}
"""Every other flag with a field → (field, value parser): added to both filters."""

_NAMESPACE_FLAGS: dict[str, tuple[str, bool]] = {
    "namespace": ("ns", True),
    "from-namespace": ("src_ns", True),
    "to-namespace": ("dst_ns", True),
    "all-namespaces": ("ns", False),
    "from-all-namespaces": ("src_ns", False),
    "to-all-namespaces": ("dst_ns", False),
}
"""Namespace flag → (tracker list, whether the value counts: ``all-`` flags add ``""``)."""


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


def _qualify(ff: flow_pb2.FlowFilter, side: str, namespaces: Sequence[str]) -> None:
    """Puts ``side``'s (``source``/``destination``) pod and service names in ``namespaces``;
    no name at all stands for every pod of those namespaces."""
    pods, services = getattr(ff, f"{side}_pod"), getattr(ff, f"{side}_service")
    if not pods and not services:
        pods.append("")
    qualified_pods = _add_namespaces(pods, namespaces)
    qualified_services = _add_namespaces(services, namespaces)
    del pods[:], services[:]
    pods.extend(qualified_pods)
    services.extend(qualified_services)


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
        namespaced = (
            (self.ns, "source_pod"),
            (self.ns, "source_service"),
            (self.ns, "destination_pod"),
            (self.ns, "destination_service"),
            (self.src_ns, "source_pod"),
            (self.src_ns, "source_service"),
            (self.dst_ns, "destination_pod"),
            (self.dst_ns, "destination_service"),
        )
        for ff in (self.left, self.right):
            if ff is None:
                continue
            for namespaces, name_field in namespaced:
                errors += _ns_conflicts(namespaces, getattr(ff, name_field))
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

        if self.dst_ns:
            _qualify(left, "destination", self.dst_ns)
            _qualify(right, "destination", self.dst_ns)
        if self.src_ns:
            _qualify(left, "source", self.src_ns)
            _qualify(right, "source", self.src_ns)
        if self.ns:
            _qualify(left, "source", self.ns)
            _qualify(right, "destination", self.ns)
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


def _append(field_path: str, value: object) -> Update:
    """Appends ``value`` to the repeated field ``field_path`` (dotted for nested messages)."""
    *parents, name = field_path.split(".")

    def update(ff: flow_pb2.FlowFilter) -> None:
        msg: Any = ff
        for parent in parents:
            msg = getattr(msg, parent)
        getattr(msg, name).append(value)

    return update


def _apply(t: _Tracker, name: str, value: str) -> None:
    if name in _BIDI_FIELDS:
        src, dst, parse = _BIDI_FIELDS[name]
        parsed = parse(value)
        t.apply_left(_append(src, parsed))
        t.apply_right(_append(dst, parsed))
    elif name in _FIELDS:
        field_path, parse = _FIELDS[name]
        t.apply(_append(field_path, parse(value)))
    elif name in _NAMESPACE_FLAGS:
        namespaces, takes_value = _NAMESPACE_FLAGS[name]
        getattr(t, namespaces).append(value if takes_value else "")
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


_BY_NAME = {f.name: f for f in FILTER_FLAGS}
_BY_SHORT = {f.short: f for f in FILTER_FLAGS if f.short}


def flag_pairs(words: Sequence[str]) -> list[tuple[str, str]]:
    """The filter flags of a split command line (``["--pod", "x", "--verdict=DROPPED", "-4"]``)
    as the ordered ``(flag, value)`` pairs :func:`build_filters` takes, for front ends that get
    the flags as text (the Hubble UI's filter bar); FlagError naming the word otherwise."""
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            flag = _BY_NAME.get(name)
        elif word.startswith("-") and len(word) >= 2:
            name, value, eq = word[1], word[2:].removeprefix("="), ""
            eq = "=" if value else ""
            flag = _BY_SHORT.get(name)
        else:
            raise FlagError(f'unexpected argument "{word}": filters are flags (e.g. --pod x)')
        if flag is None:
            raise FlagError(f"unknown flag: {word.partition('=')[0]}")
        if not flag.takes_value:
            if eq:
                raise FlagError(f'flag "{word}" takes no value')
            pairs.append((flag.name, flag.implicit))
            continue
        if not eq:
            if i >= len(words):
                raise FlagError(f"flag needs an argument: {word}")
            value = words[i]
            i += 1
        pairs.append((flag.name, value))
    return pairs
