"""A list larger than gRPC's default 4 MiB message: kube-apiserver's etcd client accepts any
range response (etcd's Go client defaults its receive limit to MaxInt32), so an unpaginated
list of a big collection must not fail on the API server's side of etcd (found by the
``apiserver`` bench listing 10k ConfigMaps)."""

from __future__ import annotations

import asyncio
import json

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
