"""The controller manager against a real etcd + API server, with no kubelet: the test plays the
kubelet (a task that marks every bound pod Running and Ready with an address), so what is
checked is what the controllers and the scheduler do through the API: pods created, bound,
spread, recreated, scaled (``kubectl scale``), rolled (``kubectl rollout status``), ordered,
garbage-collected, and EndpointSlices that follow them (or mirror a selector-less Service's
Endpoints)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ciliary.k8s.resources import by_path
from ciliary.kube.client import ApiError, KubeClient
from ciliary.lab.controlplane import restart_apiserver
from tests.integration.controllers.conftest import Cluster

pytestmark = pytest.mark.timeout(240)

PODS = by_path("", "v1", "pods")
NODES = by_path("", "v1", "nodes")
SERVICES = by_path("", "v1", "services")
NAMESPACES = by_path("", "v1", "namespaces")
DEPLOYMENTS = by_path("apps", "v1", "deployments")
REPLICASETS = by_path("apps", "v1", "replicasets")
DAEMONSETS = by_path("apps", "v1", "daemonsets")
STATEFULSETS = by_path("apps", "v1", "statefulsets")
SLICES = by_path("discovery.k8s.io", "v1", "endpointslices")
ENDPOINTS = by_path("", "v1", "endpoints")

Obj = dict[str, Any]
NS = "t"


def node(name: str, **labels: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}


def template(app: str, **extra: Any) -> Obj:
    return {
        "metadata": {"labels": {"app": app}},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "busybox",
                    "command": ["sleep", "infinity"],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    **extra,
                }
            ]
        },
    }


def workload(kind: str, name: str, app: str, **spec: Any) -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": NS},
        "spec": {"selector": {"matchLabels": {"app": app}}, "template": template(app), **spec},
    }


async def pods(kube: KubeClient, selector: str = "") -> list[Obj]:
    doc = await kube.list(PODS, namespace=NS, label_selector=selector or None)
    items: list[Obj] = doc["items"]
    return sorted(items, key=lambda p: p["metadata"]["name"])


async def eventually(what: str, check: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    """Until ``check`` returns something truthy (it may raise AssertionError meanwhile)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            got = await check()
            if got:
                return got
            last = got
        except AssertionError as err:
            last = err
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {last}")


class Kubelet:
    """Marks bound pods Running/Ready with addresses, as the kubelet and CNI would; ``hold``
    names pods to leave not ready."""

    def __init__(self, kube: KubeClient, *, dual_stack: bool = False) -> None:
        self.kube = kube
        self.dual_stack = dual_stack
        self.hold: set[str] = set()
        self.addresses: dict[str, int] = {}

    async def run(self) -> None:
        while True:
            # the API server may be restarting: as a kubelet, try again
            try:
                await self._pass()
            except ApiError as err:
                if not err.unavailable:
                    raise
            await asyncio.sleep(0.05)

    async def _pass(self) -> None:
        for p in await pods(self.kube):
            name = p["metadata"]["name"]
            if not p["spec"].get("nodeName") or name in self.hold:
                continue
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p.get("status", {}).get("conditions") or []
            ):
                continue
            n = self.addresses.setdefault(p["metadata"]["uid"], len(self.addresses) + 1)
            ips = [{"ip": f"10.244.{n // 250}.{n % 250 + 2}"}]
            if self.dual_stack:
                ips.append({"ip": f"fd00::{n:x}"})
            status = {
                "phase": "Running",
                "podIP": ips[0]["ip"],
                "podIPs": ips,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                    }
                ],
            }
            try:
                await self.kube.patch(PODS, name, {"status": status}, NS, subresource="status")
            except ApiError as err:
                if not err.not_found:
                    raise


def run(
    cluster: Cluster, body: Callable[[KubeClient, Kubelet], Awaitable[None]], **kw: Any
) -> None:
    async def main() -> None:
        kube = await KubeClient.connect(cluster.cp.kubeconfig)
        kubelet = Kubelet(kube, **kw)
        task: asyncio.Task[None] | None = None
        try:
            await kube.create(NAMESPACES, {"metadata": {"name": NS}})
            for n in ("node1", "node2"):
                await kube.create(NODES, node(n, zone=n[-1]))
            task = asyncio.create_task(kubelet.run(), name="test-kubelet")
            await body(kube, kubelet)
            assert not task.done(), task.exception()
        finally:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await kube.close()
            await asyncio.sleep(0.25)

    asyncio.run(main())
    assert cluster.manager.poll() is None, "controller-manager died"


def kubectl(cluster: Cluster, *args: str) -> str:
    out = subprocess.run(
        ["kubectl", "--kubeconfig", str(cluster.cp.kubeconfig), "-n", NS, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def ready(p: Obj) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in p.get("status", {}).get("conditions") or []
    )


def test_deployment_spread_recreate_scale_rollout_and_delete(cluster: Cluster) -> None:
    async def body(kube: KubeClient, kubelet: Kubelet) -> None:
        await kube.create(DEPLOYMENTS, workload("Deployment", "web", "web", replicas=4), NS)

        async def exactly(n: int) -> list[Obj]:
            got = [p for p in await pods(kube, "app=web") if ready(p)]
            if len(got) != n or len(await pods(kube, "app=web")) != n:
                return []
            return got

        async def spread(n: int) -> list[Obj]:
            got = await exactly(n)
            if got:
                per_node = Counter(p["spec"]["nodeName"] for p in got)
                assert sorted(per_node.values()) == [n // 2, n - n // 2], per_node
            return got

        first = await eventually("4 ready pods spread 2/2", lambda: spread(4))
        rs_list = (await kube.list(REPLICASETS, namespace=NS))["items"]
        assert len(rs_list) == 1
        rs = rs_list[0]
        hash_ = rs["metadata"]["labels"]["pod-template-hash"]
        assert rs["metadata"]["name"] == f"web-{hash_}"
        assert rs["spec"]["selector"]["matchLabels"] == {"app": "web", "pod-template-hash": hash_}
        deploy = await kube.get(DEPLOYMENTS, "web", NS)
        owner = rs["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"], owner["controller"]) == (
            "Deployment",
            deploy["metadata"]["uid"],
            True,
        )
        for p in first:
            assert p["metadata"]["labels"]["pod-template-hash"] == hash_
            assert p["metadata"]["name"].startswith(f"web-{hash_}-")
            ref = p["metadata"]["ownerReferences"][0]
            assert (ref["kind"], ref["uid"], ref["controller"]) == (
                "ReplicaSet",
                rs["metadata"]["uid"],
                True,
            )

        async def deploy_status(n: int) -> bool:
            st = (await kube.get(DEPLOYMENTS, "web", NS)).get("status") or {}
            conditions = {c["type"]: c for c in st.get("conditions") or []}
            return (
                st.get("availableReplicas") == n
                and st.get("readyReplicas") == n
                and st.get("updatedReplicas") == n
                and st.get("replicas") == n
                and conditions.get("Available", {}).get("status") == "True"
                and conditions.get("Progressing", {}).get("reason") == "NewReplicaSetAvailable"
            )

        await eventually("deployment status 4/4", lambda: deploy_status(4))

        # a deleted pod is replaced by a new one
        victim = first[0]["metadata"]["name"]
        await kube.delete(PODS, victim, NS)

        async def replaced() -> bool:
            names = {p["metadata"]["name"] for p in await spread(4)}
            return bool(names) and victim not in names

        await eventually("the deleted pod replaced", replaced)

        # kubectl scale, up then down (through /scale)
        kubectl(cluster, "scale", "deployment", "web", "--replicas=6")
        await eventually("6 pods 3/3", lambda: spread(6))
        kubectl(cluster, "scale", "deployment", "web", "--replicas=2")
        # which pods go is kube's ActivePods order (not placement): the scheduler spreads, a
        # scale-down need not keep the spread (upstream does not promise it either)
        await eventually("2 pods", lambda: exactly(2))
        await eventually("deployment status 2/2", lambda: deploy_status(2))

        # rolling update: every pod replaced by one of the new template
        await kube.patch(
            DEPLOYMENTS,
            "web",
            {"spec": {"template": {"metadata": {"annotations": {"rev": "2"}}}}},
            NS,
        )

        async def rolled() -> bool:
            got = await spread(2)
            hashes = {p["metadata"]["labels"]["pod-template-hash"] for p in got}
            return bool(got) and hashes != {hash_} and len(hashes) == 1

        await eventually("all pods of the new template", rolled)
        kubectl(cluster, "rollout", "status", "deployment/web", "--timeout=30s")
        await eventually("deployment status 2/2 after the rollout", lambda: deploy_status(2))
        sets = (await kube.list(REPLICASETS, namespace=NS))["items"]
        assert len(sets) == 2
        assert {s["spec"]["replicas"] for s in sets if s["metadata"]["name"] != f"web-{hash_}"} == {
            2
        }
        assert (
            next(s for s in sets if s["metadata"]["name"] == f"web-{hash_}")["spec"]["replicas"]
            == 0
        )

        # deleting the Deployment deletes its ReplicaSets and their pods
        await kube.delete(DEPLOYMENTS, "web", NS)

        async def collected() -> bool:
            left_rs = (await kube.list(REPLICASETS, namespace=NS))["items"]
            return not left_rs and not await pods(kube)

        await eventually("ReplicaSets and pods garbage-collected", collected)

    run(cluster, body)


def test_daemonset_one_pod_per_matching_node(cluster: Cluster) -> None:
    async def body(kube: KubeClient, kubelet: Kubelet) -> None:
        await kube.create(DAEMONSETS, workload("DaemonSet", "agent", "agent"), NS)

        async def one_each(nodes: set[str]) -> bool:
            got = await pods(kube, "app=agent")
            on = [p["spec"].get("nodeName") for p in got]
            return sorted(on) == sorted(nodes) and all(ready(p) for p in got)

        await eventually("a pod on node1 and node2", lambda: one_each({"node1", "node2"}))
        # a third node gets one; a node selector restricts them
        await kube.create(NODES, node("node3", zone="3", role="edge"))
        await eventually("a pod on each of 3 nodes", lambda: one_each({"node1", "node2", "node3"}))

        async def status(n: int) -> bool:
            st = (await kube.get(DAEMONSETS, "agent", NS)).get("status") or {}
            return st.get("desiredNumberScheduled") == n and st.get("numberReady") == n

        await eventually("daemonset status 3/3", lambda: status(3))
        await kube.patch(
            DAEMONSETS,
            "agent",
            {"spec": {"template": {"spec": {"nodeSelector": {"role": "edge"}}}}},
            NS,
        )
        await eventually("only node3 keeps a pod", lambda: one_each({"node3"}))
        await eventually("daemonset status 1/1", lambda: status(1))

        # the scheduler: a bare pod with a nodeSelector goes to the only matching node, one
        # matching no node stays Pending with the scheduler's reason
        for name, selector in (("pinned", {"zone": "2"}), ("nowhere", {"zone": "9"})):
            await kube.create(
                PODS,
                {
                    "metadata": {"name": name},
                    "spec": {"nodeSelector": selector, **template("x")["spec"]},
                },
                NS,
            )

        async def placed() -> bool:
            pinned = await kube.get(PODS, "pinned", NS)
            nowhere = await kube.get(PODS, "nowhere", NS)
            conditions = {c["type"]: c for c in nowhere.get("status", {}).get("conditions") or []}
            return (
                pinned["spec"].get("nodeName") == "node2"
                and "nodeName" not in nowhere["spec"]
                and conditions.get("PodScheduled", {}).get("reason") == "Unschedulable"
                and "0/3 nodes are available" in conditions["PodScheduled"]["message"]
            )

        await eventually("pinned on node2, nowhere unschedulable", placed)
        # bound through pods/binding (the scheduler has no other way): a second binding is the
        # server's 409, naming the node the scheduler chose
        again = {"metadata": {"name": "pinned"}, "target": {"kind": "Node", "name": "node1"}}
        with pytest.raises(ApiError) as err:
            await kube.create(PODS, again, NS, subresource="binding")
        assert err.value.conflict and 'already assigned to node "node2"' in err.value.message

    run(cluster, body)


def test_statefulset_ordered_create_and_scale_down(cluster: Cluster) -> None:
    async def body(kube: KubeClient, kubelet: Kubelet) -> None:
        kubelet.hold = {"db-0", "db-1", "db-2"}
        await kube.create(
            STATEFULSETS, workload("StatefulSet", "db", "db", replicas=3, serviceName="db"), NS
        )

        async def names() -> list[str]:
            return [p["metadata"]["name"] for p in await pods(kube, "app=db")]

        await eventually("db-0", lambda: _equals(names, ["db-0"]))
        await asyncio.sleep(1.0)
        assert await names() == ["db-0"], "db-1 made before db-0 was ready"
        db0 = await kube.get(PODS, "db-0", NS)
        assert db0["spec"]["hostname"] == "db-0" and db0["spec"]["subdomain"] == "db"
        assert db0["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"] == "db-0"
        kubelet.hold.discard("db-0")
        await eventually("db-1", lambda: _equals(names, ["db-0", "db-1"]))
        await asyncio.sleep(0.5)
        assert await names() == ["db-0", "db-1"]
        kubelet.hold.clear()
        await eventually("db-2", lambda: _equals(names, ["db-0", "db-1", "db-2"]))

        async def sts_ready(n: int) -> bool:
            st = (await kube.get(STATEFULSETS, "db", NS)).get("status") or {}
            return st.get("readyReplicas") == n and st.get("replicas") == n

        await eventually("statefulset status 3/3", lambda: sts_ready(3))
        # a deleted pod comes back under its name
        uid = (await kube.get(PODS, "db-1", NS))["metadata"]["uid"]
        await kube.delete(PODS, "db-1", NS)

        async def back() -> bool:
            try:
                p = await kube.get(PODS, "db-1", NS)
            except ApiError:
                return False
            return p["metadata"]["uid"] != uid and ready(p)

        await eventually("db-1 recreated", back)
        # scale down from the highest ordinal
        await kube.patch(STATEFULSETS, "db", {"spec": {"replicas": 1}}, NS)
        seen: list[list[str]] = []

        async def down() -> bool:
            now = await names()
            if not seen or seen[-1] != now:
                seen.append(now)
            return now == ["db-0"]

        await eventually("scaled to db-0", down)
        assert all(s in (["db-0", "db-1", "db-2"], ["db-0", "db-1"], ["db-0"]) for s in seen), seen
        await eventually("statefulset status 1/1", lambda: sts_ready(1))

    run(cluster, body)


async def _equals(get: Callable[[], Awaitable[list[str]]], want: list[str]) -> bool:
    return await get() == want


def test_endpointslices_follow_ready_pods(cluster: Cluster) -> None:
    async def body(kube: KubeClient, kubelet: Kubelet) -> None:
        kubelet.hold = set()
        await kube.create(
            SERVICES,
            {
                "metadata": {"name": "web", "labels": {"tier": "front"}},
                "spec": {
                    "selector": {"app": "web"},
                    "ports": [
                        {"name": "http", "port": 80, "targetPort": "http"},
                        {"name": "metrics", "port": 9090, "targetPort": 9091, "protocol": "TCP"},
                    ],
                },
            },
            NS,
        )

        async def slices() -> list[Obj]:
            doc = await kube.list(
                SLICES, namespace=NS, label_selector="kubernetes.io/service-name=web"
            )
            items: list[Obj] = doc["items"]
            return items

        # no pods yet: one empty placeholder
        placeholder = await eventually("a placeholder slice", slices)
        assert len(placeholder) == 1 and not placeholder[0].get("endpoints")
        await kube.create(DEPLOYMENTS, workload("Deployment", "web", "web", replicas=2), NS)

        async def filled() -> list[Obj]:
            got = await slices()
            by_type = {s["addressType"]: s for s in got}
            if set(by_type) != {"IPv4", "IPv6"}:
                return []
            for s in got:
                eps = s.get("endpoints") or []
                if len(eps) != 2 or not all(e["conditions"]["ready"] for e in eps):
                    return []
            return got

        got = await eventually("IPv4 and IPv6 slices with 2 ready endpoints", filled)
        web_pods = {p["metadata"]["name"]: p for p in await pods(kube, "app=web")}
        for s in got:
            assert s["metadata"]["labels"]["kubernetes.io/service-name"] == "web"
            assert s["metadata"]["labels"]["tier"] == "front"
            assert (
                s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"]
                == "endpointslice-controller.k8s.io"
            )
            assert s["metadata"]["ownerReferences"][0]["kind"] == "Service"
            assert sorted((p["name"], p["port"], p["protocol"]) for p in s["ports"]) == [
                ("http", 8080, "TCP"),
                ("metrics", 9091, "TCP"),
            ]
            for e in s["endpoints"]:
                pod = web_pods[e["targetRef"]["name"]]
                family = 6 if s["addressType"] == "IPv6" else 4
                want = [
                    i["ip"] for i in pod["status"]["podIPs"] if (":" in i["ip"]) == (family == 6)
                ]
                assert e["addresses"] == want
                assert e["nodeName"] == pod["spec"]["nodeName"]
                assert e["conditions"] == {"ready": True, "serving": True, "terminating": False}

        # a pod that turns unready is listed not ready; a deleted one leaves
        name = sorted(web_pods)[0]
        kubelet.hold.add(name)
        await kube.patch(
            PODS,
            name,
            {"status": {"conditions": [{"type": "Ready", "status": "False"}]}},
            NS,
            subresource="status",
        )

        async def unready() -> bool:
            for s in await slices():
                for e in s.get("endpoints") or []:
                    if e["targetRef"]["name"] == name:
                        return e["conditions"] == {
                            "ready": False,
                            "serving": False,
                            "terminating": False,
                        }
            return False

        await eventually("the unready endpoint", unready)
        await kube.delete(SERVICES, "web", NS)
        await eventually("slices collected with their Service", lambda: _none(slices))

    run(cluster, body, dual_stack=True)


async def _none(get: Callable[[], Awaitable[list[Obj]]]) -> bool:
    return not await get()


def test_endpoints_of_a_selector_less_service_are_mirrored(cluster: Cluster) -> None:
    """The user's Endpoints of a Service without a selector become EndpointSlices (the
    mirroring controller's), follow its changes, and go when the Service gains a selector."""

    async def body(kube: KubeClient, _kubelet: Kubelet) -> None:
        svc: Obj = {"metadata": {"name": "db"}, "spec": {"ports": [{"name": "pg", "port": 5432}]}}
        await kube.create(SERVICES, svc, NS)
        eps: Obj = {
            "metadata": {"name": "db", "labels": {"team": "data"}},
            "subsets": [
                {
                    "addresses": [{"ip": "192.0.2.10"}, {"ip": "2001:db8::10"}],
                    "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
                }
            ],
        }
        await kube.create(ENDPOINTS, eps, NS)

        async def mirrored() -> list[Obj]:
            doc = await kube.list(
                SLICES,
                namespace=NS,
                label_selector="endpointslice.kubernetes.io/managed-by="
                "endpointslicemirroring-controller.k8s.io",
            )
            items: list[Obj] = doc["items"]
            return items

        async def addresses(want: set[str]) -> bool:
            got = await mirrored()
            return {a for s in got for e in s["endpoints"] for a in e["addresses"]} == want

        await eventually(
            "both families mirrored", lambda: addresses({"192.0.2.10", "2001:db8::10"})
        )
        for s in await mirrored():
            labels = s["metadata"]["labels"]
            assert labels["kubernetes.io/service-name"] == "db" and labels["team"] == "data"
            assert s["metadata"]["ownerReferences"][0]["kind"] == "Endpoints"
            assert s["ports"] == [{"name": "pg", "port": 5432, "protocol": "TCP"}]
        eps["subsets"][0]["addresses"] = [{"ip": "192.0.2.11"}]
        live = await kube.get(ENDPOINTS, "db", NS)
        eps["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
        await kube.replace(ENDPOINTS, {**eps, "metadata": {**eps["metadata"], "namespace": NS}})
        await eventually("the change mirrored", lambda: addresses({"192.0.2.11"}))
        await kube.patch(SERVICES, "db", {"spec": {"selector": {"app": "db"}}}, NS)
        await eventually("no mirror for a Service with a selector", lambda: _none(mirrored))

    run(cluster, body)


def test_api_server_restart_then_controllers_carry_on(cluster: Cluster) -> None:
    """kill -9 of the API server: the manager's informers resume from their last
    resourceVersion once it is back, so a pod deleted afterwards is replaced, once."""

    async def body(kube: KubeClient, kubelet: Kubelet) -> None:
        await kube.create(DEPLOYMENTS, workload("Deployment", "web", "web", replicas=2), NS)

        async def two_ready() -> list[Obj]:
            got = await pods(kube, "app=web")
            return got if len(got) == 2 and all(ready(p) for p in got) else []

        before = await eventually("2 ready pods", two_ready)
        os.kill(cluster.cp.apiserver_pid, signal.SIGKILL)
        await asyncio.to_thread(restart_apiserver, cluster.cp)
        victim = before[0]["metadata"]["name"]
        await eventually("the API answers again", lambda: _answers(kube))
        await kube.delete(PODS, victim, NS)

        async def replaced() -> bool:
            got = await two_ready()
            return bool(got) and victim not in {p["metadata"]["name"] for p in got}

        await eventually("the deleted pod replaced after the restart", replaced)
        await asyncio.sleep(1.0)
        assert len(await pods(kube, "app=web")) == 2

    run(cluster, body)


async def _answers(kube: KubeClient) -> bool:
    try:
        await kube.list(NAMESPACES)
    except ApiError:
        return False
    return True
