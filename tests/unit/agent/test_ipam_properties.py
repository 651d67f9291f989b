"""Random sequences of allocate / request / release / gc / restart against a reference model.

For both modes: an address is never held twice, routers and reserved addresses are never handed
out, release returns what the owner held, a restarted IPAM sees exactly the persisted
allocations, and allocation fails with ``exhausted`` exactly when the family is at capacity.
Pools mode runs two nodes on one datastore (borrowing between them included).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any

from hypothesis import given, settings, target
from hypothesis import strategies as st

from ciliary.agent.ipam import IPAM, ClusterPoolIPAM, IPAMError, PoolsIPAM, router_owner
from ciliary.agent.ipam.datastore import MemoryDatastore
from ciliary.agent.ipam.types import IPAddress, IPNetwork
from ciliary.core.models import IPAllocation, IPAMAllocateRequest

OWNERS = 12


@dataclass
class Harness:
    """The IPAMs under test plus what the model needs to know about their address space."""

    make: Callable[[int], IPAM]
    ranges: dict[int, IPNetwork]
    reserved: set[IPAddress]  # besides routers: never handed out
    nodes: int
    ipams: list[IPAM] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ipams = [self.make(i) for i in range(self.nodes)]

    def routers(self) -> set[IPAddress]:
        out: set[IPAddress] = set()
        for ipam in self.ipams:
            out |= {r for r in (ipam.router_v4, ipam.router_v6) if r is not None}
        return out

    def capacity(self, fam: int) -> int:
        rng = self.ranges[fam]
        blocked = [a for a in self.reserved | self.routers() if a in rng]
        return rng.num_addresses - len(blocked)


def cluster_pool(root: Path) -> Harness:
    v4, v6 = IPv4Network("10.200.0.0/29"), IPv6Network("fd00::/125")
    return Harness(
        make=lambda i: ClusterPoolIPAM("node1", v4, v6, root / "ipam.json"),
        ranges={4: v4, 6: v6},
        reserved={ip_address("10.200.0.0"), ip_address("10.200.0.7"), ip_address("fd00::")},
        nodes=1,
    )


def pools(root: Path) -> Harness:
    store = MemoryDatastore()
    # IPv4: two blocks, both claimed by the routers, so a node outgrowing its block borrows;
    # IPv6: four blocks, claimed on demand
    for name, cidr, size in (("v4", "10.0.0.0/28", 29), ("v6", "fd00::/124", 126)):
        store.put_pool({"metadata": {"name": name}, "spec": {"cidr": cidr, "blockSize": size}})
    # an unclaimed block with reserved addresses (.9 and .12), as an admin would pre-create it
    store.create_block(
        {"apiVersion": "crd.projectcalico.org/v1", "kind": "IPAMBlock",
         "metadata": {"name": "10-0-0-8-29"},
         "spec": {"cidr": "10.0.0.8/29", "affinity": None,
                  "allocations": [None, 0, None, None, 0, None, None, None],
                  "unallocated": [0, 2, 3, 5, 6, 7],
                  "attributes": [{"handle_id": "ipam-reserved", "secondary": None}]}}
    )  # fmt: skip
    return Harness(
        make=lambda i: PoolsIPAM(f"n{i}", {}, store),
        ranges={4: IPv4Network("10.0.0.0/28"), 6: IPv6Network("fd00::/124")},
        reserved={ip_address("10.0.0.9"), ip_address("10.0.0.12")},
        nodes=2,
    )


_node = st.sampled_from([0, 0, 0, 1])  # mostly one node, so that it outgrows its blocks
_owner = st.sampled_from(range(OWNERS))
# gc keeps all but a few owners (keeping few would empty the node every time)
_keep = st.frozensets(_owner, max_size=3).map(lambda drop: frozenset(range(OWNERS)) - drop)
_op_of_kind: dict[str, st.SearchStrategy[tuple[Any, ...]]] = {
    "alloc": st.tuples(st.just("alloc"), _node, _owner, st.sampled_from([None, [4], [6], [4, 6]])),
    "request": st.tuples(
        st.just("request"), _node, _owner, st.sampled_from([4, 6]), st.integers(0, 17)
    ),
    "release": st.tuples(st.just("release"), _node, _owner),
    "gc": st.tuples(st.just("gc"), _node, _keep),
    "restart": st.tuples(st.just("restart"), _node),
}
# allocations dominate, so that pools often run full and node 0 outgrows its block
_kinds = ["alloc"] * 6 + ["request"] * 2 + ["release", "gc", "restart"]
_ops = st.lists(st.sampled_from(_kinds).flatmap(_op_of_kind.__getitem__), min_size=10, max_size=50)


Model = dict[tuple[int, str], dict[int, IPAddress]]


def owner_name(i: int) -> str:
    return f"pod{i}/eth0"


def check(h: Harness, model: Model) -> None:
    seen: dict[IPAddress, str] = {}
    routers = h.routers()
    for node, ipam in enumerate(h.ipams):
        allocs = ipam.allocations()
        mine: Model = {}
        for a in allocs:
            addr = ip_address(a.address)
            assert addr not in seen, f"{addr} held by {seen[addr]} and {a.owner}"
            seen[addr] = a.owner
            assert addr in h.ranges[a.family]
            assert a.block is not None and addr in ip_network(a.block)
            assert a.prefix_len == ip_network(a.block).prefixlen
            assert addr not in h.reserved
            if a.kind == "router":
                assert a.owner == router_owner(ipam.node) and addr in routers
                continue
            assert addr not in routers
            assert a.gateway == str(ipam.router_v4 if a.family == 4 else ipam.router_v6)
            mine.setdefault((node, a.owner), {})[a.family] = addr
        assert mine == {k: v for k, v in model.items() if k[0] == node and v}


def keeping(owners: set[str]) -> Callable[[IPAllocation], bool]:
    return lambda a: a.owner in owners


def used(model: Model, fam: int) -> set[IPAddress]:
    return {held[fam] for held in model.values() if fam in held}


def as_model(allocs: list[IPAllocation]) -> dict[int, IPAddress]:
    return {a.family: ip_address(a.address) for a in allocs}


def run(h: Harness, ops: list[tuple[Any, ...]]) -> None:
    model: Model = {}
    peak = {4: 0, 6: 0}
    check(h, model)
    for op in ops:
        node = min(op[1], h.nodes - 1)
        ipam = h.ipams[node]
        if op[0] == "alloc":
            _, _, o, families = op
            key = (node, owner_name(o))
            held = model.get(key, {})
            wanted = families or [4, 6]
            full = [f for f in wanted if f not in held and len(used(model, f)) >= h.capacity(f)]
            request = IPAMAllocateRequest(owner=owner_name(o), families=families)
            if full:
                try:
                    ipam.allocate(request)
                except IPAMError as err:
                    assert err.kind == "exhausted", err
                else:
                    raise AssertionError(f"allocated beyond capacity of IPv{full[0]}")
            else:
                got = as_model(ipam.allocate(request))
                for fam, addr in got.items():
                    if fam in held:
                        assert held[fam] == addr  # idempotent
                    else:
                        assert addr not in used(model, fam)
                assert set(got) == set(held) | set(wanted)
                model[key] = got
        elif op[0] == "request":
            _, _, o, fam, offset = op
            key = (node, owner_name(o))
            held = model.get(key, {})
            addr = h.ranges[fam].network_address + offset
            request = IPAMAllocateRequest(
                owner=owner_name(o), families=[fam], requested=[str(addr)]
            )
            ok = (held.get(fam) == addr) or (
                fam not in held
                and addr in h.ranges[fam]
                and addr not in h.reserved | h.routers()
                and addr not in used(model, fam)
            )
            if ok:
                got = as_model(ipam.allocate(request))
                assert got[fam] == addr and got == {**held, fam: addr}
                model[key] = got
            else:
                try:
                    ipam.allocate(request)
                except IPAMError as err:
                    assert err.kind in ("invalid", "conflict"), err
                else:
                    raise AssertionError(f"{addr} handed out to {key} although unavailable")
        elif op[0] == "release":
            key = (node, owner_name(op[2]))
            assert as_model(ipam.release(owner_name(op[2]))) == model.pop(key, {})
        elif op[0] == "gc":
            keep = {owner_name(o) for o in op[2]}
            gone = ipam.gc(keeping(keep))
            expected = {
                (k[1], f, a)
                for k, held in model.items()
                if k[0] == node and k[1] not in keep
                for f, a in held.items()
            }
            assert {(a.owner, a.family, ip_address(a.address)) for a in gone} == expected
            for k in [k for k in model if k[0] == node and k[1] not in keep]:
                del model[k]
        else:
            before = ipam.allocations()
            h.ipams[node] = h.make(node)
            assert h.ipams[node].allocations() == before
            assert h.ipams[node].router_v4 == ipam.router_v4
            assert h.ipams[node].router_v6 == ipam.router_v6
        check(h, model)
        for fam in (4, 6):
            peak[fam] = max(peak[fam], sum(fam in v for k, v in model.items() if k[0] == 0))
    for fam in (4, 6):  # steer generation towards one node holding much (it must borrow)
        target(float(peak[fam]), label=f"addresses held on node 0, IPv{fam}")
    for i in range(h.nodes):  # the final state reloads as it is
        assert h.make(i).allocations() == h.ipams[i].allocations()


@settings(max_examples=60, deadline=None)
@given(_ops)
def test_cluster_pool_model(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run(cluster_pool(Path(tmp)), ops)


@settings(max_examples=40, deadline=None)
@given(_ops)
def test_pools_model(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run(pools(Path(tmp)), ops)


def test_exhaustion_exactly_at_capacity_both_modes() -> None:
    for factory in (cluster_pool, pools):
        with tempfile.TemporaryDirectory() as tmp:
            h = factory(Path(tmp))
            for fam in (4, 6):
                handed = 0
                while True:
                    ipam = h.ipams[0]  # one node takes all: it must borrow in pools mode
                    try:
                        (got,) = ipam.allocate(
                            IPAMAllocateRequest(owner=f"f{fam}x{handed}/eth0", families=[fam])
                        )
                    except IPAMError as err:
                        assert err.kind == "exhausted"
                        break
                    assert ip_address(got.address) not in h.reserved | h.routers()
                    handed += 1
                assert handed == h.capacity(fam), (factory.__name__, fam)
