"""Scheduler: a node for every pod that has none, bound through ``pods/binding``.

kube-scheduler's role for the lab, with its filters and one scoring rule:

* filters (:func:`ciliary.controllers.objects.fits_node`): the pod's ``nodeSelector``,
  ``spec.unschedulable`` (unless tolerated), NoSchedule/NoExecute taints;
* score: spread — the node running the fewest pods of the pod's controller (its ownerReference
  with ``controller: true``; for a pod without one, the fewest pods at all), ties broken by node
  name, so a Deployment's 4 replicas on 2 nodes land 2 and 2 (upstream gets this from its
  default PodTopologySpread/SelectorSpread scoring).

Binding is kube-scheduler's: ``POST pods/<name>/binding`` with a ``Binding`` naming the node
(the API server sets ``spec.nodeName`` and the PodScheduled condition, and refuses a pod that
is already bound). The lab's API server does not serve ``pods/binding`` yet (404 "the server
could not find the requested resource"); the scheduler then binds as that subresource would,
by a merge patch of ``spec.nodeName`` carrying the pod's resourceVersion (409 if the pod was
bound or changed meanwhile) and a status patch of PodScheduled True. Pods naming another
``schedulerName`` are left alone. A bound pod is
*assumed* on its node until the informer shows it there (upstream's scheduler cache), so pods
scheduled back to back see each other. A pod no node fits stays Pending with PodScheduled
False, reason Unschedulable and upstream's ``0/N nodes are available: …`` message; it is tried
again whenever a node changes.
"""

from __future__ import annotations

import logging
from collections import Counter

from ciliary.controllers import objects as o
from ciliary.controllers.informers import PODS, Informers
from ciliary.controllers.queue import Controller
from ciliary.kube.client import KubeClient, KubeError, Obj, object_path
from ciliary.kube.informer import EventType

log = logging.getLogger(__name__)

SCHEDULER_NAME = "default-scheduler"


def _wants_scheduling(pod: Obj) -> bool:
    pod_spec = o.spec(pod)
    return (
        not pod_spec.get("nodeName")
        and (pod_spec.get("schedulerName") or SCHEDULER_NAME) == SCHEDULER_NAME
        and not o.deleting(pod)
        and o.status(pod).get("phase") not in ("Succeeded", "Failed")
    )


def _group(pod: Obj) -> str | None:
    ref = o.controller_ref(pod)
    return str(ref["uid"]) if ref is not None else None


class Scheduler(Controller):
    name = "scheduler"

    def __init__(self, kube: KubeClient, informers: Informers) -> None:
        super().__init__()
        self.kube = kube
        self.pods = informers.pods
        self.nodes = informers.nodes
        self.assumed: dict[str, tuple[str, str | None]] = {}  # pod key → (node, group)
        self.binding_served = True
        self.pods.add_handler(self._on_pod)
        self.nodes.add_handler(self._on_node)

    def _on_pod(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        assert obj is not None
        key = o.key_of(obj)
        if new is None or o.spec(new).get("nodeName"):
            self.assumed.pop(key, None)
        if new is not None and _wants_scheduling(new):
            self.queue.add(key)

    def _on_node(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        if (
            kind == "MODIFIED"
            and old is not None
            and new is not None
            and (o.labels(old), o.spec(old)) == (o.labels(new), o.spec(new))
        ):
            return
        for pod in self.pods.list():
            if _wants_scheduling(pod):
                self.queue.add(o.key_of(pod))

    def _load(self, group: str | None) -> Counter[str]:
        """Pods per node of ``group`` (all pods when None), assumed bindings included."""
        counts: Counter[str] = Counter()
        for pod in self.pods.list():
            key = o.key_of(pod)
            if key in self.assumed or o.deleting(pod):
                continue
            node = o.spec(pod).get("nodeName")
            if node and (group is None or _group(pod) == group):
                counts[str(node)] += 1
        for node, pod_group in self.assumed.values():
            if group is None or pod_group == group:
                counts[node] += 1
        return counts

    async def reconcile(self, key: str) -> float | None:
        ns, name = o.split_key(key)
        pod = self.pods.get(ns, name)
        if pod is None or not _wants_scheduling(pod) or key in self.assumed:
            return None
        nodes = sorted(self.nodes.list(), key=lambda n: o.meta(n)["name"])
        reasons: Counter[str] = Counter()
        feasible: list[str] = []
        for node in nodes:
            why = o.fits_node(o.spec(pod), node)
            if why is None:
                feasible.append(o.meta(node)["name"])
            else:
                reasons[why] += 1
        if not feasible:
            await self._unschedulable(pod, len(nodes), reasons)
            return None
        group = _group(pod)
        load = self._load(group)
        chosen = min(feasible, key=lambda n: (load[n], n))
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": ns},
            "target": {"apiVersion": "v1", "kind": "Node", "name": chosen},
        }
        try:
            if self.binding_served:
                try:
                    await self.kube.request(
                        "POST", object_path(PODS, ns, name, "binding"), body=binding
                    )
                except KubeError as err:
                    if err.code != 404 or "requested resource" not in err.message:
                        raise
                    log.info("scheduler: pods/binding not served; binding by patch")
                    self.binding_served = False
            if not self.binding_served:
                await self._bind_by_patch(pod, chosen)
        except KubeError as err:
            if err.code in (404, 409):  # gone, or changed/bound meanwhile: the cache will tell
                return None
            raise
        self.assumed[key] = (chosen, group)
        log.info("scheduler: %s bound to %s", key, chosen)
        return None

    async def _bind_by_patch(self, pod: Obj, node: str) -> None:
        """What the binding subresource does, for an API server without it: ``spec.nodeName``
        set only on the version of the pod that was read (a merge patch carrying its
        resourceVersion, so a pod bound or changed meanwhile is 409, not re-bound), then the
        PodScheduled condition."""
        m = o.meta(pod)
        await self.kube.merge_patch(
            PODS,
            m["namespace"],
            m["name"],
            {"metadata": {"resourceVersion": m["resourceVersion"]}, "spec": {"nodeName": node}},
        )
        conditions = [
            c for c in o.status(pod).get("conditions") or [] if c.get("type") != "PodScheduled"
        ]
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": o.now(),
            }
        )
        await self.kube.merge_patch(
            PODS, m["namespace"], m["name"], {"status": {"conditions": conditions}}, "status"
        )

    async def _unschedulable(self, pod: Obj, total: int, reasons: Counter[str]) -> None:
        detail = ", ".join(f"{n} node(s) {why}" for why, n in sorted(reasons.items()))
        message = f"0/{total} nodes are available: {detail}." if total else "no nodes available"
        previous = o.condition(pod, "PodScheduled")
        if previous and previous.get("message") == message:
            return
        conditions = [
            c for c in o.status(pod).get("conditions") or [] if c.get("type") != "PodScheduled"
        ]
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
                "lastProbeTime": None,
                "lastTransitionTime": o.now(),
            }
        )
        m = o.meta(pod)
        try:
            await self.kube.merge_patch(
                PODS, m["namespace"], m["name"], {"status": {"conditions": conditions}}, "status"
            )
        except KubeError as err:
            if err.code != 404:
                raise
