"""The lab's cluster pool as ciliary-operator gets it: the flags the lab passes parse to the
operator's pool, and the operator's allocation to nodes made one after the other (lowest free)
is exactly what the lab file was checked against (``schema.node_cidrs``), which ``lab up``
requires of every node's CiliumNode."""

from __future__ import annotations

from typing import Any

import pytest

from ciliary.controllers.nodeipam import PodCIDRAllocator
from ciliary.controllers.operator import build_parser, cluster_pool
from ciliary.lab import manager, schema
from tests.unit.lab.test_schema import lab, parse
from tests.unit.lab.test_schema_pools import EXAMPLE


@pytest.mark.parametrize(
    "ipam",
    [
        None,
        {"clusterPoolIPv6PodCIDRList": []},
        {"clusterPoolIPv4PodCIDRList": []},
        {
            "clusterPoolIPv4PodCIDRList": ["10.9.0.0/20", "10.10.0.0/20"],
            "clusterPoolIPv4MaskSize": 26,
            "clusterPoolIPv6PodCIDRList": ["fd00:9::/112"],
            "clusterPoolIPv6MaskSize": 116,
        },
    ],
)
def test_the_operator_allocates_what_the_lab_file_was_checked_against(
    ipam: dict[str, Any] | None,
) -> None:
    lf = parse(lab("n0", "n1", "n2", ipam=ipam))
    flags = manager._cluster_pool_flags(lf)
    alloc = PodCIDRAllocator(cluster_pool(build_parser().parse_args(flags)))
    for node, want in schema.node_cidrs(lf).items():
        expected = [str(c) for c in (want.ipv4, want.ipv6) if c is not None]
        assert alloc.allocate(node) == expected, flags


def test_no_cluster_pool_in_pools_mode() -> None:
    lf = schema.parse_lab_text(EXAMPLE, "lab.yaml")
    assert lf.ipam_mode == "pools"
    assert manager._cluster_pool_flags(lf) == []
    assert not cluster_pool(build_parser().parse_args([])).enabled
