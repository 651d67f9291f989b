"""The agent's own objects in the cluster: one CiliumEndpoint per endpoint and the node's
CiliumNode (upstream's endpoint sync controller and node registration).

A CiliumEndpoint is named and namespaced like the endpoint's pod; all of it is ``status``
(upstream's shape, ``k8s.cilium``'s models: ``id``, ``identity {id, labels}``, ``networking
{addressing [{ipv4, ipv6}], node}`` (``node``: the hosting node's IP, upstream's ``NodeIP``,
which other nodes' node managers use as its tunnel endpoint), ``state``, ``policy {ingress,
egress: {enforcing}}``, ``named-ports [{name, port, protocol}]`` of the pod's containers).
It is how other agents and the operator learn an endpoint's identity and addresses: the
operator's identity GC treats an identity named by some CiliumEndpoint as in use.

Writes are asynchronous to the endpoint manager (which calls :meth:`EndpointSync.changed` and
:meth:`EndpointSync.deleted` from its state changes): a :class:`KeyedWriter` keeps the latest
wanted state per pod and writes it (create, then the ``status`` subresource, as the API server
drops ``status`` on create; replace when it exists; delete when gone), retrying with back-off
while the API server is away. Intermediate states of an endpoint are skipped.

Ownership, as upstream's ``deleteCEP``: a pod's name outlives the pod (a StatefulSet's ``web-0``
comes back, maybe on another node), so the agent remembers the ``uid`` of the CiliumEndpoint it
wrote and deletes only that one (``DeleteOptions.preconditions.uid``): never a newer object of
the same name that another node made. After a restart it deletes one only if it names this node
(again under its uid). A CiliumEndpoint of another node for a pod that is now here is that
node's leftover: it is deleted (under its uid) and this node's made.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from ciliary.agent.k8s.writer import KeyedWriter
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
    HealthAddressingSpec,
    NamedPort,
    NodeAddress,
    NodeIPAMSpec,
    PolicyDirection,
)
from ciliary.k8s.meta import ObjectMeta
from ciliary.k8s.resources import by_path
from ciliary.kube.client import ApiError, KubeClient, KubeObject

log = logging.getLogger(__name__)

CILIUM_ENDPOINTS = by_path("cilium.io", "v2", "ciliumendpoints")
CILIUM_NODES = by_path("cilium.io", "v2", "ciliumnodes")
PodKey = tuple[str, str]


def cep_node(node: str, node_ips: Iterable[str]) -> str:
    """``networking.node`` of this node's CiliumEndpoints: its first node IP (upstream's
    ``NodeIP``, IPv4 first), the node's name when it has none (no underlay: standalone tests)."""
    return next(iter(node_ips), node)


def endpoint_status(
    ep: Endpoint,
    node: str,
    labels: Iterable[str],
    enforcing: tuple[bool, bool],
    named_ports: Mapping[str, tuple[int, str]] | None = None,
) -> EndpointStatus:
    """The ``status`` of an endpoint's CiliumEndpoint (upstream's shape); ``node`` is
    :func:`cep_node`'s; ``named_ports`` are the pod's containers' (name → (port, protocol)),
    sorted by name."""
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
        **{
            "named-ports": [
                NamedPort.model_validate({"name": name, "port": port, "protocol": protocol.upper()})
                for name, (port, protocol) in sorted((named_ports or {}).items())
            ]
        },
    )


def cilium_endpoint(namespace: str, name: str, status: EndpointStatus) -> KubeObject:
    return CiliumEndpoint(
        metadata=ObjectMeta(name=name, namespace=namespace), status=status
    ).to_json()


def cilium_node(
    node: str,
    addresses: Iterable[str],
    pod_cidrs: Iterable[str],
    labels: dict[str, str],
    node_ips: Iterable[str] = (),
    *,
    health: Iterable[str] = (),
) -> KubeObject:
    """The node's CiliumNode (upstream's shape): its addresses — the node IPs
    (``--ipv4-node``/``--ipv6-node``) as ``InternalIP``, the router addresses as
    ``CiliumInternalIP`` —, its health endpoint's addresses (``spec.health.ipv4``/``ipv6``;
    left out without one) and the cluster-pool pod CIDRs it allocates from."""
    by_family = {("ipv6" if ":" in a else "ipv4"): a for a in health}
    return CiliumNode(
        metadata=ObjectMeta(name=node, labels=dict(labels)),
        spec=CiliumNodeSpec(
            addresses=[NodeAddress(type="InternalIP", ip=a) for a in node_ips]
            + [NodeAddress(type="CiliumInternalIP", ip=a) for a in addresses],
            health=HealthAddressingSpec(**by_family) if by_family else None,
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
        # annotations others wrote (the Hubble address, ``hubblepeers``) survive a restart
        meta["annotations"] = {
            **(current["metadata"].get("annotations") or {}),
            **(obj["metadata"].get("annotations") or {}),
        }
        try:
            await client.replace(CILIUM_NODES, {**current, "metadata": meta, "spec": obj["spec"]})
            return
        except ApiError as err:
            if not err.conflict:
                raise
    raise ApiError(409, "Conflict", f"CiliumNode {name} kept changing")


class EndpointSync:
    """Keeps one CiliumEndpoint per endpoint (with a pod) of ``node`` in the API server."""

    def __init__(self, client: KubeClient, node: str, node_ips: Iterable[str] = ()) -> None:
        self._client = client
        self._node = node
        self._mine = {node, *node_ips}
        """What ``networking.node`` of this node's CiliumEndpoints holds: a node IP (upstream's),
        or the node's name (written without a node IP, or before node IPs were published)."""
        self._uids: dict[PodKey, str] = {}
        """The uid of the CiliumEndpoint this agent wrote, per pod."""
        self._writer: KeyedWriter[PodKey, KubeObject | None] = KeyedWriter(
            "ciliumendpoint-sync", self._write
        )

    @property
    def writes(self) -> int:
        return self._writer.writes

    def start(self) -> None:
        self._writer.start()

    async def stop(self) -> None:
        await self._writer.stop()

    def changed(self, namespace: str, name: str, status: EndpointStatus) -> None:
        self._writer.want((namespace, name), cilium_endpoint(namespace, name, status))

    def deleted(self, namespace: str, name: str) -> None:
        self._writer.want((namespace, name), None)

    async def flushed(self, timeout: float) -> bool:
        """Until every wanted state is written (tests, shutdown)."""
        return await self._writer.flushed(timeout)

    def _node_of(self, obj: KubeObject) -> str | None:
        node = ((obj.get("status") or {}).get("networking") or {}).get("node")
        return str(node) if node else None

    async def _get(self, key: PodKey) -> KubeObject | None:
        namespace, name = key
        try:
            return await self._client.get(CILIUM_ENDPOINTS, name, namespace)
        except ApiError as err:
            if not err.not_found:
                raise
            return None

    async def _delete(self, key: PodKey, uid: str) -> None:
        """Delete the CiliumEndpoint of ``key`` only while it is the object ``uid``."""
        namespace, name = key
        try:
            await self._client.delete(CILIUM_ENDPOINTS, name, namespace, uid=uid)
        except ApiError as err:
            if err.conflict:  # a newer object of that name: someone else's, left alone
                log.info("CiliumEndpoint %s/%s: not %s any more, not deleted", *key, uid)
            elif not err.not_found:
                raise

    async def _write(self, key: PodKey, obj: KubeObject | None) -> None:
        namespace, name = key
        if obj is None:
            uid = self._uids.get(key)
            if uid is None:  # written before a restart: ours only if it names this node
                current = await self._get(key)
                if current is None or self._node_of(current) not in self._mine:
                    return
                uid = str(current["metadata"]["uid"])
            await self._delete(key, uid)
            self._uids.pop(key, None)
            return
        current = await self._get(key)
        if current is not None and self._uids.get(key) != current["metadata"]["uid"]:
            node = self._node_of(current)
            if node is not None and node not in self._mine:  # another node's leftover
                await self._delete(key, str(current["metadata"]["uid"]))
                current = None
        if current is None:
            try:
                current = await self._client.create(
                    CILIUM_ENDPOINTS, {k: v for k, v in obj.items() if k != "status"}, namespace
                )
            except ApiError as err:
                if not err.already_exists:
                    raise
                msg = f"CiliumEndpoint {namespace}/{name} came back"
                raise ApiError(409, "Conflict", msg) from err
        self._uids[key] = str(current["metadata"]["uid"])
        if current.get("status") != obj["status"]:
            body = {**current, "status": obj["status"]}
            await self._client.replace(CILIUM_ENDPOINTS, body, subresource="status")


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
