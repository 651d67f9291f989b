"""API discovery documents, derived from the resource registry.

Before anything else kubectl asks the server what it serves (kubectl-facts.md §1-2): ``/version``
(the kubectl dispatcher picks its binary from ``minor``), then ``/api`` and ``/apis`` with an
Accept that prefers *aggregated* discovery (``APIGroupDiscoveryList``, apidiscovery.k8s.io v2,
then v2beta1) and falls back to the legacy documents (``APIVersions``, ``APIGroupList``, one
``APIResourceList`` per group version). The details are load-bearing: aggregated discovery must
come back with its own Content-Type or kubectl silently sees no resources; a resource without
``verbs`` disappears from ``api-resources``, without ``responseKind`` it is dropped, without a
scope it is treated as cluster-scoped; ``shortNames`` make ``get cnp`` work and ``categories``
make ``get all`` work. Every field comes from :data:`~ciliary.k8s.resources.RESOURCES`, so a kind
added there is discoverable with no change here.

Signatures for the API server::

    handle(path, accept, server_address="") -> (content_type, body_bytes) | None   # None: 404
    version_info() -> dict                                                          # /version
    aggregated(core, version="v2") / api_versions() / api_group_list()
    api_group(group) / api_resource_list(group, version)                            # dicts | None
"""

from __future__ import annotations

import json
import platform
import sys
from typing import Any

from ciliary.k8s.resources import RESOURCES, ResourceType, groups

__all__ = [
    "aggregated",
    "aggregated_content_type",
    "api_group",
    "api_group_list",
    "api_resource_list",
    "api_versions",
    "handle",
    "negotiate",
    "version_info",
]

KUBE_MAJOR = "1"
KUBE_MINOR = "32"  # kubectl's dispatcher runs its 1.32 binary for this (kubectl-facts.md §1)
GIT_VERSION = f"v{KUBE_MAJOR}.{KUBE_MINOR}.0"

DISCOVERY_GROUP = "apidiscovery.k8s.io"
AGGREGATED_KIND = "APIGroupDiscoveryList"
AGGREGATED_VERSIONS = ("v2", "v2beta1")


def aggregated_content_type(version: str = "v2") -> str:
    """The Content-Type an aggregated discovery answer must carry."""
    return f"application/json;g={DISCOVERY_GROUP};v={version};as={AGGREGATED_KIND}"


_SUBRESOURCE_VERBS = ("get", "patch", "update")
_ONLY_VERBS = {"binding": ("create",), "log": ("get",)}
"""Subresources that are not a view of the object to read and write: ``pods/binding`` is only
created, ``pods/log`` only read (kube-apiserver's discovery says the same)."""


def _subresource_verbs(sub: str) -> list[str]:
    return list(_ONLY_VERBS.get(sub, _SUBRESOURCE_VERBS))


def version_info() -> dict[str, str]:
    """``/version``: ``version.Info`` of a v1.32.0 server."""
    machine = platform.machine()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    py = sys.version_info
    return {
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": GIT_VERSION,
        "gitCommit": "ciliary",
        "gitTreeState": "clean",
        "buildDate": "2024-12-11T00:00:00Z",
        "goVersion": f"python{py.major}.{py.minor}.{py.micro}",
        "compiler": "ciliary",
        "platform": f"linux/{arch}",
    }


def _scope(r: ResourceType) -> str:
    return "Namespaced" if r.namespaced else "Cluster"


def _subresource_kind(r: ResourceType, sub: str) -> tuple[str, str, str]:
    """(group, version, kind) a subresource answers with: ``scale`` is autoscaling/v1 Scale,
    ``binding`` takes a v1 Binding (``pods/log`` is listed with the Pod kind, as upstream)."""
    if sub == "scale":
        return ("autoscaling", "v1", "Scale")
    if sub == "binding":
        return ("", "v1", "Binding")
    return (r.group, r.version, r.kind)


def _served(group: str, version: str) -> list[ResourceType]:
    return [r for r in RESOURCES if (r.group, r.version) == (group, version)]


# --------------------------------------------------------------------------- aggregated


def _discovery_resource(r: ResourceType) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": _scope(r),
        "singularResource": r.singular,
        "verbs": list(r.verbs),
    }
    if r.short_names:
        out["shortNames"] = list(r.short_names)
    if r.categories:
        out["categories"] = list(r.categories)
    if r.subresources:
        subs = []
        for sub in sorted(r.subresources):
            g, v, k = _subresource_kind(r, sub)
            subs.append(
                {
                    "subresource": sub,
                    "responseKind": {"group": g, "version": v, "kind": k},
                    "verbs": _subresource_verbs(sub),
                }
            )
        out["subresources"] = subs
    return out


def _group_discovery(group: str, versions: list[str]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"creationTimestamp": None}
    if group:
        metadata["name"] = group
    return {
        "metadata": metadata,
        "versions": [
            {
                "version": v,
                "resources": [_discovery_resource(r) for r in _served(group, v)],
                "freshness": "Current",
            }
            for v in versions
        ],
    }


def aggregated(core: bool, version: str = "v2") -> dict[str, Any]:
    """``APIGroupDiscoveryList`` for ``/api`` (``core``: the legacy group only) or ``/apis``
    (every named group), in apidiscovery.k8s.io ``version`` (v2 or v2beta1)."""
    items = [_group_discovery(g, vs) for g, vs in groups().items() if (g == "") == core]
    return {
        "kind": AGGREGATED_KIND,
        "apiVersion": f"{DISCOVERY_GROUP}/{version}",
        "metadata": {},
        "items": items,
    }


def negotiate(accept: str) -> str | None:
    """The aggregated discovery version an Accept header asks for first (``v2``/``v2beta1``), or
    None when a legacy document comes first (plain ``application/json``, ``*/*``)."""
    for entry in accept.split(","):
        media, *params = (p.strip() for p in entry.split(";"))
        if media not in ("application/json", "application/*", "*/*"):
            continue
        args = dict(p.partition("=")[::2] for p in params)
        args.pop("q", None)
        if not args:
            return None
        if (
            args.get("g") == DISCOVERY_GROUP
            and args.get("as") == AGGREGATED_KIND
            and args.get("v") in AGGREGATED_VERSIONS
        ):
            return args["v"]
    return None


# --------------------------------------------------------------------------- legacy


def api_versions(server_address: str = "") -> dict[str, Any]:
    """``/api``: ``APIVersions``."""
    return {
        "kind": "APIVersions",
        "versions": groups().get("", []),
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]
        if server_address
        else [],
    }


def _group_versions(group: str, versions: list[str]) -> dict[str, Any]:
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}


def api_group_list() -> dict[str, Any]:
    """``/apis``: ``APIGroupList`` of every named group."""
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group_versions(g, vs) for g, vs in groups().items() if g],
    }


def api_group(group: str) -> dict[str, Any] | None:
    """``/apis/<group>``: ``APIGroup``, or None when the group is not served."""
    versions = groups().get(group)
    if not group or not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_versions(group, versions)}


def api_resource_list(group: str, version: str) -> dict[str, Any] | None:
    """``/api/v1`` or ``/apis/<group>/<version>``: ``APIResourceList`` with the subresources
    (``pods/status``, ``deployments/scale``), or None when the group version is not served."""
    served = _served(group, version)
    if not served:
        return None
    resources: list[dict[str, Any]] = []
    for r in served:
        entry: dict[str, Any] = {
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": list(r.verbs),
        }
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if r.categories:
            entry["categories"] = list(r.categories)
        resources.append(entry)
        for sub in sorted(r.subresources):
            g, v, k = _subresource_kind(r, sub)
            sub_entry: dict[str, Any] = {
                "name": f"{r.plural}/{sub}",
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": k,
                "verbs": _subresource_verbs(sub),
            }
            if (g, v) != (r.group, r.version):
                sub_entry.update(group=g, version=v)
            resources.append(sub_entry)
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


# --------------------------------------------------------------------------- routing


def handle(path: str, accept: str, server_address: str = "") -> tuple[str, bytes] | None:
    """The discovery answer for ``path`` (``/api``, ``/api/v1``, ``/apis``, ``/apis/<g>``,
    ``/apis/<g>/<v>``) as (Content-Type, JSON body), or None (404)."""
    parts = [p for p in path.split("/") if p]
    doc: dict[str, Any] | None = None
    content_type = "application/json"
    if parts in (["api"], ["apis"]):
        version = negotiate(accept)
        if version is not None:
            doc = aggregated(core=parts == ["api"], version=version)
            content_type = aggregated_content_type(version)
        else:
            doc = api_versions(server_address) if parts == ["api"] else api_group_list()
    elif len(parts) == 2 and parts[0] == "api":
        doc = api_resource_list("", parts[1])
    elif len(parts) == 2 and parts[0] == "apis":
        doc = api_group(parts[1])
    elif len(parts) == 3 and parts[0] == "apis":
        doc = api_resource_list(parts[1], parts[2])
    if doc is None:
        return None
    return content_type, json.dumps(doc, separators=(",", ":")).encode()
