"""List + watch of one resource into a local store, with handlers told of every change.

client-go's reflector and shared informer, small: the store is filled by a (paged) list, then
kept current by a watch from the list's resourceVersion (with bookmarks, so a quiet resource's
position still advances). A watch that ends (server timeout, API server restart) is resumed
from the last resourceVersion seen, so nothing is lost or repeated; ``410 Gone`` (the position
was compacted away) relists, and the relist's differences from the store are handed to the
handlers as the ADDED/MODIFIED/DELETED they stand for, so a consumer never misses a deletion
that happened while it was disconnected. Transport failures back off (0.1 s doubling to 5 s).

Handlers run synchronously on the event loop, in order, with the store already updated; they
must not block (controllers only enqueue a key). Every object is the API's JSON dict; handlers
must not mutate it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Literal

from ciliary.k8s.resources import ResourceType
from ciliary.kube.client import KubeClient, KubeError, KubeUnavailableError, Obj

log = logging.getLogger(__name__)

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
Handler = Callable[[EventType, Obj | None, Obj | None], None]
"""(event, old object or None, new object or None; None new for DELETED)."""

LIST_PAGE = 500
WATCH_TIMEOUT = 300
MAX_BACKOFF = 5.0

__all__ = ["EventType", "Handler", "Informer", "object_key"]


def object_key(obj: Obj) -> str:
    """``namespace/name`` (``name`` for cluster-scoped objects), client-go's MetaNamespaceKey."""
    meta = obj["metadata"]
    ns = meta.get("namespace")
    return f"{ns}/{meta['name']}" if ns else str(meta["name"])


class _GoneError(Exception):
    pass


class Informer:
    """One resource (optionally one namespace, label and field selector) kept in memory."""

    def __init__(
        self,
        kube: KubeClient,
        rt: ResourceType,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        watch_timeout: int = WATCH_TIMEOUT,
    ) -> None:
        self.kube = kube
        self.rt = rt
        self.namespace = namespace
        self.watch_timeout = watch_timeout
        self._query: dict[str, str] = {}
        if label_selector:
            self._query["labelSelector"] = label_selector
        if field_selector:
            self._query["fieldSelector"] = field_selector
        self._store: dict[str, Obj] = {}
        self._handlers: list[Handler] = []
        self.synced = asyncio.Event()
        self.resource_version: str | None = None

    def add_handler(self, handler: Handler) -> None:
        """Called for every change from now on (and, through the first list, for every object
        when added before :meth:`run`)."""
        self._handlers.append(handler)

    def get(self, namespace: str | None, name: str) -> Obj | None:
        return self._store.get(f"{namespace}/{name}" if namespace else name)

    def list(self, namespace: str | None = None) -> list[Obj]:
        if namespace is None:
            return list(self._store.values())
        return [o for o in self._store.values() if o["metadata"].get("namespace") == namespace]

    async def run(self) -> None:
        """Forever: list, then watch from where the list (or the last event) left off."""
        backoff = 0.1
        while True:
            try:
                if self.resource_version is None:
                    await self._relist()
                await self._watch()
                backoff = 0.1
            except _GoneError:
                log.info("%s: resourceVersion too old, relisting", self.rt.plural)
                self.resource_version = None
            except (KubeError, KubeUnavailableError) as err:
                log.warning("%s: %s; retrying in %.1fs", self.rt.plural, err, backoff)
                if isinstance(err, KubeError) and err.code == 410:
                    self.resource_version = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _relist(self) -> None:
        path = self.rt.path(self.namespace)
        items: dict[str, Obj] = {}
        query = {**self._query, "limit": str(LIST_PAGE)}
        while True:
            page = await self.kube.request("GET", path, query=query)
            for item in page.get("items") or []:
                item.setdefault("apiVersion", self.rt.api_version)
                item.setdefault("kind", self.rt.kind)
                items[object_key(item)] = item
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                break
            query = {**self._query, "limit": str(LIST_PAGE), "continue": token}
        old = self._store
        self._store = items
        self.resource_version = str(page["metadata"]["resourceVersion"])
        for key, obj in items.items():
            before = old.get(key)
            if before is None:
                self._dispatch("ADDED", None, obj)
            elif before["metadata"].get("resourceVersion") != obj["metadata"].get(
                "resourceVersion"
            ):
                self._dispatch("MODIFIED", before, obj)
        for key, before in old.items():
            if key not in items:
                self._dispatch("DELETED", before, None)
        self.synced.set()

    async def _watch(self) -> None:
        query = {**self._query, "allowWatchBookmarks": "true"}
        if self.resource_version is not None:
            query["resourceVersion"] = self.resource_version
        path = self.rt.path(self.namespace)
        async for event in self.kube.watch(path, query, self.watch_timeout):
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise _GoneError()
                raise KubeError(
                    int(obj.get("code") or 500), str(obj.get("reason")), str(obj.get("message"))
                )
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if rv:
                self.resource_version = str(rv)
            if kind == "BOOKMARK":
                continue
            key = object_key(obj)
            before = self._store.get(key)
            if kind == "DELETED":
                self._store.pop(key, None)
                self._dispatch("DELETED", before, None)
            elif kind in ("ADDED", "MODIFIED"):
                self._store[key] = obj
                self._dispatch("ADDED" if before is None else "MODIFIED", before, obj)

    def _dispatch(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        for handler in self._handlers:
            try:
                handler(kind, old, new)
            except Exception:
                log.exception("%s: handler failed on %s", self.rt.plural, kind)
