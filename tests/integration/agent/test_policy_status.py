"""The agents' writes into the API server, against a real ``ciliary-apiserver`` + etcd.

Policy status: two policy watchers (nodes ``n1`` and ``n2``, each its own client and policy
repository) report into every CiliumNetworkPolicy/CiliumClusterwideNetworkPolicy's
``status.nodes`` through merge patches of the status subresource, neither clobbering the other;
an update moves each node's ``localPolicyRevision``; a policy the parser refuses (written behind
the API server, as a server that does not validate would store it) gets ``ok: false`` with the
error and never reaches either repository.

CiliumEndpoints: named ports in ``status.named-ports``; a deletion carries the uid of the object
the agent wrote, so a newer CiliumEndpoint of the same name (the pod came back on another node)
survives the old node's delete; another node's leftover is replaced.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ciliary.agent.k8s.ciliumendpoints import CILIUM_ENDPOINTS, EndpointSync, endpoint_status
from ciliary.agent.k8s.policies import CCNP, CNP, PolicyWatcher
from ciliary.agent.policymanager import PolicyManager
from ciliary.apiserver.etcd import EtcdClient
from ciliary.apiserver.storage import Storage
from ciliary.apiserver.strategy import prepare_create
from ciliary.core.models import Endpoint, EndpointState
from ciliary.kube.client import KubeClient
from ciliary.lab.controlplane import ControlPlane
from tests.integration.kube.helpers import run
from tests.unit.policy.test_policymanager import LABELS, _Datapath

pytestmark = pytest.mark.timeout(120)


def cnp(name: str, port: str) -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": "t", "annotations": {"team": "shop"}},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"toPorts": [{"ports": [{"port": port}]}]}],
        },
    }  # fmt: skip


CLUSTERWIDE = {
    "apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
    "metadata": {"name": "all"},
    "spec": {"endpointSelector": {}, "ingress": [{"fromEntities": ["cluster"]}]},
}  # fmt: skip


def test_each_node_reports_into_policy_status(control_plane: ControlPlane) -> None:
    async def body(kube: KubeClient) -> None:
        watchers: list[PolicyWatcher] = []
        clients = [await KubeClient.connect(control_plane.kubeconfig) for _ in range(2)]
        for node, client in zip(("n1", "n2"), clients, strict=True):
            pm = PolicyManager(
                datapath=_Datapath(),  # type: ignore[arg-type]
                identity_labels=LABELS.get,
                all_identities=lambda: list(LABELS.items()),
            )

            async def regenerate(_reason: str) -> None:
                pass

            watchers.append(PolicyWatcher(client, pm, regenerate, node=node))
        try:
            for w in watchers:
                w.start()
                await w.wait_synced(10)
            await kube.create(CNP, cnp("web", "80"), "t")
            await kube.create(CCNP, CLUSTERWIDE)
            nodes: dict[str, Any] = {}

            async def status_of(rt: Any, name: str, ns: str | None) -> dict[str, Any]:
                got: dict[str, Any] = (await kube.get(rt, name, ns)).get("status") or {}
                return got.get("nodes") or {}

            for rt, name, ns in ((CNP, "web", "t"), (CCNP, "all", None)):
                deadline = asyncio.get_running_loop().time() + 10
                while set(nodes := await status_of(rt, name, ns)) != {"n1", "n2"}:
                    assert asyncio.get_running_loop().time() < deadline, nodes
                    await asyncio.sleep(0.05)
                for node, w in zip(("n1", "n2"), watchers, strict=True):
                    entry = nodes[node]
                    assert entry["ok"] is True and entry["enforcing"] is True, entry
                    assert entry["localPolicyRevision"] >= 1 and "error" not in entry
                    assert entry["lastUpdated"].endswith("Z")
                    assert w.status_writer.writes >= 1
            assert (await status_of(CNP, "web", "t"))["n1"]["annotations"] == {"team": "shop"}

            # an update: each node's revision moves, both entries stay
            before = await status_of(CNP, "web", "t")
            current = await kube.get(CNP, "web", "t")
            current["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"] = "443"
            await kube.replace(CNP, current)
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                after = await status_of(CNP, "web", "t")
                rev = {n: e.get("localPolicyRevision") for n, e in after.items()}
                if all(rev[n] > before[n]["localPolicyRevision"] for n in ("n1", "n2")):
                    break
                assert asyncio.get_running_loop().time() < deadline, after
                await asyncio.sleep(0.05)
            writes = [w.status_writer.writes for w in watchers]

            # written behind the API server: a version the parser refuses
            host, port = control_plane.etcd.host_port
            etcd = EtcdClient(f"{host}:{port}")
            try:
                bad = prepare_create(CNP, cnp("bad", "80"), "t")
                bad["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"] = "99999"
                await Storage(etcd).create(CNP, bad)
            finally:
                await etcd.close()
            deadline = asyncio.get_running_loop().time() + 10
            while set(nodes := await status_of(CNP, "bad", "t")) != {"n1", "n2"}:
                assert asyncio.get_running_loop().time() < deadline, nodes
                await asyncio.sleep(0.05)
            for entry in nodes.values():
                assert entry["ok"] is False and entry["enforcing"] is False, entry
                assert "99999" in entry["error"], entry
            for w in watchers:
                repo = w._policy.repo
                assert repo.get("CiliumNetworkPolicy/t/bad") is None
                assert repo.get("CiliumNetworkPolicy/t/web") is not None
            # the status writes came back as watch events and were not applied again
            await asyncio.sleep(0.5)
            assert [w.status_writer.writes for w in watchers] == [n + 1 for n in writes]

            # fixed through the API: each entry turns ok, its old error removed (merge patch null)
            fixed = await kube.get(CNP, "bad", "t")
            fixed["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"] = "8080"
            await kube.replace(CNP, fixed)
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                nodes = await status_of(CNP, "bad", "t")
                if set(nodes) == {"n1", "n2"} and all(e.get("ok") for e in nodes.values()):
                    break
                assert asyncio.get_running_loop().time() < deadline, nodes
                await asyncio.sleep(0.05)
            assert all("error" not in e and e["enforcing"] for e in nodes.values()), nodes
            assert all(w._policy.repo.get("CiliumNetworkPolicy/t/bad") for w in watchers)
        finally:
            for w in watchers:
                await w.stop()
            for c in clients:
                await c.close()

    run(control_plane, body)


def endpoint(ep_id: int) -> Endpoint:
    return Endpoint(
        id=ep_id, container_id="c", pod_name="web-0", namespace="t", labels={},
        identity=300, state=EndpointState.READY, ipv4="10.0.0.5/32", ipv6=None,
        ifname="eth0", netns="/nonexistent", lxc="lxc1", lxc_ifindex=0, mac="",
        node_mac="", created_at=0.0,
    )  # fmt: skip


def test_cilium_endpoint_named_ports_and_uid_precondition(control_plane: ControlPlane) -> None:
    async def body(kube: KubeClient) -> None:
        one, two = EndpointSync(kube, "n1"), EndpointSync(kube, "n2")
        one.start()
        two.start()
        try:
            ports = {"http": (80, "TCP"), "dns": (53, "udp")}
            one.changed("t", "web-0", endpoint_status(endpoint(1), "n1", ["k8s:app=web"],
                                                      (True, False), ports))  # fmt: skip
            assert await one.flushed(10)
            cep = await kube.get(CILIUM_ENDPOINTS, "web-0", "t")
            assert cep["status"]["named-ports"] == [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "http", "port": 80, "protocol": "TCP"},
            ]
            first_uid = cep["metadata"]["uid"]

            # web-0 comes back on n2 before n1 got to delete its endpoint: n2 replaces n1's
            # leftover, and n1's late delete (precondition: its uid) leaves n2's object alone
            two.changed("t", "web-0", endpoint_status(endpoint(7), "n2", [], (False, False)))
            assert await two.flushed(10)
            cep = await kube.get(CILIUM_ENDPOINTS, "web-0", "t")
            assert cep["metadata"]["uid"] != first_uid
            assert cep["status"]["networking"]["node"] == "n2"
            assert cep["status"]["named-ports"] == []  # that pod declares none
            one.deleted("t", "web-0")
            assert await one.flushed(10)
            cep = await kube.get(CILIUM_ENDPOINTS, "web-0", "t")
            assert cep["status"]["networking"]["node"] == "n2" and cep["status"]["id"] == 7

            # a restarted n1 (no uid remembered) does not delete n2's either; n2 deletes its own
            fresh = EndpointSync(kube, "n1")
            fresh.start()
            fresh.deleted("t", "web-0")
            assert await fresh.flushed(10)
            await fresh.stop()
            assert (await kube.get(CILIUM_ENDPOINTS, "web-0", "t"))["status"]["id"] == 7
            two.deleted("t", "web-0")
            assert await two.flushed(10)
            listed = await kube.list(CILIUM_ENDPOINTS, namespace="t")
            assert listed["items"] == []

            # with node IPs, networking.node is the node's IP (upstream's NodeIP): a restarted
            # n3 knows its own by that IP, and n1 takes over n3's leftover named by it
            three = EndpointSync(kube, "n3", ["172.18.0.4", "fc00::4"])
            three.start()
            three.changed(
                "t", "db-0", endpoint_status(endpoint(3), "172.18.0.4", [], (False, False))
            )
            assert await three.flushed(10)
            await three.stop()
            fresh = EndpointSync(kube, "n3", ["172.18.0.4", "fc00::4"])
            fresh.start()
            fresh.deleted("t", "db-0")
            assert await fresh.flushed(10)
            await fresh.stop()
            assert (await kube.list(CILIUM_ENDPOINTS, namespace="t"))["items"] == []
            three = EndpointSync(kube, "n3", ["172.18.0.4"])
            three.start()
            three.changed(
                "t", "db-0", endpoint_status(endpoint(3), "172.18.0.4", [], (False, False))
            )
            assert await three.flushed(10)
            await three.stop()
            one.changed("t", "db-0", endpoint_status(endpoint(4), "n1", [], (False, False)))
            assert await one.flushed(10)
            cep = await kube.get(CILIUM_ENDPOINTS, "db-0", "t")
            assert cep["status"]["networking"]["node"] == "n1" and cep["status"]["id"] == 4
        finally:
            await one.stop()
            await two.stop()

    run(control_plane, body)
