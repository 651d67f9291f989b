"""Hubble inside the agent: datapath events in, flows and lost-event counts out, a gRPC server.

Pipeline (all on the agent's event loop, no threads)::

    ring buffer reader (monitor.py, decodes each record once), proxies' L7 records (publish)
      └─ sink ──► events queue (bounded: --hubble-event-queue-size)
                    └─ decoder task ──► FlowDecoder (by record type: threefour, sock, seven)
                                          ──► LocalObserver.on_flow ──► ring, hooks
                                                                  (metrics, exporter)

Nothing is lost silently, and every loss is counted exactly once, where it happened, as upstream:

* the datapath could not reserve a ring buffer record: it counts it per CPU in
  ``ciliary_events_lost``; the counters are read after every drain of the ring and every
  ``lost_poll_interval_s``, and each increase becomes a ``LostEvent(PERF_EVENT_RING_BUFFER,
  cpu)``. The counters persist with the pinned map, so the values reported so far are saved
  (``hubble-events-lost.json``: at start, after a report at most once a second, at stop), and
  losses while the agent was down (also after a SIGKILL) are reported at start, behind the
  backlog of events the pinned ring kept for the new agent (see ``Monitor.caught_up``);
* the events queue was full: an event that did not fit is counted and, as soon as there is
  room again (or the decoder has caught up), one ``LostEvent(OBSERVER_EVENTS_QUEUE)`` carrying
  the count is queued behind the events queued before it. The reader pauses (see
  ``Monitor``'s backpressure) as soon as the queue is full, before it reads a record that would
  not fit (so a backlog larger than the queue is read whole), until the decoder has emptied
  half the queue: the reader and the
  decoder share one loop, and reading records only to drop them would starve the decoder
  (measured: under 1% of a flood decoded without the pause, 27% with it), so the datapath's ring is
  the buffer and its overflow is counted by the datapath, as above;
* a reader of the observer's ring was lapped: the observer reports ``HUBBLE_RING_BUFFER``.

Loss notices ride in the queue with the events (and never count against its size), so a
consumer sees them in the order things happened.

Agent events (``GetAgentEvents``) come from the endpoint manager's state changes (passed in by
the daemon: :meth:`AgentHubble.endpoint_changed`) and from the policy manager's change
listener, which compares the repository with what it held before (POLICY_UPDATED /
POLICY_DELETED, with the policy's labels).
The agent's own metrics (``--prometheus-serve-addr``) are served from here too, with Hubble's
(``--hubble-metrics-server``, only when ``--hubble-metrics`` enables some, as upstream).
Peers (``peer.Peer``): with a Kubernetes API the agent publishes its server's address on its
CiliumNode and lists every node's from the CiliumNode informer (``agent.k8s.hubblepeers``);
without one the only peer is this node.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import numpy.typing as npt
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import CollectorRegistry

from ciliary import __version__
from ciliary.agent.config import AgentConfig, HubbleConfig
from ciliary.agent.flowrows import decode_rows
from ciliary.agent.flows import (
    EndpointInfo,
    Event,
    FlowDecoder,
    FlowGetters,
    policy_labels,
)
from ciliary.agent.k8s.hubblepeers import HubblePeers
from ciliary.agent.k8s.nodemanager import RemotePod
from ciliary.agent.l7rows import decode_l7_batch
from ciliary.agent.metrics import AgentMetrics, count_identities
from ciliary.core import atomicfile as store_files
from ciliary.core.l7record import L7Batch
from ciliary.core.models import Endpoint, EndpointState, RuleReference
from ciliary.datapath.linux import cgroup
from ciliary.datapath.maps.endpoints import IPAddress, packed_addresses
from ciliary.datapath.maps.events import decode_trace_rows
from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.exporter import FlowExporter
from ciliary.hubble.metrics import FlowMetrics, MetricsServer
from ciliary.hubble.observer import LocalObserver
from ciliary.hubble.peer import PeerInfo
from ciliary.hubble.server import HubbleServer, TLSConfig
from ciliary.policy.api import Policy

if TYPE_CHECKING:
    from ciliary.agent.daemon import Agent

log = logging.getLogger(__name__)

_R = TypeVar("_R")

LOST_STATE_FILE = "hubble-events-lost.json"
LOST_SAVE_INTERVAL_S = 1.0
"""At most one save of the reported lost-event counters per interval (each is a file write)."""
DECODE_BATCH = 256
"""Events decoded between yields to the loop (keeps gRPC streams and the API responsive)."""


ROWS_PER_TURN = 512
"""Trace records decoded as one batch of rows (``flowrows``) per turn of the loop: GetFlows
followers read the observer's ring between batches, so a batch must be a fraction of the ring
(4,095 by default), a follower being a few turns behind the decoder at worst."""
TraceRows = npt.NDArray[np.void]
"""Trace records as the ring reader hands them over in batches (``TRACE_RECORD_DTYPE``)."""

PERF_EVENT_RING_BUFFER = flow_pb2.LostEventSource.PERF_EVENT_RING_BUFFER
OBSERVER_EVENTS_QUEUE = flow_pb2.LostEventSource.OBSERVER_EVENTS_QUEUE


@dataclass(frozen=True, slots=True)
class _Lost:
    """A loss notice travelling in the events queue."""

    source: int
    count: int
    cpu: int | None = None


class EventsQueue:
    """Bounded FIFO of datapath events between the reader and the decoder.

    ``put`` never blocks: it says when the queue has become full (the reader pauses), and an
    event that does not fit is counted (``lost``) and reported as one ``OBSERVER_EVENTS_QUEUE``
    notice once there is room. Loss notices (``put_lost``) are always
    accepted and do not count against ``capacity``. Event loop only.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"events queue size must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: collections.deque[Event | _Lost | TraceRows] = collections.deque()
        """Events, loss notices, batches of trace rows and of L7 records (``L7Batch``)."""
        self._events = 0
        self.pending_lost = 0
        """Events dropped since the last OBSERVER_EVENTS_QUEUE notice was queued."""
        self.lost_total = 0
        self.wakeup = asyncio.Event()

    def __len__(self) -> int:
        return self._events

    def put(self, raw: Event) -> bool:
        """Queues ``raw`` (or counts it as lost when full); False when no room is left, so
        that the reader stops before it would have to drop a record it read. A batch of L7
        records (``L7Batch``) counts as its events: the part beyond the room left is lost."""
        if isinstance(raw, L7Batch):
            return self._put_batch(raw)
        if self._events >= self.capacity:
            self.pending_lost += 1
            self.lost_total += 1
            return False
        self.flush_lost()
        self._items.append(raw)
        self._events += 1
        self.wakeup.set()
        return self._events < self.capacity

    def _put_batch(self, batch: L7Batch) -> bool:
        room = self.capacity - self._events
        taken = min(max(room, 0), batch.events)
        lost = batch.events - taken
        if taken:
            self.flush_lost()
            self._items.append(batch if lost == 0 else batch.head(taken))
            self._events += taken
            self.wakeup.set()
        self.pending_lost += lost
        self.lost_total += lost
        return self._events < self.capacity

    def put_rows(self, rows: TraceRows) -> tuple[int, bool]:
        """Queues as many of ``rows`` (trace records as numpy rows, each an event) as there is
        room for; returns (how many, full now). The rest stays with the reader (in the
        datapath's ring), so none is lost here."""
        taken = min(len(rows), self.capacity - self._events)
        if taken <= 0:
            return 0, True
        self.flush_lost()
        self._items.append(rows[:taken])
        self._events += taken
        self.wakeup.set()
        return taken, self._events >= self.capacity

    def put_lost(self, source: int, count: int, cpu: int | None = None) -> None:
        self._items.append(_Lost(source, count, cpu))
        self.wakeup.set()

    def flush_lost(self) -> None:
        """Queue the pending OBSERVER_EVENTS_QUEUE count (if any) behind what is queued."""
        if self.pending_lost:
            self._items.append(_Lost(OBSERVER_EVENTS_QUEUE, self.pending_lost))
            self.pending_lost = 0
            self.wakeup.set()

    def pop(self, max_rows: int = ROWS_PER_TURN) -> Event | _Lost | TraceRows | None:
        """The oldest item; of a batch of rows at most ``max_rows`` (the rest stays first)."""
        if not self._items:
            return None
        item = self._items.popleft()
        if isinstance(item, np.ndarray):
            if len(item) > max_rows:
                self._items.appendleft(item[max_rows:])
                item = item[:max_rows]
            self._events -= len(item)
        elif isinstance(item, L7Batch):
            self._events -= item.events
        elif not isinstance(item, _Lost):
            self._events -= 1
        return item


class LostCounter:
    """Deltas of the datapath's per-CPU lost-event counters since the last read."""

    def __init__(self, read: Callable[[], list[int]], baseline: Sequence[int] | None) -> None:
        self._read = read
        current = read()
        if baseline is None or len(baseline) != len(current):
            self._last = list(current)
        else:
            # counters below the saved value mean the map was recreated: count from zero
            self._last = [b if b <= c else 0 for b, c in zip(baseline, current, strict=True)]

    @property
    def last(self) -> list[int]:
        return list(self._last)

    def poll(self) -> list[tuple[int, int]]:
        """(cpu, newly lost) for every CPU whose counter moved."""
        current = self._read()
        out = []
        for cpu, value in enumerate(current):
            before = self._last[cpu] if cpu < len(self._last) else 0
            if value > before:
                out.append((cpu, value - before))
        self._last = list(current)
        return out


class CgroupEndpoints:
    """Socket-LB's trace-sock records name the calling process's cgroup; this finds the local
    endpoint behind a cgroup id as upstream's cgroup manager does for a pod's: the cgroup under
    the agent's ``--cgroup-root`` with that id, whose processes live in the endpoint's network
    namespace (compared by nsfs inode with the endpoint's netns path). Answers are cached until
    an endpoint changes; a cgroup found to be no endpoint's is asked again after
    ``retry_s`` (its pod may not be an endpoint yet)."""

    def __init__(
        self, root: Path | None, endpoints: Callable[[], list[Endpoint]], retry_s: float = 5.0
    ) -> None:
        self._root = root
        self._endpoints = endpoints
        self._retry_s = retry_s
        self._known: dict[int, Endpoint] = {}
        self._unknown: dict[int, float] = {}

    def clear(self) -> None:
        self._known.clear()
        self._unknown.clear()

    def endpoint(self, cgroup_id: int) -> Endpoint | None:
        ep = self._known.get(cgroup_id)
        if ep is not None or self._root is None:
            return ep
        if time.monotonic() < self._unknown.get(cgroup_id, 0.0):
            return None
        path = cgroup.find_by_id(self._root, cgroup_id)
        inodes = cgroup.netns_inodes(path) if path is not None else set()
        for candidate in self._endpoints():
            try:
                ino = os.stat(candidate.netns).st_ino
            except OSError:
                continue
            if ino in inodes and candidate.state not in _GONE:
                self._known[cgroup_id] = candidate
                return candidate
        self._unknown[cgroup_id] = time.monotonic() + self._retry_s
        return None

    def address(self, cgroup_id: int, family: int) -> IPAddress | None:
        """The endpoint's address of ``family`` (2 or 10), None when none."""
        ep = self.endpoint(cgroup_id)
        if ep is None:
            return None
        addr = ep.ipv4 if family == socket.AF_INET else ep.ipv6
        return ip_address(addr.partition("/")[0]) if addr else None


_GONE = (EndpointState.DISCONNECTING, EndpointState.DISCONNECTED)


def _now_ts() -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(time.time_ns())
    return ts


def _endpoint_update(kind: int, ep: Endpoint, labels: list[str]) -> flow_pb2.AgentEvent:
    """ENDPOINT_CREATED / ENDPOINT_DELETED for ``ep``."""
    return flow_pb2.AgentEvent(
        type=kind,  # type: ignore[arg-type]
        endpoint_update=flow_pb2.EndpointUpdateNotification(
            id=ep.id, labels=labels, pod_name=ep.pod_name, namespace=ep.namespace
        ),
    )


def _policy_update(kind: int, pol: Policy, revision: int) -> flow_pb2.AgentEvent:
    """POLICY_UPDATED / POLICY_DELETED for ``pol`` at the repository's ``revision``."""
    return flow_pb2.AgentEvent(
        type=kind,  # type: ignore[arg-type]
        policy_update=flow_pb2.PolicyUpdateNotification(
            labels=policy_labels(pol.kind, pol.namespace, pol.name),
            revision=revision,
            rule_count=len(pol.rules),
        ),
    )


class AgentHubble:
    """The agent's Hubble: build with the agent, ``start()`` after the endpoints are restored
    and before the ring buffer reader starts (its first drain is the backlog a restart finds in
    the pinned ring), ``stop()`` before the datapath closes."""

    def __init__(self, agent: Agent, cfg: HubbleConfig) -> None:
        self._agent = agent
        self.cfg = cfg
        acfg: AgentConfig = agent.cfg
        self.node = acfg.node
        # Flows, lost events and exports name the node as upstream does: "<cluster>/<node>"
        # (cilium's GetAbsoluteNodeName), so --node-name patterns match across clusters.
        self.absolute_node = f"{acfg.cluster_name}/{acfg.node}"
        self.socket = cfg.socket or acfg.state_dir / "hubble.sock"
        self._lost_state = acfg.state_dir / LOST_STATE_FILE
        self.observer = LocalObserver(
            self.absolute_node,
            capacity=cfg.event_buffer_capacity,
            version=__version__,
            cluster_name=acfg.cluster_name,
        )
        self.queue = EventsQueue(cfg.event_queue_size)
        self._eps_by_ip: dict[IPAddress, EndpointInfo] = {}
        self.cgroups = CgroupEndpoints(acfg.cgroup_root, self._endpoints)
        self._policies: dict[str, Policy] = {}
        self.decoder = FlowDecoder(
            self.absolute_node, self._getters(), cluster_name=acfg.cluster_name
        )
        self.decode_errors = 0
        self.decoded = 0
        self.skipped = 0
        self.lost: LostCounter | None = None
        self._lost_unsaved = False
        self._lost_save_after = 0.0
        self.server: HubbleServer | None = None
        self.peers: HubblePeers | None = None
        """The CiliumNodes' Hubble servers, with a Kubernetes API (set at start)."""
        self.metrics_registry = CollectorRegistry()
        self.flow_metrics = FlowMetrics(list(cfg.metrics), self.metrics_registry)
        self.agent_registry = CollectorRegistry()
        self.agent_metrics = self._make_agent_metrics()
        self.exporter: FlowExporter | None = None
        self._metrics_servers: list[MetricsServer] = []
        self._tasks: list[asyncio.Task[None]] = []

    # ---- state for the decoder -----------------------------------------------------------

    def _getters(self) -> FlowGetters:
        agent = self._agent
        policy = agent.policy

        def identity_labels(number: int) -> frozenset[str] | None:
            ident = policy.cache.get(number)
            return ident.labels if ident is not None else None

        def rules_of_cookie(cookie: int) -> list[RuleReference]:
            return policy.rules_of_cookie(cookie)

        def policy_revision(ep_id: int) -> int:
            realized = policy.realized(ep_id) if ep_id else None
            return realized.revision if realized is not None else policy.repo.revision

        def identity_of_ip(addr: IPAddress) -> int | None:
            return agent.datapath.ipcache.lookup(addr)  # the maps exist once the agent runs

        def pod_of_ip(addr: IPAddress) -> RemotePod | None:
            nodes = agent.node_manager  # with a Kubernetes API only (set when it connects)
            return nodes.pod_by_ip(addr) if nodes is not None else None

        def service_by_addr(addr: IPAddress, port: int) -> tuple[str, str] | None:
            syncer = agent.services  # with a Kubernetes API only
            return syncer.manager.service_by_addr(addr, port) if syncer is not None else None

        def frontend_of(rev_nat_index: int) -> tuple[IPAddress, int] | None:
            syncer = agent.services
            fe = syncer.manager.frontend_of(rev_nat_index) if syncer is not None else None
            return (fe.address, fe.port) if fe is not None else None

        no_addresses = packed_addresses(())

        def service_addresses() -> npt.NDArray[np.void]:
            syncer = agent.services
            return syncer.manager.frontend_addresses() if syncer is not None else no_addresses

        def names_of_ip(addr: str) -> tuple[str, ...]:
            return policy.fqdns.names_of(addr)

        return FlowGetters(
            endpoint_by_ip=self._eps_by_ip.get,
            identity_of_ip=identity_of_ip,
            pod_of_ip=pod_of_ip,
            identity_labels=identity_labels,
            rules_of_cookie=rules_of_cookie,
            policy_revision=policy_revision,
            ifname=self._agent.monitor.ifname,
            default_deny=self._agent.monitor.why_default_deny,
            service_by_addr=service_by_addr,
            frontend_of=frontend_of,
            service_addresses=service_addresses,
            endpoint_ip_of_cgroup=self.cgroups.address,
            names_of_ip=names_of_ip,
        )

    def _endpoints(self) -> list[Endpoint]:
        return self._agent.endpoints.endpoints()

    def _index_endpoint(self, ep: Endpoint) -> None:
        addrs = [ip_address(a) for a in (ep.ipv4, ep.ipv6) if a]
        for addr in [a for a, info in self._eps_by_ip.items() if info.id == ep.id]:
            del self._eps_by_ip[addr]
        if ep.state in (EndpointState.DISCONNECTING, EndpointState.DISCONNECTED):
            return
        info = EndpointInfo(
            id=ep.id,
            identity=ep.identity,
            namespace=ep.namespace,
            pod_name=ep.pod_name,
            workloads=self._agent.endpoints.workloads(ep.id),
        )
        for addr in addrs:
            self._eps_by_ip[addr] = info

    # ---- agent events ----------------------------------------------------------------------

    def endpoint_changed(self, ep: Endpoint) -> None:
        """The endpoint manager's ``on_change``: keeps the address index and reports endpoint
        events (created, regenerated, deleted, failed) as upstream's agent does."""
        self._agent.monitor.forget_ifnames()  # device indexes are reused once a pod is gone
        self._index_endpoint(ep)
        self.cgroups.clear()
        previous = ep.log[-2].state if len(ep.log) >= 2 else None
        last = ep.log[-1] if ep.log else None
        labels = list(self._agent.identities.lookup(ep.identity) or ()) if ep.identity else []
        if ep.state == EndpointState.READY and len(ep.log) >= 2 and last is not None:
            took = max(last.time - ep.log[-2].time, 0.0)
            self.agent_metrics.observe_regeneration(took, ok=True)
            self._agent_event(
                flow_pb2.AgentEvent(
                    type=flow_pb2.ENDPOINT_REGENERATE_SUCCESS,
                    endpoint_regenerate=flow_pb2.EndpointRegenNotification(id=ep.id, labels=labels),
                )
            )
            if previous == EndpointState.REGENERATING:
                self._agent_event(_endpoint_update(flow_pb2.ENDPOINT_CREATED, ep, labels))
        elif ep.state == EndpointState.DISCONNECTED:
            last_state = last.state if last is not None else None
            if last_state == EndpointState.DISCONNECTING:
                self._agent_event(_endpoint_update(flow_pb2.ENDPOINT_DELETED, ep, labels))
            elif last_state in (EndpointState.REGENERATING, EndpointState.RESTORING):
                # creation (or restore) failed half-way and was rolled back
                took = max(time.time() - last.time, 0.0) if last is not None else 0.0
                self.agent_metrics.observe_regeneration(took, ok=False)
                self._agent_event(
                    flow_pb2.AgentEvent(
                        type=flow_pb2.ENDPOINT_REGENERATE_FAILURE,
                        endpoint_regenerate=flow_pb2.EndpointRegenNotification(
                            id=ep.id, labels=labels, error=f"endpoint {ep.id} was not created"
                        ),
                    )
                )

    def _agent_event(self, ev: flow_pb2.AgentEvent) -> None:
        self.observer.on_agent_event(ev)
        if self.exporter is not None:
            self.exporter.on_agent_event(ev)

    def _check_policies(self) -> None:
        """POLICY_UPDATED / POLICY_DELETED for what changed in the repository since last time
        (the policy manager calls it after each change)."""
        repo = self._agent.policy.repo
        current = {p.key: p for p in repo.policies()}
        for key, pol in sorted(current.items()):
            if self._policies.get(key) != pol:
                self._agent_event(_policy_update(flow_pb2.POLICY_UPDATED, pol, repo.revision))
        for key in sorted(self._policies.keys() - current.keys()):
            old = self._policies[key]
            self._agent_event(_policy_update(flow_pb2.POLICY_DELETED, old, repo.revision))
        self._policies = dict(current)

    # ---- events pipeline -------------------------------------------------------------------

    def on_raw_event(self, raw: Event) -> bool:
        """The event fan-out's sink (``Monitor``: ring buffer records and the proxies' L7
        records): queue, or count as lost and make the reader pause."""
        return self.queue.put(raw)

    def on_trace_rows(self, rows: TraceRows) -> tuple[int, bool]:
        """The fan-out's sink for trace records as numpy rows (``Monitor``'s rows path)."""
        return self.queue.put_rows(rows)

    def poll_lost(self) -> None:
        """Datapath losses since the last poll → loss notices; also flushes queue losses.

        Not before the reader has emptied the ring once: what the datapath counted while the
        agent was down happened after the backlog the ring held, so it is reported behind it.
        """
        if self.lost is not None and self._agent.monitor.caught_up:
            moved = self.lost.poll()
            for cpu, count in moved:
                self.queue.put_lost(PERF_EVENT_RING_BUFFER, count, cpu)
            self._lost_unsaved |= bool(moved)
            if self._lost_unsaved and time.monotonic() >= self._lost_save_after:
                self._save_lost()
        if self.queue.pending_lost and len(self.queue) < self.queue.capacity:
            self.queue.flush_lost()

    async def _decode_loop(self) -> None:
        q = self.queue
        families = self.decoder.families  # the parser's dispatch on the record type
        observer = self.observer
        monitor = self._agent.monitor
        resume_below = max(q.capacity // 2, 1)
        while True:
            await q.wakeup.wait()
            q.wakeup.clear()
            while True:
                budget = DECODE_BATCH
                while budget > 0:
                    budget -= 1
                    item = q.pop()
                    if item is None:
                        break
                    if isinstance(item, _Lost):
                        observer.on_lost(item.source, item.count, item.cpu)
                        continue
                    if isinstance(item, np.ndarray):
                        # a batch of rows, then the loop's turn (see ROWS_PER_TURN)
                        budget = 0
                        self._decode_rows(item)
                        continue
                    if isinstance(item, L7Batch):  # one read of Envoy's access log
                        budget = 0
                        self._decode_l7_batch(item)
                        continue
                    try:
                        flow = families[item.type](item)
                    except Exception:
                        self.decode_errors += 1
                        if self.decode_errors == 1 or self.decode_errors % 1000 == 0:
                            log.exception(
                                "cannot decode a datapath event (%d so far)", self.decode_errors
                            )
                        continue
                    if flow is None:
                        self.skipped += 1  # a trace-sock record of no local endpoint's cgroup
                        continue
                    self.decoded += 1
                    observer.on_flow(flow)
                if item is not None:  # the budget is spent: yield to the loop
                    if monitor.paused and len(q) < resume_below:
                        monitor.resume()
                    await asyncio.sleep(0)
                    continue
                break
            if monitor.paused:
                monitor.resume()
            if q.pending_lost:
                q.flush_lost()  # caught up: report what the full queue refused

    def _decode_rows(self, rows: TraceRows) -> None:
        """A batch of trace records into the observer as columns (``flowrows``); if it cannot
        be decoded as a batch, record by record as the loop decodes single events (each
        failure counted as there)."""
        try:
            flows = decode_rows(self.decoder, rows)
        except Exception:
            log.exception("cannot decode a batch of datapath events; one by one instead")
            self._decode_one_by_one(decode_trace_rows(rows), self.decoder.decode)
            return
        self.decoded += len(rows)
        self.observer.on_flow_rows(flows)

    def _decode_l7_batch(self, batch: L7Batch) -> None:
        """A proxy's batch of L7 records into the observer as columns (``l7rows``); if it
        cannot be decoded as a batch, record by record (each failure counted)."""
        try:
            flows = decode_l7_batch(self.decoder, batch)
        except Exception:
            log.exception("cannot decode a batch of L7 records; one by one instead")
            self._decode_one_by_one(batch.records(), self.decoder.decode_l7)
            return
        self.decoded += len(flows)
        self.observer.on_flow_rows(flows)

    def _decode_one_by_one(
        self, records: Iterable[_R], decode: Callable[[_R], flow_pb2.Flow]
    ) -> None:
        """A batch that failed as a whole, record by record: each failure counted, the rest
        observed."""
        for record in records:
            try:
                flow = decode(record)
            except Exception:
                self.decode_errors += 1
                continue
            self.decoded += 1
            self.observer.on_flow(flow)

    def _save_lost(self) -> None:
        """Saves the counters as reported so far: the next agent reports from there, also after
        a SIGKILL (then losses reported in the last ``LOST_SAVE_INTERVAL_S`` are reported
        again: a count too high rather than a loss never reported)."""
        assert self.lost is not None
        store_files.write_json(self._lost_state, {"per_cpu": self.lost.last})
        self._lost_unsaved = False
        self._lost_save_after = time.monotonic() + LOST_SAVE_INTERVAL_S

    async def _lost_poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.lost_poll_interval_s)
            try:
                self.poll_lost()
            except Exception:
                log.exception("hubble periodic check failed")

    # ---- peers -----------------------------------------------------------------------------

    def own_peer(self) -> PeerInfo:
        """This node's server as a relay dials it: the unix socket (plaintext), which the lab's
        relay in the root netns reaches (a node IP inside the node's netns it cannot)."""
        return PeerInfo(self.node, f"unix://{self.socket}")

    def list_peers(self) -> list[PeerInfo]:
        if self.peers is None:  # no Kubernetes API: a standalone node is its only peer
            return [self.own_peer()]
        return self.peers.peers()

    # ---- lifecycle -------------------------------------------------------------------------

    def _make_agent_metrics(self) -> AgentMetrics:
        agent = self._agent

        def policy_stats() -> tuple[int, int]:
            return len(agent.policy.repo.policies()), agent.policy.repo.revision

        def identities() -> dict[str, int]:
            return count_identities(agent.policy.cache.identities().keys())

        def map_pressure() -> list[tuple[str, int, int]]:
            return [(u.name, u.entries, u.max_entries) for u in agent.datapath.map_usage()]

        return AgentMetrics(
            self.agent_registry,
            endpoints_by_state=agent.endpoints.counts_by_state,
            policy_stats=policy_stats,
            identities=identities,
            map_pressure=map_pressure,
            version=__version__,
            l7_stats=agent.l7_stats,
        )

    def _tls(self) -> TLSConfig | None:
        cfg = self.cfg
        if cfg.disable_tls or cfg.tls_cert_file is None or cfg.tls_key_file is None:
            return None  # no certificate: start() opens no TCP listener
        client_ca: Path | None = None
        if len(cfg.tls_client_ca_files) == 1:
            client_ca = cfg.tls_client_ca_files[0]
        elif cfg.tls_client_ca_files:
            client_ca = self._agent.cfg.state_dir / "hubble-client-ca.pem"
            bundle = b"".join(p.read_bytes().rstrip(b"\n") + b"\n" for p in cfg.tls_client_ca_files)
            fd = os.open(client_ca, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(bundle)
        return TLSConfig(cfg.tls_cert_file, cfg.tls_key_file, client_ca)

    def _load_lost_baseline(self) -> list[int] | None:
        try:
            data = store_files.read_json(self._lost_state)
        except (OSError, ValueError):
            return None
        values = data.get("per_cpu") if isinstance(data, dict) else None
        if isinstance(values, list) and all(isinstance(v, int) for v in values):
            return values
        return None

    async def start(self) -> None:
        """Serves agent metrics always, and Hubble when enabled."""
        cfg = self.cfg
        if cfg.prometheus_serve_addr:
            self._metrics_servers.append(
                MetricsServer(self.agent_registry, cfg.prometheus_serve_addr)
            )
        if cfg.enabled:
            await self._start_hubble()
        for srv in self._metrics_servers:
            await srv.start()

    async def _start_hubble(self) -> None:
        cfg = self.cfg
        agent = self._agent
        for ep in agent.endpoints.endpoints():
            self._index_endpoint(ep)
        self._policies = {p.key: p for p in agent.policy.repo.policies()}
        agent.policy.add_listener(self._check_policies)
        if cfg.export_file_path:
            self.exporter = FlowExporter(
                cfg.export_file_path,
                cfg.export_file_max_size_mb,
                cfg.export_file_max_backups,
                allowlist=cfg.export_allowlist or None,
                denylist=cfg.export_denylist or None,
                node_name=self.absolute_node,
            )
            self.observer.add_flow_hook(self.exporter.on_flow)
            self.observer.add_lost_hook(self.exporter.on_lost)
        if self.flow_metrics.enabled:
            self.observer.add_counted_flow_hook(self.flow_metrics.on_flows)
            self.observer.add_lost_hook(self.flow_metrics.on_lost)
        self.lost = LostCounter(agent.datapath.events_lost.per_cpu, self._load_lost_baseline())
        agent.monitor.add_sink(self.on_raw_event, rows=self.on_trace_rows)
        agent.monitor.add_drain_hook(self.poll_lost)
        self._spawn(self._decode_loop(), "hubble-decoder")
        self._spawn(self._lost_poll_loop(), "hubble-lost-poll")
        self._save_lost()  # a baseline for the next agent, even if this one is killed
        tls = self._tls()
        tcp_address = cfg.listen_address or None
        if tcp_address is not None and tls is None and not cfg.disable_tls:
            log.warning(
                "hubble: no TCP listener on %s: TLS is on and no --hubble-tls-cert-file/"
                "--hubble-tls-key-file is given (or pass --hubble-disable-tls)",
                tcp_address,
            )
            tcp_address = None
        if agent.kube is not None:  # the cluster's nodes, listed before the first Notify
            self.peers = HubblePeers(agent.kube)
            self.peers.start()
            await self.peers.wait_synced()
        self.server = HubbleServer(
            self.observer,
            unix_path=self.socket,
            tcp_address=tcp_address,
            tls=tls,
            peers=self.list_peers,
        )
        await self.server.start()
        if self.peers is not None:
            if self.server.peer_servicer is not None:
                self.peers.add_listener(self.server.peer_servicer.notify_changed)
            self.peers.publish(self.own_peer())
        if self.flow_metrics.enabled and cfg.metrics_server:
            self._metrics_servers.append(MetricsServer(self.metrics_registry, cfg.metrics_server))
        self._agent_event(
            flow_pb2.AgentEvent(
                type=flow_pb2.AGENT_STARTED,
                agent_start=flow_pb2.TimeNotification(time=_now_ts()),
            )
        )

    def _spawn(self, coro: object, name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))  # type: ignore[arg-type]

    async def stop(self) -> None:
        """Stops serving; the address published on the CiliumNode stays (the node still exists,
        a restarted agent serves the same socket), the lost-event counters read so far are
        saved."""
        for srv in self._metrics_servers:
            try:
                await srv.stop()
            except Exception:
                log.exception("stopping a metrics server failed")
        self._metrics_servers.clear()
        if self.server is not None:
            await self.server.stop(grace=0.5)
        if self.peers is not None:
            await self.peers.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.lost is not None:
            try:
                # what was reported, not what a last poll would read: notices queued now would
                # never be decoded, so the next agent reports those losses
                self._save_lost()
            except Exception:
                log.exception("saving the lost-event counters failed")
        if self.exporter is not None:
            self.exporter.close()


__all__ = ["AgentHubble", "EventsQueue", "LostCounter"]
