"""A list larger than gRPC's default 4 MiB message: kube-apiserver's etcd client accepts any
range response (etcd's Go client defaults its receive limit to MaxInt32), so an unpaginated
list of a big collection must not fail on the API server's side of etcd (found by the
``apiserver`` bench listing 10k ConfigMaps)."""

from __future__ import annotations

import asyncio
import io
import json
import ssl

import aiohttp
import pytest

from ciliary.lab.controlplane import ControlPlane

pytestmark = pytest.mark.timeout(120)

OBJECTS = 6
SIZE = 900 * 1024  # 6 x 900 KiB: one etcd range response of ~5.3 MiB


def test_unpaginated_list_beyond_4_mib(control_plane: ControlPlane) -> None:
    async def main() -> None:
        ctx = control_plane.ssl_context()
        headers = {"Content-Type": "application/json"}
        async with aiohttp.ClientSession(control_plane.url) as http:
            ns = json.dumps({"metadata": {"name": "big"}})
            async with http.post("/api/v1/namespaces", data=ns, headers=headers, ssl=ctx) as r:
                assert r.status == 201
            for n in range(OBJECTS):
                cm = {"metadata": {"name": f"cm{n}"}, "data": {"blob": "x" * SIZE}}
                async with http.post(
                    "/api/v1/namespaces/big/configmaps",
                    data=json.dumps(cm),
                    headers=headers,
                    ssl=ctx,
                ) as r:
                    assert r.status == 201, await r.text()
            async with http.get("/api/v1/namespaces/big/configmaps", ssl=ctx) as r:
                assert r.status == 200, (await r.text())[:300]
                doc = await r.json()
            assert [i["metadata"]["name"] for i in doc["items"]] == [
                f"cm{n}" for n in range(OBJECTS)
            ]
            async with http.get("/api/v1/configmaps?limit=2", ssl=ctx) as r:
                page = await r.json()
            assert len(page["items"]) == 2
            assert page["metadata"]["continue"]
        await asyncio.sleep(0.25)  # closed TLS connections finish closing before the loop ends

    asyncio.run(main())


def test_object_over_etcds_request_limit_is_413_and_not_stored(
    control_plane: ControlPlane,
) -> None:
    """One object is one etcd write: over etcd's --max-request-bytes (etcd's own check) and over
    its gRPC receive limit (gRPC's) the API answers 413 RequestEntityTooLarge naming the limit
    (not a 500), and nothing is stored."""
    headers = {"Content-Type": "application/json"}

    async def refused(
        http: aiohttp.ClientSession, ctx: ssl.SSLContext, name: str, size: int
    ) -> None:
        cm = {"metadata": {"name": name}, "data": {"blob": "x" * size}}
        data = io.BytesIO(json.dumps(cm).encode())
        url = "/api/v1/namespaces/huge/configmaps"
        async with http.post(url, data=data, headers=headers, ssl=ctx) as r:
            body = await r.json()
            assert r.status == 413, body["message"]
        assert body["reason"] == "RequestEntityTooLarge" and body["code"] == 413
        assert f"at most {1536 * 1024} bytes (etcd --max-request-bytes)" in body["message"]
        async with http.get(f"{url}/{name}", ssl=ctx) as r:
            assert r.status == 404

    async def main() -> None:
        ctx = control_plane.ssl_context()
        async with aiohttp.ClientSession(control_plane.url) as http:
            ns = json.dumps({"metadata": {"name": "huge"}})
            async with http.post("/api/v1/namespaces", data=ns, headers=headers, ssl=ctx) as r:
                assert r.status == 201
            await refused(http, ctx, "toobig", 7 << 18)  # 1.75 MiB
            await refused(http, ctx, "waytoobig", 3 << 20)  # 3 MiB
        await asyncio.sleep(0.25)  # closed TLS connections finish closing before the loop ends

    asyncio.run(main())
