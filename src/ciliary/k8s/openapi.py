"""Just enough OpenAPI v3 for ``kubectl apply`` with its default (strict) validation.

kubectl validates a manifest server-side when the server's OpenAPI says a PATCH of that
group/version/kind takes a ``fieldValidation`` query parameter; it finds that out from
``/openapi/v3`` (an index of ``paths.<group version>.serverRelativeURL``) and the group
version's document (a ``paths.*.patch`` operation carrying ``x-kubernetes-group-version-kind``
and ``parameters: [{name: fieldValidation, in: query}]``). Without either it falls back to
``/openapi/v2`` as protobuf and, failing that, refuses to apply (kubectl-facts.md §5).

No schemas are served, on purpose: the PATCH ``requestBody`` leaves out
``application/strategic-merge-patch+json``, so kubectl computes strategic merge patches from its
compiled-in Go types (which know the merge keys that :mod:`ciliary.k8s.patchmeta` copies) instead
of from schemas we would have to serve in full. ``/openapi/v2`` is a 404. Paths and kinds derive
from :data:`~ciliary.k8s.resources.RESOURCES`.

Signatures for the API server::

    handle(path, query="") -> (content_type, body_bytes) | None      # None: 404
    index() -> dict ; group_version_document(group, version) -> dict | None
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from typing import Any

from ciliary.k8s.resources import RESOURCES, ResourceType, groups

__all__ = ["group_version_document", "gv_path", "handle", "index"]

_JSON = {"schema": {"type": "object"}}
_QUERY_PARAMS = ("dryRun", "fieldManager", "fieldValidation", "force", "pretty")


def gv_path(group: str, version: str) -> str:
    """The index key of a group version: ``api/v1``, ``apis/apps/v1``."""
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _gvk(r: ResourceType) -> dict[str, str]:
    return {"group": r.group, "version": r.version, "kind": r.kind}


def _params(*names: str) -> list[dict[str, Any]]:
    return [
        {"name": n, "in": "query", "schema": {"type": "boolean" if n == "force" else "string"}}
        for n in names
    ]


def _operation(
    r: ResourceType, action: str, op_id: str, body: dict[str, Any] | None
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": op_id,
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": _gvk(r),
        "responses": {"200": {"description": "OK", "content": {"application/json": _JSON}}},
    }
    if action in ("patch", "post", "put"):
        op["parameters"] = _params(*_QUERY_PARAMS if action == "patch" else _QUERY_PARAMS[:3])
    if body is not None:
        op["requestBody"] = {"required": True, "content": body}
    return op


# strategic-merge-patch+json is left out on purpose (module docstring)
_PATCH_BODY = {
    "application/apply-patch+yaml": _JSON,
    "application/json-patch+json": _JSON,
    "application/merge-patch+json": _JSON,
}


def _paths(r: ResourceType) -> dict[str, Any]:
    base = f"/{gv_path(r.group, r.version)}"
    collection = (
        f"{base}/namespaces/{{namespace}}/{r.plural}" if r.namespaced else f"{base}/{r.plural}"
    )
    item = f"{collection}/{{name}}"
    op = f"{r.kind}{r.group.replace('.', '')}{r.version}"
    scope = "Namespaced" if r.namespaced else ""
    out: dict[str, Any] = {
        collection: {
            "get": _operation(r, "list", f"list{scope}{op}", None),
            "post": _operation(r, "post", f"create{scope}{op}", {"application/json": _JSON}),
        },
        item: {
            "get": _operation(r, "get", f"read{scope}{op}", None),
            "put": _operation(r, "put", f"replace{scope}{op}", {"application/json": _JSON}),
            "patch": _operation(r, "patch", f"patch{scope}{op}", _PATCH_BODY),
            "delete": _operation(r, "delete", f"delete{scope}{op}", None),
        },
    }
    for sub in r.subresources:
        if sub == "status":
            out[f"{item}/status"] = {
                "get": _operation(r, "get", f"read{scope}{op}Status", None),
                "patch": _operation(r, "patch", f"patch{scope}{op}Status", _PATCH_BODY),
            }
    return out


@cache
def _documents() -> dict[str, bytes]:
    docs: dict[str, bytes] = {}
    for group, versions in groups().items():
        for version in versions:
            paths: dict[str, Any] = {}
            for r in RESOURCES:
                if (r.group, r.version) == (group, version):
                    paths.update(_paths(r))
            doc = {
                "openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": "v1.32.0"},
                "paths": paths,
                "components": {"schemas": {}},
            }
            docs[gv_path(group, version)] = json.dumps(doc, separators=(",", ":")).encode()
    return docs


def group_version_document(group: str, version: str) -> dict[str, Any] | None:
    """The OpenAPI v3 document of one group version, or None when it is not served."""
    body = _documents().get(gv_path(group, version))
    return None if body is None else dict(json.loads(body))


def index() -> dict[str, Any]:
    """``/openapi/v3``: every served group version, its URL carrying its content hash."""
    return {
        "paths": {
            key: {
                "serverRelativeURL": f"/openapi/v3/{key}?hash="
                + hashlib.sha512(body).hexdigest()[:128].upper()
            }
            for key, body in _documents().items()
        }
    }


def handle(path: str, query: str = "") -> tuple[str, bytes] | None:
    """``/openapi/v3`` and ``/openapi/v3/<group version>`` (any ``hash``), or None (404; also
    for ``/openapi/v2``, so that kubectl uses v3)."""
    del query  # the hash only makes the URL cacheable; the document is the same
    key = path.strip("/")
    if key == "openapi/v3":
        return "application/json", json.dumps(index(), separators=(",", ":")).encode()
    prefix = "openapi/v3/"
    if key.startswith(prefix):
        body = _documents().get(key[len(prefix) :])
        if body is not None:
            return "application/json", body
    return None
