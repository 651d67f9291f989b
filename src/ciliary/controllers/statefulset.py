"""StatefulSet controller: pods with stable ordinal names, made and removed in order.

kube-controller-manager's ``statefulset`` controller without volumes: pod ``<sts>-<i>`` for
``i`` in ``0..replicas-1``, labelled ``statefulset.kubernetes.io/pod-name``,
``apps.kubernetes.io/pod-index`` and ``controller-revision-hash``, with ``hostname`` = its
name and ``subdomain`` = ``serviceName`` (its DNS name under the governing Service).

``OrderedReady`` (the default): a pod is created only when every lower ordinal is Running and
Ready; scale-down deletes the highest ordinal first, one at a time, only while all others are
Running and Ready. ``Parallel`` creates and deletes all at once. A failed pod is deleted and
made again under the same name. Template changes roll with ``RollingUpdate`` as upstream:
once every pod is Running and Ready, the highest-ordinal pod of an older revision is deleted
(and recreated from the new template by the next pass); ``OnDelete`` leaves that to the user;
``partition`` is honoured (ordinals below it keep their revision).
Status: replicas, readyReplicas, availableReplicas, currentReplicas, updatedReplicas,
currentRevision, updateRevision, observedGeneration.
"""

from __future__ import annotations

import logging
import re
import time

from ciliary.controllers import objects as o
from ciliary.controllers.informers import STATEFULSETS, Informers
from ciliary.controllers.queue import Controller, Expectations, PodControl
from ciliary.kube.client import KubeClient, KubeObject, split_key

log = logging.getLogger(__name__)

POD_NAME = "statefulset.kubernetes.io/pod-name"
POD_INDEX = "apps.kubernetes.io/pod-index"


def ordinal(sts_name: str, pod_name: str) -> int | None:
    m = re.fullmatch(re.escape(sts_name) + r"-(\d+)", pod_name)
    return int(m.group(1)) if m else None


def _running_ready(pod: KubeObject) -> bool:
    return o.status(pod).get("phase") == "Running" and o.pod_ready(pod)


class StatefulSetController(Controller):
    name = "statefulset"

    def __init__(self, kube: KubeClient, informers: Informers) -> None:
        super().__init__()
        self.kube = kube
        self.sts = informers.statefulsets
        self.pods = informers.pods
        self.expectations = Expectations()
        self.pod_control = PodControl(kube, self.expectations)
        self.sts.add_handler(self.enqueue_objects())
        self.pods.add_handler(self.enqueue_owners("StatefulSet", self.expectations))

    async def reconcile(self, key: str) -> float | None:
        ns, name = split_key(key)
        sts = self.sts.store.get(key)
        if sts is None:
            self.expectations.forget(key)
            return None
        hash_ = f"{name}-{o.template_hash(o.spec(sts).get('template') or {})}"
        pods: dict[int, KubeObject] = {}
        for p in self.pods.store.objects(ns):
            i = ordinal(name, o.meta(p)["name"])
            if i is not None and o.controlled_by(p, sts):
                pods[i] = p
        if self.expectations.satisfied(key) and not o.deleting(sts):
            await self._manage(key, sts, hash_, pods)
        return await self._update_status(sts, hash_, pods)

    async def _manage(
        self, key: str, sts: KubeObject, hash_: str, pods: dict[int, KubeObject]
    ) -> None:
        want = o.replicas(sts)
        parallel = o.spec(sts).get("podManagementPolicy") == "Parallel"
        # failed pods go first; they come back under the same name
        for _, p in sorted(pods.items()):
            if o.status(p).get("phase") == "Failed" and not o.deleting(p):
                await self._delete(key, p)
                if not parallel:
                    return
        for i in range(want):
            pod = pods.get(i)
            if pod is None:
                await self._create(key, sts, hash_, i)
                if not parallel:
                    return
                continue
            if o.deleting(pod) and not parallel:
                return  # wait until it is gone, then make it again
            if not _running_ready(pod) and not parallel:
                return  # OrderedReady: the next ordinal waits for this one
        extra = sorted((i for i in pods if i >= want), reverse=True)
        if extra:
            if parallel:
                for i in extra:
                    await self._delete(key, pods[i])
                return
            if any(o.deleting(pods[i]) for i in pods):
                return
            if all(_running_ready(pods[i]) for i in pods if i < extra[0]):
                await self._delete(key, pods[extra[0]])
            return
        strategy = o.spec(sts).get("updateStrategy") or {}
        if (strategy.get("type") or "RollingUpdate") != "RollingUpdate":
            return
        partition = int((strategy.get("rollingUpdate") or {}).get("partition") or 0)
        if not all(_running_ready(p) and not o.deleting(p) for p in pods.values()):
            return
        for i in sorted(pods, reverse=True):
            if i >= partition and o.labels(pods[i]).get(o.CONTROLLER_REVISION_HASH) != hash_:
                await self._delete(key, pods[i])
                return

    async def _create(self, key: str, sts: KubeObject, hash_: str, i: int) -> None:
        name = f"{o.meta(sts)['name']}-{i}"
        pod = o.pod_from_template(
            sts,
            o.spec(sts).get("template") or {},
            name=name,
            extra_labels={POD_NAME: name, POD_INDEX: str(i), o.CONTROLLER_REVISION_HASH: hash_},
        )
        pod["spec"]["hostname"] = name
        if o.spec(sts).get("serviceName"):
            pod["spec"]["subdomain"] = o.spec(sts)["serviceName"]
        self.expectations.expect(key, adds=1)
        await self.pod_control.create(key, pod, exists_ok=True)

    async def _delete(self, key: str, pod: KubeObject) -> None:
        self.expectations.expect(key, deletes=1)
        await self.pod_control.delete(key, pod)

    async def _update_status(
        self, sts: KubeObject, hash_: str, pods: dict[int, KubeObject]
    ) -> float | None:
        at = time.time()
        min_ready = o.min_ready_seconds(sts)
        live = [p for p in pods.values() if not o.deleting(p)]
        updated = sum(1 for p in live if o.labels(p).get(o.CONTROLLER_REVISION_HASH) == hash_)
        current_revision = str(o.status(sts).get("currentRevision") or hash_)
        if updated == len(live) == o.replicas(sts):
            current_revision = hash_
        st = {
            "observedGeneration": o.meta(sts).get("generation", 1),
            "replicas": len(live),
            "readyReplicas": sum(1 for p in live if o.pod_ready(p)),
            "availableReplicas": sum(1 for p in live if o.pod_available(p, min_ready, at)),
            "currentReplicas": sum(
                1 for p in live if o.labels(p).get(o.CONTROLLER_REVISION_HASH) == current_revision
            ),
            "updatedReplicas": updated,
            "currentRevision": current_revision,
            "updateRevision": hash_,
        }
        current = o.status(sts)
        if any(current.get(k) != v for k, v in st.items()):
            m = o.meta(sts)
            await self.kube.patch(
                STATEFULSETS, m["name"], {"status": st}, m["namespace"], subresource="status"
            )
        waits = [w for p in live if (w := o.available_in(p, min_ready, at)) is not None]
        return min(waits) + 0.05 if waits else None
