"""Trace records decoded a batch at a time as columns (``agent.flowrows``, #17) give exactly the
flows and the metrics the per-record decoder gives: every row's flow made whole equals the
record's own flow (UUID aside), the metrics counted once per template equal the metrics counted
per flow, a row still names the pod it had at event time after the pod is gone, and plain hooks
(the exporter) see each flow with the UUID a reader of the ring gets."""

from __future__ import annotations

import socket
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from ciliary.agent.flowrows import decode_rows
from ciliary.agent.flows import EndpointInfo, FlowDecoder, FlowGetters
from ciliary.agent.hubble import EventsQueue, _Lost
from ciliary.datapath.maps.endpoints import IPAddress, packed_addresses
from ciliary.datapath.maps.events import (
    TRACE_RECORD_DTYPE,
    TraceEventC,
    decode_event,
    trace_rows,
)
from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.metrics import FlowMetrics
from ciliary.hubble.observer import LocalObserver

CLIENT, SERVER = IPv4Address("10.200.0.10"), IPv4Address("10.200.0.20")
WEB_PORT = 8080
METRICS = "dns drop tcp flow port-distribution icmp policy flows-to-world:any-drop;port"


def record(i: int) -> bytes:
    """Records that vary in every way a flow does: protocol, verdict, direction, flags, ports
    (some replies come from the Service port), ICMP types, identities."""
    ev = TraceEventC()
    ev.ts_ns = 1_000_000 + i
    ev.saddr[:4], ev.daddr[:4] = list(CLIENT.packed), list(SERVER.packed)
    if i % 3 == 0:  # a reply
        ev.saddr[:4], ev.daddr[:4] = list(SERVER.packed), list(CLIENT.packed)
        ev.is_reply, ev.ct_state = 1, 2
    ev.smac[:], ev.dmac[:] = [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]
    ev.sport = WEB_PORT if i % 7 == 0 else 30000 + i % 50
    ev.dport = (80, 53, WEB_PORT)[i % 3]
    ev.src_sec_id, ev.dst_sec_id = (20001, 20002) if i % 5 else (2, 20002)
    ev.ifindex, ev.pkt_len = 7, 60 + i % 9
    ev.ep_id, ev.dst_ep_id = 11, 12
    ev.family = socket.AF_INET
    ev.proto = (6, 17, 1, 6)[i % 4]
    ev.icmp_type = 8 if i % 8 == 2 else 0
    dropped = i % 10 == 0
    ev.type = 1 if dropped else (5 if i % 11 == 0 else 4)
    ev.verdict = 2 if dropped else 1
    ev.drop_reason = 133 if dropped else 0
    ev.obs_point = 101
    ev.tcp_flags = (0x02, 0x12, 0x10, 0x11, 0x04)[i % 5]
    ev.traffic_direction = 1 + i % 2
    return bytes(ev)


def span_of(records: list[bytes]) -> bytes:
    return b"".join(len(r).to_bytes(4, "little") + bytes(4) + r for r in records)


def decoder(eps: dict[IPAddress, EndpointInfo]) -> FlowDecoder:
    labels = {
        20001: ["k8s:app=client", "k8s:io.kubernetes.pod.namespace=default"],
        20002: ["k8s:app=server", "k8s:io.kubernetes.pod.namespace=shop"],
        2: ["reserved:world"],
    }
    services = {(SERVER, WEB_PORT): ("shop", "web")}
    return FlowDecoder(
        "node-a",
        FlowGetters(
            endpoint_by_ip=eps.get,
            identity_labels=labels.get,
            service_by_addr=lambda addr, port: services.get((addr, port)),
            ifname=lambda _i: "lxc0",
        ),
    )


def endpoints() -> dict[IPAddress, EndpointInfo]:
    return {
        CLIENT: EndpointInfo(11, 20001, "default", "client"),
        SERVER: EndpointInfo(12, 20002, "shop", "server", (("server", "Deployment"),)),
    }


RECORDS = [record(i) for i in range(600)]


def rows() -> np.ndarray:
    found = trace_rows(span_of(RECORDS))
    assert found is not None and found.dtype == TRACE_RECORD_DTYPE
    return found


def test_every_row_is_its_records_flow() -> None:
    dec = decoder(endpoints())
    batch = decode_rows(dec, rows())
    assert 1 < len(batch.templates) < len(RECORDS) // 4  # grouped, not one per record
    assert int(batch.counts.sum()) == len(RECORDS)
    services = set()
    for i, rec in enumerate(RECORDS):
        want = dec.decode(decode_event(rec))
        got = batch.flow(i, want.uuid)
        assert got == want, i
        services.add(got.source_service.name)
    assert services == {"", "web"}  # the source port decides the source Service


def samples(reg: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in reg.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def test_metrics_counted_per_template_are_the_metrics_per_flow() -> None:
    dec = decoder(endpoints())
    per_flow, per_template = CollectorRegistry(), CollectorRegistry()
    one_by_one = FlowMetrics(METRICS, per_flow)
    for rec in RECORDS:
        one_by_one.on_flow(dec.decode(decode_event(rec)))
    observer = LocalObserver("node-a", capacity=1023)
    observer.add_counted_flow_hook(FlowMetrics(METRICS, per_template).on_flows)
    observer.on_flow_rows(decode_rows(dec, rows()))
    counted = samples(per_template)
    assert counted == samples(per_flow)
    trace = (("protocol", "TCP"), ("subtype", "to-endpoint"), ("type", "Trace"),
             ("verdict", "FORWARDED"))  # fmt: skip
    assert counted[("hubble_flows_processed_total", trace)] > 1
    assert observer.seen_flows == len(RECORDS)


def test_a_row_names_the_pod_it_had_when_it_was_decoded() -> None:
    eps = endpoints()
    observer = LocalObserver("node-a", capacity=1023)
    observer.on_flow_rows(decode_rows(decoder(eps), rows()))
    del eps[SERVER]  # the server pod is deleted
    flows = [ev.flow for ev in observer.ring.last(len(RECORDS)) if ev.flow is not None]
    assert len(flows) == len(RECORDS)
    assert {f.destination.pod_name for f in flows if f.IP.destination == str(SERVER)} == {"server"}
    assert [ns.namespace for ns in observer.namespaces()] == ["default", "shop"]


def test_plain_hooks_see_every_flow_with_the_uuid_readers_get() -> None:
    observer = LocalObserver("node-a", capacity=1023)
    seen: list[flow_pb2.Flow] = []
    observer.add_flow_hook(seen.append)
    observer.on_flow_rows(decode_rows(decoder(endpoints()), rows()))
    stored = [ev.flow for ev in observer.ring.last(len(RECORDS))]
    assert seen == stored and len({f.uuid for f in seen}) == len(RECORDS)
    assert stored == [ev.flow for ev in observer.ring.last(len(RECORDS))]  # stable per read


def test_the_events_queue_takes_rows_up_to_its_room_and_hands_out_turns() -> None:
    q = EventsQueue(700)
    assert q.put_rows(rows()[:500]) == (500, False)
    q.put_lost(1, 5)
    assert q.put_rows(rows()) == (200, True)  # the rest stays in the reader's ring: not lost
    assert (len(q), q.lost_total) == (700, 0)
    assert q.put_rows(rows()) == (0, True)
    first = q.pop(max_rows=300)  # a turn takes at most max_rows of a batch
    assert isinstance(first, np.ndarray) and len(first) == 300 and len(q) == 400
    second = q.pop(max_rows=300)
    assert isinstance(second, np.ndarray) and len(second) == 200
    assert q.pop() == _Lost(1, 5)
    last = q.pop()
    assert isinstance(last, np.ndarray) and len(last) == 200 and len(q) == 0
    assert [int(r["sport"]) for r in (*first, *second)] == list(rows()[:500]["sport"])


def connection(i: int) -> list[bytes]:
    """One short connection's records under aggregation medium, as connrate makes them: the
    policy verdict and SYN from the client's port ``30000 + i``, the server's SYN-ACK and FIN
    back to it (replies: the client's port is their destination port; every fifth from the
    web Service's port, so its source Service differs), the client's FIN."""
    out = []
    client_port = 30000 + i
    server_port = WEB_PORT if i % 5 == 0 else 5203
    steps = ((5, False, 0x02), (4, False, 0x02), (4, True, 0x12), (4, True, 0x11), (4, False, 0x11))
    for kind, reply, flags in steps:
        ev = TraceEventC()
        ev.ts_ns = 1_000_000 + 10 * i + len(out)
        src, dst = (SERVER, CLIENT) if reply else (CLIENT, SERVER)
        ev.saddr[:4], ev.daddr[:4] = list(src.packed), list(dst.packed)
        ev.sport, ev.dport = (server_port, client_port) if reply else (client_port, server_port)
        ev.is_reply = int(reply)
        ev.ct_state = 2 if reply else (0 if flags == 0x02 else 1)
        ev.smac[:], ev.dmac[:] = [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]
        ev.src_sec_id, ev.dst_sec_id = (20002, 20001) if reply else (20001, 20002)
        ev.ifindex, ev.pkt_len = 7, 60
        ev.ep_id, ev.dst_ep_id = 11, 12
        ev.family = socket.AF_INET
        ev.proto = 6
        ev.type, ev.verdict = kind, 1
        ev.obs_point = 0 if kind == 5 else 101
        ev.tcp_flags = flags
        ev.traffic_direction = 1
        out.append(bytes(ev))
    return out


CONNECTIONS = [r for i in range(120) for r in connection(i)]


def test_short_connections_share_templates_and_every_row_is_its_records_flow() -> None:
    """A forwarded reply's own port is its destination port (the client's, #17): a batch of
    short connections has a few templates, not one per reply, and each row is still exactly
    its record's flow; the metrics counted per template are the metrics counted per flow."""
    dec = decoder(endpoints())
    found = trace_rows(span_of(CONNECTIONS))
    assert found is not None
    batch = decode_rows(dec, found)
    assert len(batch.templates) <= 10  # 5 kinds of record, the replies from 2 Service ports
    assert int(batch.counts.sum()) == len(CONNECTIONS)
    services = set()
    for i, rec in enumerate(CONNECTIONS):
        want = dec.decode(decode_event(rec))
        got = batch.flow(i, want.uuid)
        assert got == want, i
        services.add(got.source_service.name)
    assert services == {"", "web"}
    per_flow, per_template = CollectorRegistry(), CollectorRegistry()
    one_by_one = FlowMetrics(METRICS, per_flow)
    for rec in CONNECTIONS:
        one_by_one.on_flow(dec.decode(decode_event(rec)))
    observer = LocalObserver("node-a", capacity=1023)
    observer.add_counted_flow_hook(FlowMetrics(METRICS, per_template).on_flows)
    observer.on_flow_rows(batch)
    assert samples(per_template) == samples(per_flow)
    stored = [ev.flow for ev in observer.ring.last(len(CONNECTIONS))]
    assert [f.l4.TCP.destination_port for f in stored] == [
        r.dport for r in map(decode_event, CONNECTIONS)
    ]


def test_only_addresses_with_a_service_frontend_are_looked_up() -> None:
    """With ``service_addresses`` the batch asks ``service_by_addr`` only for the ports of the
    frontend addresses (here the server's: the client's 240 ports are not asked about), and
    the flows are the same."""
    dec = decoder(endpoints())
    asked: list[tuple[IPAddress, int]] = []
    lookup = dec.getters.service_by_addr

    def counting(addr: IPAddress, port: int) -> tuple[str, str] | None:
        asked.append((addr, port))
        return lookup(addr, port)

    fes = packed_addresses([SERVER])
    dec.getters = replace(dec.getters, service_by_addr=counting, service_addresses=lambda: fes)
    found = trace_rows(span_of(CONNECTIONS))
    assert found is not None
    batch = decode_rows(dec, found)
    # the client's address only by the templates' own decode (each asks for both ends)
    assert sum(addr == CLIENT for addr, _ in asked) <= len(batch.templates)
    assert len(asked) < len(CONNECTIONS) // 4  # 240 ports of the client's were not asked
    for i, rec in enumerate(CONNECTIONS):
        want = dec.decode(decode_event(rec))
        assert batch.flow(i, want.uuid) == want, i


VIP = IPv4Address("10.96.0.10")


def test_clusterip_connections_ask_no_service_per_client_port() -> None:
    """Connections through a ClusterIP (#14): their records carry the rev-NAT index, which
    names the frontend only on the client's far side (a request's destination, a reply's
    source, restored to the frontend); the client's own side has no Service, so the batch asks
    nothing per client port (before: one lookup per connection a side), and the flows are
    the same."""
    dec = decoder(endpoints())
    asked: list[tuple[IPAddress, int]] = []
    services = {(VIP, 80): ("shop", "web")}

    def counting(addr: IPAddress, port: int) -> tuple[str, str] | None:
        asked.append((addr, port))
        return services.get((addr, port))

    dec.getters = replace(
        dec.getters,
        service_by_addr=counting,
        service_addresses=lambda: packed_addresses([VIP]),
        frontend_of=lambda i: (VIP, 80) if i == 1 else None,
    )
    records = []
    for rec in CONNECTIONS:
        ev = TraceEventC.from_buffer_copy(rec)
        ev.rev_nat_index = 1
        if ev.is_reply:  # rev-NATed: from the frontend
            ev.saddr[:4], ev.sport = list(VIP.packed), 80
        records.append(bytes(ev))
    found = trace_rows(span_of(records))
    assert found is not None
    batch = decode_rows(dec, found)
    assert len(asked) <= 4 * len(batch.templates)  # the templates' own decode, and a few
    services_seen = set()
    for i, rec in enumerate(records):
        want = dec.decode(decode_event(rec))
        assert batch.flow(i, want.uuid) == want, i
        services_seen |= {want.source_service.name, want.destination_service.name}
    assert services_seen == {"", "web"}


def test_a_frontend_among_ten_thousand_is_found_and_no_other_address() -> None:
    """The frontend check is one binary search per row in the sorted addresses (a node with 10k
    Services looped over every address for every batch before): with the server's address
    among 10k others (IPv4 and IPv6, the largest too) the same lookups are asked as with it
    alone, and the flows are the same."""
    others: list[IPAddress] = [IPv4Address("10.96.0.0") + i for i in range(5_000)]
    others += [IPv6Address("fd00::") + i for i in range(4_999)]
    others.append(IPv6Address("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))
    found = trace_rows(span_of(CONNECTIONS))
    assert found is not None
    asked: dict[str, list[tuple[IPAddress, int]]] = {}
    for name, frontends in (("alone", [SERVER]), ("among 10k", [*others, SERVER])):
        dec = decoder(endpoints())
        seen: list[tuple[IPAddress, int]] = []
        batch = decode_rows(_asking(dec, seen, packed_addresses(frontends)), found)
        asked[name] = list(seen)  # the batch's own questions
        for i, rec in enumerate(CONNECTIONS):
            want = dec.decode(decode_event(rec))
            assert batch.flow(i, want.uuid) == want, i
    assert sorted(map(str, asked["alone"])) == sorted(map(str, asked["among 10k"]))
    assert len(asked["alone"]) < len(CONNECTIONS) // 4
    # the server not a frontend, 10k others are: only the templates' own decodes ask
    none: list[tuple[IPAddress, int]] = []
    batch = decode_rows(_asking(decoder(endpoints()), none, packed_addresses(others)), found)
    assert len(none) <= 2 * len(batch.templates)


def _asking(dec: FlowDecoder, seen: list[tuple[IPAddress, int]], fes: Any) -> FlowDecoder:
    """``dec`` with ``fes`` as the frontends' addresses, its service lookups recorded."""
    lookup = dec.getters.service_by_addr

    def counting(addr: IPAddress, port: int) -> tuple[str, str] | None:
        seen.append((addr, port))
        return lookup(addr, port)

    dec.getters = replace(dec.getters, service_by_addr=counting, service_addresses=lambda: fes)
    return dec
