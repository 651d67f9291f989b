"""The workload controllers (``apps/v1``): Deployment, ReplicaSet, DaemonSet, StatefulSet.

Each stamps out pods from a :class:`~ciliary.k8s.core.PodTemplateSpec` whose labels its
``selector`` must match (kube-apiserver refuses the object otherwise: ``selector does not match
template labels``); :meth:`Workload.selector_problem` is that check, so whoever creates one —
the API server, the lab applying a file — says the same thing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ciliary.k8s.core import PodTemplateSpec
from ciliary.k8s.labelselector import SelectorError
from ciliary.k8s.meta import LabelSelector, ObjectModel, TypedObject

__all__ = [
    "DaemonSet",
    "DaemonSetSpec",
    "Deployment",
    "DeploymentSpec",
    "ReplicaSet",
    "ReplicaSetSpec",
    "StatefulSet",
    "StatefulSetSpec",
    "Workload",
    "WorkloadStatus",
]


class WorkloadStatus(ObjectModel):
    observed_generation: int | None = None
    replicas: int = 0
    ready_replicas: int = 0
    available_replicas: int = 0
    updated_replicas: int = 0


class _WorkloadSpec(ObjectModel):
    selector: LabelSelector
    template: PodTemplateSpec = Field(default_factory=PodTemplateSpec)
    min_ready_seconds: int = Field(default=0, ge=0)


class DeploymentSpec(_WorkloadSpec):
    replicas: int = Field(default=1, ge=0)


class ReplicaSetSpec(_WorkloadSpec):
    replicas: int = Field(default=1, ge=0)


class DaemonSetSpec(_WorkloadSpec):
    pass


class StatefulSetSpec(_WorkloadSpec):
    replicas: int = Field(default=1, ge=0)
    service_name: str | None = None
    pod_management_policy: Literal["OrderedReady", "Parallel"] = "OrderedReady"


class Workload(TypedObject):
    """What the four controllers share: a selector, a pod template and a status."""

    api_version: Literal["apps/v1"] = "apps/v1"
    spec: _WorkloadSpec
    status: WorkloadStatus = Field(default_factory=WorkloadStatus)

    def selector_problem(self) -> str | None:
        """Why the object is invalid as kube-apiserver sees the selector (an empty selector, an
        invalid key or value, or one the template's labels do not match), or None."""
        spec = self.spec
        if not spec.selector.match_labels and not spec.selector.match_expressions:
            return (
                f"spec.selector: Invalid value: empty selector is invalid for {self.kind.lower()}"
            )
        try:
            selector = spec.selector.selector("spec.selector")
        except SelectorError as err:
            return str(err)
        if not selector.matches(spec.template.metadata.labels):
            return (
                "spec.template.metadata.labels: Invalid value: "
                f"{spec.template.metadata.labels!r}: `selector` does not match template `labels`"
            )
        return None


class Deployment(Workload):
    kind: Literal["Deployment"] = "Deployment"
    spec: DeploymentSpec


class ReplicaSet(Workload):
    kind: Literal["ReplicaSet"] = "ReplicaSet"
    spec: ReplicaSetSpec


class DaemonSet(Workload):
    kind: Literal["DaemonSet"] = "DaemonSet"
    spec: DaemonSetSpec


class StatefulSet(Workload):
    kind: Literal["StatefulSet"] = "StatefulSet"
    spec: StatefulSetSpec
