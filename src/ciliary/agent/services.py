"""The agent's service manager: the service cache (``agent.k8s.services``) into the BPF service
maps (``bpf/lib/lb.h``), the one writer of those maps, as Cilium's ``ServiceManager``.

What is programmed: each ClusterIP of a Service (every family it has) times each of its ports is a
frontend (address, port, protocol), and the address alone a wildcard frontend (port 0, protocol
0, no backends: the datapath drops anything else sent to a ClusterIP). A frontend's backends are
the service's ready endpoints of the frontend's family that list the port (by the port's name,
with its protocol), the ready ones first (slot 0's count: what new connections choose from), then
the serving terminating ones (flagged terminating, slot 0's qcount: never chosen, their backend
entries kept so established connections finish; chosen only when none is ready), as upstream's
quarantined slots. Selection (bpf/lib/lb.h ``lb_select_backend``): ``--bpf-lb-algorithm`` or the
Service's ``service.cilium.io/lb-algorithm`` annotation; a Maglev frontend gets a table of
``--bpf-lb-maglev-table-size`` backend ids (``core.maglev``, over its active backends by
name, seeded by ``--bpf-lb-maglev-hash-seed``: the same table on every node) in
``ciliary_lb{4,6}_maglev``; ``sessionAffinity: ClientIP`` sets ``SVC_FLAG_AFFINITY`` and the
timeout in slot 0, its active backends in ``ciliary_lb_affinity_match``. The external
frontends, which bpf_host's cil_from_netdev translates for clients
outside the cluster (bpf/lib/nodeport.h), as upstream's with their ``SVC_FLAG_*``: each of this
node's addresses (:class:`FrontendNode`, its ``--ipv4-node``/``--ipv6-node``) times a port's
``nodePort`` (NodePort and LoadBalancer Services, the addresses of the Service's IP families;
``SVC_FLAG_NODEPORT``), each ``spec.externalIPs``
address (``SVC_FLAG_EXTERNAL_IP``) and each ``status.loadBalancer.ingress`` IP of a LoadBalancer
(``SVC_FLAG_LOADBALANCER``; with ``loadBalancerSourceRanges`` also ``SVC_FLAG_SOURCE_RANGE`` and
its prefixes in ``ciliary_lb_source_range``, written before the flag and removed after it)
times the port, and a local pod's ``hostPort`` on this node's
addresses or its ``hostIP`` (``SVC_FLAG_HOSTPORT``, ``agent.k8s.hostports``). With
``externalTrafficPolicy: Local`` those get only the backends on this node
(``SVC_FLAG_EXT_LOCAL_SCOPE``; none: no backends, the datapath drops), with
``internalTrafficPolicy: Local`` the ClusterIP frontends likewise (``SVC_FLAG_INT_LOCAL_SCOPE``).
Upstream keeps two scopes for a Local service (in-cluster clients of a NodePort still reach every
backend); here one: a pod reaching this node's NodePort of a Local service gets the local ones.

IDs, stable across agent restarts: each frontend has an id (1..65535) that is also its rev-NAT
index, each backend (address, port, protocol; shared by the frontends that use it) an id
(1..2^32-1). :meth:`ServiceManager.restore` reads both back from the pinned maps at start, so the
connections the datapath kept translating while no agent ran keep their reverse translation.

Update order, so that no packet ever reads a slot naming a missing backend and a frontend never
counts slots it does not have: (1) new or changed backends, (2) a new frontend's rev-NAT entry,
(3) its slots 1..n, (3b) its Maglev table and new affinity matches, (4) its slot 0 (count n),
then stale affinity matches, (5) slots beyond n, (6) frontends no longer
wanted (slot 0 first, then its slots and rev-NAT entry), (7) backends no frontend uses any more.
A removed backend is thus out of every slot before it leaves the backend map, and the
datapath gives its established connections another backend (their service conntrack entry
names a backend id that no longer resolves).

Sans-IO core: :func:`desired_frontends` (services → frontends) and :class:`ServiceManager`
over any :class:`LBWriter` (the real :class:`~ciliary.datapath.maps.lb.LBMaps`, or a dict in
the unit tests); :class:`ServiceSyncer` runs it from the watcher's events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from ciliary.agent.k8s.hostports import HOST_PORT
from ciliary.agent.k8s.services import SERVICE_NAME_LABEL
from ciliary.core.maglev import DEFAULT_HASH_SEED, DEFAULT_TABLE_SIZE, lookup_table, parse_hash_seed
from ciliary.core.models import (
    LBBackend,
    LBMapEntry,
    ServiceFrontend,
    ServiceInfo,
    ServicePortInfo,
)
from ciliary.datapath.maps.endpoints import AF_INET4, AF_INET6, IPAddress, packed_addresses
from ciliary.datapath.maps.lb import (
    BE_STATE_ACTIVE,
    BE_STATE_TERMINATING,
    SVC_FLAG_AFFINITY,
    SVC_FLAG_EXT_LOCAL_SCOPE,
    SVC_FLAG_EXTERNAL_IP,
    SVC_FLAG_HOSTPORT,
    SVC_FLAG_INT_LOCAL_SCOPE,
    SVC_FLAG_LOADBALANCER,
    SVC_FLAG_NODEPORT,
    SVC_FLAG_SOURCE_RANGE,
    SVC_FLAG_WILDCARD,
    Backend,
    Frontend,
    LBState,
    ServiceValue,
    slot0_affinity_timeout,
    slot0_backend_id,
    slot0_maglev,
)
from ciliary.kube.client import KubeObject
from ciliary.kube.informer import HandlerFuncs

log = logging.getLogger(__name__)

__all__ = [
    "PROTOCOLS",
    "FrontendNode",
    "FrontendSpec",
    "IDAllocator",
    "LBWriter",
    "ServiceManager",
    "ServiceSyncer",
    "desired_frontends",
    "lb_map_entries",
    "service_frontends",
    "service_handlers",
]

PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}
FRONTEND_ID_MAX = 0xFFFF
BACKEND_ID_MAX = 0xFFFFFFFF

ServiceKey = tuple[str, str]


class LBWriter(Protocol):
    """What the manager writes to: :class:`~ciliary.datapath.maps.lb.LBMaps`' operations."""

    def upsert_slot(self, fe: Frontend, slot: int, value: ServiceValue) -> None: ...
    def delete_slot(self, fe: Frontend, slot: int) -> None: ...
    def upsert_backend(self, backend_id: int, backend: Backend) -> None: ...
    def delete_backend(self, backend_id: int, family: int) -> None: ...
    def upsert_rev_nat(self, index: int, fe: Frontend) -> None: ...
    def delete_rev_nat(self, index: int, family: int) -> None: ...
    def dump(self) -> LBState: ...
    def upsert_maglev(self, index: int, family: int, table: Sequence[int]) -> None: ...
    def delete_maglev(self, index: int, family: int) -> None: ...
    def upsert_affinity_match(self, backend_id: int, index: int) -> None: ...
    def delete_affinity_match(self, backend_id: int, index: int) -> None: ...
    def upsert_source_range(self, index: int, cidr: str) -> None: ...
    def delete_source_range(self, index: int, cidr: str) -> None: ...


@dataclass(frozen=True)
class FrontendSpec:
    """What one frontend should hold."""

    service: ServiceKey
    type: str
    backends: tuple[Backend, ...]
    flags2: int = 0
    flags: int = 0
    affinity_timeout: int = 0
    """sessionAffinity ClientIP: its timeout in seconds (0: no affinity)."""
    algorithm: str | None = None
    """the Service's lb-algorithm annotation (None: the agent's --bpf-lb-algorithm)."""
    source_ranges: frozenset[str] = frozenset()
    """loadBalancerSourceRanges of a LoadBalancer ingress frontend (empty: every client)."""

    @property
    def active(self) -> int:
        """How many of ``backends`` (active first) new connections choose from: the active ones,
        or every (terminating) one when none is active, as upstream."""
        return sum(1 for b in self.backends if b.state == BE_STATE_ACTIVE) or len(self.backends)


@dataclass(frozen=True)
class FrontendNode:
    """This node, for what only it programs: its name (which backends are local) and its
    addresses (its NodePort frontends)."""

    name: str
    addresses: tuple[str, ...] = ()


def _family(addr: str) -> int:
    return AF_INET4 if ip_address(addr).version == 4 else AF_INET6


def _backends(
    svc: ServiceInfo, port: ServicePortInfo, family: int, local: str | None
) -> tuple[Backend, ...]:
    """The port's backends of one family (only those on node ``local`` when given)."""
    proto = PROTOCOLS[port.protocol]
    ready: list[Backend] = []
    terminating: list[Backend] = []
    for b in svc.backends:
        l4 = b.ports.get(port.name)
        if l4 is None or l4.protocol != port.protocol or _family(b.address) != family:
            continue
        if local is not None and b.node_name != local:
            continue
        addr = ip_address(b.address)
        if b.ready and not b.terminating:
            ready.append(Backend(addr, l4.port, proto, BE_STATE_ACTIVE))
        elif b.serving:
            terminating.append(Backend(addr, l4.port, proto, BE_STATE_TERMINATING))
    # terminating ones after the active: slots count+1.. keep their backend entries while
    # established connections finish (upstream's quarantined slots); chosen only if none is ready
    return tuple(sorted(ready)) + tuple(sorted(terminating))


def desired_frontends(
    services: Iterable[ServiceInfo], node: FrontendNode | None = None
) -> dict[Frontend, FrontendSpec]:
    """The frontends the services ask for (see the module's docstring for which); ``node``:
    this node (None: no NodePort frontends, and a Local traffic policy keeps every backend)."""
    out: dict[Frontend, FrontendSpec] = {}
    here = node.name if node is not None else None
    for svc in services:
        key = (svc.namespace, svc.name)
        int_local = here if svc.internal_traffic_policy == "Local" else None
        ext_local = here if svc.external_traffic_policy == "Local" else None
        ext_scope = SVC_FLAG_EXT_LOCAL_SCOPE if ext_local is not None else 0
        affinity = svc.session_affinity_timeout if svc.session_affinity == "ClientIP" else 0
        for cluster_ip in svc.cluster_ips:
            vip = ip_address(cluster_ip)
            out[Frontend(vip, 0, 0)] = FrontendSpec(key, svc.type, (), SVC_FLAG_WILDCARD)
            for port in svc.ports:
                proto = PROTOCOLS.get(port.protocol)
                if proto is None:
                    continue
                out[Frontend(vip, port.port, proto)] = FrontendSpec(
                    key,
                    svc.type,
                    _backends(svc, port, _family(cluster_ip), int_local),
                    SVC_FLAG_INT_LOCAL_SCOPE if int_local is not None else 0,
                    affinity_timeout=affinity,
                    algorithm=svc.lb_algorithm,
                )
        external: list[tuple[str, bool, int, str]] = []  # address, node port?, flag, type
        if svc.type == HOST_PORT:  # a pod's hostPort: this node's addresses (or its hostIP)
            if node is not None:
                families = {_family(b.address) for b in svc.backends}
                external += [
                    (a, True, SVC_FLAG_HOSTPORT | SVC_FLAG_EXT_LOCAL_SCOPE, HOST_PORT)
                    for a in svc.external_ips or node.addresses
                    if _family(a) in families
                ]
        elif node is not None and svc.type in ("NodePort", "LoadBalancer"):
            families = {_family(ip) for ip in svc.cluster_ips}  # the Service's ipFamilies
            external += [
                (a, True, SVC_FLAG_NODEPORT, "NodePort")
                for a in node.addresses
                if _family(a) in families
            ]
        if svc.type != HOST_PORT:  # its external_ips are its hostIP, programmed above
            external += [(a, False, SVC_FLAG_EXTERNAL_IP, "ExternalIPs") for a in svc.external_ips]
        ranges = frozenset(svc.load_balancer_source_ranges)
        if svc.type == "LoadBalancer":
            flag = SVC_FLAG_LOADBALANCER | (SVC_FLAG_SOURCE_RANGE if ranges else 0)
            external += [(a, False, flag, "LoadBalancer") for a in svc.load_balancer_ips]
        for address, node_port, flag, kind in external:
            for port in svc.ports:
                proto = PROTOCOLS.get(port.protocol)
                number = port.node_port if node_port else port.port
                if proto is None or not number:
                    continue
                out[Frontend(ip_address(address), number, proto)] = FrontendSpec(
                    key,
                    kind,
                    _backends(svc, port, _family(address), ext_local),
                    flags=flag | ext_scope,
                    affinity_timeout=affinity,
                    algorithm=svc.lb_algorithm,
                    source_ranges=ranges if flag & SVC_FLAG_SOURCE_RANGE else frozenset(),
                )
    return out


class IDAllocator:
    """Ids in [1, high]: the lowest free one after the last handed out (wrapping), so a just
    released id is not reused at once."""

    def __init__(self, high: int) -> None:
        self.high = high
        self._used: set[int] = set()
        self._next = 1

    def claim(self, value: int) -> None:
        """An id found in the maps at start."""
        self._used.add(value)

    def allocate(self) -> int:
        if len(self._used) >= self.high:
            raise RuntimeError(f"all {self.high} ids are in use")
        candidate = self._next
        while candidate in self._used:
            candidate = candidate % self.high + 1
        self._used.add(candidate)
        self._next = candidate % self.high + 1
        return candidate

    def release(self, value: int) -> None:
        self._used.discard(value)

    def __contains__(self, value: int) -> bool:
        return value in self._used


@dataclass
class _Programmed:
    """A frontend as it is in the maps."""

    id: int
    backend_ids: tuple[int, ...]
    flags2: int
    service: ServiceKey | None = None
    type: str = ""
    flags: int = 0
    count: int = 0
    affinity_timeout: int = 0
    maglev: tuple[int, ...] | None = None
    """the backend ids (sorted by name) its Maglev table was computed from; None: random."""
    affinity: frozenset[int] = frozenset()
    """the backend ids of its affinity match entries."""
    source_ranges: frozenset[str] = frozenset()
    """its loadBalancerSourceRanges entries in ``ciliary_lb_source_range``."""


@dataclass
class ServiceManager:
    """The maps' content as this agent knows it, and the ordered writes that change it."""

    maps: LBWriter
    frontends: dict[Frontend, _Programmed] = field(default_factory=dict)
    backends: dict[int, Backend] = field(default_factory=dict)
    _backend_ids: dict[Backend, int] = field(default_factory=dict)
    _fe_ids: IDAllocator = field(default_factory=lambda: IDAllocator(FRONTEND_ID_MAX))
    _be_ids: IDAllocator = field(default_factory=lambda: IDAllocator(BACKEND_ID_MAX))
    _refs: dict[int, int] = field(default_factory=dict)
    """backend id -> how many slots name it (a service event costs its own size, not the
    node's number of services)."""
    _by_service: dict[ServiceKey, set[Frontend]] = field(default_factory=dict)
    _by_id: dict[int, Frontend] = field(default_factory=dict)
    """frontend id (= rev-NAT index) -> frontend: Hubble's original destination of a flow."""
    algorithm: str = "random"
    """--bpf-lb-algorithm: a frontend's algorithm unless its Service's annotation says."""
    maglev_table_size: int = DEFAULT_TABLE_SIZE
    maglev_seed: int = field(default_factory=lambda: parse_hash_seed(DEFAULT_HASH_SEED).murmur)
    _addresses: npt.NDArray[np.void] | None = None
    """:meth:`frontend_addresses`' answer until a frontend is added or removed."""

    def frontend_addresses(self) -> npt.NDArray[np.void]:
        """Every frontend's address (any port), ``packed_addresses``' form: Hubble asks for it
        once per batch of flows (``FlowGetters.service_addresses``), so it is kept until a
        frontend is added or removed (``sync``, ``restore``)."""
        if self._addresses is None:
            self._addresses = packed_addresses(fe.address for fe in self.frontends)
        return self._addresses

    def _set_backends(self, p: _Programmed, ids: tuple[int, ...]) -> set[int]:
        """``p``'s slots become ``ids``; returns the ids no slot names any more."""
        for i in ids:
            self._refs[i] = self._refs.get(i, 0) + 1
        unused = set()
        for i in p.backend_ids:
            self._refs[i] -= 1
            if self._refs[i] <= 0:
                unused.add(i)
        p.backend_ids = ids
        return {i for i in unused if self._refs.get(i, 0) <= 0}

    def _set_service(self, fe: Frontend, p: _Programmed, service: ServiceKey | None) -> None:
        if p.service is not None:
            self._by_service.get(p.service, set()).discard(fe)
        p.service = service
        if service is not None:
            self._by_service.setdefault(service, set()).add(fe)

    def restore(self) -> None:
        """Frontend and backend ids from the pinned maps (an agent restart keeps them)."""
        self._addresses = None
        state = self.maps.dump()
        for backend_id, backend in state.backends.items():
            self.backends[backend_id] = backend
            self._backend_ids[backend] = backend_id
            self._be_ids.claim(backend_id)
        for (fe, slot), value in state.slots.items():
            if slot != 0:
                continue
            ids = tuple(
                state.slots[(fe, i)].backend_id if (fe, i) in state.slots else 0
                for i in range(1, value.count + value.qcount + 1)
            )
            self.frontends[fe] = _Programmed(
                value.rev_nat_index,
                ids,
                value.flags2,
                flags=value.flags,
                count=value.count,
                affinity_timeout=slot0_affinity_timeout(value.backend_id)
                if value.flags & SVC_FLAG_AFFINITY
                else 0,
                # a marked slot 0 was written after its table, computed from its active backends
                maglev=ids[: value.count] or None if slot0_maglev(value.backend_id) else None,
                # the match entries the last run wrote: its active backends (pruned as usual when
                # one leaves, else a client's affinity could name a backend that is gone)
                affinity=frozenset(ids[: value.count])
                if value.flags & SVC_FLAG_AFFINITY
                else frozenset(),
                source_ranges=frozenset(state.source_ranges.get(value.rev_nat_index, ())),
            )
            self._by_id[value.rev_nat_index] = fe
            for i in ids:
                self._refs[i] = self._refs.get(i, 0) + 1
            self._fe_ids.claim(value.rev_nat_index)
        log.info(
            "restored %d service frontends and %d backends from the BPF maps",
            len(self.frontends),
            len(self.backends),
        )

    def _backend_id(self, backend: Backend) -> int:
        have = self._backend_ids.get(backend)
        if have is not None:
            if self.backends[have].state != backend.state:
                self.maps.upsert_backend(have, backend)
                self.backends[have] = backend
            return have
        new = self._be_ids.allocate()
        self.maps.upsert_backend(new, backend)
        self.backends[new] = backend
        self._backend_ids[backend] = new
        return new

    def sync(
        self, desired: Mapping[Frontend, FrontendSpec], owned: Iterable[Frontend] | None = None
    ) -> int:
        """Makes the maps hold ``desired``. ``owned``: the programmed frontends this update may
        remove (those of the services it covers); None = every frontend not desired (a full
        sync). Returns the number of frontends written or removed."""
        changed = 0
        unused: set[int] = set()
        wanted: dict[Frontend, tuple[FrontendSpec, tuple[int, ...]]] = {}
        for fe, spec in desired.items():  # (1) backends first
            wanted[fe] = (spec, tuple(self._backend_id(b) for b in spec.backends))
        shrink: list[tuple[Frontend, int, int]] = []
        for fe, (spec, ids) in wanted.items():
            have = self.frontends.get(fe)
            if have is not None:
                self._set_service(fe, have, spec.service)
                have.type = spec.type
                if (
                    have.backend_ids == ids
                    and have.flags2 == spec.flags2
                    and have.flags == self._flags(spec)
                    and have.count == spec.active
                    and have.affinity_timeout == spec.affinity_timeout
                    and have.maglev == self._maglev_ids(spec, ids)
                    and have.source_ranges == spec.source_ranges
                ):
                    continue
            else:
                self._addresses = None  # a frontend more (its map writes follow)
                have = _Programmed(self._fe_ids.allocate(), (), spec.flags2, None, spec.type)
                self._set_service(fe, have, spec.service)
                self._by_id[have.id] = fe
                self.maps.upsert_rev_nat(have.id, fe)  # (2)
            for slot, backend_id in enumerate(ids, start=1):  # (3)
                if slot > len(have.backend_ids) or have.backend_ids[slot - 1] != backend_id:
                    self.maps.upsert_slot(fe, slot, ServiceValue(backend_id=backend_id))
            self._write_selection(fe, have, spec, ids)  # (3b) Maglev table, affinity matches
            for cidr in spec.source_ranges - have.source_ranges:  # (3c) before the flag is set
                self.maps.upsert_source_range(have.id, cidr)
            head = ServiceValue(
                # slot 0: upstream's affinity_timeout, and Maglev once its table is written
                backend_id=slot0_backend_id(spec.affinity_timeout, have.maglev is not None),
                count=spec.active,
                rev_nat_index=have.id,
                flags=self._flags(spec),
                flags2=spec.flags2,
                qcount=len(ids) - spec.active,
            )
            self.maps.upsert_slot(fe, 0, head)  # (4)
            self._prune_affinity(have, spec, ids)
            for cidr in have.source_ranges - spec.source_ranges:  # after: none lets more in
                self.maps.delete_source_range(have.id, cidr)
            have.source_ranges = spec.source_ranges
            if len(have.backend_ids) > len(ids):
                shrink.append((fe, len(ids), len(have.backend_ids)))
            unused |= self._set_backends(have, ids)
            have.flags2 = spec.flags2
            have.flags = self._flags(spec)
            have.count = spec.active
            have.affinity_timeout = spec.affinity_timeout
            self.frontends[fe] = have
            changed += 1
        for fe, new_count, old_count in shrink:  # (5)
            for slot in range(new_count + 1, old_count + 1):
                self.maps.delete_slot(fe, slot)
        candidates = list(self.frontends) if owned is None else list(owned)
        for fe in candidates:  # (6)
            if fe in wanted or fe not in self.frontends:
                continue
            gone = self.frontends.pop(fe)
            self._addresses = None
            self.maps.delete_slot(fe, 0)
            if gone.maglev is not None:
                self.maps.delete_maglev(gone.id, fe.family)
            for backend_id in gone.affinity:
                self.maps.delete_affinity_match(backend_id, gone.id)
            for cidr in gone.source_ranges:
                self.maps.delete_source_range(gone.id, cidr)
            for slot in range(1, len(gone.backend_ids) + 1):
                self.maps.delete_slot(fe, slot)
            self.maps.delete_rev_nat(gone.id, fe.family)
            self._fe_ids.release(gone.id)
            self._by_id.pop(gone.id, None)
            self._set_service(fe, gone, None)
            unused |= self._set_backends(gone, ())
            changed += 1
        if owned is None:  # a full sync: also what no slot named at start
            unused |= {i for i in self.backends if self._refs.get(i, 0) <= 0}
        self._collect_backends(unused)  # (7)
        return changed

    @staticmethod
    def _flags(spec: FrontendSpec) -> int:
        return spec.flags | (SVC_FLAG_AFFINITY if spec.affinity_timeout else 0)

    def _maglev_ids(self, spec: FrontendSpec, ids: tuple[int, ...]) -> tuple[int, ...] | None:
        """The active backend ids a Maglev frontend's table is computed from (None: random)."""
        if spec.flags2 & SVC_FLAG_WILDCARD or (spec.algorithm or self.algorithm) != "maglev":
            return None
        return ids[: spec.active] or None

    def _write_selection(
        self, fe: Frontend, p: _Programmed, spec: FrontendSpec, ids: tuple[int, ...]
    ) -> None:
        """Before slot 0: the frontend's Maglev table (its active backends, by name as upstream:
        names are the same on every node, ids are not) and its affinity match entries."""
        chosen = self._maglev_ids(spec, ids)
        if chosen != p.maglev:
            if chosen:
                bes = sorted((self._name(i), i) for i in chosen)
                table = lookup_table([n for n, _ in bes], self.maglev_table_size, self.maglev_seed)
                self.maps.upsert_maglev(p.id, fe.family, [bes[i][1] for i in table])
            elif p.maglev is not None:
                self.maps.delete_maglev(p.id, fe.family)
            p.maglev = chosen or None
        if spec.affinity_timeout:
            for backend_id in set(ids[: spec.active]) - p.affinity:
                self.maps.upsert_affinity_match(backend_id, p.id)

    def _prune_affinity(self, p: _Programmed, spec: FrontendSpec, ids: tuple[int, ...]) -> None:
        """After slot 0: affinity matches of backends that are no longer active ones."""
        keep = frozenset(ids[: spec.active]) if spec.affinity_timeout else frozenset()
        for backend_id in p.affinity - keep:
            self.maps.delete_affinity_match(backend_id, p.id)
        p.affinity = keep

    def _name(self, backend_id: int) -> str:
        b = self.backends[backend_id]
        host = f"[{b.address}]" if b.address.version == 6 else str(b.address)
        return f"{host}:{b.port}"

    def _collect_backends(self, candidates: Iterable[int]) -> None:
        for backend_id in sorted(candidates):
            if self._refs.get(backend_id, 0) > 0 or backend_id not in self.backends:
                continue
            self._refs.pop(backend_id, None)
            backend = self.backends.pop(backend_id)
            if self._backend_ids.get(backend) == backend_id:
                del self._backend_ids[backend]
            self.maps.delete_backend(backend_id, _family(str(backend.address)))
            self._be_ids.release(backend_id)

    def owned_by(self, service: ServiceKey) -> list[Frontend]:
        return list(self._by_service.get(service, ()))

    def service_by_addr(self, address: IPAddress, port: int) -> ServiceKey | None:
        """The Service whose frontend is ``address``:``port`` (any protocol), as upstream's
        Hubble ``ServiceGetter.GetServiceByAddr``; a few dictionary lookups (once per flow)."""
        for proto in PROTOCOLS.values():
            p = self.frontends.get(Frontend(address, port, proto))
            if p is not None and p.service is not None:
                return p.service
        return None

    def frontend_of(self, rev_nat_index: int) -> Frontend | None:
        """The frontend a rev-NAT index names (a translated connection's original
        destination)."""
        return self._by_id.get(rev_nat_index)

    def known(self) -> dict[Frontend, tuple[ServiceKey | None, str]]:
        """The service and type of each frontend (restored ones: unknown until synced)."""
        return {fe: (p.service, p.type) for fe, p in self.frontends.items()}


def service_handlers(
    changed: Callable[[str, str], None],
) -> tuple[HandlerFuncs, HandlerFuncs]:
    """Informer handlers calling ``changed(namespace, name)`` for a Service's events and its
    EndpointSlices' (filed under their service-name label); register them after the service
    cache's, so that it is current when they run."""

    def svc(obj: KubeObject) -> None:
        meta = obj.get("metadata") or {}
        changed(str(meta.get("namespace") or ""), str(meta.get("name") or ""))

    def eps(obj: KubeObject) -> None:
        meta = obj.get("metadata") or {}
        name = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if name:
            changed(str(meta.get("namespace") or ""), str(name))

    def both(fn: Callable[[KubeObject], None]) -> Callable[[KubeObject, KubeObject], None]:
        def update(old: KubeObject, new: KubeObject) -> None:
            fn(old)
            fn(new)

        return update

    return (
        HandlerFuncs(add=svc, update=both(svc), delete=svc),
        HandlerFuncs(add=eps, update=both(eps), delete=eps),
    )


class ServiceSyncer:
    """Runs the manager from the service watcher's events: a full sync once the watcher has
    synced (frontends of services deleted while no agent ran go then, not before), then each
    changed service on its own, as soon as the event is in (no batching delay: a deleted
    backend must leave the maps before the client's next connection)."""

    def __init__(
        self,
        manager: ServiceManager,
        services: Callable[[], list[ServiceInfo]],
        get: Callable[[str, str], ServiceInfo | None],
        node: FrontendNode | None = None,
    ) -> None:
        self.manager = manager
        self._services = services
        self._get = get
        self.node = node
        self._dirty: set[ServiceKey] = set()
        self._wake = asyncio.Event()
        self._full = False
        self.synced = asyncio.Event()

    def handlers(self) -> tuple[HandlerFuncs, HandlerFuncs]:
        """Informer handlers (registered after the cache's, so it is current when they run):
        one for Services, one for EndpointSlices (filed under their service-name label)."""
        return service_handlers(self.changed)

    def changed(self, namespace: str, name: str) -> None:
        """A Service or one of its EndpointSlices changed (called from informer handlers)."""
        self._dirty.add((namespace, name))
        self._wake.set()

    async def run(self, watcher_synced: Callable[[], Awaitable[object]]) -> None:
        await watcher_synced()
        while True:
            self._dirty.clear()  # the full sync covers what changed until now
            try:
                self.manager.sync(desired_frontends(self._services(), self.node))
                break
            except Exception:
                log.exception("programming the services failed; again in 1 s")
                await asyncio.sleep(1)
        self.synced.set()
        log.info("services programmed: %d frontends", len(self.manager.frontends))
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            for key in sorted(dirty):
                try:
                    svc = self._get(*key)
                    desired = desired_frontends([svc] if svc is not None else [], self.node)
                    self.manager.sync(desired, owned=self.manager.owned_by(key))
                except Exception:
                    log.exception("programming service %s/%s failed", *key)
                    self._dirty.add(key)  # again with the next event


# ---- listings for the API (what is in the maps, with the names this agent knows) ----

PROTOCOL_NAMES = {number: name for name, number in PROTOCOLS.items()}
_STATES: dict[int, Literal["active", "terminating", "quarantined", "maintenance"]] = {
    BE_STATE_ACTIVE: "active",
    BE_STATE_TERMINATING: "terminating",
    2: "quarantined",
    3: "maintenance",
}


def _proto_name(proto: int) -> str:
    return PROTOCOL_NAMES.get(proto, "ANY" if proto == 0 else str(proto))


def service_frontends(
    state: LBState, known: Mapping[Frontend, tuple[ServiceKey | None, str]]
) -> list[ServiceFrontend]:
    """Every frontend in the maps but the wildcards, sorted by id; ``known``: the service and
    type of the frontends this agent programmed."""
    out = []
    for (fe, slot), head in state.slots.items():
        if slot != 0 or head.flags2 & SVC_FLAG_WILDCARD:
            continue
        backends = []
        for i in range(1, head.count + head.qcount + 1):  # terminating ones too
            value = state.slots.get((fe, i))
            backend = state.backends.get(value.backend_id) if value is not None else None
            if value is None or backend is None:
                continue
            backends.append(
                LBBackend(
                    id=value.backend_id,
                    address=str(backend.address),
                    port=backend.port,
                    protocol=_proto_name(backend.proto),
                    state=_STATES.get(backend.state, "active"),
                )
            )
        service, svc_type = known.get(fe, (None, ""))
        out.append(
            ServiceFrontend(
                id=head.rev_nat_index,
                address=str(fe.address),
                port=fe.port,
                protocol=_proto_name(fe.proto),
                type=svc_type or "ClusterIP",
                namespace=service[0] if service else None,
                name=service[1] if service else None,
                backends=backends,
            )
        )
    return sorted(out, key=lambda f: f.id)


def lb_map_entries(
    state: LBState, known: Mapping[Frontend, tuple[ServiceKey | None, str]]
) -> list[LBMapEntry]:
    """Every slot of both service maps, frontend by frontend (slot 0 first)."""
    out = []
    for (fe, slot), value in sorted(
        state.slots.items(), key=lambda kv: (*kv[0][0].sort_key, kv[0][1])
    ):
        head = state.slots.get((fe, 0))
        flags: list[str] = []
        backend = None
        if slot == 0:
            flags = [known.get(fe, (None, ""))[1] or "ClusterIP", "non-routable"]
            if value.flags2 & SVC_FLAG_WILDCARD:
                flags.append("wildcard")
        else:
            backend = state.backends.get(value.backend_id)
        entry = LBMapEntry(
            service_address=str(fe.address),
            service_port=fe.port,
            protocol=_proto_name(fe.proto),
            slot=slot,
            rev_nat_index=head.rev_nat_index if head is not None else 0,
            backend_address=str(backend.address) if backend is not None else None,
            backend_port=backend.port if backend is not None else None,
            flags=flags,
        )
        out.append(entry)
    return out
