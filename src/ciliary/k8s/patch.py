"""PATCH semantics: JSON merge patch (RFC 7386) and strategic merge patch, as kube-apiserver.

``kubectl apply`` computes a three-way diff and sends it as a *strategic* merge patch for
built-in kinds: lists that the Go types tag ``patchStrategy:"merge"`` are merged element by
element (containers by ``name``, container ports by ``containerPort``, …; see
:mod:`ciliary.k8s.patchmeta`), so changing one container's image keeps the other containers and
the ports the patch does not mention. Treating it as a merge patch replaces those lists and loses
data. Custom resources take JSON merge patch only (kube-apiserver: 415).

The merge follows ``k8s.io/apimachinery/pkg/util/strategicpatch`` (``mergeMap``/``mergeSlice``
with the server's options: parallel deletion lists, unmatched nulls ignored):

- ``null`` deletes a key; a key absent from the original takes the patch value; a type change
  replaces; maps merge recursively; lists merge only where tagged, else are replaced;
- ``$patch: replace`` in a map replaces it, ``$patch: delete`` empties it; in a merging list,
  ``{"$patch": "delete", <key>: v}`` removes the element and ``{"$patch": "replace"}`` replaces
  the list with the patch's other elements;
- ``$retainKeys: [...]`` drops the original's keys not listed (Deployment ``strategy``, volumes);
- ``$setElementOrder/<list>`` gives the order of the elements the patch knows about; elements only
  the server has keep their place relative to them (mergeSortedSlice);
- ``$deleteFromPrimitiveList/<list>`` removes values from a merging list of primitives.

Directives never reach the stored object: a subtree added by the patch is merged into an empty
one, which drops its directives and nulls.

Signatures for the API server (inputs are not modified; :class:`PatchError` is a 400 BadRequest,
:class:`UnsupportedPatchError` a 415)::

    json_merge_patch(doc, patch) -> Any
    strategic_merge(original: dict, patch: dict, resource: ResourceType) -> dict
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from ciliary.k8s.patchmeta import ListStrategy, Path, list_strategies
from ciliary.k8s.resources import ResourceType

__all__ = ["PatchError", "UnsupportedPatchError", "json_merge_patch", "strategic_merge"]

Obj = dict[str, Any]
Meta = Mapping[Path, ListStrategy]

DIRECTIVE = "$patch"
RETAIN_KEYS = "$retainKeys"
SET_ORDER = "$setElementOrder/"
DELETE_PRIMITIVES = "$deleteFromPrimitiveList/"


class PatchError(ValueError):
    """A patch that cannot be applied (kube-apiserver answers 400 BadRequest)."""


class UnsupportedPatchError(PatchError):
    """Strategic merge asked of a kind that has none (custom resources: 415)."""


def json_merge_patch(doc: Any, patch: Any) -> Any:
    """RFC 7386: an object patch merges into an object (``null`` removes the key), anything else
    replaces the target. ``doc`` is not modified."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out: Obj = copy.deepcopy(doc) if isinstance(doc, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = json_merge_patch(out.get(key), value)
    return out


def strategic_merge(original: Obj, patch: Obj, resource: ResourceType) -> Obj:
    """``original`` with the strategic merge ``patch`` applied (a new dict)."""
    meta = list_strategies(resource)
    if meta is None:
        raise UnsupportedPatchError(
            f"the body of the request was in an unknown format - accepted media types include: "
            f"application/json-patch+json, application/merge-patch+json (strategic merge patch "
            f"is not supported for {resource.plural}.{resource.group or 'core'})"
        )
    if not isinstance(patch, dict):
        raise PatchError("strategic merge patch must be a JSON object")
    return _merge_map(copy.deepcopy(original), copy.deepcopy(patch), (), meta)


def _fresh(value: Any, path: Path, meta: Meta) -> Any:
    """A value the original lacks, with its directives and nulls removed."""
    if isinstance(value, dict):
        return _merge_map({}, value, path, meta)
    if isinstance(value, list):
        return _merge_list([], value, path, meta)
    return value


def _kind(value: Any) -> type:
    return dict if isinstance(value, dict) else list if isinstance(value, list) else object


def _merge_map(original: Obj, patch: Obj, path: Path, meta: Meta) -> Obj:
    if DIRECTIVE in patch:
        directive = patch.pop(DIRECTIVE)
        if directive == "replace":
            return _merge_map({}, patch, path, meta)
        if directive == "delete":
            return {}
        raise PatchError(f"Unknown patch type: {directive} in map: {patch}")

    if RETAIN_KEYS in patch:
        retain = patch.pop(RETAIN_KEYS)
        if not isinstance(retain, list) or not all(isinstance(k, str) for k in retain):
            raise PatchError(f"invalid {RETAIN_KEYS} directive: {retain!r}: must be a list of keys")
        for key in list(original):
            if key not in retain:
                del original[key]

    for key in [k for k in patch if k.startswith(SET_ORDER)]:
        field = key[len(SET_ORDER) :]
        order = patch.pop(key)
        if not isinstance(order, list):
            raise PatchError(f"invalid {key}: must be a list")
        merged = _set_element_order(
            original.get(field), patch.pop(field, None), order, (*path, field), meta
        )
        if merged is not None:
            original[field] = merged

    for key, value in patch.items():
        sub = (*path, key)
        if key.startswith(DELETE_PRIMITIVES):
            field = key[len(DELETE_PRIMITIVES) :]
            current = original.get(field)
            if isinstance(current, list) and isinstance(value, list):
                original[field] = [v for v in current if v not in value]
            continue
        if value is None:
            original.pop(key, None)
            continue
        if key not in original or _kind(original[key]) is not _kind(value):
            original[key] = _fresh(value, sub, meta)
        elif isinstance(value, dict):
            original[key] = _merge_map(original[key], value, sub, meta)
        elif isinstance(value, list):
            original[key] = _merge_list(original[key], value, sub, meta)
        else:
            original[key] = value
    return original


def _set_element_order(
    original: Any, patch_list: Any, order: list[Any], path: Path, meta: Meta
) -> list[Any] | None:
    if original is None and patch_list is None:
        return None
    if patch_list is None:
        merged = list(original) if isinstance(original, list) else []
    elif not isinstance(patch_list, list):
        raise PatchError(f"{'.'.join(path)}: patch must be a list to go with $setElementOrder")
    elif isinstance(original, list):
        merged = _merge_list(original, patch_list, path, meta)
    else:
        merged = _fresh(patch_list, path, meta)
    strategy = meta.get(path)
    if strategy is None:
        return merged
    server_order = original if isinstance(original, list) else []
    in_order = [x for x in merged if _index(order, x, strategy.key) >= 0]
    server_only = [x for x in merged if _index(order, x, strategy.key) < 0]
    return _normalize(in_order, server_only, order, server_order, strategy.key)


def _key_of(item: Any, key: str) -> Any:
    return item.get(key) if key and isinstance(item, dict) else item


def _index(items: list[Any], item: Any, key: str) -> int:
    want = _key_of(item, key)
    for i, candidate in enumerate(items):
        if _key_of(candidate, key) == want:
            return i
    return -1


def _normalize(
    patch_items: list[Any],
    server_only: list[Any],
    patch_order: list[Any],
    server_order: list[Any],
    key: str,
) -> list[Any]:
    """strategicpatch's normalizeElementOrder + mergeSortedSlice: patch items in patch order,
    server-only items in server order, interleaved where both have a server position."""
    left = sorted(server_only, key=lambda x: _index(server_order, x, key))
    right = sorted(patch_items, key=lambda x: _index(patch_order, x, key))
    out: list[Any] = []
    i = j = 0
    while i < len(left) or j < len(right):
        if j >= len(right):
            out.append(left[i])
            i += 1
        elif i >= len(left):
            out.append(right[j])
            j += 1
        else:
            li, ri = _index(server_order, left[i], key), _index(server_order, right[j], key)
            if li >= 0 and ri >= 0 and li < ri:
                out.append(left[i])
                i += 1
            else:
                out.append(right[j])
                j += 1
    return out


def _merge_list(original: list[Any], patch: list[Any], path: Path, meta: Meta) -> list[Any]:
    strategy = meta.get(path)
    if strategy is None:  # atomic: the patch replaces the list
        return [_fresh(x, path, meta) for x in patch]
    if not original and not patch:
        return original
    key = strategy.key
    if not key or not any(isinstance(x, dict) for x in original + patch):
        merged: list[Any] = []
        for x in original + patch:
            if x not in merged:
                merged.append(x)
        present = [x for x in merged if x in patch]
        server_only = [x for x in merged if x not in patch]
        return _normalize(present, server_only, patch, original, "")
    if not all(isinstance(x, dict) for x in original + patch):
        raise PatchError(f"{'.'.join(path)}: cannot merge a list of objects with other values")
    plain: list[Obj] = []
    replace = False
    for item in patch:
        directive = item.get(DIRECTIVE)
        if directive is None:
            plain.append(item)
        elif directive == "delete":
            if key not in item:
                raise PatchError(f"map: {item} does not contain declared merge key: {key}")
            original = [x for x in original if x.get(key) != item[key]]
        elif directive == "replace":
            replace = True
        elif directive == "merge":
            raise PatchError("merging lists cannot yet be specified in the patch")
        else:
            raise PatchError(f"Unknown patch type: {directive} in map: {item}")
    if replace:
        return [_fresh(x, path, meta) for x in plain]
    merged = list(original)
    for item in plain:
        if key not in item:
            raise PatchError(f"map: {item} does not contain declared merge key: {key}")
        at = _index(merged, item, key)
        if at >= 0:
            merged[at] = _merge_map(merged[at], item, path, meta)
        else:
            merged.append(_fresh(item, path, meta))
    present = [x for x in merged if _index(plain, x, key) >= 0]
    server_only = [x for x in merged if _index(plain, x, key) < 0]
    return _normalize(present, server_only, plain, original, key)
