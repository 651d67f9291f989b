"""The decoder's dispatch on the record type and its ``seven`` family: a proxy's L7 record →
an L7 flow as upstream's ``pkg/hubble/parser/seven`` builds it; the event fan-out
(``Monitor.publish``) that brings L7 records to Hubble's sink."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from google.protobuf import json_format

from ciliary.agent.config import AgentConfig, HubbleConfig
from ciliary.agent.flows import FAMILIES, FlowDecoder, FlowGetters
from ciliary.agent.hubble import AgentHubble
from ciliary.agent.monitor import _EVENT_TYPES, Monitor, summary_of
from ciliary.core.flow import MESSAGE_TYPES, EventType, L7FlowType, TrafficDirection, Verdict
from ciliary.core.l7record import DNSRecord, HTTPRecord, L7Endpoint, L7Record
from ciliary.core.models import MONITOR_EVENT_TYPES
from ciliary.datapath.loader import NodeDatapath
from ciliary.datapath.maps.events import RawSockEvent
from ciliary.hubble.api.flow import flow_pb2
from ciliary.policy.fqdn import DNSCache, DNSLookup
from tests.unit.agent.test_flows import ENDPOINTS, IDENTITIES, WORLD, event, ipcache
from tests.unit.agent.test_l7rows import LINES, batch_of
from tests.unit.agent.test_l7rows import decoder as l7_decoder

CLIENT, SERVER = IPv4Address("10.0.0.10"), IPv4Address("10.0.0.20")
T0 = 1_700_000_000_123_456_789


@pytest.fixture
def decoder() -> FlowDecoder:
    return FlowDecoder(
        "node-a",
        FlowGetters(
            endpoint_by_ip=ENDPOINTS.get,
            identity_of_ip=ipcache,
            identity_labels=IDENTITIES.get,
            service_by_addr=lambda a, p: ("shop", "web") if (a, p) == (SERVER, 80) else None,
            endpoint_ip_of_cgroup=lambda c, _f: CLIENT if c == 6 else None,
        ),
    )


def http(kind: L7FlowType, **kw: object) -> L7Record:
    rec = L7Record(
        time_ns=T0,
        kind=kind,
        verdict=Verdict.FORWARDED,
        direction=TrafficDirection.INGRESS,
        source=L7Endpoint(CLIENT, 40000),
        destination=L7Endpoint(SERVER, 80),
        transport=6,
        http=HTTPRecord(
            "GET",
            "http://web/v1/ping",
            code=200 if kind == L7FlowType.RESPONSE else 0,
            headers=(("x-b", "2"), ("Accept", "*/*")),
        ),
    )
    return replace(rec, **kw)  # type: ignore[arg-type]


def test_every_record_type_has_its_family() -> None:
    assert FAMILIES == {
        EventType.DROP: "decode",
        EventType.TRACE: "decode",
        EventType.POLICY_VERDICT: "decode",
        EventType.TRACE_SOCK: "decode_sock",
        EventType.ACCESS_LOG: "decode_l7",
    }


def test_parse_dispatches_on_the_record_type(decoder: FlowDecoder) -> None:
    raw = event(type=EventType.DROP, verdict=2, drop_reason=133)
    assert decoder.parse(raw).Type == 1  # type: ignore[union-attr]  # L3_L4
    assert decoder.parse(raw).event_type.type == 1  # type: ignore[union-attr]
    sock = RawSockEvent(
        ts_ns=time.monotonic_ns(), xlate_point=1, l4_proto=1, family=2, dst=SERVER, dport=80,
        sock_cookie=5, cgroup_id=6,
    )  # fmt: skip
    assert decoder.parse(sock).event_type.type == EventType.TRACE_SOCK  # type: ignore[union-attr]
    assert decoder.parse(http(L7FlowType.REQUEST)).event_type.type == 129  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="no parser for record type 3"):
        decoder.parse(event(type=EventType.CAPTURE))


def test_an_http_request_and_its_response(decoder: FlowDecoder) -> None:
    req = decoder.decode_l7(http(L7FlowType.REQUEST))
    got = json_format.MessageToDict(req)
    got.pop("uuid")
    assert got == {
        "time": "2023-11-14T22:13:20.123456789Z",
        "verdict": "FORWARDED",
        "IP": {"source": "10.0.0.10", "destination": "10.0.0.20", "ipVersion": "IPv4"},
        "l4": {"TCP": {"sourcePort": 40000, "destinationPort": 80}},
        "source": {
            "ID": 7, "identity": 300, "namespace": "default", "podName": "client",
            "labels": ["k8s:app=client", "k8s:io.kubernetes.pod.namespace=default"],
            "clusterName": "default",
        },
        "destination": {
            "ID": 9, "identity": 301, "namespace": "shop", "podName": "server-5d8f7c-abcde",
            "labels": ["k8s:app=server", "k8s:io.kubernetes.pod.namespace=shop"],
            "workloads": [{"name": "server", "kind": "Deployment"}],
            "clusterName": "default",
        },
        "Type": "L7",
        "nodeName": "node-a",
        "l7": {
            "type": "REQUEST",
            "http": {
                "method": "GET",
                "url": "http://web/v1/ping",
                "protocol": "HTTP/1.1",
                "headers": [{"key": "Accept", "value": "*/*"}, {"key": "x-b", "value": "2"}],
            },
        },
        "isReply": False,
        "eventType": {"type": 129},
        "destinationService": {"name": "web", "namespace": "shop"},
        "trafficDirection": "INGRESS",
        "Summary": "HTTP/1.1 GET http://web/v1/ping",
    }  # fmt: skip
    resp = decoder.decode_l7(
        http(L7FlowType.RESPONSE, latency_ns=3_400_000, verdict=Verdict.FORWARDED)
    )
    assert resp.is_reply.value and resp.reply
    assert (resp.l7.type, resp.l7.latency_ns, resp.l7.http.code) == (2, 3_400_000, 200)
    assert resp.Summary == "HTTP/1.1 200 3ms (GET http://web/v1/ping)"
    denied = decoder.decode_l7(http(L7FlowType.REQUEST, verdict=Verdict.DROPPED))
    assert denied.verdict == Verdict.DROPPED and denied.drop_reason == 0


def test_dns_request_and_answers(decoder: FlowDecoder) -> None:
    v6 = IPv6Address("fd00::53")
    base = L7Record(
        time_ns=T0,
        kind=L7FlowType.REQUEST,
        verdict=Verdict.FORWARDED,
        direction=TrafficDirection.EGRESS,
        source=L7Endpoint(IPv6Address("fd00::a"), 33000),
        destination=L7Endpoint(v6, 53, identity=9),
        transport=17,
        dns=DNSRecord(
            "web.example.", qtypes=("A", "AAAA"), ips=("1.2.3.4", "fd00::1"), ttl=30,
            cnames=("w.example.",), rrtypes=("CNAME", "A"),
        ),
    )  # fmt: skip
    req = decoder.decode_l7(base)
    assert req.Summary == "DNS Query web.example. A,AAAA"
    assert req.IP.ipVersion == 2 and req.l4.UDP.destination_port == 53
    assert req.destination.identity == 9 and req.traffic_direction == TrafficDirection.EGRESS
    # a request carries only the query, its types and where it was observed
    assert json_format.MessageToDict(req.l7) == {
        "type": "REQUEST",
        "dns": {"query": "web.example.", "qtypes": ["A", "AAAA"], "observationSource": "proxy"},
    }
    answer = decoder.decode_l7(replace(base, kind=L7FlowType.RESPONSE, latency_ns=900))
    assert answer.Summary == (
        'DNS Answer "1.2.3.4,fd00::1" CNAMEs: "w.example." TTL: 30 (Proxy web.example. A,AAAA)'
    )
    assert list(answer.l7.dns.ips) == ["1.2.3.4", "fd00::1"] and answer.l7.dns.ttl == 30
    assert list(answer.l7.dns.rrtypes) == ["CNAME", "A"] and answer.l7.latency_ns == 900
    assert base.dns is not None
    refused = replace(base.dns, rcode=5, ips=())
    flow = decoder.decode_l7(replace(base, kind=L7FlowType.RESPONSE, dns=refused))
    assert flow.Summary == "DNS Answer RCode: Query Refused TTL: 30 (Proxy web.example. A,AAAA)"
    assert flow.l7.dns.rcode == 5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"http": None}, "exactly one of http, dns"),
        ({"dns": DNSRecord("a.")}, "exactly one of http, dns"),
        ({"verdict": Verdict.TRACED}, "is not FORWARDED/DROPPED/ERROR/REDIRECTED"),
        ({"kind": L7FlowType.UNKNOWN_L7_TYPE}, "is not request/response/sample"),
        ({"transport": 1}, "transport 1 is not 6, 17 or 132"),
        ({"destination": L7Endpoint(IPv6Address("fd00::1"), 80)}, "different IP versions"),
        ({"latency_ns": -1}, ">= 0"),
    ],
)
def test_a_record_that_cannot_be_a_flow_is_refused_at_its_producer(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        replace(http(L7FlowType.REQUEST), **change)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"port 70000 is not 0\.\.65535"):
        L7Endpoint(CLIENT, 70000)


def test_published_records_reach_every_sink_and_a_full_one_pauses() -> None:
    monitor = Monitor("n1", cast(NodeDatapath, None), lambda _ep: None)
    got: list[object] = []
    monitor.add_sink(lambda ev: got.append(ev) is not None)  # never full
    rec = http(L7FlowType.REQUEST)
    monitor.publish(rec)
    assert got == [rec] and monitor.published == 1 and not monitor.paused
    removed: list[int] = []
    monitor._rb = SimpleNamespace(epoll_fd=lambda: 42)  # type: ignore[assignment]
    monitor._loop = SimpleNamespace(remove_reader=removed.append)  # type: ignore[assignment]
    monitor._armed = True  # waiting on the ring's fd, as a started reader between drains
    monitor.add_sink(lambda _ev: False)  # full after this one
    monitor.publish(rec)
    assert len(got) == 2 and monitor.paused and removed == [42]  # the ring reader waits


def test_hubbles_decode_loop_takes_every_family(tmp_path: Path) -> None:
    """Records of the three families, queued as the fan-out queues them, come out of the
    agent's decode loop as flows of their types, in order; a type no family takes is counted
    as a decode error, not a crash."""
    cfg = AgentConfig(
        node="n1", state_dir=tmp_path, pin_dir=tmp_path / "pins", socket=tmp_path / "a.sock",
        bpf_object=tmp_path / "bpf.o", ipv4_range=None, ipv6_range=None,
    )  # fmt: skip
    monitor = SimpleNamespace(ifname=None, why_default_deny=None, paused=False)
    agent = SimpleNamespace(
        cfg=cfg, kube=None, policy=None, monitor=monitor,
        endpoints=SimpleNamespace(counts_by_state=dict), l7_stats=dict,
    )  # fmt: skip
    hubble = AgentHubble(agent, HubbleConfig())  # type: ignore[arg-type]
    hubble.decoder.getters = FlowGetters(endpoint_ip_of_cgroup=lambda _c, _f: CLIENT)
    flows: list[int] = []
    hubble.observer.add_flow_hook(lambda f: flows.append(f.event_type.type))
    sock = RawSockEvent(
        ts_ns=time.monotonic_ns(), xlate_point=1, l4_proto=1, family=2, dst=SERVER, dport=80,
        sock_cookie=5, cgroup_id=6,
    )  # fmt: skip
    for item in (event(), sock, http(L7FlowType.REQUEST), event(type=EventType.CAPTURE)):
        hubble.on_raw_event(item)

    async def run() -> None:
        task = asyncio.ensure_future(hubble._decode_loop())
        for _ in range(100):
            await asyncio.sleep(0)
            if len(flows) == 3 and hubble.decode_errors == 1:
                break
        task.cancel()

    asyncio.run(run())
    assert flows == [EventType.TRACE, EventType.TRACE_SOCK, EventType.ACCESS_LOG]
    assert (hubble.decoded, hubble.decode_errors) == (3, 1)


def test_the_monitor_summary_reads_the_one_vocabulary() -> None:
    """``ciliary monitor``'s summary: TCP flags lowest bit first, ICMP types by gopacket's
    names (the table Hubble's printer uses), a type it does not name by number."""
    assert summary_of(event(proto=6, tcp_flags=0x12)) == "TCP Flags: SYN, ACK"
    assert summary_of(event(proto=1, icmp_type=8)) == "ICMPv4 EchoRequest"
    assert summary_of(event(proto=1, icmp_type=5)) == "ICMPv4 Redirect"
    assert summary_of(event(proto=58, icmp_type=135)) == "ICMPv6 NeighborSolicitation"
    assert summary_of(event(proto=1, icmp_type=42)) == "ICMPv4 type 42"


def test_the_monitors_event_types_are_the_record_types_names() -> None:
    assert MONITOR_EVENT_TYPES == ("trace", "drop", "policy-verdict")
    assert {k: v for k, v in _EVENT_TYPES.items()} == {
        EventType.TRACE: "trace",
        EventType.DROP: "drop",
        EventType.POLICY_VERDICT: "policy-verdict",
    }
    assert all(MESSAGE_TYPES[name] in _EVENT_TYPES for name in MONITOR_EVENT_TYPES)


def test_names_from_the_fqdn_cache_on_l3_l4_and_l7_flows() -> None:
    """``source_names``/``destination_names`` as upstream's resolveNames: the peer's names when
    the other side is a local endpoint (a lookup of that endpoint's), none otherwise."""
    cache = DNSCache()
    cache.update(DNSLookup("api.example.com.", (str(WORLD),), 60, time.time()))
    cache.update(DNSLookup("cdn.example.com", (str(WORLD),), 60, time.time()))
    dec = FlowDecoder(
        "node-a",
        FlowGetters(
            endpoint_by_ip=ENDPOINTS.get,
            identity_of_ip=ipcache,
            identity_labels=IDENTITIES.get,
            names_of_ip=cache.names_of,
        ),
    )
    names = ["api.example.com", "cdn.example.com"]
    out = dec.decode(event(dst=WORLD, dst_sec_id=0, traffic_direction=2))  # pod → world
    assert (list(out.source_names), list(out.destination_names)) == ([], names)
    back = dec.decode(event(src=WORLD, dst=CLIENT, src_sec_id=0, dst_sec_id=300))
    assert (list(back.source_names), list(back.destination_names)) == (names, [])
    # no local endpoint on the other side (world → world through the node): no names
    transit = dec.decode(event(src=WORLD, dst=WORLD, src_sec_id=0, dst_sec_id=0))
    assert (list(transit.source_names), list(transit.destination_names)) == ([], [])
    pods = dec.decode(event())  # pod → pod: neither address has names
    assert (list(pods.source_names), list(pods.destination_names)) == ([], [])
    l7 = dec.decode_l7(http(L7FlowType.REQUEST, destination=L7Endpoint(WORLD, 80)))
    assert list(l7.destination_names) == names and list(l7.source_names) == []


def test_a_batch_that_cannot_be_decoded_whole_is_decoded_record_by_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the batched decoder of a proxy's batch fails, its records are decoded one by one:
    each one that decodes is observed, each one that does not is counted as a decode error."""
    cfg = AgentConfig(
        node="n1", state_dir=tmp_path, pin_dir=tmp_path / "pins", socket=tmp_path / "a.sock",
        bpf_object=tmp_path / "bpf.o", ipv4_range=None, ipv6_range=None,
    )  # fmt: skip
    agent = SimpleNamespace(
        cfg=cfg, kube=None, policy=None,
        monitor=SimpleNamespace(ifname=None, why_default_deny=None, paused=False),
        endpoints=SimpleNamespace(counts_by_state=dict), l7_stats=dict,
    )  # fmt: skip
    hubble = AgentHubble(agent, HubbleConfig())  # type: ignore[arg-type]
    hubble.decoder = l7_decoder()  # the test pods' endpoints and identities
    flows: list[flow_pb2.Flow] = []
    hubble.observer.add_flow_hook(flows.append)

    def whole_batch_fails(*_args: object) -> None:
        raise RuntimeError("batch decoder broken")

    monkeypatch.setattr("ciliary.agent.hubble.decode_l7_batch", whole_batch_fails)
    batch = batch_of(LINES[:4])
    records = list(batch.records())
    real_decode = hubble.decoder.decode_l7
    calls: list[L7Record] = []

    def third_fails(record: L7Record) -> flow_pb2.Flow:
        calls.append(record)
        if len(calls) == 3:
            raise ValueError("undecodable")
        return real_decode(record)

    monkeypatch.setattr(hubble.decoder, "decode_l7", third_fails)
    hubble._decode_l7_batch(batch)
    assert calls == records and len(records) > 3
    assert (hubble.decoded, hubble.decode_errors) == (len(records) - 1, 1)
    assert [f.l7.type for f in flows] == [
        real_decode(r).l7.type for i, r in enumerate(records) if i != 2
    ]
