"""The agent's own objects in the cluster: one CiliumEndpoint per endpoint and the node's
CiliumNode (upstream's endpoint sync controller and node registration).

A CiliumEndpoint is named and namespaced like the endpoint's pod; all of it is ``status``
(upstream's shape, ``k8s.cilium``'s models: ``id``, ``identity {id, labels}``, ``networking
{addressing [{ipv4, ipv6}], node}``, ``state``, ``policy {ingress, egress: {enforcing}}``).
It is how other agents and the operator learn an endpoint's identity and addresses: the
operator's identity GC treats an identity named by some CiliumEndpoint as in use.

Writes are asynchronous to the endpoint manager (which calls :meth:`EndpointSync.changed` and
:meth:`EndpointSync.deleted` from its state changes): the latest wanted state per pod is kept and
one worker writes it (create, then the ``status`` subresource, as the API server drops ``status``
on create; replace when it exists; delete when gone), retrying with back-off while the API server
is away. Intermediate states of an endpoint in between are skipped: only the last one counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from ciliary.core.models import Endpoint, EndpointState
from ciliary.k8s.cilium import (
    AddressPair,
    CiliumEndpoint,
    CiliumNode,
    CiliumNodeSpec,
    EndpointIdentity,
    EndpointNetworking,
    EndpointPolicy,
    EndpointStatus,
    NodeAddress,
    NodeIPAMSpec,
    PolicyDirection,
)
from ciliary.k8s.meta import ObjectMeta
from ciliary.k8s.resources import by_path
from ciliary.kube.client import ApiError, KubeClient, KubeObject
from ciliary.kube.informer import Backoff

log = logging.getLogger(__name__)

CILIUM_ENDPOINTS = by_path("cilium.io", "v2", "ciliumendpoints")
CILIUM_NODES = by_path("cilium.io", "v2", "ciliumnodes")
PodKey = tuple[str, str]


def endpoint_status(
    ep: Endpoint, node: str, labels: Iterable[str], enforcing: tuple[bool, bool]
) -> EndpointStatus:
    """The ``status`` of an endpoint's CiliumEndpoint (upstream's shape)."""
    addrs = {k: v.partition("/")[0] for k, v in (("ipv4", ep.ipv4), ("ipv6", ep.ipv6)) if v}
    return EndpointStatus(
        id=ep.id,
        identity=EndpointIdentity(id=ep.identity, labels=sorted(labels)),
        networking=EndpointNetworking(addressing=[AddressPair(**addrs)], node=node),
        state=ep.state.value,
        policy=EndpointPolicy(
            ingress=PolicyDirection(enforcing=enforcing[0]),
            egress=PolicyDirection(enforcing=enforcing[1]),
        ),
    )


def cilium_endpoint(namespace: str, name: str, status: EndpointStatus) -> KubeObject:
    return CiliumEndpoint(
        metadata=ObjectMeta(name=name, namespace=namespace), status=status
    ).to_json()


def cilium_node(
    node: str, addresses: Iterable[str], pod_cidrs: Iterable[str], labels: dict[str, str]
) -> KubeObject:
    """The node's CiliumNode: its addresses (the router addresses, as upstream's
    ``CiliumInternalIP``) and the cluster-pool pod CIDRs it allocates from."""
    return CiliumNode(
        metadata=ObjectMeta(name=node, labels=dict(labels)),
        spec=CiliumNodeSpec(
            addresses=[NodeAddress(type="CiliumInternalIP", ip=a) for a in addresses],
            ipam=NodeIPAMSpec.model_validate({"podCIDRs": list(pod_cidrs)}),
        ),
    ).to_json()


async def register_node(client: KubeClient, obj: KubeObject) -> None:
    """Create the node's CiliumNode, or replace its spec (a restarted agent)."""
    name = str(obj["metadata"]["name"])
    for _ in range(5):
        try:
            current = await client.get(CILIUM_NODES, name)
        except ApiError as err:
            if not err.not_found:
                raise
            try:
                await client.create(CILIUM_NODES, obj)
                return
            except ApiError as err2:
                if err2.already_exists:
                    continue
                raise
        meta = {**current["metadata"], **obj["metadata"]}
        try:
            await client.replace(CILIUM_NODES, {**current, "metadata": meta, "spec": obj["spec"]})
            return
        except ApiError as err:
            if not err.conflict:
                raise
    raise ApiError(409, "Conflict", f"CiliumNode {name} kept changing")


class EndpointSync:
    """Keeps one CiliumEndpoint per endpoint (with a pod) in the API server."""

    def __init__(self, client: KubeClient, backoff: Backoff | None = None) -> None:
        self._client = client
        self._wanted: dict[PodKey, KubeObject | None] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._backoff = backoff or Backoff(initial=0.2, maximum=5.0)
        self._task: asyncio.Task[None] | None = None
        self.writes = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ciliumendpoint-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def changed(self, namespace: str, name: str, status: EndpointStatus) -> None:
        self._want((namespace, name), cilium_endpoint(namespace, name, status))

    def deleted(self, namespace: str, name: str) -> None:
        self._want((namespace, name), None)

    async def flushed(self, timeout: float) -> bool:
        """Until every wanted state is written (tests, shutdown)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _want(self, key: PodKey, obj: KubeObject | None) -> None:
        self._wanted[key] = obj
        self._idle.clear()
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._wanted:
                key = next(iter(self._wanted))
                obj = self._wanted.pop(key)
                try:
                    await self._write(key, obj)
                    self._backoff.reset()
                except ApiError as err:
                    log.warning("CiliumEndpoint %s/%s: %s (retrying)", *key, err)
                    self._wanted.setdefault(key, obj)  # a newer state wins over the retry
                    await asyncio.sleep(self._backoff.delay())
                except Exception:
                    log.exception("CiliumEndpoint %s/%s: write failed", *key)
            self._idle.set()

    async def _write(self, key: PodKey, obj: KubeObject | None) -> None:
        namespace, name = key
        if obj is None:
            try:
                await self._client.delete(CILIUM_ENDPOINTS, name, namespace)
            except ApiError as err:
                if not err.not_found:
                    raise
            self.writes += 1
            return
        try:
            current = await self._client.get(CILIUM_ENDPOINTS, name, namespace)
        except ApiError as err:
            if not err.not_found:
                raise
            try:
                current = await self._client.create(
                    CILIUM_ENDPOINTS, {k: v for k, v in obj.items() if k != "status"}, namespace
                )
            except ApiError as err2:
                if not err2.already_exists:
                    raise
                current = await self._client.get(CILIUM_ENDPOINTS, name, namespace)
        if current.get("status") != obj["status"]:
            body = {**current, "status": obj["status"]}
            await self._client.replace(CILIUM_ENDPOINTS, body, subresource="status")
        self.writes += 1


def publishable(ep: Endpoint) -> bool:
    """Endpoints with a pod, once they have an identity and until they go away."""
    return (
        bool(ep.pod_name)
        and ep.identity != 0
        and ep.state
        in (
            EndpointState.READY,
            EndpointState.REGENERATING,
            EndpointState.WAITING_TO_REGENERATE,
            EndpointState.RESTORING,
            EndpointState.NOT_READY,
        )
    )
