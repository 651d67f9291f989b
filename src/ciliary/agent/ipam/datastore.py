"""Where Calico IPAM keeps its state: IP pools, the IPAM configuration and blocks as API objects.

As Calico's Kubernetes datastore (KDD) does, pools and the configuration are read from the API
(here ``projectcalico.org/v3`` ``IPPool`` and ``IPAMConfiguration``, what users and the lab apply)
and every block is a ``crd.projectcalico.org/v1`` ``IPAMBlock`` object. There is no lock: the
allocator reads the blocks with their ``resourceVersion``, changes them in memory and writes each
one back with that version as a precondition. A write that loses a race gets 409 (``Conflict``
on update, ``AlreadyExists`` on the create that claims a block) and the allocator re-reads and
tries again, so two agents never hand out the same address.

``IPAMDatastore`` is that contract, synchronous because the agent's IPAM calls are (the IPAM
protocol is short and synchronous). ``MemoryDatastore`` implements it in memory with the same
resourceVersion/409 semantics (for one process: unit tests and property tests run thousands of
operations against it); ``agent.ipam.kubestore.KubeDatastore`` implements it over the API server.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from typing import Any, Protocol

KubeObject = dict[str, Any]

BLOCK_API_VERSION = "crd.projectcalico.org/v1"
BLOCK_KIND = "IPAMBlock"


class BlockConflictError(Exception):
    """A block write lost a race (409 Conflict/AlreadyExists, or the block vanished): re-read."""


class IPAMDatastore(Protocol):
    def pools(self) -> dict[str, KubeObject]:
        """Every IP pool object, by name (as last seen: an informer's cache)."""

    def ipam_config(self) -> KubeObject | None:
        """The ``default`` IPAM configuration object, None when there is none."""

    def blocks(self) -> list[KubeObject]:
        """Every IPAMBlock object, current (a quorum read), each with its resourceVersion."""

    def create_block(self, obj: Mapping[str, Any]) -> None:
        """Create a block; ``BlockConflictError`` when one of that name exists (someone claimed
        it first)."""

    def update_block(self, obj: Mapping[str, Any]) -> None:
        """Replace a block whose ``metadata.resourceVersion`` is the one read;
        ``BlockConflictError`` when it changed (or was deleted) since."""


def block_name(cidr: str) -> str:
    """Calico's name of a block object (``names.CIDRToName``): ``10.0.0.0/26`` → ``10-0-0-0-26``,
    ``fd00::/122`` → ``fd00---122``."""
    return cidr.replace(".", "-").replace(":", "-").replace("/", "-")


class MemoryDatastore:
    """The datastore contract in memory: every write is a compare-and-swap on resourceVersion.
    Thread-safe (allocators in several threads race as agents on several nodes would)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[str, KubeObject] = {}
        self._config: KubeObject | None = None
        self._blocks: dict[str, KubeObject] = {}
        self._rv = 0
        self.conflicts = 0  # writes refused with 409 so far (tests check races happened)

    def put_pool(self, obj: Mapping[str, Any]) -> None:
        with self._lock:
            self._pools[str(obj["metadata"]["name"])] = copy.deepcopy(dict(obj))

    def put_config(self, obj: Mapping[str, Any]) -> None:
        with self._lock:
            self._config = copy.deepcopy(dict(obj))

    def pools(self) -> dict[str, KubeObject]:
        with self._lock:
            return copy.deepcopy(self._pools)

    def ipam_config(self) -> KubeObject | None:
        with self._lock:
            return copy.deepcopy(self._config)

    def blocks(self) -> list[KubeObject]:
        with self._lock:
            return [copy.deepcopy(b) for _, b in sorted(self._blocks.items())]

    def create_block(self, obj: Mapping[str, Any]) -> None:
        name = str(obj["metadata"]["name"])
        with self._lock:
            if name in self._blocks:
                self.conflicts += 1
                raise BlockConflictError(f'ipamblocks "{name}" already exists')
            self._store(name, obj)

    def update_block(self, obj: Mapping[str, Any]) -> None:
        name = str(obj["metadata"]["name"])
        with self._lock:
            current = self._blocks.get(name)
            if current is None:
                self.conflicts += 1
                raise BlockConflictError(f'ipamblocks "{name}" not found')
            if current["metadata"]["resourceVersion"] != obj["metadata"].get("resourceVersion"):
                self.conflicts += 1
                raise BlockConflictError(f'ipamblocks "{name}": the object has been modified')
            self._store(name, obj)

    def _store(self, name: str, obj: Mapping[str, Any]) -> None:
        self._rv += 1
        stored = copy.deepcopy(dict(obj))
        stored["metadata"] = {**stored["metadata"], "resourceVersion": str(self._rv)}
        self._blocks[name] = stored
