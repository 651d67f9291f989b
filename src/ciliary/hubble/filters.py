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
use Python's ``re``, which agrees on the common subset). Compilation validates everything and
raises :class:`FilterError` naming the list, index and field, so a typo surfaces as
INVALID_ARGUMENT instead of as "no flows".

The predicates run once per flow per subscriber, so everything that can be decided at build
time (parsing, regex compilation, set construction) is, and getters touch only the fields the
filter needs.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from ciliary.hubble.api.flow import flow_pb2

Predicate = Callable[[flow_pb2.Flow], bool]

# Monitor message type of L7 (access log) events, pkg/monitor/api/types.go.
MESSAGE_TYPE_ACCESS_LOG = 129
# Cluster name assumed for node names without a "cluster/" prefix (Cilium's default).
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


# --------------------------------------------------------------------------- labels


@dataclass(frozen=True, slots=True)
class _Label:
    source: str
    key: str
    value: str


def parse_label(text: str) -> _Label:
    """Parses a Cilium label ``[source:]key[=value]`` (no source → ``unspec``)."""
    source = "unspec"
    colon = text.find(":")
    eq = text.find("=")
    if text.startswith("$"):
        source, text = "reserved", text[1:]
    elif colon >= 0 and (eq < 0 or colon < eq):
        source, text = text[:colon], text[colon + 1 :]
    key, _, value = text.partition("=")
    if source == "reserved" and not key:
        key, value = value, ""
    return _Label(source, key, value)


def _lookup(labels: Sequence[_Label], source: str, key: str) -> str | None:
    for label in labels:
        if label.key == key and source in ("any", label.source):
            return label.value
    return None


_NAME_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_SELECTOR_TOKEN = re.compile(r"\s*(!=|==|=|!|,|\(|\)|<|>|[^\s!=,()<>]+)")


@dataclass(frozen=True, slots=True)
class _Requirement:
    source: str
    key: str
    op: str  # "exists", "!", "=", "!=", "in", "notin", "gt", "lt"
    values: frozenset[str]

    def matches(self, labels: Sequence[_Label]) -> bool:
        value = _lookup(labels, self.source, self.key)
        op = self.op
        if op == "exists":
            return value is not None
        if op == "!":
            return value is None
        if op in ("=", "in"):
            return value is not None and value in self.values
        if op in ("!=", "notin"):
            return value is None or value not in self.values
        if value is None:
            return False
        try:
            have = int(value)
        except ValueError:
            return False
        (bound,) = self.values
        return have > int(bound) if op == "gt" else have < int(bound)


def _selector_key(token: str, selector: str) -> tuple[str, str]:
    # Upstream translates "src:key" to "src.key" and a bare "key" to "any.key" before k8s
    # parsing, so the source is everything before the first colon.
    source, sep, key = token.partition(":")
    if not sep:
        source, key = "any", token
    if not source or not key:
        raise FilterError(f"invalid label selector {selector!r}: bad key {token!r}")
    prefix, slash, name = key.rpartition("/")
    if len(name) > 63 or not name or not _NAME_RE.match(name) or (slash and not prefix):
        raise FilterError(
            f"invalid label selector {selector!r}: key {token!r} is not a valid label key"
        )
    return source, key


def _check_value(value: str, selector: str) -> str:
    if len(value) > 63 or not _NAME_RE.match(value):
        raise FilterError(
            f"invalid label selector {selector!r}: value {value!r} is not a valid label value"
        )
    return value


def parse_selector(selector: str) -> list[_Requirement]:
    """Parses a Kubernetes label selector with Cilium source prefixes (``k8s:app in (a,b)``).

    An empty selector selects everything (as in Kubernetes).
    """
    tokens: list[str] = []
    pos = 0
    text = selector.rstrip()
    while pos < len(text):
        m = _SELECTOR_TOKEN.match(text, pos)
        if m is None:  # pragma: no cover - the pattern accepts any non-space run
            raise FilterError(f"invalid label selector {selector!r}")
        tokens.append(m.group(1))
        pos = m.end()
    reqs: list[_Requirement] = []
    i = 0

    def take() -> str:
        nonlocal i
        if i >= len(tokens):
            raise FilterError(f"invalid label selector {selector!r}: unexpected end")
        tok = tokens[i]
        i += 1
        return tok

    def peek() -> str | None:
        return tokens[i] if i < len(tokens) else None

    while i < len(tokens):
        tok = take()
        if tok == "!":
            source, key = _selector_key(take(), selector)
            reqs.append(_Requirement(source, key, "!", frozenset()))
        else:
            if tok in {",", "(", ")", "=", "==", "!=", "<", ">"}:
                raise FilterError(f"invalid label selector {selector!r}: unexpected {tok!r}")
            source, key = _selector_key(tok, selector)
            nxt = peek()
            if nxt is None or nxt == ",":
                reqs.append(_Requirement(source, key, "exists", frozenset()))
            elif nxt in ("=", "==", "!="):
                take()
                op = "!=" if nxt == "!=" else "="
                value = ""
                if peek() not in (None, ","):
                    value = take()
                    if value in {"(", ")", "=", "==", "!=", "!", "<", ">"}:
                        raise FilterError(
                            f"invalid label selector {selector!r}: unexpected {value!r}"
                        )
                value = _check_value(value, selector)
                reqs.append(_Requirement(source, key, op, frozenset({value})))
            elif nxt in ("in", "notin"):
                take()
                if take() != "(":
                    raise FilterError(
                        f"invalid label selector {selector!r}: expected '(' after {nxt!r}"
                    )
                values: set[str] = set()
                expect_value = True
                while True:
                    t = take()
                    if t == ")":
                        if expect_value and values:
                            values.add("")  # "in (a,)" has an empty value, as in k8s
                        break
                    if t == ",":
                        if expect_value:
                            values.add("")
                        expect_value = True
                        continue
                    if not expect_value:
                        raise FilterError(
                            f"invalid label selector {selector!r}: expected ',' or ')' got {t!r}"
                        )
                    values.add(_check_value(t, selector))
                    expect_value = False
                if not values:
                    raise FilterError(
                        f"invalid label selector {selector!r}: {nxt!r} needs at least one value"
                    )
                reqs.append(_Requirement(source, key, nxt, frozenset(values)))
            elif nxt in ("<", ">"):
                take()
                bound = take()
                if not re.fullmatch(r"-?[0-9]+", bound):
                    raise FilterError(
                        f"invalid label selector {selector!r}: {nxt!r} needs an integer, "
                        f"got {bound!r}"
                    )
                reqs.append(
                    _Requirement(source, key, "gt" if nxt == ">" else "lt", frozenset({bound}))
                )
            else:
                raise FilterError(
                    f"invalid label selector {selector!r}: unexpected {nxt!r} after key {tok!r}"
                )
        nxt = peek()
        if nxt is None:
            break
        if take() != ",":
            raise FilterError(f"invalid label selector {selector!r}: expected ',' got {nxt!r}")
        if peek() is None:
            raise FilterError(f"invalid label selector {selector!r}: trailing ','")
    return reqs


def _label_filter(
    values: Sequence[str], get: Callable[[flow_pb2.Flow], Sequence[str]]
) -> Predicate:
    selectors = [parse_selector(v) for v in values]

    def match(flow: flow_pb2.Flow) -> bool:
        labels = [parse_label(s) for s in get(flow)]
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


def _port_filter(values: Sequence[str], index: int) -> Predicate:
    wanted: set[int] = set()
    for value in values:
        if not value.isdigit() or int(value) > 65535:
            raise FilterError(f"invalid port {value!r}")
        wanted.add(int(value))

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


def _identity_filter(values: Sequence[int], which: Literal["source", "destination"]) -> Predicate:
    wanted = set(values)

    def match(flow: flow_pb2.Flow) -> bool:
        return flow.HasField(which) and getattr(flow, which).identity in wanted

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


def _enum_filter(values: Iterable[int], get: Callable[[flow_pb2.Flow], int]) -> Predicate:
    wanted = frozenset(values)

    def match(flow: flow_pb2.Flow) -> bool:
        return get(flow) in wanted

    return match


def _drop_reason_filter(values: Iterable[int]) -> Predicate:
    wanted = frozenset(values)
    dropped = flow_pb2.Verdict.DROPPED

    def match(flow: flow_pb2.Flow) -> bool:
        return flow.verdict == dropped and flow.drop_reason_desc in wanted

    return match


def _ip_trace_id_filter(values: Iterable[int]) -> Predicate:
    wanted = frozenset(values)

    def match(flow: flow_pb2.Flow) -> bool:
        return flow.HasField("ip_trace_id") and flow.ip_trace_id.trace_id in wanted

    return match


def _encrypted_filter(values: Iterable[bool]) -> Predicate:
    wanted = frozenset(values)

    def match(flow: flow_pb2.Flow) -> bool:
        return flow.IP.encrypted in wanted

    return match


def _uuid_filter(values: Iterable[str]) -> Predicate:
    wanted = frozenset(values)

    def match(flow: flow_pb2.Flow) -> bool:
        return flow.uuid in wanted

    return match


def _trace_id_filter(values: Iterable[str]) -> Predicate:
    wanted = frozenset(values)

    def match(flow: flow_pb2.Flow) -> bool:
        return flow.trace_context.parent.trace_id in wanted

    return match


# --------------------------------------------------------------------------- assembly


def _src_pod(f: flow_pb2.Flow) -> tuple[str, str]:
    return f.source.namespace, f.source.pod_name


def _dst_pod(f: flow_pb2.Flow) -> tuple[str, str]:
    return f.destination.namespace, f.destination.pod_name


def _src_svc(f: flow_pb2.Flow) -> tuple[str, str]:
    return f.source_service.namespace, f.source_service.name


def _dst_svc(f: flow_pb2.Flow) -> tuple[str, str]:
    return f.destination_service.namespace, f.destination_service.name


def compile_flow_filter(ff: flow_pb2.FlowFilter) -> Predicate:
    """Compiles one FlowFilter to a predicate that is True iff every set field matches.

    Raises FilterError with the field name prefixed (``source_ip: invalid CIDR ...``).
    """
    preds: list[Predicate] = []

    def add(field: str, build: Callable[[], Predicate]) -> None:
        try:
            preds.append(build())
        except FilterError as err:
            raise FilterError(f"{field}: {err}") from None

    if ff.uuid:
        add("uuid", lambda: _uuid_filter(ff.uuid))
    if ff.event_type:
        add("event_type", lambda: _event_type_filter(ff.event_type))
    if ff.verdict:
        add("verdict", lambda: _enum_filter(ff.verdict, lambda f: f.verdict))
    if ff.drop_reason_desc:
        add("drop_reason_desc", lambda: _drop_reason_filter(ff.drop_reason_desc))
    if ff.reply:
        add("reply", lambda: _reply_filter(ff.reply))
    if ff.source_identity:
        add("source_identity", lambda: _identity_filter(ff.source_identity, "source"))
    if ff.destination_identity:
        add(
            "destination_identity",
            lambda: _identity_filter(ff.destination_identity, "destination"),
        )
    if ff.protocol:
        add("protocol", lambda: _protocol_filter(ff.protocol))
    if ff.source_ip:
        add("source_ip", lambda: _ip_filter(ff.source_ip, lambda f: f.IP.source))
    if ff.source_ip_xlated:
        add(
            "source_ip_xlated",
            lambda: _ip_filter(ff.source_ip_xlated, lambda f: f.IP.source_xlated),
        )
    if ff.destination_ip:
        add("destination_ip", lambda: _ip_filter(ff.destination_ip, lambda f: f.IP.destination))
    if ff.source_pod:
        add("source_pod", lambda: _namespaced_filter(ff.source_pod, _src_pod))
    if ff.destination_pod:
        add("destination_pod", lambda: _namespaced_filter(ff.destination_pod, _dst_pod))
    if ff.source_workload:
        add("source_workload", lambda: _workload_filter(ff.source_workload, lambda f: f.source))
    if ff.destination_workload:
        add(
            "destination_workload",
            lambda: _workload_filter(ff.destination_workload, lambda f: f.destination),
        )
    if ff.source_cluster_name:
        add("source_cluster_name", lambda: _cluster_name_filter(ff.source_cluster_name, "source"))
    if ff.destination_cluster_name:
        add(
            "destination_cluster_name",
            lambda: _cluster_name_filter(ff.destination_cluster_name, "destination"),
        )
    if ff.source_service:
        add("source_service", lambda: _namespaced_filter(ff.source_service, _src_svc))
    if ff.destination_service:
        add("destination_service", lambda: _namespaced_filter(ff.destination_service, _dst_svc))
    if ff.source_fqdn:
        add("source_fqdn", lambda: _fqdn_filter(ff.source_fqdn, lambda f: f.source_names))
    if ff.destination_fqdn:
        add(
            "destination_fqdn",
            lambda: _fqdn_filter(ff.destination_fqdn, lambda f: f.destination_names),
        )
    if ff.dns_query:
        add("dns_query", lambda: _dns_query_filter(ff.dns_query))
    if ff.source_label:
        add("source_label", lambda: _label_filter(ff.source_label, lambda f: f.source.labels))
    if ff.destination_label:
        add(
            "destination_label",
            lambda: _label_filter(ff.destination_label, lambda f: f.destination.labels),
        )
    if ff.node_labels:
        add("node_labels", lambda: _label_filter(ff.node_labels, lambda f: f.node_labels))
    if ff.source_port:
        add("source_port", lambda: _port_filter(ff.source_port, 0))
    if ff.destination_port:
        add("destination_port", lambda: _port_filter(ff.destination_port, 1))
    if ff.http_status_code:
        _http_only_checked(ff, "http_status_code", "http status code")
        add("http_status_code", lambda: _http_status_filter(ff.http_status_code))
    if ff.http_method:
        _http_only_checked(ff, "http_method", "http method")
        add("http_method", lambda: _http_method_filter(ff.http_method))
    if ff.http_path:
        _http_only_checked(ff, "http_path", "http path")
        add("http_path", lambda: _http_path_filter(ff.http_path))
    if ff.http_url:
        _http_only_checked(ff, "http_url", "http url")
        add("http_url", lambda: _http_url_filter(ff.http_url))
    if ff.http_header:
        _http_only_checked(ff, "http_header", "http headers")
        add("http_header", lambda: _http_header_filter(ff.http_header))
    if ff.tcp_flags:
        add("tcp_flags", lambda: _tcp_flags_filter(ff.tcp_flags))
    if ff.node_name:
        add("node_name", lambda: _node_name_filter(ff.node_name))
    if ff.ip_version:
        add("ip_version", lambda: _enum_filter(ff.ip_version, lambda f: f.IP.ipVersion))
    if ff.trace_id:
        add("trace_id", lambda: _trace_id_filter(ff.trace_id))
    if ff.ip_trace_id:
        add("ip_trace_id", lambda: _ip_trace_id_filter(ff.ip_trace_id))
    if ff.encrypted:
        add("encrypted", lambda: _encrypted_filter(ff.encrypted))
    if ff.traffic_direction:
        add(
            "traffic_direction",
            lambda: _enum_filter(ff.traffic_direction, lambda f: f.traffic_direction),
        )
    if ff.interface:
        add("interface", lambda: _interface_filter(ff.interface))
    if ff.HasField("experimental") and ff.experimental.cel_expression:
        raise FilterError(
            "experimental.cel_expression: CEL expressions are not supported by this server"
        )

    if not preds:
        return _always
    if len(preds) == 1:
        return preds[0]
    conj = tuple(preds)

    def match_all(flow: flow_pb2.Flow) -> bool:
        return all(p(flow) for p in conj)

    return match_all


def _http_only_checked(ff: flow_pb2.FlowFilter, field: str, what: str) -> None:
    """Upstream rejects HTTP fields combined with an event-type filter that excludes L7."""
    types = ff.event_type
    if types and not any(t.type == MESSAGE_TYPE_ACCESS_LOG for t in types):
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
