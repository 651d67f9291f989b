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
from ciliary.lab.state import LabRecord, NodeRecord
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


class _API:
    """The CiliumNode as the lab's API returns it (lab.kubeapi.KubeAPI.get)."""

    def __init__(self, pod_cidrs: list[str]) -> None:
        self.pod_cidrs = pod_cidrs
        self.paths: list[str] = []

    def get(self, path: str) -> dict[str, Any]:
        self.paths.append(path)
        return {"spec": {"ipam": {"podCIDRs": self.pod_cidrs}}}


def _node_of(
    monkeypatch: pytest.MonkeyPatch, pod_cidrs: list[str]
) -> tuple[LabRecord, NodeRecord, list[LabRecord]]:
    api, saved = _API(pod_cidrs), list[LabRecord]()
    monkeypatch.setattr(manager, "_api", lambda _lab: api)
    monkeypatch.setattr(manager, "_save", saved.append)
    nrec = NodeRecord(name="n1", netns="ns", state_dir="/s", pin_dir="/p", socket="/s/a")
    return LabRecord(name="lab", file=None, created_at=0.0, nodes=[nrec]), nrec, saved


def test_the_lab_records_the_cidrs_of_the_nodes_ciliumnode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lf = parse(lab("n0", "n1"))
    rec, nrec, saved = _node_of(monkeypatch, ["10.200.1.0/24", "fd00:10:200::100/120"])
    manager._allocated_cidrs(rec, nrec, schema.node_cidrs(lf)["n1"])
    assert (nrec.ipv4_cidr, nrec.ipv6_cidr) == ("10.200.1.0/24", "fd00:10:200::100/120")
    assert saved == [rec]


@pytest.mark.parametrize("pod_cidrs", [[], ["10.200.0.0/24", "fd00:10:200::/120"]])
def test_a_ciliumnode_with_other_cidrs_fails_naming_the_node(
    monkeypatch: pytest.MonkeyPatch, pod_cidrs: list[str]
) -> None:
    lf = parse(lab("n0", "n1"))
    rec, nrec, saved = _node_of(monkeypatch, pod_cidrs)
    with pytest.raises(manager.LabError) as err:
        manager._allocated_cidrs(rec, nrec, schema.node_cidrs(lf)["n1"])
    got = pod_cidrs or "empty"
    assert str(err.value) == (
        f"node n1: CiliumNode spec.ipam.podCIDRs is {got}, expected"
        " ['10.200.1.0/24', 'fd00:10:200::100/120'] (the lab file's cluster pool, node n1's subnet)"
    )
    assert nrec.ipv4_cidr is None and saved == []
