"""Calico IPAM's datastore over the Kubernetes API (what Calico calls KDD).

IP pools and the IPAM configuration come from informers (list + watch, no polling): an agent
sees a pool created, changed or disabled with ``kubectl`` at its next allocation. Blocks are read
with a quorum list at each operation (the read half of a compare-and-swap must be current; a
cached block would only turn into a 409 and a retry) and written with create (a claim:
409 AlreadyExists means another node claimed it) or update with the resourceVersion read (409
Conflict means another node changed it).

The IPAM protocol is synchronous (the endpoint manager calls it inline, as it called the file
store under its lock), while the one Kubernetes client is asyncio: the datastore runs its own
client and informers on an event loop in a thread of its own and the synchronous calls wait for
them there. A call is one round trip on the node's loopback to the API server; the agent's loop
is held for that time, as it was for the file store's lock and write.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from ciliary.agent.ipam.datastore import BlockConflictError, KubeObject
from ciliary.agent.ipam.types import IPAMError
from ciliary.k8s.resources import by_kind
from ciliary.kube.client import ApiError, KubeClient
from ciliary.kube.informer import Informer

log = logging.getLogger(__name__)
_T = TypeVar("_T")

IPPOOLS = by_kind("projectcalico.org/v3", "IPPool")
IPAM_CONFIGURATIONS = by_kind("projectcalico.org/v3", "IPAMConfiguration")
IPAM_BLOCKS = by_kind("crd.projectcalico.org/v1", "IPAMBlock")
CONFIG_NAME = "default"


class KubeDatastore:
    """``IPAMDatastore`` against an API server. ``start`` connects and waits for the pools'
    informers to sync; ``close`` stops everything (by the thread it started)."""

    def __init__(self, kubeconfig: Path | None, *, timeout: float = 10.0) -> None:
        self._kubeconfig = kubeconfig
        self._timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="ipam-kube", daemon=True
        )
        self._client: KubeClient | None = None
        self._pools: Informer | None = None
        self._config: Informer | None = None

    def start(self, sync_timeout: float = 60.0) -> None:
        self._thread.start()
        self._run(self._connect(), sync_timeout)

    async def _connect(self) -> None:
        self._client = await KubeClient.connect(self._kubeconfig)
        self._pools = Informer(self._client, IPPOOLS, name="ipam-ippools")
        self._config = Informer(self._client, IPAM_CONFIGURATIONS, name="ipam-configurations")
        self._pools.start()
        self._config.start()
        log.info("IPAM: waiting for IPPools and IPAMConfigurations from %s", self._client.host)
        await self._pools.wait_synced()
        await self._config.wait_synced()

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self._run(self._disconnect(), self._timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(self._timeout)
            self._loop.close()

    async def _disconnect(self) -> None:
        for informer in (self._pools, self._config):
            if informer is not None:
                await informer.stop()
        if self._client is not None:
            await self._client.close()
            await asyncio.sleep(0.25)  # closed TLS transports finish closing before the loop ends

    def _run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout or self._timeout)
        except concurrent.futures.TimeoutError as err:
            future.cancel()
            raise IPAMError(
                f"the Kubernetes API did not answer within {timeout or self._timeout:.0f}s"
                " (IPAM pools and blocks live there)",
                "invalid",
            ) from err

    # -- IPAMDatastore ----------------------------------------------------------------------

    def pools(self) -> dict[str, KubeObject]:
        return self._run(self._cached(self._pools))

    def ipam_config(self) -> KubeObject | None:
        return self._run(self._cached(self._config)).get(CONFIG_NAME)

    @staticmethod
    async def _cached(informer: Informer | None) -> dict[str, KubeObject]:
        """The informer's objects by name, read on the loop that writes them."""
        assert informer is not None, "KubeDatastore used before start()"
        return {str(o["metadata"]["name"]): _document(o) for o in informer.store.objects()}

    def blocks(self) -> list[KubeObject]:
        return self._run(self._blocks())

    async def _blocks(self) -> list[KubeObject]:
        client = self._need_client()
        items: list[KubeObject] = []
        token: str | None = None
        while True:
            try:
                page = await client.list(IPAM_BLOCKS, limit=500, continue_token=token)
            except ApiError as err:
                raise IPAMError(f"listing IPAMBlocks: {err}", "invalid") from err
            items += page.get("items") or []
            token = (page.get("metadata") or {}).get("continue") or None
            if token is None:
                return items

    def create_block(self, obj: Mapping[str, Any]) -> None:
        self._run(self._write("create", obj))

    def update_block(self, obj: Mapping[str, Any]) -> None:
        self._run(self._write("replace", obj))

    async def _write(self, verb: str, obj: Mapping[str, Any]) -> None:
        client = self._need_client()
        try:
            if verb == "create":
                await client.create(IPAM_BLOCKS, obj)
            else:
                await client.replace(IPAM_BLOCKS, obj)
        except ApiError as err:
            if err.status == 409 or err.not_found:
                raise BlockConflictError(str(err)) from err
            raise IPAMError(
                f"writing IPAMBlock {obj['metadata']['name']}: {err}", "invalid"
            ) from err

    def _need_client(self) -> KubeClient:
        assert self._client is not None, "KubeDatastore used before start()"
        return self._client


def _document(obj: KubeObject) -> KubeObject:
    """A pool or configuration as its author wrote it: the server's own metadata (uid,
    resourceVersion, managedFields, ...) dropped, since the Calico models validate documents."""
    meta = obj.get("metadata") or {}
    kept = {k: meta[k] for k in ("name", "labels", "annotations") if meta.get(k)}
    return {**obj, "metadata": kept}
