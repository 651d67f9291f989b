"""Strategic-merge metadata of the built-in kinds: which lists merge, and by which key.

A strategic merge patch (what ``kubectl apply`` sends for built-in kinds) merges a list element
by element only where the Go type says so, with the ``patchStrategy`` / ``patchMergeKey`` struct
tags of ``k8s.io/api`` (core/v1 ``types.go``, apps/v1, ``metav1.ObjectMeta``); every other list is
replaced whole, and maps are merged key by key. The tags are copied here as a table keyed by the
field path inside the object (list elements are transparent: ``spec.containers.ports`` is the
``ports`` of every container), one table per kind, composed from shared pieces (ObjectMeta,
PodSpec, PodStatus) as the Go types embed them. Kinds that are absent (custom resources) have no
strategic merge at all: kube-apiserver answers 415 and clients use JSON merge patch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ciliary.k8s.resources import ResourceType

__all__ = ["ListStrategy", "Path", "list_strategies"]

Path = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ListStrategy:
    """``patchStrategy:"merge"`` on a list: by ``key`` (a list of objects), or as a set of
    primitives (``key`` empty: finalizers, podCIDRs)."""

    key: str = ""


def _under(prefix: Path, table: Mapping[Path, ListStrategy]) -> dict[Path, ListStrategy]:
    return {prefix + path: strategy for path, strategy in table.items()}


_BY_NAME = ListStrategy("name")
_BY_TYPE = ListStrategy("type")
_BY_IP = ListStrategy("ip")

_OBJECT_META: dict[Path, ListStrategy] = {
    ("finalizers",): ListStrategy(),
    ("ownerReferences",): ListStrategy("uid"),
}

_CONTAINER: dict[Path, ListStrategy] = {
    ("ports",): ListStrategy("containerPort"),
    ("env",): _BY_NAME,
    ("volumeMounts",): ListStrategy("mountPath"),
    ("volumeDevices",): ListStrategy("devicePath"),
}

_POD_SPEC: dict[Path, ListStrategy] = {
    ("volumes",): _BY_NAME,  # merge,retainKeys
    ("imagePullSecrets",): _BY_NAME,
    ("hostAliases",): _BY_IP,
    ("topologySpreadConstraints",): ListStrategy("topologyKey"),
    ("schedulingGates",): _BY_NAME,
    ("resourceClaims",): _BY_NAME,  # merge,retainKeys
}
for _field in ("containers", "initContainers", "ephemeralContainers"):
    _POD_SPEC[(_field,)] = _BY_NAME
    _POD_SPEC.update(_under((_field,), _CONTAINER))

_POD_STATUS: dict[Path, ListStrategy] = {
    ("conditions",): _BY_TYPE,
    ("podIPs",): _BY_IP,
    ("hostIPs",): _BY_IP,
}

_CONDITIONS: dict[Path, ListStrategy] = {("status", "conditions"): _BY_TYPE}

_POD_TEMPLATE_OWNER: dict[Path, ListStrategy] = {
    **_under(("spec", "template", "metadata"), _OBJECT_META),
    **_under(("spec", "template", "spec"), _POD_SPEC),
    **_CONDITIONS,
}

# (group, kind) → the kind's list strategies, without ObjectMeta (added to all below).
_KINDS: dict[tuple[str, str], dict[Path, ListStrategy]] = {
    ("", "Pod"): {**_under(("spec",), _POD_SPEC), **_under(("status",), _POD_STATUS)},
    ("", "Namespace"): dict(_CONDITIONS),
    ("", "Node"): {
        ("spec", "podCIDRs"): ListStrategy(),
        **_CONDITIONS,
        ("status", "addresses"): _BY_TYPE,
    },
    ("", "Service"): {("spec", "ports"): ListStrategy("port"), **_CONDITIONS},
    ("", "ServiceAccount"): {("secrets",): _BY_NAME},
    ("", "Endpoints"): {},
    ("", "ConfigMap"): {},
    ("", "Event"): {},
    ("discovery.k8s.io", "EndpointSlice"): {},
    ("apps", "Deployment"): dict(_POD_TEMPLATE_OWNER),
    ("apps", "ReplicaSet"): dict(_POD_TEMPLATE_OWNER),
    ("apps", "DaemonSet"): dict(_POD_TEMPLATE_OWNER),
    ("apps", "StatefulSet"): dict(_POD_TEMPLATE_OWNER),
    ("networking.k8s.io", "NetworkPolicy"): {},
    ("apiextensions.k8s.io", "CustomResourceDefinition"): {},
    # rbac/v1: rules and subjects carry no patchStrategy (replaced whole)
    ("rbac.authorization.k8s.io", "ClusterRole"): {},
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): {},
    ("rbac.authorization.k8s.io", "Role"): {},
    ("rbac.authorization.k8s.io", "RoleBinding"): {},
}

_TABLES: dict[tuple[str, str], Mapping[Path, ListStrategy]] = {
    gk: MappingProxyType({**_under(("metadata",), _OBJECT_META), **table})
    for gk, table in _KINDS.items()
}


def list_strategies(resource: ResourceType) -> Mapping[Path, ListStrategy] | None:
    """The merging lists of ``resource`` by field path, or None when the kind has no strategic
    merge (custom resources, and any kind this table does not know)."""
    if resource.custom:
        return None
    return _TABLES.get((resource.group, resource.kind))
