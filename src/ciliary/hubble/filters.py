"""Flow filters: upstream Hubble's FlowFilter semantics, compiled once into predicates.

A request carries a whitelist and a blacklist of ``flow.FlowFilter``. Within one FlowFilter
every *set* field must match (AND); within one repeated field any value may match (OR); a
list matches if any of its filters does (OR). A flow is shown iff it matches the whitelist
(or the whitelist is empty) and matches no blacklist filter (``pkg/hubble/filters``).

Each field's meaning follows upstream's filter of the same name (``ip.go``, ``k8s.go``,
``labels.go``, ``patterns.go``, ``http.go``, ``tcp.go``, ``reply.go``, ...): CIDRs or exact
IPs; ``[namespace/][name-prefix]`` pods and services (no namespace means ``default``);
Kubernetes label selectors with Cilium source prefixes (``k8s:app=x``; a bare key matches any
source); FQDN and node-name globs; RE2-style regexes for DNS queries and HTTP paths/URLs (we
use Python's ``re``, which agrees on the common subset); ``experimental.cel_expression`` is
evaluated by :mod:`ciliary.hubble.celfilter`. Compilation validates everything and
raises :class:`FilterError` naming the list, index and field, so a typo surfaces as
INVALID_ARGUMENT instead of as "no flows".

The predicates run once per flow per subscriber, so everything that can be decided at build
time (parsing, regex compilation, set construction) is, and getters touch only the fields the
filter needs.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

from ciliary.core.flow import MSG_ACCESS_LOG
from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.celfilter import CELError, cel_filter
from ciliary.hubble.ring import DESTINATION_PORT
from ciliary.k8s.labelselector import SelectorError
from ciliary.k8s.labelselector import parse_cilium_label as parse_label
from ciliary.k8s.labelselector import parse_cilium_selector as parse_selector

Predicate = Callable[[flow_pb2.Flow], bool]

# Cilium's default cluster name (cilium-agent ``--cluster-name``), also assumed for node names
# without a "cluster/" prefix.
DEFAULT_CLUSTER_NAME = "default"


class FilterError(ValueError):
    """A FlowFilter that cannot be compiled; the message names the offending field."""


def _always(_flow: flow_pb2.Flow) -> bool:
    return True


def _never(_flow: flow_pb2.Flow) -> bool:
    return False


# --------------------------------------------------------------------------- IPs


def _ip_filter(values: Sequence[str], get: Callable[[flow_pb2.Flow], str]) -> Predicate:
    exact: set[str] = set()
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for value in values:
        if "/" in value:
            try:
                nets.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                raise FilterError(f"invalid CIDR {value!r}") from None
        else:
            try:
                exact.add(str(ipaddress.ip_address(value)))
            except ValueError:
                raise FilterError(f"invalid IP address {value!r}") from None

    def match(flow: flow_pb2.Flow) -> bool:
        ip = get(flow)
        if not ip:
            return False
        if ip in exact:
            return True
        if not nets and not exact:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if exact and str(addr) in exact:
            return True
        return any(addr in net for net in nets)

    return match


# --------------------------------------------------------------------------- names


def _parse_namespaced(value: str) -> tuple[str, str]:
    """``ns/prefix`` → (ns, prefix); ``name`` → ("default", name), as k8s.ParseNamespaceName."""
    if value.count("/") > 1:
        raise FilterError(f"invalid name {value!r}: must be [namespace/][name-prefix]")
    ns, sep, name = value.partition("/")
    if sep:
        if not ns and not name:
            raise FilterError(f"invalid name {value!r}: must be [namespace/][name-prefix]")
        return ns, name
    if not ns:
        raise FilterError("invalid name '': must be [namespace/][name-prefix]")
    return "default", ns


def _namespaced_filter(
    values: Sequence[str], get: Callable[[flow_pb2.Flow], tuple[str, str]]
) -> Predicate:
    wanted = [_parse_namespaced(v) for v in values]

    def match(flow: flow_pb2.Flow) -> bool:
        ns, name = get(flow)
        if not ns and not name:
            return False
        return any(fns == ns and name.startswith(prefix) for fns, prefix in wanted)

    return match


# FQDN / node-name globs, pkg/hubble/filters/patterns.go.
_FQDN_ELEM = r"(?:[-0-9_a-z]+(?:\.[-0-9_a-z]+)*)"


def _fqdn_pattern_regex(pattern: str) -> str:
    pattern = pattern.strip()
    pattern = pattern.removesuffix(".").lower()
    if not pattern:
        raise FilterError("empty pattern")
    if pattern.endswith("."):
        raise FilterError(f"multiple trailing dots in pattern {pattern!r}")
    out: list[str] = []
    for ch in pattern:
        if ch == ".":
            out.append(r"\.")
        elif ch == "*":
            out.append(r"[-.0-9a-z]*")
        elif ch in "-_" or (ch.isascii() and ch.isalnum()):
            out.append(ch)
        else:
            raise FilterError(f"invalid character {ch!r} in pattern {pattern!r}")
    return "".join(out)


def _compile_fqdn_patterns(patterns: Sequence[str]) -> re.Pattern[str]:
    return re.compile(r"\A(?:" + "|".join(_fqdn_pattern_regex(p) for p in patterns) + r")\Z")


def _compile_node_patterns(patterns: Sequence[str]) -> re.Pattern[str]:
    alts: list[str] = []
    for pattern in patterns:
        if not pattern:
            raise FilterError("empty node name pattern")
        elems = pattern.split("/")
        if len(elems) > 2:
            raise FilterError(f"too many slashes in node name pattern {pattern!r}")
        cluster, node = elems if len(elems) == 2 else ("", elems[0])
        cre = _fqdn_pattern_regex(cluster) if cluster else _FQDN_ELEM
        nre = _fqdn_pattern_regex(node) if node else _FQDN_ELEM
        alts.append(f"{cre}/{nre}")
    return re.compile(r"\A(?:" + "|".join(alts) + r")\Z")


def _fqdn_filter(values: Sequence[str], get: Callable[[flow_pb2.Flow], Iterable[str]]) -> Predicate:
    rx = _compile_fqdn_patterns(values)

    def match(flow: flow_pb2.Flow) -> bool:
        return any(rx.match(name.removesuffix(".")) for name in get(flow))

    return match


def _node_name_filter(values: Sequence[str]) -> Predicate:
    rx = _compile_node_patterns(values)

    def match(flow: flow_pb2.Flow) -> bool:
        name = flow.node_name
        if not name:
            return False
        if "/" not in name:
            name = f"{DEFAULT_CLUSTER_NAME}/{name}"
        return rx.match(name) is not None

    return match


def _regex_list(values: Sequence[str]) -> list[re.Pattern[str]]:
    out = []
    for value in values:
        try:
            out.append(re.compile(value))
        except re.error as err:
            raise FilterError(f"invalid regular expression {value!r}: {err}") from None
    return out


def _label_filter(
    values: Sequence[str], get: Callable[[flow_pb2.Flow], Sequence[str]]
) -> Predicate:
    try:
        selectors = [parse_selector(v) for v in values]
    except SelectorError as err:
        raise FilterError(str(err)) from None

    def match(flow: flow_pb2.Flow) -> bool:
        labels = []
        for text in get(flow):
            with contextlib.suppress(ValueError):  # a label without a key matches no key
                labels.append(parse_label(text))
        return any(all(r.matches(labels) for r in sel) for sel in selectors)

    return match


# --------------------------------------------------------------------------- L4 / L7


def _ports(flow_l4: flow_pb2.Layer4) -> tuple[int, int] | None:
    kind = flow_l4.WhichOneof("protocol")
    if kind == "TCP":
        return flow_l4.TCP.source_port, flow_l4.TCP.destination_port
    if kind == "UDP":
        return flow_l4.UDP.source_port, flow_l4.UDP.destination_port
    if kind == "SCTP":
        return flow_l4.SCTP.source_port, flow_l4.SCTP.destination_port
    return None


def _port_set(values: Sequence[str]) -> frozenset[int]:
    wanted: set[int] = set()
    for value in values:
        if not value.isdigit() or int(value) > 65535:
            raise FilterError(f"invalid port {value!r}")
        wanted.add(int(value))
    return frozenset(wanted)


def _port_filter(values: Sequence[str], index: int) -> Predicate:
    wanted = _port_set(values)

    def match(flow: flow_pb2.Flow) -> bool:
        ports = _ports(flow.l4)
        return ports is not None and ports[index] in wanted

    return match


_L4_PROTOCOLS = {
    "tcp": ("TCP",),
    "udp": ("UDP",),
    "sctp": ("SCTP",),
    "icmp": ("ICMPv4", "ICMPv6"),
    "icmpv4": ("ICMPv4",),
    "icmpv6": ("ICMPv6",),
    "vrrp": ("VRRP",),
    "igmp": ("IGMP",),
}
_L7_PROTOCOLS = {"dns": "dns", "http": "http", "kafka": "kafka"}


def _protocol_filter(values: Sequence[str]) -> Predicate:
    l4: set[str] = set()
    l7: set[str] = set()
    for value in values:
        proto = value.lower()
        if proto in _L4_PROTOCOLS:
            l4.update(_L4_PROTOCOLS[proto])
        elif proto in _L7_PROTOCOLS:
            l7.add(_L7_PROTOCOLS[proto])
        else:
            raise FilterError(f"unknown protocol {value!r}")

    def match(flow: flow_pb2.Flow) -> bool:
        if l4 and flow.l4.WhichOneof("protocol") in l4:
            return True
        return bool(l7) and flow.l7.WhichOneof("record") in l7

    return match


_TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")


def _tcp_flags_filter(values: Sequence[flow_pb2.TCPFlags]) -> Predicate:
    wanted = [frozenset(n for n in _TCP_FLAG_NAMES if getattr(f, n)) for f in values]

    def match(flow: flow_pb2.Flow) -> bool:
        if flow.l4.WhichOneof("protocol") != "TCP" or not flow.l4.TCP.HasField("flags"):
            return False
        flags = flow.l4.TCP.flags
        return any(all(getattr(flags, n) for n in want) for want in wanted)

    return match


_STATUS_FULL = re.compile(r"^[1-5][0-9]{2}$")
_STATUS_PREFIX = re.compile(r"^[1-5][0-9]?\+$")


def _http_status_filter(values: Sequence[str]) -> Predicate:
    full: set[str] = set()
    prefixes: list[str] = []
    for value in values:
        if _STATUS_FULL.match(value):
            full.add(value)
        elif _STATUS_PREFIX.match(value):
            prefixes.append(value[:-1])
        else:
            raise FilterError(f"invalid status code prefix {value!r}")
    prefix_tuple = tuple(prefixes)

    def match(flow: flow_pb2.Flow) -> bool:
        if flow.l7.WhichOneof("record") != "http" or flow.l7.http.code == 0:
            return False
        code = f"{flow.l7.http.code:03d}"
        return code in full or code.startswith(prefix_tuple)

    return match


def _http_method_filter(values: Sequence[str]) -> Predicate:
    wanted = {v.casefold() for v in values}

    def match(flow: flow_pb2.Flow) -> bool:
        if flow.l7.WhichOneof("record") != "http" or not flow.l7.http.method:
            return False
        return flow.l7.http.method.casefold() in wanted

    return match


def _request_path(url: str) -> str | None:
    """The path of a request URI as Go's url.ParseRequestURI sees it (None if invalid)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if not parts.scheme and not url.startswith("/"):
        return None
    return parts.path


def _http_path_filter(values: Sequence[str]) -> Predicate:
    regexes = _regex_list(values)

    def match(flow: flow_pb2.Flow) -> bool:
        if flow.l7.WhichOneof("record") != "http" or not flow.l7.http.url:
            return False
        path = _request_path(flow.l7.http.url)
        return path is not None and any(rx.search(path) for rx in regexes)

    return match


def _http_url_filter(values: Sequence[str]) -> Predicate:
    regexes = _regex_list(values)

    def match(flow: flow_pb2.Flow) -> bool:
        if flow.l7.WhichOneof("record") != "http" or not flow.l7.http.url:
            return False
        return any(rx.search(flow.l7.http.url) for rx in regexes)

    return match


def _http_header_filter(values: Sequence[flow_pb2.HTTPHeader]) -> Predicate:
    wanted = {(h.key, h.value) for h in values}

    def match(flow: flow_pb2.Flow) -> bool:
        if flow.l7.WhichOneof("record") != "http":
            return False
        return any((h.key, h.value) in wanted for h in flow.l7.http.headers)

    return match


def _dns_query_filter(values: Sequence[str]) -> Predicate:
    regexes = _regex_list(values)

    def match(flow: flow_pb2.Flow) -> bool:
        if flow.l7.WhichOneof("record") != "dns":
            return False
        query = flow.l7.dns.query
        return any(rx.search(query) for rx in regexes)

    return match


# --------------------------------------------------------------------------- misc fields


def _event_type_filter(values: Sequence[flow_pb2.EventTypeFilter]) -> Predicate:
    wanted = [(f.type, f.match_sub_type, f.sub_type) for f in values]

    def match(flow: flow_pb2.Flow) -> bool:
        if not flow.HasField("event_type"):
            return False
        et = flow.event_type
        for typ, match_sub, sub in wanted:
            if typ not in (0, et.type):
                continue
            if match_sub and et.sub_type != sub:
                continue
            return True
        return False

    return match


def _reply_filter(values: Sequence[bool]) -> Predicate:
    wanted = set(values)
    dropped = flow_pb2.Verdict.DROPPED

    def match(flow: flow_pb2.Flow) -> bool:
        # Upstream treats an unknown is_reply of a dropped flow as "not a reply" (compat with
        # the deprecated `reply` field, which was always false for drops).
        if not flow.HasField("is_reply"):
            return flow.verdict == dropped and False in wanted
        return flow.is_reply.value in wanted

    return match


def _workload_filter(
    values: Sequence[flow_pb2.Workload], get: Callable[[flow_pb2.Flow], flow_pb2.Endpoint]
) -> Predicate:
    wanted = [(w.name, w.kind) for w in values]

    def match(flow: flow_pb2.Flow) -> bool:
        for w in get(flow).workloads:
            for name, kind in wanted:
                if (not name or name == w.name) and (not kind or kind == w.kind):
                    return True
        return False

    return match


def _cluster_name_filter(values: Sequence[str], which: str) -> Predicate:
    if "" in values:
        raise FilterError("cluster name must not be empty")
    wanted = set(values)

    def match(flow: flow_pb2.Flow) -> bool:
        return getattr(flow, which).cluster_name in wanted

    return match


def _interface_filter(values: Sequence[flow_pb2.NetworkInterface]) -> Predicate:
    wanted = [(i.index, i.name) for i in values]

    def match(flow: flow_pb2.Flow) -> bool:
        if not flow.HasField("interface"):
            return False
        iface = flow.interface
        return any(
            (not idx or idx == iface.index) and (not name or name == iface.name)
            for idx, name in wanted
        )

    return match


def _in_filter(values: Iterable[object], get: Callable[[flow_pb2.Flow], object]) -> Predicate:
    """True iff the flow's value (``get``; None when the flow has none) is one of ``values``."""
    wanted = frozenset(values)

    def match(flow: flow_pb2.Flow) -> bool:
        return get(flow) in wanted

    return match


def _identity(which: Literal["source", "destination"]) -> Callable[[flow_pb2.Flow], int | None]:
    def get(flow: flow_pb2.Flow) -> int | None:
        return getattr(flow, which).identity if flow.HasField(which) else None

    return get


def _drop_reason(flow: flow_pb2.Flow) -> int | None:
    return flow.drop_reason_desc if flow.verdict == flow_pb2.Verdict.DROPPED else None


def _ip_trace_id(flow: flow_pb2.Flow) -> int | None:
    return flow.ip_trace_id.trace_id if flow.HasField("ip_trace_id") else None


# --------------------------------------------------------------------------- assembly


def _src_pod(f: flow_pb2.Flow) -> tuple[str, str]:
    return f.source.namespace, f.source.pod_name


def _dst_pod(f: flow_pb2.Flow) -> tuple[str, str]:
    return f.destination.namespace, f.destination.pod_name


def _src_svc(f: flow_pb2.Flow) -> tuple[str, str]:
    return f.source_service.namespace, f.source_service.name


def _dst_svc(f: flow_pb2.Flow) -> tuple[str, str]:
    return f.destination_service.namespace, f.destination_service.name


Build = Callable[[Any], Predicate]

_FIELDS: tuple[tuple[str, Build], ...] = (
    ("uuid", lambda v: _in_filter(v, lambda f: f.uuid)),
    ("event_type", _event_type_filter),
    ("verdict", lambda v: _in_filter(v, lambda f: f.verdict)),
    ("drop_reason_desc", lambda v: _in_filter(v, _drop_reason)),
    ("reply", _reply_filter),
    ("source_identity", lambda v: _in_filter(v, _identity("source"))),
    ("destination_identity", lambda v: _in_filter(v, _identity("destination"))),
    ("protocol", _protocol_filter),
    ("source_ip", lambda v: _ip_filter(v, lambda f: f.IP.source)),
    ("source_ip_xlated", lambda v: _ip_filter(v, lambda f: f.IP.source_xlated)),
    ("destination_ip", lambda v: _ip_filter(v, lambda f: f.IP.destination)),
    ("source_pod", lambda v: _namespaced_filter(v, _src_pod)),
    ("destination_pod", lambda v: _namespaced_filter(v, _dst_pod)),
    ("source_workload", lambda v: _workload_filter(v, lambda f: f.source)),
    ("destination_workload", lambda v: _workload_filter(v, lambda f: f.destination)),
    ("source_cluster_name", lambda v: _cluster_name_filter(v, "source")),
    ("destination_cluster_name", lambda v: _cluster_name_filter(v, "destination")),
    ("source_service", lambda v: _namespaced_filter(v, _src_svc)),
    ("destination_service", lambda v: _namespaced_filter(v, _dst_svc)),
    ("source_fqdn", lambda v: _fqdn_filter(v, lambda f: f.source_names)),
    ("destination_fqdn", lambda v: _fqdn_filter(v, lambda f: f.destination_names)),
    ("dns_query", _dns_query_filter),
    ("source_label", lambda v: _label_filter(v, lambda f: f.source.labels)),
    ("destination_label", lambda v: _label_filter(v, lambda f: f.destination.labels)),
    ("node_labels", lambda v: _label_filter(v, lambda f: f.node_labels)),
    ("source_port", lambda v: _port_filter(v, 0)),
    ("destination_port", lambda v: _port_filter(v, 1)),
    ("http_status_code", _http_status_filter),
    ("http_method", _http_method_filter),
    ("http_path", _http_path_filter),
    ("http_url", _http_url_filter),
    ("http_header", _http_header_filter),
    ("tcp_flags", _tcp_flags_filter),
    ("node_name", _node_name_filter),
    ("ip_version", lambda v: _in_filter(v, lambda f: f.IP.ipVersion)),
    ("trace_id", lambda v: _in_filter(v, lambda f: f.trace_context.parent.trace_id)),
    ("ip_trace_id", lambda v: _in_filter(v, _ip_trace_id)),
    ("encrypted", lambda v: _in_filter(v, lambda f: f.IP.encrypted)),
    ("traffic_direction", lambda v: _in_filter(v, lambda f: f.traffic_direction)),
    ("interface", _interface_filter),
)
"""FlowFilter field → predicate builder for its values, in the order fields are checked."""

_HTTP_FIELDS = {
    "http_status_code": "http status code",
    "http_method": "http method",
    "http_path": "http path",
    "http_url": "http url",
    "http_header": "http headers",
}
"""HTTP fields, which need the event type filter (if any) to match L7 events, and how
upstream's message calls them."""


def compile_flow_filter(ff: flow_pb2.FlowFilter) -> Predicate:
    """Compiles one FlowFilter to a predicate that is True iff every set field matches.

    Raises FilterError with the field name prefixed (``source_ip: invalid CIDR ...``).
    """
    preds: list[Predicate] = []
    for name, build in _FIELDS:
        values = getattr(ff, name)
        if not values:
            continue
        if name in _HTTP_FIELDS:
            _http_only_checked(ff, name, _HTTP_FIELDS[name])
        try:
            preds.append(build(values))
        except FilterError as err:
            raise FilterError(f"{name}: {err}") from None
    if ff.HasField("experimental") and ff.experimental.cel_expression:
        try:
            preds.append(cel_filter(ff.experimental.cel_expression))
        except CELError as err:
            raise FilterError(f"experimental.cel_expression: {err}") from None

    if not preds:
        return _always
    if len(preds) == 1:
        return preds[0]
    conj = tuple(preds)

    def match_all(flow: flow_pb2.Flow) -> bool:
        return all(p(flow) for p in conj)

    return match_all


RowPredicate = Callable[[flow_pb2.Flow, int], bool]
"""A filter over a row of the observer's ring: its template and its port word (its own L4
port: the source port, or the destination port with ``ring.DESTINATION_PORT`` set)."""
_TemplateVerdicts = tuple[tuple[bool, ...], tuple[int, int] | None]
"""Per template: each filter's answer without its ports, and the template's (source,
destination) ports (None: no L4 ports)."""


def reads_row_fields(
    whitelist: Sequence[flow_pb2.FlowFilter], blacklist: Sequence[flow_pb2.FlowFilter]
) -> bool:
    """True when a request's filters read a row's field that neither its template nor its
    source port has (``ciliary.hubble.ring.FlowRows``): the UUID, or anything through a CEL
    expression. Its predicate must then see each row's whole flow; otherwise
    :func:`build_row_filter` answers for a row as the predicate for its whole flow."""
    for ff in (*whitelist, *blacklist):
        if ff.HasField("experimental") and ff.experimental.cel_expression:
            return True
        if ff.uuid:
            return True
    return False


def build_row_filter(
    whitelist: Sequence[flow_pb2.FlowFilter],
    blacklist: Sequence[flow_pb2.FlowFilter],
    cache_size: int = 4096,
) -> RowPredicate:
    """A request's filters over rows (see :func:`reads_row_fields` for when it may be used):
    every field but the L4 ports is decided on the row's template, once per template (the
    answers are remembered, the template held so its id is never reused); ``source_port`` and
    ``destination_port`` on the row's ports: its own (its port word) and the template's other
    one. Same lists logic as :func:`build_filter`."""
    parts = [(_row_part(ff), True) for ff in whitelist] + [
        (_row_part(ff), False) for ff in blacklist
    ]
    predicates = [pred for (pred, _, _), _ in parts]
    ports = [(src, dst) for (_, src, dst), _ in parts]
    allow = [i for i, (_, is_allow) in enumerate(parts) if is_allow]
    deny = [i for i, (_, is_allow) in enumerate(parts) if not is_allow]
    seen: dict[int, tuple[flow_pb2.Flow, _TemplateVerdicts]] = {}

    def verdicts(template: flow_pb2.Flow) -> _TemplateVerdicts:
        """Each filter's answer without its ports, and the template's ports (None: none)."""
        hit = seen.get(id(template))
        if hit is None or hit[0] is not template:
            hit = (template, (tuple(p(template) for p in predicates), _ports(template.l4)))
            if len(seen) >= cache_size:
                seen.clear()
            seen[id(template)] = hit
        return hit[1]

    def decide(base: _TemplateVerdicts, port: int) -> bool:
        answers, template_ports = base
        sport = dport = -1  # no L4 ports: no port filter matches
        if template_ports is not None:
            sport, dport = template_ports
            if port & DESTINATION_PORT:
                dport = port & 0xFFFF
            else:
                sport = port
        ok = [
            b and (src is None or sport in src) and (dst is None or dport in dst)
            for b, (src, dst) in zip(answers, ports, strict=True)
        ]
        if allow and not any(ok[i] for i in allow):
            return False
        return not any(ok[i] for i in deny)

    if all(src is None and dst is None for src, dst in ports):  # the template decides alone
        answers: dict[int, tuple[flow_pb2.Flow, bool]] = {}

        def match_template(template: flow_pb2.Flow, port: int) -> bool:
            hit = answers.get(id(template))
            if hit is not None and hit[0] is template:
                return hit[1]
            answer = decide(verdicts(template), port)
            if len(answers) >= cache_size:
                answers.clear()
            answers[id(template)] = (template, answer)
            return answer

        return match_template

    def match(template: flow_pb2.Flow, port: int) -> bool:
        return decide(verdicts(template), port)

    return match


def _row_part(
    ff: flow_pb2.FlowFilter,
) -> tuple[Predicate, frozenset[int] | None, frozenset[int] | None]:
    """A FlowFilter as (its predicate without the L4 ports, the source ports or None, the
    destination ports or None)."""
    if not ff.source_port and not ff.destination_port:
        return compile_flow_filter(ff), None, None
    src = _port_set(ff.source_port) if ff.source_port else None
    dst = _port_set(ff.destination_port) if ff.destination_port else None
    rest = flow_pb2.FlowFilter()
    rest.CopyFrom(ff)
    rest.ClearField("source_port")
    rest.ClearField("destination_port")
    return compile_flow_filter(rest), src, dst


def _http_only_checked(ff: flow_pb2.FlowFilter, field: str, what: str) -> None:
    """Upstream rejects HTTP fields combined with an event-type filter that excludes L7."""
    types = ff.event_type
    if types and not any(t.type == MSG_ACCESS_LOG for t in types):
        raise FilterError(
            f"{field}: filtering by {what} requires the event type filter to only match 'l7' events"
        )


def _compile_list(filters: Sequence[flow_pb2.FlowFilter], name: str) -> list[Predicate]:
    out = []
    for i, ff in enumerate(filters):
        try:
            out.append(compile_flow_filter(ff))
        except FilterError as err:
            raise FilterError(f"invalid {name}[{i}] filter: {err}") from None
    return out


def build_filter(
    whitelist: Sequence[flow_pb2.FlowFilter], blacklist: Sequence[flow_pb2.FlowFilter]
) -> Predicate:
    """Compiles a request's lists: True iff (whitelist empty or any matches) and no blacklist
    filter matches. Raises FilterError (a ValueError) naming list, index and field."""
    allow = _compile_list(whitelist, "whitelist")
    deny = _compile_list(blacklist, "blacklist")
    if not allow and not deny:
        return _always
    if any(p is _always for p in deny):
        return _never
    allow_t = tuple(allow)
    deny_t = tuple(deny)
    if any(p is _always for p in allow_t):
        allow_t = ()
    if not allow_t and not deny_t:
        return _always

    if not deny_t:
        if len(allow_t) == 1:
            return allow_t[0]

        def match_allow(flow: flow_pb2.Flow) -> bool:
            return any(p(flow) for p in allow_t)

        return match_allow

    def match(flow: flow_pb2.Flow) -> bool:
        if allow_t and not any(p(flow) for p in allow_t):
            return False
        return not any(p(flow) for p in deny_t)

    return match
