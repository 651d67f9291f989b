"""Envoy's access log read a batch at a time (``accesslog.parse_lines`` → ``L7Batch`` →
``agent.l7rows``, #15) gives exactly the records, flows and metrics the line-by-line path gives:
each line's record equals :func:`parse_line`'s, every row's flow made whole equals the one-by-one
flow of its record (UUID aside), the metrics counted per template (the latency histogram from
the rows' latencies) equal the metrics per flow, malformed lines are counted as before, and a
queue with room for part of a batch keeps a prefix and counts the rest as lost."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from prometheus_client import CollectorRegistry

from ciliary.agent.accesslog import parse_line, parse_lines, to_l7_batch, to_l7_records
from ciliary.agent.envoyconfig import ACCESS_LOG_FIELDS, ACCESS_LOG_SEPARATOR
from ciliary.agent.flows import EndpointInfo, FlowDecoder, FlowGetters
from ciliary.agent.hubble import OBSERVER_EVENTS_QUEUE, EventsQueue, _Lost
from ciliary.agent.l7rows import decode_l7_batch
from ciliary.core.l7record import L7Batch
from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.filters import build_filter, build_row_filter
from ciliary.hubble.metrics import FlowMetrics
from ciliary.hubble.observer import LocalObserver

CLIENT, SERVER = IPv4Address("10.200.0.10"), IPv4Address("10.200.0.20")
METRICS = "flow dns drop tcp port-distribution policy"
HTTP_METRICS = (
    "http:sourceContext=pod",
    "httpV2:labelsContext=source_namespace,source_workload,destination_namespace,"
    "destination_workload,traffic_direction",
)


def line(i: int, **changed: str) -> bytes:
    """Request ``i`` of a client, on a few keep-alive connections (odd ``i``) or a new one
    (even): paths, codes, verdicts and latencies (some over a millisecond) vary as a pod's
    requests do."""
    fields = {
        "start_time": f"{1_796_492_113 + i // 1000}.{i % 1000:03d}123",
        "chain": "ep11-egress-80",
        "source": f"{CLIENT}:{40000 + (i % 7 if i % 2 else i)}",
        "destination": f"{SERVER}:80",
        "method": "GET" if i % 4 else "POST",
        "protocol": "HTTP/1.1",
        "code": "403" if i % 9 == 0 else "200",
        "duration_us": str(90 + (i * 137) % 2500),
        "grpc_status": "-",
        "details": "rbac_access_denied_matched_policy[none]" if i % 9 == 0 else "via_upstream",
        "flags": "-",
        "authority": str(SERVER),
        "path": f"/v1/{i % 5}",
        "request_id": f"req-{i}",
        "user_agent": "curl/8",
        **changed,
    }
    return ACCESS_LOG_SEPARATOR.join(fields[n] for n, _ in ACCESS_LOG_FIELDS).encode()


LINES = [line(i) for i in range(300)]
SERVICES = {(SERVER, 80): ("shop", "web"), (CLIENT, 40003): ("default", "odd")}
"""Service frontends: the server's port, and one at the client's address and one of its ports
(as a NodePort at a node address would be)."""


def decoder() -> FlowDecoder:
    eps = {
        CLIENT: EndpointInfo(11, 20001, "default", "client", (("client", "Deployment"),)),
        SERVER: EndpointInfo(12, 20002, "shop", "server", (("server", "Deployment"),)),
    }
    labels = {
        20001: ["k8s:app=client", "k8s:io.kubernetes.pod.namespace=default"],
        20002: ["k8s:app=server", "k8s:io.kubernetes.pod.namespace=shop"],
    }
    return FlowDecoder(
        "node-a",
        FlowGetters(
            endpoint_by_ip=eps.get,
            identity_of_ip=lambda ip: eps[ip].identity if ip in eps else None,
            identity_labels=labels.get,
            ifname=lambda _i: "lxc0",
            service_by_addr=lambda ip, port: SERVICES.get((ip, port)),
        ),
    )


def one_by_one(dec: FlowDecoder) -> list[flow_pb2.Flow]:
    return [dec.decode_l7(rec) for ln in LINES for rec in to_l7_records(parse_line(ln))]


def batch_of(lines: list[bytes]) -> L7Batch:
    bad: list[bytes] = []
    batch = parse_lines(lines, lambda ln, _err: bad.append(ln))
    assert bad == []
    return to_l7_batch(batch)


def test_each_line_of_a_batch_is_its_parsed_record() -> None:
    bad: list[tuple[bytes, Exception]] = []
    broken = [b"", b"{broken", line(7, code="abc"), line(8, duration_us="-4"), line(9, code="abc")]
    batch = parse_lines([*LINES[:40], *broken, LINES[40]], lambda ln, e: bad.append((ln, e)))
    assert list(batch.records()) == [parse_line(ln) for ln in [*LINES[:40], LINES[40]]]
    assert len(batch.accesses) < 40  # grouped
    assert [ln for ln, _ in bad] == broken[1:]  # a blank line is none; a bad key fails each line


def test_every_row_is_its_records_flow() -> None:
    dec = decoder()
    want = one_by_one(dec)
    rows = decode_l7_batch(dec, batch_of(LINES))
    assert len(rows) == len(want) == 2 * len(LINES)
    assert len(rows.templates) < len(want) // 4  # also the requests on new connections
    for i, flow in enumerate(want):
        got = rows.flow(i, flow.uuid)
        assert got == flow, i
    assert {f.l7.latency_ns > 1_000_000 for f in want} == {True, False}
    assert {f.source_service.name for f in want} == {"", "web", "odd"}


def samples(reg: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in reg.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


@pytest.mark.parametrize("http", HTTP_METRICS)
def test_metrics_counted_per_template_are_the_metrics_per_flow(http: str) -> None:
    dec = decoder()
    per_flow, per_template = CollectorRegistry(), CollectorRegistry()
    metrics = FlowMetrics(f"{METRICS} {http}", per_flow)
    for flow in one_by_one(dec):
        metrics.on_flow(flow)
    observer = LocalObserver("node-a", capacity=1023)
    observer.add_counted_flow_hook(FlowMetrics(f"{METRICS} {http}", per_template).on_flows)
    observer.on_flow_rows(decode_l7_batch(dec, batch_of(LINES)))
    counted, want = samples(per_template), samples(per_flow)
    assert counted.keys() == want.keys()
    for key, value in want.items():  # a histogram's sum adds the same latencies in another order
        assert counted[key] == (
            pytest.approx(value, rel=1e-12) if key[0].endswith("_sum") else value
        )
    assert any(name == "hubble_http_request_duration_seconds_bucket" and value > 1
               for (name, _), value in counted.items())  # fmt: skip


def test_the_ring_and_its_filters_read_rows_as_whole_flows() -> None:
    dec = decoder()
    want = one_by_one(dec)
    observer = LocalObserver("node-a", capacity=1023)
    observer.on_flow_rows(decode_l7_batch(dec, batch_of(LINES)))
    stored = [ev.flow for ev in observer.ring.last(len(want)) if ev.flow is not None]
    assert len(stored) == len(want)
    for got, flow in zip(stored, want, strict=True):
        flow.uuid = got.uuid
        assert got == flow
    ring = observer.ring
    lists = (
        ([flow_pb2.FlowFilter(http_status_code=["403"]),
          flow_pb2.FlowFilter(http_path=["/v1/[12]"], http_method=["GET"])], []),
        ([flow_pb2.FlowFilter(source_port=["40003"]),
          flow_pb2.FlowFilter(destination_port=["40001", "40008"])], []),
        ([flow_pb2.FlowFilter(http_method=["GET"])], [flow_pb2.FlowFilter(source_port=["80"])]),
    )  # fmt: skip
    for allow, deny in lists:
        whole, rows = build_filter(allow, deny), build_row_filter(allow, deny)
        answers = []
        for pos in range(ring.oldest, ring.written):
            ev = ring.get(pos, whole=False)
            assert ev is not None and ev.flow is not None and ev.row is not None
            answers.append(whole(ev.whole().flow or flow_pb2.Flow()))
            assert rows(ev.flow, ev.row[0]) == answers[-1]
            assert ev.whole().flow == ring.get(pos).flow  # type: ignore[union-attr]
        assert True in answers and False in answers


def test_the_queue_keeps_the_prefix_of_a_batch_that_fits() -> None:
    q = EventsQueue(101)
    batch = batch_of(LINES[:60])  # 120 events
    assert q.put(batch) is False  # full now
    assert (len(q), q.pending_lost, q.lost_total) == (101, 19, 19)
    kept = q.pop()
    assert isinstance(kept, L7Batch) and kept.events == 101 and len(kept.group) == 51
    records = list(kept.records())
    assert records == list(batch.records())[:101]  # the last request without its response
    dec = decoder()
    rows = decode_l7_batch(dec, kept)
    assert len(rows) == 101
    for i, rec in enumerate(records):
        flow = dec.decode_l7(rec)
        assert rows.flow(i, flow.uuid) == flow
    assert q.put(batch_of(LINES[:10])) is True  # room again: the loss notice first
    assert q.pop() == _Lost(OBSERVER_EVENTS_QUEUE, 19)
    last = q.pop()
    assert isinstance(last, L7Batch) and last.events == 20 and len(q) == 0
