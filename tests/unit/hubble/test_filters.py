"""FlowFilter semantics (upstream pkg/hubble/filters), error messages, and list algebra."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.filters import FilterError, build_filter, compile_flow_filter
from ciliary.k8s.labelselector import parse_cilium_selector as parse_selector

F = flow_pb2


def flow(**kw: Any) -> flow_pb2.Flow:
    """A flow from a proto3-JSON-like dict (field names as in flow.proto)."""
    return json_format.ParseDict(kw, flow_pb2.Flow())


def ff(**kw: Any) -> flow_pb2.FlowFilter:
    return json_format.ParseDict(kw, flow_pb2.FlowFilter())


TCP_FLOW = flow(
    uuid="u1",
    verdict="FORWARDED",
    IP={"source": "10.0.0.1", "destination": "10.0.1.2", "ipVersion": "IPv4"},
    l4={"TCP": {"source_port": 33000, "destination_port": 80, "flags": {"SYN": True, "ACK": True}}},
    source={
        "identity": 1234,
        "namespace": "default",
        "pod_name": "client-abc",
        "labels": ["k8s:app=client", "k8s:io.kubernetes.pod.namespace=default", "k8s:tier=web"],
        "workloads": [{"name": "client", "kind": "Deployment"}],
        "cluster_name": "c1",
    },
    destination={
        "identity": 5678,
        "namespace": "prod",
        "pod_name": "server-1",
        "labels": ["k8s:app=server", "reserved:host"],
    },
    destination_service={"name": "web", "namespace": "prod"},
    destination_names=["api.example.com."],
    node_name="kind/node-1",
    node_labels=["kubernetes.io/hostname=node-1"],
    event_type={"type": 4, "sub_type": 3},
    traffic_direction="EGRESS",
    is_reply=False,
    trace_context={"parent": {"trace_id": "abc"}},
    interface={"index": 7, "name": "eth0"},
    ip_trace_id={"trace_id": "42"},
)

HTTP_FLOW = flow(
    verdict="FORWARDED",
    IP={"source": "fd00::1", "destination": "fd00::2", "ipVersion": "IPv6", "encrypted": True},
    l4={"TCP": {"source_port": 40000, "destination_port": 8080}},
    l7={
        "type": "RESPONSE",
        "http": {
            "code": 404,
            "method": "GET",
            "url": "http://svc/api/v1/items?x=1",
            "headers": [{"key": "X-A", "value": "1"}],
        },
    },
    event_type={"type": 129},
    node_name="node-2",
)

DNS_DROP = flow(
    verdict="DROPPED",
    drop_reason_desc="POLICY_DENIED",
    IP={"source": "10.0.0.9", "destination": "10.96.0.10", "ipVersion": "IPv4"},
    l4={"UDP": {"source_port": 5353, "destination_port": 53}},
    l7={"dns": {"query": "kubernetes.default.svc.cluster.local."}},
    source={"namespace": "kube-system", "pod_name": "coredns-1", "labels": ["app=dns"]},
)

ICMP_FLOW = flow(l4={"ICMPv6": {"type": 128}}, verdict="FORWARDED")
SCTP_FLOW = flow(l4={"SCTP": {"source_port": 1, "destination_port": 2}})


def m(f: flow_pb2.Flow, **kw: Any) -> bool:
    return compile_flow_filter(ff(**kw))(f)


@pytest.mark.parametrize(
    ("flt", "flw", "want"),
    [
        ({}, TCP_FLOW, True),
        ({"uuid": ["u1", "u2"]}, TCP_FLOW, True),
        ({"uuid": ["u2"]}, TCP_FLOW, False),
        ({"source_ip": ["10.0.0.1"]}, TCP_FLOW, True),
        ({"source_ip": ["10.0.0.0/24"]}, TCP_FLOW, True),
        ({"source_ip": ["10.0.1.0/24"]}, TCP_FLOW, False),
        ({"destination_ip": ["10.0.1.0/24", "1.1.1.1"]}, TCP_FLOW, True),
        ({"source_ip": ["fd00::/64"]}, HTTP_FLOW, True),
        ({"source_ip": ["fd00:0::1"]}, HTTP_FLOW, True),
        ({"source_ip": ["10.0.0.0/8"]}, HTTP_FLOW, False),
        ({"source_pod": ["default/"]}, TCP_FLOW, True),
        ({"source_pod": ["default/client"]}, TCP_FLOW, True),
        ({"source_pod": ["client"]}, TCP_FLOW, True),  # no namespace = default
        ({"source_pod": ["prod/client"]}, TCP_FLOW, False),
        ({"destination_pod": ["prod/server-"]}, TCP_FLOW, True),
        ({"destination_pod": ["server"]}, TCP_FLOW, False),  # default ns, not prod
        ({"source_label": ["app=client"]}, TCP_FLOW, True),
        ({"source_label": ["k8s:app=client"]}, TCP_FLOW, True),
        ({"source_label": ["container:app=client"]}, TCP_FLOW, False),
        ({"source_label": ["app=client,tier in (web, db)"]}, TCP_FLOW, True),
        ({"source_label": ["app=client,tier notin (web)"]}, TCP_FLOW, False),
        ({"source_label": ["app!=server"]}, TCP_FLOW, True),
        ({"source_label": ["app==server"]}, TCP_FLOW, False),
        ({"source_label": ["tier"]}, TCP_FLOW, True),
        ({"source_label": ["!tier"]}, TCP_FLOW, False),
        ({"source_label": ["!missing"]}, TCP_FLOW, True),
        ({"source_label": ["missing!=x"]}, TCP_FLOW, True),
        ({"source_label": ["k8s:io.kubernetes.pod.namespace=default"]}, TCP_FLOW, True),
        ({"source_label": ["io.kubernetes.pod.namespace=default"]}, TCP_FLOW, True),
        ({"source_label": ["app=nope", "app=client"]}, TCP_FLOW, True),  # OR of selectors
        ({"source_label": ["app=dns"]}, DNS_DROP, True),  # unspec source matches bare key
        ({"source_label": ["k8s:app=dns"]}, DNS_DROP, False),
        ({"destination_label": ["reserved:host"]}, TCP_FLOW, True),
        ({"destination_label": ["host"]}, TCP_FLOW, True),
        ({"node_labels": ["kubernetes.io/hostname=node-1"]}, TCP_FLOW, True),
        ({"source_fqdn": ["*.example.com"]}, TCP_FLOW, False),
        ({"destination_fqdn": ["*.example.com"]}, TCP_FLOW, True),
        ({"destination_fqdn": ["API.example.com."]}, TCP_FLOW, True),
        ({"destination_fqdn": ["example.com"]}, TCP_FLOW, False),
        ({"destination_service": ["prod/web"]}, TCP_FLOW, True),
        ({"destination_service": ["prod/"]}, TCP_FLOW, True),
        ({"destination_service": ["prod/we"]}, TCP_FLOW, True),  # a name prefix
        ({"destination_service": ["web"]}, TCP_FLOW, False),  # a name alone: default/web
        ({"source_service": ["prod/"]}, TCP_FLOW, False),
        ({"source_workload": [{"name": "client"}]}, TCP_FLOW, True),
        ({"source_workload": [{"kind": "Deployment"}]}, TCP_FLOW, True),
        ({"source_workload": [{"name": "client", "kind": "StatefulSet"}]}, TCP_FLOW, False),
        ({"source_identity": [1234]}, TCP_FLOW, True),
        ({"destination_identity": [1234]}, TCP_FLOW, False),
        ({"source_cluster_name": ["c1"]}, TCP_FLOW, True),
        ({"destination_cluster_name": ["c1"]}, TCP_FLOW, False),
        ({"verdict": ["DROPPED", "FORWARDED"]}, TCP_FLOW, True),
        ({"verdict": ["DROPPED"]}, TCP_FLOW, False),
        ({"drop_reason_desc": ["POLICY_DENIED"]}, DNS_DROP, True),
        ({"drop_reason_desc": ["POLICY_DENIED"]}, TCP_FLOW, False),
        ({"event_type": [{"type": 4}]}, TCP_FLOW, True),
        ({"event_type": [{"type": 4, "match_sub_type": True, "sub_type": 3}]}, TCP_FLOW, True),
        ({"event_type": [{"type": 4, "match_sub_type": True, "sub_type": 0}]}, TCP_FLOW, False),
        ({"event_type": [{"type": 1}]}, TCP_FLOW, False),
        ({"event_type": [{"type": 1}]}, ICMP_FLOW, False),  # no event type at all
        ({"http_status_code": ["404"]}, HTTP_FLOW, True),
        ({"http_status_code": ["4+"]}, HTTP_FLOW, True),
        ({"http_status_code": ["40+"]}, HTTP_FLOW, True),
        ({"http_status_code": ["5+", "200"]}, HTTP_FLOW, False),
        ({"http_status_code": ["4+"]}, TCP_FLOW, False),
        ({"http_method": ["get"]}, HTTP_FLOW, True),
        ({"http_method": ["POST"]}, HTTP_FLOW, False),
        ({"http_path": ["^/api/v[0-9]/"]}, HTTP_FLOW, True),
        ({"http_path": ["x=1"]}, HTTP_FLOW, False),  # path excludes the query
        ({"http_url": ["x=1"]}, HTTP_FLOW, True),
        ({"http_header": [{"key": "X-A", "value": "1"}]}, HTTP_FLOW, True),
        ({"http_header": [{"key": "X-A", "value": "2"}]}, HTTP_FLOW, False),
        ({"event_type": [{"type": 129}], "http_method": ["GET"]}, HTTP_FLOW, True),
        ({"protocol": ["TCP"]}, TCP_FLOW, True),
        ({"protocol": ["udp"]}, TCP_FLOW, False),
        ({"protocol": ["http"]}, HTTP_FLOW, True),
        ({"protocol": ["dns"]}, DNS_DROP, True),
        ({"protocol": ["udp", "icmp"]}, ICMP_FLOW, True),
        ({"protocol": ["icmpv4"]}, ICMP_FLOW, False),
        ({"protocol": ["sctp"]}, SCTP_FLOW, True),
        ({"source_port": ["33000"]}, TCP_FLOW, True),
        ({"destination_port": ["80", "443"]}, TCP_FLOW, True),
        ({"destination_port": ["53"]}, DNS_DROP, True),
        ({"destination_port": ["2"]}, SCTP_FLOW, True),
        ({"destination_port": ["80"]}, ICMP_FLOW, False),
        ({"reply": [False]}, TCP_FLOW, True),
        ({"reply": [True]}, TCP_FLOW, False),
        ({"reply": [False]}, DNS_DROP, True),  # unknown is_reply of a drop = not a reply
        ({"reply": [False]}, ICMP_FLOW, False),  # unknown is_reply otherwise matches nothing
        ({"dns_query": [r"\.cluster\.local\.$"]}, DNS_DROP, True),
        ({"dns_query": ["^example"]}, DNS_DROP, False),
        ({"tcp_flags": [{"SYN": True}]}, TCP_FLOW, True),
        ({"tcp_flags": [{"SYN": True, "ACK": True}]}, TCP_FLOW, True),
        ({"tcp_flags": [{"SYN": True, "FIN": True}]}, TCP_FLOW, False),
        ({"tcp_flags": [{"FIN": True}, {"ACK": True}]}, TCP_FLOW, True),
        ({"tcp_flags": [{"SYN": True}]}, HTTP_FLOW, False),  # no flags present
        ({"node_name": ["kind/node-*"]}, TCP_FLOW, True),
        ({"node_name": ["node-1"]}, TCP_FLOW, True),  # any cluster
        ({"node_name": ["other/node-1"]}, TCP_FLOW, False),
        ({"node_name": ["default/node-2"]}, HTTP_FLOW, True),  # no cluster = default
        ({"node_name": ["kind/"]}, TCP_FLOW, True),
        ({"ip_version": ["IPv6"]}, HTTP_FLOW, True),
        ({"ip_version": ["IPv6"]}, TCP_FLOW, False),
        ({"trace_id": ["abc"]}, TCP_FLOW, True),
        ({"ip_trace_id": ["42"]}, TCP_FLOW, True),
        ({"encrypted": [True]}, HTTP_FLOW, True),
        ({"encrypted": [True]}, TCP_FLOW, False),
        ({"traffic_direction": ["EGRESS"]}, TCP_FLOW, True),
        ({"traffic_direction": ["INGRESS"]}, TCP_FLOW, False),
        ({"interface": [{"name": "eth0"}]}, TCP_FLOW, True),
        ({"interface": [{"index": 8}]}, TCP_FLOW, False),
        ({"source_ip_xlated": ["10.0.0.1"]}, TCP_FLOW, False),
        # fields are AND-ed
        ({"source_ip": ["10.0.0.1"], "verdict": ["FORWARDED"]}, TCP_FLOW, True),
        ({"source_ip": ["10.0.0.1"], "verdict": ["DROPPED"]}, TCP_FLOW, False),
    ],
)
def test_field_semantics(flt: dict[str, Any], flw: flow_pb2.Flow, want: bool) -> None:
    assert m(flw, **flt) is want


@pytest.mark.parametrize(
    ("flt", "msg"),
    [
        ({"source_ip": ["10.0.0.0/33"]}, r"whitelist\[0\] filter: source_ip: invalid CIDR"),
        ({"destination_ip": ["10.0.0.300"]}, "destination_ip: invalid IP address '10.0.0.300'"),
        ({"source_pod": [""]}, "source_pod: invalid name"),
        ({"source_pod": ["a/b/c"]}, "source_pod: invalid name 'a/b/c'"),
        ({"source_label": ["app in ()"]}, "source_label: invalid label selector"),
        ({"source_label": ["app=(x"]}, "source_label: invalid label selector"),
        ({"source_label": ["app=x,"]}, "trailing ','"),
        ({"destination_label": ["=x"]}, "destination_label: invalid label selector"),
        ({"source_label": ["a b"]}, "unexpected 'b'"),
        ({"source_label": ["app=" + "x" * 64]}, "not a valid label value"),
        ({"source_fqdn": ["exa mple.com"]}, "source_fqdn: invalid character"),
        ({"destination_fqdn": ["com.."]}, "multiple trailing dots"),
        ({"node_name": ["a/b/c"]}, "node_name: too many slashes"),
        ({"http_status_code": ["600"]}, "http_status_code: invalid status code prefix '600'"),
        ({"http_status_code": ["4"]}, "invalid status code prefix '4'"),
        ({"http_path": ["(unclosed"]}, "http_path: invalid regular expression '\\(unclosed'"),
        ({"dns_query": ["*bad"]}, "dns_query: invalid regular expression"),
        ({"http_url": ["["]}, "http_url: invalid regular expression"),
        ({"protocol": ["quic"]}, "protocol: unknown protocol 'quic'"),
        ({"source_port": ["http"]}, "source_port: invalid port 'http'"),
        ({"destination_port": ["70000"]}, "destination_port: invalid port '70000'"),
        ({"source_cluster_name": [""]}, "source_cluster_name: cluster name must not be empty"),
        (
            {"event_type": [{"type": 4}], "http_status_code": ["404"]},
            "http_status_code: filtering by http status code requires",
        ),
        (
            {"experimental": {"cel_expression": ["_flow.verdict =="]}},
            r"experimental.cel_expression: error compiling CEL expression: .*Syntax error",
        ),
        (
            {"experimental": {"cel_expression": ["_flow.nope == 1"]}},
            "undefined field 'nope'",
        ),
        (
            {"experimental": {"cel_expression": ["_flow.source.pod_name"]}},
            "got 'string', wanted 'bool' result type",
        ),
        (
            {"experimental": {"cel_expression": ["true || " * 1000 + "true"]}},
            "more than the limit of 4096",
        ),
    ],
)
def test_invalid_filters_name_the_field(flt: dict[str, Any], msg: str) -> None:
    with pytest.raises(FilterError, match=msg):
        build_filter([ff(**flt)], [])


def test_blacklist_errors_name_the_blacklist() -> None:
    with pytest.raises(
        ValueError, match=r"invalid blacklist\[1\] filter: source_ip: invalid IP address 'nope'"
    ):
        build_filter([], [ff(verdict=["DROPPED"]), ff(source_ip=["nope"])])


def test_selector_parser_shapes() -> None:
    reqs = parse_selector("k8s:app in (a, b), !x, y, z notin (c), n>3, k8s:tier=")
    assert [(r.source, r.key, r.op, sorted(r.values)) for r in reqs] == [
        ("k8s", "app", "in", ["a", "b"]),
        ("any", "x", "!", []),
        ("any", "y", "exists", []),
        ("any", "z", "notin", ["c"]),
        ("any", "n", "gt", ["3"]),
        ("k8s", "tier", "=", [""]),
    ]
    assert parse_selector("") == []  # selects everything, as in Kubernetes


def test_whitelist_blacklist_lists() -> None:
    flows = [TCP_FLOW, HTTP_FLOW, DNS_DROP, ICMP_FLOW]

    def sel(w: list[flow_pb2.FlowFilter], b: list[flow_pb2.FlowFilter]) -> list[int]:
        p = build_filter(w, b)
        return [i for i, f in enumerate(flows) if p(f)]

    assert sel([], []) == [0, 1, 2, 3]
    assert sel([ff(verdict=["DROPPED"])], []) == [2]
    assert sel([ff(verdict=["DROPPED"]), ff(protocol=["icmp"])], []) == [2, 3]
    assert sel([], [ff(verdict=["DROPPED"])]) == [0, 1, 3]
    assert sel([ff(protocol=["tcp"])], [ff(protocol=["http"])]) == [0]
    assert sel([], [ff()]) == []  # an empty blacklist filter matches everything
    assert sel([ff()], []) == [0, 1, 2, 3]


# ---------------------------------------------------------------- property: list algebra

VERDICTS = ["FORWARDED", "DROPPED", "AUDIT"]
IPS = ["10.0.0.1", "10.0.0.2", "10.1.0.1", "fd00::1"]
PORTS = [53, 80, 443]
NAMESPACES = ["default", "prod"]

flows_st = st.builds(
    lambda v, s, d, port, ns: flow(
        verdict=v,
        IP={"source": s, "destination": d},
        l4={"TCP": {"destination_port": port}},
        source={"namespace": ns, "pod_name": "p-" + ns, "labels": [f"k8s:ns={ns}"]},
    ),
    st.sampled_from(VERDICTS),
    st.sampled_from(IPS),
    st.sampled_from(IPS),
    st.sampled_from(PORTS),
    st.sampled_from(NAMESPACES),
)

field_st = st.one_of(
    st.lists(st.sampled_from(VERDICTS), min_size=1, max_size=2).map(lambda v: {"verdict": v}),
    st.lists(st.sampled_from([*IPS, "10.0.0.0/16", "fd00::/8"]), min_size=1, max_size=2).map(
        lambda v: {"source_ip": v}
    ),
    st.lists(st.sampled_from([str(p) for p in PORTS]), min_size=1, max_size=2).map(
        lambda v: {"destination_port": v}
    ),
    st.sampled_from(NAMESPACES).map(lambda n: {"source_pod": [n + "/"]}),
    st.sampled_from(NAMESPACES).map(lambda n: {"source_label": [f"ns={n}"]}),
    st.sampled_from(NAMESPACES).map(lambda n: {"source_label": [f"ns!={n}"]}),
)
filter_st = st.lists(field_st, min_size=0, max_size=3).map(
    lambda parts: ff(**{k: v for part in parts for k, v in part.items()})
)


def _fields(flt: flow_pb2.FlowFilter) -> list[flow_pb2.FlowFilter]:
    """One single-field FlowFilter per set field of ``flt``."""
    out = []
    for desc, value in flt.ListFields():
        single = flow_pb2.FlowFilter()
        getattr(single, desc.name).extend(value)
        out.append(single)
    return out


@settings(max_examples=150, deadline=None)
@given(
    st.lists(filter_st, max_size=3),
    st.lists(filter_st, max_size=3),
    st.lists(flows_st, min_size=1, max_size=5),
)
def test_whitelist_minus_blacklist_algebra(
    white: list[flow_pb2.FlowFilter],
    black: list[flow_pb2.FlowFilter],
    flows: list[flow_pb2.Flow],
) -> None:
    pred = build_filter(white, black)
    for f in flows:
        # a FlowFilter is the AND of its fields
        single = [all(compile_flow_filter(x)(f) for x in _fields(w)) for w in white]
        banned = [all(compile_flow_filter(x)(f) for x in _fields(b)) for b in black]
        assert pred(f) == ((not white or any(single)) and not any(banned))
        # the whitelist alone, the blacklist alone, and their composition agree
        allowed = build_filter(white, [])(f)
        kept = build_filter([], black)(f)
        assert pred(f) == (allowed and kept)
        # a filter black-listed as well as white-listed never shows
        if white:
            assert not build_filter(white, white)(f)


# --------------------------------------------------------------------------- CEL


@pytest.mark.parametrize(
    ("expression", "matches"),
    [
        ("_flow.verdict == Verdict.FORWARDED", True),
        ("_flow.verdict == flow.Verdict.DROPPED", False),
        ("_flow.source.pod_name == 'client-abc' && _flow.destination.namespace == 'prod'", True),
        ("_flow.l4.TCP.destination_port == 80u", True),
        ("has(_flow.l4.TCP) && !has(_flow.l4.UDP)", True),
        ("_flow.l4.TCP.flags.SYN && _flow.l4.TCP.flags.ACK", True),
        ("_flow.is_reply == false", True),
        ("_flow.source.labels.exists(l, l == 'k8s:app=client')", True),
        ("_flow.source.cluster_name == 'c2'", False),
        ("_flow.traffic_direction == TrafficDirection.INGRESS", False),
        ("_flow.IP.source.startsWith('10.0.')", True),
        ("1 / 0 == 1", False),  # an evaluation error does not match
    ],
)
def test_cel_expression_over_the_flow(expression: str, matches: bool) -> None:
    """Upstream's environment: ``_flow`` is a flow.Flow, enums by name in the flow package."""
    pred = build_filter([ff(experimental={"cel_expression": [expression]})], [])
    assert pred(TCP_FLOW) is matches


def test_cel_expressions_of_one_filter_are_alternatives_and_combine_with_fields() -> None:
    either = ff(
        experimental={
            "cel_expression": ["_flow.verdict == Verdict.DROPPED", "_flow.l4.TCP.flags.SYN"]
        }
    )
    assert build_filter([either], [])(TCP_FLOW)
    assert build_filter([either], [])(DNS_DROP)
    assert not build_filter([either], [])(ICMP_FLOW)
    both = ff(verdict=["DROPPED"], experimental={"cel_expression": ["_flow.l4.TCP.flags.SYN"]})
    assert not build_filter([both], [])(TCP_FLOW)
    deny = ff(experimental={"cel_expression": ["_flow.source.pod_name == 'client-abc'"]})
    assert not build_filter([], [deny])(TCP_FLOW)
    assert build_filter([], [deny])(DNS_DROP)
