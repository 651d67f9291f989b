"""Deployment controller: a ReplicaSet per pod template, rolled from old to new.

kube-controller-manager's ``deployment`` controller for the ``RollingUpdate`` (default) and
``Recreate`` strategies. The ReplicaSet of the current template is ``<deployment>-<hash>``
(:func:`ciliary.controllers.objects.template_hash`), labelled and selecting
``pod-template-hash=<hash>`` so old and new pods never mix, owned by the Deployment
(``controller: true``) and annotated with ``deployment.kubernetes.io/revision``.

A rolling update follows upstream's ``rolloutRolling``: the new ReplicaSet grows while the
total stays within ``replicas + maxSurge``, old ReplicaSets shrink (unhealthy ones first, then
the oldest) while at least ``replicas - maxUnavailable`` pods stay available; both default to
25 % (surge rounded up, unavailable down; both 0 means unavailable 1). Scaling a Deployment
with no rollout in flight resizes its ReplicaSet; during a rollout the new ReplicaSet takes the
new size and the old ones drain as above (upstream's proportional scaling of several live
ReplicaSets is not done). Old ReplicaSets beyond ``revisionHistoryLimit`` (10) that have no
pods are deleted. ``paused`` stops rollouts and scaling; ``progressDeadlineSeconds`` is not
tracked (Progressing never turns False).

Status is what ``kubectl rollout status`` reads: replicas, updatedReplicas, readyReplicas,
availableReplicas, unavailableReplicas, observedGeneration, and the conditions Available
(``MinimumReplicasAvailable`` / ``MinimumReplicasUnavailable``) and Progressing
(``NewReplicaSetCreated``, ``ReplicaSetUpdated``, ``NewReplicaSetAvailable``).
"""

from __future__ import annotations

import copy
import logging
import math

from ciliary.controllers import objects as o
from ciliary.controllers.informers import DEPLOYMENTS, REPLICASETS, Informers
from ciliary.controllers.queue import Controller
from ciliary.k8s.meta import now
from ciliary.kube.client import ApiError, KubeClient, KubeObject, split_key

log = logging.getLogger(__name__)

REVISION = "deployment.kubernetes.io/revision"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"


def _intstr(value: object, total: int, *, round_up: bool, default: str) -> int:
    """An IntOrString of ``total`` (``"25%"`` or ``2``), as apimachinery scales it."""
    if value is None:
        value = default
    if isinstance(value, int):
        return max(value, 0)
    text = str(value)
    if text.endswith("%"):
        fraction = int(text[:-1]) * total / 100
        return math.ceil(fraction) if round_up else math.floor(fraction)
    return max(int(text), 0)


def surge_and_unavailable(deploy: KubeObject) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) in pods (upstream's ``ResolveFenceposts``)."""
    rolling = (o.spec(deploy).get("strategy") or {}).get("rollingUpdate") or {}
    want = o.replicas(deploy)
    surge = _intstr(rolling.get("maxSurge"), want, round_up=True, default="25%")
    unavailable = _intstr(rolling.get("maxUnavailable"), want, round_up=False, default="25%")
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def _revision(rs: KubeObject) -> int:
    try:
        return int((o.meta(rs).get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def _rs_replicas(rs: KubeObject) -> int:
    return o.replicas(rs, default=0)


def _created(obj: KubeObject) -> tuple[float, str]:
    return (o.parse_time(o.meta(obj).get("creationTimestamp")) or 0.0, o.meta(obj)["name"])


class DeploymentController(Controller):
    name = "deployment"

    def __init__(self, kube: KubeClient, informers: Informers) -> None:
        super().__init__()
        self.kube = kube
        self.deployments = informers.deployments
        self.rs = informers.replicasets
        self.deployments.add_handler(self.enqueue_objects())
        self.rs.add_handler(self.enqueue_owners("Deployment"))

    async def reconcile(self, key: str) -> float | None:
        ns, _ = split_key(key)
        deploy = self.deployments.store.get(key)
        if deploy is None or o.deleting(deploy):
            return None
        owned = [rs for rs in self.rs.store.objects(ns) if o.controlled_by(rs, deploy)]
        template = o.spec(deploy).get("template") or {}
        hash_ = o.template_hash(template, int(o.status(deploy).get("collisionCount") or 0))
        new = next((rs for rs in owned if o.labels(rs).get(o.POD_TEMPLATE_HASH) == hash_), None)
        old = sorted((rs for rs in owned if rs is not new), key=_created)
        if o.spec(deploy).get("paused"):
            await self._update_status(deploy, new, old)
            return None
        strategy = (o.spec(deploy).get("strategy") or {}).get("type") or "RollingUpdate"
        if new is None:
            if strategy == "Recreate" and any(o.status(rs).get("replicas") for rs in old):
                await self._scale_all(old, 0)
                await self._update_status(deploy, new, old)
                return None
            new = await self._create_rs(deploy, template, hash_, old)
            if new is None:
                return None  # a name collision: requeued by the collision count
        elif _revision(new) <= max((_revision(rs) for rs in old), default=0):
            new = await self._annotate(deploy, new, max(_revision(rs) for rs in old) + 1)
        if strategy == "Recreate":
            await self._scale_all(old, 0)
            if not any(o.status(rs).get("replicas") for rs in old):
                new = await self._scale(deploy, new, o.replicas(deploy))
        else:
            new = await self._rolling(deploy, new, old)
        await self._cleanup(deploy, old)
        await self._update_status(deploy, new, old)
        return None

    async def _create_rs(
        self, deploy: KubeObject, template: KubeObject, hash_: str, old: list[KubeObject]
    ) -> KubeObject | None:
        dm = o.meta(deploy)
        tmpl = copy.deepcopy(template)
        tmpl.setdefault("metadata", {}).setdefault("labels", {})[o.POD_TEMPLATE_HASH] = hash_
        selector = copy.deepcopy(o.spec(deploy).get("selector") or {})
        selector.setdefault("matchLabels", {})[o.POD_TEMPLATE_HASH] = hash_
        surge, _ = surge_and_unavailable(deploy)
        want = o.replicas(deploy)
        total = sum(_rs_replicas(rs) for rs in old)
        start = want if o.spec(deploy).get("strategy", {}).get("type") == "Recreate" else 0
        if not old or total == 0:
            start = want
        elif start == 0:
            start = max(min(want + surge - total, want), 0)
        rs: KubeObject = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": f"{dm['name']}-{hash_}",
                "namespace": dm["namespace"],
                "labels": dict(tmpl["metadata"]["labels"]),
                "annotations": {
                    REVISION: str(max((_revision(r) for r in old), default=0) + 1),
                    DESIRED_REPLICAS: str(want),
                    MAX_REPLICAS: str(want + surge),
                },
                "ownerReferences": [o.owner_reference(deploy)],
            },
            "spec": {
                "replicas": start,
                "minReadySeconds": o.min_ready_seconds(deploy),
                "selector": selector,
                "template": tmpl,
            },
        }
        try:
            return await self.kube.create(REPLICASETS, rs, dm["namespace"])
        except ApiError as err:
            if err.status != 409:
                raise
        existing = await self.kube.get(REPLICASETS, rs["metadata"]["name"], dm["namespace"])
        if o.controlled_by(existing, deploy):
            return existing  # ours, not yet in the cache
        # another object holds the name: bump collisionCount for a new hash (as upstream)
        count = int(o.status(deploy).get("collisionCount") or 0) + 1
        await self.kube.patch(
            DEPLOYMENTS,
            dm["name"],
            {"status": {"collisionCount": count}},
            dm["namespace"],
            subresource="status",
        )
        return None

    async def _annotate(self, deploy: KubeObject, rs: KubeObject, revision: int) -> KubeObject:
        m = o.meta(rs)
        return await self.kube.patch(
            REPLICASETS,
            m["name"],
            {"metadata": {"annotations": {REVISION: str(revision)}}},
            m["namespace"],
        )

    async def _scale(self, deploy: KubeObject, rs: KubeObject, count: int) -> KubeObject:
        if _rs_replicas(rs) == count:
            return rs
        m = o.meta(rs)
        surge, _ = surge_and_unavailable(deploy)
        want = o.replicas(deploy)
        return await self.kube.patch(
            REPLICASETS,
            m["name"],
            {
                "metadata": {
                    "annotations": {DESIRED_REPLICAS: str(want), MAX_REPLICAS: str(want + surge)}
                },
                "spec": {"replicas": count},
            },
            m["namespace"],
        )

    async def _scale_all(self, sets: list[KubeObject], count: int) -> None:
        for rs in sets:
            if _rs_replicas(rs) != count:
                m = o.meta(rs)
                await self.kube.patch(
                    REPLICASETS, m["name"], {"spec": {"replicas": count}}, m["namespace"]
                )

    async def _rolling(
        self, deploy: KubeObject, new: KubeObject, old: list[KubeObject]
    ) -> KubeObject:
        want = o.replicas(deploy)
        surge, max_unavailable = surge_and_unavailable(deploy)
        # reconcileNewReplicaSet
        current = _rs_replicas(new)
        if current > want:
            new = await self._scale(deploy, new, want)
        elif current < want:
            total = current + sum(_rs_replicas(rs) for rs in old)
            room = want + surge - total
            if room > 0:
                new = await self._scale(deploy, new, current + min(room, want - current))
        # reconcileOldReplicaSets
        if not any(_rs_replicas(rs) for rs in old):
            return new
        old_sizes = {o.meta(rs)["name"]: _rs_replicas(rs) for rs in old}
        all_pods = _rs_replicas(new) + sum(old_sizes.values())
        min_available = want - max_unavailable
        new_unavailable = _rs_replicas(new) - int(o.status(new).get("availableReplicas") or 0)
        budget = all_pods - min_available - new_unavailable
        if budget <= 0:
            return new
        # cleanupUnhealthyReplicas: old pods that are not available go first
        for rs in old:
            name = o.meta(rs)["name"]
            size = old_sizes[name]
            unhealthy = size - int(o.status(rs).get("availableReplicas") or 0)
            if budget <= 0 or size == 0 or unhealthy <= 0:
                continue
            cut = min(budget, unhealthy, size)
            old_sizes[name] = size - cut
            budget -= cut
        # scaleDownOldReplicaSetsForRollingUpdate: then available ones, oldest first
        available = int(o.status(new).get("availableReplicas") or 0) + sum(
            min(int(o.status(rs).get("availableReplicas") or 0), old_sizes[o.meta(rs)["name"]])
            for rs in old
        )
        spare = available - min_available
        for rs in old:
            name = o.meta(rs)["name"]
            if spare <= 0:
                break
            cut = min(old_sizes[name], spare)
            old_sizes[name] -= cut
            spare -= cut
        for rs in old:
            size = old_sizes[o.meta(rs)["name"]]
            if size != _rs_replicas(rs):
                m = o.meta(rs)
                await self.kube.patch(
                    REPLICASETS, m["name"], {"spec": {"replicas": size}}, m["namespace"]
                )
        return new

    async def _cleanup(self, deploy: KubeObject, old: list[KubeObject]) -> None:
        limit = o.spec(deploy).get("revisionHistoryLimit")
        limit = 10 if not isinstance(limit, int) else limit
        empty = [rs for rs in old if _rs_replicas(rs) == 0 and not o.status(rs).get("replicas")]
        for rs in empty[: max(len(empty) - limit, 0)]:
            m = o.meta(rs)
            try:
                await self.kube.delete(REPLICASETS, m["name"], m["namespace"], uid=m.get("uid"))
            except ApiError as err:
                if not err.not_found:
                    raise

    async def _update_status(
        self, deploy: KubeObject, new: KubeObject | None, old: list[KubeObject]
    ) -> None:
        sets = ([new] if new is not None else []) + old
        want = o.replicas(deploy)
        _, max_unavailable = surge_and_unavailable(deploy)

        def total(field: str) -> int:
            return sum(int(o.status(rs).get(field) or 0) for rs in sets)

        updated = int(o.status(new).get("replicas") or 0) if new is not None else 0
        available = total("availableReplicas")
        replicas = total("replicas")
        st: KubeObject = {
            "observedGeneration": o.meta(deploy).get("generation", 1),
            "replicas": replicas,
            "updatedReplicas": updated,
            "readyReplicas": total("readyReplicas"),
            "availableReplicas": available,
            "unavailableReplicas": max(want - available, 0),
        }
        if "collisionCount" in o.status(deploy):
            st["collisionCount"] = o.status(deploy)["collisionCount"]
        previous = {c.get("type"): c for c in o.status(deploy).get("conditions") or []}
        if available >= want - max_unavailable:
            avail = ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
        else:
            avail = (
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        rs_name = o.meta(new)["name"] if new is not None else ""
        if (
            new is not None
            and updated == want
            and replicas == want
            and available == want
            and not any(_rs_replicas(rs) for rs in old)
        ):
            progress = (
                "True",
                "NewReplicaSetAvailable",
                f'ReplicaSet "{rs_name}" has successfully progressed.',
            )
        elif new is not None and not old and "Progressing" not in previous:
            progress = ("True", "NewReplicaSetCreated", f'Created new replica set "{rs_name}"')
        else:
            progress = ("True", "ReplicaSetUpdated", f'ReplicaSet "{rs_name}" is progressing.')
        st["conditions"] = [
            _condition(previous.get("Available"), "Available", *avail),
            _condition(previous.get("Progressing"), "Progressing", *progress),
        ]
        current = o.status(deploy)
        if any(current.get(k) != v for k, v in st.items()):
            m = o.meta(deploy)
            await self.kube.patch(
                DEPLOYMENTS, m["name"], {"status": st}, m["namespace"], subresource="status"
            )


def _condition(
    previous: KubeObject | None, kind: str, status: str, reason: str, message: str
) -> KubeObject:
    """A condition whose timestamps move only when it changes (lastTransitionTime only when
    its status does), so an unchanged status is not rewritten."""
    stamp = now()
    if previous and (previous.get("status"), previous.get("reason")) == (status, reason):
        return dict(previous, message=message)
    transition = stamp
    if previous and previous.get("status") == status:
        transition = previous.get("lastTransitionTime", stamp)
    return {
        "type": kind,
        "status": status,
        "lastUpdateTime": stamp,
        "lastTransitionTime": transition,
        "reason": reason,
        "message": message,
    }
