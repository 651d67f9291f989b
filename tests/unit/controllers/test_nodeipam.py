"""The operator's cluster-pool bookkeeping: lowest free node CIDR per family, CIDRs already named
by CiliumNodes honoured (never handed out again, overlaps reported), release on delete,
exhaustion and bad flags named."""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from ciliary.controllers.nodeipam import (
    ClusterPool,
    ClusterPoolError,
    PodCIDRAllocator,
    parse_cidrs,
)
from ciliary.controllers.operator import build_parser, cluster_pool


def pool(v4: str = "10.240.0.0/22", v6: str | None = "fd00:240::/110") -> ClusterPool:
    return ClusterPool(
        ipv4=(ip_network(v4),), ipv4_mask=24, ipv6=(ip_network(v6),) if v6 else (), ipv6_mask=112
    )


def test_lowest_free_per_family_around_existing_ones() -> None:
    alloc = PodCIDRAllocator(pool())
    assert alloc.occupy("fixed", ["10.240.0.0/24", "fd00:240::/112"]) == []
    assert alloc.allocate("a") == ["10.240.1.0/24", "fd00:240::1:0/112"]
    assert alloc.allocate("b") == ["10.240.2.0/24", "fd00:240::2:0/112"]
    alloc.release("a")
    assert alloc.allocate("c") == ["10.240.1.0/24", "fd00:240::1:0/112"]
    assert alloc.allocate("d") == ["10.240.3.0/24", "fd00:240::3:0/112"]
    with pytest.raises(ClusterPoolError, match=r"IPv4 10\.240\.0\.0/22 is exhausted: no /24 left"):
        alloc.allocate("e")
    assert "e" not in alloc.held


def test_overlapping_and_bad_existing_cidrs_are_reported_not_taken() -> None:
    alloc = PodCIDRAllocator(pool(v6=None))
    assert alloc.occupy("a", ["10.240.0.0/23"]) == []
    problems = alloc.occupy("b", ["10.240.1.0/24", "nonsense"])
    assert problems == [
        "CiliumNode b: pod CIDR 10.240.1.0/24 overlaps 10.240.0.0/23 of CiliumNode a",
        "CiliumNode b: spec.ipam.podCIDRs has 'nonsense', not a CIDR",
    ]
    assert alloc.allocate("c") == ["10.240.2.0/24"]  # never inside a's /23


def test_flags() -> None:
    args = build_parser().parse_args(
        [
            "--cluster-pool-ipv4-cidr",
            "10.1.0.0/16,10.2.0.0/16",
            "--cluster-pool-ipv4-mask-size",
            "20",
        ]
    )
    got = cluster_pool(args)
    assert got.ipv4 == (ip_network("10.1.0.0/16"), ip_network("10.2.0.0/16"))
    assert (got.ipv4_mask, got.ipv6, got.enabled) == (20, (), True)
    assert not cluster_pool(build_parser().parse_args([])).enabled
    with pytest.raises(
        ClusterPoolError, match=r"--cluster-pool-ipv6-cidr: 10\.0\.0\.0/8 is not an IPv6"
    ):
        parse_cidrs("10.0.0.0/8", 6, "--cluster-pool-ipv6-cidr")
    with pytest.raises(ClusterPoolError, match=r"mask-size 16 is larger than 10\.0\.0\.0/24"):
        ClusterPool(ipv4=(ip_network("10.0.0.0/24"),), ipv4_mask=16)
