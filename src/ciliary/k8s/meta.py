"""The parts every Kubernetes object shares: the model base, ``ObjectMeta`` and ``LabelSelector``.

The typed object models (:mod:`ciliary.k8s.core`, :mod:`~ciliary.k8s.apps`,
:mod:`~ciliary.k8s.networking`, :mod:`~ciliary.k8s.cilium`) read objects as the API server
stores them, so, as Kubernetes' own clients do, they keep the fields a lab needs and drop the
rest: an object carries server-set metadata, defaulted spec fields and status that no lab reads,
and must still be read. They validate the fields they keep (types, names, label syntax) so that a
reader can trust them. A lab *file* is a narrower language, where an unknown field is a typo to
report: its documents are :class:`ciliary.k8s.fields.StrictModel` instead.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from ciliary.k8s.fields import Annotations, Labels
from ciliary.k8s.labelselector import Selector

__all__ = [
    "LabelSelector",
    "LabelSelectorRequirement",
    "ObjectMeta",
    "ObjectModel",
    "OwnerReference",
    "TypedObject",
    "now",
]


def now() -> str:
    """The current time as the API writes ``metav1.Time`` (RFC 3339, seconds, UTC)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ObjectModel(BaseModel):
    """Base of the object models: camelCase on the wire, immutable, unknown fields dropped."""

    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        alias_generator=to_camel,
    )

    def to_json(self) -> dict[str, Any]:
        """The object as the API speaks it (camelCase; absent optional fields left out)."""
        return self.model_dump(by_alias=True, mode="json", exclude_none=True)


class OwnerReference(ObjectModel):
    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool | None = None
    block_owner_deletion: bool | None = None


class ObjectMeta(ObjectModel):
    """``metadata``: identity (name, namespace, uid), labels and annotations, and the fields the
    API server sets (resourceVersion, generation, creationTimestamp, deletionTimestamp)."""

    name: str = ""
    generate_name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None
    labels: Labels = Field(default_factory=dict)
    annotations: Annotations = Field(default_factory=dict)
    finalizers: list[str] = Field(default_factory=list)
    owner_references: list[OwnerReference] = Field(default_factory=list)


class LabelSelectorRequirement(ObjectModel):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)


class LabelSelector(ObjectModel):
    """``matchLabels`` and ``matchExpressions``; :meth:`selector` is the one matcher
    (:mod:`ciliary.k8s.labelselector`), which validates keys and values as kube-apiserver does."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)

    def selector(self, field: str = "") -> Selector:
        """The matcher; ``SelectorError`` naming ``field`` when a key or value is invalid."""
        return Selector.from_label_selector(self.to_json(), field)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.selector().matches(labels)


class TypedObject(ObjectModel):
    """``apiVersion``, ``kind``, ``metadata``: what every object has. Subclasses narrow
    ``api_version`` and ``kind`` to their row of :data:`ciliary.k8s.resources.RESOURCES`."""

    api_version: str
    kind: str
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str | None:
        return self.metadata.namespace

    @property
    def labels(self) -> dict[str, str]:
        return self.metadata.labels
