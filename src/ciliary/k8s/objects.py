"""The typed object models by kind, and the one function that reads an object into its model.

Every model names its ``apiVersion`` and ``kind`` as literals; this module indexes them, and
:func:`model_for` answers for a :class:`~ciliary.k8s.resources.ResourceType` row, so the registry
stays the one list of kinds and the models add types to some of its rows (a test checks that each
model has its row). Kinds without a model (ConfigMap, Event, …) are read as plain mappings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from ciliary.k8s.apps import DaemonSet, Deployment, ReplicaSet, StatefulSet
from ciliary.k8s.cilium import CiliumEndpoint, CiliumIdentity, CiliumNode
from ciliary.k8s.core import Namespace, Node, Pod, Service
from ciliary.k8s.fields import error_message, format_path
from ciliary.k8s.meta import TypedObject
from ciliary.k8s.networking import (
    CiliumClusterwideNetworkPolicy,
    CiliumNetworkPolicy,
    EndpointSlice,
    NetworkPolicy,
)
from ciliary.k8s.resources import ResourceType

__all__ = ["MODELS", "ObjectError", "model_for", "parse_object"]

_ALL: tuple[type[TypedObject], ...] = (
    Namespace,
    Pod,
    Node,
    Service,
    EndpointSlice,
    Deployment,
    ReplicaSet,
    DaemonSet,
    StatefulSet,
    NetworkPolicy,
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
    CiliumNode,
    CiliumIdentity,
    CiliumEndpoint,
)


def _key(model: type[TypedObject]) -> tuple[str, str]:
    fields = model.model_fields
    return str(fields["api_version"].default), str(fields["kind"].default)


MODELS: dict[tuple[str, str], type[TypedObject]] = {_key(m): m for m in _ALL}
"""``(apiVersion, kind)`` → model."""


class ObjectError(ValueError):
    """An object of a modelled kind whose fields do not validate; the message is one line."""


def model_for(resource: ResourceType) -> type[TypedObject] | None:
    """The model of a served resource, or None when its objects are read untyped."""
    return MODELS.get((resource.api_version, resource.kind))


def parse_object(doc: Mapping[str, Any]) -> TypedObject | None:
    """``doc`` read into its model (None for a kind without one); :class:`ObjectError` naming
    the object and the first bad field when it does not validate."""
    model = MODELS.get((str(doc.get("apiVersion")), str(doc.get("kind"))))
    if model is None:
        return None
    try:
        return model.model_validate(doc)
    except ValidationError as err:
        loc, message = error_message(err.errors()[0])
        meta = doc.get("metadata")
        name = meta.get("name") if isinstance(meta, Mapping) else None
        where = f"{doc.get('kind')} {name}" if name else str(doc.get("kind"))
        path = format_path(loc)
        raise ObjectError(
            f"{where}: {path}: {message}" if path else f"{where}: {message}"
        ) from None
