"""This node's pods and the cluster's namespaces from the Kubernetes API (Cilium's pod and
namespace watchers): labels for identities, annotations for IPAM, named ports for policy.

Pods are watched with ``fieldSelector=spec.nodeName=<node>`` (only this node's, as upstream), all
namespaces (their labels are folded into identities). A CNI ADD can come before the watch has
delivered the pod (the runtime creates the sandbox as soon as the pod is bound), so a pod or
namespace missing from the informer's store is read from the API server once (upstream's
endpoint creation does the same ``GET``); a 404 means the cluster has no such pod, and the
endpoint is then known by its CNI request only, as without an API.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from ciliary.agent.podstore import PodMeta, pod_meta
from ciliary.k8s.resources import ResourceType, by_path
from ciliary.kube.client import ApiError, KubeClient, KubeObject
from ciliary.kube.informer import HandlerFuncs, Informer

log = logging.getLogger(__name__)

PODS = by_path("", "v1", "pods")
NAMESPACES = by_path("", "v1", "namespaces")


class PodWatcher:
    """A ``PodLookup`` (``await watcher(namespace, name)``) over the node's pod informer."""

    def __init__(
        self,
        client: KubeClient,
        node: str,
        on_pod: Callable[[str, str, PodMeta], Awaitable[object]] | None = None,
    ) -> None:
        self._client = client
        self._on_pod = on_pod
        self.pods = Informer(client, PODS, field_selector=f"spec.nodeName={node}", name="pods")
        self.namespaces = Informer(client, NAMESPACES, name="namespaces")
        self.pods.add_handler(
            HandlerFuncs(add=self._pod_event, update=lambda _old, new: self._pod_event(new))
        )
        self.namespaces.add_handler(
            HandlerFuncs(add=self._namespace_event, update=self._namespace_update)
        )

    async def _pod_event(self, pod: KubeObject) -> None:
        """``on_pod(namespace, name, meta)`` for a pod added or changed on this node."""
        if self._on_pod is None:
            return
        meta = pod.get("metadata") or {}
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        await self._on_pod(namespace, name, pod_meta(pod, self.namespaces.store.get(namespace)))

    async def _namespace_event(self, ns: KubeObject) -> None:
        namespace = str((ns.get("metadata") or {}).get("name", ""))
        for pod in self.pods.store.objects(namespace):
            await self._pod_event(pod)

    async def _namespace_update(self, old: KubeObject, new: KubeObject) -> None:
        if (old.get("metadata") or {}).get("labels") != (new.get("metadata") or {}).get("labels"):
            await self._namespace_event(new)

    def start(self) -> None:
        self.pods.start()
        self.namespaces.start()

    async def wait_synced(self, timeout: float | None = None) -> None:
        await self.pods.wait_synced(timeout)
        await self.namespaces.wait_synced(timeout)

    async def stop(self) -> None:
        await self.pods.stop()
        await self.namespaces.stop()

    async def __call__(self, namespace: str, name: str) -> PodMeta | None:
        pod = self.pods.store.get(f"{namespace}/{name}")
        if pod is None:
            pod = await self._get(PODS, name, namespace)
        if pod is None:
            return None
        ns = self.namespaces.store.get(namespace)
        if ns is None:
            ns = await self._get(NAMESPACES, namespace, None)
        return pod_meta(pod, ns)

    async def _get(self, rt: ResourceType, name: str, namespace: str | None) -> KubeObject | None:
        try:
            return await self._client.get(rt, name, namespace)
        except ApiError as err:
            if not err.not_found:
                log.warning("reading %s %s/%s: %s", rt.kind, namespace or "", name, err)
            return None
