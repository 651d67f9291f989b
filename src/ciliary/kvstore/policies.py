"""Policy documents in the cluster store, as the lab and every agent read and write them.

Each policy is kept as the document its user wrote (kind ``policies``, name = the policy's key,
body ``{"source", "index", "document"}``) so that every agent parses the same text with the same
parser; a ``policyrevisions/current`` counter, bumped in the same transaction as the change,
tells agents to reload.
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


def revision(store: FileStore) -> int:
    return int((store.get(*REVISION) or {}).get("revision", 0))


def documents(store: FileStore) -> list[PolicyDocument]:
    out = []
    for key, body in store.list(KIND).items():
        doc = body.get("document")
        if isinstance(doc, dict):
            out.append(
                PolicyDocument(key, str(body.get("source", "?")), int(body.get("index", 0)), doc)
            )
    return out
