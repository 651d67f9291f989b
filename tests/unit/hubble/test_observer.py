"""observer.Observer over a real gRPC unix socket: GetFlows selectors, filters, lost events,
agent events, status, namespaces, and invalid requests."""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import pytest
from google.protobuf import timestamp_pb2

from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.api.observer import observer_pb2, observer_pb2_grpc
from ciliary.hubble.observer import LocalObserver
from ciliary.hubble.server import HubbleServer

T0 = 1_700_000_000 * 1_000_000_000  # flow times: T0 + i seconds


def make_flow(i: int, **kw: Any) -> flow_pb2.Flow:
    f = flow_pb2.Flow(
        uuid=f"f{i}",
        verdict=kw.pop("verdict", flow_pb2.Verdict.FORWARDED),
        node_name="node-a",
        **kw,
    )
    f.time.FromNanoseconds(T0 + i * 1_000_000_000)
    return f


def ts(i: int) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(T0 + i * 1_000_000_000)
    return t


if TYPE_CHECKING:
    Stub = observer_pb2_grpc.ObserverAsyncStub
else:  # the async stub type exists only in the generated .pyi
    Stub = Any


@contextlib.asynccontextmanager
async def serve(obs: LocalObserver) -> AsyncIterator[Stub]:
    with tempfile.TemporaryDirectory() as tmp:
        server = HubbleServer(obs, unix_path=Path(tmp) / "hubble.sock")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(server.unix_address or "") as ch:
                yield observer_pb2_grpc.ObserverStub(ch)
        finally:
            await server.stop(0)


def run(body: Callable[[LocalObserver, Stub], Awaitable[Any]], capacity: int = 63) -> Any:
    async def main() -> Any:
        obs = LocalObserver("node-a", capacity=capacity)
        async with serve(obs) as stub:
            return await asyncio.wait_for(body(obs, stub), 10)

    return asyncio.run(main())


def uuids(resps: list[observer_pb2.GetFlowsResponse]) -> list[str]:
    out = []
    for r in resps:
        if r.HasField("flow"):
            out.append(r.flow.uuid)
        else:
            out.append(f"lost:{r.lost_events.source}:{r.lost_events.num_events_lost}")
    return out


async def collect(stub: Stub, **req: Any) -> list[observer_pb2.GetFlowsResponse]:
    return [r async for r in stub.GetFlows(observer_pb2.GetFlowsRequest(**req))]


def _cel(*expressions: str) -> flow_pb2.FlowFilter:
    ff = flow_pb2.FlowFilter()
    ff.experimental.cel_expression.extend(expressions)
    return ff


def fill(obs: LocalObserver, n: int, **kw: Any) -> None:
    for i in range(n):
        obs.on_flow(make_flow(i, **kw))


def test_last_first_all_and_response_fields() -> None:
    async def body(obs: LocalObserver, stub: Stub) -> None:
        fill(obs, 10)
        last = await collect(stub, number=3)
        assert uuids(last) == ["f7", "f8", "f9"]
        assert last[0].node_name == "node-a" and last[0].time == ts(7)
        assert uuids(await collect(stub, number=3, first=True)) == ["f0", "f1", "f2"]
        assert uuids(await collect(stub)) == [f"f{i}" for i in range(10)]  # default: all
        assert uuids(await collect(stub, first=True)) == [f"f{i}" for i in range(10)]
        assert uuids(await collect(stub, number=100)) == [f"f{i}" for i in range(10)]

    run(body)


def test_since_until() -> None:
    async def body(obs: LocalObserver, stub: Stub) -> None:
        fill(obs, 10)
        assert uuids(await collect(stub, since=ts(6))) == ["f6", "f7", "f8", "f9"]
        assert uuids(await collect(stub, until=ts(2))) == ["f0", "f1", "f2"]
        assert uuids(await collect(stub, since=ts(3), until=ts(5))) == ["f3", "f4", "f5"]
        assert uuids(await collect(stub, since=ts(3), number=2)) == ["f3", "f4"]
        assert uuids(await collect(stub, until=ts(5), number=2)) == ["f4", "f5"]
        assert uuids(await collect(stub, first=True, since=ts(8))) == ["f8", "f9"]

    run(body)


def test_filters_and_number_count_matching_flows_only() -> None:
    async def body(obs: LocalObserver, stub: Stub) -> None:
        for i in range(20):
            v = flow_pb2.Verdict.DROPPED if i % 2 else flow_pb2.Verdict.FORWARDED
            obs.on_flow(make_flow(i, verdict=v))
        drop = flow_pb2.FlowFilter(verdict=[flow_pb2.Verdict.DROPPED])
        got = await collect(stub, number=3, whitelist=[drop])
        assert uuids(got) == ["f15", "f17", "f19"]
        got = await collect(stub, number=2, first=True, blacklist=[drop])
        assert uuids(got) == ["f0", "f2"]
        only = flow_pb2.FlowFilter(uuid=["f3", "f4"])
        assert uuids(await collect(stub, whitelist=[only], blacklist=[drop])) == ["f4"]

    run(body)


def test_follow_with_number_then_new_flows_and_until_ends_it() -> None:
    async def body(obs: LocalObserver, stub: Stub) -> None:
        fill(obs, 5)
        call = stub.GetFlows(observer_pb2.GetFlowsRequest(number=2, follow=True, until=ts(7)))
        it = call.__aiter__()
        got = [await anext(it), await anext(it)]
        for i in range(5, 10):
            obs.on_flow(make_flow(i))
        got += [r async for r in it]  # ends at the first flow after until (f8)
        assert uuids(got) == ["f3", "f4", "f5", "f6", "f7"]

    run(body)


def test_follow_without_number_sees_only_new_flows() -> None:
    async def body(obs: LocalObserver, stub: Stub) -> None:
        fill(obs, 5)
        call = stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True))
        it = call.__aiter__()
        waiter = asyncio.ensure_future(anext(it))
        # the server's reader starts where the ring is when the request arrives: wait until it
        # waits for the next write (a fixed sleep lost that race under load)
        for _ in range(500):
            if obs.ring._waiters:
                break
            await asyncio.sleep(0.01)
        assert obs.ring._waiters and not waiter.done()
        obs.on_flow(make_flow(42))
        first = await waiter
        assert first.flow.uuid == "f42"
        call.cancel()

    run(body)


def test_lost_events_are_delivered_unfiltered_and_lapping_is_reported() -> None:
    async def body(obs: LocalObserver, stub: Stub) -> None:
        fill(obs, 3)
        obs.on_lost(flow_pb2.LostEventSource.PERF_EVENT_RING_BUFFER, 12, cpu=1)
        obs.on_flow(make_flow(3))
        nothing = flow_pb2.FlowFilter(uuid=["none"])
        got = await collect(stub, whitelist=[nothing])
        assert uuids(got) == ["lost:1:12"]  # filters never hide lost events
        assert got[0].node_name == "node-a" and got[0].lost_events.cpu.value == 1
        assert uuids(await collect(stub, number=1)) == ["f3"]  # number counts flows only

        # a follower that falls behind by more than the ring gets a HUBBLE_RING_BUFFER loss
        lapped: list[flow_pb2.LostEvent] = []
        obs.add_lost_hook(lapped.append)
        call = stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True))
        it = call.__aiter__()
        waiter = asyncio.ensure_future(anext(it))
        await asyncio.sleep(0.05)
        for i in range(100, 100 + 7 * 16):  # 112 writes into a ring of 7, no yield between
            obs.on_flow(make_flow(i))
        got = [await waiter] + [await anext(it) for _ in range(7)]
        call.cancel()
        # reader was at position 5; the ring (7) now holds positions 110..116 = f205..f211
        assert uuids(got) == ["lost:3:105"] + [f"f{i}" for i in range(205, 212)]
        assert any(le.source == flow_pb2.LostEventSource.HUBBLE_RING_BUFFER for le in lapped)

    run(body, capacity=7)


def test_agent_events() -> None:
    async def body(obs: LocalObserver, stub: Stub) -> None:
        for _ in range(4):
            obs.on_agent_event(flow_pb2.AgentEvent(type=flow_pb2.AgentEventType.ENDPOINT_CREATED))
        req = observer_pb2.GetAgentEventsRequest
        got = [r async for r in stub.GetAgentEvents(req(number=2))]
        assert len(got) == 2 and got[0].node_name == "node-a"
        assert got[0].agent_event.type == flow_pb2.AgentEventType.ENDPOINT_CREATED
        assert len([r async for r in stub.GetAgentEvents(req())]) == 4
        call = stub.GetAgentEvents(req(follow=True))
        it = call.__aiter__()
        waiter = asyncio.ensure_future(anext(it))
        await asyncio.sleep(0.02)
        obs.on_agent_event(flow_pb2.AgentEvent(type=flow_pb2.AgentEventType.POLICY_UPDATED))
        assert (await waiter).agent_event.type == flow_pb2.AgentEventType.POLICY_UPDATED
        call.cancel()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            [r async for r in stub.GetAgentEvents(req(first=True, follow=True))]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    run(body)


def test_debug_events_empty_nodes_unimplemented_status_namespaces() -> None:
    async def body(obs: LocalObserver, stub: Stub) -> None:
        assert [r async for r in stub.GetDebugEvents(observer_pb2.GetDebugEventsRequest())] == []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetNodes(observer_pb2.GetNodesRequest())
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED

        now = time.time_ns()
        for i in range(5):
            f = make_flow(i)
            f.time.FromNanoseconds(now - (4 - i) * 1_000_000_000)
            f.source.namespace = "prod" if i % 2 else "default"
            f.destination.namespace = "kube-system"
            obs.on_flow(f)
        st = await stub.ServerStatus(observer_pb2.ServerStatusRequest())
        assert (st.num_flows, st.max_flows, st.seen_flows) == (5, 63, 5)
        assert st.uptime_ns > 0 and st.version
        assert not st.HasField("num_connected_nodes")
        assert not st.HasField("num_unavailable_nodes")
        assert st.flows_rate > 0
        ns = await stub.GetNamespaces(observer_pb2.GetNamespacesRequest())
        assert [(n.cluster, n.namespace) for n in ns.namespaces] == [
            ("default", "default"),
            ("default", "kube-system"),
            ("default", "prod"),
        ]

    run(body)


@pytest.mark.parametrize(
    ("req", "msg"),
    [
        ({"first": True, "follow": True}, "first cannot be specified with follow"),
        (
            {"whitelist": [flow_pb2.FlowFilter(source_ip=["10.0.0.0/40"])]},
            r"invalid whitelist\[0\] filter: source_ip: invalid CIDR '10.0.0.0/40'",
        ),
        (
            {"blacklist": [flow_pb2.FlowFilter(source_label=["app in ("])]},
            r"invalid blacklist\[0\] filter: source_label",
        ),
        ({"since": timestamp_pb2.Timestamp(seconds=1, nanos=-5)}, "invalid since timestamp"),
        (
            {"whitelist": [_cel("_flow.verdict == Verdict.NOPE")]},
            r"(?s)invalid whitelist\[0\] filter: experimental.cel_expression: "
            r"error compiling CEL expression: .*Verdict.NOPE",
        ),
    ],
)
def test_invalid_requests_are_invalid_argument(req: dict[str, Any], msg: str) -> None:
    async def body(obs: LocalObserver, stub: Stub) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(stub, **req)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() is not None
        assert re.search(msg, err.value.details() or ""), err.value.details()

    run(body)


def test_cel_expression_filters_on_the_node() -> None:
    async def body(obs: LocalObserver, stub: Stub) -> None:
        for i in range(6):
            f = make_flow(i)
            f.verdict = flow_pb2.DROPPED if i % 3 == 0 else flow_pb2.FORWARDED
            obs.on_flow(f)
        got = await collect(stub, whitelist=[_cel("_flow.verdict == Verdict.DROPPED")])
        assert [r.flow.verdict for r in got] == [flow_pb2.DROPPED] * 2

    run(body)


def test_field_mask() -> None:
    async def body(obs: LocalObserver, stub: Stub) -> None:
        fill(obs, 2, IP=flow_pb2.IP(source="10.0.0.1"))
        req = observer_pb2.GetFlowsRequest(number=1)
        req.field_mask.paths.append("uuid")
        got = [r async for r in stub.GetFlows(req)]
        assert got[0].flow == flow_pb2.Flow(uuid="f1")
        bad = observer_pb2.GetFlowsRequest()
        bad.field_mask.paths.append("no_such_field")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            [r async for r in stub.GetFlows(bad)]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    run(body)


def test_hooks_run_and_a_failing_hook_does_not_stop_flows() -> None:
    obs = LocalObserver("n", capacity=3)
    seen: list[str] = []

    def boom(_f: flow_pb2.Flow) -> None:
        raise RuntimeError("hook bug")

    obs.add_flow_hook(boom)
    obs.add_flow_hook(lambda f: seen.append(f.uuid))
    unset = flow_pb2.Flow(uuid="x")
    obs.on_flow(unset)
    assert seen == ["x"] and obs.seen_flows == 1 and unset.HasField("time")
