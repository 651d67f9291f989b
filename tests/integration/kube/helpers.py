"""What the Kubernetes client tests share: a client per control plane, a handler that
records what an informer delivers, and a way to wait for it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ciliary.k8s.resources import by_path
from ciliary.kube.client import KubeClient, KubeObject
from ciliary.lab.controlplane import ControlPlane

PODS = by_path("", "v1", "pods")
NAMESPACES = by_path("", "v1", "namespaces")


def pod(name: str, node: str | None = None, **labels: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "busybox"}]}
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }


class Recorder:
    """Records (event, name[, labels]) in delivery order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.objects: list[KubeObject] = []

    def on_add(self, obj: KubeObject) -> None:
        self.calls.append(("add", obj["metadata"]["name"]))
        self.objects.append(obj)

    def on_update(self, old: KubeObject, new: KubeObject) -> None:
        self.calls.append(("update", new["metadata"]["name"]))
        self.objects.append(new)

    def on_delete(self, obj: KubeObject) -> None:
        self.calls.append(("delete", obj["metadata"]["name"]))
        self.objects.append(obj)


async def eventually(check: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)


def run(cp: ControlPlane, body: Callable[[KubeClient], Awaitable[Any]], ns: str = "t") -> Any:
    async def main() -> Any:
        kube = await KubeClient.connect(cp.kubeconfig)
        try:
            if ns:
                await kube.create(NAMESPACES, {"metadata": {"name": ns}})
            return await body(kube)
        finally:
            await kube.close()
            await asyncio.sleep(0.25)  # closed TLS transports finish closing before the loop ends

    return asyncio.run(main())
