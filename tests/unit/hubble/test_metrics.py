"""Hubble flow metrics: spec parsing, upstream names/labels/values, context options, HTTP."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from google.protobuf.wrappers_pb2 import BoolValue
from prometheus_client import CollectorRegistry

from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.gopacket import icmp_text
from ciliary.hubble.metrics import (
    FlowMetrics,
    MetricsServer,
    parse_listen_address,
    parse_metrics_spec,
)

V = flow_pb2.Verdict
SRC_LABELS = ["k8s:app=web", "k8s:io.kubernetes.pod.namespace=shop"]
DST_LABELS = ["k8s:app.kubernetes.io/name=postgres"]


def tcp_flow(
    *,
    verdict: flow_pb2.Verdict.ValueType = V.FORWARDED,
    syn: bool = False,
    ack: bool = False,
    fin: bool = False,
    rst: bool = False,
    dport: int = 80,
    reply: bool | None = False,
    event_type: int = 4,
    sub_type: int = 0,
    direction: flow_pb2.TrafficDirection.ValueType = flow_pb2.TrafficDirection.EGRESS,
) -> flow_pb2.Flow:
    flow = flow_pb2.Flow(
        verdict=verdict,
        IP=flow_pb2.IP(source="10.0.0.1", destination="10.0.1.2", ipVersion=flow_pb2.IPv4),
        l4=flow_pb2.Layer4(
            TCP=flow_pb2.TCP(
                source_port=40000,
                destination_port=dport,
                flags=flow_pb2.TCPFlags(SYN=syn, ACK=ack, FIN=fin, RST=rst),
            )
        ),
        source=flow_pb2.Endpoint(
            ID=7,
            identity=1001,
            namespace="shop",
            pod_name="web-6d4cf56db6-abcde",
            labels=SRC_LABELS,
            workloads=[flow_pb2.Workload(name="web", kind="Deployment")],
        ),
        destination=flow_pb2.Endpoint(
            identity=1002,
            namespace="db",
            pod_name="pg-0",
            labels=DST_LABELS,
        ),
        event_type=flow_pb2.CiliumEventType(type=event_type, sub_type=sub_type),
        traffic_direction=direction,
    )
    if reply is not None:
        flow.is_reply.CopyFrom(BoolValue(value=reply))
    return flow


def metrics(spec: str) -> tuple[FlowMetrics, CollectorRegistry]:
    reg = CollectorRegistry()
    return FlowMetrics(spec, reg), reg


# ---- spec ---------------------------------------------------------------------------------


def test_spec_parsing_spaces_commas_and_options() -> None:
    specs = parse_metrics_spec(
        "dns:query;ignoreAAAA,drop:sourceContext=pod;destinationContext=pod tcp,flow "
        "port-distribution icmp policy flows-to-world "
        "httpV2:exemplars=true;labelsContext=source_ip,source_namespace,traffic_direction"
    )
    assert [s.name for s in specs] == [
        "dns", "drop", "tcp", "flow", "port-distribution", "icmp", "policy", "flows-to-world",
        "httpV2",
    ]  # fmt: skip
    assert specs[0].options == {"query": "", "ignoreAAAA": ""}
    assert specs[1].options == {"sourceContext": "pod", "destinationContext": "pod"}
    assert specs[-1].options["labelsContext"] == "source_ip,source_namespace,traffic_direction"
    assert parse_metrics_spec(["flow", "drop"]) == parse_metrics_spec("flow drop")
    assert parse_metrics_spec("") == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("flows", "unknown Hubble metric 'flows'"),
        ("flow:bogus=1", "metric 'flow': unknown option 'bogus'"),
        ("drop:sourceContext=pods", "unknown context 'pods'"),
        ("drop:sourceContext=", "expected a '|'-separated chain"),
        ("tcp:labelsContext=source_ip,nope", "invalid labelsContext value 'nope'"),
        ("flow flow", "given twice"),
        ("http httpV2", "cannot be enabled together"),
        ("httpV2:exemplars=yes", "exemplars='yes'"),
    ],
)
def test_invalid_specs_name_the_problem(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FlowMetrics(spec, CollectorRegistry())


def test_empty_spec_registers_nothing() -> None:
    fm, reg = metrics("")
    assert not fm.enabled
    fm.on_flow(tcp_flow())
    fm.on_lost(flow_pb2.LostEvent(source=flow_pb2.HUBBLE_RING_BUFFER, num_events_lost=3))
    assert list(reg.collect()) == []


# ---- handlers -----------------------------------------------------------------------------


def test_flows_processed_labels() -> None:
    fm, reg = metrics("flow")
    fm.on_flow(tcp_flow(sub_type=5))  # trace from-endpoint
    fm.on_flow(tcp_flow(verdict=V.DROPPED, event_type=1))
    fm.on_flow(tcp_flow(event_type=5))
    labels = {
        "protocol": "TCP",
        "type": "Trace",
        "subtype": "from-endpoint",
        "verdict": "FORWARDED",
    }
    assert reg.get_sample_value("hubble_flows_processed_total", labels) == 1
    drop = {"protocol": "TCP", "type": "Drop", "subtype": "", "verdict": "DROPPED"}
    assert reg.get_sample_value("hubble_flows_processed_total", drop) == 1
    verdict = {"protocol": "TCP", "type": "PolicyVerdict", "subtype": "", "verdict": "FORWARDED"}
    assert reg.get_sample_value("hubble_flows_processed_total", verdict) == 1


def test_drop_total_counts_only_drops_with_reason() -> None:
    fm, reg = metrics("drop")
    dropped = tcp_flow(verdict=V.DROPPED, event_type=1)
    dropped.drop_reason_desc = flow_pb2.POLICY_DENIED
    fm.on_flow(dropped)
    fm.on_flow(dropped)
    fm.on_flow(tcp_flow())
    labels = {"reason": "POLICY_DENIED", "protocol": "TCP"}
    assert reg.get_sample_value("hubble_drop_total", labels) == 2


def test_tcp_flags() -> None:
    fm, reg = metrics("tcp")
    fm.on_flow(tcp_flow(syn=True))
    fm.on_flow(tcp_flow(syn=True, ack=True, reply=True))
    fm.on_flow(tcp_flow(fin=True, ack=True))
    fm.on_flow(tcp_flow(rst=True, verdict=V.DROPPED))  # not forwarded: ignored
    for flag in ("SYN", "SYN-ACK", "FIN"):
        assert reg.get_sample_value("hubble_tcp_flags_total", {"flag": flag, "family": "IPv4"}) == 1
    assert reg.get_sample_value("hubble_tcp_flags_total", {"flag": "RST", "family": "IPv4"}) is None


def test_port_distribution_skips_replies_and_unknown_direction() -> None:
    fm, reg = metrics("port-distribution")
    fm.on_flow(tcp_flow(dport=443))
    fm.on_flow(tcp_flow(dport=40000, reply=True))
    fm.on_flow(tcp_flow(dport=8080, reply=None))
    assert (
        reg.get_sample_value("hubble_port_distribution_total", {"protocol": "TCP", "port": "443"})
        == 1
    )
    assert (
        reg.get_sample_value("hubble_port_distribution_total", {"protocol": "TCP", "port": "40000"})
        is None
    )
    unknown_direction = {"protocol": "TCP", "port": "8080"}
    assert reg.get_sample_value("hubble_port_distribution_total", unknown_direction) is None


def test_icmp_names_as_gopacket() -> None:
    fm, reg = metrics("icmp")
    ping = flow_pb2.Flow(l4=flow_pb2.Layer4(ICMPv4=flow_pb2.ICMPv4(type=8)))
    unreachable = flow_pb2.Flow(l4=flow_pb2.Layer4(ICMPv6=flow_pb2.ICMPv6(type=1, code=4)))
    fm.on_flow(ping)
    fm.on_flow(unreachable)
    assert reg.get_sample_value("hubble_icmp_total", {"family": "IPv4", "type": "EchoRequest"}) == 1
    six = {"family": "IPv6", "type": "DestinationUnreachable(PortUnreachable)"}
    assert reg.get_sample_value("hubble_icmp_total", six) == 1
    assert icmp_text({}, 42, 1) == "42(1)"
    assert icmp_text({8: ("EchoRequest", None)}, 8, 3) == "EchoRequest(Code: 3)"


def test_policy_verdicts() -> None:
    fm, reg = metrics("policy")
    allowed = tcp_flow(event_type=5, direction=flow_pb2.TrafficDirection.INGRESS)
    allowed.policy_match_type = 2
    denied = tcp_flow(verdict=V.DROPPED, event_type=5)
    from_host = tcp_flow(event_type=5)
    from_host.source.identity = 1
    for flow in (allowed, denied, from_host, tcp_flow()):  # the trace event is not a verdict
        fm.on_flow(flow)
    ingress = {"direction": "ingress", "match": "l3-l4", "action": "forwarded"}
    assert reg.get_sample_value("hubble_policy_verdicts_total", ingress) == 1
    egress = {"direction": "egress", "match": "none", "action": "dropped"}
    assert reg.get_sample_value("hubble_policy_verdicts_total", egress) == 1
    total = sum(
        s.value
        for m in reg.collect()
        for s in m.samples
        if s.name == "hubble_policy_verdicts_total"
    )
    assert total == 2


def test_flows_to_world_options() -> None:
    fm, reg = metrics("flows-to-world:port;syn-only")
    out = tcp_flow(syn=True, dport=443)
    out.destination.labels[:] = ["reserved:world"]
    not_syn = tcp_flow(ack=True, dport=443)
    not_syn.destination.labels[:] = ["reserved:world"]
    inside = tcp_flow(syn=True)
    for flow in (out, not_syn, inside):
        fm.on_flow(flow)
    labels = {"protocol": "TCP", "verdict": "FORWARDED", "port": "443"}
    assert reg.get_sample_value("hubble_flows_to_world_total", labels) == 1

    fm2, reg2 = metrics("flows-to-world")
    other_drop = tcp_flow(verdict=V.DROPPED, event_type=1)
    other_drop.destination.labels[:] = ["reserved:world"]
    other_drop.drop_reason_desc = flow_pb2.CT_MAP_INSERTION_FAILED
    fm2.on_flow(other_drop)  # not a policy drop: ignored without any-drop
    policy_drop = flow_pb2.Flow()
    policy_drop.CopyFrom(other_drop)
    policy_drop.drop_reason_desc = flow_pb2.POLICY_DENIED
    fm2.on_flow(policy_drop)
    assert (
        reg2.get_sample_value(
            "hubble_flows_to_world_total", {"protocol": "TCP", "verdict": "DROPPED"}
        )
        == 1
    )


def test_lost_events_always_on_with_any_metric() -> None:
    fm, reg = metrics("icmp")
    fm.on_lost(flow_pb2.LostEvent(source=flow_pb2.PERF_EVENT_RING_BUFFER, num_events_lost=5))
    fm.on_lost(flow_pb2.LostEvent(source=flow_pb2.OBSERVER_EVENTS_QUEUE, num_events_lost=1))
    assert (
        reg.get_sample_value("hubble_lost_events_total", {"source": "perf_event_ring_buffer"}) == 5
    )
    assert (
        reg.get_sample_value("hubble_lost_events_total", {"source": "observer_events_queue"}) == 1
    )


# ---- context options ----------------------------------------------------------------------


def test_source_and_destination_context_chains() -> None:
    fm, reg = metrics("drop:sourceContext=pod;destinationContext=dns|ip")
    flow = tcp_flow(verdict=V.DROPPED, event_type=1)
    fm.on_flow(flow)
    labels = {
        "source": "shop/web-6d4cf56db6-abcde",
        "destination": "10.0.1.2",
        "reason": "DROP_REASON_UNKNOWN",
        "protocol": "TCP",
    }
    assert reg.get_sample_value("hubble_drop_total", labels) == 1


@pytest.mark.parametrize(
    ("context", "source", "destination"),
    [
        ("identity", ",".join(SRC_LABELS), ",".join(DST_LABELS)),
        ("namespace", "shop", "db"),
        ("pod-name", "web-6d4cf56db6-abcde", "pg-0"),
        ("pod-short", "shop/web", "db/pg"),
        ("workload", "shop/web", ""),
        ("workload-name", "web", ""),
        ("app", "web", "postgres"),
        ("reserved-identity|namespace", "shop", "db"),
    ],
)  # fmt: skip
def test_context_identifiers(context: str, source: str, destination: str) -> None:
    fm, reg = metrics(f"tcp:sourceContext={context};destinationContext={context}")
    fm.on_flow(tcp_flow(syn=True))
    labels = {"flag": "SYN", "family": "IPv4", "source": source, "destination": destination}
    assert reg.get_sample_value("hubble_tcp_flags_total", labels) == 1


def test_reserved_identity_prefers_kube_apiserver() -> None:
    fm, reg = metrics("tcp:destinationContext=reserved-identity")
    flow = tcp_flow(syn=True)
    flow.destination.labels[:] = ["reserved:world", "reserved:kube-apiserver"]
    fm.on_flow(flow)
    labels = {"flag": "SYN", "family": "IPv4", "destination": "reserved:kube-apiserver"}
    assert reg.get_sample_value("hubble_tcp_flags_total", labels) == 1


def test_egress_context_overrides_on_egress_only() -> None:
    fm, reg = metrics("tcp:sourceContext=namespace;sourceEgressContext=pod-name")
    fm.on_flow(tcp_flow(syn=True))  # egress
    fm.on_flow(tcp_flow(syn=True, direction=flow_pb2.TrafficDirection.INGRESS))
    base = {"flag": "SYN", "family": "IPv4"}
    assert (
        reg.get_sample_value("hubble_tcp_flags_total", {**base, "source": "web-6d4cf56db6-abcde"})
        == 1
    )
    assert reg.get_sample_value("hubble_tcp_flags_total", {**base, "source": "shop"}) == 1


def test_labels_context_separate_labels_always_present() -> None:
    spec = (
        "flow:labelsContext=traffic_direction,source_namespace,source_workload_kind,"
        "destination_app,destination_workload,source_ip"
    )
    fm, reg = metrics(spec)
    fm.on_flow(tcp_flow())
    labels = {
        "protocol": "TCP",
        "type": "Trace",
        "subtype": "to-endpoint",
        "verdict": "FORWARDED",
        "source_ip": "10.0.0.1",
        "source_namespace": "shop",
        "source_workload_kind": "Deployment",
        "destination_workload": "",
        "destination_app": "postgres",
        "traffic_direction": "egress",
    }
    assert reg.get_sample_value("hubble_flows_processed_total", labels) == 1


# ---- L7 -----------------------------------------------------------------------------------


def test_l7_families_registered_but_empty_without_l7_flows() -> None:
    fm, reg = metrics("dns:query httpV2 kafka")
    fm.on_flow(tcp_flow())
    names = {m.name for m in reg.collect()}
    assert {"hubble_dns_queries", "hubble_http_requests", "hubble_kafka_requests"} <= names
    assert all(not m.samples for m in reg.collect() if m.name != "hubble_lost_events")


def test_dns_and_http_v2_from_l7_flows() -> None:
    fm, reg = metrics("dns:ignoreAAAA httpV2:sourceContext=namespace")
    query = flow_pb2.Flow(
        event_type=flow_pb2.CiliumEventType(type=129),
        l7=flow_pb2.Layer7(dns=flow_pb2.DNS(query="db.", qtypes=["A"])),
        is_reply=BoolValue(value=False),
    )
    answer = flow_pb2.Flow(
        event_type=flow_pb2.CiliumEventType(type=129),
        l7=flow_pb2.Layer7(
            dns=flow_pb2.DNS(query="db.", qtypes=["A"], ips=["10.0.1.2"], rrtypes=["A"], rcode=0)
        ),
        is_reply=BoolValue(value=True),
    )
    aaaa = flow_pb2.Flow(l7=flow_pb2.Layer7(dns=flow_pb2.DNS(qtypes=["AAAA"])))
    response = flow_pb2.Flow(
        event_type=flow_pb2.CiliumEventType(type=129),
        traffic_direction=flow_pb2.TrafficDirection.INGRESS,
        source=flow_pb2.Endpoint(namespace="server-ns"),
        destination=flow_pb2.Endpoint(namespace="client-ns"),
        l7=flow_pb2.Layer7(
            type=flow_pb2.L7FlowType.RESPONSE,
            latency_ns=2_000_000,
            http=flow_pb2.HTTP(code=200, method="GET", protocol="HTTP/1.1"),
        ),
    )
    for flow in (query, answer, aaaa, response):
        fm.on_flow(flow)
    q = {"rcode": "", "qtypes": "A", "ips_returned": "0"}
    assert reg.get_sample_value("hubble_dns_queries_total", q) == 1
    r = {"rcode": "No Error", "qtypes": "A", "ips_returned": "1"}
    assert reg.get_sample_value("hubble_dns_responses_total", r) == 1
    assert (
        reg.get_sample_value("hubble_dns_response_types_total", {"type": "A", "qtypes": "A"}) == 1
    )
    http = {
        "source": "client-ns",  # httpV2 labels from the request's point of view
        "method": "GET",
        "protocol": "HTTP/1.1",
        "status": "200",
        "reporter": "server",
    }
    assert reg.get_sample_value("hubble_http_requests_total", http) == 1
    duration = {"source": "client-ns", "method": "GET", "reporter": "server"}
    assert reg.get_sample_value("hubble_http_request_duration_seconds_sum", duration) == 0.002


def test_a_failing_handler_never_breaks_the_flow_path(caplog: pytest.LogCaptureFixture) -> None:
    fm, reg = metrics("flow tcp")

    class Boom:
        def process(self, flow: flow_pb2.Flow) -> None:
            raise RuntimeError("boom")

    fm._handlers.insert(0, ("boom", Boom()))
    fm.on_flow(tcp_flow(syn=True))
    fm.on_flow(tcp_flow(syn=True))
    assert reg.get_sample_value("hubble_tcp_flags_total", {"flag": "SYN", "family": "IPv4"}) == 2
    assert sum("boom" in r.getMessage() for r in caplog.records) == 1


# ---- HTTP server --------------------------------------------------------------------------


def test_parse_listen_address() -> None:
    assert parse_listen_address(":9965") == (None, 9965)
    assert parse_listen_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen_address("[::1]:9965") == ("::1", 9965)
    for bad in ("9965", "host:", "host:99999"):
        with pytest.raises(ValueError, match="invalid listen address"):
            parse_listen_address(bad)


def _get(url: str, accept: str | None = None) -> tuple[str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.headers["Content-Type"], response.read().decode()


def test_metrics_server_scrape_text_and_openmetrics() -> None:
    async def scenario() -> tuple[tuple[str, str], tuple[str, str], int]:
        fm, reg = metrics("flow")
        fm.on_flow(tcp_flow())
        server = MetricsServer(reg, "127.0.0.1:0")
        await server.start()
        try:
            assert server.port > 0
            url = f"http://127.0.0.1:{server.port}/metrics"
            text = await asyncio.to_thread(_get, url)
            openmetrics = await asyncio.to_thread(
                _get, url, "application/openmetrics-text; version=1.0.0"
            )
            return text, openmetrics, server.port
        finally:
            await server.stop()

    (ctype, body), (om_type, om_body), _port = asyncio.run(scenario())
    assert ctype.startswith("text/plain")
    assert 'hubble_flows_processed_total{protocol="TCP",subtype="to-endpoint",type="Trace",' in body
    assert om_type.startswith("application/openmetrics-text")
    assert om_body.rstrip().endswith("# EOF")


# ---- upstream's HTTP handler examples (pkg/hubble/metrics/http/handler_test.go) -------------

_REQUEST_SIDE = flow_pb2.Endpoint(
    namespace="source-ns",
    pod_name="source-deploy-pod",
    workloads=[flow_pb2.Workload(name="source-deploy", kind="Deployment")],
    labels=["k8s:app=sourceapp"],
)
_RESPONDER = flow_pb2.Endpoint(
    namespace="destination-ns",
    pod_name="destination-deploy-pod",
    workloads=[flow_pb2.Workload(name="destination-deploy", kind="Deployment")],
    labels=["k8s:app=destinationapp"],
)


def _l7_http(kind: int, direction: int = flow_pb2.TrafficDirection.INGRESS, **http: object) -> (
    flow_pb2.Flow
):  # fmt: skip
    return flow_pb2.Flow(
        traffic_direction=direction,  # type: ignore[arg-type]
        l7=flow_pb2.Layer7(type=kind, latency_ns=12345678, http=flow_pb2.HTTP(**http)),  # type: ignore[arg-type]
    )


def test_http_v1_counts_requests_and_responses_apart_as_upstream() -> None:
    fm, reg = metrics("http")
    fm.on_flow(flow_pb2.Flow())  # not counted
    fm.on_flow(flow_pb2.Flow(l7=flow_pb2.Layer7(type=flow_pb2.L7FlowType.RESPONSE,
                                                dns=flow_pb2.DNS())))  # fmt: skip
    fm.on_flow(_l7_http(flow_pb2.L7FlowType.REQUEST, method="GET"))
    fm.on_flow(_l7_http(flow_pb2.L7FlowType.RESPONSE, method="GET", code=200))
    base = {"method": "GET", "protocol": "", "reporter": "server"}
    assert reg.get_sample_value("hubble_http_requests_total", base) == 1
    assert reg.get_sample_value("hubble_http_responses_total", {**base, "status": "200"}) == 1
    duration = {"method": "GET", "reporter": "server"}
    buckets = {
        le: reg.get_sample_value("hubble_http_request_duration_seconds_bucket",
                                 {**duration, "le": le})
        for le in ("0.005", "0.01", "0.025", "10.0", "+Inf")
    }  # fmt: skip
    assert buckets == {"0.005": 0, "0.01": 0, "0.025": 1, "10.0": 1, "+Inf": 1}
    assert reg.get_sample_value("hubble_http_request_duration_seconds_sum", duration) == (
        0.012345678
    )


def test_http_v2_counts_responses_from_the_requests_side_as_upstream() -> None:
    with pytest.raises(ValueError, match="invalid"):
        metrics("httpV2:destinationContext=invalid")
    fm, reg = metrics(
        "httpV2:sourceContext=pod;destinationContext=pod;labelsContext=source_pod,destination_pod"
    )
    fm.on_flow(flow_pb2.Flow())
    fm.on_flow(_l7_http(flow_pb2.L7FlowType.REQUEST, method="GET"))  # v2 counts responses only
    response = _l7_http(flow_pb2.L7FlowType.RESPONSE, protocol="HTTP/1.1", code=200, method="GET")
    response.source.CopyFrom(_RESPONDER)  # a response goes back: the handler inverts the sides
    response.destination.CopyFrom(_REQUEST_SIDE)
    fm.on_flow(response)
    labels = {
        "source": "source-ns/source-deploy-pod", "source_pod": "source-deploy-pod",
        "destination": "destination-ns/destination-deploy-pod",
        "destination_pod": "destination-deploy-pod",
        "method": "GET", "protocol": "HTTP/1.1", "status": "200", "reporter": "server",
    }  # fmt: skip
    assert reg.get_sample_value("hubble_http_requests_total", labels) == 1
    samples = [
        s for m in reg.collect() for s in m.samples if s.name == "hubble_http_requests_total"
    ]
    assert len(samples) == 1  # the request flow was not counted
    duration = {k: v for k, v in labels.items() if k not in ("protocol", "status")}
    assert reg.get_sample_value("hubble_http_request_duration_seconds_count", duration) == 1
    # workload-name contexts (the dashboard's by-workload view without labelsContext)
    fm, reg = metrics("httpV2:sourceContext=workload-name;destinationContext=workload-name")
    egress = _l7_http(flow_pb2.L7FlowType.RESPONSE, flow_pb2.TrafficDirection.EGRESS,
                      protocol="HTTP/1.1", code=403, method="PUT")  # fmt: skip
    egress.source.CopyFrom(_RESPONDER)
    egress.destination.CopyFrom(_REQUEST_SIDE)
    fm.on_flow(egress)
    assert reg.get_sample_value("hubble_http_requests_total", {
        "source": "source-deploy", "destination": "destination-deploy", "method": "PUT",
        "protocol": "HTTP/1.1", "status": "403", "reporter": "client",
    }) == 1  # fmt: skip


def test_dns_denied_queries_and_response_types_as_upstream() -> None:
    """Upstream's dns handler: a DROPPED query (the DNS proxy refused it) counts as a query
    with rcode "Policy denied"; each of a response's rrtypes counts once; ``query`` adds the
    name to all three families."""
    fm, reg = metrics("dns:query")
    fm.on_flow(flow_pb2.Flow(
        verdict=flow_pb2.Verdict.DROPPED, is_reply=BoolValue(value=False),
        l7=flow_pb2.Layer7(type=flow_pb2.L7FlowType.REQUEST,
                           dns=flow_pb2.DNS(query="evil.example.", qtypes=["A"])),
    ))  # fmt: skip
    fm.on_flow(flow_pb2.Flow(
        verdict=flow_pb2.Verdict.FORWARDED, is_reply=BoolValue(value=True),
        l7=flow_pb2.Layer7(type=flow_pb2.L7FlowType.RESPONSE, dns=flow_pb2.DNS(
            query="web.example.", qtypes=["A"], ips=["192.0.2.1", "192.0.2.2"],
            rrtypes=["CNAME", "A", "A"], rcode=0)),
    ))  # fmt: skip
    denied = {"rcode": "Policy denied", "qtypes": "A", "ips_returned": "0",
              "query": "evil.example."}  # fmt: skip
    assert reg.get_sample_value("hubble_dns_queries_total", denied) == 1
    answered = {"rcode": "No Error", "qtypes": "A", "ips_returned": "2", "query": "web.example."}
    assert reg.get_sample_value("hubble_dns_responses_total", answered) == 1
    types = {"qtypes": "A", "query": "web.example."}
    assert reg.get_sample_value("hubble_dns_response_types_total", {**types, "type": "A"}) == 2
    assert reg.get_sample_value("hubble_dns_response_types_total", {**types, "type": "CNAME"}) == 1
