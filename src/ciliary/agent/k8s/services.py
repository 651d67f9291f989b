"""Services, their EndpointSlices and the cluster's Nodes from the Kubernetes API: the typed
caches the kube-proxy replacement (issue #14) and the remote-node computation will read.

Cilium's ``ServiceCache``: per Service (``namespace/name``) its type, cluster IPs, ports
(name, port, protocol, nodePort), session affinity and external traffic policy, and the backends
of every EndpointSlice labelled ``kubernetes.io/service-name`` with that name, merged across the
service's slices (a service has several once it has more than 100 endpoints, or one per address
family). A backend is an endpoint's address when the endpoint is ready (a ``ready`` left out
means ready, as the API says), or serving while terminating (upstream keeps those, flagged, for
graceful termination: used only when no ready backend is left); other endpoints are not
backends. The ``ready``/``serving``/``terminating`` conditions are kept as flags, the slice's
ports by name. FQDN slices carry no addresses to balance to and are ignored, as upstream.

Slices are kept per service whether or not the Service has arrived yet (informers are not
ordered between kinds), and a service is listed once its Service object is known. An object the
models reject (a malformed document) is logged and dropped from the cache: fail closed, no half
entry. The cache is pure (``ServiceCache``, ``NodeCache``, fed objects); ``ServiceWatcher`` feeds
them from three informers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from ipaddress import ip_network

from pydantic import ValidationError

from ciliary.core.models import (
    BackendInfo,
    L4Addr,
    NodeAddressInfo,
    NodeInfo,
    ServiceInfo,
    ServicePortInfo,
)
from ciliary.k8s.core import Node, Service
from ciliary.k8s.networking import EndpointSlice
from ciliary.k8s.resources import ResourceType, by_path
from ciliary.kube.client import KubeClient, KubeObject
from ciliary.kube.informer import HandlerFuncs, Informer

log = logging.getLogger(__name__)

SERVICES = by_path("", "v1", "services")
ENDPOINT_SLICES = by_path("discovery.k8s.io", "v1", "endpointslices")
NODES = by_path("", "v1", "nodes")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
LB_ALGORITHM_ANNOTATION = "service.cilium.io/lb-algorithm"


def _key(obj: KubeObject) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _service_info(svc: Service) -> ServiceInfo:
    spec = svc.spec
    if spec.headless:
        cluster_ips: list[str] = []
    else:
        cluster_ips = list(spec.cluster_ips) or ([spec.cluster_ip] if spec.cluster_ip else [])
    return ServiceInfo(
        namespace=svc.namespace or "",
        name=svc.name,
        type=spec.type,
        cluster_ips=cluster_ips,
        ports=[
            ServicePortInfo(
                name=p.name or "", port=p.port, protocol=p.protocol, node_port=p.node_port
            )
            for p in spec.ports
        ],
        session_affinity=spec.session_affinity,
        session_affinity_timeout=(
            spec.session_affinity_config.client_ip.timeout_seconds
            if spec.session_affinity_config is not None
            and spec.session_affinity_config.client_ip is not None
            and spec.session_affinity_config.client_ip.timeout_seconds is not None
            else 10800
        ),
        lb_algorithm=svc.metadata.annotations.get(LB_ALGORITHM_ANNOTATION),
        external_traffic_policy=spec.external_traffic_policy or "Cluster",
        internal_traffic_policy=spec.internal_traffic_policy or "Cluster",
        external_ips=list(spec.external_ips),
        load_balancer_ips=[i.ip for i in svc.status.load_balancer.ingress if i.ip],
        load_balancer_source_ranges=[
            str(ip_network(c.strip(), strict=False)) for c in spec.load_balancer_source_ranges
        ],
        backends=[],
        selector=dict(spec.selector) if spec.selector else None,
        labels=dict(svc.metadata.labels),
    )


def slice_backends(eps: EndpointSlice) -> list[BackendInfo]:
    """The backends one slice contributes (see the module's docstring for which)."""
    if eps.address_type == "FQDN":
        return []
    ports = {
        p.name or "": L4Addr(protocol=p.protocol, port=p.port)
        for p in eps.ports
        if p.port is not None
    }
    out: list[BackendInfo] = []
    for endpoint in eps.endpoints:
        cond = endpoint.conditions
        ready = cond.ready is not False
        serving = cond.serving if cond.serving is not None else ready
        terminating = bool(cond.terminating)
        if not ready and not (serving and terminating):
            continue
        for address in endpoint.addresses:
            out.append(
                BackendInfo(
                    address=address,
                    node_name=endpoint.node_name,
                    ready=ready,
                    serving=serving,
                    terminating=terminating,
                    ports=ports,
                )
            )
    return out


def merge_backends(slices: Iterable[list[BackendInfo]]) -> list[BackendInfo]:
    """One backend per address over a service's slices, its ports the union (an address listed
    by two slices, as while the controller moves it, is one backend; ready if either says so)."""
    merged: dict[str, BackendInfo] = {}
    for backends in slices:
        for b in backends:
            have = merged.get(b.address)
            if have is None:
                merged[b.address] = b
                continue
            merged[b.address] = have.model_copy(
                update={
                    "ports": {**have.ports, **b.ports},
                    "ready": have.ready or b.ready,
                    "serving": have.serving or b.serving,
                    "terminating": have.terminating and b.terminating,
                    "node_name": have.node_name or b.node_name,
                }
            )
    return sorted(merged.values(), key=lambda b: b.address)


class ServiceCache:
    """Services and their backends, fed Service and EndpointSlice objects (as dicts)."""

    def __init__(self) -> None:
        self._services: dict[tuple[str, str], ServiceInfo] = {}
        self._slices: dict[tuple[str, str], dict[str, list[BackendInfo]]] = {}
        """(namespace, service) → slice name → the backends it lists."""
        self._slice_owner: dict[tuple[str, str], tuple[str, str]] = {}
        """(namespace, slice) → the service it was last filed under (its label can change)."""

    def upsert_service(self, obj: KubeObject) -> None:
        key = _key(obj)
        try:
            self._services[key] = _service_info(Service.model_validate(obj))
        except ValidationError as err:
            log.warning("Service %s/%s dropped from the service cache: %s", *key, err)
            self._services.pop(key, None)

    def delete_service(self, obj: KubeObject) -> None:
        self._services.pop(_key(obj), None)

    def upsert_slice(self, obj: KubeObject) -> None:
        namespace, name = _key(obj)
        self.delete_slice(obj)
        try:
            eps = EndpointSlice.model_validate(obj)
        except ValidationError as err:
            log.warning(
                "EndpointSlice %s/%s dropped from the service cache: %s", namespace, name, err
            )
            return
        service = eps.service_name
        if not service:
            return  # not a service's (a slice managed by someone else for another purpose)
        owner = (namespace, service)
        self._slices.setdefault(owner, {})[name] = slice_backends(eps)
        self._slice_owner[(namespace, name)] = owner

    def delete_slice(self, obj: KubeObject) -> None:
        namespace, name = _key(obj)
        owner = self._slice_owner.pop((namespace, name), None)
        if owner is None:
            return
        slices = self._slices.get(owner, {})
        slices.pop(name, None)
        if not slices:
            self._slices.pop(owner, None)

    def get(self, namespace: str, name: str) -> ServiceInfo | None:
        svc = self._services.get((namespace, name))
        if svc is None:
            return None
        backends = merge_backends(self._slices.get((namespace, name), {}).values())
        return svc.model_copy(update={"backends": backends})

    def services(self) -> list[ServiceInfo]:
        out = [self.get(ns, name) for ns, name in sorted(self._services)]
        return [s for s in out if s is not None]


class NodeCache:
    """The cluster's Nodes: name, addresses, labels."""

    def __init__(self) -> None:
        self._nodes: dict[str, NodeInfo] = {}

    def upsert(self, obj: KubeObject) -> None:
        _, name = _key(obj)
        try:
            node = Node.model_validate(obj)
        except ValidationError as err:
            log.warning("Node %s dropped from the node cache: %s", name, err)
            self._nodes.pop(name, None)
            return
        self._nodes[name] = NodeInfo(
            name=node.name,
            addresses=[
                NodeAddressInfo(type=a.type, address=a.address) for a in node.status.addresses
            ],
            labels=dict(node.metadata.labels),
        )

    def delete(self, obj: KubeObject) -> None:
        self._nodes.pop(_key(obj)[1], None)

    def get(self, name: str) -> NodeInfo | None:
        return self._nodes.get(name)

    def nodes(self) -> list[NodeInfo]:
        return [self._nodes[n] for n in sorted(self._nodes)]


class ServiceWatcher:
    """Services, EndpointSlices and Nodes, watched cluster-wide into the two caches."""

    def __init__(self, client: KubeClient) -> None:
        self.services = ServiceCache()
        self.nodes = NodeCache()
        cache, nodes = self.services, self.nodes
        self.informers: dict[str, Informer] = {
            "services": Informer(client, SERVICES, name="services"),
            "endpointslices": Informer(client, ENDPOINT_SLICES, name="endpointslices"),
            "nodes": Informer(client, NODES, name="nodes"),
        }
        self.informers["services"].add_handler(
            HandlerFuncs(
                add=cache.upsert_service,
                update=lambda _old, new: cache.upsert_service(new),
                delete=cache.delete_service,
            )
        )
        self.informers["endpointslices"].add_handler(
            HandlerFuncs(
                add=cache.upsert_slice,
                update=lambda _old, new: cache.upsert_slice(new),
                delete=cache.delete_slice,
            )
        )
        self.informers["nodes"].add_handler(
            HandlerFuncs(
                add=nodes.upsert, update=lambda _old, new: nodes.upsert(new), delete=nodes.delete
            )
        )

    def start(self) -> None:
        for informer in self.informers.values():
            informer.start()

    async def wait_synced(self, timeout: float | None = None) -> None:
        for informer in self.informers.values():
            await informer.wait_synced(timeout)

    async def stop(self) -> None:
        for informer in self.informers.values():
            await informer.stop()


def api_name(rt: ResourceType) -> str:
    """Upstream's name of a resource in ``cilium status``'s "Kubernetes APIs" line:
    ``core/v1::Service``, ``cilium/v2::CiliumNode``, ``discovery/v1::EndpointSlice``,
    ``networking.k8s.io/v1::NetworkPolicy`` (and its ``core/v1::Pods``)."""
    group = {"": "core", "cilium.io": "cilium", "discovery.k8s.io": "discovery"}.get(
        rt.group, rt.group
    )
    kind = "Pods" if rt.kind == "Pod" and rt.group == "" else rt.kind
    return f"{group}/{rt.version}::{kind}"


def synced_apis(informers: Iterable[Informer]) -> list[str]:
    """The sorted, distinct names of the resources whose informers have synced."""
    return sorted({api_name(i.rt) for i in informers if i.synced.is_set()})
