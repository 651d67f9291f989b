"""Datapath events → Hubble flows, field by field, with constructed events and agent state; and
the events queue and lost-event accounting in front of the decoder."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from types import SimpleNamespace

import pytest

from ciliary.agent.flows import (
    EndpointInfo,
    FlowDecoder,
    FlowGetters,
    WallClock,
    filter_labels,
    summary,
    workload_of,
)
from ciliary.agent.hubble import (
    OBSERVER_EVENTS_QUEUE,
    CgroupEndpoints,
    EventsQueue,
    LostCounter,
    _Lost,
)
from ciliary.core.models import Endpoint, EndpointState, RuleReference
from ciliary.datapath.maps.endpoints import IPAddress
from ciliary.datapath.maps.events import (
    RawSockEvent,
    RawTraceEvent,
    TraceEventC,
    TraceSockNotifyC,
    decode_event,
)
from ciliary.hubble.api.flow import flow_pb2

CLIENT = IPv4Address("10.0.0.10")
SERVER = IPv4Address("10.0.0.20")
WORLD = IPv4Address("1.1.1.1")
CLIENT_LABELS = ("k8s:app=client", "k8s:io.kubernetes.pod.namespace=default")
SERVER_LABELS = ("k8s:io.kubernetes.pod.namespace=shop", "k8s:app=server")
ENDPOINTS: dict[IPAddress, EndpointInfo] = {
    CLIENT: EndpointInfo(id=7, identity=300, namespace="default", pod_name="client"),
    SERVER: EndpointInfo(
        id=9,
        identity=301,
        namespace="shop",
        pod_name="server-5d8f7c-abcde",
        workloads=(("server", "Deployment"),),
    ),
}
IDENTITIES: dict[int, tuple[str, ...]] = {
    300: CLIENT_LABELS,
    301: SERVER_LABELS,
    9: ("reserved:world-ipv4", "reserved:world"),
    1: ("reserved:host",),
    (1 << 24) | 3: ("cidr:1.1.1.1/32", "cidr:1.0.0.0/8", "reserved:world", "cidr:0.0.0.0/0"),
}


def ref(section: str, name: str = "allow-web", namespace: str | None = "shop") -> RuleReference:
    return RuleReference(
        policy=f"CiliumNetworkPolicy/{namespace}/{name}",
        kind="CiliumNetworkPolicy",
        namespace=namespace,
        name=name,
        rule_index=0,
        section=section,
        peer_index=0,
    )


COOKIES = {
    1: [ref("ingress"), ref("ingress")],  # two rules of one policy: listed once
    2: [ref("ingressDeny", "deny-udp")],
    3: [ref("egress", "to-world", None)],
}


def event(**kw: object) -> RawTraceEvent:
    base = RawTraceEvent(
        ts_ns=time.monotonic_ns(),
        ct_created_ns=0,
        src=CLIENT,
        dst=SERVER,
        smac="02:00:00:00:00:01",
        dmac="02:00:00:00:00:02",
        sport=40000,
        dport=80,
        src_sec_id=300,
        dst_sec_id=301,
        ifindex=12,
        pkt_len=74,
        ep_id=7,
        dst_ep_id=9,
        type=4,
        obs_point=101,
        verdict=1,
        drop_reason=0,
        family=2,
        proto=6,
        tcp_flags=0x02,
        is_reply=False,
        icmp_type=0,
        icmp_code=0,
        ct_state=0,
        policy_match=2,
        traffic_direction=1,
        policy_cookie=0,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def ipcache(addr: IPAddress) -> int | None:
    if addr == WORLD:
        return (1 << 24) | 3
    return None


@pytest.fixture
def decoder() -> FlowDecoder:
    return FlowDecoder(
        "node-a",
        FlowGetters(
            endpoint_by_ip=ENDPOINTS.get,
            identity_of_ip=ipcache,
            identity_labels=IDENTITIES.get,
            rules_of_cookie=lambda c: COOKIES.get(c, []),
            policy_revision=lambda ep: 40 + ep,
            ifname=lambda i: f"lxc{i}",
        ),
    )


def test_forwarded_tcp_syn_to_endpoint(decoder: FlowDecoder) -> None:
    f = decoder.decode(event(policy_cookie=1))
    assert f.verdict == flow_pb2.FORWARDED
    assert f.Type == flow_pb2.L3_L4
    assert f.node_name == "node-a"
    assert len(f.uuid) == 36
    assert abs(f.time.ToNanoseconds() - time.time_ns()) < 1_000_000_000
    assert (f.ethernet.source, f.ethernet.destination) == ("02:00:00:00:00:01", "02:00:00:00:00:02")
    assert (f.IP.source, f.IP.destination, f.IP.ipVersion) == ("10.0.0.10", "10.0.0.20", 1)
    tcp = f.l4.TCP
    assert (tcp.source_port, tcp.destination_port) == (40000, 80)
    assert tcp.flags.SYN and not tcp.flags.ACK and not tcp.flags.FIN
    assert f.source.ID == 7 and f.source.identity == 300
    assert f.source.namespace == "default" and f.source.pod_name == "client"
    assert list(f.source.labels) == sorted(CLIENT_LABELS)
    assert f.destination.ID == 9 and f.destination.pod_name == "server-5d8f7c-abcde"
    assert list(f.destination.labels) == ["k8s:app=server", "k8s:io.kubernetes.pod.namespace=shop"]
    assert [(w.name, w.kind) for w in f.destination.workloads] == [("server", "Deployment")]
    assert f.event_type.type == 4 and f.event_type.sub_type == 0  # monitor's TraceToLxc
    assert f.trace_observation_point == flow_pb2.TO_ENDPOINT
    assert f.HasField("is_reply") and not f.is_reply.value and not f.reply
    assert f.traffic_direction == flow_pb2.INGRESS
    assert f.policy_match_type == 2
    assert (f.interface.index, f.interface.name) == (12, "lxc12")
    assert f.Summary == "TCP Flags: SYN"
    assert f.drop_reason == 0 and f.drop_reason_desc == flow_pb2.DROP_REASON_UNKNOWN
    assert len(f.ingress_allowed_by) == 1 and not f.egress_allowed_by
    pol = f.ingress_allowed_by[0]
    assert (pol.name, pol.namespace, pol.kind, pol.revision) == (
        "allow-web",
        "shop",
        "CiliumNetworkPolicy",
        49,  # the receiver's (endpoint 9) realized revision
    )
    assert "k8s:io.cilium.k8s.policy.name=allow-web" in pol.labels


def test_reply_inverts_direction_and_sets_is_reply(decoder: FlowDecoder) -> None:
    f = decoder.decode(
        event(src=SERVER, dst=CLIENT, sport=80, dport=40000, src_sec_id=301, dst_sec_id=300,
              ep_id=9, dst_ep_id=7, ct_state=2, is_reply=True, tcp_flags=0x12)
    )  # fmt: skip
    assert f.is_reply.value and f.reply
    # delivered to the client, which opened the connection: an egress connection of the client
    assert f.traffic_direction == flow_pb2.EGRESS
    assert f.Summary == "TCP Flags: SYN, ACK"
    assert f.l4.TCP.flags.SYN and f.l4.TCP.flags.ACK


def test_policy_drop(decoder: FlowDecoder) -> None:
    f = decoder.decode(
        event(type=1, verdict=2, drop_reason=181, proto=17, tcp_flags=0, dport=53,
              ct_state=0, policy_cookie=2, obs_point=101)
    )  # fmt: skip
    assert f.verdict == flow_pb2.DROPPED
    assert f.drop_reason == 181
    assert f.drop_reason_desc == flow_pb2.POLICY_DENY
    assert f.event_type.type == 1 and f.event_type.sub_type == 181
    assert not f.HasField("is_reply")  # a drop does not know
    assert f.trace_observation_point == flow_pb2.UNKNOWN_POINT
    assert f.traffic_direction == flow_pb2.INGRESS
    assert (f.l4.UDP.source_port, f.l4.UDP.destination_port) == (40000, 53)
    assert f.Summary == "UDP"
    assert [p.name for p in f.ingress_denied_by] == ["deny-udp"]
    assert not f.ingress_allowed_by and not f.egress_denied_by


def test_default_deny_without_cookie(decoder: FlowDecoder) -> None:
    f = decoder.decode(
        event(type=1, verdict=2, drop_reason=133, ct_state=0, traffic_direction=2, obs_point=5)
    )
    assert f.drop_reason_desc == flow_pb2.POLICY_DENIED
    assert f.traffic_direction == flow_pb2.EGRESS
    assert not (f.egress_denied_by or f.ingress_denied_by)


def test_drop_without_direction_uses_upstream_rule(decoder: FlowDecoder) -> None:
    # an invalid packet dropped in the sender's program: the sender's endpoint = egress
    f = decoder.decode(
        event(type=1, verdict=2, drop_reason=134, traffic_direction=0, ep_id=7, dst_ep_id=0)
    )
    assert f.traffic_direction == flow_pb2.EGRESS
    f = decoder.decode(
        event(type=1, verdict=2, drop_reason=134, traffic_direction=0, ep_id=9, dst_ep_id=9)
    )
    assert f.traffic_direction == flow_pb2.INGRESS
    f = decoder.decode(event(type=1, verdict=2, drop_reason=134, traffic_direction=0, ep_id=0))
    assert f.traffic_direction == flow_pb2.TRAFFIC_DIRECTION_UNKNOWN


def test_to_world_egress_with_cidr_identity(decoder: FlowDecoder) -> None:
    f = decoder.decode(
        event(dst=WORLD, dst_sec_id=0, dst_ep_id=0, obs_point=3, traffic_direction=2,
              proto=1, icmp_type=8, policy_cookie=3)
    )  # fmt: skip
    assert f.event_type.sub_type == 3 and f.trace_observation_point == flow_pb2.TO_STACK
    assert f.destination.ID == 0 and f.destination.pod_name == ""
    assert f.destination.identity == (1 << 24) | 3  # from the ipcache: the datapath gave none
    assert list(f.destination.labels) == ["cidr:1.1.1.1/32", "reserved:world"]
    assert (f.l4.ICMPv4.type, f.l4.ICMPv4.code) == (8, 0)
    assert f.Summary == "ICMPv4 EchoRequest"
    assert f.traffic_direction == flow_pb2.EGRESS
    [pol] = f.egress_allowed_by
    assert (pol.name, pol.namespace, pol.revision) == ("to-world", "", 47)
    assert not any(lbl.startswith("k8s:io.cilium.k8s.policy.namespace") for lbl in pol.labels)


def test_datapath_identity_wins_and_reserved_labels(decoder: FlowDecoder) -> None:
    f = decoder.decode(event(src=IPv4Address("10.0.0.1"), src_sec_id=1, ep_id=9))
    assert f.source.identity == 1 and list(f.source.labels) == ["reserved:host"]
    f = decoder.decode(event(src=WORLD, src_sec_id=9))
    assert f.source.identity == 9
    assert list(f.source.labels) == ["reserved:world", "reserved:world-ipv4"]


def test_ipv6_and_icmpv6(decoder: FlowDecoder) -> None:
    f = decoder.decode(
        event(src=IPv6Address("fd00::10"), dst=IPv6Address("fd00::20"), family=10, proto=58,
              icmp_type=1, icmp_code=4, ct_state=3)
    )  # fmt: skip
    assert f.IP.ipVersion == flow_pb2.IPv6
    assert (f.l4.ICMPv6.type, f.l4.ICMPv6.code) == (1, 4)
    assert f.Summary == "ICMPv6 DestinationUnreachable(PortUnreachable)"
    assert f.HasField("is_reply") and not f.is_reply.value  # related: not a reply


def test_non_ip_drop(decoder: FlowDecoder) -> None:
    f = decoder.decode(
        event(src=None, dst=None, family=0, proto=0, type=1, verdict=2, drop_reason=166,
              src_sec_id=0, dst_sec_id=0, traffic_direction=0, ep_id=0)
    )  # fmt: skip
    assert not f.HasField("IP") and not f.HasField("l4")
    assert f.Summary == "Ethernet"
    assert f.drop_reason_desc == flow_pb2.UNSUPPORTED_L2_PROTOCOL


def test_sctp_and_unknown_protocol_summaries() -> None:
    assert summary(event(proto=132)) == "SCTP"
    assert summary(event(proto=47)) == "IPv4"
    assert summary(event(proto=6, tcp_flags=0)) == "TCP Flags: "
    assert summary(event(proto=6, tcp_flags=0x19)) == "TCP Flags: ACK, FIN, PSH"
    assert (
        summary(event(proto=1, icmp_type=3, icmp_code=3)) == "ICMPv4 DestinationUnreachable(Port)"
    )
    assert summary(event(proto=1, icmp_type=3, icmp_code=99)) == (
        "ICMPv4 DestinationUnreachable(Code: 99)"
    )
    assert summary(event(proto=1, icmp_type=8, icmp_code=1)) == "ICMPv4 EchoRequest(Code: 1)"
    assert summary(event(proto=1, icmp_type=200, icmp_code=1)) == "ICMPv4 200(1)"


def test_sctp_ports(decoder: FlowDecoder) -> None:
    f = decoder.decode(event(proto=132, sport=5000, dport=6000))
    assert (f.l4.SCTP.source_port, f.l4.SCTP.destination_port) == (5000, 6000)


def test_unknown_identity_has_no_labels(decoder: FlowDecoder) -> None:
    f = decoder.decode(event(src=IPv4Address("10.9.9.9"), src_sec_id=0, ep_id=0))
    assert f.source.identity == 0 and list(f.source.labels) == []


def test_filter_labels() -> None:
    labels = ["reserved:world", "cidr:10.0.0.0/8", "cidr:10.1.0.0/16", "cidr:0.0.0.0/0"]
    assert filter_labels(labels, (1 << 24) | 1) == ["cidr:10.1.0.0/16", "reserved:world"]
    assert filter_labels(["cidr:2001-db8--/32", "cidr:--/0"], (1 << 24) | 2) == [
        "cidr:2001-db8--/32"
    ]
    # global identities keep everything
    assert filter_labels(["k8s:b=1", "k8s:a=1"], 300) == ["k8s:a=1", "k8s:b=1"]


def test_workload_of() -> None:
    def pod(kind: str, name: str, labels: dict[str, str] | None = None) -> dict[str, object]:
        return {
            "metadata": {
                "labels": labels or {},
                "ownerReferences": [{"kind": kind, "name": name, "controller": True}],
            }
        }

    assert workload_of(pod("ReplicaSet", "web-5d8f7c", {"pod-template-hash": "5d8f7c"})) == (
        ("web", "Deployment"),
    )
    assert workload_of(pod("ReplicaSet", "web-5d8f7c")) == (("web-5d8f7c", "ReplicaSet"),)
    assert workload_of(pod("Job", "backup-28917120")) == (("backup", "CronJob"),)
    assert workload_of(pod("StatefulSet", "db")) == (("db", "StatefulSet"),)
    assert workload_of({"metadata": {}}) == ()
    assert workload_of(None) == ()


def test_wall_clock_tracks_time() -> None:
    clock = WallClock()
    mono = time.monotonic_ns()
    assert abs(clock.wall_ns(mono) - time.time_ns()) < 50_000_000


def test_decode_rate(decoder: FlowDecoder) -> None:
    """Not a benchmark: a guard that decoding stays well above what a node produces. Timed in
    this process's CPU time, not wall time: other work on a loaded machine must not fail it."""
    ev = event(policy_cookie=1)
    n = 2000
    start = time.process_time()
    for _ in range(n):
        decoder.decode(ev)
    rate = n / max(time.process_time() - start, 1e-9)
    assert rate > 5000, f"{rate:.0f} flows/s"


# ---- the events queue and the lost-event counters (ciliary.agent.hubble) ---------------------


def test_events_queue_counts_refusals_and_reports_them_in_order() -> None:
    q = EventsQueue(2)
    a, b, c, d = (event(sport=p) for p in (1, 2, 3, 4))
    assert q.put(a)
    assert not q.put(b)  # kept, and now full: the reader stops before it reads one too many
    assert (len(q), q.pending_lost, q.lost_total) == (2, 0, 0)
    assert not q.put(c) and not q.put(d)  # full: counted, not queued
    assert (len(q), q.pending_lost, q.lost_total) == (2, 2, 2)
    q.put_lost(1, 5, cpu=1)  # loss notices never count against the size
    assert q.pop() is a
    assert not q.put(event(sport=5))  # room again: the count goes in first, behind the queue
    items = [q.pop() for _ in range(4)]
    assert items[0] is b
    assert items[1] == _Lost(1, 5, 1)
    assert items[2] == _Lost(OBSERVER_EVENTS_QUEUE, 2)
    assert isinstance(items[3], RawTraceEvent) and items[3].sport == 5
    assert q.pop() is None and q.pending_lost == 0 and q.lost_total == 2


def test_lost_counter_deltas_baseline_and_reset() -> None:
    values = [5, 7]
    counter = LostCounter(lambda: list(values), baseline=[3, 7])
    assert counter.poll() == [(0, 2)]  # lost while the agent was down
    values[:] = [5, 10]
    assert counter.poll() == [(1, 3)]
    assert counter.poll() == []
    # a recreated map (counters below what was saved) counts from zero
    assert LostCounter(lambda: [1, 0], baseline=[5, 7]).poll() == [(0, 1)]
    # no (or a mismatching) saved state: start from the current values
    assert LostCounter(lambda: [4, 4], baseline=None).poll() == []
    assert LostCounter(lambda: [4, 4], baseline=[1, 2, 3]).poll() == []


def test_allowed_policy_verdict_is_not_a_reply_denied_one_unknown(decoder: FlowDecoder) -> None:
    """Upstream sets ``is_reply`` false on allowed verdicts (first packet of a connection), so
    compact output prints ``->``; a denied verdict, like a drop, leaves it unset."""
    allowed = decoder.decode(event(type=5, obs_point=0, policy_cookie=1))
    assert allowed.HasField("is_reply") and allowed.is_reply.value is False
    denied = decoder.decode(event(type=5, obs_point=0, verdict=2, drop_reason=133))
    assert not denied.HasField("is_reply")


def test_endpoints_carry_the_cluster_name() -> None:
    """Pods (local endpoints and allocated identities) belong to the agent's cluster
    (``--cluster-name``); reserved and CIDR peers to none, as their labels name no cluster."""
    getters = FlowGetters(
        endpoint_by_ip={CLIENT: ENDPOINTS[CLIENT]}.get,
        identity_of_ip=ipcache,
        identity_labels=IDENTITIES.get,
    )
    dec = FlowDecoder("node-a", getters, cluster_name="lab1")
    f = dec.decode(event())  # local client -> server known only by its identity (remote pod)
    assert (f.source.cluster_name, f.destination.cluster_name) == ("lab1", "lab1")
    world = dec.decode(event(dst=WORLD, dst_sec_id=0))
    assert world.destination.cluster_name == ""
    host = dec.decode(event(src=IPv4Address("10.0.0.1"), src_sec_id=1))
    assert host.source.cluster_name == ""
    assert FlowDecoder("n", getters).decode(event()).source.cluster_name == "default"


def test_remote_pod_named_from_its_cilium_endpoint() -> None:
    """A pod of another node (not a local endpoint) carries the namespace and pod name its
    CiliumEndpoint gives (upstream's ipcache metadata), the identity's labels and the cluster;
    no endpoint id, no workloads. An address no pod has stays nameless."""
    remote = SimpleNamespace(namespace="default", pod_name="client")
    getters = FlowGetters(
        endpoint_by_ip={SERVER: ENDPOINTS[SERVER]}.get,
        identity_of_ip=ipcache,
        pod_of_ip={CLIENT: remote}.get,
        identity_labels=IDENTITIES.get,
    )
    f = FlowDecoder("node-b", getters, cluster_name="lab1").decode(event())
    src = f.source
    assert (src.namespace, src.pod_name, src.ID, src.identity) == ("default", "client", 0, 300)
    assert list(src.labels) == sorted(CLIENT_LABELS)
    assert src.cluster_name == "lab1" and not src.workloads
    assert (f.destination.pod_name, f.destination.ID) == ("server-5d8f7c-abcde", 9)
    world = FlowDecoder("node-b", getters).decode(event(src=WORLD, src_sec_id=0))
    assert (world.source.namespace, world.source.pod_name) == ("", "")


VIP = IPv4Address("10.96.0.5")


def test_service_fields_from_the_original_destination_and_the_reply_source() -> None:
    services = {(VIP, 80): ("shop", "web")}
    dec = FlowDecoder(
        "node-a",
        FlowGetters(
            endpoint_by_ip=ENDPOINTS.get,
            service_by_addr=lambda a, p: services.get((a, p)),
            frontend_of=lambda i: (VIP, 80) if i == 4 else None,
        ),
    )
    # the request, reported after the translation to the backend: the rev-NAT index names VIP
    f = dec.decode(event(rev_nat_index=4))
    assert f.IP.destination == str(SERVER)
    assert (f.destination_service.namespace, f.destination_service.name) == ("shop", "web")
    assert not f.HasField("source_service")
    # the reply, translated back to the frontend before it is reported
    f = dec.decode(event(src=VIP, dst=CLIENT, sport=80, dport=40000, is_reply=True,
                         ct_state=2, rev_nat_index=4))  # fmt: skip
    assert (f.source_service.namespace, f.source_service.name) == ("shop", "web")
    assert not f.HasField("destination_service")
    # straight to the backend's pod address: no service (upstream names frontends only)
    f = dec.decode(event())
    assert not f.HasField("destination_service") and not f.HasField("source_service")


def sock_event(**kw: object) -> RawSockEvent:
    base = RawSockEvent(
        ts_ns=time.monotonic_ns(), xlate_point=1, l4_proto=1, family=2, dst=VIP, dport=80,
        sock_cookie=77, cgroup_id=4242,
    )  # fmt: skip
    return replace(base, **kw)  # type: ignore[arg-type]


def test_trace_sock_records_are_sock_flows_as_upstream_parses_them() -> None:
    """upstream's pkg/hubble/parser/sock: the pod from the cgroup, the record's address as the
    destination (swapped on the reverse path), TRACED before / TRANSLATED after, the Service
    named by address and port; a cgroup of no local endpoint is skipped."""
    services = {(VIP, 80): ("shop", "web")}
    dec = FlowDecoder(
        "node-a",
        FlowGetters(
            endpoint_by_ip=ENDPOINTS.get,
            service_by_addr=lambda a, p: services.get((a, p)),
            endpoint_ip_of_cgroup=lambda c, fam: CLIENT if (c, fam) == (4242, 2) else None,
        ),
    )
    pre = dec.decode_sock(sock_event())
    assert pre is not None
    assert (pre.Type, pre.verdict) == (flow_pb2.SOCK, flow_pb2.TRACED)
    assert (pre.event_type.type, pre.event_type.sub_type) == (7, 1)
    assert pre.sock_xlate_point == flow_pb2.SOCK_XLATE_POINT_PRE_DIRECTION_FWD
    assert (pre.socket_cookie, pre.cgroup_id, pre.Summary) == (77, 4242, "TCP")
    assert (pre.IP.source, pre.IP.destination) == (str(CLIENT), str(VIP))
    assert (pre.l4.TCP.source_port, pre.l4.TCP.destination_port) == (0, 80)
    assert (pre.source.pod_name, pre.source.ID) == ("client", 7)
    assert (pre.destination_service.namespace, pre.destination_service.name) == ("shop", "web")
    post = dec.decode_sock(sock_event(xlate_point=2, dst=SERVER, dport=8080, l4_proto=2))
    assert post is not None and post.verdict == flow_pb2.TRANSLATED
    assert (post.IP.destination, post.l4.UDP.destination_port) == (str(SERVER), 8080)
    assert post.destination.pod_name == "server-5d8f7c-abcde"
    assert not post.HasField("destination_service")
    rev = dec.decode_sock(sock_event(xlate_point=4))  # post-xlate-rev: the frontend answers
    assert rev is not None and (rev.IP.source, rev.IP.destination) == (str(VIP), str(CLIENT))
    assert (rev.source_service.name, rev.l4.TCP.source_port) == ("web", 80)
    assert dec.decode_sock(sock_event(cgroup_id=1)) is None


def test_ring_records_are_told_apart() -> None:
    """decode_event: a trace_sock_notify or a trace_event, by the type byte both start with."""
    sock = TraceSockNotifyC(type=7, xlate_point=2, l4_proto=1, flags=1, dst_port=8080,
                            sock_cookie=5, cgroup_id=6)  # fmt: skip
    sock.dst_ip[:] = list(IPv6Address("fd00::5").packed)
    raw = decode_event(bytes(sock))
    assert isinstance(raw, RawSockEvent)
    assert (raw.family, raw.dst, raw.dport, raw.xlate_point) == (
        10,
        IPv6Address("fd00::5"),
        8080,
        2,
    )
    assert (raw.sock_cookie, raw.cgroup_id) == (5, 6)
    trace = TraceEventC(type=4, ts_ns=7, family=2, proto=6, sport=1, dport=2)
    assert isinstance(decode_event(bytes(trace)), RawTraceEvent)
    trace.type = 0  # no record type: refused, not guessed
    with pytest.raises(ValueError, match="unknown type 0"):
        decode_event(bytes(trace))


def test_a_cgroup_id_names_the_endpoint_whose_netns_its_processes_are_in(tmp_path: Path) -> None:
    """CgroupEndpoints: the cgroup under the root with that id (its directory's inode), its
    processes' network namespace, the endpoint in that namespace; cached until cleared, and a
    cgroup of no endpoint is not asked again before the retry delay."""
    pod = tmp_path / "node" / "pod-default-client"
    pod.mkdir(parents=True)
    (pod / "cgroup.procs").write_text(f"{os.getpid()}\n")  # this process: this netns
    here = Endpoint.model_construct(netns="/proc/self/ns/net", ipv4="10.0.0.10",
                                    ipv6="fd00::a", state=EndpointState.READY)  # fmt: skip
    other = Endpoint.model_construct(netns=str(tmp_path / "gone"), ipv4="10.0.0.11",
                                     ipv6=None, state=EndpointState.READY)  # fmt: skip
    eps = [other, here]
    calls: list[int] = []

    def endpoints() -> list[Endpoint]:
        calls.append(1)
        return eps

    cg = CgroupEndpoints(tmp_path, endpoints, retry_s=60)
    cid = pod.stat().st_ino
    assert cg.address(cid, socket.AF_INET) == IPv4Address("10.0.0.10")
    assert cg.address(cid, socket.AF_INET6) == IPv6Address("fd00::a")
    assert len(calls) == 1  # cached
    empty = tmp_path / "node" / "pod-default-none"
    empty.mkdir()
    assert cg.address(empty.stat().st_ino, socket.AF_INET) is None
    assert cg.address(empty.stat().st_ino, socket.AF_INET) is None
    assert len(calls) == 2  # the unknown one not asked again before the retry delay
    assert cg.address(123456789, socket.AF_INET) is None  # no such cgroup
    eps.remove(here)
    cg.clear()  # an endpoint changed
    assert cg.address(cid, socket.AF_INET) is None
