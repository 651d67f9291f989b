"""Cluster-pool IPAM: the node's own CIDRs, routers, requests, idempotency, persistence."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest

from ciliary.agent.ipam import IPAM, ClusterPoolIPAM, IPAMError, router_owner
from ciliary.agent.k8s.nodecidrs import by_family
from ciliary.agent.main import main as agent_main
from ciliary.core.models import IPAllocation, IPAMAllocateRequest
from ciliary.k8s.calico import IPV4_POOLS_ANNOTATION, REQUESTED_IPS_ANNOTATION

V4 = IPv4Network("10.200.0.0/29")  # .0 network, .1 router, .7 broadcast: 5 pod addresses
V6 = IPv6Network("fd00:10:200::/125")  # ::0 network, ::1 router: 6 pod addresses


def req(owner: str, **kw: object) -> IPAMAllocateRequest:
    return IPAMAllocateRequest.model_validate({"owner": owner, **kw})


def make(
    tmp_path: Path, v4: IPv4Network | None = V4, v6: IPv6Network | None = V6
) -> ClusterPoolIPAM:
    return ClusterPoolIPAM("node1", v4, v6, tmp_path / "ipam.json")


def addrs(allocs: list[IPAllocation]) -> list[str]:
    return [a.address for a in allocs]


def test_is_an_ipam(tmp_path: Path) -> None:
    ipam: IPAM = make(tmp_path)
    assert ipam.mode == "cluster-pool"
    assert ipam.node == "node1"


def test_routers_are_first_host_addresses(tmp_path: Path) -> None:
    ipam = make(tmp_path)
    assert ipam.router_v4 == IPv4Address("10.200.0.1")
    assert ipam.router_v6 == IPv6Address("fd00:10:200::1")
    routers = ipam.owned_by(router_owner("node1"))
    assert [(a.family, a.address, a.kind) for a in routers] == [
        (4, "10.200.0.1", "router"),
        (6, "fd00:10:200::1", "router"),
    ]


def test_dual_stack_allocation_fields(tmp_path: Path) -> None:
    ipam = make(tmp_path)
    got = ipam.allocate(req("c1/eth0", kind="endpoint"))
    assert [(a.family, a.address) for a in got] == [(4, "10.200.0.2"), (6, "fd00:10:200::2")]
    v4, v6 = got
    assert v4.prefix_len == 29 and v6.prefix_len == 125
    assert v4.gateway == "10.200.0.1" and v6.gateway == "fd00:10:200::1"
    assert v4.pool == v6.pool == "default"
    assert v4.block == "10.200.0.0/29" and v6.block == "fd00:10:200::/125"
    assert v4.kind == "endpoint" and v4.owner == "c1/eth0"
    assert v4.created_at > 0


def test_single_family_request_and_node(tmp_path: Path) -> None:
    ipam = make(tmp_path)
    assert [a.family for a in ipam.allocate(req("c1/eth0", families=[6]))] == [6]
    v4only = ClusterPoolIPAM("node1", V4, None, tmp_path / "other.json")
    assert v4only.router_v6 is None
    assert [a.family for a in v4only.allocate(req("c1/eth0"))] == [4]
    with pytest.raises(IPAMError, match="node node1 has no IPv6 pod CIDR") as info:
        v4only.allocate(req("c2/eth0", families=[6]))
    assert info.value.kind == "invalid"
    with pytest.raises(IPAMError, match="requested address fd00::5 needs IPv6"):
        v4only.allocate(req("c2/eth0", requested=["fd00::5"]))


def test_next_address_after_the_last_one_wrapping(tmp_path: Path) -> None:
    ipam = make(tmp_path, v6=None)
    a, b, c = (addrs(ipam.allocate(req(f"c{i}/eth0")))[0] for i in range(3))
    assert (a, b, c) == ("10.200.0.2", "10.200.0.3", "10.200.0.4")
    ipam.release("c0/eth0")
    # freed .2 is not reused while later addresses are free
    assert addrs(ipam.allocate(req("c3/eth0"))) == ["10.200.0.5"]
    assert addrs(ipam.allocate(req("c4/eth0"))) == ["10.200.0.6"]
    assert addrs(ipam.allocate(req("c5/eth0"))) == ["10.200.0.2"]  # wrapped past .7/.0/.1


def test_exhaustion_names_the_node_cidr(tmp_path: Path) -> None:
    ipam = make(tmp_path, v6=None)
    for i in range(5):
        ipam.allocate(req(f"c{i}/eth0"))
    with pytest.raises(IPAMError) as info:
        ipam.allocate(req("c5/eth0"))
    assert info.value.kind == "exhausted"
    assert "node CIDR 10.200.0.0/29 of pool default is exhausted" in str(info.value)
    ipam.release("c2/eth0")
    assert addrs(ipam.allocate(req("c5/eth0"))) == ["10.200.0.4"]


def test_dual_stack_is_all_or_nothing(tmp_path: Path) -> None:
    ipam = ClusterPoolIPAM("node1", IPv4Network("10.0.0.0/24"), V6, tmp_path / "s.json")
    for i in range(6):
        ipam.allocate(req(f"c{i}/eth0"))
    before = ipam.allocations()
    with pytest.raises(IPAMError, match="fd00:10:200::/125 of pool default is exhausted"):
        ipam.allocate(req("c6/eth0"))
    assert ipam.allocations() == before
    assert ipam.owned_by("c6/eth0") == []
    # and nothing leaked into the state file either
    assert (
        ClusterPoolIPAM("node1", IPv4Network("10.0.0.0/24"), V6, tmp_path / "s.json").allocations()
        == before
    )


def test_requested_addresses(tmp_path: Path) -> None:
    ipam = make(tmp_path)
    # the requested IPv4 address, and any IPv6 address since the node is dual-stack
    got = ipam.allocate(req("c1/eth0", requested=["10.200.0.5"]))
    assert addrs(got) == ["10.200.0.5", "fd00:10:200::2"]
    got = ipam.allocate(req("c2/eth0", requested=["10.200.0.6/29", "fd00:10:200::6"]))
    assert addrs(got) == ["10.200.0.6", "fd00:10:200::6"]
    got = ipam.allocate(req("c3/eth0", families=[4], requested=["10.200.0.3"]))
    assert addrs(got) == ["10.200.0.3"]  # only the family asked for
    got = ipam.allocate(req("c4/eth0", families=[6], requested=["fd00:10:200::5"]))
    assert addrs(got) == ["fd00:10:200::5"]


@pytest.mark.parametrize(
    ("requested", "kind", "message"),
    [
        (
            ["10.201.0.5"],
            "invalid",
            "10.201.0.5 is outside node CIDR 10.200.0.0/29 of pool default",
        ),
        (["10.200.0.1"], "invalid", "10.200.0.1 is the router address of node CIDR 10.200.0.0/29"),
        (["10.200.0.0"], "invalid", "10.200.0.0 is the network address of node CIDR"),
        (["10.200.0.7"], "invalid", "10.200.0.7 is the broadcast address of node CIDR"),
        (["fd00:10:200::"], "invalid", "fd00:10:200:: is the network address"),
        (["10.200.0.4"], "conflict", "10.200.0.4 is already in use by taken/eth0"),
        (["nope"], "invalid", "requested address 'nope' is not an IP address"),
        (["10.200.0.5", "10.200.0.6"], "invalid", "both IPv4: at most one address per family"),
    ],
)
def test_bad_requests(tmp_path: Path, requested: list[str], kind: str, message: str) -> None:
    ipam = make(tmp_path)
    ipam.allocate(req("taken/eth0", families=[4], requested=["10.200.0.4"]))
    before = ipam.allocations()
    with pytest.raises(IPAMError) as info:
        ipam.allocate(req("c1/eth0", requested=requested))
    assert info.value.kind == kind
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert ipam.allocations() == before


def test_request_family_mismatch(tmp_path: Path) -> None:
    with pytest.raises(IPAMError, match="is IPv6 but the request asks only for IPv4"):
        make(tmp_path).allocate(req("c1/eth0", families=[4], requested=["fd00:10:200::3"]))


def test_pools_other_than_default_are_unknown(tmp_path: Path) -> None:
    ipam = make(tmp_path)
    assert len(ipam.allocate(req("c1/eth0", pools=["default"]))) == 2
    with pytest.raises(IPAMError, match="IP pool 'blue' not found") as info:
        ipam.allocate(req("c2/eth0", pools=["blue"]))
    assert info.value.kind == "not-found"


def test_idempotent_per_owner(tmp_path: Path) -> None:
    ipam = make(tmp_path)
    first = ipam.allocate(req("c1/eth0"))
    assert ipam.allocate(req("c1/eth0")) == first
    assert ipam.allocate(req("c1/eth0", requested=["10.200.0.2"])) == first
    with pytest.raises(IPAMError, match=r"already holds 10\.200\.0\.2") as info:
        ipam.allocate(req("c1/eth0", requested=["10.200.0.5"]))
    assert info.value.kind == "conflict"
    assert len(ipam.allocations()) == 4  # 2 routers + 2


def test_retry_completes_missing_family(tmp_path: Path) -> None:
    ipam = make(tmp_path)
    (v4,) = ipam.allocate(req("c1/eth0", families=[4]))
    both = ipam.allocate(req("c1/eth0"))
    assert both[0] == v4 and both[1].family == 6


def test_release(tmp_path: Path) -> None:
    ipam = make(tmp_path)
    got = ipam.allocate(req("c1/eth0"))
    assert ipam.release("c1/eth0") == got
    assert ipam.release("c1/eth0") == []
    assert ipam.owned_by("c1/eth0") == []
    with pytest.raises(IPAMError, match="router"):
        ipam.release(router_owner("node1"))


def test_gc_keeps_routers_and_kept(tmp_path: Path) -> None:
    ipam = make(tmp_path)
    for i in range(3):
        ipam.allocate(req(f"c{i}/eth0"))
    gone = ipam.gc(lambda a: a.owner == "c1/eth0")
    assert sorted({a.owner for a in gone}) == ["c0/eth0", "c2/eth0"]
    assert len(gone) == 4
    assert sorted({a.owner for a in ipam.allocations()}) == ["c1/eth0", router_owner("node1")]
    assert {a.owner for a in ipam.gc(lambda a: False)} == {"c1/eth0"}
    assert ipam.gc(lambda a: False) == []
    assert {a.owner for a in ipam.allocations()} == {router_owner("node1")}


def test_state_survives_restart(tmp_path: Path) -> None:
    ipam = make(tmp_path)
    for i in range(3):
        ipam.allocate(req(f"c{i}/eth0"))
    ipam.release("c1/eth0")
    again = make(tmp_path)
    assert again.allocations() == ipam.allocations()
    # the next-address hint survives too: no immediate reuse of the freed .3
    assert addrs(again.allocate(req("c9/eth0")))[0] == "10.200.0.5"


def test_state_file_is_written_atomically_and_readable(tmp_path: Path) -> None:
    ipam = make(tmp_path)
    ipam.allocate(req("c1/eth0"))
    doc = json.loads((tmp_path / "ipam.json").read_text())
    assert doc["node"] == "node1"
    assert doc["families"]["4"]["allocations"]["10.200.0.2"]["owner"] == "c1/eth0"
    assert [p.name for p in tmp_path.iterdir()] == ["ipam.json"]  # no temp files left


def test_changed_cidr_drops_what_no_longer_fits(tmp_path: Path) -> None:
    ipam = make(tmp_path)
    ipam.allocate(req("c1/eth0"))
    moved = ClusterPoolIPAM("node1", IPv4Network("10.200.1.0/29"), V6, tmp_path / "ipam.json")
    assert [a.address for a in moved.owned_by("c1/eth0")] == ["fd00:10:200::2"]
    assert moved.router_v4 == IPv4Address("10.200.1.1")


def test_state_of_another_node_or_corrupt_is_refused(tmp_path: Path) -> None:
    make(tmp_path).allocate(req("c1/eth0"))
    with pytest.raises(IPAMError, match="belongs to node node1, not node2"):
        ClusterPoolIPAM("node2", V4, V6, tmp_path / "ipam.json")
    (tmp_path / "ipam.json").write_text("{not json")
    with pytest.raises(IPAMError, match="cannot read IPAM state"):
        make(tmp_path)
    (tmp_path / "ipam.json").write_text('{"node": "node1", "families": {"4": {"cidr": 5}}}')
    with pytest.raises(IPAMError, match=r"invalid at families\.4\.cidr"):
        make(tmp_path)


def test_bad_configuration(tmp_path: Path) -> None:
    with pytest.raises(IPAMError, match="too small"):
        ClusterPoolIPAM("n", IPv4Network("10.0.0.0/31"), None, tmp_path / "a.json")
    with pytest.raises(IPAMError, match="no pod CIDR"):
        ClusterPoolIPAM("n", None, None, tmp_path / "a.json")


def test_failed_write_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ipam = make(tmp_path)
    ipam.allocate(req("c1/eth0"))
    before = ipam.allocations()

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("ciliary.agent.ipam.clusterpool.write_json", boom)
    with pytest.raises(OSError, match="disk full"):
        ipam.allocate(req("c2/eth0"))
    with pytest.raises(OSError, match="disk full"):
        ipam.release("c1/eth0")
    assert ipam.allocations() == before
    monkeypatch.undo()
    assert addrs(ipam.allocate(req("c2/eth0"))) == ["10.200.0.3", "fd00:10:200::3"]


def test_listing(tmp_path: Path) -> None:
    ipam = make(tmp_path)
    ipam.allocate(req("c1/eth0"))
    listing = ipam.listing()
    assert listing.mode == "cluster-pool" and listing.node == "node1"
    assert [(p.name, p.cidr, p.block_size, p.size, p.used) for p in listing.pools] == [
        ("default", "10.200.0.0/29", 29, 8, 2),
        ("default", "fd00:10:200::/125", 125, 8, 2),
    ]
    assert [(b.cidr, b.affinity, b.used) for b in listing.blocks] == [
        ("10.200.0.0/29", "host:node1", 2),
        ("fd00:10:200::/125", "host:node1", 2),
    ]
    assert len(listing.allocations) == 4


def test_annotations(tmp_path: Path) -> None:
    ipam = make(tmp_path)
    ann = {
        REQUESTED_IPS_ANNOTATION: '["10.200.0.6", "fd00:10:200::6"]',
        IPV4_POOLS_ANNOTATION: '["calico-only"]',  # ignored: one pool in cluster-pool mode
    }
    assert addrs(ipam.allocate(req("c1/eth0"), pod_annotations=ann)) == [
        "10.200.0.6",
        "fd00:10:200::6",
    ]
    # the request's own addresses win over the annotation
    got = ipam.allocate(req("c2/eth0", families=[4], requested=["10.200.0.3"]), pod_annotations=ann)
    assert addrs(got) == ["10.200.0.3"]
    with pytest.raises(IPAMError, match="ipAddrs is not valid JSON"):
        ipam.allocate(req("c3/eth0"), pod_annotations={REQUESTED_IPS_ANNOTATION: "10.200.0.4"})


def test_without_a_range_the_agent_needs_an_api(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --ipv4-range/--ipv6-range: only an operator (through an API) can give the CIDRs."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert agent_main(["--node-name", "n1"]) == 2
    err = capsys.readouterr().err
    assert "need --ipv4-range and/or --ipv6-range (or a Kubernetes API, --kubeconfig" in err


def test_pod_cidrs_of_a_cilium_node_by_family() -> None:
    assert by_family("n1", ["fd00::/120", "10.1.0.0/24", "10.2.0.0/24"]) == (
        IPv4Network("10.1.0.0/24"),
        IPv6Network("fd00::/120"),
    )
    with pytest.raises(ValueError, match=r"CiliumNode n1: spec.ipam.podCIDRs has '10.1.0.1/24'"):
        by_family("n1", ["10.1.0.1/24"])
