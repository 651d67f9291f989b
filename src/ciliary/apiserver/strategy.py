"""What the API server does to an object on create, update and status update, per kind.

kube-apiserver's registry "strategies" in one place: system metadata (uid, creationTimestamp,
generation, generateName), immutable fields kept from the stored object, the ``status``
subresource split (the main resource ignores status, ``/status`` changes only status),
``generation`` bumped when anything but metadata and status changes, finalizers (an object whose
deletion was requested goes away when its last finalizer is removed), and validation: names,
labels, every container's required ``image`` and its probes (Pods and the pod templates of
workloads), and
network policies checked by the policy engine's own parser, so a policy the agents would reject
is 422 Invalid with field paths and is never stored.
"""

from __future__ import annotations

import re
import secrets
import uuid
from typing import Any

from pydantic import ValidationError

from ciliary.apiserver import errors
from ciliary.apiserver.errors import Cause
from ciliary.apiserver.storage import DELETE, Obj, Outcome
from ciliary.k8s.core import Container
from ciliary.k8s.fields import error_message, format_path
from ciliary.k8s.labelselector import label_key_problem, label_value_problem
from ciliary.k8s.meta import now
from ciliary.k8s.names import is_dns1123_label, is_dns1123_subdomain
from ciliary.k8s.resources import ResourceType, pod_spec_of
from ciliary.policy.api.documents import (
    POLICY_KINDS,
    api_object_document,
    parse_policy_documents,
    where,
)
from ciliary.policy.api.errors import PolicyError

_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery's rand.String alphabet
_FIELD_PATH = re.compile(r"[A-Za-z_$][\w$]*(\[[^\]]+\]|\.[A-Za-z_$][\w$]*)*")


def _meta(obj: Obj) -> dict[str, Any]:
    meta = obj.get("metadata")
    if meta is None:
        meta = obj["metadata"] = {}
    if not isinstance(meta, dict):
        raise errors.bad_request("metadata: expected an object")
    return meta


def check_type(rt: ResourceType, obj: Any) -> Obj:
    """The body is an object of this resource's kind (kind/apiVersion filled when absent)."""
    if not isinstance(obj, dict):
        raise errors.bad_request("the body of the request must be a JSON object")
    kind = obj.setdefault("kind", rt.kind)
    api_version = obj.setdefault("apiVersion", rt.api_version)
    if kind != rt.kind or api_version != rt.api_version:
        raise errors.bad_request(
            f"the API version in the data ({api_version}) does not match the expected API"
            f" version ({rt.api_version})"
            if api_version != rt.api_version
            else f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})"
        )
    _meta(obj)
    return obj


def _name_causes(rt: ResourceType, name: str) -> list[Cause]:
    if rt.kind == "Namespace":
        if not is_dns1123_label(name):
            return [
                Cause(
                    "metadata.name",
                    f'Invalid value: "{name}": a lowercase RFC 1123 label must consist of lower'
                    " case alphanumeric characters or '-', and must start and end with an"
                    " alphanumeric character",
                )
            ]
        return []
    if not is_dns1123_subdomain(name):
        return [
            Cause(
                "metadata.name",
                f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower'
                " case alphanumeric characters, '-' or '.', and must start and end with an"
                " alphanumeric character",
            )
        ]
    return []


def _label_causes(meta: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        return [Cause("metadata.labels", "Invalid value: expected a map of strings")]
    for key, value in labels.items():
        problem = label_key_problem(str(key))
        if problem:
            causes.append(Cause("metadata.labels", f'Invalid value: "{key}": {problem}'))
        if not isinstance(value, str):
            causes.append(
                Cause(f"metadata.labels[{key}]", "Invalid value: label values are strings")
            )
            continue
        problem = label_value_problem(value)
        if problem:
            causes.append(Cause("metadata.labels", f'Invalid value: "{value}": {problem}'))
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(v, str) for v in annotations.values()
    ):
        causes.append(Cause("metadata.annotations", "Invalid value: expected a map of strings"))
    return causes


def policy_causes(rt: ResourceType, obj: Obj) -> list[Cause]:
    """The policy engine's problems with a policy object, one cause per problem, with the field
    path split from the message (the engine's one-line form is ``<where>: <path>: <what>``)."""
    if rt.kind not in POLICY_KINDS or POLICY_KINDS[rt.kind] != rt.api_version:
        return []
    doc = api_object_document(obj)
    try:
        parse_policy_documents([(1, doc)], "request")
    except PolicyError as err:
        prefix = where("request", 1, doc) + ": "
        causes = []
        for problem in err.problems:
            rest = problem[len(prefix) :] if problem.startswith(prefix) else problem
            path, sep, message = rest.partition(": ")
            if sep and _FIELD_PATH.fullmatch(path):
                causes.append(Cause(path, message))
            else:
                causes.append(Cause("", rest))
        return causes
    return []


def _image_causes(rt: ResourceType, obj: Obj) -> list[Cause]:
    """A container without a non-empty ``image`` is refused as kube-apiserver refuses it
    (``spec.containers[0].image: Required value``): the image is required by the API even
    though the lab's kubelet role only runs a container's command."""
    found = pod_spec_of({**obj, "apiVersion": rt.api_version, "kind": rt.kind})
    if found is None:
        return []
    prefix, spec = found
    causes: list[Cause] = []
    for field in ("containers", "initContainers"):
        containers = spec.get(field)
        if not isinstance(containers, list):
            continue
        for i, c in enumerate(containers):
            image = c.get("image") if isinstance(c, dict) else None
            if not isinstance(image, str) or not image.strip():
                causes.append(
                    Cause(f"{prefix}.{field}[{i}].image", "Required value", "FieldValueRequired")
                )
    return causes


_PROBE_FIELDS = ("readinessProbe", "livenessProbe", "startupProbe")


def _probe_causes(rt: ResourceType, obj: Obj) -> list[Cause]:
    """Containers' probes checked by the one model of a container (``k8s.core.Container``:
    exactly one handler, thresholds, named ports), as kube-apiserver validates them, so the
    kubelet role never meets a probe it cannot run (``spec.containers[0].livenessProbe.
    successThreshold: must be 1``)."""
    found = pod_spec_of({**obj, "apiVersion": rt.api_version, "kind": rt.kind})
    if found is None:
        return []
    prefix, spec = found
    causes: list[Cause] = []
    containers = spec.get("containers")
    for i, c in enumerate(containers if isinstance(containers, list) else []):
        if not isinstance(c, dict) or not any(f in c for f in _PROBE_FIELDS):
            continue
        part = {"name": "probed", "ports": c.get("ports") or []}
        part |= {f: c[f] for f in _PROBE_FIELDS if f in c}
        try:
            Container.model_validate(part)
        except ValidationError as err:
            for e in err.errors():
                loc, message = error_message(e)
                causes.append(Cause(f"{prefix}.containers[{i}].{format_path(loc)}", message))
    return causes


def validate(rt: ResourceType, obj: Obj) -> None:
    meta = obj["metadata"]
    causes = _name_causes(rt, str(meta.get("name", "")))
    causes += _label_causes(meta)
    causes += _image_causes(rt, obj)
    causes += _probe_causes(rt, obj)
    if not causes:
        causes += policy_causes(rt, obj)
    if causes:
        raise errors.invalid(rt, str(meta.get("name", "")), causes)


def prepare_create(rt: ResourceType, obj: Obj, namespace: str | None) -> Obj:
    """System metadata of a new object; validation (422) included."""
    obj = check_type(rt, obj)
    meta = _meta(obj)
    if rt.namespaced:
        body_ns = meta.get("namespace")
        if body_ns and namespace and body_ns != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on"
                " the request"
            )
        meta["namespace"] = namespace or body_ns or "default"
    else:
        meta.pop("namespace", None)
    if not meta.get("name"):
        prefix = meta.get("generateName")
        if not prefix:
            raise errors.invalid(
                rt,
                "",
                [
                    Cause(
                        "metadata.name",
                        "Required value: name or generateName is required",
                        "FieldValueRequired",
                    )
                ],
            )
        suffix = "".join(secrets.choice(_GENERATE_ALPHABET) for _ in range(5))
        meta["name"] = f"{prefix}{suffix}"
    for key in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
        meta.pop(key, None)
    meta["uid"] = str(uuid.uuid4())
    meta["creationTimestamp"] = now()
    meta["generation"] = 1
    if "status" in rt.subresources:
        obj.pop("status", None)
        if rt.kind == "Namespace":
            obj["status"] = {"phase": "Active"}
        elif rt.kind == "Pod":
            obj["status"] = {"phase": "Pending"}
    if rt.kind == "Namespace":
        labels = meta.setdefault("labels", {})
        if isinstance(labels, dict):
            labels["kubernetes.io/metadata.name"] = meta["name"]
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    validate(rt, obj)
    return obj


def _spec_part(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


_KEPT_META = (
    "name",
    "namespace",
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
)


def prepare_update(rt: ResourceType, old: Obj, new: Obj) -> Outcome:
    """The object a PUT/PATCH of the main resource stores (or DELETE: finalizers are done)."""
    new = check_type(rt, new)
    meta = _meta(new)
    old_meta = old["metadata"]
    if meta.get("name", old_meta["name"]) != old_meta["name"]:
        raise errors.bad_request(
            f"the name of the object ({meta.get('name')}) does not match the name on the URL"
            f" ({old_meta['name']})"
        )
    if rt.namespaced and meta.get("namespace", old_meta["namespace"]) != old_meta["namespace"]:
        raise errors.bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
        )
    for key in _KEPT_META:
        if key in old_meta:
            meta[key] = old_meta[key]
        else:
            meta.pop(key, None)
    meta.pop("resourceVersion", None)
    if "status" in rt.subresources:
        if "status" in old:
            new["status"] = old["status"]
        else:
            new.pop("status", None)
    if _spec_part(new) != _spec_part(old):
        meta["generation"] = int(old_meta.get("generation", 1)) + 1
    if rt.kind == "Namespace":
        labels = meta.setdefault("labels", {})
        if isinstance(labels, dict):
            labels["kubernetes.io/metadata.name"] = meta["name"]
    validate(rt, new)
    if old_meta.get("deletionTimestamp") and not meta.get("finalizers"):
        return DELETE
    return new


def prepare_status_update(rt: ResourceType, old: Obj, new: Obj) -> Obj:
    """A PUT/PATCH of ``/status``: the stored object with only its status replaced."""
    new = check_type(rt, new)
    out = {k: v for k, v in old.items() if k != "status"}
    out["metadata"] = {k: v for k, v in old["metadata"].items() if k != "resourceVersion"}
    if "status" in new:
        out["status"] = new["status"]
    return out


def mark_deleting(old: Obj) -> Obj:
    """An object with finalizers asked to be deleted: ``deletionTimestamp`` set, kept."""
    out = {**old, "metadata": {**old["metadata"]}}
    out["metadata"].pop("resourceVersion", None)
    out["metadata"].setdefault("deletionTimestamp", now())
    out["metadata"].setdefault("deletionGracePeriodSeconds", 0)
    return out
