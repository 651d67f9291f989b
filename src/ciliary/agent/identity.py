"""Security identities: a set of labels ↦ a number, as Cilium numbers them.

This node-local allocator hands out numbers from 256 up (Cilium's first allocatable identity),
the same number for the same label set, persisted so that a restarted agent keeps every
endpoint's identity (and with it every ipcache entry) stable. An agent with a Kubernetes API uses
the cluster-wide CRD allocator instead, behind the same ``IdentityAllocator`` protocol.

Labels are Cilium's security-relevant form: the pod's labels as ``k8s:key=value`` plus
``k8s:io.kubernetes.pod.namespace=<ns>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ciliary.core import atomicfile as store
from ciliary.core.flow import MIN_ALLOCATED_IDENTITY


class IdentityAllocator(Protocol):
    """Label set → number: this node-local one, or the cluster-wide CRD allocator
    (``agent.k8s.identity``) when the agent has a Kubernetes API."""

    async def allocate(self, labels: tuple[str, ...]) -> int: ...

    def lookup(self, identity: int) -> tuple[str, ...] | None: ...

    def all(self) -> list[tuple[int, tuple[str, ...]]]: ...


class LocalIdentityAllocator:
    """Persisted label-set → number table. Not thread-safe: called from the event loop only."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._by_labels: dict[tuple[str, ...], int] = {}
        if path.exists():
            for entry in store.read_json(path):
                self._by_labels[tuple(entry["labels"])] = int(entry["id"])

    async def allocate(self, labels: tuple[str, ...]) -> int:
        found = self._by_labels.get(labels)
        if found is not None:
            return found
        used = set(self._by_labels.values())
        number = MIN_ALLOCATED_IDENTITY
        while number in used:
            number += 1
        self._by_labels[labels] = number
        self._save()
        return number

    def all(self) -> list[tuple[int, tuple[str, ...]]]:
        return [(number, labels) for labels, number in self._by_labels.items()]

    def lookup(self, identity: int) -> tuple[str, ...] | None:
        for labels, number in self._by_labels.items():
            if number == identity:
                return labels
        return None

    def _save(self) -> None:
        store.write_json(
            self._path,
            [{"id": n, "labels": list(lbls)} for lbls, n in sorted(self._by_labels.items())],
        )
