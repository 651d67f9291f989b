"""EndpointSlice mirroring: the Endpoints a user writes for a selector-less Service, as
EndpointSlices.

kube-controller-manager's ``endpointslicemirroring`` controller. A Service without a selector has
no controller behind its endpoints: the user writes them, classically as a ``v1`` Endpoints
object of the Service's name (an external database's address, the shape of Cilium's
``toServices`` example). Consumers read EndpointSlices only (the agents' service cache, the
cluster DNS controller), so each such Endpoints is mirrored: one slice per subset and address
family, every ``addresses`` entry an endpoint with ``ready: true`` and every
``notReadyAddresses`` entry one with ``ready: false`` (``serving`` alike, never
``terminating``), with its ``hostname``, ``nodeName`` and ``targetRef``; the subset's ports as
the slice's ports. As upstream, an Endpoints is mirrored only while a Service of its name exists
without a selector and it is not labelled ``endpointslice.kubernetes.io/skip-mirror: "true"``;
the slices carry the Endpoints' labels, ``kubernetes.io/service-name`` and
``endpointslice.kubernetes.io/managed-by: endpointslicemirroring-controller.k8s.io``, and are
owned by the Endpoints (``controller: true``). Unlike upstream, slices are named after their
content's group (``<name>-<hash of family and ports>``, as our EndpointSlice controller's) and the
1000-addresses cap is not applied. Slices this controller did not make (the user's own) are never
touched. When the Endpoints goes, or its Service goes or gains a selector, its slices are
deleted here, as upstream's reconciler does (the garbage collector would also collect them once
their owner, the Endpoints, is gone).
"""

from __future__ import annotations

from ciliary.controllers import objects as o
from ciliary.controllers.endpointslice import MANAGED_BY, SERVICE_NAME, Port, address_family
from ciliary.controllers.informers import ENDPOINTSLICES, Informers
from ciliary.controllers.queue import Controller
from ciliary.kube.client import ApiError, KubeClient, KubeObject, split_key
from ciliary.kube.informer import HandlerFuncs

CONTROLLER_NAME = "endpointslicemirroring-controller.k8s.io"
SKIP_MIRROR = "endpointslice.kubernetes.io/skip-mirror"


def _endpoint(address: KubeObject, ready: bool) -> KubeObject:
    out: KubeObject = {
        "addresses": [str(address["ip"])],
        "conditions": {"ready": ready, "serving": ready, "terminating": False},
    }
    for field in ("hostname", "nodeName", "targetRef"):
        if address.get(field):
            out[field] = address[field]
    return out


def mirrored_slices(endpoints: KubeObject) -> dict[str, KubeObject]:
    """The slices mirroring an Endpoints object, by name (none for an empty one)."""
    meta = o.meta(endpoints)
    name = str(meta["name"])
    groups: dict[tuple[str, tuple[Port, ...]], list[KubeObject]] = {}
    for subset in endpoints.get("subsets") or []:
        ports = tuple(
            sorted(
                (str(p.get("name") or ""), str(p.get("protocol") or "TCP"), int(p["port"]))
                for p in subset.get("ports") or []
            )
        )
        for key, ready in (("addresses", True), ("notReadyAddresses", False)):
            for address in subset.get(key) or []:
                family = address_family(str(address.get("ip") or ""))
                if family is None:
                    continue  # the API validated it; a hostname-only entry has no place here
                groups.setdefault((family, ports), []).append(_endpoint(address, ready))
    labels = dict(meta.get("labels") or {})  # service-name and managed-by are set below
    out: dict[str, KubeObject] = {}
    for (family, ports), eps in sorted(groups.items()):
        suffix = o.template_hash({"addressType": family, "ports": [list(p) for p in ports]})
        slice_name = f"{name}-{suffix}"[:253]
        out[slice_name] = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": slice_name,
                "namespace": meta["namespace"],
                "labels": {**labels, SERVICE_NAME: name, MANAGED_BY: CONTROLLER_NAME},
                "ownerReferences": [o.owner_reference(endpoints)],
            },
            "addressType": family,
            "endpoints": eps,
            "ports": [{"name": n, "protocol": proto, "port": p} for n, proto, p in ports],
        }
    return out


def mirrored(endpoints: KubeObject | None, service: KubeObject | None) -> bool:
    """Whether an Endpoints object (None: none) is mirrored given its Service (None: none)."""
    return (
        endpoints is not None
        and not o.deleting(endpoints)
        and o.labels(endpoints).get(SKIP_MIRROR) != "true"
        and service is not None
        and not o.deleting(service)
        and not o.spec(service).get("selector")
    )


def _same(have: KubeObject, want: KubeObject) -> bool:
    return all(have.get(k) == want.get(k) for k in ("addressType", "endpoints", "ports")) and (
        o.meta(have).get("labels") == want["metadata"]["labels"]
        and o.meta(have).get("ownerReferences") == want["metadata"]["ownerReferences"]
    )


class EndpointSliceMirroringController(Controller):
    name = "endpointslicemirroring"

    def __init__(self, kube: KubeClient, informers: Informers) -> None:
        super().__init__()
        self.kube = kube
        self.endpoints = informers.endpoints
        self.services = informers.services
        self.slices = informers.endpointslices
        # an Endpoints and its Service share the key namespace/name
        self.endpoints.add_handler(self.enqueue_objects())
        self.services.add_handler(self.enqueue_objects())
        self.slices.add_handler(
            HandlerFuncs(
                add=self._on_slice,
                update=lambda _old, new: self._on_slice(new),
                delete=self._on_slice,
            )
        )

    def _on_slice(self, slice_: KubeObject) -> None:
        labels = o.labels(slice_)
        if labels.get(MANAGED_BY) == CONTROLLER_NAME and labels.get(SERVICE_NAME):
            self.queue.add(f"{o.meta(slice_)['namespace']}/{labels[SERVICE_NAME]}")

    async def reconcile(self, key: str) -> float | None:
        ns, name = split_key(key)
        endpoints = self.endpoints.store.get(key)
        service = self.services.store.get(key)
        want = mirrored_slices(endpoints) if endpoints and mirrored(endpoints, service) else {}
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
            elif not _same(existing, slice_):
                slice_["metadata"]["resourceVersion"] = o.meta(existing)["resourceVersion"]
                await self.kube.replace(ENDPOINTSLICES, slice_)
        for slice_name, existing in have.items():
            if slice_name in want:
                continue
            try:
                await self.kube.delete(
                    ENDPOINTSLICES, slice_name, ns, uid=o.meta(existing).get("uid")
                )
            except ApiError as err:
                if not err.not_found:
                    raise
        return None
