"""``pods/<name>/binding`` against etcd + the API server over TLS: a Binding sets ``nodeName``,
the binding's annotations and PodScheduled True in one write, answers a Success Status (201); a
pod bound twice, a stale uid and a pod being deleted are 409 Conflict, a missing pod 404, a
target that is not a Node 422, any other verb 405; discovery lists ``pods/binding`` with verb
create (kubectl api-resources reads the same documents)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import pytest

from ciliary.k8s.resources import by_path
from ciliary.kube.client import ApiError, KubeClient
from ciliary.lab.controlplane import ControlPlane

pytestmark = pytest.mark.timeout(120)

PODS = by_path("", "v1", "pods")
NAMESPACES = by_path("", "v1", "namespaces")


def binding(pod: str, node: str, kind: str = "Node", **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": pod, **meta},
        "target": {"apiVersion": "v1", "kind": kind, "name": node},
    }


def test_binding_sets_node_once(control_plane: ControlPlane) -> None:
    async def main() -> None:
        kube = await KubeClient.connect(control_plane.kubeconfig)
        try:
            await kube.create(NAMESPACES, {"metadata": {"name": "t"}})
            pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
            created = await kube.create(PODS, pod, "t")
            uid = created["metadata"]["uid"]

            for bad, status, words in (
                (binding("p", "n1", uid="not-the-uid"), 409, "Precondition failed: UID"),
                (binding("p", "svc", kind="Service"), 422, "target.kind"),
            ):
                with pytest.raises(ApiError) as err:
                    await kube.create(PODS, bad, "t", subresource="binding")
                assert (err.value.status, words in err.value.message) == (status, True), err.value
            assert "nodeName" not in (await kube.get(PODS, "p", "t"))["spec"]

            answer = await kube.create(
                PODS,
                binding("p", "n1", uid=uid, annotations={"scheduled-by": "test"}),
                "t",
                subresource="binding",
            )
            assert (answer["kind"], answer["status"], answer["code"]) == ("Status", "Success", 201)
            bound = await kube.get(PODS, "p", "t")
            assert bound["spec"]["nodeName"] == "n1"
            assert bound["metadata"]["annotations"] == {"scheduled-by": "test"}
            conditions = {c["type"]: c["status"] for c in bound["status"]["conditions"]}
            assert conditions == {"PodScheduled": "True"}

            # bound twice: 409, the first binding stands
            with pytest.raises(ApiError) as err:
                await kube.create(PODS, binding("p", "n2"), "t", subresource="binding")
            assert err.value.conflict
            assert 'pod p is already assigned to node "n1"' in err.value.message
            assert (await kube.get(PODS, "p", "t"))["spec"]["nodeName"] == "n1"

            with pytest.raises(ApiError) as err:
                await kube.create(PODS, binding("gone", "n1"), "t", subresource="binding")
            assert err.value.not_found

            # a pod being deleted (held by a finalizer) is not bound
            held = {**pod, "metadata": {"name": "held", "finalizers": ["test/hold"]}}
            await kube.create(PODS, held, "t")
            await kube.delete(PODS, "held", "t")
            with pytest.raises(ApiError) as err:
                await kube.create(PODS, binding("held", "n1"), "t", subresource="binding")
            assert err.value.conflict and "is being deleted" in err.value.message
            await kube.patch(PODS, "held", {"metadata": {"finalizers": None}}, "t")
        finally:
            await kube.close()

    asyncio.run(main())

    # only POST: reading or writing a binding is 405
    out = subprocess.run(
        ["kubectl", "--kubeconfig", str(control_plane.kubeconfig), "get", "--raw",
         "/api/v1/namespaces/t/pods/p/binding"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert out.returncode != 0 and "(MethodNotAllowed)" in out.stderr, out


def test_discovery_lists_binding_with_create(control_plane: ControlPlane) -> None:
    out = subprocess.run(
        ["kubectl", "--kubeconfig", str(control_plane.kubeconfig), "get", "--raw", "/api/v1"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    resources = {r["name"]: r for r in json.loads(out.stdout)["resources"]}
    assert resources["pods/binding"]["verbs"] == ["create"]
    assert resources["pods/binding"]["kind"] == "Binding"
    assert resources["pods/status"]["verbs"] == ["get", "patch", "update"]
