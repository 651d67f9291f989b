"""The relay's ``observer.Observer``: one cluster-wide view made of every node's Hubble server.

Unary calls fan out to the available peers concurrently and combine the answers as upstream
does: ServerStatus sums the counters (uptime: the oldest node's), GetNodes lists every known
peer with its state and its own ServerStatus numbers, GetNamespaces is the sorted union. A
peer that fails a unary call counts as unavailable (ServerStatus) or NODE_ERROR (GetNodes).
Streams are :class:`~ciliary.hubble.relay.fanout.Fanout`'s business; agent and debug events
are merged like flows, where upstream's relay answers Unimplemented.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.wrappers_pb2 import UInt32Value

from ciliary import __version__
from ciliary.hubble.api.observer import observer_pb2, observer_pb2_grpc
from ciliary.hubble.api.relay import relay_pb2
from ciliary.hubble.filters import FilterError, build_filter
from ciliary.hubble.relay.fanout import (
    AGENT_EVENTS,
    DEBUG_EVENTS,
    FLOWS,
    Fanout,
    Kind,
    ObserverConfig,
    Req,
    RequestRejectedError,
    Resp,
    reraise_if_cancelling,
)
from ciliary.hubble.relay.pool import Peer, PeerPool

if TYPE_CHECKING:
    from ciliary.hubble.api.observer.observer_pb2_grpc import ObserverAsyncStub

log = logging.getLogger("ciliary.hubble.relay")

T = TypeVar("T")

RELAY_VERSION = f"ciliary-relay v{__version__}"
# upstream lists at most this many names in ServerStatus.unavailable_nodes
UNAVAILABLE_NODES_REPORT_MAX = 10


class RelayObserver(observer_pb2_grpc.ObserverServicer):
    """observer.Observer served from a :class:`PeerPool`."""

    def __init__(self, pool: PeerPool, config: ObserverConfig | None = None) -> None:
        self._pool = pool
        self._cfg = config or ObserverConfig()
        self._name = self._cfg.node_name or socket.gethostname()

    async def _stream(
        self,
        kind: Kind[Req, Resp],
        request: Req,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[Resp]:
        if request.first and request.follow:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "first is incompatible with follow"
            )
        fanout = Fanout(kind, request, self._pool, self._cfg, self._name)
        try:
            async for resp in fanout.run():
                yield resp
        except RequestRejectedError as err:
            await context.abort(err.code, err.details)

    async def GetFlows(  # noqa: N802 - gRPC method name
        self,
        request: observer_pb2.GetFlowsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[observer_pb2.GetFlowsResponse]:
        try:
            build_filter(request.whitelist, request.blacklist)
        except FilterError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        async for resp in self._stream(FLOWS, request, context):
            yield resp

    async def GetAgentEvents(  # noqa: N802 - gRPC method name
        self,
        request: observer_pb2.GetAgentEventsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[observer_pb2.GetAgentEventsResponse]:
        async for resp in self._stream(AGENT_EVENTS, request, context):
            yield resp

    async def GetDebugEvents(  # noqa: N802 - gRPC method name
        self,
        request: observer_pb2.GetDebugEventsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[observer_pb2.GetDebugEventsResponse]:
        async for resp in self._stream(DEBUG_EVENTS, request, context):
            yield resp

    # -- unary -------------------------------------------------------------------------------

    async def _ask(
        self,
        peer: Peer,
        what: str,
        call: Callable[[ObserverAsyncStub, float], Awaitable[T]],
    ) -> T | None:
        """One unary call to ``peer`` (``call(stub, timeout)``); None, logged, if it fails."""
        stub = observer_pb2_grpc.ObserverStub(peer.channel)
        try:
            return await call(stub, self._cfg.node_call_timeout)
        except grpc.aio.AioRpcError as err:
            log.warning("%s of %s failed: %s: %s", what, peer.name, err.code().name, err.details())
            return None
        except asyncio.CancelledError:
            reraise_if_cancelling()
            return None  # the peer's channel was closed under the call

    async def _server_status(self, peer: Peer) -> observer_pb2.ServerStatusResponse | None:
        return await self._ask(
            peer,
            "server status",
            lambda stub, timeout: stub.ServerStatus(
                observer_pb2.ServerStatusRequest(), timeout=timeout
            ),
        )

    async def ServerStatus(  # noqa: N802 - gRPC method name
        self,
        request: observer_pb2.ServerStatusRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> observer_pb2.ServerStatusResponse:
        peers = self._pool.list()
        available = [p for p in peers if p.available]
        statuses = await asyncio.gather(*(self._server_status(p) for p in available))
        unavailable = [p.name for p in peers if not p.available]
        unavailable += [p.name for p, st in zip(available, statuses, strict=True) if st is None]
        resp = observer_pb2.ServerStatusResponse(version=RELAY_VERSION)
        for st in statuses:
            if st is None:
                continue
            resp.num_flows += st.num_flows
            resp.max_flows += st.max_flows
            resp.seen_flows += st.seen_flows
            resp.flows_rate += st.flows_rate
            # the oldest node's uptime: adding them up would mean nothing
            resp.uptime_ns = max(resp.uptime_ns, st.uptime_ns)
        resp.num_connected_nodes.CopyFrom(UInt32Value(value=len(peers) - len(unavailable)))
        resp.num_unavailable_nodes.CopyFrom(UInt32Value(value=len(unavailable)))
        resp.unavailable_nodes.extend(sorted(unavailable)[:UNAVAILABLE_NODES_REPORT_MAX])
        return resp

    async def GetNodes(  # noqa: N802 - gRPC method name
        self,
        request: observer_pb2.GetNodesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> observer_pb2.GetNodesResponse:
        peers = self._pool.list()
        statuses = await asyncio.gather(*(self._server_status(p) for p in peers if p.available))
        by_name = dict(zip((p.name for p in peers if p.available), statuses, strict=True))
        nodes: list[observer_pb2.Node] = []
        for p in peers:
            node = observer_pb2.Node(
                name=p.name,
                address=p.address,
                tls=observer_pb2.TLS(enabled=p.tls_enabled, server_name=p.tls_server_name),
            )
            st = by_name.get(p.name)
            if not p.available:
                node.state = relay_pb2.NODE_UNAVAILABLE
            elif st is None:
                node.state = relay_pb2.NODE_ERROR
            else:
                node.state = relay_pb2.NODE_CONNECTED
                node.version = st.version
                node.uptime_ns = st.uptime_ns
                node.num_flows = st.num_flows
                node.max_flows = st.max_flows
                node.seen_flows = st.seen_flows
            nodes.append(node)
        return observer_pb2.GetNodesResponse(nodes=nodes)

    async def _namespaces(self, peer: Peer) -> list[observer_pb2.Namespace]:
        resp = await self._ask(
            peer,
            "namespaces",
            lambda stub, timeout: stub.GetNamespaces(
                observer_pb2.GetNamespacesRequest(), timeout=timeout
            ),
        )
        return list(resp.namespaces) if resp is not None else []

    async def GetNamespaces(  # noqa: N802 - gRPC method name
        self,
        request: observer_pb2.GetNamespacesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> observer_pb2.GetNamespacesResponse:
        answers = await asyncio.gather(
            *(self._namespaces(p) for p in self._pool.list() if p.available)
        )
        seen = {(ns.cluster, ns.namespace) for answer in answers for ns in answer}
        return observer_pb2.GetNamespacesResponse(
            namespaces=[observer_pb2.Namespace(cluster=c, namespace=n) for c, n in sorted(seen)]
        )


__all__ = ["RELAY_VERSION", "ObserverConfig", "RelayObserver"]
