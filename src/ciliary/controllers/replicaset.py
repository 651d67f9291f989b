"""ReplicaSet controller: keeps ``spec.replicas`` pods of the template alive.

kube-controller-manager's ``replicaset`` controller, small: the pods a ReplicaSet counts are
the active ones it controls (ownerReference ``controller: true`` with its uid; orphans that
match its selector are not adopted). Missing pods are created from the template
(``generateName: <rs>-``), extra ones deleted, the least valuable first as upstream ranks them
(unscheduled, then pending, then not ready, then the youngest). Creations and deletions are
counted in :class:`~ciliary.controllers.queue.Expectations`, so a ReplicaSet never acts twice on
a pod count its cache has not caught up with. Status (replicas, fullyLabeledReplicas,
readyReplicas, availableReplicas, observedGeneration) is written through ``/status``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ciliary.controllers import objects as o
from ciliary.controllers.informers import REPLICASETS, Informers
from ciliary.controllers.queue import Controller, Expectations, PodControl
from ciliary.kube.client import KubeClient, KubeObject

log = logging.getLogger(__name__)

BURST = 500  # kube's burstReplicas: most pods created or deleted in one sync


class ReplicaSetController(Controller):
    name = "replicaset"

    def __init__(self, kube: KubeClient, informers: Informers) -> None:
        super().__init__()
        self.kube = kube
        self.rs = informers.replicasets
        self.pods = informers.pods
        self.expectations = Expectations()
        self.pod_control = PodControl(kube, self.expectations)
        self.rs.add_handler(self.enqueue_objects())
        self.pods.add_handler(self.enqueue_owners("ReplicaSet", self.expectations))

    def owned_pods(self, rs: KubeObject) -> list[KubeObject]:
        return [
            p
            for p in self.pods.store.objects(o.meta(rs)["namespace"])
            if o.controlled_by(p, rs) and o.pod_active(p)
        ]

    async def reconcile(self, key: str) -> float | None:
        rs = self.rs.store.get(key)
        if rs is None:
            self.expectations.forget(key)
            return None
        pods = self.owned_pods(rs)
        if self.expectations.satisfied(key) and not o.deleting(rs):
            await self._manage(key, rs, pods)
        return await self._update_status(rs, pods)

    async def _manage(self, key: str, rs: KubeObject, pods: list[KubeObject]) -> None:
        diff = len(pods) - o.replicas(rs)
        if diff < 0:
            count = min(-diff, BURST)
            self.expectations.expect(key, adds=count)
            template = o.spec(rs).get("template") or {}
            skipped, error = await slow_start(count, lambda: self._create(key, rs, template))
            for _ in range(skipped):
                self.expectations.created(key)
            if error is not None:
                raise error
        elif diff > 0:
            victims = sorted(pods, key=_deletion_rank)[: min(diff, BURST)]
            self.expectations.expect(key, deletes=len(victims))
            await asyncio.gather(*(self.pod_control.delete(key, p) for p in victims))

    async def _create(self, key: str, rs: KubeObject, template: KubeObject) -> None:
        await self.pod_control.create(key, o.pod_from_template(rs, template))

    async def _update_status(self, rs: KubeObject, pods: list[KubeObject]) -> float | None:
        at = time.time()
        min_ready = o.min_ready_seconds(rs)
        selector = o.selector_of(rs)
        template_labels = (o.spec(rs).get("template") or {}).get("metadata", {}).get("labels")
        want = {
            "replicas": len(pods),
            "fullyLabeledReplicas": sum(
                1
                for p in pods
                if all(o.labels(p).get(k) == v for k, v in (template_labels or {}).items())
            ),
            "readyReplicas": sum(1 for p in pods if o.pod_ready(p)),
            "availableReplicas": sum(1 for p in pods if o.pod_available(p, min_ready, at)),
            "observedGeneration": o.meta(rs).get("generation", 1),
        }
        if selector is None:
            want["fullyLabeledReplicas"] = 0
        current = o.status(rs)
        if any(current.get(k, 0) != v for k, v in want.items()):
            m = o.meta(rs)
            await self.kube.patch(
                REPLICASETS, m["name"], {"status": want}, m["namespace"], subresource="status"
            )
        waits = [w for p in pods if (w := o.available_in(p, min_ready, at)) is not None]
        return min(waits) + 0.05 if waits else None


def _deletion_rank(pod: KubeObject) -> tuple[int, int, int, float]:
    """Which pods go first on scale-down (kube's ``ActivePods`` order): unscheduled before
    scheduled, Pending before Unknown before Running, not ready before ready, younger first."""
    phase_rank = {"Pending": 0, "Unknown": 1, "Running": 2}
    scheduled = 1 if o.spec(pod).get("nodeName") else 0
    phase = phase_rank.get(str(o.status(pod).get("phase", "Pending")), 0)
    ready = 1 if o.pod_ready(pod) else 0
    created = o.parse_time(o.meta(pod).get("creationTimestamp")) or 0.0
    return (scheduled, phase, ready, -created)


async def slow_start(
    count: int, create: Callable[[], Awaitable[None]]
) -> tuple[int, BaseException | None]:
    """Create ``count`` pods in batches of 1, 2, 4, … stopping after the first failing batch
    (kube's ``slowStartBatch``: a quota or admission error fails fast, not ``count`` times).
    Returns how many were never attempted and the first error."""
    done = 0
    batch = 1
    while done < count:
        size = min(batch, count - done)
        results = await asyncio.gather(*(create() for _ in range(size)), return_exceptions=True)
        done += size
        for r in results:
            if isinstance(r, BaseException):
                return count - done, r
        batch *= 2
    return 0, None
