"""``dryRun=All`` on every writing verb: the answer is what would be stored, and nothing is.
``kubectl apply --dry-run=server`` of a changed manifest used to change the live object (only
create honoured dryRun)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ciliary.lab.controlplane import ControlPlane

pytestmark = pytest.mark.timeout(120)

KUBECTL = "/usr/bin/kubectl"
DEPLOY = "/apis/apps/v1/namespaces/t/deployments"
MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: t}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec: {{containers: [{{name: c, image: nginx}}]}}
"""


def test_dry_run_writes_nothing(control_plane: ControlPlane, tmp_path: Path) -> None:
    cp = control_plane

    async def main() -> None:
        ctx = cp.ssl_context()
        async with aiohttp.ClientSession(cp.url) as http:

            async def call(
                method: str, path: str, body: Any = None, ct: str = "application/json"
            ) -> tuple[int, Any]:
                data = None if body is None else json.dumps(body)
                async with http.request(
                    method, path, data=data, headers={"Content-Type": ct}, ssl=ctx
                ) as resp:
                    return resp.status, await resp.json()

            assert (await call("POST", "/api/v1/namespaces", {"metadata": {"name": "t"}}))[0] == 201
            created = {
                "metadata": {"name": "web", "finalizers": []},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}},
            }
            status, obj = await call("POST", DEPLOY, created)
            assert status == 201
            rv = obj["metadata"]["resourceVersion"]

            async def replicas() -> int:
                status, live = await call("GET", f"{DEPLOY}/web")
                assert status == 200
                assert live["metadata"]["resourceVersion"] == rv  # nothing was written
                return int(live["spec"]["replicas"])

            merge = "application/merge-patch+json"
            status, out = await call(
                "PATCH", f"{DEPLOY}/web?dryRun=All", {"spec": {"replicas": 7}}, merge
            )
            assert (status, out["spec"]["replicas"], out["metadata"]["resourceVersion"]) == (
                200,
                7,
                rv,
            )
            assert await replicas() == 1
            put = {**obj, "spec": {**obj["spec"], "replicas": 4}}
            status, out = await call("PUT", f"{DEPLOY}/web?dryRun=All", put)
            assert (status, out["spec"]["replicas"]) == (200, 4)
            assert await replicas() == 1
            status, out = await call(
                "PATCH", f"{DEPLOY}/web/scale?dryRun=All", {"spec": {"replicas": 5}}, merge
            )
            assert (status, out["spec"]["replicas"]) == (200, 5)
            assert await replicas() == 1
            apply = "application/apply-patch+yaml"
            status, out = await call(
                "PATCH", f"{DEPLOY}/new?dryRun=All&fieldManager=m", {"spec": {"replicas": 2}}, apply
            )
            assert (status, out["metadata"]["name"]) == (201, "new")
            assert (await call("GET", f"{DEPLOY}/new"))[0] == 404
            status, _ = await call("DELETE", f"{DEPLOY}/web?dryRun=All")
            assert status == 200
            assert await replicas() == 1
            status, _ = await call("DELETE", "/api/v1/namespaces/t?dryRun=All")
            assert status == 200
            assert (await call("GET", "/api/v1/namespaces/t"))[0] == 200
            status, out = await call("DELETE", f"{DEPLOY}?dryRun=All")
            assert (status, len(out["items"])) == (200, 1)
            assert await replicas() == 1
            status, out = await call("DELETE", f"{DEPLOY}/web?dryRun=Some")
            assert (status, out["reason"]) == (400, "BadRequest")
            assert await replicas() == 1
        await asyncio.sleep(0.25)  # closed TLS connections finish closing before the loop ends

    asyncio.run(main())

    manifest = tmp_path / "web.yaml"
    manifest.write_text(MANIFEST.format(replicas=9))

    def kubectl(*args: str) -> str:
        done = subprocess.run(
            [KUBECTL, "--kubeconfig", str(cp.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    for mode in ("--server-side", "--server-side=false"):
        assert "(server dry run)" in kubectl("apply", mode, "--dry-run=server", "-f", str(manifest))
        live = kubectl("get", "deploy", "web", "-n", "t", "-o", "jsonpath={.spec.replicas}")
        assert live == "1"
