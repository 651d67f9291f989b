"""What of a pod object its Cilium security identity and its Hubble workload are made of.

One home for both, below every component: the agent labels its endpoints with them (the
identity's labels, Hubble's ``Endpoint.workloads``), and the Hubble UI's policy view computes the
same identities from the same pod objects read from the API, so what it shows is what the agents
enforce.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."


def security_labels(
    namespace: str, labels: Mapping[str, str], namespace_labels: Mapping[str, str] | None = None
) -> tuple[str, ...]:
    """Sorted ``k8s:`` labels of a pod, its namespace folded in as Cilium does: the namespace
    name as ``io.kubernetes.pod.namespace`` and each namespace label as
    ``io.cilium.k8s.namespace.labels.<key>``."""
    out = {f"k8s:{k}={v}" for k, v in labels.items()}
    out.add(f"k8s:{NAMESPACE_LABEL}={namespace}")
    for key, value in (namespace_labels or {}).items():
        out.add(f"k8s:{NAMESPACE_LABELS_PREFIX}{key}={value}")
    return tuple(sorted(out))


def workload_of(pod: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    """The (name, kind) workload of a pod object from its controller owner reference, as
    upstream's ``GetWorkloadMetaFromPod``: a ReplicaSet ``<deployment>-<hash>`` with the pod's
    ``pod-template-hash`` is its Deployment, a Job ``<cronjob>-<digits>`` its CronJob."""
    meta = (pod or {}).get("metadata") or {}
    owners = meta.get("ownerReferences") or []
    controller = next((o for o in owners if isinstance(o, dict) and o.get("controller")), None)
    if controller is None:
        return ()
    kind, name = str(controller.get("kind", "")), str(controller.get("name", ""))
    if kind == "ReplicaSet":
        template_hash = (meta.get("labels") or {}).get("pod-template-hash")
        if template_hash and name.endswith("-" + str(template_hash)):
            return ((name[: -len(str(template_hash)) - 1], "Deployment"),)
    if kind == "Job":
        head, _, tail = name.rpartition("-")
        if head and tail.isdigit():
            return ((head, "CronJob"),)
    return ((name, kind),) if name and kind else ()
