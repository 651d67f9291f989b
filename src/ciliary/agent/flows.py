"""From one event to one Hubble ``flow.Flow``, as upstream's Hubble parser builds it.

:class:`FlowDecoder` is upstream's ``parser.Parser``: one decoder per node with the agent's
getters and the caches the families share (endpoints, labels, UUIDs, the wall clock), and a
dispatch on the event's record type (``event.type``, the ``EventType`` every ring buffer record
starts with, :data:`FAMILIES`) to one parser per family, as upstream's:

* ``threefour`` (:meth:`FlowDecoder.decode`): drops, traces, policy verdicts
  (``RawTraceEvent``), L3/L4 flows;
* ``sock`` (:meth:`FlowDecoder.decode_sock`): socket-LB's trace-sock records
  (``RawSockEvent``), SOCK flows;
* ``seven`` (:meth:`FlowDecoder.decode_l7`, with :mod:`ciliary.agent.seven`): the proxies'
  requests and responses (:class:`~ciliary.core.l7record.L7Record`), L7 flows.

:meth:`FlowDecoder.parse` is the dispatch; Hubble's decode loop takes the same table.

The datapath reports numbers (``struct trace_event``, decoded without interpretation into
``RawTraceEvent``); the threefour family gives them Hubble's meaning, field by field, the way
Cilium's ``pkg/hubble/parser/threefour`` does, so that ``hubble observe`` (ours or upstream's)
prints the same lines for the same packets:

* drops are ``event_type {type: 1, sub_type: <drop reason>}`` with ``drop_reason`` and
  ``drop_reason_desc``, no observation point and ``is_reply`` unset (a drop does not know);
* traces are ``event_type {type: 4, sub_type: <monitor obs point>}`` (``to-endpoint`` is 0 in
  the monitor numbering, 101 in the flow enum), ``is_reply`` from conntrack;
* policy verdicts are ``event_type {type: 5}``; ``is_reply`` false when allowed (sent for a
  connection's first packet only), unset when denied;
* ``traffic_direction`` is the direction of the *connection* at the endpoint that decided: the
  datapath's direction of the policy check, inverted for replies;
* source and destination are resolved from the agent's state as upstream's endpoint resolver
  does: a local endpoint by address (id, pod, namespace, workload), else the ipcache, with the
  namespace and pod name of a remote pod from the cluster's CiliumEndpoints (upstream's
  ``IPGetter.GetK8sMetadata``: no id and no workloads, a CiliumEndpoint names no controller);
  pods (local ones and allocated identities) carry the cluster's name (``--cluster-name``),
  which upstream reads from their ``io.cilium.k8s.policy.cluster`` label; reserved and CIDR
  peers none; the numeric identity the datapath saw wins over user space's (it is what policy
  was decided on); labels are the identity's labels, sorted, CIDR identities reduced to their
  longest prefix;
* ``{ingress,egress}_{allowed,denied}_by`` come from the policy cookie the datapath carries: the
  cookie names the rules that put the deciding map entry there (upstream correlates policy
  verdict events through the endpoint's realized policy, which is the same information);
* a default-deny drop has no cookie (no rule matched): the policies that put the endpoint into
  default deny travel in ``extensions`` (:mod:`ciliary.hubble.explain`), never in the
  ``*_denied_by`` fields, which name deny rules as upstream's do;
* socket-LB's trace-sock records become ``Type: SOCK`` flows as upstream's
  ``pkg/hubble/parser/sock`` builds them (:meth:`FlowDecoder.decode_sock`): the source is the
  pod of the calling process's cgroup (its address of the record's family; a record whose cgroup
  names no local endpoint is skipped, as upstream's SkipUnknownCGroupIDs), the destination the
  record's address (the frontend before the translation, the backend after it), swapped for
  the reverse points; source port 0 (unknown at connect); verdict TRACED before, TRANSLATED
  after; ``event_type {type: 7, sub_type: <xlate point>}``, ``sock_xlate_point``,
  ``socket_cookie``, ``cgroup_id``; ``destination_service`` by address and port (so the
  pre-translation point names the Service);
* a proxy's L7 record becomes a ``Type: L7`` flow as upstream's ``pkg/hubble/parser/seven``
  builds it (:meth:`FlowDecoder.decode_l7`): ``event_type {type: 129}``, the record's verdict
  and direction, ``IP`` and ``l4`` from its two sides (as the pod sees them), endpoints
  resolved from the addresses as above (the record's identity wins when it has one),
  ``source_service``/``destination_service`` by address and port, ``is_reply`` true on
  responses, ``l7`` and ``Summary`` from :mod:`ciliary.agent.seven`;
* ``source_names`` / ``destination_names`` (L3/L4 and L7 flows) are the names the node's FQDN
  cache has for the peer's address when the other side is a local endpoint, as upstream's
  ``resolveNames`` (:meth:`FlowDecoder._names`).

Everything here is a pure function of the event and the getters it is given, so it is tested
with constructed events; ``ciliary.agent.hubble`` supplies the getters from the running agent.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_network
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from google.protobuf.timestamp_pb2 import Timestamp

from ciliary.agent import seven
from ciliary.core.flow import (
    MIN_ALLOCATED_IDENTITY,
    TCP_FLAG_BITS,
    TRACE_TO_LXC,
    CTState,
    EventType,
    L7FlowType,
    ObservationPoint,
    SockL4Protocol,
    SockXlatePoint,
    TrafficDirection,
    Verdict,
)
from ciliary.core.l7record import L7Batch, L7Record
from ciliary.core.models import RuleReference
from ciliary.datapath.maps.endpoints import IPAddress
from ciliary.datapath.maps.events import RawSockEvent, RawTraceEvent
from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.explain import default_deny_extension
from ciliary.hubble.filters import DEFAULT_CLUSTER_NAME
from ciliary.hubble.gopacket import ICMP4, ICMP6, TCP_SUMMARY_FLAGS, icmp_text
from ciliary.k8s.podidentity import workload_of
from ciliary.policy.api.labels import (
    POLICY_LABEL_DERIVED_FROM,
    POLICY_LABEL_NAME,
    POLICY_LABEL_NAMESPACE,
)
from ciliary.policy.explain import DefaultDeny
from ciliary.policy.identity import is_local_identity

__all__ = [
    "FAMILIES",
    "EndpointInfo",
    "Event",
    "FlowDecoder",
    "FlowGetters",
    "PodRef",
    "WallClock",
    "filter_labels",
    "policy_labels",
    "policy_of",
    "summary",
    "workload_of",
]

TRAFFIC_INGRESS = int(TrafficDirection.INGRESS)
TRAFFIC_EGRESS = int(TrafficDirection.EGRESS)

_KNOWN_CT = frozenset({CTState.NEW, CTState.ESTABLISHED, CTState.REPLY, CTState.RELATED})
# plain ints for the per-event comparisons (no enum class attribute lookups per event)
_DROP, _TRACE, _VERDICT = int(EventType.DROP), int(EventType.TRACE), int(EventType.POLICY_VERDICT)
_ACCESS_LOG = int(EventType.ACCESS_LOG)
_DROPPED, _CT_REPLY = int(Verdict.DROPPED), int(CTState.REPLY)
_TO_ENDPOINT = int(ObservationPoint.TO_ENDPOINT)
_SOCK_L4_NAMES = {int(SockL4Protocol.TCP): "TCP", int(SockL4Protocol.UDP): "UDP"}
_NO_LABELS: list[str] = []  # shared (callers copy labels into messages, never modify them)
_CACHE_MAX = 4096
Event = RawTraceEvent | RawSockEvent | L7Record | L7Batch
"""What the decoder takes: a datapath record (ring buffer) or a proxy's L7 record (or a batch
of them, decoded as rows: ``agent.l7rows``)."""
FAMILIES: dict[int, str] = {
    int(EventType.DROP): "decode",
    int(EventType.TRACE): "decode",
    int(EventType.POLICY_VERDICT): "decode",
    int(EventType.TRACE_SOCK): "decode_sock",
    int(EventType.ACCESS_LOG): "decode_l7",
}
"""Record type → the :class:`FlowDecoder` method of its family (threefour, sock, seven)."""
"""Entries of each per-decoder cache before it is emptied (a node has few distinct values;
the bound only keeps churn, e.g. pods coming and going for days, from growing it)."""


@dataclass(frozen=True)
class EndpointInfo:
    """What the agent knows of a local endpoint, for flows (rebuilt when endpoints change)."""

    id: int
    identity: int
    namespace: str = ""
    pod_name: str = ""
    workloads: tuple[tuple[str, str], ...] = ()
    """(name, kind) of the pod's controllers (Deployment, StatefulSet, ...)."""


class PodRef(Protocol):
    """The pod behind an address that is not a local endpoint (a remote pod)."""

    @property
    def namespace(self) -> str: ...

    @property
    def pod_name(self) -> str: ...


class WallClock:
    """Datapath timestamps (``bpf_ktime_get_ns``: CLOCK_MONOTONIC) to wall-clock time.

    The offset between the two clocks moves when the wall clock is stepped, so it is re-sampled
    at most every ``refresh_s`` seconds rather than fixed at start."""

    def __init__(self, refresh_s: float = 1.0) -> None:
        self._refresh_ns = int(refresh_s * 1e9)
        self._sampled_at = -self._refresh_ns
        self._offset = 0

    def wall_ns(self, monotonic_ns: int) -> int:
        now = time.monotonic_ns()
        if now - self._sampled_at >= self._refresh_ns:
            self._offset = time.time_ns() - time.monotonic_ns()
            self._sampled_at = now
        return monotonic_ns + self._offset


# ---- pure helpers ----------------------------------------------------------------------------

_UUID_BATCH = 1024
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


class FlowUUIDs:
    """Random (version 4) UUIDs in their string form, as ``str(uuid.uuid4())`` makes them
    (upstream gives every flow one), from ``os.urandom`` read 16 KiB at a time: a flow's
    UUID was a getrandom call and a UUID object, about a tenth of its decode."""

    def __init__(self) -> None:
        self._hex = ""
        self._pos = 0

    def next(self) -> str:
        pos = self._pos
        if pos >= len(self._hex):
            self._hex, pos = os.urandom(16 * _UUID_BATCH).hex(), 0
        self._pos = pos + 32
        x = self._hex[pos : pos + 32]
        return f"{x[:8]}-{x[8:12]}-4{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:]}"


def summary(raw: RawTraceEvent) -> str:
    """Hubble's ``Summary`` of an L3/L4 flow: the innermost layer upstream's decoder named."""
    if raw.src is None:
        return "Ethernet"
    if raw.proto == 6:
        return "TCP Flags: " + ", ".join(
            n for n, bit in TCP_SUMMARY_FLAGS.items() if raw.tcp_flags & bit
        )
    if raw.proto == 17:
        return "UDP"
    if raw.proto == 132:
        return "SCTP"
    if raw.proto == 1:
        return "ICMPv4 " + icmp_text(ICMP4, raw.icmp_type, raw.icmp_code)
    if raw.proto == 58:
        return "ICMPv6 " + icmp_text(ICMP6, raw.icmp_type, raw.icmp_code)
    return "IPv4" if raw.family == socket.AF_INET else "IPv6"


def filter_labels(labels: Iterable[str], identity: int) -> list[str]:
    """Sorted labels of an identity; a node-local (CIDR) identity keeps only its longest
    ``cidr:`` label, as upstream (the others are its supernets and say nothing more)."""
    out = list(labels)
    if identity >> 24:
        best: tuple[int, str] | None = None
        rest = []
        for label in out:
            if not label.startswith("cidr:"):
                rest.append(label)
                continue
            try:
                length = ip_network(label[5:].replace("-", ":"), strict=False).prefixlen
            except ValueError:
                continue
            if best is None or length > best[0]:
                best = (length, label)
        out = rest + ([best[1]] if best is not None else [])
    out.sort()
    return out


def policy_labels(kind: str, namespace: str | None, name: str) -> list[str]:
    """The labels Cilium gives every rule derived from a policy
    (``k8s:io.cilium.k8s.policy.name=...``), as flows and agent events carry them."""
    labels = [
        f"k8s:{POLICY_LABEL_DERIVED_FROM}={kind}",
        f"k8s:{POLICY_LABEL_NAME}={name}",
    ]
    if namespace is not None:
        labels.append(f"k8s:{POLICY_LABEL_NAMESPACE}={namespace}")
    return labels


def policy_of(ref: RuleReference, revision: int) -> flow_pb2.Policy:
    """A ``flow.Policy`` naming the policy a rule reference belongs to, with its labels."""
    return flow_pb2.Policy(
        name=ref.name,
        namespace=ref.namespace or "",
        labels=policy_labels(ref.kind, ref.namespace, ref.name),
        revision=revision,
        kind=ref.kind,
    )


# ---- the decoder ---------------------------------------------------------------------------


@dataclass
class FlowGetters:
    """The agent state a decoder reads, as upstream's parser getters. Each is called per event
    from the event loop and must be cheap (dictionary lookups, one map lookup at most)."""

    endpoint_by_ip: Callable[[IPAddress], EndpointInfo | None] = lambda _ip: None
    identity_of_ip: Callable[[IPAddress], int | None] = lambda _ip: None
    """The ipcache's answer for an address (longest prefix), None when nothing covers it."""
    pod_of_ip: Callable[[IPAddress], PodRef | None] = lambda _ip: None
    """The remote pod at an address (the cluster's CiliumEndpoints), None when none is."""
    identity_labels: Callable[[int], Iterable[str] | None] = lambda _id: None
    rules_of_cookie: Callable[[int], Sequence[RuleReference]] = lambda _c: ()
    policy_revision: Callable[[int], int] = lambda _ep: 0
    """Revision of the policy realized for an endpoint id (the repository's if unknown)."""
    ifname: Callable[[int], str] = lambda _i: ""
    default_deny: Callable[[RawTraceEvent], DefaultDeny | None] = lambda _r: None
    """A default-deny drop's explanation (the monitor's ``why_default_deny``), else None."""
    service_by_addr: Callable[[IPAddress, int], tuple[str, str] | None] = lambda _a, _p: None
    """(namespace, name) of the Service with a frontend at address:port (upstream's
    ``ServiceGetter.GetServiceByAddr``), None when none has."""
    frontend_of: Callable[[int], tuple[IPAddress, int] | None] = lambda _i: None
    """The frontend (address, port) a rev-NAT index names, None when unknown."""
    service_addresses: Callable[[], npt.NDArray[np.void]] | None = None
    """The addresses of every Service frontend (any port) as ``packed_addresses`` gives them
    (sorted 16-byte items), asked once per batch of rows (``flowrows``; the getter keeps the
    array while the frontends stay: a node with 10k Services would otherwise pack them for every
    batch): an address:port elsewhere has no Service, so ``service_by_addr`` is not asked for
    it; None: unknown, every pair is asked."""
    names_of_ip: Callable[[str], Sequence[str]] = lambda _ip: ()
    """The DNS names an address (text form) was an answer of in the node's FQDN cache, sorted
    (upstream's ``DNSGetter.GetNamesOf``); () when none."""
    endpoint_ip_of_cgroup: Callable[[int, int], IPAddress | None] = lambda _c, _f: None
    """The address (of the family, ``socket.AF_INET``/``AF_INET6``) of the local endpoint whose
    processes are in the cgroup of that id (upstream's ``PodMetadataGetter`` by cgroup id),
    None when it is no endpoint's."""


@dataclass
class FlowDecoder:
    """Turns RawTraceEvents into Flows for one node. Not thread-safe (event loop only)."""

    node_name: str
    getters: FlowGetters = field(default_factory=FlowGetters)
    clock: WallClock = field(default_factory=WallClock)
    cluster_name: str = DEFAULT_CLUSTER_NAME
    _labels: dict[int, tuple[object, list[str]]] = field(default_factory=dict, repr=False)
    _endpoints: dict[tuple[object, ...], tuple[list[str], flow_pb2.Endpoint]] = field(
        default_factory=dict, repr=False
    )
    """Endpoint submessages by everything they are made of (see :meth:`_endpoint`)."""
    _addr_text: dict[IPAddress, str] = field(default_factory=dict, repr=False)
    _summaries: dict[tuple[int, int, int, int, int], str] = field(default_factory=dict, repr=False)
    _tcp_flags: dict[int, flow_pb2.TCPFlags] = field(default_factory=dict, repr=False)
    _uuids: FlowUUIDs = field(default_factory=FlowUUIDs, repr=False)
    families: dict[int, Callable[[Any], flow_pb2.Flow | None]] = field(init=False, repr=False)
    """:data:`FAMILIES` bound to this decoder (Hubble's decode loop dispatches through it)."""

    def __post_init__(self) -> None:
        self.families = {kind: getattr(self, name) for kind, name in FAMILIES.items()}

    def parse(self, event: Event) -> flow_pb2.Flow | None:
        """The flow of any event, by its record type (see the module doc); None: the family
        skipped it (a trace-sock record of no local endpoint's cgroup). An event of a type no
        family takes is a ValueError."""
        family = self.families.get(event.type)
        if family is None:
            raise ValueError(f"no parser for record type {event.type}")
        return family(event)

    def decode(self, raw: RawTraceEvent) -> flow_pb2.Flow:
        """The ``threefour`` family: a drop, trace or policy verdict's L3/L4 flow."""
        kind, verdict = raw.type, raw.verdict
        is_drop = kind == _DROP
        wall = self.clock.wall_ns(raw.ts_ns)
        f = flow_pb2.Flow(
            uuid=self._uuids.next(),
            verdict=verdict,  # type: ignore[arg-type]
            Type=flow_pb2.L3_L4,
            node_name=self.node_name,
            policy_match_type=raw.policy_match,
            Summary=self._summary(raw),
        )
        ts = f.time
        ts.seconds, ts.nanos = divmod(wall, 1_000_000_000)
        eth = f.ethernet
        eth.source = raw.smac
        eth.destination = raw.dmac
        if raw.src is not None and raw.dst is not None:
            ip = f.IP
            ip.source = self._text(raw.src)
            ip.destination = self._text(raw.dst)
            ip.ipVersion = flow_pb2.IPv4 if raw.family == socket.AF_INET else flow_pb2.IPv6
            self._l4(raw, f.l4)
        src = self._endpoint(raw.src, raw.src_sec_id)
        dst = self._endpoint(raw.dst, raw.dst_sec_id)
        f.source.CopyFrom(src)
        f.destination.CopyFrom(dst)
        if raw.src is not None and raw.dst is not None:
            self._names(f, src.ID, dst.ID)
        is_verdict = kind == _VERDICT
        if is_drop or (is_verdict and verdict == _DROPPED):
            f.drop_reason = raw.drop_reason
            f.drop_reason_desc = raw.drop_reason  # type: ignore[assignment]
        event_type = f.event_type
        if is_verdict:
            # upstream's policy-verdict flows: no observation point, the deciding direction as
            # the datapath reports it (never inverted: verdicts are only sent for new flows)
            event_type.type = _VERDICT
            event_type.sub_type = 0
            if verdict != _DROPPED:
                # as upstream's decodeIsReply: an allowed verdict is only ever sent for the
                # first packet of a connection, so it is statically not a reply
                f.is_reply.value = False
        elif is_drop:
            event_type.type = _DROP
            event_type.sub_type = raw.drop_reason
        else:
            event_type.type = _TRACE
            obs_point = raw.obs_point
            event_type.sub_type = TRACE_TO_LXC if obs_point == _TO_ENDPOINT else obs_point
            f.trace_observation_point = obs_point  # type: ignore[assignment]
            if raw.ct_state in _KNOWN_CT:
                is_reply = raw.ct_state == _CT_REPLY
                f.is_reply.value = is_reply
                f.reply = is_reply
        f.traffic_direction = self._direction(raw, src, is_drop)  # type: ignore[assignment]
        if raw.ifindex:
            f.interface.index = raw.ifindex
            f.interface.name = self.getters.ifname(raw.ifindex)
        self._services(raw, f)
        if raw.policy_cookie:
            self._attribute(raw, f, src, dst)
        elif f.drop_reason:
            why = self.getters.default_deny(raw)
            if why is not None:
                f.extensions.CopyFrom(default_deny_extension(why))
        return f

    def _text(self, addr: IPAddress) -> str:
        """``str(addr)``, remembered (formatting an address is slow in ``ipaddress``)."""
        text = self._addr_text.get(addr)
        if text is None:
            if len(self._addr_text) >= _CACHE_MAX:
                self._addr_text.clear()
            text = self._addr_text[addr] = str(addr)
        return text

    def _summary(self, raw: RawTraceEvent) -> str:
        if raw.src is None:
            return "Ethernet"
        key = (raw.proto, raw.tcp_flags, raw.icmp_type, raw.icmp_code, raw.family)
        text = self._summaries.get(key)
        if text is None:
            if len(self._summaries) >= _CACHE_MAX:
                self._summaries.clear()
            text = self._summaries[key] = summary(raw)
        return text

    def decode_sock(self, raw: RawSockEvent) -> flow_pb2.Flow | None:
        """The ``sock`` family: a trace-sock record's SOCK flow (see the module doc); None:
        skipped (its cgroup is no local endpoint's)."""
        src_ip = self.getters.endpoint_ip_of_cgroup(raw.cgroup_id, raw.family)
        if src_ip is None or raw.dst is None:
            return None
        point = SockXlatePoint(raw.xlate_point)
        wall = self.clock.wall_ns(raw.ts_ns)
        f = flow_pb2.Flow(
            time=Timestamp(seconds=wall // 1_000_000_000, nanos=wall % 1_000_000_000),
            uuid=self._uuids.next(),
            verdict=Verdict.TRACED if point.is_pre else Verdict.TRANSLATED,  # type: ignore[arg-type]
            Type=flow_pb2.SOCK,
            node_name=self.node_name,
            sock_xlate_point=int(point),  # type: ignore[arg-type]
            socket_cookie=raw.sock_cookie,
            cgroup_id=raw.cgroup_id,
            Summary=_SOCK_L4_NAMES.get(raw.l4_proto, "Unknown"),
        )
        f.event_type.type = EventType.TRACE_SOCK
        f.event_type.sub_type = int(point)
        src: tuple[IPAddress, int] = (src_ip, 0)
        dst: tuple[IPAddress, int] = (raw.dst, raw.dport)
        if point.is_reverse:
            src, dst = dst, src
        f.IP.source, f.IP.destination = str(src[0]), str(dst[0])
        f.IP.ipVersion = flow_pb2.IPv4 if raw.family == socket.AF_INET else flow_pb2.IPv6
        if raw.l4_proto == SockL4Protocol.TCP:
            f.l4.TCP.source_port, f.l4.TCP.destination_port = src[1], dst[1]
        elif raw.l4_proto == SockL4Protocol.UDP:
            f.l4.UDP.source_port, f.l4.UDP.destination_port = src[1], dst[1]
        f.source.CopyFrom(self._endpoint(src[0], 0))
        f.destination.CopyFrom(self._endpoint(dst[0], 0))
        for addr, field_ in ((src, f.source_service), (dst, f.destination_service)):
            found = self.getters.service_by_addr(*addr)
            if found is not None:
                field_.namespace, field_.name = found
        return f

    def decode_l7(self, rec: L7Record) -> flow_pb2.Flow:
        """The ``seven`` family: a proxy's request or response as an L7 flow (see the module
        doc). The entry point of the proxies' records: build an :class:`L7Record` and hand it
        to the agent's event fan-out (``Monitor.publish``), which queues it for Hubble's decode
        loop, where it arrives here."""
        f = flow_pb2.Flow(
            uuid=self._uuids.next(),
            verdict=int(rec.verdict),  # type: ignore[arg-type]
            Type=flow_pb2.L7,
            node_name=self.node_name,
            traffic_direction=int(rec.direction),  # type: ignore[arg-type]
            Summary=seven.summary(rec),
        )
        stamp = f.time
        stamp.seconds, stamp.nanos = divmod(rec.time_ns, 1_000_000_000)
        src, dst = rec.source, rec.destination
        ip = f.IP
        ip.source, ip.destination = self._text(src.ip), self._text(dst.ip)
        ip.ipVersion = flow_pb2.IPv4 if src.ip.version == 4 else flow_pb2.IPv6
        l4 = (
            f.l4.TCP
            if rec.transport == 6
            else f.l4.UDP
            if rec.transport == 17
            else f.l4.SCTP
            if rec.transport == 132
            else None
        )
        if l4 is not None:
            l4.source_port, l4.destination_port = src.port, dst.port
        source, destination = (
            self._endpoint(src.ip, src.identity),
            self._endpoint(dst.ip, dst.identity),
        )
        f.source.CopyFrom(source)
        f.destination.CopyFrom(destination)
        self._names(f, source.ID, destination.ID)
        seven.fill_layer7(rec, f.l7)
        is_reply = rec.kind == L7FlowType.RESPONSE
        f.is_reply.value = is_reply
        f.reply = is_reply
        f.event_type.type = _ACCESS_LOG
        for side, field_ in ((src, f.source_service), (dst, f.destination_service)):
            found = self.getters.service_by_addr(side.ip, side.port)
            if found is not None:
                field_.namespace, field_.name = found
        return f

    def _names(self, f: flow_pb2.Flow, src_id: int, dst_id: int) -> None:
        """``source_names`` / ``destination_names`` as upstream's parsers' ``resolveNames``: the
        names of the peer's address a local endpoint on the other side looked up (the source's
        names when the destination is a local endpoint, the destination's when the source
        is), from the node's FQDN cache (upstream keeps a DNS history per endpoint; ours is
        the node's, so any local endpoint's lookup names the address)."""
        names_of = self.getters.names_of_ip
        if dst_id:
            f.source_names.extend(names_of(f.IP.source))
        if src_id:
            f.destination_names.extend(names_of(f.IP.destination))

    def _services(self, raw: RawTraceEvent, f: flow_pb2.Flow) -> None:
        """``source_service``/``destination_service`` as upstream's parser: the Service whose
        frontend is the flow's source (destination) address and port. Events are taken after
        the translation to a backend, so a request's original destination (the frontend the
        client addressed) comes from its connection's rev-NAT index; a reply is already
        translated back to the frontend when reported here."""
        if raw.src is None or raw.dst is None:
            return
        src_addr, dst_addr = self._service_addrs(raw, raw.src, raw.dst)
        for addr, field_ in ((src_addr, f.source_service), (dst_addr, f.destination_service)):
            found = self.getters.service_by_addr(*addr)
            if found is not None:
                field_.namespace, field_.name = found

    def source_service(
        self, src: IPAddress, sport: int, rev_nat_index: int, is_reply: bool
    ) -> tuple[str, str] | None:
        """The (namespace, name) :meth:`decode` gives ``source_service`` for a record of these
        values (and a destination address), None when none."""
        src_addr = (src, sport)
        if rev_nat_index and is_reply:
            src_addr = self.getters.frontend_of(rev_nat_index) or src_addr
        return self.getters.service_by_addr(*src_addr)

    def destination_service(
        self, dst: IPAddress, dport: int, rev_nat_index: int, is_reply: bool
    ) -> tuple[str, str] | None:
        """The (namespace, name) :meth:`decode` gives ``destination_service`` for a record of
        these values (and a source address), None when none."""
        dst_addr = (dst, dport)
        if rev_nat_index and not is_reply:
            dst_addr = self.getters.frontend_of(rev_nat_index) or dst_addr
        return self.getters.service_by_addr(*dst_addr)

    def _service_addrs(
        self, raw: RawTraceEvent, src: IPAddress, dst: IPAddress
    ) -> tuple[tuple[IPAddress, int], tuple[IPAddress, int]]:
        """The (address, port) whose Service is the flow's source (destination) service."""
        src_addr, dst_addr = (src, raw.sport), (dst, raw.dport)
        if raw.rev_nat_index:
            original = self.getters.frontend_of(raw.rev_nat_index)
            if original is not None and raw.is_reply:
                src_addr = original
            elif original is not None:
                dst_addr = original
        return src_addr, dst_addr

    def _l4(self, raw: RawTraceEvent, l4: flow_pb2.Layer4) -> None:
        if raw.proto == 6:
            tcp = l4.TCP
            tcp.source_port = raw.sport
            tcp.destination_port = raw.dport
            bits = raw.tcp_flags
            flags = self._tcp_flags.get(bits)
            if flags is None:
                flags = self._tcp_flags[bits] = flow_pb2.TCPFlags(
                    **{name: bool(bits & bit) for name, bit in TCP_FLAG_BITS.items()}
                )
            tcp.flags.CopyFrom(flags)
        elif raw.proto == 17:
            l4.UDP.source_port = raw.sport
            l4.UDP.destination_port = raw.dport
        elif raw.proto == 132:
            l4.SCTP.source_port = raw.sport
            l4.SCTP.destination_port = raw.dport
        elif raw.proto == 1:
            l4.ICMPv4.type = raw.icmp_type
            l4.ICMPv4.code = raw.icmp_code
        elif raw.proto == 58:
            l4.ICMPv6.type = raw.icmp_type
            l4.ICMPv6.code = raw.icmp_code

    def _endpoint(self, addr: IPAddress | None, datapath_id: int) -> flow_pb2.Endpoint:
        """Upstream's ``ResolveEndpoint``: a local endpoint by address, else ipcache + labels.
        The datapath's identity wins when it has one (policy was decided on it).

        The getters are asked for every event, so a change in the agent's state shows in the
        next flow; what is remembered is only the message built from their answers, keyed by
        every value it is made of (the labels by identity: the identity cache hands out a new
        object when an identity's labels change). The result is shared: copy, never modify."""
        g = self.getters
        ep = g.endpoint_by_ip(addr) if addr is not None else None
        if ep is not None:
            identity = datapath_id or ep.identity
            labels = self._labels_of(identity)
            key: tuple[object, ...] = (
                ep.id,
                identity,
                ep.namespace,
                ep.pod_name,
                ep.workloads,
                self.cluster_name,
            )
            cached = self._endpoints.get(key)
            if cached is not None and cached[0] is labels:
                return cached[1]
            msg = flow_pb2.Endpoint(
                ID=ep.id,
                identity=identity,
                cluster_name=self.cluster_name,
                namespace=ep.namespace,
                labels=labels,
                pod_name=ep.pod_name,
                workloads=[flow_pb2.Workload(name=n, kind=k) for n, k in ep.workloads],
            )
        else:
            identity = datapath_id
            if addr is not None and not identity:
                identity = g.identity_of_ip(addr) or 0
            remote = g.pod_of_ip(addr) if addr is not None else None
            labels = self._labels_of(identity)
            namespace = remote.namespace if remote is not None else ""
            pod_name = remote.pod_name if remote is not None else ""
            key = (identity, namespace, pod_name, self.cluster_name)
            cached = self._endpoints.get(key)
            if cached is not None and cached[0] is labels:
                return cached[1]
            pod = identity >= MIN_ALLOCATED_IDENTITY and not is_local_identity(identity)
            msg = flow_pb2.Endpoint(
                identity=identity,
                cluster_name=self.cluster_name if pod else "",
                namespace=namespace,
                labels=labels,
                pod_name=pod_name,
            )
        if len(self._endpoints) >= _CACHE_MAX:
            self._endpoints.clear()
        self._endpoints[key] = (labels, msg)
        return msg

    def _labels_of(self, identity: int) -> list[str]:
        if not identity:
            return _NO_LABELS
        labels = self.getters.identity_labels(identity)
        if labels is None:
            return _NO_LABELS
        cached = self._labels.get(identity)
        if cached is not None and cached[0] is labels:
            return cached[1]
        filtered = filter_labels(labels, identity)
        self._labels[identity] = (labels, filtered)
        return filtered

    @staticmethod
    def _direction(raw: RawTraceEvent, src: flow_pb2.Endpoint, is_drop: bool) -> int:
        """The connection's direction at the endpoint that decided (see the module doc)."""
        direction = raw.traffic_direction
        if direction in (TRAFFIC_INGRESS, TRAFFIC_EGRESS):
            if not is_drop and raw.ct_state == CTState.REPLY:
                return TRAFFIC_EGRESS if direction == TRAFFIC_INGRESS else TRAFFIC_INGRESS
            return direction
        if is_drop and raw.ep_id:
            # upstream's rule for drops: dropped where the sender lives = egress
            return TRAFFIC_EGRESS if raw.ep_id == src.ID else TRAFFIC_INGRESS
        return 0

    def _attribute(
        self,
        raw: RawTraceEvent,
        f: flow_pb2.Flow,
        src: flow_pb2.Endpoint,
        dst: flow_pb2.Endpoint,
    ) -> None:
        """Fill ``{ingress,egress}_{allowed,denied}_by`` from the rules behind the cookie: each
        rule's section says which direction it enforced; allows explain a forwarded flow,
        denies a dropped one. One entry per policy (a policy's rules share its labels)."""
        dropped = raw.verdict == Verdict.DROPPED
        seen: set[tuple[str, str]] = set()
        for ref in self.getters.rules_of_cookie(raw.policy_cookie):
            deny = ref.section.endswith("Deny")
            if deny != dropped:
                continue
            egress = ref.section.startswith("egress")
            key = (ref.policy, "egress" if egress else "ingress")
            if key in seen:
                continue
            seen.add(key)
            # the endpoint whose policy decided: the sender for egress, the receiver for ingress
            ep_id = (src.ID if egress else dst.ID) or raw.ep_id
            policy = policy_of(ref, self.getters.policy_revision(ep_id))
            if egress:
                target = f.egress_denied_by if deny else f.egress_allowed_by
            else:
                target = f.ingress_denied_by if deny else f.ingress_allowed_by
            target.append(policy)
