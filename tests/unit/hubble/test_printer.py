"""Golden output of the Hubble printer: upstream ``hubble``'s own expected lines."""

from __future__ import annotations

import io

import pytest
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.api.observer import observer_pb2
from ciliary.hubble.api.relay import relay_pb2
from ciliary.hubble.goformat import format_timestamp, go_duration
from ciliary.hubble.printer import (
    Output,
    Printer,
    PrinterOptions,
    flow_type,
    policy_names,
)


def _flow(**changes: object) -> flow_pb2.Flow:
    """Upstream printer_test's flow: 1.1.1.1:31793 (health) -> 2.2.2.2:8080, Policy denied."""
    f = flow_pb2.Flow(
        time=Timestamp(seconds=1234, nanos=567800000),
        Type=flow_pb2.L3_L4,
        node_name="k8s1",
        verdict=flow_pb2.DROPPED,
        IP=flow_pb2.IP(source="1.1.1.1", destination="2.2.2.2"),
        source=flow_pb2.Endpoint(identity=4),
        destination=flow_pb2.Endpoint(identity=12345),
        event_type=flow_pb2.CiliumEventType(type=1, sub_type=133),
        Summary="TCP Flags: SYN",
    )
    f.l4.TCP.source_port = 31793
    f.l4.TCP.destination_port = 8080
    f.is_reply.value = False
    for key, value in changes.items():
        if value is None:
            f.ClearField(key)  # type: ignore[arg-type]
        elif isinstance(value, list):
            getattr(f, key).extend(value)
        elif hasattr(value, "DESCRIPTOR"):
            getattr(f, key).CopyFrom(value)
        else:
            setattr(f, key, value)
    return f


def render(responses: list[observer_pb2.GetFlowsResponse], **opts: object) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    printer = Printer(PrinterOptions(**opts), out, err)  # type: ignore[arg-type]
    for res in responses:
        printer.write_get_flows_response(res)
    printer.close()
    return out.getvalue(), err.getvalue()


def flows(*fs: flow_pb2.Flow) -> list[observer_pb2.GetFlowsResponse]:
    return [observer_pb2.GetFlowsResponse(flow=f) for f in fs]


COMPACT = (
    "Jan  1 00:20:34.567: 1.1.1.1:31793 (health) -> 2.2.2.2:8080 (ID:12345) "
    "Policy denied DROPPED (TCP Flags: SYN)\n"
)


def test_compact() -> None:
    assert render(flows(_flow()))[0] == COMPACT


def test_compact_with_node_reply_and_unknown_direction() -> None:
    out, _ = render(flows(_flow(), _flow(is_reply=None)), node_name=True)
    reply = _flow()
    reply.is_reply.value = True
    out2, _ = render(flows(reply), node_name=True)
    assert out.splitlines() == [
        "Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) -> 2.2.2.2:8080 (ID:12345) "
        "Policy denied DROPPED (TCP Flags: SYN)",
        "Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) <> 2.2.2.2:8080 (ID:12345) "
        "Policy denied DROPPED (TCP Flags: SYN)",
    ]
    assert out2 == (
        "Jan  1 00:20:34.567 [k8s1]: 2.2.2.2:8080 (ID:12345) <- 1.1.1.1:31793 (health) "
        "Policy denied DROPPED (TCP Flags: SYN)\n"
    )


def test_compact_pods_and_ip_trace_id() -> None:
    f = _flow(
        source=flow_pb2.Endpoint(identity=12345, namespace="default", pod_name="client"),
        destination=flow_pb2.Endpoint(identity=23456, namespace="shop", pod_name="web"),
        event_type=flow_pb2.CiliumEventType(type=4, sub_type=0),
        verdict=flow_pb2.FORWARDED,
    )
    f.ip_trace_id.trace_id = 1234
    assert render(flows(f))[0] == (
        "Jan  1 00:20:34.567: default/client:31793 (ID:12345) -> shop/web:8080 (ID:23456) "
        "to-endpoint FORWARDED (IP Trace ID: 1234; TCP Flags: SYN)\n"
    )
    # --numeric (no IP translation) shows addresses
    assert render(flows(f), ip_translation=False)[0].startswith(
        "Jan  1 00:20:34.567: 1.1.1.1:31793 (ID:12345) -> 2.2.2.2:8080 (ID:23456) "
    )


def test_policy_verdicts_with_and_without_names() -> None:
    denied = _flow(
        event_type=flow_pb2.CiliumEventType(type=5),
        is_reply=None,
        traffic_direction=flow_pb2.EGRESS,
        egress_denied_by=[
            flow_pb2.Policy(name="my-policy", namespace="ns", kind="CiliumNetworkPolicy")
        ],
    )
    allowed = _flow(
        event_type=flow_pb2.CiliumEventType(type=5),
        verdict=flow_pb2.FORWARDED,
        is_reply=None,
        traffic_direction=flow_pb2.INGRESS,
        policy_match_type=1,
        ingress_allowed_by=[
            flow_pb2.Policy(name="my-policy", namespace="ns", kind="CiliumNetworkPolicy"),
            flow_pb2.Policy(name="my-policy-2", kind="CiliumClusterwideNetworkPolicy"),
        ],
    )
    head = "Jan  1 00:20:34.567: 1.1.1.1:31793 (health) <> 2.2.2.2:8080 (ID:12345) "
    assert render(flows(denied))[0] == head + (
        "policy-verdict:none EGRESS DENIED (TCP Flags: SYN)\n"
    )
    out, _ = render(flows(denied, allowed), policy_names=True)
    assert out.splitlines() == [
        head + "policy-verdict:none EGRESS DENIED BY my-policy (CiliumNetworkPolicy) "
        "(TCP Flags: SYN)",
        head + "policy-verdict:L3-Only INGRESS ALLOWED BY my-policy (CiliumNetworkPolicy), "
        "my-policy-2 (CiliumClusterwideNetworkPolicy) (TCP Flags: SYN)",
    ]


def test_policy_names_skips_incomplete() -> None:
    assert policy_names([]) == ""
    assert policy_names([flow_pb2.Policy(name="a")]) == ""
    assert (
        policy_names([flow_pb2.Policy(name="a", kind="K"), flow_pb2.Policy(kind="K")])
        == " BY a (K)"
    )


def test_dict_and_table() -> None:
    out, _ = render(flows(_flow(), _flow()), output=Output.DICT, node_name=True)
    block = (
        "  TIMESTAMP: Jan  1 00:20:34.567\n"
        "       NODE: k8s1\n"
        "     SOURCE: 1.1.1.1:31793\n"
        "DESTINATION: 2.2.2.2:8080\n"
        "       TYPE: Policy denied\n"
        "    VERDICT: DROPPED\n"
        "    SUMMARY: TCP Flags: SYN\n"
    )
    assert out == block + "------------\n" + block
    out, _ = render(flows(_flow()), output=Output.TABLE)
    assert out == (
        "TIMESTAMP             SOURCE          DESTINATION    TYPE            VERDICT   SUMMARY\n"
        "Jan  1 00:20:34.567   1.1.1.1:31793   2.2.2.2:8080   Policy denied   DROPPED   "
        "TCP Flags: SYN\n"
    )


def test_jsonpb_round_trip() -> None:
    res = observer_pb2.GetFlowsResponse(flow=_flow(), node_name="k8s1")
    out, _ = render([res], output=Output.JSONPB)
    assert out == (
        '{"flow":{"time":"1970-01-01T00:20:34.567800Z","verdict":"DROPPED",'
        '"IP":{"source":"1.1.1.1","destination":"2.2.2.2"},'
        '"l4":{"TCP":{"source_port":31793,"destination_port":8080}},'
        '"source":{"identity":4},"destination":{"identity":12345},'
        '"Type":"L3_L4","node_name":"k8s1",'
        '"event_type":{"type":1,"sub_type":133},'
        '"is_reply":false,"Summary":"TCP Flags: SYN"},"node_name":"k8s1"}\n'
    )
    back = json_format.Parse(out, observer_pb2.GetFlowsResponse())
    assert back == res


def _lost(node: str = "") -> observer_pb2.GetFlowsResponse:
    res = observer_pb2.GetFlowsResponse(
        time=Timestamp(seconds=1234, nanos=567800000),
        node_name=node,
        lost_events=flow_pb2.LostEvent(source=flow_pb2.HUBBLE_RING_BUFFER, num_events_lost=1),
    )
    res.lost_events.cpu.value = 5
    return res


def test_lost_events_all_formats() -> None:
    assert render([_lost()])[0] == "Jan  1 00:20:34.567 EVENTS LOST: HUBBLE_RING_BUFFER CPU(5) 1\n"
    assert render([_lost("node-name")], node_name=True)[0] == (
        "Jan  1 00:20:34.567 EVENTS LOST: HUBBLE_RING_BUFFER CPU(5) 1\n"
    )
    assert render([_lost()], output=Output.TABLE)[0] == (
        "TIMESTAMP             SOURCE               DESTINATION   TYPE          VERDICT   SUMMARY\n"
        "Jan  1 00:20:34.567   HUBBLE_RING_BUFFER   -             EVENTS LOST   -         "
        "CPU(5) - 1\n"
    )
    assert render([_lost()], output=Output.DICT)[0] == (
        "  TIMESTAMP: Jan  1 00:20:34.567\n"
        "     SOURCE: HUBBLE_RING_BUFFER\n"
        "       TYPE: EVENTS LOST\n"
        "    VERDICT: -\n"
        "    SUMMARY: CPU(5) - 1\n"
    )
    assert render([_lost()], output=Output.JSONPB)[0] == (
        '{"lost_events":{"source":"HUBBLE_RING_BUFFER","num_events_lost":"1","cpu":5},'
        '"time":"1970-01-01T00:20:34.567800Z"}\n'
    )
    spanned = _lost()
    spanned.lost_events.first.FromSeconds(1230)
    spanned.lost_events.first.nanos = 567800000
    spanned.lost_events.last.FromSeconds(1238)
    spanned.lost_events.last.nanos = 567800000
    assert render([spanned])[0] == (
        "Jan  1 00:20:34.567 EVENTS LOST: HUBBLE_RING_BUFFER CPU(5) 1 "
        "(first: Jan  1 00:20:30.567, last: Jan  1 00:20:38.567)\n"
    )


def test_node_status_goes_to_stderr_when_it_matters() -> None:
    def status(state: int) -> observer_pb2.GetFlowsResponse:
        return observer_pb2.GetFlowsResponse(
            time=Timestamp(seconds=1234, nanos=567800000),
            node_name="relay",
            node_status=relay_pb2.NodeStatusEvent(
                state_change=state,  # type: ignore[arg-type]
                node_names=["n1", "n2"],
            ),
        )

    out, err = render([status(relay_pb2.NODE_CONNECTED), status(relay_pb2.NODE_UNAVAILABLE)])
    assert out == ""
    assert err == "Jan  1 00:20:34.567 [relay]: 2 nodes are unavailable: n1, n2\n"
    _, err = render([status(relay_pb2.NODE_CONNECTED)], debug=True)
    assert err == "Jan  1 00:20:34.567 [relay]: Receiving flows from 2 nodes: n1, n2\n"
    _, err = render([status(relay_pb2.NODE_UNAVAILABLE)], silent_errors=True)
    assert err == ""


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("StampMilli", "Jan  1 00:20:34.567"),
        ("RFC3339", "1970-01-01T00:20:34Z"),
        ("RFC3339Milli", "1970-01-01T00:20:34.567Z"),
        ("RFC3339Micro", "1970-01-01T00:20:34.5678Z"),
        ("RFC3339Nano", "1970-01-01T00:20:34.5678Z"),
        ("RFC1123Z", "Thu, 01 Jan 1970 00:20:34 +0000"),
        ("YearMonthDay", "1970-01-01"),
        ("YearMonthDayHour", "1970-01-01T00Z"),
        ("YearMonthDayHourMinute", "1970-01-01T00:20Z"),
        ("bogus", "Jan  1 00:20:34.567"),
    ],
)
def test_time_formats(fmt: str, expected: str) -> None:
    assert format_timestamp(Timestamp(seconds=1234, nanos=567800000), fmt) == expected


def test_time_edge_cases() -> None:
    assert format_timestamp(None) == "N/A"
    assert format_timestamp(Timestamp(seconds=-1, nanos=-1)) == "N/A"
    assert format_timestamp(Timestamp(seconds=1530984600, nanos=123000000)) == (
        "Jul  7 17:30:00.123"
    )
    assert format_timestamp(Timestamp(seconds=1234), "RFC3339Nano") == "1970-01-01T00:20:34Z"


@pytest.mark.parametrize(
    ("flow", "expected"),
    [
        (flow_pb2.Flow(l7=flow_pb2.Layer7(type=flow_pb2.REQUEST)), "l7-request"),
        (
            flow_pb2.Flow(l7=flow_pb2.Layer7(type=flow_pb2.RESPONSE, http=flow_pb2.HTTP())),
            "http-response",
        ),
        (
            flow_pb2.Flow(
                l7=flow_pb2.Layer7(
                    type=flow_pb2.REQUEST, dns=flow_pb2.DNS(observation_source="proxy")
                )
            ),
            "dns-request proxy",
        ),
        (flow_pb2.Flow(event_type=flow_pb2.CiliumEventType(type=4, sub_type=2)), "to-host"),
        (flow_pb2.Flow(event_type=flow_pb2.CiliumEventType(type=4, sub_type=123)), "123"),
        (
            flow_pb2.Flow(event_type=flow_pb2.CiliumEventType(type=1, sub_type=181)),
            "Policy denied by denylist",
        ),
        (
            flow_pb2.Flow(
                event_type=flow_pb2.CiliumEventType(type=5),
                policy_match_type=2,
                traffic_direction=flow_pb2.INGRESS,
            ),
            "policy-verdict:L3-L4 INGRESS",
        ),
        (
            flow_pb2.Flow(
                event_type=flow_pb2.CiliumEventType(type=7),
                sock_xlate_point=flow_pb2.SOCK_XLATE_POINT_PRE_DIRECTION_FWD,
            ),
            "pre-xlate-fwd",
        ),
        (
            flow_pb2.Flow(
                event_type=flow_pb2.CiliumEventType(type=3),
                debug_capture_point=flow_pb2.DBG_CAPTURE_FROM_LB,
            ),
            "DBG_CAPTURE_FROM_LB",
        ),
        (flow_pb2.Flow(), "UNKNOWN"),
    ],
)
def test_flow_type(flow: flow_pb2.Flow, expected: str) -> None:
    assert flow_type(flow) == expected


def test_hostnames_services_names_ipv6_ethernet() -> None:
    p = Printer(PrinterOptions(), io.StringIO(), io.StringIO())
    svc = flow_pb2.Flow(
        IP=flow_pb2.IP(source="1.1.1.1", destination="2.2.2.2"),
        source_service=flow_pb2.Service(name="xwing", namespace="default"),
        destination_service=flow_pb2.Service(name="tiefighter", namespace="deathstar"),
    )
    svc.l4.UDP.source_port, svc.l4.UDP.destination_port = 55555, 53
    assert p.host_names(svc) == ("default/xwing:55555", "deathstar/tiefighter:53")
    names = flow_pb2.Flow(
        IP=flow_pb2.IP(source="fd00::1", destination="fd00::2"), destination_names=["a", "b"]
    )
    names.l4.TCP.source_port, names.l4.TCP.destination_port = 1, 80
    assert p.host_names(names) == ("[fd00::1]:1", "a,b:80")
    eth = flow_pb2.Flow(ethernet=flow_pb2.Ethernet(source="00:01", destination="00:02"))
    assert p.host_names(eth) == ("00:01", "00:02")
    assert p.host_names(flow_pb2.Flow()) == ("", "")


def test_summary_fallback_and_colors() -> None:
    f = _flow(Summary="")
    f.l4.TCP.flags.SYN = f.l4.TCP.flags.ACK = True
    out, _ = render(flows(f))
    assert out.endswith("(TCP Flags: SYN, ACK)\n")
    out, _ = render(flows(_flow()), color=True)
    assert "\x1b[31mDROPPED\x1b[0m" in out and "\x1b[35m(ID:12345)\x1b[0m" in out
    out, _ = render(flows(_flow()), color=True, output=Output.TABLE)
    assert "\x1b[" not in out


def _status(**kw: object) -> observer_pb2.ServerStatusResponse:
    return observer_pb2.ServerStatusResponse(
        num_flows=2771,
        max_flows=8190,
        seen_flows=2771,
        flows_rate=23.456,
        uptime_ns=301515181665,
        version="hubble-relay v1.15.0+g4145278",
        **kw,  # type: ignore[arg-type]
    )


def write_status(res: observer_pb2.ServerStatusResponse, output: Output) -> str:
    out = io.StringIO()
    Printer(PrinterOptions(output=output), out, io.StringIO()).write_server_status(res)
    return out.getvalue()


def test_server_status() -> None:
    relay = _status()
    relay.num_connected_nodes.value = 2
    relay.num_unavailable_nodes.value = 0
    assert write_status(relay, Output.COMPACT) == (
        "Current/Max Flows: 2,771/8,190 (33.83%)\nFlows/s: 23.46\nConnected Nodes: 2/2\n"
    )
    old = observer_pb2.ServerStatusResponse(
        num_flows=2031, max_flows=4095, seen_flows=2348885, uptime_ns=301515181665
    )
    assert write_status(old, Output.COMPACT) == (
        "Current/Max Flows: 2,031/4,095 (49.60%)\nFlows/s: 7790.27\n"
    )
    assert write_status(relay, Output.TABLE) == (
        "NUM FLOWS   MAX FLOWS   SEEN FLOWS   FLOWS PER SECOND   UPTIME           "
        "NUM CONNECTED NODES   NUM UNAVAILABLE NODES   VERSION\n"
        "2,771       8,190       2,771        23.46              5m1.515181665s   "
        "2                     0                       hubble-relay v1.15.0+g4145278\n"
    )
    assert write_status(old, Output.DICT).splitlines()[3:7] == [
        "   FLOWS PER SECOND: N/A",
        "             UPTIME: 5m1.515181665s",
        "NUM CONNECTED NODES: N/A",
        " NUM UNAVAIL. NODES: N/A",
    ]
    down = _status(unavailable_nodes=["n3"])
    down.num_connected_nodes.value = 2
    down.num_unavailable_nodes.value = 2
    assert write_status(down, Output.COMPACT).splitlines()[2:] == [
        "Connected Nodes: 2/4",
        "Unavailable Nodes: 2",
        "  - n3",
        "  - and 1 more...",
    ]


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (1_500_000, "1.5ms"),
        (42, "42ns"),
        (3_600_000_000_000, "1h0m0s"),
        (61_000_000_000, "1m1s"),
    ],
)
def test_go_duration(ns: int, text: str) -> None:
    assert go_duration(ns) == text
