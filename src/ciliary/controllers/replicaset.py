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
from ciliary.controllers.informers import PODS, REPLICASETS, Informers
from ciliary.controllers.queue import Controller, Expectations
from ciliary.kube.client import KubeClient, KubeError, Obj
from ciliary.kube.informer import EventType

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
        self.rs.add_handler(self._on_rs)
        self.pods.add_handler(self._on_pod)

    def _on_rs(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        assert obj is not None
        self.queue.add(o.key_of(obj))

    def _on_pod(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        for pod in (old, new):
            if pod is None:
                continue
            key = o.controller_key(pod, "ReplicaSet")
            if key is None:
                continue
            if kind == "ADDED":
                self.expectations.created(key)
            elif kind == "DELETED":
                self.expectations.deleted(key)
            self.queue.add(key)

    def owned_pods(self, rs: Obj) -> list[Obj]:
        return [
            p
            for p in self.pods.list(o.meta(rs)["namespace"])
            if o.controlled_by(p, rs) and o.pod_active(p)
        ]

    async def reconcile(self, key: str) -> float | None:
        ns, name = o.split_key(key)
        rs = self.rs.get(ns, name)
        if rs is None:
            self.expectations.forget(key)
            return None
        pods = self.owned_pods(rs)
        if self.expectations.satisfied(key) and not o.deleting(rs):
            await self._manage(key, rs, pods)
        return await self._update_status(rs, pods)

    async def _manage(self, key: str, rs: Obj, pods: list[Obj]) -> None:
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
            await asyncio.gather(*(self._delete(key, p) for p in victims))

    async def _create(self, key: str, rs: Obj, template: Obj) -> None:
        pod = o.pod_from_template(rs, template)
        try:
            await self.kube.create(PODS, o.meta(rs)["namespace"], pod)
        except BaseException:
            self.expectations.created(key)  # never observed: do not wait for it
            raise

    async def _delete(self, key: str, pod: Obj) -> None:
        m = o.meta(pod)
        try:
            await self.kube.delete(PODS, m["namespace"], m["name"], uid=m.get("uid"))
        except KubeError as err:
            self.expectations.deleted(key)
            if err.code != 404:
                raise

    async def _update_status(self, rs: Obj, pods: list[Obj]) -> float | None:
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
            await self.kube.merge_patch(
                REPLICASETS, m["namespace"], m["name"], {"status": want}, "status"
            )
        waits = [w for p in pods if (w := o.available_in(p, min_ready, at)) is not None]
        return min(waits) + 0.05 if waits else None


def _deletion_rank(pod: Obj) -> tuple[int, int, int, float]:
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
