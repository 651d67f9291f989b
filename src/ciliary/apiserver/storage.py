"""Kubernetes objects in etcd, with kube-apiserver's storage semantics.

Objects are JSON under :meth:`ResourceType.etcd_key` (``/registry/…``), stored without their
``resourceVersion``: an object's resourceVersion *is* its key's etcd ``mod_revision`` and a
list's is the etcd revision it was read at, so every version a client sees can be watched from.
Writes are single etcd transactions:

* create compares ``create_revision == 0`` (409 AlreadyExists otherwise);
* update runs a caller's function on the current object and writes the result only if the key
  is still at the revision it read; when the caller named a resourceVersion (optimistic
  concurrency) a mismatch is 409 Conflict, otherwise the read-modify-write is retried (as
  kube-apiserver's ``GuaranteedUpdate``); the function may ask for the object to be deleted
  (the last finalizer of an object being deleted is gone);
* delete compares the revision read (and a caller's precondition).

An object may hold *claims* (:class:`Claims`: a Service's cluster IPs and node ports, see
:mod:`ciliary.apiserver.servicealloc`): keys of their own written in the object's transaction.
A write that adds a claim compares ``create_revision == 0`` for it too (taken:
:class:`ClaimTakenError`), a write that drops one (a delete drops all) deletes it, so what is
claimed is always exactly what the stored objects hold.

Lists read one etcd revision with ``limit`` pages; a ``continue`` token carries the revision and
the next key, so a paged list is one consistent snapshot (410 Expired once compacted).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from ciliary.apiserver import errors
from ciliary.apiserver.etcd import (
    KV,
    EtcdClient,
    EtcdUnavailableError,
    Event,
    Progress,
    RevisionCompactedError,
    prefix_end,
)
from ciliary.k8s.resources import ResourceType

Obj = dict[str, Any]
DELETE: Final = "delete"
"""What an update function returns to have the object deleted instead of written."""
Outcome = Obj | Literal["delete"]

MAX_UPDATE_RETRIES = 20


def encode(obj: Obj) -> bytes:
    meta = obj.get("metadata") or {}
    if "resourceVersion" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "resourceVersion"}}
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def decode(kv: KV, revision: int | None = None) -> Obj:
    obj: Obj = json.loads(kv.value)
    obj.setdefault("metadata", {})["resourceVersion"] = str(revision or kv.mod_revision)
    return obj


def parse_rv(value: str | None) -> int | None:
    """A resourceVersion as etcd revision; None for absent/empty."""
    if value in (None, ""):
        return None
    assert value is not None
    try:
        rv = int(value)
    except ValueError:
        raise errors.bad_request(f'invalid resource version "{value}"') from None
    if rv < 0:
        raise errors.bad_request(f'invalid resource version "{value}"')
    return rv


def collection_prefix(rt: ResourceType, namespace: str | None) -> str:
    if rt.namespaced and namespace:
        return f"{rt.etcd_prefix}/{namespace}/"
    return f"{rt.etcd_prefix}/"


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Obj]
    revision: int
    continue_token: str | None


@dataclass(frozen=True, slots=True)
class Change:
    """One change of a watched collection: ``old`` is the object before (None on create),
    ``new`` after (None on delete); ``revision`` is the change's etcd revision."""

    revision: int
    old: Obj | None
    new: Obj | None


def _continue_token(revision: int, start: str) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": revision, "start": start}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_continue(token: str) -> tuple[int, str]:
    try:
        doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if doc.get("v") != "meta.k8s.io/v1":
            raise ValueError("version")
        return int(doc["rv"]), str(doc["start"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise errors.bad_request(f"continue key is not valid: {token[:64]}") from None


class Claims(Protocol):
    """Keys an object holds besides its own, written and deleted in its transactions."""

    def claims_of(self, rt: ResourceType, obj: Obj) -> dict[str, bytes]:
        """The claim keys (with their values) the object, as stored, holds."""
        ...

    def committed(self, added: Iterable[str], removed: Iterable[str]) -> None:
        """A transaction adding and removing these claim keys succeeded."""
        ...


class ClaimTakenError(Exception):
    """A write would claim a key another object holds (nothing was written)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key} is held by another object")
        self.key = key


class Storage:
    """The resources' objects in one etcd."""

    def __init__(self, etcd: EtcdClient, claims: Claims | None = None) -> None:
        self.etcd = etcd
        self.claims = claims

    def _claims_of(self, rt: ResourceType, obj: Obj | None) -> dict[str, bytes]:
        if self.claims is None or obj is None:
            return {}
        return self.claims.claims_of(rt, obj)

    async def keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (claims, read back at start)."""
        _, kvs, _ = await self._call(self.etcd.range(prefix, prefix_end(prefix), keys_only=True))
        return [kv.key for kv in kvs]

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except EtcdUnavailableError as err:
            raise errors.unavailable(str(err)) from err

    async def get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        kv = await self._call(self.etcd.get(rt.etcd_key(namespace, name)))
        if kv is None:
            raise errors.not_found(rt, name)
        return decode(kv)

    async def get_raw(self, rt: ResourceType, namespace: str | None, name: str) -> KV | None:
        kv: KV | None = await self._call(self.etcd.get(rt.etcd_key(namespace, name)))
        return kv

    async def list(
        self,
        rt: ResourceType,
        namespace: str | None,
        *,
        limit: int = 0,
        continue_token: str | None = None,
        match: Callable[[Obj], bool] | None = None,
    ) -> Page:
        """One page of the collection (all of it when ``limit`` is 0), filtered by ``match``
        (pages are filled up to ``limit`` matching objects, as kube-apiserver does)."""
        prefix = collection_prefix(rt, namespace)
        end = prefix_end(prefix)
        revision = 0
        start = prefix
        if continue_token:
            revision, start = _parse_continue(continue_token)
            if not start.startswith(prefix):
                raise errors.bad_request("continue key is not valid: wrong collection")
        items: list[Obj] = []
        while True:
            want = 0 if limit == 0 else limit - len(items)
            try:
                header, kvs, more = await self._call(
                    self.etcd.range(start, end, revision=revision, limit=want)
                )
            except RevisionCompactedError:
                raise errors.expired(
                    "The provided continue parameter is too old to display a consistent list"
                    " result. You can start a new list without the continue parameter."
                ) from None
            if revision == 0:
                revision = header
            for kv in kvs:
                obj = decode(kv)
                if match is None or match(obj):
                    items.append(obj)
            if not more or not kvs:
                return Page(items, revision, None)
            start = kvs[-1].key + "\0"
            if limit and len(items) >= limit:
                return Page(items, revision, _continue_token(revision, start))

    async def create(self, rt: ResourceType, obj: Obj) -> Obj:
        meta = obj["metadata"]
        key = rt.etcd_key(meta.get("namespace"), meta["name"])
        held = self._claims_of(rt, obj)
        if held:
            revision, existing = await self._call(
                self.etcd.transaction(
                    absent=[key, *held], at={}, puts={key: encode(obj), **held}, deletes=[]
                )
            )
            if revision is None and key not in existing and existing:
                raise ClaimTakenError(sorted(existing)[0])
            if revision is not None:
                assert self.claims is not None
                self.claims.committed(held, ())
        else:
            revision = await self._call(self.etcd.create(key, encode(obj)))
        if revision is None:
            raise errors.already_exists(rt, meta["name"])
        out = json.loads(encode(obj))
        out["metadata"]["resourceVersion"] = str(revision)
        return out  # type: ignore[no-any-return]

    async def update(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        fn: Callable[[Obj], Outcome],
        *,
        precondition_rv: int | None = None,
        dry_run: bool = False,
    ) -> tuple[Obj, bool]:
        """Read-modify-write: ``fn(current)`` returns the new object (or :data:`DELETE`).
        Returns (the stored object, or the deleted one with the delete's revision; deleted?).
        ``fn`` may raise a :class:`StatusError` (and may be called more than once). With
        ``dry_run`` every check runs and nothing is written: the answer is the object as it
        would be stored, at the current resourceVersion (``dryRun=All``)."""
        key = rt.etcd_key(namespace, name)
        for _ in range(MAX_UPDATE_RETRIES):
            kv = await self._call(self.etcd.get(key))
            if kv is None:
                raise errors.not_found(rt, name)
            if precondition_rv is not None and kv.mod_revision != precondition_rv:
                raise errors.conflict(rt, name)
            current = decode(kv)
            new = fn(current)
            if dry_run:
                if new == DELETE:
                    return current, True
                assert not isinstance(new, str)
                preview: Obj = json.loads(encode(new))
                preview["metadata"]["resourceVersion"] = str(kv.mod_revision)
                return preview, False
            data = None if isinstance(new, str) else encode(new)
            if data == kv.value:  # no change: no write, as kube-apiserver
                return current, False
            held = self._claims_of(rt, current)
            wanted = self._claims_of(rt, None if isinstance(new, str) else new)
            added = {k: v for k, v in wanted.items() if k not in held}
            removed = [k for k in held if k not in wanted]
            if added or removed:
                revision, existing = await self._call(
                    self.etcd.transaction(
                        absent=list(added),
                        at={key: kv.mod_revision},
                        puts=added if data is None else {key: data, **added},
                        deletes=removed if data is not None else [key, *removed],
                    )
                )
                if existing:
                    raise ClaimTakenError(sorted(existing)[0])
                if revision is not None:
                    assert self.claims is not None
                    self.claims.committed(added, removed)
            elif data is None:
                revision = await self._call(self.etcd.delete(key, kv.mod_revision))
            else:
                revision = await self._call(self.etcd.update(key, data, kv.mod_revision))
            if revision is not None:
                if data is None:
                    return decode(kv, revision), True
                out: Obj = json.loads(data)
                out["metadata"]["resourceVersion"] = str(revision)
                return out, False
            if precondition_rv is not None:
                raise errors.conflict(rt, name)
        raise errors.conflict(rt, name, "too many concurrent updates, try again")

    async def delete(
        self, rt: ResourceType, namespace: str | None, name: str, precondition_rv: int | None
    ) -> Obj:
        obj, _ = await self.update(
            rt, namespace, name, lambda _: DELETE, precondition_rv=precondition_rv
        )
        return obj

    async def revision(self) -> int:
        rev: int = await self._call(self.etcd.revision())
        return rev

    def watch(self, rt: ResourceType, namespace: str | None, since: int) -> CollectionWatch:
        """Changes of a collection after revision ``since`` (use as an async context)."""
        return CollectionWatch(self.etcd, collection_prefix(rt, namespace), since)


class CollectionWatch:
    """A watch of one collection from a revision: ``changes()`` yields :class:`Change` in
    revision order and, after each :meth:`request_progress`, an ``int`` revision up to which
    every change has been yielded. Entering raises 410 Expired when ``since`` is compacted;
    iteration raises 410 when etcd compacts past the watch and 503 when etcd goes away."""

    def __init__(self, etcd: EtcdClient, prefix: str, since: int) -> None:
        self._since = since
        self._watch = etcd.watch(prefix, since + 1)

    def _expired(self, err: RevisionCompactedError) -> errors.StatusError:
        return errors.expired(f"too old resource version: {self._since} ({err.compact_revision})")

    async def __aenter__(self) -> CollectionWatch:
        try:
            await self._watch.__aenter__()
        except RevisionCompactedError as err:
            raise self._expired(err) from None
        except EtcdUnavailableError as err:
            raise errors.unavailable(str(err)) from err
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._watch.__aexit__(*exc)

    async def request_progress(self) -> None:
        try:
            await self._watch.request_progress()
        except EtcdUnavailableError as err:
            raise errors.unavailable(str(err)) from err

    async def changes(self) -> AsyncIterator[Change | int]:
        try:
            async for item in self._watch.events():
                yield item.revision if isinstance(item, Progress) else _change(item)
        except RevisionCompactedError as err:
            raise self._expired(err) from None
        except EtcdUnavailableError as err:
            raise errors.unavailable(str(err)) from err


def _change(ev: Event) -> Change:
    old = decode(ev.prev) if ev.prev is not None else None
    if ev.deleted:
        if old is not None:
            old["metadata"]["resourceVersion"] = str(ev.kv.mod_revision)
        return Change(ev.kv.mod_revision, old, None)
    return Change(ev.kv.mod_revision, old, decode(ev.kv))
