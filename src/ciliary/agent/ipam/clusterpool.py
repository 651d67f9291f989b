"""Cilium's cluster-pool IPAM: the node owns one pod CIDR per family and allocates from it alone.

The operator (here: the lab) cuts per-node CIDRs out of the cluster pool, so no other node can
ever hand out these addresses and the node's state needs no lock and no cluster store: it is one
JSON file the agent alone writes, replaced atomically before ``allocate`` answers, so an address
the agent gave out survives a crash and a restart. The first host address of each CIDR is the
node's router (the pods' gateway); the network address and the IPv4 broadcast address are never
handed out. Allocation continues after the last address handed out, wrapping, so that a freed
address is not reused at once: a new pod getting the address of one that just went away would
inherit its conntrack entries and the other nodes' stale caches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ciliary.agent.ipam.persist import read_json
from ciliary.agent.ipam.types import (
    ROUTER_KIND,
    Family,
    IPAddress,
    IPAMError,
    IPNetwork,
    annotation_list,
    family_name,
    family_of,
    reuse_existing,
    router_owner,
    sort_allocations,
    wanted_families,
)
from ciliary.core.atomicfile import write_json
from ciliary.core.models import (
    IPAllocation,
    IPAMAllocateRequest,
    IPAMBlockStatus,
    IPAMListing,
    IPPoolStatus,
)
from ciliary.k8s.calico import REQUESTED_IPS_ANNOTATION

log = logging.getLogger(__name__)

POOL = "default"
AllocKind = Literal["endpoint", "ipam-plugin", "router"]


class _EntryDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")

    owner: str
    kind: AllocKind
    created_at: float


class _FamilyDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cidr: str
    next: int = 0
    allocations: dict[str, _EntryDoc] = {}


class _StateDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    node: str
    families: dict[Literal["4", "6"], _FamilyDoc] = {}


@dataclass
class _Entry:
    owner: str
    kind: AllocKind
    created_at: float


@dataclass
class _Range:
    """One family's node CIDR: who holds which address, and where the next search starts."""

    cidr: IPNetwork
    used: dict[IPAddress, _Entry] = field(default_factory=dict)
    next: int = 2

    @property
    def family(self) -> Family:
        return family_of(self.cidr)

    @property
    def router(self) -> IPAddress:
        return self.cidr.network_address + 1

    def reserved_why(self, addr: IPAddress) -> str | None:
        if addr == self.cidr.network_address:
            return "network address"
        if addr == self.router:
            return "router address"
        if isinstance(self.cidr, IPv4Network) and addr == self.cidr.broadcast_address:
            return "broadcast address"
        return None

    @property
    def usable(self) -> int:
        """Addresses that can be held (pods and the router): all but network and broadcast."""
        return self.cidr.num_addresses - (2 if self.family == 4 else 1)

    def describe(self) -> str:
        return f"node CIDR {self.cidr} of pool {POOL}"


class ClusterPoolIPAM:
    """Allocator over the node's own CIDRs (``ipv4_cidr``/``ipv6_cidr``, None = family off).

    ``masquerade`` is only shown in ``listing()`` (as the pseudo-pool's ``nat_outgoing``).
    A state file written for other CIDRs keeps only the allocations that still fit.
    """

    def __init__(
        self,
        node: str,
        ipv4_cidr: IPv4Network | None,
        ipv6_cidr: IPv6Network | None,
        state_path: Path,
        *,
        masquerade: bool = True,
    ) -> None:
        self._node = node
        self._path = state_path
        self._masquerade = masquerade
        self._ranges: dict[Family, _Range] = {}
        for fam, cidr, largest in ((4, ipv4_cidr, 30), (6, ipv6_cidr, 126)):
            if cidr is None:
                continue
            if cidr.version != fam:
                raise IPAMError(f"node CIDR {cidr} given as {family_name(fam)}", "invalid")
            if cidr.prefixlen > largest:
                raise IPAMError(
                    f"node CIDR {cidr} of node {node} is too small: it needs room for the"
                    f" network and router addresses and a pod (at most /{largest})",
                    "invalid",
                )
            self._ranges[fam] = _Range(cidr)
        if not self._ranges:
            raise IPAMError(f"node {node} has no pod CIDR in any family", "invalid")
        self._owners: dict[str, dict[Family, IPAddress]] = {}
        self._lock = threading.RLock()  # in case the agent calls from worker threads
        changed = self._load()
        for rng in self._ranges.values():
            entry = rng.used.get(rng.router)
            if entry is None or entry.kind != ROUTER_KIND:
                rng.used[rng.router] = _Entry(router_owner(node), ROUTER_KIND, time.time())
                self._index(router_owner(node), rng.family, rng.router)
                changed = True
        if changed:
            self._save()

    # -- the IPAM protocol ------------------------------------------------------------------

    @property
    def mode(self) -> Literal["cluster-pool"]:
        return "cluster-pool"

    @property
    def node(self) -> str:
        return self._node

    @property
    def router_v4(self) -> IPv4Address | None:
        rng = self._ranges.get(4)
        return rng.router if rng is not None else None  # type: ignore[return-value]

    @property
    def router_v6(self) -> IPv6Address | None:
        rng = self._ranges.get(6)
        return rng.router if rng is not None else None  # type: ignore[return-value]

    @property
    def cidrs(self) -> dict[Family, IPNetwork]:
        return {fam: rng.cidr for fam, rng in self._ranges.items()}

    def allocate(
        self, req: IPAMAllocateRequest, *, pod_annotations: Mapping[str, str] | None = None
    ) -> list[IPAllocation]:
        """Requested addresses come from ``req.requested``, else from the pod's
        ``cni.projectcalico.org/ipAddrs`` annotation; Calico's pool annotations are ignored
        (there is only pool ``default``), so a manifest written for Calico still works."""
        with self._lock:
            return self._allocate(req, pod_annotations or {})

    def _allocate(
        self, req: IPAMAllocateRequest, annotations: Mapping[str, str]
    ) -> list[IPAllocation]:
        for name in req.pools or []:
            if name != POOL:
                raise IPAMError(
                    f"IP pool {name!r} not found: cluster-pool IPAM has only pool {POOL!r}",
                    "not-found",
                )
        requested = (
            list(req.requested) or annotation_list(annotations, REQUESTED_IPS_ANNOTATION) or []
        )
        wanted = wanted_families(self._node, req, requested, self._ranges, "pod CIDR")
        todo = reuse_existing(req.owner, self._owners.get(req.owner, {}), wanted)
        if todo:
            now = time.time()
            undo: list[tuple[_Range, IPAddress, int]] = []
            try:
                for fam, addr in todo.items():
                    rng = self._ranges[fam]
                    previous_next = rng.next
                    got = self._take(rng, addr)
                    rng.used[got] = _Entry(req.owner, req.kind, now)
                    self._index(req.owner, fam, got)
                    undo.append((rng, got, previous_next))
                self._save()
            except BaseException:
                for rng, got, previous_next in reversed(undo):
                    del rng.used[got]
                    self._unindex(req.owner, rng.family)
                    rng.next = previous_next
                raise
        return self.owned_by(req.owner)

    def release(self, owner: str) -> list[IPAllocation]:
        if owner == router_owner(self._node):
            raise IPAMError(f"{owner} holds the node's router addresses: never released")
        with self._lock:
            return self._release_where(lambda a: a.owner == owner)

    def allocations(self) -> list[IPAllocation]:
        with self._lock:
            return sort_allocations(
                self._allocation(rng, addr, entry)
                for rng in self._ranges.values()
                for addr, entry in rng.used.items()
            )

    def owned_by(self, owner: str) -> list[IPAllocation]:
        with self._lock:
            held = self._owners.get(owner, {})
            return [
                self._allocation(self._ranges[fam], addr, self._ranges[fam].used[addr])
                for fam, addr in sorted(held.items())
            ]

    def gc(self, keep: Callable[[IPAllocation], bool]) -> list[IPAllocation]:
        with self._lock:
            return self._release_where(lambda a: a.kind != ROUTER_KIND and not keep(a))

    def listing(self) -> IPAMListing:
        with self._lock:
            return self._listing()

    def _listing(self) -> IPAMListing:
        pools: list[IPPoolStatus] = []
        blocks: list[IPAMBlockStatus] = []
        for rng in self._ranges.values():
            pools.append(
                IPPoolStatus(
                    name=POOL,
                    cidr=str(rng.cidr),
                    block_size=rng.cidr.prefixlen,
                    disabled=False,
                    nat_outgoing=self._masquerade,
                    node_selector="all()",
                    size=rng.cidr.num_addresses,
                    used=len(rng.used),
                )
            )
            blocks.append(
                IPAMBlockStatus(
                    cidr=str(rng.cidr),
                    pool=POOL,
                    affinity=f"host:{self._node}",
                    size=rng.cidr.num_addresses,
                    used=len(rng.used),
                )
            )
        return IPAMListing(
            mode="cluster-pool",
            node=self._node,
            pools=pools,
            blocks=blocks,
            allocations=self.allocations(),
        )

    # -- internals -------------------------------------------------------------------------

    def _take(self, rng: _Range, requested: IPAddress | None) -> IPAddress:
        if requested is not None:
            if requested not in rng.cidr:
                raise IPAMError(
                    f"requested address {requested} is outside {rng.describe()} (node"
                    f" {self._node})",
                    "invalid",
                )
            why = rng.reserved_why(requested)
            if why is not None:
                raise IPAMError(
                    f"requested address {requested} is the {why} of {rng.describe()}: it is"
                    " never handed out",
                    "invalid",
                )
            holder = rng.used.get(requested)
            if holder is not None:
                raise IPAMError(
                    f"requested address {requested} is already in use by {holder.owner}"
                    f" ({rng.describe()})",
                    "conflict",
                )
            return requested
        if len(rng.used) >= rng.usable:
            raise IPAMError(
                f"{rng.describe()} is exhausted on node {self._node}"
                f" ({rng.usable - 1} pod addresses, all in use)",
                "exhausted",
            )
        size = rng.cidr.num_addresses
        for step in range(size):
            offset = (rng.next + step) % size
            addr = rng.cidr.network_address + offset
            if addr not in rng.used and rng.reserved_why(addr) is None:
                rng.next = (offset + 1) % size
                return addr
        raise AssertionError(f"{rng.describe()}: {len(rng.used)} used of {rng.usable}")

    def _release_where(self, select: Callable[[IPAllocation], bool]) -> list[IPAllocation]:
        gone: list[tuple[_Range, IPAddress, _Entry, IPAllocation]] = []
        for rng in self._ranges.values():
            for addr, entry in rng.used.items():
                alloc = self._allocation(rng, addr, entry)
                if entry.kind != ROUTER_KIND and select(alloc):
                    gone.append((rng, addr, entry, alloc))
        if not gone:
            return []
        for rng, addr, entry, _ in gone:
            del rng.used[addr]
            self._unindex(entry.owner, rng.family)
        try:
            self._save()
        except BaseException:
            for rng, addr, entry, _ in gone:
                rng.used[addr] = entry
                self._index(entry.owner, rng.family, addr)
            raise
        return sort_allocations(alloc for *_, alloc in gone)

    def _index(self, owner: str, fam: Family, addr: IPAddress) -> None:
        self._owners.setdefault(owner, {})[fam] = addr

    def _unindex(self, owner: str, fam: Family) -> None:
        held = self._owners.get(owner)
        if held is not None:
            held.pop(fam, None)
            if not held:
                del self._owners[owner]

    def _allocation(self, rng: _Range, addr: IPAddress, entry: _Entry) -> IPAllocation:
        return IPAllocation(
            owner=entry.owner,
            kind=entry.kind,
            family=rng.family,
            address=str(addr),
            prefix_len=rng.cidr.prefixlen,
            gateway=str(rng.router),
            pool=POOL,
            block=str(rng.cidr),
            created_at=entry.created_at,
        )

    def _load(self) -> bool:
        """Read the state file into the ranges; True when something had to be dropped."""
        raw = read_json(self._path)
        if raw is None:
            return False
        try:
            doc = _StateDoc.model_validate(raw)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise IPAMError(
                f"IPAM state {self._path} is invalid at {where}: {first['msg']}", "invalid"
            ) from err
        if doc.node != self._node:
            raise IPAMError(
                f"IPAM state {self._path} belongs to node {doc.node}, not {self._node}", "invalid"
            )
        dropped = False
        for key, fdoc in doc.families.items():
            rng = self._ranges.get(4 if key == "4" else 6)
            same_cidr = rng is not None and fdoc.cidr == str(rng.cidr)
            if rng is not None and same_cidr:
                rng.next = fdoc.next % rng.cidr.num_addresses
            for text, edoc in fdoc.allocations.items():
                addr = ip_address(text)
                keep = rng is not None and addr in rng.cidr
                if rng is not None and keep:
                    why = rng.reserved_why(addr)
                    is_router = edoc.kind == ROUTER_KIND
                    keep = (why is None and not is_router) or (
                        addr == rng.router and is_router and edoc.owner == router_owner(self._node)
                    )
                if rng is None or not keep:
                    if edoc.kind != ROUTER_KIND:
                        log.warning(
                            "IPAM state %s: dropping %s of %s, outside the node's pod CIDRs now",
                            self._path,
                            text,
                            edoc.owner,
                        )
                    dropped = True
                    continue
                rng.used[addr] = _Entry(edoc.owner, edoc.kind, edoc.created_at)
                self._index(edoc.owner, rng.family, addr)
        return dropped

    def _save(self) -> None:
        families: dict[str, Any] = {}
        for fam, rng in self._ranges.items():
            families[str(fam)] = {
                "cidr": str(rng.cidr),
                "next": rng.next,
                "allocations": {
                    str(addr): {"owner": e.owner, "kind": e.kind, "created_at": e.created_at}
                    for addr, e in rng.used.items()
                },
            }
        write_json(self._path, {"version": 1, "node": self._node, "families": families})
