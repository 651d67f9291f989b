"""The ring's columns (``Ring.write_rows``, #17): rows share positions, lapping and LostEvents
with whole events; a row's flow is made on read, the same at every read (its UUID from its
position); GetFlows matches rows on their template unless a filter reads a per-row field, and
answers exactly as over whole flows either way."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.api.observer import observer_pb2
from ciliary.hubble.filters import build_filter, build_row_filter, reads_row_fields
from ciliary.hubble.observer import LocalObserver
from ciliary.hubble.ring import DESTINATION_PORT, Event, FlowRows, Ring, flow_template
from tests.unit.hubble.test_observer import T0, Stub, collect, serve

LOST_RING = flow_pb2.LostEventSource.HUBBLE_RING_BUFFER


def template(verdict: int, dport: int) -> flow_pb2.Flow:
    f = flow_pb2.Flow(verdict=verdict, node_name="node-a", uuid="x")  # type: ignore[arg-type]
    f.l4.TCP.source_port, f.l4.TCP.destination_port = 1, dport
    f.time.FromNanoseconds(5)
    return flow_template(f)


TEMPLATES = [template(flow_pb2.FORWARDED, 80), template(flow_pb2.DROPPED, 53)]


def rows(first: int, n: int) -> FlowRows:
    """Rows ``first .. first+n``: time T0 + i, source port 40000 + i, template i % 2."""
    index = np.arange(first, first + n) % 2
    return FlowRows(
        templates=TEMPLATES,
        template_index=index.astype(np.intp),
        counts=np.bincount(index, minlength=2).astype(np.intp),
        time_ns=T0 + np.arange(first, first + n, dtype=np.int64),
        source_port=(40000 + np.arange(first, first + n)).astype(np.uint16),
    )


def port(ev: Event | None) -> int:
    assert ev is not None and ev.flow is not None
    return ev.flow.l4.TCP.source_port


def test_rows_take_positions_and_become_flows_on_read() -> None:
    ring = Ring(7)
    ring.write_rows(rows(0, 3))
    ring.write(Event(time_ns=T0 + 3, flow=flow_pb2.Flow(uuid="whole")))
    ring.write_rows(rows(4, 2))
    assert ring.written == 6
    flows = [ev.flow for ev in ring.last(10)]
    assert [f.uuid == "whole" for f in flows] == [False, False, False, True, False, False]
    first = flows[0]
    assert first.verdict == flow_pb2.FORWARDED and first.l4.TCP.destination_port == 80
    assert first.l4.TCP.source_port == 40000 and first.time.ToNanoseconds() == T0
    assert flows[5].verdict == flow_pb2.DROPPED and flows[5].l4.TCP.source_port == 40005
    assert ring.time_at(5) == (T0 + 5, True) and ring.time_at(6) is None
    uuids = [f.uuid for f in flows]
    assert len(set(uuids)) == 6 and uuids == [ev.flow.uuid for ev in ring.last(10)]  # type: ignore[union-attr]
    assert TEMPLATES[0].uuid == "" and not TEMPLATES[0].HasField("time")  # never modified


def test_rows_lap_readers_as_events_do() -> None:
    ring = Ring(7)
    reader = ring.reader(0)
    ring.write_rows(rows(0, 5))
    assert port(reader.next()) == 40000
    ring.write_rows(rows(5, 20))  # longer than the ring: its newest 7 rows are kept
    assert ring.written == 25 and ring.oldest == 18 and ring.get(17) is None
    lost = reader.next()
    assert lost is not None and lost.lost is not None
    assert (lost.lost.source, lost.lost.num_events_lost) == (LOST_RING, 17)
    assert [port(reader.next()) for _ in range(7)] == list(range(40018, 40025))
    assert reader.next() is None
    ring.write(Event(time_ns=1, flow=flow_pb2.Flow(uuid="whole")))  # over a row's slot
    got = ring.get(25)
    assert got is not None and got.flow is not None and got.flow.uuid == "whole"


def test_a_row_read_as_its_template_is_made_whole_later() -> None:
    ring = Ring(7)
    ring.write_rows(rows(0, 2))
    lazy = ring.get(1, whole=False)
    assert lazy is not None and lazy.flow is TEMPLATES[1] and lazy.row is not None
    assert lazy.whole() == ring.get(1)


def test_get_flows_over_rows_answers_as_over_whole_flows() -> None:
    async def body(obs: LocalObserver, stub: Stub) -> None:
        obs.on_flow_rows(rows(0, 30))
        drops = flow_pb2.FlowFilter(verdict=[flow_pb2.DROPPED])
        ports = [r.flow.l4.TCP.source_port for r in await collect(stub, whitelist=[drops])]
        assert ports == list(range(40001, 40030, 2))
        got = await collect(stub, number=2, whitelist=[drops])
        assert [r.flow.l4.TCP.source_port for r in got] == [40027, 40029]
        # per-row fields: the source port, the UUID (the filter sees each row's whole flow)
        one = flow_pb2.FlowFilter(source_port=["40007"])
        only = await collect(stub, whitelist=[one])
        assert [r.flow.l4.TCP.source_port for r in only] == [40007]
        by_uuid = flow_pb2.FlowFilter(uuid=[only[0].flow.uuid])
        again = await collect(stub, whitelist=[by_uuid], blacklist=[drops])
        assert again == [] and len(await collect(stub, whitelist=[by_uuid])) == 1
        status = await stub.ServerStatus(observer_pb2.ServerStatusRequest())
        assert (status.num_flows, status.seen_flows) == (30, 30)

    _run(body)


def _run(body: Any) -> None:
    async def main() -> None:
        obs = LocalObserver("node-a", capacity=63)
        async with serve(obs) as stub:
            await asyncio.wait_for(body(obs, stub), 10)

    asyncio.run(main())


FILTER_CASES: list[tuple[list[flow_pb2.FlowFilter], list[flow_pb2.FlowFilter]]] = [
    ([], []),
    ([flow_pb2.FlowFilter(source_port=["40003", "40004"])], []),
    (
        [flow_pb2.FlowFilter(source_port=["40003"]), flow_pb2.FlowFilter(destination_port=["53"])],
        [],
    ),
    ([flow_pb2.FlowFilter(source_port=["40004"], verdict=[flow_pb2.FORWARDED])], []),
    ([], [flow_pb2.FlowFilter(source_port=["40001", "40002"])]),
    (
        [flow_pb2.FlowFilter(verdict=[flow_pb2.DROPPED])],
        [flow_pb2.FlowFilter(source_port=["40009"])],
    ),
    ([flow_pb2.FlowFilter(protocol=["tcp"], source_port=["40002"])], []),
    ([flow_pb2.FlowFilter()], [flow_pb2.FlowFilter(destination_port=["80"])]),
    ([], [flow_pb2.FlowFilter()]),
]


def test_a_row_filter_answers_as_the_filter_on_the_whole_flow() -> None:
    ring = Ring(63)
    ring.write_rows(rows(0, 30))
    for whitelist, blacklist in FILTER_CASES:
        assert not reads_row_fields(whitelist, blacklist)
        whole, row = build_filter(whitelist, blacklist), build_row_filter(whitelist, blacklist)
        answers = []
        for pos in range(30):
            lazy, made = ring.get(pos, whole=False), ring.get(pos)
            assert lazy is not None and lazy.row is not None and made is not None
            assert made.flow is not None and lazy.flow is not None
            answers.append(whole(made.flow))
            assert row(lazy.flow, lazy.row[0]) == answers[-1], (whitelist, blacklist, pos)
        assert any(answers) or blacklist, (whitelist, blacklist)
    assert reads_row_fields([flow_pb2.FlowFilter(uuid=["x"])], [])


def reply_rows(n: int) -> FlowRows:
    """Rows whose own port is the destination port (``DESTINATION_PORT``: replies to clients
    on ports 40000 + i, from port 80 or 53) mixed with rows whose own port is the source."""
    reply = flow_pb2.Flow(verdict=flow_pb2.FORWARDED, node_name="node-a")
    reply.l4.TCP.source_port, reply.l4.TCP.destination_port = 80, 1
    dns = flow_pb2.Flow(verdict=flow_pb2.FORWARDED, node_name="node-a")
    dns.l4.UDP.source_port, dns.l4.UDP.destination_port = 53, 1
    templates = [
        flow_template(reply, destination=True),
        flow_template(dns, destination=True),
        *TEMPLATES,
    ]
    index = np.arange(n) % 4
    port = (40000 + np.arange(n)).astype(np.uint32)
    port[index < 2] |= DESTINATION_PORT
    return FlowRows(
        templates=templates,
        template_index=index.astype(np.intp),
        counts=np.bincount(index, minlength=4).astype(np.intp),
        time_ns=T0 + np.arange(n, dtype=np.int64),
        source_port=port,
    )


DESTINATION_CASES = [
    *FILTER_CASES,
    ([flow_pb2.FlowFilter(destination_port=["40004", "40005", "40006"])], []),
    ([flow_pb2.FlowFilter(source_port=["80"], destination_port=["40008"])], []),
    ([flow_pb2.FlowFilter(source_port=["53", "40003"])], []),
    ([], [flow_pb2.FlowFilter(destination_port=["40001", "80"])]),
    (
        [flow_pb2.FlowFilter(destination_port=["53", "40000"])],
        [flow_pb2.FlowFilter(verdict=[flow_pb2.DROPPED])],
    ),
]


def test_a_row_whose_own_port_is_its_destination_port_filters_and_reads_as_its_flow() -> None:
    ring = Ring(63)
    ring.write_rows(reply_rows(30))
    made = [ring.get(pos) for pos in range(30)]
    flows = [ev.flow for ev in made if ev is not None and ev.flow is not None]
    assert [f.l4.TCP.destination_port or f.l4.UDP.destination_port for f in flows[:4]] == [
        40000, 40001, 80, 53,
    ]  # fmt: skip
    assert [f.l4.TCP.source_port or f.l4.UDP.source_port for f in flows[:4]] == [
        80, 53, 40002, 40003,
    ]  # fmt: skip
    for whitelist, blacklist in DESTINATION_CASES:
        whole, row = build_filter(whitelist, blacklist), build_row_filter(whitelist, blacklist)
        answers = []
        for pos in range(30):
            lazy = ring.get(pos, whole=False)
            assert lazy is not None and lazy.row is not None and lazy.flow is not None
            answers.append(whole(flows[pos]))
            assert row(lazy.flow, lazy.row[0]) == answers[-1], (whitelist, blacklist, pos)
            assert lazy.whole().flow == flows[pos]
            found = ring.row_at(pos)
            assert found is not None and row(found[0], found[2]) == answers[-1]
        if (whitelist, blacklist) not in FILTER_CASES:  # these pick rows of both sides
            assert any(answers) and not all(answers), (whitelist, blacklist)
