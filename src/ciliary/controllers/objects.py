"""What controllers read from and write into objects: owners, pod readiness, pod templates.

Objects stay the API's JSON dicts (an informer's cache must not lose fields a pod template
carries, which the typed models of :mod:`ciliary.k8s` drop); selectors are matched by
:mod:`ciliary.k8s.labelselector`, the one matcher the API server also uses.

The pod-template hash: Kubernetes names a Deployment's ReplicaSets ``<deployment>-<hash>`` with
``hash`` = FNV-32a over Go's ``spew`` dump of the template (plus the collision count), rendered
by apimachinery's ``SafeEncodeString`` (the decimal digits mapped into
``bcdfghjklmnpqrstvwxz2456789``). A spew dump of Go structs cannot be reproduced from JSON, so
:func:`template_hash` takes the first 32 bits of SHA-256 over the template's canonical JSON
(sorted keys, no spaces) and the collision count, rendered the same way: the same template
always gives the same name (controller restarts adopt their ReplicaSets), a changed template a
new one, and the names look like Kubernetes' (``web-5d8f9c7b6``), but they are not the names a
real cluster would choose for the same template.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ciliary.k8s.labelselector import Selector, SelectorError
from ciliary.kube.client import KubeObject

SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery's rand.SafeEncodeString
POD_TEMPLATE_HASH = "pod-template-hash"
CONTROLLER_REVISION_HASH = "controller-revision-hash"


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def meta(obj: KubeObject) -> dict[str, Any]:
    m: dict[str, Any] = obj["metadata"]
    return m


def spec(obj: KubeObject) -> dict[str, Any]:
    s: dict[str, Any] = obj.get("spec") or {}
    return s


def status(obj: KubeObject) -> dict[str, Any]:
    s: dict[str, Any] = obj.get("status") or {}
    return s


def deleting(obj: KubeObject) -> bool:
    return bool(meta(obj).get("deletionTimestamp"))


# ------------------------------------------------------------------------------ owners


def owner_reference(owner: KubeObject, *, controller: bool = True) -> KubeObject:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta(owner)["name"],
        "uid": meta(owner)["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def controller_ref(obj: KubeObject) -> KubeObject | None:
    """The ownerReference with ``controller: true`` (at most one may have it)."""
    for ref in meta(obj).get("ownerReferences") or []:
        if ref.get("controller"):
            r: KubeObject = ref
            return r
    return None


def controlled_by(obj: KubeObject, owner: KubeObject) -> bool:
    ref = controller_ref(obj)
    return ref is not None and ref.get("uid") == meta(owner).get("uid")


def controller_key(obj: KubeObject, kind: str) -> str | None:
    """``namespace/name`` of the controller of kind ``kind`` owning ``obj``, if any."""
    ref = controller_ref(obj)
    if ref is None or ref.get("kind") != kind:
        return None
    return f"{meta(obj).get('namespace')}/{ref['name']}"


# ------------------------------------------------------------------------------ selectors


def selector_of(obj: KubeObject) -> Selector | None:
    """The workload's ``spec.selector`` (None when absent or invalid: such a workload selects
    nothing, and kube-apiserver would have refused it)."""
    doc = spec(obj).get("selector")
    if not doc:
        return None
    try:
        return Selector.from_label_selector(doc, "spec.selector")
    except SelectorError:
        return None


def labels(obj: KubeObject) -> Mapping[str, str]:
    got: Mapping[str, str] = meta(obj).get("labels") or {}
    return got


# ------------------------------------------------------------------------------ pods


def condition(obj: KubeObject, kind: str) -> KubeObject | None:
    for c in status(obj).get("conditions") or []:
        if c.get("type") == kind:
            found: KubeObject = c
            return found
    return None


def pod_ready(pod: KubeObject) -> bool:
    c = condition(pod, "Ready")
    return c is not None and c.get("status") == "True"


def pod_available(pod: KubeObject, min_ready_seconds: int, at: float) -> bool:
    """Ready for at least ``min_ready_seconds`` (kube's ``IsPodAvailable``)."""
    if not pod_ready(pod):
        return False
    if min_ready_seconds <= 0:
        return True
    since = parse_time((condition(pod, "Ready") or {}).get("lastTransitionTime"))
    return since is not None and since + min_ready_seconds <= at


def available_in(pod: KubeObject, min_ready_seconds: int, at: float) -> float | None:
    """Seconds until a ready pod turns available (None when it is not ready or already is)."""
    if min_ready_seconds <= 0 or not pod_ready(pod):
        return None
    since = parse_time((condition(pod, "Ready") or {}).get("lastTransitionTime"))
    if since is None or since + min_ready_seconds <= at:
        return None
    return since + min_ready_seconds - at


def pod_active(pod: KubeObject) -> bool:
    """Counts toward a controller's replicas: not being deleted, not finished."""
    return not deleting(pod) and status(pod).get("phase") not in ("Succeeded", "Failed")


def template_hash(template: KubeObject, collision_count: int = 0) -> str:
    """A short, stable name-safe hash of a pod template (see the module docstring)."""
    text = json.dumps(template, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(f"{text}|{collision_count}".encode()).digest()
    number = int.from_bytes(digest[:4], "big")
    return "".join(SAFE_ALPHABET[ord(ch) % len(SAFE_ALPHABET)] for ch in str(number))


def pod_from_template(
    owner: KubeObject,
    template: KubeObject,
    *,
    name: str | None = None,
    extra_labels: Mapping[str, str] | None = None,
) -> KubeObject:
    """A new pod of ``owner`` (ownerReference with ``controller: true``): the template's labels,
    annotations and spec; ``name``, or ``generateName`` ``<owner>-`` as kube's controllers do."""
    tmeta = template.get("metadata") or {}
    pod_meta: KubeObject = {
        "namespace": meta(owner)["namespace"],
        "labels": {**(tmeta.get("labels") or {}), **(extra_labels or {})},
        "ownerReferences": [owner_reference(owner)],
    }
    if tmeta.get("annotations"):
        pod_meta["annotations"] = dict(tmeta["annotations"])
    if name:
        pod_meta["name"] = name
    else:
        pod_meta["generateName"] = f"{meta(owner)['name']}-"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": pod_meta,
        "spec": copy.deepcopy(template.get("spec") or {}),
    }


def replicas(obj: KubeObject, default: int = 1) -> int:
    value = spec(obj).get("replicas")
    return int(value) if isinstance(value, int) else default


def min_ready_seconds(obj: KubeObject) -> int:
    value = spec(obj).get("minReadySeconds")
    return int(value) if isinstance(value, int) else 0


def tolerates(pod_spec: KubeObject, taint: KubeObject) -> bool:
    """A pod tolerates a taint (kube's ``Toleration.ToleratesTaint``)."""
    for t in pod_spec.get("tolerations") or []:
        effect = t.get("effect") or ""
        if effect and effect != taint.get("effect"):
            continue
        key = t.get("key") or ""
        operator = t.get("operator") or "Equal"
        if key and key != taint.get("key"):
            continue
        if not key and operator != "Exists":
            continue
        if operator == "Exists" or (t.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def fits_node(pod_spec: KubeObject, node: KubeObject) -> str | None:
    """Why the pod cannot go to ``node`` (None when it can): the node's labels must match the
    pod's ``nodeSelector``; a node marked ``spec.unschedulable`` takes only pods tolerating
    ``node.kubernetes.io/unschedulable:NoSchedule``; NoSchedule/NoExecute taints must be
    tolerated (kube-scheduler's NodeAffinity, NodeUnschedulable and TaintToleration filters;
    node affinity terms are not read)."""
    selector = pod_spec.get("nodeSelector") or {}
    node_labels = labels(node)
    if any(node_labels.get(k) != v for k, v in selector.items()):
        return "didn't match Pod's node affinity/selector"
    if spec(node).get("unschedulable") and not tolerates(
        pod_spec, {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
    ):
        return "were unschedulable"
    for taint in spec(node).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(pod_spec, taint):
            key, value = taint.get("key"), taint.get("value", "")
            return f"had untolerated taint {{{key}: {value}}}"
    return None


def node_fit_changed(old: KubeObject, new: KubeObject) -> bool:
    """Whether a node update can change which pods fit it (labels or spec: taints, cordon); a
    status heartbeat cannot."""
    return (labels(old), spec(old)) != (labels(new), spec(new))
