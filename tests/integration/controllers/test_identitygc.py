"""The operator's identity GC against a real API server + etcd: identities no CiliumEndpoint
names are deleted once unused for the grace period, used ones never; a reference coming back
stops the clock; the running collector (short grace) removes what allocators left unused; the
``ciliary-operator`` process does the same and exits 0 on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from ciliary.agent.k8s.identity import IDENTITIES, CRDIdentityAllocator, identity_object
from ciliary.controllers.identitygc import ENDPOINTS, IdentityGC, referenced_identities
from ciliary.kube.client import ApiError, KubeClient
from ciliary.lab.controlplane import ControlPlane
from tests.integration.controllers.conftest import VENV_BIN
from tests.integration.kube.helpers import eventually, run

pytestmark = pytest.mark.timeout(120)


async def endpoint(kube: KubeClient, name: str, identity: int) -> None:
    await kube.create(ENDPOINTS, {"metadata": {"name": name}}, "t")
    await kube.patch(
        ENDPOINTS, name, {"status": {"identity": {"id": identity}}}, "t", subresource="status"
    )


async def exists(kube: KubeClient, number: int) -> bool:
    try:
        await kube.get(IDENTITIES, str(number))
    except ApiError as err:
        assert err.not_found
        return False
    return True


def test_referenced_identities() -> None:
    ceps = [
        {"status": {"identity": {"id": 300}}},
        {"status": {}},
        {"metadata": {"name": "x"}},
        {"status": {"identity": {"id": 301, "labels": []}}},
    ]
    assert referenced_identities(ceps) == {300, 301}


def test_unused_identities_deleted_after_grace(control_plane: ControlPlane) -> None:
    async def body(kube: KubeClient) -> None:
        for number, app in ((300, "a"), (301, "b"), (302, "c")):
            await kube.create(IDENTITIES, identity_object(number, {"k8s:app": app}))
        await endpoint(kube, "ep-a", 300)
        await endpoint(kube, "ep-c", 302)
        now = [0.0]
        gc = IdentityGC(kube, grace=10.0, clock=lambda: now[0])
        gc.start()
        try:
            assert await gc.run_once() == []  # 301's clock starts
            now[0] = 5.0
            await kube.delete(ENDPOINTS, "ep-c", "t")  # 302 unused from here
            assert await gc.run_once() == []  # the pass sees the delete (cache caught up)
            now[0] = 10.5
            assert await gc.run_once() == [301]
            assert not await exists(kube, 301)
            await kube.patch(
                ENDPOINTS, "ep-a", {"status": {"identity": {"id": 302}}}, "t", subresource="status"
            )
            now[0] = 12.0
            assert await gc.run_once() == []  # 302 used again; 300's clock starts
            now[0] = 21.0
            assert await gc.run_once() == []
            now[0] = 22.5
            assert await gc.run_once() == [300]
            assert await exists(kube, 302) and not await exists(kube, 300)
            assert gc.deleted == [301, 300]
        finally:
            await gc.stop()

    run(control_plane, body)


def test_running_collector_with_short_grace(control_plane: ControlPlane) -> None:
    async def body(kube: KubeClient) -> None:
        alloc = CRDIdentityAllocator(kube)
        alloc.start()
        gc = IdentityGC(kube, grace=0.5, interval=0.1)
        task = asyncio.create_task(gc.run(), name="identity-gc")
        try:
            used = await alloc.allocate(["k8s:app=used"])
            await endpoint(kube, "ep", used)
            unused = await alloc.allocate(["k8s:app=unused"])
            deleted: list[int] = []
            alloc.on_deleted.append(lambda n, _labels: deleted.append(n))
            await eventually(lambda: deleted == [unused], 10, "the unused identity deleted")
            await asyncio.sleep(1.0)  # two grace periods more: the used one stays
            assert await exists(kube, used) and gc.deleted == [unused]
            assert alloc.lookup(unused) is None
            # allocated again after its deletion: a (new) identity exists for the set
            again = await alloc.allocate(["k8s:app=unused"])
            assert await exists(kube, again)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await alloc.stop()

    run(control_plane, body)


def test_operator_process(control_plane: ControlPlane, tmp_path: Path) -> None:
    async def body(kube: KubeClient) -> None:
        await kube.create(IDENTITIES, identity_object(300, {"k8s:app": "used"}))
        await kube.create(IDENTITIES, identity_object(301, {"k8s:app": "unused"}))
        await endpoint(kube, "ep", 300)
        log = tmp_path / "operator.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    str(VENV_BIN / "ciliary-operator"),
                    "--kubeconfig",
                    str(control_plane.kubeconfig),
                    "--identity-gc-interval",
                    "0.2",
                    "--identity-heartbeat-timeout",
                    "0.5",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        try:
            deadline = asyncio.get_running_loop().time() + 15
            while await exists(kube, 301):
                assert asyncio.get_running_loop().time() < deadline, log.read_text()
                assert proc.poll() is None, log.read_text()
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # two grace periods more: the used one stays
            assert await exists(kube, 300)
            os.kill(proc.pid, signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 10) == 0, log.read_text()
            assert "deleted unused identity 301" in log.read_text()
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()

    run(control_plane, body)
