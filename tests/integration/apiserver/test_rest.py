"""The REST protocol at the HTTP level, over the lab's TLS: client certificates required,
Status errors with kube-apiserver's reasons and codes, the status subresource, server-side
apply creating what is absent, and the content types served."""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any

import aiohttp
import pytest

from ciliary.lab.controlplane import ControlPlane

pytestmark = pytest.mark.timeout(120)


class Session:
    def __init__(self, cp: ControlPlane, http: aiohttp.ClientSession) -> None:
        self.cp = cp
        self.http = http

    async def call(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body))
        async with self.http.request(
            method,
            self.cp.url + path,
            data=data,
            headers={"Content-Type": content_type},
            ssl=self.cp.ssl_context(),
        ) as resp:
            return resp.status, json.loads(await resp.read())


def run(cp: ControlPlane, body: Any) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            s = Session(cp, http)
            status, _ = await s.call("POST", "/api/v1/namespaces", {"metadata": {"name": "t"}})
            assert status == 201
            await body(s)
        await asyncio.sleep(0.25)  # closed TLS connections finish closing before the loop ends

    asyncio.run(main())


def test_client_certificate_is_required(control_plane: ControlPlane) -> None:
    async def main() -> None:
        no_cert = ssl.create_default_context(cafile=str(control_plane.ca.ca_cert))
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientError):
                async with http.get(control_plane.url + "/api/v1/pods", ssl=no_cert) as resp:
                    await resp.read()
            async with http.get(
                control_plane.url + "/api/v1/pods", ssl=control_plane.ssl_context()
            ) as resp:
                assert resp.status == 200
        await asyncio.sleep(0.25)

    asyncio.run(main())


def test_status_errors_and_subresources(control_plane: ControlPlane) -> None:
    async def body(s: Session) -> None:
        status, doc = await s.call(
            "POST", "/api/v1/namespaces/nope/pods", {"metadata": {"name": "p"}}
        )
        assert (status, doc["reason"], doc["message"]) == (
            404,
            "NotFound",
            'namespaces "nope" not found',
        )
        pod = {
            "metadata": {"name": "p"},
            "spec": {"containers": []},
            "status": {"phase": "Running"},
        }
        status, created = await s.call("POST", "/api/v1/namespaces/t/pods", pod)
        assert status == 201 and created["status"] == {"phase": "Pending"}
        status, doc = await s.call("POST", "/api/v1/namespaces/t/pods", pod)
        assert (status, doc["reason"]) == (409, "AlreadyExists")
        # the main resource ignores status; /status changes only status
        changed = {
            **created,
            "spec": {"containers": [], "nodeName": "n1"},
            "status": {"phase": "X"},
        }
        status, updated = await s.call("PUT", "/api/v1/namespaces/t/pods/p", changed)
        assert status == 200 and updated["status"] == {"phase": "Pending"}
        assert updated["spec"]["nodeName"] == "n1" and updated["metadata"]["generation"] == 2
        status, doc = await s.call("PUT", "/api/v1/namespaces/t/pods/p", changed)
        assert (status, doc["reason"]) == (409, "Conflict")  # created's RV is stale now
        status, after = await s.call(
            "PATCH",
            "/api/v1/namespaces/t/pods/p/status",
            {"status": {"phase": "Running", "podIP": "10.0.0.5"}, "spec": {"nodeName": "other"}},
            "application/merge-patch+json",
        )
        assert status == 200 and after["status"] == {"phase": "Running", "podIP": "10.0.0.5"}
        assert after["spec"]["nodeName"] == "n1"
        assert after["metadata"]["generation"] == 2
        status, doc = await s.call("GET", "/api/v1/pods?fieldSelector=status.podIP%3D10.0.0.5")
        assert [o["metadata"]["name"] for o in doc["items"]] == ["p"]
        status, doc = await s.call("GET", "/api/v1/pods?fieldSelector=spec.bogus%3D1")
        assert (status, doc["reason"]) == (400, "BadRequest")
        assert doc["message"] == "field label not supported: spec.bogus"
        status, doc = await s.call("GET", "/api/v1/pods?labelSelector=a%20in%20(")
        assert (status, doc["reason"]) == (400, "BadRequest")
        status, doc = await s.call("POST", "/api/v1/namespaces/t/pods/p", {})
        assert (status, doc["reason"]) == (405, "MethodNotAllowed")
        status, doc = await s.call(
            "POST", "/api/v1/namespaces/t/pods", b"\x0a\x00", "application/vnd.kubernetes.protobuf"
        )
        assert (status, doc["reason"]) == (415, "UnsupportedMediaType")
        status, doc = await s.call("PATCH", "/api/v1/namespaces/t/pods/p", {}, "text/plain")
        assert (status, doc["reason"]) == (415, "UnsupportedMediaType")
        status, doc = await s.call("GET", "/api/v1/widgets")
        assert (status, doc["reason"]) == (404, "NotFound")
        status, doc = await s.call(
            "PATCH",
            "/api/v1/namespaces/t/pods/p",
            [{"op": "test", "path": "/spec/nodeName", "value": "n9"}],
            "application/json-patch+json",
        )
        assert (status, doc["reason"]) == (422, "Invalid")

    run(control_plane, body)


def test_server_side_apply_creates_then_merges(control_plane: ControlPlane) -> None:
    async def body(s: Session) -> None:
        path = "/apis/apps/v1/namespaces/t/deployments/d?fieldManager=kubectl&force=false"
        applied = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "d", "namespace": "t"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "d"}},
                "template": {
                    "metadata": {"labels": {"app": "d"}},
                    "spec": {
                        "containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]
                    },
                },
            },
        }
        status, first = await s.call("PATCH", path, applied, "application/apply-patch+yaml")
        assert status == 201 and first["metadata"]["generation"] == 1
        again = json.loads(json.dumps(applied))
        again["spec"]["template"]["spec"]["containers"] = [{"name": "b", "image": "z"}]
        status, second = await s.call("PATCH", path, again, "application/apply-patch+yaml")
        assert status == 200
        containers = second["spec"]["template"]["spec"]["containers"]
        # (without managed fields, what the manager dropped ("a") is not pruned as upstream
        # would: only the merge of what it applies is checked)
        assert {c["name"]: c["image"] for c in containers}["b"] == "z"
        assert second["metadata"]["generation"] == 2
        status, scale = await s.call("GET", "/apis/apps/v1/namespaces/t/deployments/d/scale")
        assert status == 200 and scale["kind"] == "Scale" and scale["spec"]["replicas"] == 1

    run(control_plane, body)
