"""PATCH bodies by content type, applied to the stored object.

The merge algorithms have one home, :mod:`ciliary.k8s.patch`; this module picks one per content
type and maps failures to kube-apiserver's answers:

* ``application/merge-patch+json``: RFC 7386 (``kubectl label``, custom resources);
* ``application/json-patch+json``: RFC 6902, by the ``jsonpatch`` library (a failing ``test``
  or a missing path is 422, as kube-apiserver answers);
* ``application/strategic-merge-patch+json``: built-in kinds' list merges (415 for custom
  resources);
* ``application/apply-patch+yaml``: server-side apply, approximated without managed fields: the
  applied configuration is strategically merged (built-ins) or merge-patched (custom resources)
  onto the live object; the caller creates the object when it is absent.
"""

from __future__ import annotations

import json
from typing import Any

import jsonpatch
import yaml

from ciliary.apiserver import errors
from ciliary.k8s.patch import (
    PatchError,
    UnsupportedPatchError,
    json_merge_patch,
    strategic_merge,
)
from ciliary.k8s.resources import ResourceType

Obj = dict[str, Any]

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"
PATCH_TYPES = (JSON_PATCH, MERGE, STRATEGIC, APPLY)


def parse_body(content_type: str, body: bytes) -> Any:
    try:
        if content_type == APPLY:
            return yaml.safe_load(body.decode())
        return json.loads(body)
    except (ValueError, yaml.YAMLError) as err:
        raise errors.bad_request(f"error decoding patch: {err}") from None


def apply_patch(rt: ResourceType, content_type: str, original: Obj, patch: Any) -> Obj:
    """The patched object (a new dict; ``original`` is not changed)."""
    if content_type == JSON_PATCH:
        if not isinstance(patch, list):
            raise errors.bad_request("json patch must be a JSON array of operations")
        try:
            out = jsonpatch.apply_patch(original, patch)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
            raise errors.StatusError(
                422,
                "Invalid",
                f"the server rejected our request due to an error in our request: {err}",
            ) from None
        except (TypeError, KeyError, ValueError) as err:
            raise errors.bad_request(f"invalid json patch: {err}") from None
    elif not isinstance(patch, dict):
        raise errors.bad_request("patch must be a JSON object")
    elif content_type == MERGE or (content_type == APPLY and rt.custom):
        out = json_merge_patch(original, patch)
    elif content_type in (STRATEGIC, APPLY):
        try:
            out = strategic_merge(original, patch, rt)
        except UnsupportedPatchError as err:
            raise errors.StatusError(415, "UnsupportedMediaType", str(err)) from None
        except PatchError as err:
            raise errors.bad_request(str(err)) from None
    else:
        raise errors.unsupported_media_type(content_type)
    if not isinstance(out, dict):
        raise errors.bad_request("the patch must leave an object")
    return out
