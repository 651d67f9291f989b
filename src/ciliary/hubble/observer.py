"""The node-local Hubble observer: where decoded flows enter, and the gRPC Observer on top.

:class:`LocalObserver` is the agent's side (``pkg/hubble/observer/local_observer.go``): the
flow decoder calls :meth:`LocalObserver.on_flow` / :meth:`~LocalObserver.on_lost` /
:meth:`~LocalObserver.on_agent_event`, and :meth:`~LocalObserver.on_flow_rows` for a batch of
L3/L4 flows as columns (``ring.FlowRows``, #17); hooks (metrics, exporter) see every flow
before it enters the ring; the ring is the only history. Counted hooks (metrics) take a flow
and how many flows it stands for, so a batch is counted once per template; plain hooks
(exporter) get every flow of a batch made whole. It never blocks and never raises into the
decoder: a failing hook is logged and skipped.

:class:`ObserverServicer` serves ``observer.Observer`` from it with upstream's request
semantics (``newRingReader``/``eventsReader``):

* ``first`` starts at the oldest event; ``follow`` without ``number``/``since`` starts at the
  newest write; otherwise the reader rewinds from the newest event until it has ``number``
  matching flows (or, with ``since``, until the first older flow). No ``number``, no
  ``follow`` and no ``since`` therefore returns every matching flow in the ring.
* Without ``follow`` at most ``number`` flows are sent (0 = no limit) and the stream ends at
  what was written when the request arrived; with ``follow`` it never ends on its own.
* ``until`` ends the stream at the first flow newer than it; ``since`` skips older flows.
* LostEvents in the ring (and those of a lapped reader) always reach the client — filters and
  ``number`` do not apply to them — unless they fall outside ``since``/``until``.

Two deliberate refinements of upstream: ``number`` with ``until`` rewinds over flows up to
``until`` (upstream counts from the very newest flow, then cuts at ``until`` and may return
fewer than asked), and a lapped reader gets one LostEvent with the count instead of one per
missed slot.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc
import grpc.aio
import numpy as np
from google.protobuf import field_mask_pb2, timestamp_pb2, wrappers_pb2

from ciliary import __version__
from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.api.observer import observer_pb2, observer_pb2_grpc
from ciliary.hubble.filters import (
    DEFAULT_CLUSTER_NAME,
    FilterError,
    Predicate,
    RowPredicate,
    build_filter,
    build_row_filter,
    reads_row_fields,
)
from ciliary.hubble.ring import DEFAULT_CAPACITY, Event, FlowRows, Ring, RingReader

log = logging.getLogger(__name__)

DEFAULT_VERSION = __version__
DEFAULT_AGENT_EVENTS_CAPACITY = 1023
NAMESPACE_TTL_S = 3600.0
# grpc.health.v1 names of the Observer: upstream's clients (``hubble status``, probes) ask for
# ``hubble.server.Observer`` (api/v1 ``ObserverServiceName``); ``observer.Observer`` is the gRPC
# service's own name, which earlier clients of ours ask for. Servers and the relay report both.
HEALTH_SERVICE = "hubble.server.Observer"
OBSERVER_SERVICE = "observer.Observer"
OBSERVER_HEALTH_SERVICES = (HEALTH_SERVICE, OBSERVER_SERVICE)
_YIELD_EVERY = 2048  # events scanned between cooperative yields in long non-follow reads

ServicerContext = grpc.aio.ServicerContext[Any, Any]


class _TimeRangeRequest(Protocol):
    number: int
    first: bool
    follow: bool

    def HasField(self, name: Any) -> bool: ...  # noqa: N802 - protobuf's name

    @property
    def since(self) -> timestamp_pb2.Timestamp: ...

    @property
    def until(self) -> timestamp_pb2.Timestamp: ...


def _ts_to_ns(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


def _ns_to_ts(ns: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


CountedHook = Callable[[flow_pb2.Flow, int, list[int] | None], None]
"""A counted flow hook: ``hook(flow, n, latencies)`` (see ``add_counted_flow_hook``)."""


def _latencies_per_template(rows: FlowRows) -> list[list[int]] | None:
    """Each template's rows' L7 latencies (row order), None when the batch has none."""
    if rows.latency_ns is None:
        return None
    order = np.argsort(rows.template_index, kind="stable")
    grouped = rows.latency_ns[order].tolist()
    bounds = np.cumsum(rows.counts).tolist()
    return [grouped[start:end] for start, end in zip([0, *bounds[:-1]], bounds, strict=True)]


class LocalObserver:
    """Node-local flow store: counters, hooks, the flow ring and the agent-event ring.

    Methods must be called from one thread at a time (the decoder's); readers may run on the
    asyncio loop concurrently (see :mod:`ciliary.hubble.ring`).
    """

    def __init__(
        self,
        node_name: str,
        capacity: int = DEFAULT_CAPACITY,
        version: str = DEFAULT_VERSION,
        *,
        agent_events_capacity: int = DEFAULT_AGENT_EVENTS_CAPACITY,
        cluster_name: str = DEFAULT_CLUSTER_NAME,
    ) -> None:
        self.node_name = node_name
        self.version = version
        self.cluster_name = cluster_name
        self._flow_hooks: list[Callable[[flow_pb2.Flow], None]] = []
        self._counted_hooks: list[CountedHook] = []
        self._lost_hooks: list[Callable[[flow_pb2.LostEvent], None]] = []
        self.ring = Ring(capacity, on_lapped=self._reader_lapped)
        self.agent_ring = Ring(agent_events_capacity)
        self.seen_flows = 0
        self._started = time.monotonic_ns()
        self._namespaces: dict[tuple[str, str], float] = {}
        self._namespaces_lock = threading.Lock()  # the decoder may run in another thread

    # -- producer side -------------------------------------------------------------------

    def add_flow_hook(self, hook: Callable[[flow_pb2.Flow], None]) -> None:
        """``hook(flow)`` runs for every flow before it enters the ring (metrics, exporter)."""
        self._flow_hooks.append(hook)

    def add_counted_flow_hook(self, hook: CountedHook) -> None:
        """``hook(flow, n, latencies)`` runs for every flow (``n`` = 1, ``latencies`` None)
        and once per template of a batch of rows (``n`` its rows, ``flow`` the template: no
        time, UUID, source port or L7 latency; ``latencies`` its rows' ``l7.latency_ns`` when
        the batch has them, else None); for what counts flows by fields a template has
        (metrics; latency histograms from ``latencies``)."""
        self._counted_hooks.append(hook)

    def add_lost_hook(self, hook: Callable[[flow_pb2.LostEvent], None]) -> None:
        """``hook(lost)`` runs for every LostEvent: datapath/queue losses passed to
        :meth:`on_lost`, and HUBBLE_RING_BUFFER losses of lapped readers."""
        self._lost_hooks.append(hook)

    def on_flow(self, flow: flow_pb2.Flow) -> None:
        """Takes a decoded flow (a flow without ``time`` gets the receive time)."""
        if not flow.HasField("time"):
            flow.time.FromNanoseconds(time.time_ns())
        self._track_namespaces(flow)
        for hook in self._flow_hooks:
            try:
                hook(flow)
            except Exception:
                log.exception("hubble flow hook %r failed", hook)
        self._run_counted_hooks(flow, 1, None)
        self.seen_flows += 1
        self.ring.write(Event(time_ns=_ts_to_ns(flow.time), flow=flow))

    def on_flow_rows(self, rows: FlowRows) -> None:
        """Takes a batch of L3/L4 flows as columns (see :mod:`ciliary.hubble.ring`): counted
        hooks once per template, plain hooks per flow (each made whole, with the UUID the
        ring gives its position), then the ring."""
        n = len(rows)
        if not n:
            return
        for template in rows.templates:
            self._track_namespaces(template)
        if self._flow_hooks:
            first = self.ring.written
            for row in range(n):
                flow = rows.flow(row, self.ring.uuid_at(first + row))
                for hook in self._flow_hooks:
                    try:
                        hook(flow)
                    except Exception:
                        log.exception("hubble flow hook %r failed", hook)
        if self._counted_hooks:
            per_template = _latencies_per_template(rows)
            for i, (template, count) in enumerate(
                zip(rows.templates, rows.counts.tolist(), strict=True)
            ):
                latencies = per_template[i] if per_template is not None else None
                self._run_counted_hooks(template, count, latencies)
        self.seen_flows += n
        self.ring.write_rows(rows)

    def _run_counted_hooks(
        self, flow: flow_pb2.Flow, count: int, latencies: list[int] | None
    ) -> None:
        for hook in self._counted_hooks:
            try:
                hook(flow, count, latencies)
            except Exception:
                log.exception("hubble flow hook %r failed", hook)

    def on_lost(self, source: int, num_lost: int, cpu: int | None = None) -> None:
        """Records that ``num_lost`` events were lost at ``source`` (a LostEventSource)."""
        now = time.time_ns()
        lost = flow_pb2.LostEvent(
            source=source,  # type: ignore[arg-type]
            num_events_lost=num_lost,
            cpu=wrappers_pb2.Int32Value(value=cpu) if cpu is not None else None,
        )
        self._run_lost_hooks(lost)
        self.ring.write(Event(time_ns=now, lost=lost))

    def on_agent_event(self, ev: flow_pb2.AgentEvent) -> None:
        self.agent_ring.write(Event(time_ns=time.time_ns(), agent_event=ev))

    def _run_lost_hooks(self, lost: flow_pb2.LostEvent) -> None:
        for hook in self._lost_hooks:
            try:
                hook(lost)
            except Exception:
                log.exception("hubble lost-event hook %r failed", hook)

    def _reader_lapped(self, n: int) -> None:
        self._run_lost_hooks(
            flow_pb2.LostEvent(
                source=flow_pb2.LostEventSource.HUBBLE_RING_BUFFER, num_events_lost=n
            )
        )

    def _track_namespaces(self, flow: flow_pb2.Flow) -> None:
        src, dst = flow.source, flow.destination
        src_ns, dst_ns = src.namespace, dst.namespace
        if not (src_ns or dst_ns):
            return
        now = time.monotonic()
        with self._namespaces_lock:
            if src_ns:
                self._namespaces[(src.cluster_name or self.cluster_name, src_ns)] = now
            if dst_ns:
                self._namespaces[(dst.cluster_name or self.cluster_name, dst_ns)] = now

    # -- status --------------------------------------------------------------------------

    @property
    def uptime_ns(self) -> int:
        return time.monotonic_ns() - self._started

    def namespaces(self) -> list[observer_pb2.Namespace]:
        """Namespaces seen in flows during the last hour, sorted by (cluster, namespace)."""
        cutoff = time.monotonic() - NAMESPACE_TTL_S
        with self._namespaces_lock:
            for key in [k for k, seen in self._namespaces.items() if seen < cutoff]:
                del self._namespaces[key]
            keys = sorted(self._namespaces)
        return [observer_pb2.Namespace(cluster=c, namespace=ns) for c, ns in keys]

    def flows_rate(self, now_ns: int | None = None) -> float:
        """Flows per second over the last minute (over the ring's span if it holds less)."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        since = now_ns - 60 * 1_000_000_000
        count = 0
        oldest_seen: int | None = None
        exhausted = True
        ring = self.ring
        pos = ring.written - 1
        while pos >= 0:
            entry = ring.time_at(pos)  # no flow made for what only needs its time
            pos -= 1
            if entry is None:
                break
            time_ns, is_flow = entry
            if not is_flow:
                continue
            if time_ns < since:
                exhausted = False
                break
            count += 1
            oldest_seen = time_ns
        if exhausted and len(self.ring) == self.ring.capacity and oldest_seen is not None:
            since = oldest_seen
        span = (now_ns - since) / 1e9
        return count / span if span > 0 else 0.0

    def status(self) -> observer_pb2.ServerStatusResponse:
        return observer_pb2.ServerStatusResponse(
            num_flows=len(self.ring),
            max_flows=self.ring.capacity,
            seen_flows=self.seen_flows,
            uptime_ns=self.uptime_ns,
            version=self.version,
            flows_rate=self.flows_rate(),
        )


# --------------------------------------------------------------------------- request logic


class InvalidRequestError(ValueError):
    """A GetFlows/GetAgentEvents request that must be answered with INVALID_ARGUMENT."""


def _time_bounds(req: _TimeRangeRequest) -> tuple[int | None, int | None]:
    bounds: list[int | None] = []
    for name in ("since", "until"):
        if not req.HasField(name):
            bounds.append(None)
            continue
        ts: timestamp_pb2.Timestamp = getattr(req, name)
        if not 0 <= ts.nanos < 1_000_000_000:
            raise InvalidRequestError(f"invalid {name} timestamp: nanos {ts.nanos} out of range")
        bounds.append(_ts_to_ns(ts))
    return bounds[0], bounds[1]


def validate_request(req: _TimeRangeRequest) -> tuple[int | None, int | None]:
    """Checks a request's selectors; returns its (since, until) in ns."""
    if req.first and req.follow:
        raise InvalidRequestError("first cannot be specified with follow")
    return _time_bounds(req)


def start_position(
    ring: Ring,
    req: _TimeRangeRequest,
    matches: Callable[[Event], bool],
    since: int | None,
    until: int | None,
    *,
    whole: bool = True,
) -> int:
    """Where a reader for ``req`` starts (upstream's ``newRingReader`` rewind); ``whole``:
    False when ``matches`` reads no per-row field (rows are then matched on their template,
    see :mod:`ciliary.hubble.ring`)."""
    if req.first and since is None:
        return ring.oldest
    if req.follow and req.number == 0 and since is None:
        return ring.written
    start = ring.written
    count = 0
    for pos, ev in ring.backward(whole=whole):
        start = pos
        if ev.lost is not None or (until is not None and ev.time_ns > until) or not matches(ev):
            continue
        if since is not None:
            if ev.time_ns < since:
                return pos + 1
        else:
            count += 1
            if count == req.number:
                return pos
    return start


async def read_events(
    ring: Ring,
    req: _TimeRangeRequest,
    matches: Callable[[Event], bool],
    since: int | None,
    until: int | None,
    *,
    rows: RowPredicate | None = None,
) -> AsyncIterator[Event]:
    """Yields the events answering ``req``: matching events and every LostEvent in range.
    With ``rows`` (``filters.build_row_filter``: answers for a row's template and source port
    as ``matches`` for its whole flow) the ring's rows are matched without making their flows:
    a rejected row is passed over, a row's flow is made only once it matched; what is yielded
    is always whole."""
    whole = rows is None
    reader: RingReader = ring.reader(start_position(ring, req, matches, since, until, whole=whole))
    end = ring.written
    limit = 0 if req.follow else req.number
    sent = 0
    scanned = 0
    while True:
        if rows is not None and (req.follow or reader.position < end):
            row = ring.row_at(reader.position)
            if row is not None and (until is None or row[1] <= until) and not rows(row[0], row[2]):
                reader.position += 1
                scanned += 1
                if scanned % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                continue
        if req.follow:
            ev = await reader.next_follow(whole)
        else:
            if limit and sent >= limit:
                return
            if reader.position >= end:
                return
            maybe = reader.next(whole)
            if maybe is None:
                return
            ev = maybe
            scanned += 1
            if scanned % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
        if ev.lost is not None:
            if (since is None or ev.time_ns >= since) and (until is None or ev.time_ns <= until):
                yield ev
            continue
        if until is not None and ev.time_ns > until:
            return
        if since is not None and ev.time_ns < since:
            continue
        if not matches(ev):
            continue
        sent += 1
        yield ev.whole()


class ObserverServicer(observer_pb2_grpc.ObserverServicer):
    """``observer.Observer`` of a single node (what the agent's Hubble server exposes)."""

    def __init__(self, observer: LocalObserver) -> None:
        self.observer = observer

    async def GetFlows(  # noqa: N802 - gRPC method name
        self, request: observer_pb2.GetFlowsRequest, context: ServicerContext
    ) -> AsyncIterator[observer_pb2.GetFlowsResponse]:
        obs = self.observer
        try:
            since, until = validate_request(request)
            predicate = build_filter(request.whitelist, request.blacklist)
            whole = reads_row_fields(request.whitelist, request.blacklist)
            mask = _field_mask(request)
        except (InvalidRequestError, FilterError) as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
            return

        rows = None if whole else build_row_filter(request.whitelist, request.blacklist)

        def matches(ev: Event) -> bool:
            if ev.flow is None:
                return False
            if rows is not None and ev.row is not None:
                return rows(ev.flow, ev.row[0])
            return predicate(ev.flow)

        async for ev in read_events(obs.ring, request, matches, since, until, rows=rows):
            if ev.flow is not None:
                flow = ev.flow
                if mask is not None:
                    masked = flow_pb2.Flow()
                    mask.MergeMessage(flow, masked)
                    flow = masked
                yield observer_pb2.GetFlowsResponse(
                    flow=flow,
                    node_name=ev.flow.node_name or obs.node_name,
                    time=ev.flow.time,
                )
            elif ev.lost is not None:
                yield observer_pb2.GetFlowsResponse(
                    lost_events=ev.lost, node_name=obs.node_name, time=_ns_to_ts(ev.time_ns)
                )

    async def GetAgentEvents(  # noqa: N802 - gRPC method name
        self, request: observer_pb2.GetAgentEventsRequest, context: ServicerContext
    ) -> AsyncIterator[observer_pb2.GetAgentEventsResponse]:
        obs = self.observer
        try:
            since, until = validate_request(request)
        except InvalidRequestError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
            return

        def matches(ev: Event) -> bool:
            return ev.agent_event is not None

        async for ev in read_events(obs.agent_ring, request, matches, since, until):
            if ev.agent_event is not None:
                yield observer_pb2.GetAgentEventsResponse(
                    agent_event=ev.agent_event,
                    node_name=obs.node_name,
                    time=_ns_to_ts(ev.time_ns),
                )

    async def GetDebugEvents(  # noqa: N802 - gRPC method name
        self, request: observer_pb2.GetDebugEventsRequest, context: ServicerContext
    ) -> AsyncIterator[observer_pb2.GetDebugEventsResponse]:
        # The datapath emits no debug events: a snapshot is empty, a follow stays open (as
        # upstream's would with nothing to send) until the client goes away.
        try:
            validate_request(request)
        except InvalidRequestError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
            return
        if request.follow:
            await asyncio.Event().wait()
        return
        yield  # pragma: no cover - makes this an async generator

    async def GetNodes(  # noqa: N802 - gRPC method name
        self, request: observer_pb2.GetNodesRequest, context: ServicerContext
    ) -> observer_pb2.GetNodesResponse:
        # Upstream's local observer does not implement GetNodes; only the relay does.
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "GetNodes not implemented")
        raise AssertionError("unreachable")  # pragma: no cover

    async def GetNamespaces(  # noqa: N802 - gRPC method name
        self, request: observer_pb2.GetNamespacesRequest, context: ServicerContext
    ) -> observer_pb2.GetNamespacesResponse:
        return observer_pb2.GetNamespacesResponse(namespaces=self.observer.namespaces())

    async def ServerStatus(  # noqa: N802 - gRPC method name
        self, request: observer_pb2.ServerStatusRequest, context: ServicerContext
    ) -> observer_pb2.ServerStatusResponse:
        return self.observer.status()


def _field_mask(req: observer_pb2.GetFlowsRequest) -> field_mask_pb2.FieldMask | None:
    mask = req.field_mask
    if not mask.paths:
        mask = req.experimental.field_mask
    if not mask.paths:
        return None
    if not mask.IsValidForDescriptor(flow_pb2.Flow.DESCRIPTOR):
        raise InvalidRequestError(f"invalid field mask {list(mask.paths)!r} for flow.Flow")
    return mask


__all__ = [
    "HEALTH_SERVICE",
    "OBSERVER_HEALTH_SERVICES",
    "OBSERVER_SERVICE",
    "InvalidRequestError",
    "LocalObserver",
    "ObserverServicer",
    "Predicate",
    "read_events",
    "start_position",
    "validate_request",
]
