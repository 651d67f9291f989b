"""Network policies from the Kubernetes API (Cilium's CNP/CCNP/NetworkPolicy watchers).

Three informers (CiliumNetworkPolicies, CiliumClusterwideNetworkPolicies, NetworkPolicies) feed
the PolicyManager's repository: every add/update is parsed by the same parser the API server
validates with (``policy.api``) and applied at once, followed by the regeneration of the
endpoints — no polling, so a ``kubectl apply`` reaches the datapath as soon as the watch event
arrives. An object the parser refuses (a server that does not validate, a newer schema) is
logged and never reaches the repository; for an update, the object's previous valid version
stays enforced, as upstream keeps the last rules it could translate.

Each agent reports what it did with every CiliumNetworkPolicy/CiliumClusterwideNetworkPolicy in
the object's ``status.nodes[<its node>]`` (upstream's ``CiliumNetworkPolicyNodeStatus``: ``ok``,
``enforcing`` once its endpoints were regenerated with it, ``localPolicyRevision``,
``lastUpdated``, ``error`` for a refused one, ``annotations``), with a JSON merge patch of the
``status`` subresource that names only its own key, so agents never overwrite each other's
entries (fields it no longer has are sent as ``null``, which a merge patch removes). The
writes go through a :class:`KeyedWriter` (the latest wish per policy, retried while the API
server is away), never delaying the next policy event. A status write is itself a watch
event: an object whose spec, labels and annotations are unchanged is not applied again (nor its
status rewritten), so the writes never feed back.

Writes (``ciliary policy import``/``delete`` through the agent's API) go to the API server: the
agent validates the whole import first (all or nothing, the same errors as before), creates or
replaces each object, and answers once its own informers have delivered the change (the
resourceVersion it wrote), so the caller's next packet meets the new policy, on this node; other
nodes follow from their own watches. The objects are the source of truth, never the agent's
memory.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ciliary.agent.k8s.writer import KeyedWriter
from ciliary.agent.policymanager import PolicyManager
from ciliary.k8s.cilium import PolicyNodeStatus
from ciliary.k8s.meta import now
from ciliary.k8s.resources import ResourceType, by_path
from ciliary.kube.client import ApiError, KubeClient, KubeObject, object_key, resource_version
from ciliary.kube.informer import HandlerFuncs, Informer
from ciliary.policy.api import PolicyError, parse_policy_documents
from ciliary.policy.api.documents import api_object_document, load_yaml

log = logging.getLogger(__name__)

CNP = by_path("cilium.io", "v2", "ciliumnetworkpolicies")
CCNP = by_path("cilium.io", "v2", "ciliumclusterwidenetworkpolicies")
KNP = by_path("networking.k8s.io", "v1", "networkpolicies")
POLICY_TYPES: dict[str, ResourceType] = {rt.kind: rt for rt in (CNP, CCNP, KNP)}
WRITE_TIMEOUT_S = 10.0
WITH_NODE_STATUS = frozenset({CNP.plural, CCNP.plural})
"""The kinds agents report per-node status into (upstream: Cilium's own policies only)."""
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
"""Left out of the status' annotations: it is the policy's own text, repeated per node."""
PERMANENT_STATUS_ERRORS = frozenset({400, 403, 405, 415, 422})
StatusKey = tuple[str, str | None, str]
"""(plural, namespace, name) of a policy object."""


def _fingerprint(obj: KubeObject) -> str:
    """What makes a policy object's version matter to the agent: all but status and the
    server's bookkeeping (a status write changes resourceVersion, not this)."""
    meta = obj.get("metadata") or {}
    kept = {k: v for k, v in obj.items() if k not in ("status", "metadata")}
    kept["metadata"] = {
        k: meta.get(k) for k in ("name", "namespace", "uid", "labels", "annotations")
    }
    return json.dumps(kept, sort_keys=True, default=str)


def node_status(
    obj: KubeObject, *, revision: int | None = None, error: str | None = None
) -> PolicyNodeStatus:
    """This node's status entry for a policy object: enforced at ``revision``, or refused."""
    annotations = {
        k: str(v)
        for k, v in ((obj.get("metadata") or {}).get("annotations") or {}).items()
        if k != LAST_APPLIED
    }
    return PolicyNodeStatus(
        ok=error is None,
        error=error,
        last_updated=now(),
        local_policy_revision=revision,
        enforcing=error is None,
        annotations=annotations or None,
    )


class PolicyWriteError(Exception):
    """The API server refused or could not take a policy write (message says which object)."""


class PolicyWatcher:
    """The cluster's policies, watched into ``policy``; ``regenerate(reason)`` after each change."""

    def __init__(
        self,
        client: KubeClient,
        policy: PolicyManager,
        regenerate: Callable[[str], Awaitable[object]],
        *,
        node: str,
    ) -> None:
        self._client = client
        self._policy = policy
        self._regenerate = regenerate
        self.node = node
        self._keys: dict[tuple[str, str], str] = {}
        """(plural, object key) → the repository key of the policy it became."""
        self._seen: dict[tuple[str, str], str] = {}
        """(plural, object key) → the fingerprint of the version last handled."""
        self.status_writer: KeyedWriter[StatusKey, KubeObject] = KeyedWriter(
            "policy-status", self._write_status
        )
        self._annotated: dict[StatusKey, frozenset[str]] = {}
        """Annotation keys last written into this node's entry (to remove those gone)."""
        self.informers: dict[str, Informer] = {}
        for kind, rt in POLICY_TYPES.items():
            informer = Informer(client, rt, name=rt.plural)
            informer.add_handler(
                HandlerFuncs(
                    add=lambda obj, rt=rt: self._upsert(rt, obj),  # type: ignore[misc]
                    update=lambda _old, new, rt=rt: self._upsert(rt, new),  # type: ignore[misc]
                    delete=lambda obj, rt=rt: self._remove(rt, obj),  # type: ignore[misc]
                )
            )
            self.informers[kind] = informer

    def start(self) -> None:
        self.status_writer.start()
        for informer in self.informers.values():
            informer.start()

    async def wait_synced(self, timeout: float | None = None) -> None:
        for informer in self.informers.values():
            await informer.wait_synced(timeout)

    async def stop(self) -> None:
        for informer in self.informers.values():
            await informer.stop()
        await self.status_writer.flushed(2.0)
        await self.status_writer.stop()

    # ---- informer handlers -----------------------------------------------------------------

    async def _upsert(self, rt: ResourceType, obj: KubeObject) -> None:
        ref = (rt.plural, object_key(obj))
        fingerprint = _fingerprint(obj)
        if self._seen.get(ref) == fingerprint:
            return  # a status write (ours or another node's) or a resync: nothing to apply
        self._seen[ref] = fingerprint
        where = f"{rt.plural}/{object_key(obj)}"
        try:
            policies = parse_policy_documents([(1, api_object_document(obj))], where)
        except PolicyError as err:
            log.error("ignoring invalid %s %s: %s", rt.kind, object_key(obj), err)
            self._report(rt, obj, node_status(obj, error=str(err)))
            return
        old = self._keys.get(ref)
        self._keys[ref] = policies[0].key
        if old is not None and old != policies[0].key:
            self._policy.remove_policies([old])
        self._policy.upsert_policies(policies)
        revision = self._policy.repo.revision
        await self._regenerate(f"{rt.kind} {object_key(obj)} changed")
        self._report(rt, obj, node_status(obj, revision=revision))

    async def _remove(self, rt: ResourceType, obj: KubeObject) -> None:
        self._seen.pop((rt.plural, object_key(obj)), None)
        self.status_writer.forget(self._status_key(rt, obj))
        self._annotated.pop(self._status_key(rt, obj), None)
        key = self._keys.pop((rt.plural, object_key(obj)), None)
        if key is not None and self._policy.remove_policies([key]):
            await self._regenerate(f"{rt.kind} {object_key(obj)} deleted")

    # ---- per-node status ---------------------------------------------------------------------

    @staticmethod
    def _status_key(rt: ResourceType, obj: KubeObject) -> StatusKey:
        meta = obj.get("metadata") or {}
        return (rt.plural, meta.get("namespace"), str(meta.get("name", "")))

    def _report(self, rt: ResourceType, obj: KubeObject, status: PolicyNodeStatus) -> None:
        """Want ``status`` as this node's entry: every field (None as null, so a merge patch
        drops what the entry had before, such as an old ``error``), and annotation keys the
        stored entry or our last write had that this version lacks as null."""
        if rt.plural not in WITH_NODE_STATUS:
            return
        key = self._status_key(rt, obj)
        entry: dict[str, Any] = status.model_dump(by_alias=True, mode="json")
        stored = ((obj.get("status") or {}).get("nodes") or {}).get(self.node) or {}
        old = set(stored.get("annotations") or {}) | self._annotated.get(key, frozenset())
        new = status.annotations or {}
        if new:
            entry["annotations"] = {**dict.fromkeys(old - set(new)), **new}
        self._annotated[key] = frozenset(new)
        self.status_writer.want(key, {"status": {"nodes": {self.node: entry}}})

    async def _write_status(self, key: StatusKey, patch: KubeObject) -> None:
        plural, namespace, name = key
        rt = CNP if plural == CNP.plural else CCNP
        try:
            await self._client.patch(rt, name, patch, namespace, subresource="status")
        except ApiError as err:
            if err.not_found:
                return  # deleted meanwhile
            if err.status in PERMANENT_STATUS_ERRORS:
                log.error("%s %s: status of node %s refused: %s", rt.kind, name, self.node, err)
                return
            raise

    # ---- writes through the API -------------------------------------------------------------

    async def import_text(self, text: str, filename: str) -> list[str]:
        """Validate every document (PolicyError, nothing written), then create or replace each
        object; returns the policies' keys once this agent enforces them."""
        docs = load_yaml(text, filename)
        if not docs:
            raise PolicyError(f"{filename}: the file has no documents (expected policy documents)")
        policies = parse_policy_documents(docs, filename)
        for policy, (_, doc) in zip(policies, docs, strict=True):
            body: dict[str, Any] = dict(doc)  # type: ignore[call-overload]
            meta = dict(body.get("metadata") or {})
            if policy.namespace is not None:
                meta["namespace"] = policy.namespace
            body["metadata"] = meta
            written = await self._create_or_replace(POLICY_TYPES[policy.kind], body)
            await self._wait(policy.kind, resource_version(written))
        return [p.key for p in policies]

    async def delete(self, keys: list[str] | None) -> list[str]:
        """Delete the objects behind these repository keys (every policy when None); KeyError
        names unknown keys (nothing deleted)."""
        by_key = {key: ref for ref, key in self._keys.items()}
        targets = list(by_key) if keys is None else keys
        unknown = [k for k in targets if k not in by_key]
        if unknown:
            raise KeyError(f"no such policy: {', '.join(unknown)}")
        for key in targets:
            plural, obj_key = by_key[key]
            kind = next(k for k, rt in POLICY_TYPES.items() if rt.plural == plural)
            rt = POLICY_TYPES[kind]
            namespace, _, name = obj_key.rpartition("/")
            try:
                gone = await self._client.delete(rt, name, namespace or None)
            except ApiError as err:
                if err.not_found:
                    continue
                raise PolicyWriteError(f"deleting {rt.kind} {obj_key}: {err}") from err
            await self._wait_deleted(kind, gone)
        return targets

    async def _wait_deleted(self, kind: str, gone: KubeObject) -> None:
        """Until this agent's informer has the deletion whose answer was ``gone``. The answer
        carries the deletion's revision, as kube-apiserver's does (its etcd3 store decodes the
        deleted object at the DeleteRange's revision), and so does the DELETED event: the store
        at that revision without the object."""
        informer = self.informers[kind]
        rv, key, store = resource_version(gone), object_key(gone), informer.store
        if not await informer.wait_until(
            lambda: store.resource_version >= rv and key not in store, WRITE_TIMEOUT_S
        ):
            log.warning("%s %s: deletion not seen after %.0fs", kind, key, WRITE_TIMEOUT_S)

    async def _create_or_replace(self, rt: ResourceType, body: dict[str, Any]) -> KubeObject:
        meta = body["metadata"]
        name, namespace = str(meta.get("name", "")), meta.get("namespace")
        for _ in range(5):
            try:
                current = await self._client.get(rt, name, namespace)
            except ApiError as err:
                if not err.not_found:
                    raise PolicyWriteError(f"reading {rt.kind} {name}: {err}") from err
                current = None
            try:
                if current is None:
                    return await self._client.create(rt, body, namespace)
                rv = (current.get("metadata") or {}).get("resourceVersion")
                return await self._client.replace(
                    rt, {**body, "metadata": {**meta, "resourceVersion": rv}}
                )
            except ApiError as err:
                if not (err.conflict or err.already_exists):
                    raise PolicyWriteError(f"writing {rt.kind} {name}: {err}") from err
        raise PolicyWriteError(f"writing {rt.kind} {name}: kept conflicting with other writers")

    async def _wait(self, kind: str, rv: int) -> None:
        if not await self.informers[kind].wait_for_resource_version(rv, WRITE_TIMEOUT_S):
            log.warning("%s at resourceVersion %d not seen after %.0fs", kind, rv, WRITE_TIMEOUT_S)
