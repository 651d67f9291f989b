"""The operator's identity garbage collector (CRD mode): identities no endpoint uses go away.

Upstream (``operator/identitygc``, CRD mode) counts a CiliumIdentity as used while a
CiliumEndpoint names it (``status.identity.id``); one found unused is marked with the
``io.cilium.heartbeat`` annotation and deleted when still unused a heartbeat timeout later (the
agent removes the mark when it reuses the identity). ciliary keeps the "unused since" clock in
the collector's memory instead of on the object: identities stay immutable after creation,
which the agent allocator's oldest-wins rule (``ciliary.agent.k8s.identity``) relies on (an
identity's resourceVersion is its creation's). A restarted collector starts every clock afresh:
it deletes later, never earlier.

Safety: a pass runs only once both informers have synced (an empty cache would make every
identity look unused) and its endpoint cache is current at the revision the pass began at (an
endpoint written just before is seen). Deletion carries the identity's uid and resourceVersion
as preconditions, so an identity that was deleted and recreated meanwhile is not touched.

This module is the collector, not a process: ``ciliary-operator`` (``operator``) runs
``IdentityGC.run``. It sits with the controllers, not in the agent, because it is the operator's
role (one per cluster, not one per node) and the lab, which starts the operator, never imports
the agent; both speak to the API server through ``ciliary.kube`` alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ciliary.k8s.resources import by_path
from ciliary.kube.client import ApiError, KubeClient, KubeObject, resource_version
from ciliary.kube.informer import Informer

log = logging.getLogger(__name__)

IDENTITIES = by_path("cilium.io", "v2", "ciliumidentities")
ENDPOINTS = by_path("cilium.io", "v2", "ciliumendpoints")
DEFAULT_GRACE = 30 * 60.0  # upstream's --identity-heartbeat-timeout (twice the GC interval)
DEFAULT_INTERVAL = 15 * 60.0  # upstream's --identity-gc-interval


@dataclass
class _Unused:
    since: float
    resource_version: int


def referenced_identities(endpoints: Iterable[KubeObject]) -> set[int]:
    """Numbers named by CiliumEndpoints' ``status.identity.id``."""
    out: set[int] = set()
    for cep in endpoints:
        ident = ((cep.get("status") or {}).get("identity")) or {}
        number = ident.get("id")
        if isinstance(number, int):
            out.add(number)
    return out


class IdentityGC:
    """Deletes CiliumIdentities no CiliumEndpoint has named for ``grace`` seconds."""

    def __init__(
        self,
        client: KubeClient,
        *,
        grace: float = DEFAULT_GRACE,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.grace = grace
        self.interval = interval
        self.clock = clock
        self.identities = Informer(client, IDENTITIES, name="gc-ciliumidentities")
        self.endpoints = Informer(client, ENDPOINTS, name="gc-ciliumendpoints")
        self._unused: dict[str, _Unused] = {}
        self.deleted: list[int] = []  # every identity this collector deleted, in order

    def start(self) -> None:
        self.identities.start()
        self.endpoints.start()

    async def stop(self) -> None:
        await self.identities.stop()
        await self.endpoints.stop()

    async def run(self) -> None:
        """Informers started, then a pass every ``interval`` until cancelled."""
        self.start()
        try:
            while True:
                try:
                    await self.run_once()
                except ApiError as err:
                    log.info("identity GC pass skipped: %s", err)
                await asyncio.sleep(self.interval)
        finally:
            await self.stop()

    async def run_once(self) -> list[int]:
        """One pass; the numbers it deleted."""
        await self.identities.wait_synced()
        await self.endpoints.wait_synced()
        head = await self.client.list(ENDPOINTS, limit=1)
        rv = int((head.get("metadata") or {}).get("resourceVersion") or 0)
        if not await self.endpoints.wait_for_resource_version(rv, max(self.interval, 5.0)):
            log.info("identity GC: endpoint cache behind revision %d, pass skipped", rv)
            return []
        used = referenced_identities(self.endpoints.store.objects())
        now = self.clock()
        present: set[str] = set()
        out: list[int] = []
        for obj in self.identities.store.objects():
            name = str(obj["metadata"]["name"])
            present.add(name)
            try:
                number = int(name)
            except ValueError:
                continue
            if number in used:
                self._unused.pop(name, None)
                continue
            mark = self._unused.get(name)
            obj_rv = resource_version(obj)
            if mark is None or mark.resource_version != obj_rv:
                self._unused[name] = _Unused(now, obj_rv)
                continue
            if now - mark.since < self.grace:
                continue
            if await self._delete(obj):
                out.append(number)
            self._unused.pop(name, None)
        for gone in set(self._unused) - present:
            del self._unused[gone]
        self.deleted.extend(out)
        return out

    async def _delete(self, obj: KubeObject) -> bool:
        meta = obj["metadata"]
        try:
            await self.client.delete(
                IDENTITIES,
                str(meta["name"]),
                uid=meta.get("uid"),
                resource_version=str(meta.get("resourceVersion")),
            )
        except ApiError as err:
            if err.not_found or err.status == 409:
                return False  # gone already, or changed since: next pass decides again
            raise
        log.info("identity GC: deleted unused identity %s", meta["name"])
        return True
