"""Cluster-wide security identities as Cilium's CRD mode allocates them.

A label set's number is a cluster-scoped ``CiliumIdentity`` named by the number, whose
``security-labels`` map the set (``k8s:app: web``) and whose object labels repeat the ``k8s:``
ones without the prefix (upstream's ``SanitizeK8sLabels``: other sources and the
``io.cilium.k8s.namespace.labels.*`` ones are left out, being no valid or no bounded label keys),
so ``kubectl get ciliumidentities -l app=web`` works. Every agent watches all identities
(an informer indexed by label set), so a known set costs no request.

Allocation (``pkg/allocator`` + ``pkg/k8s/identitybackend`` upstream): use an identity that
already has the set; else pick a free number in the cluster-local range (256..65535, upstream's
``MinimalAllocationIdentity``..``MaximumAllocationIdentity`` for cluster ID 0) at random (as
upstream's ID pool leases, so that concurrent allocators rarely pick the same one) and create it.
``409 AlreadyExists`` means another agent holds that number: if it carries our set it is a
candidate like our own creation, else another number is tried.

Upstream's CRD backend has no lock: two agents may create two numbers for one set at once, and
its ``get`` then answers the identity with the oldest ``creationTimestamp``. Answers may differ
until both agents' caches hold both objects; ciliary closes that window. **Rule: a label set's
identity is its oldest existing CiliumIdentity**, ordered by (creationTimestamp, creation
resourceVersion, number). After a creation (or a 409 on an identity with our set) the allocator
waits until its informer is current at least at that object's resourceVersion, then answers the
oldest identity with the set, and deletes its own creation if that lost (precondition: the
resourceVersion it created, so nothing newer is deleted). Why every allocator answers the same:
a watch cache is a consistent snapshot, and one current at a resourceVersion at or after some
identity X of the set also holds every identity of the set created before X — the oldest M is
never deleted by a loser (nothing is older) — so each answer is M, whether from the cache
(an identity of the set was there) or after a creation (the cache is current past our own).
ciliary's operator never annotates identities (its grace clock is in its memory, see
``ciliary.controllers.identitygc``), so an identity's resourceVersion is its creation's.

References: as upstream in CRD mode, an identity is in use while a CiliumEndpoint names it
(``status.identity.id``); ``release`` is a no-op and the operator's GC deletes identities no
endpoint has named for a grace period. An endpoint must be written soon after its identity is
allocated (within the grace period); if an identity in use is deleted anyway, ``on_deleted``
callbacks let the agent allocate again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ciliary.core.flow import MIN_ALLOCATED_IDENTITY
from ciliary.k8s.resources import by_path
from ciliary.kube.client import ApiError, KubeClient, KubeObject, resource_version
from ciliary.kube.informer import Informer

log = logging.getLogger(__name__)

IDENTITIES = by_path("cilium.io", "v2", "ciliumidentities")
MAX_ALLOCATED_IDENTITY = 65535  # upstream's MaximumAllocationIdentity with cluster ID 0
BY_LABELS = "by-labels"
K8S_PREFIX = "k8s:"
NAMESPACE_LABELS_PREFIX = "k8s:io.cilium.k8s.namespace.labels."

LabelKey = tuple[tuple[str, str], ...]


class IdentityError(Exception):
    """No identity could be allocated (range exhausted, API refused)."""


def labels_map(labels: Iterable[str]) -> dict[str, str]:
    """``source:key=value`` strings → upstream's ``security-labels`` map (``source:key``→value)."""
    out: dict[str, str] = {}
    for label in labels:
        key, _, value = label.partition("=")
        out[key] = value
    return out


def labels_strings(security_labels: Mapping[str, str]) -> tuple[str, ...]:
    """The map back as sorted ``source:key=value`` strings (the agent's form)."""
    return tuple(sorted(f"{k}={v}" for k, v in security_labels.items()))


def label_key(security_labels: Mapping[str, str]) -> LabelKey:
    return tuple(sorted(security_labels.items()))


def object_labels(security_labels: Mapping[str, str]) -> dict[str, str]:
    """The object's metadata labels: the ``k8s:`` labels without the prefix, namespace-label
    labels left out (upstream's SanitizeK8sLabels)."""
    return {
        k.removeprefix(K8S_PREFIX): v
        for k, v in security_labels.items()
        if k.startswith(K8S_PREFIX) and not k.startswith(NAMESPACE_LABELS_PREFIX)
    }


def identity_object(number: int, security_labels: Mapping[str, str]) -> KubeObject:
    return {
        "apiVersion": IDENTITIES.api_version,
        "kind": IDENTITIES.kind,
        "metadata": {"name": str(number), "labels": object_labels(security_labels)},
        "security-labels": dict(security_labels),
    }


def _security_labels(obj: KubeObject) -> dict[str, str]:
    raw = obj.get("security-labels") or {}
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def _index_key(key: LabelKey) -> str:
    return "\x00".join(f"{k}\x01{v}" for k, v in key)


def _by_labels(obj: KubeObject) -> list[str]:
    return [_index_key(label_key(_security_labels(obj)))]


def _number(obj: KubeObject) -> int | None:
    try:
        return int(obj["metadata"]["name"])
    except (KeyError, ValueError):
        return None


def _age_order(obj: KubeObject) -> tuple[str, int, int]:
    meta = obj.get("metadata") or {}
    return (str(meta.get("creationTimestamp") or ""), resource_version(obj), _number(obj) or 0)


def oldest(candidates: Iterable[KubeObject]) -> KubeObject | None:
    """The identity a label set resolves to among ``candidates`` (all of that set)."""
    valid = [o for o in candidates if _number(o) is not None]
    return min(valid, key=_age_order) if valid else None


class CRDIdentityAllocator:
    """Label set → number, agreed cluster-wide through CiliumIdentity objects.

    ``start`` begins watching identities; ``allocate`` waits until the first list is in.
    Handlers (``on_added``/``on_deleted`` callbacks with number and labels) tell the agent of
    every identity in the cluster (its ipcache and selector cache need the remote ones too)."""

    def __init__(
        self,
        client: KubeClient,
        *,
        min_id: int = MIN_ALLOCATED_IDENTITY,
        max_id: int = MAX_ALLOCATED_IDENTITY,
        confirm_timeout: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.min_id = min_id
        self.max_id = max_id
        self.confirm_timeout = confirm_timeout
        self._rng = rng or random.Random()
        self.informer = Informer(client, IDENTITIES, name="ciliumidentities")
        self.informer.add_index(BY_LABELS, _by_labels)
        self.informer.add_handler(self)
        self._locks: dict[LabelKey, asyncio.Lock] = {}
        self._trying: set[int] = set()
        self.on_added: list[Callable[[int, tuple[str, ...]], None]] = []
        self.on_deleted: list[Callable[[int, tuple[str, ...]], None]] = []
        self.created = 0  # identities this allocator created and kept
        self.discarded = 0  # identities this allocator created, lost to an older one, deleted

    # informer handler: the cluster's identities as (number, labels) for the agent
    def on_add(self, obj: KubeObject) -> None:
        self._notify(self.on_added, obj)

    def on_update(self, old: KubeObject, new: KubeObject) -> None:
        if _security_labels(old) != _security_labels(new):
            self._notify(self.on_deleted, old)
            self._notify(self.on_added, new)

    def on_delete(self, obj: KubeObject) -> None:
        self._notify(self.on_deleted, obj)

    def _notify(self, callbacks: list[Callable[[int, tuple[str, ...]], None]], obj: Any) -> None:
        number = _number(obj)
        if number is None:
            return
        labels = labels_strings(_security_labels(obj))
        for cb in callbacks:
            cb(number, labels)

    def start(self) -> None:
        self.informer.start()

    async def stop(self) -> None:
        await self.informer.stop()

    def lookup(self, number: int) -> tuple[str, ...] | None:
        obj = self.informer.store.get(str(number))
        return labels_strings(_security_labels(obj)) if obj is not None else None

    def all(self) -> list[tuple[int, tuple[str, ...]]]:
        out = []
        for obj in self.informer.store.objects():
            number = _number(obj)
            if number is not None:
                out.append((number, labels_strings(_security_labels(obj))))
        return sorted(out)

    def cached(self, labels: Iterable[str]) -> int | None:
        """The set's number if the cache knows it (no request)."""
        winner = self._winner(label_key(labels_map(labels)))
        return _number(winner) if winner is not None else None

    def release(self, number: int) -> None:
        """Nothing to do: references are CiliumEndpoints (upstream's CRD mode)."""

    def _winner(self, key: LabelKey) -> KubeObject | None:
        return oldest(self.informer.store.by_index(BY_LABELS, _index_key(key)))

    async def allocate(self, labels: Iterable[str]) -> int:
        security = labels_map(labels)
        key = label_key(security)
        await self.informer.wait_synced()
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # one allocation per set at a time in this process
            for _ in range(64):
                winner = self._winner(key)
                if winner is not None:
                    return _number(winner)  # type: ignore[return-value]
                number = self._pick_free()
                self._trying.add(number)
                try:
                    result = await self._try(number, security, key)
                finally:
                    self._trying.discard(number)
                if result is not None:
                    return result
            raise IdentityError(f"no identity for {labels_strings(security)} after 64 tries")

    async def _try(self, number: int, security: dict[str, str], key: LabelKey) -> int | None:
        """Create ``number`` for the set; the set's number once settled, or None (taken by
        another set: try another)."""
        mine: KubeObject | None = None
        try:
            mine = await self.client.create(IDENTITIES, identity_object(number, security))
            candidate_rv = resource_version(mine)
        except ApiError as err:
            if not err.already_exists:
                raise IdentityError(f"creating identity {number}: {err}") from err
            try:
                theirs = await self.client.get(IDENTITIES, str(number))
            except ApiError as err2:
                if err2.not_found:
                    return None  # deleted meanwhile: pick again
                raise IdentityError(f"reading identity {number}: {err2}") from err2
            if label_key(_security_labels(theirs)) != key:
                return None
            candidate_rv = resource_version(theirs)
        winner = await self._settled_winner(key, candidate_rv)
        if winner is None:  # ours (or theirs) was deleted before we saw it: start over
            return None
        won = _number(winner)
        if mine is not None:
            if won == number:
                self.created += 1
            else:
                await self._discard(number, resource_version(mine))
        return won

    async def _settled_winner(self, key: LabelKey, rv: int) -> KubeObject | None:
        if await self.informer.wait_for_resource_version(rv, self.confirm_timeout):
            return self._winner(key)
        # the watch is behind (API server restarting?): ask etcd, with quorum
        log.info("identity informer not at %d after %.0fs: listing", rv, self.confirm_timeout)
        try:
            listed = await self.client.list(IDENTITIES)
        except ApiError as err:
            raise IdentityError(f"listing identities: {err}") from err
        return oldest(o for o in listed.get("items") or [] if label_key(_security_labels(o)) == key)

    async def _discard(self, number: int, rv: int) -> None:
        try:
            await self.client.delete(IDENTITIES, str(number), resource_version=str(rv))
            self.discarded += 1
        except ApiError as err:
            if not (err.not_found or err.status == 409):
                log.warning("deleting duplicate identity %d: %s", number, err)

    def _pick_free(self) -> int:
        size = self.max_id - self.min_id + 1
        used = {n for n in (_number(o) for o in self.informer.store.objects()) if n is not None}
        used |= self._trying
        if len(used) >= size:
            raise IdentityError(f"all {size} identities {self.min_id}..{self.max_id} are in use")
        for _ in range(64):
            number = self._rng.randint(self.min_id, self.max_id)
            if number not in used:
                return number
        free = [n for n in range(self.min_id, self.max_id + 1) if n not in used]
        if not free:
            raise IdentityError(f"all {size} identities {self.min_id}..{self.max_id} are in use")
        return self._rng.choice(free)
