"""Scheduler: a node for every pod that has none, bound through ``pods/binding``.

kube-scheduler's role for the lab, with its filters and one scoring rule:

* filters (:func:`ciliary.controllers.objects.fits_node`): the pod's ``nodeSelector``,
  ``spec.unschedulable`` (unless tolerated), NoSchedule/NoExecute taints;
* score: spread — the node running the fewest pods of the pod's controller (its ownerReference
  with ``controller: true``; for a pod without one, the fewest pods at all), ties broken by node
  name, so a Deployment's 4 replicas on 2 nodes land 2 and 2 (upstream gets this from its
  default PodTopologySpread/SelectorSpread scoring).

Binding is kube-scheduler's: ``POST pods/<name>/binding`` with a ``Binding`` naming the node
(the API server sets ``spec.nodeName`` and the PodScheduled condition, and refuses with 409 a
pod that is already bound or being deleted; the binding carries the pod's uid as a
precondition, so a pod deleted and recreated under the same name is not bound blind). Pods
naming another
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
from ciliary.k8s.meta import now
from ciliary.kube.client import ApiError, KubeClient, KubeObject, object_key, split_key
from ciliary.kube.informer import HandlerFuncs

log = logging.getLogger(__name__)

SCHEDULER_NAME = "default-scheduler"


def _wants_scheduling(pod: KubeObject) -> bool:
    pod_spec = o.spec(pod)
    return (
        not pod_spec.get("nodeName")
        and (pod_spec.get("schedulerName") or SCHEDULER_NAME) == SCHEDULER_NAME
        and not o.deleting(pod)
        and o.status(pod).get("phase") not in ("Succeeded", "Failed")
    )


def _group(pod: KubeObject) -> str | None:
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
        self.pods.add_handler(
            HandlerFuncs(
                add=self._on_pod,
                update=lambda _old, new: self._on_pod(new),
                delete=lambda pod: self._forget(object_key(pod)),
            )
        )
        self.nodes.add_handler(
            HandlerFuncs(add=self._on_node, update=self._on_node_update, delete=self._on_node)
        )

    def _on_pod(self, pod: KubeObject) -> None:
        key = object_key(pod)
        if o.spec(pod).get("nodeName"):
            self._forget(key)  # the binding is seen: no longer assumed
        if _wants_scheduling(pod):
            self.queue.add(key)

    def _forget(self, key: str) -> None:
        self.assumed.pop(key, None)

    def _on_node(self, node: KubeObject) -> None:
        for pod in self.pods.store.objects():
            if _wants_scheduling(pod):
                self.queue.add(object_key(pod))

    def _on_node_update(self, old: KubeObject, new: KubeObject) -> None:
        if o.node_fit_changed(old, new):
            self._on_node(new)

    def _load(self, group: str | None) -> Counter[str]:
        """Pods per node of ``group`` (all pods when None), assumed bindings included."""
        counts: Counter[str] = Counter()
        for pod in self.pods.store.objects():
            key = object_key(pod)
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
        ns, name = split_key(key)
        pod = self.pods.store.get(key)
        if pod is None or not _wants_scheduling(pod) or key in self.assumed:
            return None
        nodes = sorted(self.nodes.store.objects(), key=lambda n: o.meta(n)["name"])
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
            "metadata": {"name": name, "namespace": ns, "uid": o.meta(pod)["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": chosen},
        }
        try:
            await self.kube.create(PODS, binding, ns, subresource="binding")
        except ApiError as err:
            if err.status in (404, 409):  # gone, or changed/bound meanwhile: the cache will tell
                return None
            raise
        self.assumed[key] = (chosen, group)
        log.info("scheduler: %s bound to %s", key, chosen)
        return None

    async def _unschedulable(self, pod: KubeObject, total: int, reasons: Counter[str]) -> None:
        detail = ", ".join(f"{n} node(s) {why}" for why, n in sorted(reasons.items()))
        message = f"0/{total} nodes are available: {detail}." if total else "no nodes available"
        previous = o.condition(pod, "PodScheduled")
        if previous and previous.get("message") == message:
            return
        try:
            await self._set_scheduled(pod, "False", "Unschedulable", message)
        except ApiError as err:
            if not err.not_found:
                raise

    async def _set_scheduled(
        self, pod: KubeObject, status: str, reason: str | None = None, message: str | None = None
    ) -> None:
        """The pod's PodScheduled condition replaced (through ``/status``)."""
        condition: KubeObject = {"type": "PodScheduled", "status": status}
        if reason is not None:
            condition |= {"reason": reason, "message": message}
        condition |= {"lastProbeTime": None, "lastTransitionTime": now()}
        conditions = [
            c for c in o.status(pod).get("conditions") or [] if c.get("type") != "PodScheduled"
        ]
        m = o.meta(pod)
        await self.kube.patch(
            PODS,
            m["name"],
            {"status": {"conditions": [*conditions, condition]}},
            m["namespace"],
            subresource="status",
        )
