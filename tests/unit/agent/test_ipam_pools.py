"""Calico-model IPAM: pools, node-affine blocks, borrowing, annotations, persistence."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest

from ciliary.agent.ipam import (
    IPAM,
    IPAMError,
    PoolsIPAM,
    ipam_config_from_document,
    load_pools,
    pool_from_document,
    router_owner,
)
from ciliary.agent.ipam.datastore import MemoryDatastore
from ciliary.agent.main import main as agent_main
from ciliary.core.models import IPAllocation, IPAMAllocateRequest
from ciliary.k8s.calico import (
    IPV4_POOLS_ANNOTATION,
    IPV6_POOLS_ANNOTATION,
    REQUESTED_IPS_ANNOTATION,
    IPAMConfiguration,
)


def req(owner: str, **kw: object) -> IPAMAllocateRequest:
    return IPAMAllocateRequest.model_validate({"owner": owner, **kw})


def pool_doc(name: str, cidr: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": name},
        "spec": {"cidr": cidr, **spec},
    }


def add_pool(store: MemoryDatastore, name: str, cidr: str, **spec: Any) -> None:
    store.put_pool(pool_doc(name, cidr, **spec))


def set_config(store: MemoryDatastore, **spec: Any) -> None:
    store.put_config({"metadata": {"name": "default"}, "spec": spec})


def addrs(allocs: list[IPAllocation]) -> list[str]:
    return [a.address for a in allocs]


@pytest.fixture
def store() -> MemoryDatastore:
    return MemoryDatastore()


@pytest.fixture
def dual(store: MemoryDatastore) -> MemoryDatastore:
    """A /28 and a /124 pool in /30 and /126 blocks: 4 blocks of 4 addresses per family."""
    add_pool(store, "v4", "10.0.0.0/28", blockSize=30)
    add_pool(store, "v6", "fd00::/124", blockSize=126)
    return store


# -- pool documents --------------------------------------------------------------------------


def test_pool_defaults() -> None:
    v4 = pool_from_document("p", pool_doc("p", "10.1.0.0/16"))
    v6 = pool_from_document("q", {"spec": {"cidr": "fd00:1::/48"}})  # the store key names it
    assert (v4.version, v4.block_size, v4.spec.node_selector, v4.spec.disabled) == (
        4,
        26,
        "all()",
        False,
    )
    assert (v6.version, v6.block_size, v6.name) == (6, 122, "q")
    assert not v4.spec.nat_outgoing
    again = pool_from_document("p", v4.to_calico_json())
    assert again == v4
    assert again.to_calico_json() == v4.to_calico_json()


INVALID = "IP pool 'p' is invalid"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (pool_doc("p", "10.0.0.0/33"), f"{INVALID}: spec.cidr: expected an IPv4 or IPv6 CIDR"),
        (pool_doc("p", "10.0.0.1/24"), "got '10.0.0.1/24' (10.0.0.1/24 has host bits set)"),
        (
            pool_doc("p", "10.0.0.0/16", blockSize=19),
            f"{INVALID}: spec.blockSize: expected a block size between 20 and 32 for an IPv4"
            " pool, got int 19",
        ),
        (
            pool_doc("p", "fd00::/64", blockSize=112),
            "expected a block size between 116 and 128 for an IPv6 pool, got int 112",
        ),
        (
            pool_doc("p", "10.0.0.0/28", blockSize=26),
            f"{INVALID}: spec.blockSize: expected a block size of at least the pool's prefix"
            " length 28",
        ),
        (
            pool_doc("p", "10.0.0.0/24", nodeSelector="zone =="),
            f"{INVALID}: spec.nodeSelector: expected a Calico selector",
        ),
        (pool_doc("q", "10.0.0.0/24"), f"{INVALID}: metadata.name is 'q'"),
        (
            pool_doc("p", "10.0.0.0/24", ipipMode="Always", vxlanMode="Always"),
            f"{INVALID}: spec.vxlanMode: ipipMode and vxlanMode cannot both be enabled",
        ),
        (
            pool_doc("p", "fd00::/64", ipipMode="Always"),
            f"{INVALID}: spec.ipipMode: expected Never for an IPv6 pool (IPIP carries IPv4 only",
        ),
        (pool_doc("p", "169.254.0.0/24"), "link-local"),
        (pool_doc("p", "10.0.0.0/24", blokSize=26), f"{INVALID}: spec.blokSize: unknown field"),
        (pool_doc("p", "10.0.0.0/24", vxlanMode="Sometimes"), f"{INVALID}: spec.vxlanMode"),
        ({"kind": "IPPool"}, f"{INVALID}: spec: required field is missing"),
    ],
)
def test_bad_pools_are_named(doc: dict[str, Any], message: str) -> None:
    """The agent reads pools with the lab's model, so it says what the lab says."""
    with pytest.raises(IPAMError) as info:
        pool_from_document("p", doc)
    assert message in str(info.value)
    assert "IP pool 'p'" in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.kind == "invalid"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        # formerly accepted by the agent, refused by the lab: now refused by both
        (pool_doc("p", "10.0.0.0/24") | {"metadata": {"name": "P_1"}}, "metadata.name"),
        (pool_doc("p", "fd00::%eth0/64"), "(a pool has no zone)"),
        (pool_doc("p", "10.0.0.0/24", nodeSelector="_zone == 'a'"), "expected a label key"),
        (pool_doc("p", "10.0.0.0/24", nodeSelector="(" * 65 + "all()" + ")" * 65), "nested"),
        (pool_doc("p", "10.0.0.0/24", allowedUses=[]), "spec.allowedUses: expected at least 1"),
        (pool_doc("p", "10.0.0.0/24", natOutgoing="true"), "expected true or false"),
    ],
)
def test_former_disagreements_are_refused(doc: dict[str, Any], message: str) -> None:
    name = str(doc["metadata"]["name"])
    with pytest.raises(IPAMError, match=f"IP pool '{name}' is invalid") as info:
        pool_from_document(name, doc)
    assert message in str(info.value)


def test_calico_fields_the_lab_used_to_refuse_are_read() -> None:
    """disableBGPExport, the LoadBalancer use and Calico's CRD storage group are Calico's."""
    doc = pool_doc("p", "10.0.0.0/24", disableBGPExport=True, allowedUses=["LoadBalancer"])
    doc["apiVersion"] = "crd.projectcalico.org/v1"
    pool = pool_from_document("p", doc)
    assert pool.spec.disable_bgp_export and not pool.for_workloads


def test_overlapping_pools_are_refused() -> None:
    docs = {"a": pool_doc("a", "10.0.0.0/16"), "b": pool_doc("b", "10.0.128.0/24")}
    with pytest.raises(IPAMError, match=r"IP pool 'a' \(10.0.0.0/16\) and IP pool 'b'.* overlap"):
        load_pools(docs)


def test_ipam_config_defaults_and_validation(store: MemoryDatastore) -> None:
    defaults = ipam_config_from_document(None)
    assert (defaults.spec.strict_affinity, defaults.spec.max_blocks_per_host) == (False, 20)
    assert defaults.spec.auto_allocate_blocks
    cfg = ipam_config_from_document({"spec": {"strictAffinity": True, "maxBlocksPerHost": 3}})
    assert (cfg.spec.strict_affinity, cfg.spec.max_blocks_per_host) == (True, 3)
    assert ipam_config_from_document(cfg.to_calico_json()) == cfg
    assert isinstance(cfg, IPAMConfiguration)
    with pytest.raises(IPAMError, match=r"'default' is invalid: spec\.maxBlocksPerHost"):
        ipam_config_from_document({"spec": {"maxBlocksPerHost": -1}})
    # Calico reads one configuration, named default (the agent used to take any name)
    with pytest.raises(IPAMError, match=r"metadata\.name: expected 'default'"):
        ipam_config_from_document({"metadata": {"name": "other"}, "spec": {}})


def test_invalid_pool_in_store_fails_allocation_clearly(dual: MemoryDatastore) -> None:
    ipam = PoolsIPAM("n1", {}, dual)
    dual.put_pool(pool_doc("bad", "10.9.0.0/24", blockSize=40))
    with pytest.raises(IPAMError, match=r"IP pool 'bad' is invalid: spec\.blockSize: expected"):
        ipam.allocate(req("c1/eth0"))


# -- routers and blocks ----------------------------------------------------------------------


def test_routers_claim_the_first_block(dual: MemoryDatastore) -> None:
    ipam: IPAM = PoolsIPAM("n1", {}, dual)
    assert ipam.mode == "pools"
    assert ipam.router_v4 == IPv4Address("10.0.0.1")
    assert ipam.router_v6 == IPv6Address("fd00::1")
    other = PoolsIPAM("n2", {}, dual)
    assert other.router_v4 == IPv4Address("10.0.0.5")
    blocks = {b.cidr: b.affinity for b in ipam.listing().blocks}
    assert blocks == {
        "10.0.0.0/30": "host:n1",
        "10.0.0.4/30": "host:n2",
        "fd00::/126": "host:n1",
        "fd00::4/126": "host:n2",
    }
    routers = ipam.owned_by(router_owner("n1"))
    assert [(a.address, a.kind, a.prefix_len, a.pool) for a in routers] == [
        ("10.0.0.1", "router", 30, "v4"),
        ("fd00::1", "router", 126, "v6"),
    ]


def test_restart_keeps_router_and_allocations(dual: MemoryDatastore) -> None:
    ipam = PoolsIPAM("n1", {}, dual)
    ipam.allocate(req("c1/eth0"))
    again = PoolsIPAM("n1", {}, dual)
    assert (again.router_v4, again.router_v6) == (ipam.router_v4, ipam.router_v6)
    assert again.allocations() == ipam.allocations()
    assert len(again.listing().blocks) == 2


def test_node_selector_picks_pools(store: MemoryDatastore) -> None:
    add_pool(store, "east", "10.1.0.0/24", nodeSelector='zone == "east"', blockSize=28)
    add_pool(store, "west", "10.2.0.0/24", nodeSelector='zone == "west"', blockSize=28)
    add_pool(store, "v6east", "fd00::/120", nodeSelector='zone in {"east"}', blockSize=124)
    east = PoolsIPAM("e1", {"zone": "east"}, store)
    west = PoolsIPAM("w1", {"zone": "west"}, store)
    assert str(east.router_v4) == "10.1.0.1" and str(east.router_v6) == "fd00::1"
    assert str(west.router_v4) == "10.2.0.1" and west.router_v6 is None
    assert [a.pool for a in east.allocate(req("c1/eth0"))] == ["east", "v6east"]
    assert [a.pool for a in west.allocate(req("c1/eth0"))] == ["west"]
    with pytest.raises(IPAMError, match="node w1 has no IPv6 IP pool selecting it") as info:
        west.allocate(req("c2/eth0", families=[6]))
    assert info.value.kind == "invalid"
    nowhere = PoolsIPAM("x1", {}, store)
    assert nowhere.router_v4 is None and nowhere.router_v6 is None
    with pytest.raises(IPAMError, match="node x1 has no IP pool selecting it in any family"):
        nowhere.allocate(req("c1/eth0"))


def test_fills_own_blocks_then_claims_lowest_free_block(dual: MemoryDatastore) -> None:
    n1 = PoolsIPAM("n1", {}, dual)
    PoolsIPAM("n2", {}, dual)  # takes 10.0.0.4/30
    got = [addrs(n1.allocate(req(f"c{i}/eth0", families=[4])))[0] for i in range(4)]
    # .1 is the router; then .2 .3, the block's network address .0, then the next free block
    assert got == ["10.0.0.2", "10.0.0.3", "10.0.0.0", "10.0.0.8"]
    alloc = n1.owned_by("c3/eth0")[0]
    assert (alloc.block, alloc.prefix_len, alloc.gateway) == ("10.0.0.8/30", 30, "10.0.0.1")
    affinity = {b.cidr: b.affinity for b in n1.listing().blocks if ":" not in b.cidr}
    assert affinity == {
        "10.0.0.0/30": "host:n1",
        "10.0.0.4/30": "host:n2",
        "10.0.0.8/30": "host:n1",
    }


def test_borrows_when_pool_has_no_free_block(dual: MemoryDatastore) -> None:
    n1 = PoolsIPAM("n1", {}, dual)
    n2 = PoolsIPAM("n2", {}, dual)
    # n1: 3 in its first block + 4 + 4 in the two remaining blocks = 11 pod addresses
    own = [addrs(n1.allocate(req(f"c{i}/eth0", families=[4])))[0] for i in range(11)]
    assert all(not a.startswith("10.0.0.") or int(a.split(".")[3]) not in (4, 5, 6, 7) for a in own)
    borrowed = n1.allocate(req("b1/eth0", families=[4]))
    assert borrowed[0].block == "10.0.0.4/30" and borrowed[0].gateway == "10.0.0.1"
    assert borrowed[0].address in {"10.0.0.4", "10.0.0.6", "10.0.0.7"}
    # a borrowed address is n1's, not n2's
    assert borrowed[0] in n1.allocations()
    assert all(a.owner != "b1/eth0" for a in n2.allocations())
    n1.allocate(req("b2/eth0", families=[4]))
    n2.allocate(req("d1/eth0", families=[4]))  # n2's last address in its own block
    with pytest.raises(IPAMError) as info:
        n1.allocate(req("b3/eth0", families=[4]))
    assert info.value.kind == "exhausted"
    assert "IP pool 'v4' (10.0.0.0/28) is exhausted for node n1" in str(info.value)
    assert n1.release("b1/eth0") == borrowed
    assert addrs(n1.allocate(req("b3/eth0", families=[4]))) == [borrowed[0].address]


def test_strict_affinity_never_borrows(dual: MemoryDatastore) -> None:
    set_config(dual, strictAffinity=True)
    n1 = PoolsIPAM("n1", {}, dual)
    PoolsIPAM("n2", {}, dual)
    for i in range(11):
        n1.allocate(req(f"c{i}/eth0", families=[4]))
    with pytest.raises(IPAMError, match="strictAffinity forbids borrowing") as info:
        n1.allocate(req("b1/eth0", families=[4]))
    assert info.value.kind == "exhausted"
    assert n1.listing().strict_affinity
    with pytest.raises(IPAMError, match="affine to host:n2; strictAffinity forbids") as info:
        n1.allocate(req("b1/eth0", requested=["10.0.0.6"]))
    assert info.value.kind == "conflict"


def test_max_blocks_per_host_then_borrow(dual: MemoryDatastore) -> None:
    set_config(dual, maxBlocksPerHost=1)
    n1 = PoolsIPAM("n1", {}, dual)
    n2 = PoolsIPAM("n2", {}, dual)
    for i in range(3):
        n1.allocate(req(f"c{i}/eth0", families=[4]))
    (b,) = n1.allocate(req("b/eth0", families=[4]))
    assert b.block == "10.0.0.4/30"  # borrowed from n2 rather than claiming a 2nd block
    assert n2.router_v4 == IPv4Address("10.0.0.5")
    set_config(dual, maxBlocksPerHost=1, strictAffinity=True)
    with pytest.raises(IPAMError, match="node n1 has maxBlocksPerHost=1 blocks"):
        n1.allocate(req("c9/eth0", families=[4]))


def test_pools_tried_in_name_order(store: MemoryDatastore) -> None:
    add_pool(store, "b", "10.2.0.0/30", blockSize=30)
    add_pool(store, "a", "10.1.0.0/30", blockSize=30)
    n1 = PoolsIPAM("n1", {}, store)
    assert str(n1.router_v4) == "10.1.0.1"
    got = [n1.allocate(req(f"c{i}/eth0"))[0].pool for i in range(7)]
    assert got == ["a", "a", "a", "b", "b", "b", "b"]
    with pytest.raises(IPAMError, match=r"IP pools 'a' \(10.1.0.0/30\), 'b' \(10.2.0.0/30\) are"):
        n1.allocate(req("c9/eth0"))


def test_dual_stack_all_or_nothing(store: MemoryDatastore) -> None:
    add_pool(store, "v4", "10.0.0.0/24", blockSize=28)
    add_pool(store, "v6", "fd00::/126", blockSize=126)  # router + 3 pods
    n1 = PoolsIPAM("n1", {}, store)
    for i in range(3):
        assert len(n1.allocate(req(f"c{i}/eth0"))) == 2
    before = (n1.allocations(), {b.cidr: b.used for b in n1.listing().blocks})
    with pytest.raises(IPAMError, match=r"IP pool 'v6' \(fd00::/126\) is exhausted"):
        n1.allocate(req("c3/eth0"))
    assert (n1.allocations(), {b.cidr: b.used for b in n1.listing().blocks}) == before
    assert addrs(n1.allocate(req("c3/eth0", families=[4]))) == ["10.0.0.5"]


# -- requests and annotations ----------------------------------------------------------------


@pytest.fixture
def colors(store: MemoryDatastore) -> MemoryDatastore:
    add_pool(store, "a-default", "10.0.0.0/24", blockSize=28)
    add_pool(store, "blue", "10.1.0.0/24", blockSize=28)
    add_pool(store, "blue6", "fd01::/120", blockSize=124)
    add_pool(store, "a-default6", "fd00::/120", blockSize=124)
    add_pool(store, "off", "10.2.0.0/24", disabled=True)
    add_pool(store, "manual", "10.3.0.0/24", blockSize=28, assignmentMode="Manual")
    add_pool(store, "elsewhere", "10.4.0.0/24", nodeSelector='zone == "far"')
    return store


def test_default_pools_skip_disabled_and_manual(colors: MemoryDatastore) -> None:
    n1 = PoolsIPAM("n1", {}, colors)
    assert str(n1.router_v4) == "10.0.0.1" and str(n1.router_v6) == "fd00::1"
    assert [a.pool for a in n1.allocate(req("c1/eth0"))] == ["a-default", "a-default6"]


def test_explicit_pools(colors: MemoryDatastore) -> None:
    n1 = PoolsIPAM("n1", {}, colors)
    got = n1.allocate(req("c1/eth0", pools=["blue"]))
    assert [(a.pool, a.gateway) for a in got] == [("blue", "10.0.0.1"), ("a-default6", "fd00::1")]
    got = n1.allocate(req("c2/eth0", pools=["blue6", "manual"]))
    assert [a.pool for a in got] == ["manual", "blue6"]


@pytest.mark.parametrize(
    ("pools", "kind", "message"),
    [
        (["nope"], "not-found", "IP pool 'nope' named in the request not found"),
        (["off"], "disabled", "IP pool 'off' (10.2.0.0/24) is disabled"),
        (["elsewhere"], "invalid", "does not select node n1 (nodeSelector 'zone == \"far\"')"),
    ],
)
def test_explicit_pool_errors(
    colors: MemoryDatastore, pools: list[str], kind: str, message: str
) -> None:
    n1 = PoolsIPAM("n1", {}, colors)
    with pytest.raises(IPAMError) as info:
        n1.allocate(req("c1/eth0", pools=pools))
    assert info.value.kind == kind
    assert message in str(info.value)


def test_pool_annotations(colors: MemoryDatastore) -> None:
    n1 = PoolsIPAM("n1", {}, colors)
    ann = {IPV4_POOLS_ANNOTATION: '["blue"]', IPV6_POOLS_ANNOTATION: '["blue6"]'}
    assert [a.pool for a in n1.allocate(req("c1/eth0"), pod_annotations=ann)] == [
        "blue",
        "blue6",
    ]
    # explicit pools win over the annotation of their family
    got = n1.allocate(req("c2/eth0", pools=["a-default"]), pod_annotations=ann)
    assert [a.pool for a in got] == ["a-default", "blue6"]


@pytest.mark.parametrize(
    ("ann", "kind", "message"),
    [
        ({IPV4_POOLS_ANNOTATION: '["blue6"]'}, "invalid", "is not an IPv4 pool"),
        ({IPV6_POOLS_ANNOTATION: '["zzz"]'}, "not-found", "named in pod annotation"),
        ({IPV4_POOLS_ANNOTATION: "[blue"}, "invalid", "ipv4pools is not valid JSON"),
        ({IPV4_POOLS_ANNOTATION: '"blue"'}, "invalid", "must be a JSON list of strings"),
        ({REQUESTED_IPS_ANNOTATION: '["10.9.9.9"]'}, "invalid", "10.9.9.9 is not in any IP pool"),
    ],
)
def test_bad_annotations(
    colors: MemoryDatastore, ann: dict[str, str], kind: str, message: str
) -> None:
    n1 = PoolsIPAM("n1", {}, colors)
    with pytest.raises(IPAMError) as info:
        n1.allocate(req("c1/eth0"), pod_annotations=ann)
    assert info.value.kind == kind
    assert message in str(info.value)


def test_requested_addresses(colors: MemoryDatastore) -> None:
    n1 = PoolsIPAM("n1", {}, colors)
    n2 = PoolsIPAM("n2", {}, colors)
    ann = {REQUESTED_IPS_ANNOTATION: json.dumps(["10.1.0.77", "fd01::77"])}
    got = n1.allocate(req("c1/eth0"), pod_annotations=ann)
    assert [(a.address, a.block, a.pool) for a in got] == [
        ("10.1.0.77", "10.1.0.64/28", "blue"),
        ("fd01::77", "fd01::70/124", "blue6"),
    ]
    # the block of a requested address is created affine to the node
    assert {b.cidr: b.affinity for b in n1.listing().blocks}["10.1.0.64/28"] == "host:n1"
    # req.requested wins over the annotation; another node's block may be used (not strict)
    got = n2.allocate(req("c2/eth0", families=[4], requested=["10.1.0.78"]), pod_annotations=ann)
    assert addrs(got) == ["10.1.0.78"] and got[0].gateway == str(n2.router_v4)
    # a Manual pool serves an explicitly requested address; IPv6 from the default pool
    got = n1.allocate(req("c3/eth0", requested=["10.3.0.9"]))
    assert [(a.address, a.pool) for a in got] == [("10.3.0.9", "manual"), ("fd00::2", "a-default6")]


@pytest.mark.parametrize(
    ("requested", "pools", "kind", "message"),
    [
        ("10.0.0.1", None, "conflict", "10.0.0.1 is already the router node n1"),
        ("10.1.0.77", None, "conflict", "10.1.0.77 is already in use by taken/eth0 on node n1"),
        ("10.2.0.5", None, "disabled", "IP pool 'off' (10.2.0.0/24) is disabled"),
        ("10.4.0.5", None, "invalid", "does not select node n1"),
        ("10.9.0.5", None, "invalid", "requested address 10.9.0.5 is not in any IP pool"),
        ("10.1.0.5", ["a-default"], "invalid", "is in IP pool 'blue' (10.1.0.0/24), not in"),
    ],
)
def test_bad_requested_addresses(
    colors: MemoryDatastore, requested: str, pools: list[str] | None, kind: str, message: str
) -> None:
    n1 = PoolsIPAM("n1", {}, colors)
    n1.allocate(req("taken/eth0", requested=["10.1.0.77"]))
    with pytest.raises(IPAMError) as info:
        n1.allocate(req("c1/eth0", requested=[requested], pools=pools))
    assert info.value.kind == kind
    assert message in str(info.value)


def test_reserved_addresses_are_never_handed_out(store: MemoryDatastore) -> None:
    add_pool(store, "p", "10.0.0.0/29", blockSize=29)
    # as an admin pre-creates it: no affinity, three addresses held back
    store.create_block(
        {"apiVersion": "crd.projectcalico.org/v1", "kind": "IPAMBlock",
         "metadata": {"name": "10-0-0-0-29"},
         "spec": {"cidr": "10.0.0.0/29", "affinity": None,
                  "allocations": [0, None, None, 0, None, None, None, 0],
                  "unallocated": [1, 2, 4, 5, 6],
                  "attributes": [{"handle_id": "ipam-reserved", "secondary": None}]}}
    )  # fmt: skip
    n1 = PoolsIPAM("n1", {}, store)
    assert str(n1.router_v4) == "10.0.0.1"  # the unaffine block was claimed
    got = {addrs(n1.allocate(req(f"c{i}/eth0")))[0] for i in range(4)}
    assert got == {"10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"}
    with pytest.raises(IPAMError, match="exhausted"):
        n1.allocate(req("c9/eth0"))
    n1.release("c0/eth0")
    with pytest.raises(IPAMError, match=r"10\.0\.0\.3 is reserved in block 10\.0\.0\.0/29"):
        n1.allocate(req("c9/eth0", requested=["10.0.0.3"]))


def test_idempotent_per_owner(dual: MemoryDatastore) -> None:
    n1 = PoolsIPAM("n1", {}, dual)
    first = n1.allocate(req("c1/eth0"))
    assert n1.allocate(req("c1/eth0")) == first
    assert n1.allocate(req("c1/eth0", requested=[first[0].address])) == first
    with pytest.raises(IPAMError, match=r"already holds 10\.0\.0\.2") as info:
        n1.allocate(req("c1/eth0", requested=["10.0.0.3"]))
    assert info.value.kind == "conflict"
    # the same owner name on another node is another owner
    n2 = PoolsIPAM("n2", {}, dual)
    assert n2.allocate(req("c1/eth0")) != first


def test_release_and_gc(dual: MemoryDatastore) -> None:
    n1 = PoolsIPAM("n1", {}, dual)
    n2 = PoolsIPAM("n2", {}, dual)
    a = n1.allocate(req("a/eth0"))
    n1.allocate(req("b/eth0"))
    theirs = n2.allocate(req("a/eth0"))
    assert n1.release("a/eth0") == a
    assert n1.release("a/eth0") == []
    assert n2.owned_by("a/eth0") == theirs  # other node untouched
    gone = n1.gc(lambda alloc: False)
    assert {g.owner for g in gone} == {"b/eth0"}
    assert {x.owner for x in n1.allocations()} == {router_owner("n1")}
    assert n2.owned_by("a/eth0") == theirs
    with pytest.raises(IPAMError, match="never released"):
        n1.release(router_owner("n1"))


def test_listing(dual: MemoryDatastore) -> None:
    set_config(dual, strictAffinity=False)
    n1 = PoolsIPAM("n1", {}, dual)
    PoolsIPAM("n2", {}, dual)
    n1.allocate(req("a/eth0"))
    listing = n1.listing()
    assert listing.mode == "pools" and listing.node == "n1" and not listing.strict_affinity
    assert [(p.name, p.cidr, p.block_size, p.size, p.used) for p in listing.pools] == [
        ("v4", "10.0.0.0/28", 30, 16, 3),
        ("v6", "fd00::/124", 126, 16, 3),
    ]
    assert [(b.cidr, b.affinity, b.size, b.used) for b in listing.blocks] == [
        ("10.0.0.0/30", "host:n1", 4, 2),
        ("10.0.0.4/30", "host:n2", 4, 1),
        ("fd00::/126", "host:n1", 4, 2),
        ("fd00::4/126", "host:n2", 4, 1),
    ]
    assert {a.owner for a in listing.allocations} == {"a/eth0", router_owner("n1")}


def test_block_objects_are_calicos(dual: MemoryDatastore) -> None:
    n1 = PoolsIPAM("n1", {}, dual)
    n1.allocate(req("a/eth0", kind="endpoint"))
    blocks = {b["metadata"]["name"]: b for b in dual.blocks()}
    assert set(blocks) == {"10-0-0-0-30", "fd00---126"}  # Calico's CIDRToName
    block = blocks["10-0-0-0-30"]
    assert (block["apiVersion"], block["kind"]) == ("crd.projectcalico.org/v1", "IPAMBlock")
    spec = block["spec"]
    assert (spec["cidr"], spec["affinity"]) == ("10.0.0.0/30", "host:n1")
    # ordinals: .1 the router, .2 the pod; the free ones in hand-out order
    assert spec["allocations"] == [None, 0, 1, None]
    assert spec["unallocated"] == [3, 0]
    assert [a["handle_id"] for a in spec["attributes"]] == [router_owner("n1"), "a/eth0"]
    assert spec["attributes"][1]["secondary"]["node"] == "n1"
    assert spec["attributes"][1]["secondary"]["kind"] == "endpoint"
    bad = {**blocks["10-0-0-0-30"], "spec": {**spec, "cidr": "10.0.0.8/30"}}
    dual.update_block(bad)
    with pytest.raises(
        IPAMError, match=r"IPAMBlock 10-0-0-0-30 is invalid: spec\.cidr 10\.0\.0\.8/30 does not"
    ):
        n1.allocations()


def test_lost_races_are_retried_on_a_fresh_read(dual: MemoryDatastore) -> None:
    """A write whose resourceVersion is stale is refused (409) and the operation re-runs: the
    allocation made in between by another node is kept, and nothing is handed out twice."""
    n1 = PoolsIPAM("n1", {}, dual)
    n2 = PoolsIPAM("n2", {}, dual)
    real_blocks = dual.blocks
    stale: list[list[dict[str, Any]]] = []

    def blocks_then_race() -> list[dict[str, Any]]:
        read = real_blocks()
        if not stale:  # the first read of n1: n2 allocates from n1's block right after it
            stale.append(read)
            n2.allocate(req("theirs/eth0", requested=["10.0.0.2"]))
        return read

    dual.blocks = blocks_then_race  # type: ignore[method-assign]
    mine = n1.allocate(req("mine/eth0", families=[4]))
    assert addrs(mine) == ["10.0.0.3"]
    assert n1.conflicts == 1 and dual.conflicts == 1
    holders = {a.address: a.owner for a in n2.allocations() + n1.allocations()}
    assert holders["10.0.0.2"] == "theirs/eth0" and holders["10.0.0.3"] == "mine/eth0"


def test_agent_refuses_pools_mode_without_an_api(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert agent_main(["--node-name", "n1", "--ipam", "pools"]) == 2
    assert "--ipam pools needs a Kubernetes API (--kubeconfig" in capsys.readouterr().err
