"""What the agent knows of a pod (Cilium's pod/namespace watchers): labels for identities,
annotations for IPAM (Calico's pool and address annotations), named ports, its workload.

Filled from the Kubernetes API by the node's pod and namespace informers (``agent.k8s.pods``);
an agent without an API knows a pod only by what the CNI request carries (:func:`no_pods`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ciliary.k8s.podidentity import workload_of  # one home, shared with the Hubble UI


@dataclass(frozen=True)
class PodMeta:
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    namespace_labels: dict[str, str] = field(default_factory=dict)
    named_ports: dict[str, tuple[int, str]] = field(default_factory=dict)
    workloads: tuple[tuple[str, str], ...] = ()
    """(name, kind) of the pod's controller (Hubble's ``Endpoint.workloads``)."""


def _str_map(obj: object) -> dict[str, str]:
    if not isinstance(obj, dict):
        return {}
    return {str(k): str(v) for k, v in obj.items()}


PodLookup = Callable[[str, str], Awaitable[PodMeta | None]]
"""(namespace, pod name) → the pod's metadata, or None when the cluster has no such pod."""


async def no_pods(_namespace: str, _name: str) -> PodMeta | None:
    """The lookup of an agent without a cluster: pods are known by their CNI request only."""
    return None


def pod_meta(pod: Mapping[str, Any], namespace: Mapping[str, Any] | None) -> PodMeta:
    """What the agent needs of a Pod object and its Namespace object (either source)."""
    meta = pod.get("metadata") or {}
    ns_meta = (namespace or {}).get("metadata") or {}
    ports: dict[str, tuple[int, str]] = {}
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in (container or {}).get("ports") or []:
            name = port.get("name")
            if isinstance(name, str) and isinstance(port.get("containerPort"), int):
                ports.setdefault(name.lower(), (port["containerPort"], port.get("protocol", "TCP")))
    return PodMeta(
        labels=_str_map(meta.get("labels")),
        annotations=_str_map(meta.get("annotations")),
        namespace_labels=_str_map(ns_meta.get("labels")),
        named_ports=ports,
        workloads=workload_of(pod),
    )
