"""Pods and namespaces as the agent sees them in the cluster store (Cilium's pod/namespace
watchers): labels for identities, annotations for IPAM (Calico's pool and address annotations).

Documents are Kubernetes objects (``pods/<ns>/<name>``, ``namespaces/<name>``) written by
whoever plays the API server (the lab). Without a store, a pod is known only by what the CNI
request carries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ciliary.kvstore import FileStore, StoreError


@dataclass(frozen=True)
class PodMeta:
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    namespace_labels: dict[str, str] = field(default_factory=dict)
    named_ports: dict[str, tuple[int, str]] = field(default_factory=dict)


def _str_map(obj: object) -> dict[str, str]:
    if not isinstance(obj, dict):
        return {}
    return {str(k): str(v) for k, v in obj.items()}


class PodStore:
    def __init__(self, store: FileStore) -> None:
        self._store = store

    def __call__(self, namespace: str, name: str) -> PodMeta | None:
        try:
            pod = self._store.get("pods", f"{namespace}/{name}")
            ns = self._store.get("namespaces", namespace)
        except StoreError:
            return None
        if pod is None:
            return None
        meta = pod.get("metadata", {})
        ns_meta = (ns or {}).get("metadata", {})
        ports: dict[str, tuple[int, str]] = {}
        for container in (pod.get("spec") or {}).get("containers") or []:
            for port in (container or {}).get("ports") or []:
                name = port.get("name")
                if isinstance(name, str) and isinstance(port.get("containerPort"), int):
                    ports.setdefault(
                        name.lower(), (port["containerPort"], port.get("protocol", "TCP"))
                    )
        return PodMeta(
            labels=_str_map(meta.get("labels")),
            annotations=_str_map(meta.get("annotations")),
            namespace_labels=_str_map(ns_meta.get("labels")),
            named_ports=ports,
        )
