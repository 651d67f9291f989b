"""DaemonSet controller: one pod of the template on every node that should run one.

kube-controller-manager's ``daemonset`` controller, small. A node should run the DaemonSet's
pod when it matches the template's ``nodeSelector`` and every NoSchedule/NoExecute taint is
tolerated; as upstream, DaemonSet pods tolerate ``node.kubernetes.io/unschedulable``, so a
cordoned node keeps (and gets) its daemon pod (the controller adds that toleration to the
pods it makes, as upstream's ``AddOrUpdateDaemonPodTolerations`` does).

Placement: upstream pins each pod to its node with a required node affinity on
``metadata.name`` and lets the scheduler bind it; this controller sets ``spec.nodeName``
directly (what the scheduler would then do), so the daemon pod runs even without a scheduler
and no node-affinity matching is needed anywhere else.

A node with two pods keeps the oldest; a pod on a node that should not run one is deleted, as
is a failed one (to be recreated). Template changes roll with the ``RollingUpdate`` strategy,
``maxUnavailable`` 1 (or as set): pods whose ``controller-revision-hash`` label differs from
the template's hash are deleted while fewer than maxUnavailable daemon pods are unavailable;
``OnDelete`` leaves them to the user. Status: desiredNumberScheduled, currentNumberScheduled,
numberMisscheduled, numberReady, numberAvailable, numberUnavailable, updatedNumberScheduled,
observedGeneration.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time

from ciliary.controllers import objects as o
from ciliary.controllers.deployment import _intstr
from ciliary.controllers.informers import DAEMONSETS, Informers
from ciliary.controllers.queue import Controller, Expectations, PodControl
from ciliary.kube.client import KubeClient, KubeObject, object_key, split_key
from ciliary.kube.informer import HandlerFuncs

log = logging.getLogger(__name__)

UNSCHEDULABLE_TOLERATION = {
    "key": "node.kubernetes.io/unschedulable",
    "operator": "Exists",
    "effect": "NoSchedule",
}


def daemon_template(ds: KubeObject) -> KubeObject:
    """The template with the tolerations every daemon pod gets."""
    template = copy.deepcopy(o.spec(ds).get("template") or {})
    pod_spec = template.setdefault("spec", {})
    tolerations = pod_spec.setdefault("tolerations", [])
    if UNSCHEDULABLE_TOLERATION not in tolerations:
        tolerations.append(dict(UNSCHEDULABLE_TOLERATION))
    return template


class DaemonSetController(Controller):
    name = "daemonset"

    def __init__(self, kube: KubeClient, informers: Informers) -> None:
        super().__init__()
        self.kube = kube
        self.ds = informers.daemonsets
        self.pods = informers.pods
        self.nodes = informers.nodes
        self.expectations = Expectations()
        self.pod_control = PodControl(kube, self.expectations)
        self.ds.add_handler(self.enqueue_objects())
        self.pods.add_handler(self.enqueue_owners("DaemonSet", self.expectations))
        self.nodes.add_handler(
            HandlerFuncs(add=self._on_node, update=self._on_node_update, delete=self._on_node)
        )

    def _on_node(self, node: KubeObject) -> None:
        for ds in self.ds.store.objects():
            self.queue.add(object_key(ds))

    def _on_node_update(self, old: KubeObject, new: KubeObject) -> None:
        if o.node_fit_changed(old, new):  # a status heartbeat changes nothing here
            self._on_node(new)

    async def reconcile(self, key: str) -> float | None:
        ns, _ = split_key(key)
        ds = self.ds.store.get(key)
        if ds is None:
            self.expectations.forget(key)
            return None
        template = daemon_template(ds)
        hash_ = o.template_hash(template)
        pods = [
            p for p in self.pods.store.objects(ns) if o.controlled_by(p, ds) and not o.deleting(p)
        ]
        by_node: dict[str, list[KubeObject]] = {}
        for p in pods:
            by_node.setdefault(str(o.spec(p).get("nodeName") or ""), []).append(p)
        nodes = sorted(self.nodes.store.objects(), key=lambda n: o.meta(n)["name"])
        wanted = {
            o.meta(n)["name"] for n in nodes if o.fits_node(template.get("spec") or {}, n) is None
        }
        if self.expectations.satisfied(key) and not o.deleting(ds):
            await self._manage(
                key, ds=ds, template=template, hash_=hash_, wanted=wanted, by_node=by_node
            )
        return await self._update_status(ds, hash_, wanted, by_node)

    async def _manage(
        self,
        key: str,
        *,
        ds: KubeObject,
        template: KubeObject,
        hash_: str,
        wanted: set[str],
        by_node: dict[str, list[KubeObject]],
    ) -> None:
        create: list[str] = []
        delete: list[KubeObject] = []
        for node in sorted(wanted):
            here = sorted(by_node.get(node, []), key=lambda p: o.meta(p)["creationTimestamp"])
            alive = [p for p in here if o.status(p).get("phase") != "Failed"]
            delete += [p for p in here if o.status(p).get("phase") == "Failed"]
            if not alive:
                create.append(node)
            delete += alive[1:]
        for node, here in by_node.items():
            if node not in wanted:
                delete += here
        strategy = o.spec(ds).get("updateStrategy") or {}
        if (strategy.get("type") or "RollingUpdate") == "RollingUpdate" and not create:
            rolling = strategy.get("rollingUpdate") or {}
            limit = max(
                _intstr(rolling.get("maxUnavailable"), len(wanted), round_up=False, default="1"),
                1,
            )
            current = [by_node[n][0] for n in sorted(wanted) if by_node.get(n)]
            unavailable = sum(1 for p in current if not o.pod_ready(p))
            stale = [p for p in current if o.labels(p).get(o.CONTROLLER_REVISION_HASH) != hash_]
            for p in sorted(stale, key=o.pod_ready):
                if not o.pod_ready(p):
                    delete.append(p)
                elif unavailable < limit:
                    delete.append(p)
                    unavailable += 1
        if not create and not delete:
            return
        self.expectations.expect(key, adds=len(create), deletes=len(delete))
        results = await asyncio.gather(
            *(self._create(key, ds, template, hash_, n) for n in create),
            *(self.pod_control.delete(key, p) for p in delete),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, BaseException):
                raise r

    async def _create(
        self, key: str, ds: KubeObject, template: KubeObject, hash_: str, node: str
    ) -> None:
        pod = o.pod_from_template(
            ds,
            template,
            extra_labels={
                o.CONTROLLER_REVISION_HASH: hash_,
                "pod-template-generation": str(o.meta(ds).get("generation", 1)),
            },
        )
        pod["spec"]["nodeName"] = node
        await self.pod_control.create(key, pod)

    async def _update_status(
        self, ds: KubeObject, hash_: str, wanted: set[str], by_node: dict[str, list[KubeObject]]
    ) -> float | None:
        at = time.time()
        min_ready = o.min_ready_seconds(ds)
        scheduled = [n for n in wanted if by_node.get(n)]
        daemon_pods = [by_node[n][0] for n in scheduled]
        ready = sum(1 for p in daemon_pods if o.pod_ready(p))
        available = sum(1 for p in daemon_pods if o.pod_available(p, min_ready, at))
        st = {
            "desiredNumberScheduled": len(wanted),
            "currentNumberScheduled": len(scheduled),
            "numberMisscheduled": sum(1 for n in by_node if n not in wanted),
            "numberReady": ready,
            "numberAvailable": available,
            "numberUnavailable": len(wanted) - available,
            "updatedNumberScheduled": sum(
                1 for p in daemon_pods if o.labels(p).get(o.CONTROLLER_REVISION_HASH) == hash_
            ),
            "observedGeneration": o.meta(ds).get("generation", 1),
        }
        current = o.status(ds)
        if any(current.get(k) != v for k, v in st.items()):
            m = o.meta(ds)
            await self.kube.patch(
                DAEMONSETS, m["name"], {"status": st}, m["namespace"], subresource="status"
            )
        waits = [w for p in daemon_pods if (w := o.available_in(p, min_ready, at)) is not None]
        return min(waits) + 0.05 if waits else None
