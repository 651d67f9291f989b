"""Calico-style pools end to end: two agents share the pools and blocks of the lab's API server,
each claims its own blocks, a pod's annotation picks its pool, pods get working dual-stack
addresses, and kubectl shows the pools and blocks."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from ciliary.agent.ipam.datastore import block_name
from ciliary.client.agent import AgentClient
from ciliary.lab import manager

from .conftest import assert_no_leftovers, unique

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "calico-pools.yaml"


@pytest.fixture(scope="module")
def pools_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    lab, n1, n2 = unique("pl"), unique("p"), unique("p")
    text = EXAMPLE.read_text().replace("pl-node1", n1).replace("pl-node2", n2)
    text = text.replace("name: pools\n", f"name: {lab}\n", 1)
    path = tmp_path_factory.mktemp("pools") / "lab.yaml"
    path.write_text(text)
    try:
        manager.up(path)
        yield lab, n1, n2
    finally:
        if lab in manager.list_labs():
            manager.down(lab)
        assert_no_leftovers(lab, [n1, n2])


def test_blocks_are_affine_per_node_and_annotation_picks_pool(
    pools_lab: tuple[str, str, str],
) -> None:
    lab, n1, n2 = pools_lab
    view = {p.name: p for p in manager.status(lab).pods}
    assert view["zonal"].ipv4 and ip_address(view["zonal"].ipv4) in ip_network("10.221.0.0/26")
    assert view["web"].ipv4 and ip_address(view["web"].ipv4) in ip_network("10.220.0.0/24")
    for pod in view.values():
        assert pod.ipv6 and ip_address(pod.ipv6) in ip_network("fd00:10:220::/120")
    with (
        AgentClient(manager.agent_socket(n1, name=lab)) as c1,
        AgentClient(manager.agent_socket(n2, name=lab)) as c2,
    ):
        l1, l2 = c1.ipam_list(), c2.ipam_list()
    assert l1.mode == "pools" and {p.name for p in l1.pools} == {
        "default-ipv4",
        "default-ipv6",
        "zone-a",
    }
    mine1 = {b.cidr for b in l1.blocks if b.affinity == f"host:{n1}"}
    mine2 = {b.cidr for b in l2.blocks if b.affinity == f"host:{n2}"}
    assert mine1 and mine2 and not (mine1 & mine2)
    other = view["other"]
    assert other.ipv4 is not None
    assert any(ip_address(other.ipv4) in ip_network(b) for b in mine2)
    owners1 = {a.owner.split("/")[0] for a in l1.allocations if a.kind == "endpoint"}
    pods1 = {f"{lab}-default-web", f"{lab}-default-zonal", f"{lab}-kube-system-coredns"}
    assert owners1 == pods1 | {"cilium-health"}  # the node's health endpoint, from the pools


def test_pods_reach_each_other_on_a_node(pools_lab: tuple[str, str, str]) -> None:
    lab, _, _ = pools_lab
    view = {p.name: p for p in manager.status(lab).pods}
    for addr in (view["web"].ipv4, view["web"].ipv6):
        assert addr is not None
        host = f"[{addr}]" if ":" in addr else addr
        argv = ["ciliary", "workload", "http-get", f"http://{host}/", "--timeout", "3"]
        res = manager.run_in_pod("default/zonal", argv, name=lab)
        assert res.returncode == 0, res.stderr


def test_pools_and_blocks_are_api_objects(pools_lab: tuple[str, str, str]) -> None:
    """The agents' IPAM state is the API server's: the file's pools, and one IPAMBlock object
    (Calico's name and fields) per block the agents list, with the same affinity."""
    lab, n1, _ = pools_lab
    kubectl = ["kubectl", "--kubeconfig", str(manager.kubeconfig(lab)), "get", "-o", "json"]

    def items(kind: str) -> list[dict[str, Any]]:
        out = subprocess.run([*kubectl, kind], capture_output=True, text=True, check=True)
        return list(json.loads(out.stdout)["items"])

    pools = {p["metadata"]["name"] for p in items("ippools.projectcalico.org")}
    assert pools == {"default-ipv4", "default-ipv6", "zone-a"}
    blocks = items("ipamblocks.crd.projectcalico.org")
    with AgentClient(manager.agent_socket(n1, name=lab)) as c1:
        listed = {b.cidr: b.affinity for b in c1.ipam_list().blocks}
    assert {b["spec"]["cidr"]: b["spec"]["affinity"] for b in blocks} == listed
    for b in blocks:
        assert b["metadata"]["name"] == block_name(b["spec"]["cidr"])
