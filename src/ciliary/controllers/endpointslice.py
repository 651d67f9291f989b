"""EndpointSlice controller: the pods behind each Service with a selector, as EndpointSlices.

kube-controller-manager's ``endpointslice`` controller. For a Service with a ``selector``, every
pod of its namespace that the selector matches and that has an address (``status.podIPs``;
finished pods left out) is an endpoint, with upstream's conditions: ``ready`` = Ready and not
terminating, ``serving`` = Ready, ``terminating`` = deletionTimestamp set; its ``nodeName``,
``targetRef`` (the Pod) and ``hostname`` (when the pod's ``subdomain`` is the Service's name).

Ports: each Service port becomes an EndpointPort with the Service port's name and protocol and
the port resolved per pod: a number ``targetPort`` as is, none as the Service's ``port``, a
named ``targetPort`` as the container port of that name and protocol (a pod without it is left
out of that port, as upstream's ``FindPort`` fails for it). Endpoints are grouped by address
family (``IPv4`` / ``IPv6`` slices, a dual-stack pod in both) and by their resolved port set, one
slice per group, since a slice has one port list.

Slices are labelled ``kubernetes.io/service-name`` and
``endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io`` (plus the
Service's labels, as upstream), owned by the Service (``controller: true``, so deleting the
Service deletes them through the garbage collector). Unlike upstream, whose slices are named
``<service>-<random>``, a slice is named ``<service>-<hash of its family and ports>``: the name
is a function of the group, so a controller acting on a stale cache gets 409 AlreadyExists or
Conflict and retries, and never makes a duplicate slice. The 100-endpoints-per-slice split is
not done (one slice per group whatever its size). A Service
that selects no pod with an address has one empty slice of its primary family, as upstream.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import Any

from ciliary.controllers import objects as o
from ciliary.controllers.informers import ENDPOINTSLICES, Informers
from ciliary.controllers.queue import Controller
from ciliary.k8s.labelselector import Selector, SelectorError
from ciliary.kube.client import ApiError, KubeClient, KubeObject, object_key, split_key
from ciliary.kube.informer import HandlerFuncs

log = logging.getLogger(__name__)

SERVICE_NAME = "kubernetes.io/service-name"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
CONTROLLER_NAME = "endpointslice-controller.k8s.io"

Port = tuple[str, str, int]  # (name, protocol, port)


def address_family(address: str) -> str | None:
    """An address's slice ``addressType`` (None: no IP address)."""
    try:
        return "IPv6" if ipaddress.ip_address(address).version == 6 else "IPv4"
    except ValueError:
        return None


def _primary_family(service: KubeObject) -> str:
    families = o.spec(service).get("ipFamilies") or ["IPv4"]
    return str(families[0])


def resolve_port(pod: KubeObject, service_port: KubeObject) -> int | None:
    """The pod's port for one Service port (kube's ``podutil.FindPort``)."""
    target = service_port.get("targetPort")
    if target is None or target == "":
        return int(service_port["port"])
    if isinstance(target, int):
        return target
    if str(target).isdigit():
        return int(target)
    protocol = service_port.get("protocol") or "TCP"
    for container in o.spec(pod).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == target and (port.get("protocol") or "TCP") == protocol:
                return int(port["containerPort"])
    return None


def pod_addresses(pod: KubeObject) -> list[str]:
    ips = [str(p.get("ip")) for p in o.status(pod).get("podIPs") or [] if p.get("ip")]
    if not ips and o.status(pod).get("podIP"):
        ips = [str(o.status(pod)["podIP"])]
    return ips


def desired_slices(service: KubeObject, pods: list[KubeObject]) -> dict[str, KubeObject]:
    """The slices a Service should have, by name."""
    svc_meta = o.meta(service)
    svc_name = svc_meta["name"]
    groups: dict[tuple[str, tuple[Port, ...]], list[KubeObject]] = {}
    service_ports = o.spec(service).get("ports") or []
    for pod in sorted(pods, key=lambda p: o.meta(p)["name"]):
        if o.status(pod).get("phase") in ("Succeeded", "Failed"):
            continue
        addresses = pod_addresses(pod)
        if not addresses:
            continue
        ports: list[Port] = []
        for sp in service_ports:
            number = resolve_port(pod, sp)
            if number is not None:
                ports.append((str(sp.get("name") or ""), str(sp.get("protocol") or "TCP"), number))
        ready = o.pod_ready(pod)
        terminating = o.deleting(pod)
        pm = o.meta(pod)
        by_family: dict[str, list[str]] = {}
        for address in addresses:
            family = address_family(address)
            if family is not None:
                by_family.setdefault(family, []).append(address)
        for family, family_addresses in by_family.items():
            endpoint: KubeObject = {
                "addresses": family_addresses[:1],
                "conditions": {
                    "ready": ready and not terminating,
                    "serving": ready,
                    "terminating": terminating,
                },
                "targetRef": {
                    "kind": "Pod",
                    "namespace": pm["namespace"],
                    "name": pm["name"],
                    "uid": pm.get("uid"),
                },
            }
            if o.spec(pod).get("nodeName"):
                endpoint["nodeName"] = o.spec(pod)["nodeName"]
            if o.spec(pod).get("hostname") and o.spec(pod).get("subdomain") == svc_name:
                endpoint["hostname"] = o.spec(pod)["hostname"]
            groups.setdefault((family, tuple(ports)), []).append(endpoint)
    if not groups:
        # upstream keeps one empty placeholder slice for a Service that selects nothing
        groups[(_primary_family(service), ())] = []
    out: dict[str, KubeObject] = {}
    for (family, ports_key), endpoints in sorted(groups.items()):
        suffix = o.template_hash({"addressType": family, "ports": [list(p) for p in ports_key]})
        name = f"{svc_name}-{suffix}"[:253]
        out[name] = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "namespace": svc_meta["namespace"],
                "labels": {
                    **(svc_meta.get("labels") or {}),
                    SERVICE_NAME: svc_name,
                    MANAGED_BY: CONTROLLER_NAME,
                },
                "ownerReferences": [o.owner_reference(service)],
            },
            "addressType": family,
            "endpoints": endpoints,
            "ports": [{"name": n, "protocol": proto, "port": p} for n, proto, p in ports_key],
        }
    return out


def _content(slice_: KubeObject) -> Any:
    meta = slice_["metadata"]
    return json.dumps(
        [
            meta.get("labels"),
            meta.get("ownerReferences"),
            slice_.get("addressType"),
            slice_.get("endpoints") or [],
            slice_.get("ports") or [],
        ],
        sort_keys=True,
    )


class EndpointSliceController(Controller):
    name = "endpointslice"

    def __init__(self, kube: KubeClient, informers: Informers) -> None:
        super().__init__()
        self.kube = kube
        self.services = informers.services
        self.pods = informers.pods
        self.slices = informers.endpointslices
        self.services.add_handler(self.enqueue_objects())
        self.pods.add_handler(
            HandlerFuncs(add=self._on_pod, update=self._on_pod_update, delete=self._on_pod)
        )
        self.slices.add_handler(
            HandlerFuncs(
                add=self._on_slice,
                update=lambda _old, new: self._on_slice(new),
                delete=self._on_slice,
            )
        )

    def _on_pod(self, pod: KubeObject) -> None:
        """Queue the Services selecting ``pod``."""
        for svc in self.services.store.objects(o.meta(pod)["namespace"]):
            selector = o.spec(svc).get("selector")
            if selector and all(o.labels(pod).get(k) == v for k, v in selector.items()):
                self.queue.add(object_key(svc))

    def _on_pod_update(self, old: KubeObject, new: KubeObject) -> None:
        self._on_pod(old)  # the Services it may have left
        self._on_pod(new)

    def _on_slice(self, slice_: KubeObject) -> None:
        labels = o.labels(slice_)
        if labels.get(MANAGED_BY) == CONTROLLER_NAME and labels.get(SERVICE_NAME):
            self.queue.add(f"{o.meta(slice_)['namespace']}/{labels[SERVICE_NAME]}")

    def _selected(self, service: KubeObject) -> list[KubeObject]:
        selector_map = o.spec(service).get("selector") or {}
        try:
            selector = Selector.from_labels(selector_map)
        except SelectorError:
            return []
        return [
            p
            for p in self.pods.store.objects(o.meta(service)["namespace"])
            if selector.matches(o.labels(p))
        ]

    async def reconcile(self, key: str) -> float | None:
        ns, name = split_key(key)
        service = self.services.store.get(key)
        if service is None or o.deleting(service):
            return None  # its slices go with it (garbage collector)
        if not o.spec(service).get("selector"):
            return None  # slices of a selector-less Service are the user's
        want = desired_slices(service, self._selected(service))
        have = {
            o.meta(s)["name"]: s
            for s in self.slices.store.objects(ns)
            if o.labels(s).get(SERVICE_NAME) == name
            and o.labels(s).get(MANAGED_BY) == CONTROLLER_NAME
        }
        for slice_name, slice_ in want.items():
            existing = have.get(slice_name)
            if existing is None:
                await self.kube.create(ENDPOINTSLICES, slice_, ns)
            elif _content(existing) != _content(slice_):
                slice_["metadata"]["resourceVersion"] = o.meta(existing)["resourceVersion"]
                await self.kube.replace(ENDPOINTSLICES, slice_)
        for slice_name, existing in have.items():
            if slice_name not in want:
                try:
                    await self.kube.delete(
                        ENDPOINTSLICES, slice_name, ns, uid=o.meta(existing).get("uid")
                    )
                except ApiError as err:
                    if not err.not_found:
                        raise
        return None
