"""Garbage collector: objects whose owners are all gone are deleted (background propagation).

kube-controller-manager's ``garbagecollector`` for the kinds the controllers make: ReplicaSets
(owned by Deployments), Pods (by ReplicaSets, DaemonSets, StatefulSets) and EndpointSlices (by
Services). When an owner is deleted, each dependent that names it in ``ownerReferences`` is
checked; a dependent none of whose owners exists any more (no object of that kind and name, or
one with another uid) is deleted with a uid precondition, which in turn lets its own dependents
go: deleting a Deployment removes its ReplicaSets, then their pods. A dependent is also checked
when it appears, so one whose owner vanished while this process was down is collected after a
restart. Owners are looked up in the shared informers first and confirmed with a GET before
anything is deleted (a cache that lags must never cost a live object).

The API server deletes at once (no ``foregroundDeletion`` or ``orphan`` finalizers), so this is
the ``Background`` policy whatever the client asked for; ``--cascade=orphan`` is not honoured.
"""

from __future__ import annotations

import logging

from ciliary.controllers import objects as o
from ciliary.controllers.informers import ENDPOINTSLICES, PODS, REPLICASETS, Informers
from ciliary.controllers.queue import Controller
from ciliary.k8s.resources import ResourceType, UnknownResourceError, by_kind
from ciliary.kube.client import ApiError, KubeClient, KubeObject, object_key, split_key
from ciliary.kube.informer import HandlerFuncs, Informer

log = logging.getLogger(__name__)

DEPENDENTS = (REPLICASETS, PODS, ENDPOINTSLICES)


class GarbageCollector(Controller):
    """Keys are ``<plural>|<namespace>/<name>`` of dependents."""

    name = "garbagecollector"

    def __init__(self, kube: KubeClient, informers: Informers) -> None:
        super().__init__()
        self.kube = kube
        self.informers = informers
        self.dependents: dict[str, Informer] = {}
        for rt in DEPENDENTS:
            informer = informers.by_resource(rt)
            assert informer is not None
            self.dependents[rt.plural] = informer
            informer.add_handler(self._dependent_handler(rt))
        for informer in informers.all():
            informer.add_handler(HandlerFuncs(delete=self._on_owner_deleted))

    def _dependent_handler(self, rt: ResourceType) -> HandlerFuncs:
        def check(dependent: KubeObject) -> None:
            if o.meta(dependent).get("ownerReferences"):
                self.queue.add(f"{rt.plural}|{object_key(dependent)}")

        return HandlerFuncs(add=check, update=lambda _old, new: check(new))

    def _on_owner_deleted(self, owner: KubeObject) -> None:
        uid = o.meta(owner).get("uid")
        ns = o.meta(owner).get("namespace")
        for plural, informer in self.dependents.items():
            for dep in informer.store.objects(ns) if ns else informer.store.objects():
                refs = o.meta(dep).get("ownerReferences") or []
                if any(ref.get("uid") == uid for ref in refs):
                    self.queue.add(f"{plural}|{object_key(dep)}")

    async def _owner_exists(self, namespace: str | None, ref: KubeObject) -> bool:
        try:
            rt = by_kind(str(ref.get("apiVersion")), str(ref.get("kind")))
        except UnknownResourceError:
            return True  # a kind this API does not serve: never collect on a guess
        ns = namespace if rt.namespaced else None
        informer = self.informers.by_resource(rt)
        if informer is not None:
            key = object_key({"metadata": {"namespace": ns, "name": ref["name"]}})
            cached = informer.store.get(key)
            if cached is not None and o.meta(cached).get("uid") == ref.get("uid"):
                return True
        try:
            live = await self.kube.get(rt, str(ref["name"]), ns)
        except ApiError as err:
            if err.not_found:
                return False
            raise
        return bool(o.meta(live).get("uid") == ref.get("uid"))

    async def reconcile(self, key: str) -> float | None:
        plural, _, obj_key = key.partition("|")
        informer = self.dependents[plural]
        ns, name = split_key(obj_key)
        dep = informer.store.get(obj_key)
        if dep is None:
            return None
        refs = o.meta(dep).get("ownerReferences") or []
        if not refs:
            return None
        for ref in refs:
            if await self._owner_exists(ns, ref):
                return None
        m = o.meta(dep)
        log.info("garbagecollector: deleting %s %s (owners gone)", plural, obj_key)
        try:
            await self.kube.delete(informer.rt, name, ns, uid=m.get("uid"))
        except ApiError as err:
            if err.status not in (404, 409):
                raise
        return None
