"""One streaming request (GetFlows, GetAgentEvents, GetDebugEvents) fanned out to the nodes.

:class:`Fanout` owns one client request:

- it first tells the client which nodes take part (NODE_CONNECTED) and which cannot
  (NODE_UNAVAILABLE), as upstream does;
- a non-follow request goes to every node as it is, so ``number``/``first`` select N per
  node (upstream's relay: ``--last N`` through a relay of k nodes returns up to k*N flows),
  and their answers are merged in time order;
- a follow request fetches the history the same way (the request without ``follow``, events
  before the request's start ``t0``), then follows every node from ``t0`` on through a
  :class:`~ciliary.hubble.relay.merge.SortBuffer` bounded by ``--sort-buffer-len-max`` and
  drained by ``--sort-buffer-drain-timeout``. Nodes that become available later (a restarted
  node, a new peer) join the stream from where they left off (``since`` = their last event),
  announced by NODE_CONNECTED; a node lost mid-stream is announced by NODE_UNAVAILABLE
  (connection lost: it will rejoin), NODE_GONE (removed from the pool) or NODE_ERROR (it failed
  the request: it will not) and the stream goes on with the others.

A node answering INVALID_ARGUMENT or UNIMPLEMENTED rejects the *request* (every node gets the
same one): :class:`RequestRejectedError` carries that status to the servicer, which ends the
client's call with it. Agent and debug event responses have no node-status field, so node
trouble there is only logged.

Every task a request starts is tracked and cancelled when the request ends, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import grpc
import grpc.aio
from google.protobuf.timestamp_pb2 import Timestamp

from ciliary.hubble.api.observer import observer_pb2, observer_pb2_grpc
from ciliary.hubble.api.relay import relay_pb2
from ciliary.hubble.relay.merge import SortBuffer, ns_timestamp, sort_by_time, timestamp_ns
from ciliary.hubble.relay.pool import Peer, PeerPool

if TYPE_CHECKING:
    from ciliary.hubble.api.observer.observer_pb2_grpc import ObserverAsyncStub

log = logging.getLogger("ciliary.hubble.relay")

# codes that reject the request itself (the same request went to every node)
_REQUEST_ERRORS = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED})


@dataclass(frozen=True, slots=True)
class ObserverConfig:
    sort_buffer_len_max: int = 100
    sort_buffer_drain_timeout: float = 1.0
    # per-node deadline of unary calls (ServerStatus, GetNodes, GetNamespaces)
    node_call_timeout: float = 5.0
    # how often a follow request looks for nodes to (re)join
    peer_update_interval: float = 0.5
    # first wait before a follow request re-tries a node that failed it (doubles, capped)
    rejoin_backoff: float = 0.25
    rejoin_backoff_max: float = 30.0
    node_name: str = ""  # node_name of the relay's own responses (default: host name)


class EventsRequest(Protocol):
    """What GetFlows/GetAgentEvents/GetDebugEvents requests have in common."""

    number: int
    first: bool
    follow: bool

    @property
    def since(self) -> Timestamp: ...
    @property
    def until(self) -> Timestamp: ...


class EventsResponse(Protocol):
    node_name: str

    @property
    def time(self) -> Timestamp: ...


Req = TypeVar("Req", bound=EventsRequest)
Resp = TypeVar("Resp", bound=EventsResponse)


@dataclass(frozen=True, slots=True)
class Kind(Generic[Req, Resp]):
    """How one streaming method is fanned out and merged."""

    what: str
    call: Callable[[ObserverAsyncStub, Req], AsyncIterable[Resp]]
    status: Callable[[int, Sequence[str], str, str], Resp] | None  # node-status event maker


def _flows_status(
    state: int, names: Sequence[str], message: str, relay_name: str
) -> observer_pb2.GetFlowsResponse:
    return observer_pb2.GetFlowsResponse(
        node_status=relay_pb2.NodeStatusEvent(
            state_change=state,  # type: ignore[arg-type]
            node_names=list(names),
            message=message,
        ),
        node_name=relay_name,
        time=ns_timestamp(time.time_ns()),
    )


FLOWS: Kind[observer_pb2.GetFlowsRequest, observer_pb2.GetFlowsResponse] = Kind(
    what="flows",
    call=lambda stub, req: stub.GetFlows(req),
    status=_flows_status,
)
AGENT_EVENTS: Kind[observer_pb2.GetAgentEventsRequest, observer_pb2.GetAgentEventsResponse] = Kind(
    what="agent events",
    call=lambda stub, req: stub.GetAgentEvents(req),
    status=None,
)
DEBUG_EVENTS: Kind[observer_pb2.GetDebugEventsRequest, observer_pb2.GetDebugEventsResponse] = Kind(
    what="debug events",
    call=lambda stub, req: stub.GetDebugEvents(req),
    status=None,
)


def _time_of(resp: EventsResponse) -> int:
    return timestamp_ns(resp.time)


def _is_set(ts: Timestamp) -> bool:
    return ts.seconds != 0 or ts.nanos != 0


class RequestRejectedError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


@dataclass(slots=True)
class _Item(Generic[Resp]):
    peer: str
    resp: Resp


@dataclass(frozen=True, slots=True)
class _Failure:
    code: grpc.StatusCode
    details: str


@dataclass(slots=True)
class _Ended:
    peer: str
    error: _Failure | None  # None: the node ended the stream normally


def _state_for(err: _Failure | None) -> int:
    """The node state a failed (or, in follow mode, ended) node stream is reported as:
    connection trouble is NODE_UNAVAILABLE (it will be retried), anything else NODE_ERROR."""
    if err is None or err.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return relay_pb2.NODE_UNAVAILABLE
    return relay_pb2.NODE_ERROR


def _message(err: _Failure | None) -> str:
    if err is None:
        return "stream ended by the node"
    return err.details if err.code == grpc.StatusCode.UNKNOWN else f"{err.code.name}: {err.details}"


def reraise_if_cancelling() -> None:
    """Inside ``except CancelledError``: re-raises when this task is being cancelled, as
    opposed to a grpc.aio call cancelled because its channel was closed."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Fanout(Generic[Req, Resp]):
    """One streaming request against the cluster; see the module docstring."""

    def __init__(
        self,
        kind: Kind[Req, Resp],
        request: Req,
        pool: PeerPool,
        cfg: ObserverConfig,
        relay_name: str,
    ) -> None:
        self._kind = kind
        self._req = request
        self._pool = pool
        self._cfg = cfg
        self._relay_name = relay_name
        self._tasks: set[asyncio.Task[None]] = set()
        self._reported: set[str] = set()  # nodes whose loss was reported since they joined

    # -- helpers -----------------------------------------------------------------------------

    def _clone(self) -> Req:
        return copy.deepcopy(self._req)

    def _status(self, state: int, names: Sequence[str], message: str = "") -> Resp | None:
        if self._kind.status is None or not names:
            return None
        return self._kind.status(state, sorted(names), message, self._relay_name)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=f"relay:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _pump(self, peer: Peer, req: Req, out: asyncio.Queue[_Item[Resp] | _Ended]) -> None:
        stub = observer_pb2_grpc.ObserverStub(peer.channel)
        error: _Failure | None = None
        try:
            async for resp in self._kind.call(stub, req):
                if not resp.node_name:
                    resp.node_name = peer.name
                await out.put(_Item(peer.name, resp))
        except grpc.aio.AioRpcError as err:
            error = _Failure(err.code(), err.details() or "")
        except asyncio.CancelledError:
            reraise_if_cancelling()  # the request is over
            # grpc.aio cancels the call when its channel closes (peer removed or replaced)
            error = _Failure(grpc.StatusCode.CANCELLED, "connection closed by the relay")
        if error is not None and error.code not in _REQUEST_ERRORS:
            log.warning(
                "%s from %s failed: %s: %s",
                self._kind.what,
                peer.name,
                error.code.name,
                error.details,
            )
        await out.put(_Ended(peer.name, error))

    def _report_loss(self, peer: str, err: _Failure | None) -> Resp | None:
        if peer in self._reported:
            return None
        self._reported.add(peer)
        if not self._pool.knows(peer):
            return self._status(relay_pb2.NODE_GONE, [peer], "removed from the cluster")
        return self._status(_state_for(err), [peer], _message(err))

    # -- the request -------------------------------------------------------------------------

    async def run(self) -> AsyncIterator[Resp]:
        # A follow request streams from when the relay took it: before the first status goes
        # out (the client may make flows as soon as it reads NODE_CONNECTED, and this
        # generator resumes after that yield only when the loop gets to it)
        t0 = time.time_ns()
        peers = self._pool.list()
        available = [p for p in peers if p.available]
        for p in peers:
            if not p.available:
                log.info("no connection to peer %s (%s), skipping", p.name, p.address)
        for status in (
            self._status(relay_pb2.NODE_CONNECTED, [p.name for p in available]),
            self._status(relay_pb2.NODE_UNAVAILABLE, [p.name for p in peers if not p.available]),
        ):
            if status is not None:
                yield status
        try:
            if not self._req.follow:
                for resp in await self._history(available, self._clone(), None):
                    yield resp
                return
            async for resp in self._follow(available, t0):
                yield resp
        finally:
            await self._cancel_all()

    async def _history(self, peers: Sequence[Peer], req: Req, before_ns: int | None) -> list[Resp]:
        """Every node's answer to a non-follow request (``number``/``first`` applied by each
        node), merged in time order; node failures are reported in place. Raises
        RequestRejectedError."""
        req.follow = False
        queue: asyncio.Queue[_Item[Resp] | _Ended] = asyncio.Queue(maxsize=1024)
        for p in peers:
            self._spawn(self._pump(p, req, queue), f"history:{p.name}")
        items: list[Resp] = []
        failures: dict[str, list[str]] = {}  # message -> nodes (upstream coalesces equal errors)
        states: dict[str, int] = {}
        pending = len(peers)
        while pending:
            got = await queue.get()
            if isinstance(got, _Item):
                if before_ns is None or _time_of(got.resp) < before_ns:
                    items.append(got.resp)
                continue
            pending -= 1
            if got.error is None:
                continue
            if got.error.code in _REQUEST_ERRORS:
                raise RequestRejectedError(got.error.code, got.error.details)
            message = _message(got.error)
            failures.setdefault(message, []).append(got.peer)
            states[message] = _state_for(got.error)
        for message, names in failures.items():
            self._reported.update(names)
            status = self._status(states[message], names, message)
            if status is not None:
                items.append(status)
        return sort_by_time(items, _time_of)

    async def _follow(self, available: Sequence[Peer], t0: int) -> AsyncIterator[Resp]:
        cfg = self._cfg
        since0 = max(t0, timestamp_ns(self._req.since)) if _is_set(self._req.since) else t0
        until_ns = timestamp_ns(self._req.until) if _is_set(self._req.until) else None
        live: asyncio.Queue[_Item[Resp] | _Ended] = asyncio.Queue(
            maxsize=max(1024, cfg.sort_buffer_len_max)
        )
        streaming: set[str] = set()
        finished: set[str] = set()  # ended for good (NODE_ERROR, or ``until`` reached)
        last_seen: dict[str, int] = {}
        retry_at: dict[str, float] = {}
        backoff: dict[str, float] = {}

        def join(peer: Peer, since_ns: int) -> None:
            req = self._clone()
            req.number = 0
            req.first = False
            req.since.CopyFrom(ns_timestamp(since_ns))
            streaming.add(peer.name)
            self._reported.discard(peer.name)
            self._spawn(self._pump(peer, req, live), f"follow:{peer.name}")

        # live streams start before the history is read, so nothing falls in between
        for p in available:
            join(p, since0)
        wants_history = self._req.number > 0 or _is_set(self._req.since)
        if wants_history:
            for resp in await self._history(available, self._clone(), since0):
                yield resp

        buffer: SortBuffer[Resp] = SortBuffer(cfg.sort_buffer_len_max)
        drain_ns = int(cfg.sort_buffer_drain_timeout * 1e9)
        tick = max(0.01, min(cfg.sort_buffer_drain_timeout / 2, cfg.peer_update_interval))
        next_scan = time.monotonic() + cfg.peer_update_interval

        def queue_status(status: Resp | None) -> list[Resp]:
            return [] if status is None else buffer.push(_time_of(status), status)

        while True:
            got: _Item[Resp] | _Ended | None
            try:
                got = live.get_nowait()
            except asyncio.QueueEmpty:
                try:
                    got = await asyncio.wait_for(live.get(), tick)
                except TimeoutError:
                    got = None
            out: list[Resp] = []
            if isinstance(got, _Item):
                t = _time_of(got.resp)
                last_seen[got.peer] = max(t, last_seen.get(got.peer, 0))
                out = buffer.push(t, got.resp)
            elif isinstance(got, _Ended):
                streaming.discard(got.peer)
                err = got.error
                if err is not None and err.code in _REQUEST_ERRORS:
                    raise RequestRejectedError(err.code, err.details)
                if err is None and until_ns is not None and time.time_ns() >= until_ns:
                    finished.add(got.peer)  # the node delivered everything up to ``until``
                else:
                    if _state_for(err) == relay_pb2.NODE_ERROR:
                        finished.add(got.peer)
                    wait = backoff.get(got.peer, cfg.rejoin_backoff)
                    retry_at[got.peer] = time.monotonic() + wait
                    backoff[got.peer] = min(wait * 2, max(cfg.rejoin_backoff_max, wait))
                    out = queue_status(self._report_loss(got.peer, err))
            for resp in out:
                yield resp
            now = time.monotonic()
            if got is None or now >= next_scan:
                for resp in buffer.pop_older_than(time.time_ns() - drain_ns):
                    yield resp
            if now >= next_scan:
                next_scan = now + cfg.peer_update_interval
                joined: list[str] = []
                for p in self._pool.list():
                    if (
                        p.available
                        and p.name not in streaming
                        and p.name not in finished
                        and retry_at.get(p.name, 0.0) <= now
                    ):
                        since = last_seen[p.name] + 1 if p.name in last_seen else since0
                        join(p, since)
                        joined.append(p.name)
                        log.info("%s: node %s joined a follow request", self._kind.what, p.name)
                for resp in queue_status(self._status(relay_pb2.NODE_CONNECTED, joined)):
                    yield resp
            if until_ns is not None and not streaming and time.time_ns() >= until_ns:
                for resp in buffer.drain():
                    yield resp
                return
