"""The operator's cluster-pool IPAM: each CiliumNode gets its pod CIDRs from the cluster pool.

As cilium-operator's cluster-pool mode (v2) does: the operator owns the cluster's pod CIDR list
(``--cluster-pool-ipv4-cidr``/``--cluster-pool-ipv4-mask-size`` and the IPv6 equivalents) and
writes, per family, one subnet of the mask size into ``spec.ipam.podCIDRs`` of every CiliumNode
that has none; the agent of that node waits for them before it hands out a pod address. A
CiliumNode that already names pod CIDRs (an agent given its range by flag, a lab file that fixes
them, a previous operator) keeps them: they are marked used before anything is allocated, so an
allocation never overlaps them; two nodes that name overlapping CIDRs are reported, never
rewritten. Deleting a CiliumNode frees its CIDRs.

``PodCIDRAllocator`` is the bookkeeping, pure (tested without an API). ``NodeIPAM`` feeds it
from a CiliumNode informer: events only queue a node's name and one worker handles the queue in
order, after the informer has synced (an allocation before the cache knows every node's CIDRs
could hand out one that is taken). Writes replace the object with the resourceVersion read; a
409 re-reads the node and starts over (the node may have got CIDRs meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network

from ciliary.k8s.resources import by_path
from ciliary.kube.client import ApiError, KubeClient, KubeObject
from ciliary.kube.informer import HandlerFuncs, Informer

log = logging.getLogger(__name__)

CILIUM_NODES = by_path("cilium.io", "v2", "ciliumnodes")

Network = IPv4Network | IPv6Network


class ClusterPoolError(ValueError):
    """A cluster pool that cannot be used (the message names the flag and the value)."""


@dataclass(frozen=True)
class ClusterPool:
    """The cluster's pod CIDRs per family and the size of each node's share."""

    ipv4: tuple[Network, ...] = ()
    ipv4_mask: int = 24
    ipv6: tuple[Network, ...] = ()
    ipv6_mask: int = 112

    def __post_init__(self) -> None:
        for family, cidrs, mask, bits in (
            ("ipv4", self.ipv4, self.ipv4_mask, 32),
            ("ipv6", self.ipv6, self.ipv6_mask, 128),
        ):
            if not 0 < mask <= bits:
                raise ClusterPoolError(
                    f"--cluster-pool-{family}-mask-size: {mask} is not 1..{bits}"
                )
            for cidr in cidrs:
                if cidr.prefixlen > mask:
                    raise ClusterPoolError(
                        f"--cluster-pool-{family}-mask-size {mask} is larger than {cidr}: a node"
                        " CIDR must fit in the pool"
                    )

    @property
    def enabled(self) -> bool:
        return bool(self.ipv4 or self.ipv6)

    def shares(self) -> list[tuple[int, Sequence[Network], int]]:
        """(family, pool CIDRs, mask) of each enabled family."""
        out: list[tuple[int, Sequence[Network], int]] = []
        if self.ipv4:
            out.append((4, self.ipv4, self.ipv4_mask))
        if self.ipv6:
            out.append((6, self.ipv6, self.ipv6_mask))
        return out


def parse_cidrs(text: str, family: int, flag: str) -> list[Network]:
    """A comma-separated CIDR list of one family (``--cluster-pool-ipv4-cidr``)."""
    out: list[Network] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        try:
            net = ip_network(item)
        except ValueError as err:
            raise ClusterPoolError(f"{flag}: {item!r} is not a CIDR ({err})") from err
        if net.version != family:
            raise ClusterPoolError(f"{flag}: {item} is not an IPv{family} CIDR")
        out.append(net)
    return out


def pod_cidrs(obj: KubeObject) -> list[str]:
    return list(((obj.get("spec") or {}).get("ipam") or {}).get("podCIDRs") or [])


@dataclass
class PodCIDRAllocator:
    """Which node holds which CIDRs; hands out the lowest free subnet per family."""

    pool: ClusterPool
    held: dict[str, list[Network]] = field(default_factory=dict)

    def occupy(self, node: str, cidrs: Iterable[str]) -> list[str]:
        """Record ``node``'s CIDRs (whoever chose them); the problems (overlaps with another
        node's, unparsable entries) are returned, and only the sound CIDRs recorded."""
        problems: list[str] = []
        mine: list[Network] = []
        for text in cidrs:
            try:
                net = ip_network(text)
            except ValueError:
                problems.append(f"CiliumNode {node}: spec.ipam.podCIDRs has {text!r}, not a CIDR")
                continue
            other = self._holder(net, skip=node)
            if other is not None:
                problems.append(
                    f"CiliumNode {node}: pod CIDR {net} overlaps {other[1]} of CiliumNode"
                    f" {other[0]}"
                )
                continue
            mine.append(net)
        self.held[node] = mine
        return problems

    def allocate(self, node: str) -> list[str]:
        """One free subnet per enabled family for ``node`` (recorded); ``ClusterPoolError`` when
        a family is exhausted (nothing recorded then)."""
        got: list[Network] = []
        for family, cidrs, mask in self.pool.shares():
            free = self._lowest_free(cidrs, mask)
            if free is None:
                names = ", ".join(str(c) for c in cidrs)
                raise ClusterPoolError(
                    f"cluster pool IPv{family} {names} is exhausted: no /{mask} left for"
                    f" CiliumNode {node}"
                )
            got.append(free)
        self.held[node] = got
        return [str(n) for n in got]

    def release(self, node: str) -> None:
        self.held.pop(node, None)

    def _holder(self, net: Network, skip: str | None = None) -> tuple[str, Network] | None:
        for other, nets in self.held.items():
            if other == skip:
                continue
            for held in nets:
                if held.version == net.version and held.overlaps(net):
                    return other, held
        return None

    def _lowest_free(self, cidrs: Sequence[Network], mask: int) -> Network | None:
        for cidr in cidrs:
            for subnet in cidr.subnets(new_prefix=mask):
                if self._holder(subnet) is None:
                    return subnet
        return None


class NodeIPAM:
    """Keeps every CiliumNode's ``spec.ipam.podCIDRs`` allocated from ``pool``."""

    def __init__(self, client: KubeClient, pool: ClusterPool) -> None:
        self.client = client
        self.allocator = PodCIDRAllocator(pool)
        self.informer = Informer(client, CILIUM_NODES, name="operator-ciliumnodes")
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self.informer.add_handler(
            HandlerFuncs(
                add=lambda obj: self._queue.put_nowait(obj["metadata"]["name"]),
                update=lambda _old, new: self._queue.put_nowait(new["metadata"]["name"]),
                delete=lambda obj: self._queue.put_nowait(obj["metadata"]["name"]),
            )
        )
        self.written = 0  # podCIDRs writes made (tests and logs)

    async def run(self) -> None:
        self.informer.start()
        try:
            await self.informer.wait_synced()
            # every CIDR already named is taken before anything is allocated
            for obj in self.informer.store.objects():
                self._occupy(obj)
            while True:
                name = await self._queue.get()
                try:
                    await self._sync(name)
                except ApiError as err:
                    log.warning("CiliumNode %s: %s; retrying", name, err)
                    await asyncio.sleep(1.0)
                    self._queue.put_nowait(name)
        finally:
            await self.informer.stop()

    def _occupy(self, obj: KubeObject) -> None:
        name = str(obj["metadata"]["name"])
        for problem in self.allocator.occupy(name, pod_cidrs(obj)):
            log.error("%s (left as it is)", problem)

    async def _sync(self, name: str) -> None:
        obj = self.informer.store.get(name)
        while True:
            if obj is None:
                self.allocator.release(name)
                return
            if pod_cidrs(obj):
                self._occupy(obj)
                return
            try:
                cidrs = self.allocator.allocate(name)
            except ClusterPoolError as err:
                log.error("%s", err)
                return
            spec = dict(obj.get("spec") or {})
            spec["ipam"] = {**(spec.get("ipam") or {}), "podCIDRs": cidrs}
            try:
                await self.client.replace(CILIUM_NODES, {**obj, "spec": spec})
            except ApiError as err:
                self.allocator.release(name)
                if not (err.conflict or err.not_found):
                    raise
                obj = await self._get(name)  # changed meanwhile: look again
                continue
            self.written += 1
            log.info("CiliumNode %s: allocated pod CIDRs %s", name, ", ".join(cidrs))
            return

    async def _get(self, name: str) -> KubeObject | None:
        try:
            return await self.client.get(CILIUM_NODES, name)
        except ApiError as err:
            if err.not_found:
                return None
            raise
