"""``pods/<name>/binding``: how a scheduler assigns a pod to a node, as kube-apiserver does it.

A scheduler never writes ``spec.nodeName`` itself (the main resource's update would let it
overwrite another scheduler's choice); it creates a ``Binding`` ``{metadata: {name}, target:
{kind: Node, name}}`` and the server, in one read-modify-write of the pod, sets ``nodeName``,
copies the binding's annotations onto the pod and sets the ``PodScheduled`` condition True. A pod
that is already bound or being deleted is 409 Conflict (kube-apiserver's words), so two
schedulers racing for a pod cannot both win; the binding's ``uid`` and ``resourceVersion``, when
given, are preconditions on the pod. The answer is a ``Status`` Success with code 201.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ciliary.apiserver import errors
from ciliary.apiserver.storage import Obj, parse_rv
from ciliary.k8s.meta import now
from ciliary.k8s.resources import ResourceType


@dataclass(frozen=True)
class Binding:
    node: str
    annotations: dict[str, str]
    uid: str | None
    resource_version: int | None


def parse(body: Any, pod_name: str) -> Binding:
    """The request's Binding, checked as kube-apiserver's BindingREST does."""
    if not isinstance(body, dict) or body.get("kind", "Binding") != "Binding":
        raise errors.bad_request("the body of the request must be a v1 Binding")
    meta = body.get("metadata") or {}
    if not isinstance(meta, dict):
        raise errors.bad_request("metadata must be an object")
    if meta.get("name", pod_name) != pod_name:
        raise errors.bad_request("name in URL does not match name in Binding object")
    target = body.get("target") or {}
    if not isinstance(target, dict):
        raise errors.bad_request("target must be an object")
    kind, node = target.get("kind") or "", target.get("name") or ""
    binding_rt = _BINDING
    if kind not in ("", "Node"):
        raise errors.invalid(
            binding_rt, pod_name, [errors.Cause("target.kind", "must be empty or 'Node'")]
        )
    if not isinstance(node, str) or not node:
        raise errors.invalid(
            binding_rt,
            pod_name,
            [errors.Cause("target.name", "Required value", "FieldValueRequired")],
        )
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise errors.bad_request("metadata.annotations must be an object")
    return Binding(
        node,
        {str(k): str(v) for k, v in annotations.items()},
        meta.get("uid") or None,
        parse_rv(meta.get("resourceVersion") or None),
    )


def bind(rt: ResourceType, current: Obj, binding: Binding) -> Obj:
    """The pod ``current`` assigned to ``binding.node`` (a Conflict when it cannot be)."""
    meta = current["metadata"]
    name = meta["name"]
    if binding.uid is not None and binding.uid != meta.get("uid"):
        raise errors.conflict(
            rt,
            name,
            f"Precondition failed: UID in precondition: {binding.uid}, UID in object meta:"
            f" {meta.get('uid')}",
        )
    if meta.get("deletionTimestamp"):
        raise errors.conflict(
            rt, name, f"pod {name} is being deleted, cannot be assigned to a host"
        )
    bound = (current.get("spec") or {}).get("nodeName")
    if bound:
        raise errors.conflict(rt, name, f'pod {name} is already assigned to node "{bound}"')
    new: Obj = json.loads(json.dumps(current))
    new["metadata"].pop("resourceVersion", None)
    if binding.annotations:
        new["metadata"].setdefault("annotations", {}).update(binding.annotations)
    new.setdefault("spec", {})["nodeName"] = binding.node
    status = new.setdefault("status", {})
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]
    conditions.append(
        {"type": "PodScheduled", "status": "True", "lastProbeTime": None,
         "lastTransitionTime": now()}
    )  # fmt: skip
    status["conditions"] = conditions
    return new


SUCCESS: dict[str, Any] = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Success",
    "code": 201,
}

_BINDING = ResourceType("", "v1", "Binding", "bindings", "binding", True)
"""Only for the words of an Invalid answer (``Binding "p" is invalid: target.name: …``):
bindings are not a served resource of their own."""
