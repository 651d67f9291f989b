"""Calico's IPAM: cluster-wide IP pools carved into blocks that become affine to nodes.

Unlike cluster-pool, no operator hands a node its range: every agent allocates from shared pools
(Calico ``IPPool`` objects of the Kubernetes API), so each allocation is a read-modify-write of
shared ``IPAMBlock`` objects, with optimistic concurrency as Calico's Kubernetes datastore does
it (``agent.ipam.datastore``): blocks are read with their resourceVersion, changed, and written
back with it as a precondition; a 409 (another agent changed the block, or created the block
this one wanted to claim) re-reads and retries the whole operation, so two agents can never hand
out the same address. A node first uses free addresses of blocks affine to it, then claims a new
block (the lowest free one of the first pool that has one, up to ``maxBlocksPerHost``), and only
then, unless ``strictAffinity`` forbids it, borrows a free address from another node's block:
routes stay aggregated per block as long as pools are not nearly full, and a nearly full pool
still serves every node. The node's router (its pods' gateway) is allocated the same way when the
IPAM is constructed, which claims the node's first block per family so the gateway lives in the
node's own range as in Cilium. Every allocation records the node that made it, since a borrowed
address lives in another node's block.

Objects: ``IPPool`` and the ``default`` ``IPAMConfiguration`` (validated with
:mod:`ciliary.k8s.calico`, the model the lab writes them with) and ``IPAMBlock`` (Calico's
AllocationBlock: ``spec.cidr``, ``affinity`` ``host:<node>``, ``allocations`` (per ordinal, an
index into ``attributes`` or null), ``unallocated`` (free ordinals in hand-out order),
``attributes`` (``handle_id`` = the owner; ``secondary``: node, kind, timestamp)). A block's pool
is the pool whose CIDR holds it, as in Calico.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Any, Literal, TypeVar

from pydantic import ValidationError

from ciliary.agent.ipam.datastore import (
    BLOCK_API_VERSION,
    BLOCK_KIND,
    BlockConflictError,
    IPAMDatastore,
    KubeObject,
    block_name,
)
from ciliary.agent.ipam.types import (
    FAMILIES,
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
from ciliary.core.models import (
    IPAllocation,
    IPAMAllocateRequest,
    IPAMBlockStatus,
    IPAMListing,
    IPPoolStatus,
)
from ciliary.k8s.calico import (
    IPV4_POOLS_ANNOTATION,
    IPV6_POOLS_ANNOTATION,
    REQUESTED_IPS_ANNOTATION,
    IPAMConfiguration,
    IPPool,
    default_ipam_configuration,
)
from ciliary.k8s.fields import error_message, format_path

CONFIG_NAME = "default"
RESERVED_HANDLE = "ipam-reserved"
"""The handle of addresses a block holds back (never handed out), e.g. pre-created by an admin."""
MAX_ATTEMPTS = 100  # as Calico's retries of a block write that lost a race

log = logging.getLogger(__name__)
_T = TypeVar("_T")

AllocKind = Literal["endpoint", "ipam-plugin", "router"]


# -- pools and configuration ----------------------------------------------------------------


def _problem(err: ValidationError) -> str:
    """The first problem of a document, in the lab file's words (``spec.blockSize: expected …``)."""
    loc, message = error_message(err.errors()[0])
    where = format_path(loc)
    return f"{where}: {message}" if where else message


def pool_from_document(name: str, doc: Mapping[str, Any]) -> IPPool:
    """Validate a stored Calico IPPool document (the store key is its name when the document has
    none); ``IPAMError`` naming the pool when it is bad."""
    metadata = doc.get("metadata")
    if metadata is None:
        doc = {**doc, "metadata": {"name": name}}
    try:
        pool = IPPool.model_validate(doc)
    except ValidationError as err:
        raise IPAMError(f"IP pool {name!r} is invalid: {_problem(err)}") from err
    if pool.name != name:
        raise IPAMError(f"IP pool {name!r} is invalid: metadata.name is {pool.name!r}")
    return pool


def ipam_config_from_document(doc: Mapping[str, Any] | None) -> IPAMConfiguration:
    """Validate the stored IPAMConfiguration; Calico's defaults when there is none."""
    if doc is None:
        return default_ipam_configuration()
    if doc.get("metadata") is None:
        doc = {**doc, "metadata": {"name": CONFIG_NAME}}
    try:
        return IPAMConfiguration.model_validate(doc)
    except ValidationError as err:
        raise IPAMError(f"IPAMConfiguration {CONFIG_NAME!r} is invalid: {_problem(err)}") from err


def load_pools(docs: Mapping[str, Mapping[str, Any]]) -> dict[str, IPPool]:
    """Validate every pool document, and that no two pools overlap (their blocks would)."""
    pools = {name: pool_from_document(name, doc) for name, doc in sorted(docs.items())}
    ordered = sorted(pools.values(), key=lambda p: (p.version, int(p.cidr.network_address)))
    for a, b in itertools.pairwise(ordered):
        if a.version == b.version and a.cidr.overlaps(b.cidr):
            raise IPAMError(f"{a.describe()} and {b.describe()} overlap")
    return pools


# -- blocks ---------------------------------------------------------------------------------


@dataclass
class _Slot:
    owner: str
    kind: AllocKind
    created_at: float
    node: str


@dataclass
class _Block:
    cidr: IPNetwork
    pool: str
    affinity: str | None
    allocations: dict[IPAddress, _Slot] = field(default_factory=dict)
    reserved: frozenset[IPAddress] = frozenset()
    next: int = 0
    resource_version: str | None = None  # None: not in the datastore yet (claim = create)

    @property
    def family(self) -> Family:
        return family_of(self.cidr)

    @property
    def size(self) -> int:
        return self.cidr.num_addresses

    def full(self) -> bool:
        return len(self.allocations) + len(self.reserved) >= self.size

    def free_address(self, *, host_first: bool = False) -> IPAddress | None:
        """The next free address after the last one handed out (wrapping); with ``host_first``
        the first free one that is not the network or broadcast address, if there is one."""
        if self.full():
            return None
        base = self.cidr.network_address
        if host_first:
            for offset in range(1, self.size - 1):
                if self._free(base + offset):
                    return base + offset
        for step in range(self.size):
            offset = (self.next + step) % self.size
            if self._free(base + offset):
                return base + offset
        return None

    def _free(self, addr: IPAddress) -> bool:
        return addr not in self.allocations and addr not in self.reserved

    def take(self, addr: IPAddress, slot: _Slot) -> None:
        self.allocations[addr] = slot
        self.next = (int(addr) - int(self.cidr.network_address) + 1) % self.size

    def describe(self) -> str:
        return f"block {self.cidr} of IP pool {self.pool!r}"

    @classmethod
    def from_object(cls, obj: Mapping[str, Any], pools: Mapping[str, IPPool]) -> _Block:
        """A block object as an agent (or an admin) wrote it; ``IPAMError`` naming the object
        and the field when it is not one."""
        meta = obj.get("metadata") or {}
        name = str(meta.get("name", "?"))
        try:
            return cls._parse(obj, pools)
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise IPAMError(f"IPAMBlock {name} is invalid: {err}") from err

    @classmethod
    def _parse(cls, obj: Mapping[str, Any], pools: Mapping[str, IPPool]) -> _Block:
        spec = obj.get("spec")
        if not isinstance(spec, Mapping):
            raise ValueError("spec: expected an object")
        cidr = ip_network(str(spec.get("cidr")))
        name = obj["metadata"]["name"]
        if block_name(str(cidr)) != name:
            raise ValueError(f"spec.cidr {cidr} does not match the object name")
        affinity = spec.get("affinity")
        if affinity is not None and not isinstance(affinity, str):
            raise ValueError("spec.affinity: expected a string such as host:<node>")
        ordinals = spec.get("allocations") or []
        attributes = spec.get("attributes") or []
        if not isinstance(ordinals, list) or len(ordinals) > cidr.num_addresses:
            raise ValueError(f"spec.allocations: expected at most {cidr.num_addresses} entries")
        allocations: dict[IPAddress, _Slot] = {}
        reserved: set[IPAddress] = set()
        for ordinal, index in enumerate(ordinals):
            if index is None:
                continue
            attr = attributes[int(index)]
            addr = cidr.network_address + ordinal
            if attr.get("handle_id") == RESERVED_HANDLE:
                reserved.add(addr)
                continue
            secondary = attr.get("secondary") or {}
            kind = secondary.get("kind")
            if kind not in ("endpoint", "ipam-plugin", ROUTER_KIND):
                raise ValueError(f"spec.attributes[{index}].secondary.kind: got {kind!r}")
            allocations[addr] = _Slot(
                str(attr["handle_id"]), kind, float(secondary["timestamp"]), str(secondary["node"])
            )
        free = spec.get("unallocated") or []
        nxt = int(free[0]) if free else 0
        pool = next((p.name for p in pools.values() if _holds(p.cidr, cidr)), "")
        rv = obj["metadata"].get("resourceVersion")
        return cls(cidr, pool, affinity, allocations, frozenset(reserved), nxt, rv)

    def to_object(self) -> KubeObject:
        """The block as Calico's IPAMBlock object (with the resourceVersion read, if any)."""
        base = self.cidr.network_address
        attributes: list[dict[str, Any]] = []
        ordinals: list[int | None] = [None] * self.size
        for addr in sorted(self.reserved):
            ordinals[int(addr) - int(base)] = len(attributes)
            attributes.append({"handle_id": RESERVED_HANDLE, "secondary": None})
        for addr, s in sorted(self.allocations.items()):
            ordinals[int(addr) - int(base)] = len(attributes)
            attributes.append(
                {
                    "handle_id": s.owner,
                    "secondary": {"node": s.node, "kind": s.kind, "timestamp": repr(s.created_at)},
                }
            )
        unallocated = [
            (self.next + step) % self.size
            for step in range(self.size)
            if ordinals[(self.next + step) % self.size] is None
        ]
        metadata: dict[str, Any] = {"name": block_name(str(self.cidr))}
        if self.resource_version is not None:
            metadata["resourceVersion"] = self.resource_version
        return {
            "apiVersion": BLOCK_API_VERSION,
            "kind": BLOCK_KIND,
            "metadata": metadata,
            "spec": {
                "cidr": str(self.cidr),
                "affinity": self.affinity,
                "strictAffinity": False,
                "allocations": ordinals,
                "unallocated": unallocated,
                "attributes": attributes,
                "deleted": False,
            },
        }


def _holds(outer: IPNetwork, inner: IPNetwork) -> bool:
    if isinstance(outer, IPv4Network) and isinstance(inner, IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(outer, IPv6Network) and isinstance(inner, IPv6Network):
        return inner.subnet_of(outer)
    return False


def _block_order(block: _Block) -> tuple[str, int, int]:
    return (block.pool, block.cidr.version, int(block.cidr.network_address))


@dataclass
class _View:
    """The datastore as one attempt of an operation read it; changed blocks are written back."""

    pools: dict[str, IPPool]
    config: IPAMConfiguration
    blocks: dict[str, _Block]
    dirty: set[str] = field(default_factory=set)

    def touch(self, block: _Block) -> None:
        self.dirty.add(str(block.cidr))

    def slots(self) -> Iterator[tuple[_Block, IPAddress, _Slot]]:
        for block in self.blocks.values():
            for addr, slot in block.allocations.items():
                yield block, addr, slot


# -- the allocator --------------------------------------------------------------------------


class PoolsIPAM:
    """Allocator of node ``node`` (labelled ``node_labels``, matched by pools' nodeSelector)."""

    def __init__(self, node: str, node_labels: Mapping[str, str], datastore: IPAMDatastore) -> None:
        self._node = node
        self._labels = dict(node_labels)
        self._datastore = datastore
        self._affinity = f"host:{node}"
        self._routers: dict[Family, IPAddress] = {}
        self.conflicts = 0
        """Writes that lost a race and were retried (a measure of contention between nodes)."""

        def routers(view: _View) -> None:
            now = time.time()
            for fam in FAMILIES:
                for block, addr, slot in view.slots():
                    if block.family == fam and self._is_router(slot):
                        self._routers[fam] = addr
                        break
                else:
                    usable = self._default_pools(view, fam)
                    if usable:
                        self._routers[fam] = self._assign(
                            view, fam, usable, owner=router_owner(node), kind=ROUTER_KIND, now=now
                        )

        self._transact(routers)

    # -- the IPAM protocol ------------------------------------------------------------------

    @property
    def mode(self) -> Literal["pools"]:
        return "pools"

    @property
    def node(self) -> str:
        return self._node

    @property
    def router_v4(self) -> IPv4Address | None:
        addr = self._routers.get(4)
        return addr if isinstance(addr, IPv4Address) else None

    @property
    def router_v6(self) -> IPv6Address | None:
        addr = self._routers.get(6)
        return addr if isinstance(addr, IPv6Address) else None

    def allocate(
        self, req: IPAMAllocateRequest, *, pod_annotations: Mapping[str, str] | None = None
    ) -> list[IPAllocation]:
        """``req.pools`` restricts the pools of each family it names a pool of; for a family it
        names none of, the pod's ``cni.projectcalico.org/ipv4pools``/``ipv6pools`` annotation
        does. Requested addresses come from ``req.requested``, else from the pod's
        ``cni.projectcalico.org/ipAddrs`` annotation."""
        annotations = pod_annotations or {}
        requested = (
            list(req.requested) or annotation_list(annotations, REQUESTED_IPS_ANNOTATION) or []
        )
        wanted = wanted_families(
            self._node,
            req,
            requested,
            self._routers,
            "IP pool selecting it",
        )
        before: list[set[IPAddress]] = []  # what the owner held when the request came

        def assign(view: _View) -> list[IPAllocation]:
            restriction = self._restriction(view, req.pools, annotations)
            held = {
                block.family: addr
                for block, addr, slot in view.slots()
                if slot.node == self._node and slot.owner == req.owner
            }
            if not before:
                before.append(set(held.values()))
            todo = reuse_existing(req.owner, held, wanted)
            now = time.time()
            for fam, addr in todo.items():
                if addr is not None:
                    self._assign_requested(
                        view, addr, restriction[fam], owner=req.owner, kind=req.kind, now=now
                    )
                else:
                    pools = self._candidates(view, fam, restriction[fam])
                    self._assign(view, fam, pools, owner=req.owner, kind=req.kind, now=now)
            return self._collect(view, lambda s: s.owner == req.owner)

        try:
            return self._transact(assign)
        except IPAMError:
            # all or nothing: an attempt may have written one family's block before losing the
            # race for the other's, and the retry found that family exhausted
            if before:
                kept = before[0]
                self._release_where(
                    lambda a: a.owner == req.owner and ip_address(a.address) not in kept
                )
            raise

    def release(self, owner: str) -> list[IPAllocation]:
        if owner == router_owner(self._node):
            raise IPAMError(f"{owner} holds the node's router addresses: never released")
        return self._release_where(lambda a: a.owner == owner)

    def allocations(self) -> list[IPAllocation]:
        return self._collect(self._load(), lambda s: True)

    def owned_by(self, owner: str) -> list[IPAllocation]:
        return self._collect(self._load(), lambda s: s.owner == owner)

    def gc(self, keep: Callable[[IPAllocation], bool]) -> list[IPAllocation]:
        """``keep`` may run more than once per allocation (an attempt that lost a race is
        retried): it must be quick, local and free of side effects."""
        return self._release_where(lambda a: a.kind != ROUTER_KIND and not keep(a))

    def listing(self) -> IPAMListing:
        view = self._load()
        used: dict[str, int] = {}
        for block in view.blocks.values():
            used[block.pool] = used.get(block.pool, 0) + len(block.allocations)
        pools = [
            IPPoolStatus(
                name=p.name,
                cidr=str(p.cidr),
                block_size=p.block_size,
                disabled=p.spec.disabled,
                nat_outgoing=p.spec.nat_outgoing,
                node_selector=p.spec.node_selector,
                size=p.cidr.num_addresses,
                used=used.get(p.name, 0),
            )
            for p in sorted(view.pools.values(), key=lambda p: p.name)
        ]
        blocks = [
            IPAMBlockStatus(
                cidr=str(b.cidr),
                pool=b.pool,
                affinity=b.affinity,
                size=b.size,
                used=len(b.allocations),
            )
            for b in sorted(view.blocks.values(), key=_block_order)
        ]
        return IPAMListing(
            mode="pools",
            node=self._node,
            strict_affinity=view.config.spec.strict_affinity,
            pools=pools,
            blocks=blocks,
            allocations=self._collect(view, lambda s: True),
        )

    # -- transactions -----------------------------------------------------------------------

    def _load(self) -> _View:
        pools = load_pools(self._datastore.pools())
        config = ipam_config_from_document(self._datastore.ipam_config())
        blocks: dict[str, _Block] = {}
        for obj in self._datastore.blocks():
            block = _Block.from_object(obj, pools)
            blocks[str(block.cidr)] = block
        return _View(pools, config, blocks)

    def _transact(self, body: Callable[[_View], _T]) -> _T:
        """``body`` on a fresh read, then every block it changed written back (claims created,
        the rest updated with the resourceVersion read); a write that loses a race re-runs the
        whole operation on a fresh read, as Calico's IPAM does. ``body`` must be re-runnable:
        its only effects are on the view (and on what the commit then writes)."""
        for attempt in range(MAX_ATTEMPTS):
            view = self._load()
            result = body(view)
            try:
                for name in sorted(view.dirty):
                    block = view.blocks[name]
                    if block.resource_version is None:
                        self._datastore.create_block(block.to_object())
                    else:
                        self._datastore.update_block(block.to_object())
            except BlockConflictError as err:
                self.conflicts += 1
                log.debug("node %s: %s; retrying (attempt %d)", self._node, err, attempt + 1)
                time.sleep(random.uniform(0, 0.001 * min(attempt, 20)))  # spread the racers
                continue
            return result
        raise IPAMError(
            f"node {self._node}: IPAM blocks kept changing under this node's writes"
            f" ({MAX_ATTEMPTS} attempts lost a race); try again",
            "conflict",
        )

    def _is_router(self, slot: _Slot) -> bool:
        return slot.kind == ROUTER_KIND and slot.owner == router_owner(self._node)

    def _allocation(self, block: _Block, addr: IPAddress, slot: _Slot) -> IPAllocation:
        gateway = self._routers.get(block.family)
        return IPAllocation(
            owner=slot.owner,
            kind=slot.kind,
            family=block.family,
            address=str(addr),
            prefix_len=block.cidr.prefixlen,
            gateway=str(gateway) if gateway is not None else None,
            pool=block.pool,
            block=str(block.cidr),
            created_at=slot.created_at,
        )

    def _collect(self, view: _View, select: Callable[[_Slot], bool]) -> list[IPAllocation]:
        return sort_allocations(
            self._allocation(block, addr, slot)
            for block, addr, slot in view.slots()
            if slot.node == self._node and select(slot)
        )

    def _release_where(self, select: Callable[[IPAllocation], bool]) -> list[IPAllocation]:
        def release(view: _View) -> list[IPAllocation]:
            gone: list[IPAllocation] = []
            for block in view.blocks.values():
                for addr, slot in list(block.allocations.items()):
                    if slot.node != self._node or self._is_router(slot):
                        continue
                    alloc = self._allocation(block, addr, slot)
                    if select(alloc):
                        del block.allocations[addr]
                        view.touch(block)
                        gone.append(alloc)
            return sort_allocations(gone)

        return self._transact(release)

    # -- choosing pools ---------------------------------------------------------------------

    def _default_pools(self, view: _View, fam: Family) -> list[IPPool]:
        """Pools a pod of this node gets addresses from when it names none."""
        return [
            p
            for p in sorted(view.pools.values(), key=lambda p: p.name)
            if p.version == fam
            and not p.spec.disabled
            and "Workload" in p.spec.allowed_uses
            and p.spec.assignment_mode == "Automatic"
            and p.selects(self._labels)
        ]

    def _restriction(
        self, view: _View, explicit: list[str] | None, annotations: Mapping[str, str]
    ) -> dict[Family, list[str] | None]:
        """Per family, the pool names a request is restricted to (None: the default pools):
        the request's pools of that family, else the pod's annotation for that family."""
        out: dict[Family, list[str] | None] = {4: None, 6: None}
        for name in explicit or []:
            self._pool(view, name, "the request")
        annotation_of: dict[Family, str] = {4: IPV4_POOLS_ANNOTATION, 6: IPV6_POOLS_ANNOTATION}
        for fam, key in annotation_of.items():
            names = [n for n in dict.fromkeys(explicit or []) if view.pools[n].version == fam]
            if names:
                out[fam] = names
                continue
            listed = annotation_list(annotations, key)
            if not listed:
                continue
            for name in listed:
                pool = self._pool(view, name, f"pod annotation {key}")
                if pool.version != fam:
                    raise IPAMError(
                        f"{pool.describe()} in pod annotation {key} is not an"
                        f" {family_name(fam)} pool"
                    )
            out[fam] = list(dict.fromkeys(listed))
        return out

    def _pool(self, view: _View, name: str, where: str) -> IPPool:
        pool = view.pools.get(name)
        if pool is None:
            raise IPAMError(f"IP pool {name!r} named in {where} not found", "not-found")
        return pool

    def _check_usable(self, pool: IPPool) -> None:
        """A pool a request names explicitly must be able to serve this node's pods."""
        if pool.spec.disabled:
            raise IPAMError(f"{pool.describe()} is disabled", "disabled")
        if "Workload" not in pool.spec.allowed_uses:
            raise IPAMError(f"{pool.describe()} is not for workloads (allowedUses)")
        if not pool.selects(self._labels):
            raise IPAMError(
                f"{pool.describe()} does not select node {self._node}"
                f" (nodeSelector {pool.spec.node_selector!r})"
            )

    def _candidates(self, view: _View, fam: Family, names: list[str] | None) -> list[IPPool]:
        if names is not None:
            pools = [view.pools[n] for n in names]
            for pool in pools:
                self._check_usable(pool)
            return pools
        pools = self._default_pools(view, fam)
        if not pools:
            selected = [
                p for p in view.pools.values() if p.version == fam and p.selects(self._labels)
            ]
            disabled = bool(selected) and all(p.spec.disabled for p in selected)
            raise IPAMError(
                f"no {'enabled ' if disabled else ''}{family_name(fam)} IP pool is usable by"
                f" node {self._node}",
                "disabled" if disabled else "invalid",
            )
        return pools

    # -- assigning addresses ----------------------------------------------------------------

    def _assign(
        self,
        view: _View,
        fam: Family,
        pools: list[IPPool],
        *,
        owner: str,
        kind: AllocKind,
        now: float,
    ) -> IPAddress:
        """Any free address of ``pools`` for ``owner``: own blocks, a new block, a borrowed one."""
        slot = _Slot(owner, kind, now, self._node)
        host_first = kind == ROUTER_KIND
        order = {p.name: i for i, p in enumerate(pools)}
        blocks = sorted(
            (b for b in view.blocks.values() if b.pool in order and b.family == fam),
            key=lambda b: (order[b.pool], int(b.cidr.network_address)),
        )
        for block in blocks:
            if block.affinity == self._affinity:
                addr = block.free_address(host_first=host_first)
                if addr is not None:
                    return self._take(view, block, addr, slot)
        limit = view.config.spec.max_blocks_per_host
        affine = sum(
            1 for b in view.blocks.values() if b.affinity == self._affinity and b.family == fam
        )
        may_claim = view.config.spec.auto_allocate_blocks and (limit == 0 or affine < limit)
        if may_claim:
            for pool in pools:
                claimed = self._claim(view, pool)
                if claimed is not None:
                    addr = claimed.free_address(host_first=host_first)
                    assert addr is not None, f"claimed {claimed.describe()} has no free address"
                    return self._take(view, claimed, addr, slot)
        if not view.config.spec.strict_affinity:
            for block in blocks:
                if block.affinity != self._affinity:
                    addr = block.free_address(host_first=host_first)
                    if addr is not None:
                        return self._take(view, block, addr, slot)
        if not view.config.spec.auto_allocate_blocks:
            no_block = "autoAllocateBlocks is off"
        elif not may_claim:
            no_block = f"node {self._node} has maxBlocksPerHost={limit} blocks"
        else:
            no_block = "no unclaimed block is left"
        borrow = (
            "strictAffinity forbids borrowing from other nodes' blocks"
            if view.config.spec.strict_affinity
            else "no other node's block has a free address"
        )
        names = ", ".join(f"{p.name!r} ({p.cidr})" for p in pools)
        subject = f"IP pool {names} is" if len(pools) == 1 else f"IP pools {names} are"
        raise IPAMError(
            f"{subject} exhausted for node {self._node}: its blocks are full, {no_block}, {borrow}",
            "exhausted",
        )

    def _take(self, view: _View, block: _Block, addr: IPAddress, slot: _Slot) -> IPAddress:
        block.take(addr, slot)
        view.touch(block)
        return addr

    def _claim(self, view: _View, pool: IPPool) -> _Block | None:
        """Make the lowest block of ``pool`` that no node has, and that has room, this node's."""
        odd_sized = [
            b.cidr
            for b in view.blocks.values()
            if b.family == pool.version and b.cidr.prefixlen != pool.block_size
        ]
        for cidr in pool.cidr.subnets(new_prefix=pool.block_size):
            existing = view.blocks.get(str(cidr))
            if existing is not None:
                if existing.affinity is None and existing.pool == pool.name and not existing.full():
                    existing.affinity = self._affinity
                    view.touch(existing)
                    return existing
                continue
            if any(cidr.overlaps(other) for other in odd_sized):
                continue
            block = _Block(cidr, pool.name, self._affinity)
            view.blocks[str(cidr)] = block
            view.touch(block)
            return block
        return None

    def _assign_requested(
        self,
        view: _View,
        addr: IPAddress,
        names: list[str] | None,
        *,
        owner: str,
        kind: AllocKind,
        now: float,
    ) -> None:
        pool = next(
            (p for p in view.pools.values() if p.version == addr.version and addr in p.cidr),
            None,
        )
        if pool is None:
            raise IPAMError(f"requested address {addr} is not in any IP pool")
        if names is not None and pool.name not in names:
            raise IPAMError(
                f"requested address {addr} is in {pool.describe()}, not in the requested pools"
                f" {', '.join(repr(n) for n in names)}"
            )
        self._check_usable(pool)
        cidr = ip_network(f"{addr}/{pool.block_size}", strict=False)
        block = view.blocks.get(str(cidr))
        if block is None:
            clash = next(
                (
                    b
                    for b in view.blocks.values()
                    if b.family == pool.version and b.cidr.overlaps(cidr)
                ),
                None,
            )
            if clash is not None:
                block = clash
            else:
                block = _Block(cidr, pool.name, self._affinity)
                view.blocks[str(cidr)] = block
        if block.affinity is None:
            block.affinity = self._affinity
        elif block.affinity != self._affinity and view.config.spec.strict_affinity:
            raise IPAMError(
                f"requested address {addr} is in {block.describe()}, affine to"
                f" {block.affinity}; strictAffinity forbids borrowing it",
                "conflict",
            )
        if addr in block.reserved:
            raise IPAMError(f"requested address {addr} is reserved in {block.describe()}")
        holder = block.allocations.get(addr)
        if holder is not None:
            what = "the router" if holder.kind == ROUTER_KIND else f"in use by {holder.owner} on"
            raise IPAMError(
                f"requested address {addr} is already {what} node {holder.node}"
                f" ({block.describe()})",
                "conflict",
            )
        self._take(view, block, addr, _Slot(owner, kind, now, self._node))
