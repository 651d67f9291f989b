"""The resource types of the lab's Kubernetes API, one row each.

Everything that must agree about a kind — discovery documents, OpenAPI, REST paths, etcd keys,
kubectl's short names, Table columns — derives from the row here, so a kind is added in one place.
etcd keys follow kube-apiserver's layout: built-in kinds under `/registry/<resource>/…` (as
kube-apiserver stores them, e.g. `/registry/pods/default/p1`, `/registry/deployments/…`), custom
resources under `/registry/<group>/<resource>/…` (as apiextensions-apiserver stores them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

REGISTRY_ROOT = "/registry"


@dataclass(frozen=True)
class ResourceType:
    """One served resource (a kind at one group/version)."""

    group: str  # "" for the core group
    version: str
    kind: str
    plural: str  # the resource name in URLs ("pods")
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()  # "status", "scale", "binding", "log"
    custom: bool = False  # served as a CRD (JSON merge patch only, /registry/<group>/…)
    verbs: tuple[str, ...] = (
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    )

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def etcd_prefix(self) -> str:
        """Key prefix of every object of this resource (no trailing slash)."""
        if self.custom:
            return f"{REGISTRY_ROOT}/{self.group}/{self.plural}"
        return f"{REGISTRY_ROOT}/{self.plural}"

    def etcd_key(self, namespace: str | None, name: str) -> str:
        if self.namespaced:
            if not namespace:
                raise ValueError(f"{self.plural} are namespaced: a namespace is required")
            return f"{self.etcd_prefix}/{namespace}/{name}"
        return f"{self.etcd_prefix}/{name}"

    def path(self, namespace: str | None = None) -> str:
        """The collection's URL path (namespace-scoped when given)."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            return f"{base}/namespaces/{namespace}/{self.plural}"
        return f"{base}/{self.plural}"


_CORE_ALL = ("all",)

RESOURCES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "Namespace", "namespaces", "namespace", False, ("ns",), (), ("status",)),
    ResourceType(
        "", "v1", "Pod", "pods", "pod", True, ("po",), _CORE_ALL, ("status", "binding", "log")
    ),
    ResourceType("", "v1", "Node", "nodes", "node", False, ("no",), (), ("status",)),
    ResourceType(
        "", "v1", "Service", "services", "service", True, ("svc",), _CORE_ALL, ("status",)
    ),
    ResourceType("", "v1", "Endpoints", "endpoints", "endpoints", True, ("ep",)),
    ResourceType("", "v1", "ConfigMap", "configmaps", "configmap", True, ("cm",)),
    ResourceType("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", True, ("sa",)),
    ResourceType("", "v1", "Event", "events", "event", True, ("ev",)),
    ResourceType(
        "discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", True
    ),
    ResourceType(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        "deployment",
        True,
        ("deploy",),
        _CORE_ALL,
        ("status", "scale"),
    ),
    ResourceType(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        True,
        ("rs",),
        _CORE_ALL,
        ("status", "scale"),
    ),
    ResourceType(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        "daemonset",
        True,
        ("ds",),
        _CORE_ALL,
        ("status",),
    ),
    ResourceType(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        "statefulset",
        True,
        ("sts",),
        _CORE_ALL,
        ("status", "scale"),
    ),
    ResourceType(
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
        "networkpolicy",
        True,
        ("netpol",),
    ),
    ResourceType(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        "customresourcedefinition",
        False,
        ("crd", "crds"),
        (),
        ("status",),
    ),
    # RBAC: what the agent's and operator's manifests (deploy/) grant them. Stored and served
    # like any kind; the lab's API server authorizes nothing with them (every
    # authenticated client may do everything).
    ResourceType(
        "rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", "clusterrole", False
    ),
    ResourceType(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        False,
    ),
    ResourceType("rbac.authorization.k8s.io", "v1", "Role", "roles", "role", True),
    ResourceType(
        "rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", "rolebinding", True
    ),
    ResourceType(
        "cilium.io",
        "v2",
        "CiliumNetworkPolicy",
        "ciliumnetworkpolicies",
        "ciliumnetworkpolicy",
        True,
        ("cnp", "ciliumnp"),
        ("cilium", "ciliumpolicy"),
        ("status",),
        custom=True,
    ),
    ResourceType(
        "cilium.io",
        "v2",
        "CiliumClusterwideNetworkPolicy",
        "ciliumclusterwidenetworkpolicies",
        "ciliumclusterwidenetworkpolicy",
        False,
        ("ccnp",),
        ("cilium", "ciliumpolicy"),
        ("status",),
        custom=True,
    ),
    ResourceType(
        "cilium.io",
        "v2",
        "CiliumEndpoint",
        "ciliumendpoints",
        "ciliumendpoint",
        True,
        ("cep", "ciliumep"),
        ("cilium",),
        ("status",),
        custom=True,
    ),
    ResourceType(
        "cilium.io",
        "v2",
        "CiliumNode",
        "ciliumnodes",
        "ciliumnode",
        False,
        ("cn", "ciliumn"),
        ("cilium",),
        ("status",),
        custom=True,
    ),
    ResourceType(
        "cilium.io",
        "v2",
        "CiliumIdentity",
        "ciliumidentities",
        "ciliumidentity",
        False,
        ("ciliumid",),
        ("cilium",),
        custom=True,
    ),
    # Calico's user-facing API (what calicoctl and users' manifests speak), and below it the
    # CRD storage group of Calico's Kubernetes datastore; both are served.
    ResourceType(
        "projectcalico.org", "v3", "IPPool", "ippools", "ippool", False, (), (), custom=True
    ),
    ResourceType(
        "projectcalico.org",
        "v3",
        "IPAMConfiguration",
        "ipamconfigurations",
        "ipamconfiguration",
        False,
        (),
        (),
        custom=True,
    ),
    ResourceType(
        "crd.projectcalico.org",
        "v1",
        "IPPool",
        "ippools",
        "ippool",
        False,
        (),
        (),
        custom=True,
    ),
    ResourceType(
        "crd.projectcalico.org",
        "v1",
        "IPAMConfig",
        "ipamconfigs",
        "ipamconfig",
        False,
        (),
        (),
        custom=True,
    ),
    # Calico IPAM's state in the Kubernetes datastore: one object per block of a pool (name =
    # the CIDR with '.', ':' and '/' as '-', Calico's CIDRToName), changed by agents with
    # optimistic concurrency (resourceVersion preconditions, 409 → re-read and retry)
    ResourceType(
        "crd.projectcalico.org",
        "v1",
        "IPAMBlock",
        "ipamblocks",
        "ipamblock",
        False,
        (),
        (),
        custom=True,
    ),
)


class UnknownResourceError(LookupError):
    pass


def by_path(group: str, version: str, plural: str) -> ResourceType:
    for r in RESOURCES:
        if (r.group, r.version, r.plural) == (group, version, plural):
            return r
    raise UnknownResourceError(f"the server could not find the requested resource {plural}")


def by_kind(api_version: str, kind: str) -> ResourceType:
    for r in RESOURCES:
        if (r.api_version, r.kind) == (api_version, kind):
            return r
    raise UnknownResourceError(f'no matches for kind "{kind}" in version "{api_version}"')


def groups() -> dict[str, list[str]]:
    """Served group → its versions (the core group is "")."""
    out: dict[str, list[str]] = {}
    for r in RESOURCES:
        versions = out.setdefault(r.group, [])
        if r.version not in versions:
            versions.append(r.version)
    return out


POD_SPEC_PATHS: dict[tuple[str, str], tuple[str, ...]] = {
    ("v1", "Pod"): ("spec",),
    ("apps/v1", "Deployment"): ("spec", "template", "spec"),
    ("apps/v1", "ReplicaSet"): ("spec", "template", "spec"),
    ("apps/v1", "DaemonSet"): ("spec", "template", "spec"),
    ("apps/v1", "StatefulSet"): ("spec", "template", "spec"),
}
"""Where each kind that makes pods keeps its pod spec (``(apiVersion, kind)`` → field path): the
API server validates a template's pod spec as a Pod's, under the template's path."""


def pod_spec_of(doc: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """``doc``'s pod spec and its dotted path (``spec`` or ``spec.template.spec``), or None when
    ``doc`` is no kind that makes pods or has no pod spec object."""
    path = POD_SPEC_PATHS.get((str(doc.get("apiVersion")), str(doc.get("kind"))))
    if path is None:
        return None
    spec: Any = doc
    for part in path:
        spec = spec.get(part) if isinstance(spec, dict) else None
    if not isinstance(spec, dict):
        return None
    return ".".join(path), spec
