"""Policy documents in the lab's cluster store, which only the lab still writes.

No agent reads them any more: an agent with a Kubernetes API takes its policies from the API
server's objects (``agent/k8s/policies.py``), a standalone agent from its own imports (its state
directory). The lab keeps publishing its file's policies here (``lab/manager.py``'s
``_publish_policies`` and ``lab apply``'s rollback) until the cluster store is removed; this
module goes with them.

Each policy is kept as the document its user wrote (kind ``policies``, name = the policy's key,
body ``{"source", "index", "document"}``); a ``policyrevisions/current`` counter is bumped in the
same transaction as each change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ciliary.kvstore.filestore import FileStore

KIND = "policies"
REVISION = ("policyrevisions", "current")


@dataclass(frozen=True)
class PolicyDocument:
    key: str
    source: str
    index: int
    document: dict[str, Any]


def _bump(txn: Any) -> int:
    revision = int((txn.get(*REVISION) or {}).get("revision", 0)) + 1
    txn.put(*REVISION, {"revision": revision})
    return revision


def publish(store: FileStore, docs: Iterable[PolicyDocument]) -> int:
    """Store (or replace) policies; returns the new store revision."""
    with store.transaction() as txn:
        for d in docs:
            txn.put(KIND, d.key, {"source": d.source, "index": d.index, "document": d.document})
        return _bump(txn)


def withdraw(store: FileStore, keys: Iterable[str]) -> int:
    with store.transaction() as txn:
        for key in keys:
            txn.delete(KIND, key)
        return _bump(txn)
