"""IPAM against a real API server + etcd. Calico's: two agents, each with its own client (its own
``KubeDatastore``), race for the blocks of the same pools at once; the scenario and its checks
are the unit test's (tests/unit/agent/test_ipam_concurrency.py), here with the API server's
real resourceVersion preconditions and 409s. Pools arrive through the informers: the IPv6 pool
is created after the agents' datastores have synced. Cilium's cluster-pool v2: the agent's wait
for the pod CIDRs the operator's allocator writes into its CiliumNode."""

from __future__ import annotations

import asyncio
import time
from ipaddress import ip_network
from typing import Any

import pytest

from ciliary.agent.ipam.kubestore import IPAM_BLOCKS, IPAM_CONFIGURATIONS, IPPOOLS, KubeDatastore
from ciliary.agent.k8s.ciliumendpoints import CILIUM_NODES, cilium_node
from ciliary.agent.k8s.nodecidrs import by_family, pod_cidrs, wait_for_pod_cidrs
from ciliary.controllers.nodeipam import ClusterPool, NodeIPAM
from ciliary.kube.client import KubeClient
from ciliary.lab.controlplane import ControlPlane
from tests.integration.kube.helpers import run
from tests.unit.agent.test_ipam_concurrency import PHASE1, V6, check_two_agents, run_agents, seed

pytestmark = pytest.mark.timeout(240)


def _create(control_plane: ControlPlane, rt: Any, objs: list[dict[str, Any]]) -> None:
    async def body(kube: KubeClient) -> None:
        for obj in objs:
            await kube.create(rt, obj)

    run(control_plane, body, ns="")


def _blocks(control_plane: ControlPlane) -> list[dict[str, Any]]:
    async def body(kube: KubeClient) -> list[dict[str, Any]]:
        return list((await kube.list(IPAM_BLOCKS))["items"])

    result: list[dict[str, Any]] = run(control_plane, body, ns="")
    return result


def test_two_agents_race_for_blocks_through_the_api(control_plane: ControlPlane) -> None:
    pools: list[dict[str, Any]] = []
    configs: list[dict[str, Any]] = []
    seed(pools.append, configs.append, False)
    typed = [{"apiVersion": "projectcalico.org/v3", "kind": "IPPool", **p} for p in pools]
    config = {"apiVersion": "projectcalico.org/v3", "kind": "IPAMConfiguration", **configs[0]}
    v4 = [p for p in typed if p["spec"]["cidr"] != V6]
    v6 = [p for p in typed if p["spec"]["cidr"] == V6]
    _create(control_plane, IPPOOLS, v4)
    _create(control_plane, IPAM_CONFIGURATIONS, [config])
    stores = {node: KubeDatastore(control_plane.kubeconfig) for node in ("a", "b")}
    try:
        for store in stores.values():
            store.start()
        _create(control_plane, IPPOOLS, v6)  # seen through the watch
        deadline = time.monotonic() + 10
        while not all("v6" in s.pools() for s in stores.values()):
            assert time.monotonic() < deadline, "the IPv6 pool never reached the informers"
            time.sleep(0.05)
        reports = run_agents(dict(stores), {"a": [PHASE1, 30], "b": [PHASE1, 1]})
    finally:
        for store in stores.values():
            store.close()
    check_two_agents(reports, _blocks(control_plane), strict=False)


def test_agent_waits_for_the_operators_pod_cidrs(control_plane: ControlPlane) -> None:
    """Cluster-pool v2: an agent with no range creates its CiliumNode and waits (fail closed)
    until the operator's allocator writes its pod CIDRs, which a restarted agent gets back; a
    node whose CIDRs were fixed beforehand keeps them and the operator allocates around them."""

    async def body(kube: KubeClient) -> None:
        fixed = cilium_node("fixed", [], ["10.250.0.0/24"], {})
        await kube.create(CILIUM_NODES, fixed)
        waiting = asyncio.create_task(wait_for_pod_cidrs(kube, "n1", {"zone": "a"}, log_every=0.2))
        await asyncio.sleep(1.0)
        assert not waiting.done(), "no operator yet: the agent must keep waiting"
        shown = await kube.get(CILIUM_NODES, "n1")
        assert shown["metadata"]["labels"] == {"zone": "a"} and not pod_cidrs(shown)
        pool = ClusterPool(
            ipv4=(ip_network("10.250.0.0/16"),), ipv4_mask=24,
            ipv6=(ip_network("fd00:250::/104"),), ipv6_mask=120,
        )  # fmt: skip
        operator = asyncio.create_task(NodeIPAM(kube, pool).run())
        try:
            got = await asyncio.wait_for(waiting, 15)
            assert got == ["10.250.1.0/24", "fd00:250::/120"]
            assert by_family("n1", got) == (
                ip_network("10.250.1.0/24"),
                ip_network("fd00:250::/120"),
            )
            again = await asyncio.wait_for(wait_for_pod_cidrs(kube, "n1", {"zone": "a"}), 15)
            assert again == got  # a restarted agent: same CIDRs
            assert pod_cidrs(await kube.get(CILIUM_NODES, "fixed")) == ["10.250.0.0/24"]
        finally:
            operator.cancel()
            await asyncio.gather(operator, return_exceptions=True)

    run(control_plane, body, ns="")
