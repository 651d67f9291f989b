"""Hubble Relay over real gRPC: node servers on unix sockets, the relay on 127.0.0.1:0.

Every test starts real :class:`HubbleServer`s (with a :class:`LocalObserver` fed by the test)
and a real :class:`RelayServer`, and talks to the relay with our generated client stubs; the
sans-IO pieces (sort buffer, window selection, flag parsing) are tested directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.api.observer import observer_pb2, observer_pb2_grpc
from ciliary.hubble.api.relay import relay_pb2
from ciliary.hubble.observer import LocalObserver
from ciliary.hubble.peer import PeerInfo
from ciliary.hubble.relay import RelayConfig, RelayServer
from ciliary.hubble.relay.cmd import build_parser, config_from_args, parse_duration
from ciliary.hubble.relay.merge import SortBuffer, timestamp_ns
from ciliary.hubble.relay.observer import ObserverConfig
from ciliary.hubble.relay.pool import (
    PeerSpec,
    PoolConfig,
    parse_peer_address,
    parse_static_peers,
)
from ciliary.hubble.server import HubbleServer, TLSConfig

SEC = 1_000_000_000
BASE = time.time_ns() - 600 * SEC  # history flows: ten minutes ago


# --------------------------------------------------------------------------- helpers


def mkflow(node: str, t_ns: int, ns: str = "default", pod: str = "a") -> flow_pb2.Flow:
    f = flow_pb2.Flow(
        node_name=node,
        verdict=flow_pb2.FORWARDED,
        source=flow_pb2.Endpoint(namespace=ns, pod_name=pod),
    )
    f.time.FromNanoseconds(t_ns)
    return f


@dataclass
class Node:
    name: str
    sock: Path
    observer: LocalObserver
    server: HubbleServer | None = None
    peers: list[PeerInfo] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"unix://{self.sock}"

    async def start(self) -> None:
        self.server = HubbleServer(
            self.observer,
            unix_path=self.sock,
            peers=(lambda: self.peers) if self.peers else None,
            peer_poll_interval=0.05,
        )
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=0)
            self.server = None


@dataclass
class Cluster:
    nodes: dict[str, Node]
    relay: RelayServer
    channel: grpc.aio.Channel

    @property
    def stub(self) -> observer_pb2_grpc.ObserverAsyncStub:
        return observer_pb2_grpc.ObserverStub(self.channel)


def relay_config(
    peers: list[PeerSpec], peer_service: str | None = None, drain: float = 0.1
) -> RelayConfig:
    return RelayConfig(
        listen_address="127.0.0.1:0",
        peer_service=peer_service,
        static_peers=tuple(peers),
        pool=PoolConfig(dial_timeout=1.0, retry_timeout=0.2),
        observer=ObserverConfig(
            sort_buffer_len_max=100,
            sort_buffer_drain_timeout=drain,
            node_call_timeout=1.0,
            peer_update_interval=0.05,
            rejoin_backoff=0.05,
            rejoin_backoff_max=0.2,
            node_name="relay-host",
        ),
        health_interval=0.05,
        grace=0.1,
    )


@contextlib.asynccontextmanager
async def cluster(
    names: list[str],
    *,
    extra_peers: list[PeerSpec] | None = None,
    via_peer_service: bool = False,
    drain: float = 0.1,
) -> AsyncIterator[Cluster]:
    # unix socket paths must stay short: not under pytest's deep tmp_path
    tmp = Path(tempfile.mkdtemp(prefix="relay-"))
    nodes = {n: Node(n, tmp / f"{n}.sock", LocalObserver(n, capacity=1023)) for n in names}
    relay: RelayServer | None = None
    channel: grpc.aio.Channel | None = None
    try:
        if via_peer_service:
            first = nodes[names[0]]
            first.peers = [PeerInfo(n.name, n.address) for n in nodes.values()]
        for node in nodes.values():
            await node.start()
        statics = [] if via_peer_service else [
            PeerSpec(n.name, parse_peer_address(n.address)) for n in nodes.values()
        ]  # fmt: skip
        statics += extra_peers or []
        service = nodes[names[0]].address if via_peer_service else None
        relay = RelayServer(relay_config(statics, service, drain))
        await relay.start()
        channel = grpc.aio.insecure_channel(relay.address)
        c = Cluster(nodes, relay, channel)
        expected = len(names) + len(extra_peers or [])
        await until(lambda: len(c.relay.pool.list()) == expected)
        yield c
    finally:
        if channel is not None:
            await channel.close(None)
        if relay is not None:
            await relay.stop()
        for node in nodes.values():
            await node.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def until(
    cond: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.02)


async def all_responses(
    stub: observer_pb2_grpc.ObserverAsyncStub, req: observer_pb2.GetFlowsRequest
) -> list[observer_pb2.GetFlowsResponse]:
    return [r async for r in stub.GetFlows(req, timeout=10)]


def flows_of(resps: list[observer_pb2.GetFlowsResponse]) -> list[flow_pb2.Flow]:
    return [r.flow for r in resps if r.HasField("flow")]


def statuses_of(resps: list[observer_pb2.GetFlowsResponse]) -> list[tuple[int, list[str]]]:
    return [
        (r.node_status.state_change, list(r.node_status.node_names))
        for r in resps
        if r.HasField("node_status")
    ]


def feed_interleaved(c: Cluster, per_node: int) -> list[tuple[int, str]]:
    """Node i gets times BASE + (k * n + i) ms: a global order that alternates nodes."""
    names = sorted(c.nodes)
    out: list[tuple[int, str]] = []
    for k in range(per_node):
        for i, name in enumerate(names):
            t = BASE + (k * len(names) + i) * 1_000_000
            c.nodes[name].observer.on_flow(mkflow(name, t, ns=f"ns-{name}"))
            out.append((t, name))
    return out


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


# --------------------------------------------------------------------------- merging


def test_non_follow_merges_all_nodes_in_time_order() -> None:
    async def body() -> None:
        async with cluster(["n1", "n2", "n3"]) as c:
            expected = feed_interleaved(c, 20)
            resps = await all_responses(c.stub, observer_pb2.GetFlowsRequest())
            # upstream tells first which nodes take part
            assert statuses_of(resps[:1]) == [(relay_pb2.NODE_CONNECTED, ["n1", "n2", "n3"])]
            assert resps[0].node_name == "relay-host"
            flows = flows_of(resps)
            assert [(f.time.ToNanoseconds(), f.node_name) for f in flows] == expected
            assert {r.node_name for r in resps if r.HasField("flow")} == {"n1", "n2", "n3"}

    run(body())


def test_number_and_first_select_n_per_node_then_merge_in_time_order() -> None:
    """Upstream's relay passes ``number``/``first`` to every node: ``--last 3`` through a relay
    is each node's last 3 (here n1's last 3 of 10 and both of n2's), merged by time."""

    async def body() -> None:
        async with cluster(["n1", "n2"]) as c:
            n1 = [BASE + i * SEC for i in range(10)]
            n2 = [BASE + 2 * SEC + SEC // 2, BASE + 8 * SEC + SEC // 2]
            for t in n1:
                c.nodes["n1"].observer.on_flow(mkflow("n1", t))
            for t in n2:
                c.nodes["n2"].observer.on_flow(mkflow("n2", t))

            def seen(resps: list[observer_pb2.GetFlowsResponse]) -> list[tuple[int, str]]:
                return [(f.time.ToNanoseconds(), f.node_name) for f in flows_of(resps)]

            last = await all_responses(c.stub, observer_pb2.GetFlowsRequest(number=3))
            want = sorted([(t, "n1") for t in n1[-3:]] + [(t, "n2") for t in n2])
            assert seen(last) == want
            first = await all_responses(c.stub, observer_pb2.GetFlowsRequest(number=1, first=True))
            assert seen(first) == [(n1[0], "n1"), (n2[0], "n2")]

    run(body())


def test_lost_events_pass_through_with_node_name() -> None:
    async def body() -> None:
        async with cluster(["n1", "n2"]) as c:
            c.nodes["n2"].observer.on_lost(flow_pb2.PERF_EVENT_RING_BUFFER, 42, cpu=1)
            resps = await all_responses(c.stub, observer_pb2.GetFlowsRequest())
            lost = [r for r in resps if r.HasField("lost_events")]
            assert len(lost) == 1
            assert lost[0].lost_events.num_events_lost == 42
            assert lost[0].node_name == "n2"

    run(body())


def test_follow_merges_history_then_live_flows_across_nodes() -> None:
    async def body() -> None:
        # the drain timeout is the sorting window: wide enough for a loaded test machine
        async with cluster(["n1", "n2", "n3"], drain=0.5) as c:
            expected = feed_interleaved(c, 5)
            call = c.stub.GetFlows(observer_pb2.GetFlowsRequest(number=4, follow=True))
            got: list[observer_pb2.GetFlowsResponse] = []

            async def read_flows(n: int) -> None:
                while len(flows_of(got)) < n:
                    got.append(await asyncio.wait_for(call.read(), 5))  # type: ignore[arg-type]

            await read_flows(12)
            assert statuses_of(got)[0] == (relay_pb2.NODE_CONNECTED, ["n1", "n2", "n3"])
            history = [(f.time.ToNanoseconds(), f.node_name) for f in flows_of(got)]
            assert history == expected[-12:]  # 4 per node, as upstream, merged by time
            # live flows, written out of node order but with interleaved times
            now = time.time_ns()
            live = [(now + 1000 * i, f"n{(i % 3) + 1}") for i in range(9)]
            for t, name in reversed(live):
                c.nodes[name].observer.on_flow(mkflow(name, t))
            await read_flows(12 + len(live))
            assert [(f.time.ToNanoseconds(), f.node_name) for f in flows_of(got)[12:]] == live
            call.cancel()

    run(body())


def test_agent_events_are_merged_with_a_number_per_node() -> None:
    async def body() -> None:
        async with cluster(["n1", "n2"]) as c:
            for i in range(6):
                name = "n1" if i % 2 == 0 else "n2"
                c.nodes[name].observer.on_agent_event(
                    flow_pb2.AgentEvent(
                        type=flow_pb2.POLICY_UPDATED,
                        policy_update=flow_pb2.PolicyUpdateNotification(revision=i),
                    )
                )
                await asyncio.sleep(0.002)
            req = observer_pb2.GetAgentEventsRequest(number=2)  # each node's last 2
            resps = [r async for r in c.stub.GetAgentEvents(req, timeout=10)]
            assert [r.agent_event.policy_update.revision for r in resps] == [2, 3, 4, 5]
            assert [r.node_name for r in resps] == ["n1", "n2", "n1", "n2"]

    run(body())


def test_cel_expression_through_the_relay() -> None:
    """The relay checks the expression (InvalidArgument with the compiler's reason) and the
    nodes evaluate it on their flows."""

    async def body() -> None:
        async with cluster(["n1", "n2"]) as c:
            feed_interleaved(c, 3)
            ff = flow_pb2.FlowFilter()
            ff.experimental.cel_expression.append("_flow.node_name == 'n2'")
            resps = await all_responses(c.stub, observer_pb2.GetFlowsRequest(whitelist=[ff]))
            nodes = [r.node_name for r in resps if r.HasField("flow")]
            assert nodes == ["n2"] * 3
            bad = flow_pb2.FlowFilter()
            bad.experimental.cel_expression.append("_flow.node_name")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await all_responses(c.stub, observer_pb2.GetFlowsRequest(whitelist=[bad]))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "wanted 'bool' result type" in (err.value.details() or "")

    run(body())


def test_invalid_requests_are_rejected_with_invalid_argument() -> None:
    async def body() -> None:
        async with cluster(["n1", "n2"]) as c:
            bad_filter = observer_pb2.GetFlowsRequest(
                whitelist=[flow_pb2.FlowFilter(source_ip=["not-an-ip"])]
            )
            first_follow = observer_pb2.GetFlowsRequest(first=True, follow=True, number=1)
            bad_mask = observer_pb2.GetFlowsRequest()  # only the nodes check field masks
            bad_mask.field_mask.paths.append("no_such_field")
            for req in (bad_filter, first_follow, bad_mask):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await all_responses(c.stub, req)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, req

    run(body())


# --------------------------------------------------------------------------- status


def test_server_status_nodes_and_namespaces_sum_over_nodes() -> None:
    async def body() -> None:
        async with cluster(["n1", "n2", "n3"]) as c:
            feed_interleaved(c, 4)
            c.nodes["n3"].observer.on_flow(mkflow("n3", BASE, ns="shared"))
            c.nodes["n1"].observer.on_flow(mkflow("n1", BASE, ns="shared"))
            st = await c.stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)
            assert st.num_flows == 14
            assert st.seen_flows == 14
            assert st.max_flows == 3 * 1023
            assert st.num_connected_nodes.value == 3
            assert st.HasField("num_unavailable_nodes")
            assert st.num_unavailable_nodes.value == 0
            assert list(st.unavailable_nodes) == []
            assert st.version.startswith("ciliary-relay")
            assert st.uptime_ns > 0

            nodes = (await c.stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=5)).nodes
            assert [n.name for n in nodes] == ["n1", "n2", "n3"]
            for n in nodes:
                assert n.state == relay_pb2.NODE_CONNECTED
                assert n.address == c.nodes[n.name].address
                assert not n.tls.enabled
                assert n.max_flows == 1023
                assert n.uptime_ns > 0
                assert n.version
            assert [n.num_flows for n in nodes] == [5, 4, 5]
            assert [n.seen_flows for n in nodes] == [5, 4, 5]

            ns = await c.stub.GetNamespaces(observer_pb2.GetNamespacesRequest(), timeout=5)
            assert [(n.cluster, n.namespace) for n in ns.namespaces] == [
                ("default", "ns-n1"),
                ("default", "ns-n2"),
                ("default", "ns-n3"),
                ("default", "shared"),
            ]

    run(body())


def test_unreachable_peer_is_reported_not_fatal() -> None:
    async def body() -> None:
        ghost = PeerSpec("ghost", parse_peer_address("unix:///nonexistent/relay-test.sock"))
        async with cluster(["n1"], extra_peers=[ghost]) as c:
            c.nodes["n1"].observer.on_flow(mkflow("n1", BASE))

            async def ghost_down() -> bool:
                st = await c.stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)
                return list(st.unavailable_nodes) == ["ghost"]

            await until(ghost_down, what="ghost reported unavailable")
            st = await c.stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)
            assert (st.num_connected_nodes.value, st.num_unavailable_nodes.value) == (1, 1)
            resps = await all_responses(c.stub, observer_pb2.GetFlowsRequest())
            assert statuses_of(resps)[:2] == [
                (relay_pb2.NODE_CONNECTED, ["n1"]),
                (relay_pb2.NODE_UNAVAILABLE, ["ghost"]),
            ]
            assert [f.node_name for f in flows_of(resps)] == ["n1"]
            nodes = (await c.stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=5)).nodes
            assert {n.name: n.state for n in nodes} == {
                "ghost": relay_pb2.NODE_UNAVAILABLE,
                "n1": relay_pb2.NODE_CONNECTED,
            }

    run(body())


def test_follow_starts_when_the_relay_takes_the_request() -> None:
    """A flow a node records once the relay has answered NODE_CONNECTED is followed, however
    late the relay resumes after sending that status (under load it resumed after the client
    had already made a flow: the stream started at its own later time and filtered it out)."""

    async def body() -> None:
        async with cluster(["n1", "n2"]) as c:
            call = c.stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True))
            first = await asyncio.wait_for(call.read(), 5)  # type: ignore[arg-type]
            assert first.node_status.state_change == relay_pb2.NODE_CONNECTED
            # the earliest time a flow can have once NODE_CONNECTED is out: the status's own
            c.nodes["n2"].observer.on_flow(mkflow("n2", timestamp_ns(first.time) + 1))
            resp = await asyncio.wait_for(call.read(), 5)  # type: ignore[arg-type]
            assert resp.flow.node_name == "n2"
            call.cancel()

    run(body())


def test_node_killed_mid_stream_is_reported_then_reconnected() -> None:
    async def body() -> None:
        async with cluster(["n1", "n2", "n3"]) as c:
            call = c.stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True))
            got: list[observer_pb2.GetFlowsResponse] = []

            async def read_until(pred: Callable[[], bool]) -> None:
                while not pred():
                    got.append(await asyncio.wait_for(call.read(), 5))  # type: ignore[arg-type]

            await read_until(lambda: bool(statuses_of(got)))
            n2 = c.nodes["n2"]
            n2.observer.on_flow(mkflow("n2", time.time_ns()))
            await read_until(lambda: len(flows_of(got)) == 1)

            await n2.stop()
            await read_until(lambda: any("n2" in names for _, names in statuses_of(got)[1:]))
            lost_state, lost_names = statuses_of(got)[-1]
            assert lost_names == ["n2"]
            assert lost_state == relay_pb2.NODE_UNAVAILABLE  # connection lost: will rejoin
            assert got[-1].node_status.message

            # the others keep streaming
            c.nodes["n1"].observer.on_flow(mkflow("n1", time.time_ns()))
            await read_until(lambda: flows_of(got)[-1].node_name == "n1")

            async def status() -> observer_pb2.ServerStatusResponse:
                return await c.stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)

            async def n2_down() -> bool:
                return list((await status()).unavailable_nodes) == ["n2"]

            await until(n2_down, what="n2 unavailable in ServerStatus")
            assert (await status()).num_connected_nodes.value == 2
            nodes = (await c.stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=5)).nodes
            assert {n.name: n.state for n in nodes}["n2"] == relay_pb2.NODE_UNAVAILABLE

            # the node comes back (same ring): it rejoins, without repeating old flows
            n2.observer.on_flow(mkflow("n2", time.time_ns()))  # while the relay cannot see it
            await n2.start()
            await read_until(lambda: (relay_pb2.NODE_CONNECTED, ["n2"]) in statuses_of(got)[1:])
            n2.observer.on_flow(mkflow("n2", time.time_ns()))
            await read_until(lambda: [f.node_name for f in flows_of(got)].count("n2") == 3)

            async def n2_up() -> bool:
                return (await status()).num_connected_nodes.value == 3

            await until(n2_up, what="n2 connected again in ServerStatus")
            call.cancel()

    run(body())


def test_peers_come_from_the_peer_service_and_health_serves() -> None:
    async def body() -> None:
        async with cluster(["n1", "n2", "n3"], via_peer_service=True) as c:
            health = health_pb2_grpc.HealthStub(c.channel)

            async def serving() -> bool:
                resp = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

            await until(serving, what="relay health SERVING")
            resp = await health.Check(
                health_pb2.HealthCheckRequest(service="observer.Observer"), timeout=5
            )
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
            nodes = (await c.stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=5)).nodes
            assert [n.name for n in nodes] == ["n1", "n2", "n3"]

            # PEER_DELETED removes the node; a stream following it says it is gone
            call = c.stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True))
            got = [await asyncio.wait_for(call.read(), 5)]
            c.nodes["n1"].peers[:] = [p for p in c.nodes["n1"].peers if p.name != "n3"]
            await until(lambda: [p.name for p in c.relay.pool.list()] == ["n1", "n2"])
            while len(got) < 2:
                got.append(await asyncio.wait_for(call.read(), 5))
            resps = [r for r in got if isinstance(r, observer_pb2.GetFlowsResponse)]
            assert statuses_of(resps) == [
                (relay_pb2.NODE_CONNECTED, ["n1", "n2", "n3"]),
                (relay_pb2.NODE_GONE, ["n3"]),
            ]
            call.cancel()

    run(body())


def test_relay_health_answers_upstream_service_name() -> None:
    """Upstream's ``hubble status`` through the relay asks for ``hubble.server.Observer``."""

    async def body() -> None:
        async with cluster(["n1"]) as c:
            health = health_pb2_grpc.HealthStub(c.channel)

            async def serving() -> bool:
                resp = await health.Check(
                    health_pb2.HealthCheckRequest(service="hubble.server.Observer"), timeout=5
                )
                return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

            await until(serving, what="relay hubble.server.Observer SERVING")

    run(body())


def test_health_is_not_serving_without_an_available_peer() -> None:
    async def body() -> None:
        ghost = PeerSpec("ghost", parse_peer_address("unix:///nonexistent/relay-test.sock"))
        relay = RelayServer(relay_config([ghost]))
        await relay.start()
        try:
            async with grpc.aio.insecure_channel(relay.address) as channel:
                health = health_pb2_grpc.HealthStub(channel)

                async def not_serving() -> bool:
                    resp = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    return bool(resp.status == health_pb2.HealthCheckResponse.NOT_SERVING)

                await until(not_serving, what="NOT_SERVING")
        finally:
            await relay.stop()

    run(body())


# --------------------------------------------------------------------------- the process


def test_main_serves_until_sigterm_and_removes_its_pid_file() -> None:
    async def body() -> None:
        tmp = Path(tempfile.mkdtemp(prefix="relay-"))
        node = Node("n1", tmp / "n1.sock", LocalObserver("n1", capacity=63))
        await node.start()
        pid_file = tmp / "relay.pid"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ciliary.hubble.relay",
            "--listen-address", "127.0.0.1:0",
            "--peers", f"n1={node.address}",
            "--retry-timeout", "200ms",
            "--pid-file", str(pid_file),
            stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proc.stderr is not None
            address = ""
            while not address:
                line = (await asyncio.wait_for(proc.stderr.readline(), 10)).decode()
                assert line, "relay exited early"
                if "listening on" in line:
                    address = line.split("listening on ")[1].split()[0]
            await until(pid_file.exists, what="pid file")
            assert int(pid_file.read_text()) == proc.pid
            node.observer.on_flow(mkflow("n1", BASE))
            async with grpc.aio.insecure_channel(address) as channel:
                stub = observer_pb2_grpc.ObserverStub(channel)
                flows = flows_of(await all_responses(stub, observer_pb2.GetFlowsRequest()))
                assert [f.node_name for f in flows] == ["n1"]
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
            assert not pid_file.exists()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await node.stop()
            shutil.rmtree(tmp, ignore_errors=True)

    run(body())


def test_flags_and_config_errors() -> None:
    p = build_parser()
    args = p.parse_args(["--peers", "a=unix:///x.sock,b=10.0.0.2"])
    cfg = config_from_args(args)
    assert cfg.listen_address == ":4245"
    assert [(s.name, str(s.address)) for s in cfg.static_peers] == [
        ("a", "unix:///x.sock"),
        ("b", "10.0.0.2:4244"),
    ]
    assert cfg.observer.sort_buffer_len_max == 100
    assert cfg.observer.sort_buffer_drain_timeout == 1.0
    assert cfg.pool.retry_timeout == 30.0
    assert cfg.server_tls is None
    with pytest.raises(ValueError, match="--peer-service"):
        config_from_args(p.parse_args([]))
    with pytest.raises(ValueError, match="go together"):
        config_from_args(p.parse_args(["--peers", "a=:1", "--tls-relay-server-cert-file", "x"]))
    with pytest.raises(SystemExit):
        p.parse_args(["--sort-buffer-len-max", "0"])
    with pytest.raises(ValueError, match="twice"):
        parse_static_peers("a=:1,a=:2")
    with pytest.raises(ValueError, match="name=address"):
        parse_static_peers("justaname")
    assert parse_duration("1m30s") == 90.0
    assert parse_duration("250ms") == 0.25
    assert parse_duration("2") == 2.0
    for bad in ("", "5x", "-1s", "0"):
        with pytest.raises(Exception, match="duration"):
            parse_duration(bad)


# --------------------------------------------------------------------------- sans-IO


def test_sort_buffer_orders_within_its_window_and_drains_by_age() -> None:
    buf: SortBuffer[str] = SortBuffer(3)
    assert buf.push(30, "c") == []
    assert buf.push(10, "a") == []
    assert buf.push(20, "b") == []
    assert buf.push(40, "d") == ["a"]  # full: the oldest leaves
    assert buf.pop_older_than(25) == ["b"]
    assert buf.push(30, "c2") == []  # equal times keep arrival order
    assert buf.drain() == ["c", "c2", "d"]
    assert len(buf) == 0
    with pytest.raises(ValueError):
        SortBuffer(0)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_tls_towards_clients_and_towards_nodes() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="relay-tls-"))
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )  # fmt: skip

        async def body() -> None:
            node = LocalObserver("n1", capacity=63)
            node.on_flow(mkflow("n1", BASE))
            server = HubbleServer(node, tcp_address="127.0.0.1:0", tls=TLSConfig(cert, key))
            await server.start()
            args = build_parser().parse_args(
                ["--listen-address", "127.0.0.1:0",
                 "--peers", f"n1=tls://localhost:{server.tcp_port}",
                 "--tls-hubble-server-ca-files", str(cert),
                 "--tls-relay-server-cert-file", str(cert),
                 "--tls-relay-server-key-file", str(key)]
            )  # fmt: skip
            cfg = config_from_args(args)
            assert cfg.server_tls is not None
            relay = RelayServer(cfg)
            await relay.start()
            try:
                creds = grpc.ssl_channel_credentials(cert.read_bytes())
                target = f"localhost:{relay.port}"
                async with grpc.aio.secure_channel(target, creds) as channel:
                    stub = observer_pb2_grpc.ObserverStub(channel)
                    flows = flows_of(await all_responses(stub, observer_pb2.GetFlowsRequest()))
                    assert [f.node_name for f in flows] == ["n1"]
                    nodes = (await stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=5)).nodes
                    assert nodes[0].tls.enabled
                    assert nodes[0].state == relay_pb2.NODE_CONNECTED
            finally:
                await relay.stop()
                await server.stop(grace=0)

        run(body())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_module_entry_point_prints_usage() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ciliary.hubble.relay", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ},
    )
    for flag in ("--peer-service", "--sort-buffer-len-max", "--disable-client-tls"):
        assert flag in out.stdout
