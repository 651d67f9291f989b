"""Server-side printing: ``meta.k8s.io/v1`` Tables with kubectl's columns per kind.

``kubectl get`` asks for ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io`` and prints
whatever columns the server returns; a plain list prints only NAME and AGE (kubectl-facts.md §3).
So the columns kube-apiserver's printers (``pkg/printers/internalversion``) produce for the
kinds users look at are reproduced here: Pod (Ready, Status, Restarts, and with ``-o wide`` IP,
Node, Nominated Node, Readiness Gates), Namespace, Node, Service, Deployment, and for Cilium's
CRDs their ``additionalPrinterColumns`` (CiliumEndpoint: Security Identity, Endpoint State,
IPv4, IPv6; policies: Age, Valid). Every other kind gets Name and Age. Each row carries the
object as ``PartialObjectMetadata`` (what NAMESPACE, ``-L`` and ``--show-labels`` read), the
whole object with ``includeObject=Object`` (``--sort-by``), or nothing with ``None``. Ages are
formatted as ``k8s.io/apimachinery/pkg/util/duration.HumanDuration`` (``5s``, ``3m20s``, ``2d4h``).

Signatures for the API server (``now``: a timezone-aware datetime, default the current time)::

    to_table(resource, objects, include_object="Metadata", resource_version="", *,
             continue_token="", now=None) -> dict
    render(resource, objects, resource_version="", include_object=None) -> dict  # same, shorter
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ciliary.k8s.resources import ResourceType

__all__ = ["human_duration", "render", "to_table"]

Obj = Mapping[str, Any]
Cell = str | int | None


def human_duration(seconds: float) -> str:
    """``duration.HumanDuration``: how kubectl prints ages."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if hours < 24 * 365 * 2:
        return f"{days}d"
    if hours < 24 * 365 * 8:
        return f"{days // 365}y{days % 365}d" if days % 365 else f"{days // 365}y"
    return f"{days // 365}y"


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _since(text: Any, now: datetime) -> str:
    t = _parse_time(text)
    return "<unknown>" if t is None else human_duration((now - t).total_seconds())


def _get(obj: Any, *path: str | int) -> Any:
    for part in path:
        if isinstance(part, int):
            obj = obj[part] if isinstance(obj, list) and len(obj) > part else None
        else:
            obj = obj.get(part) if isinstance(obj, Mapping) else None
    return obj


def _none(value: Any) -> str:
    return str(value) if value not in (None, "", []) else "<none>"


# --------------------------------------------------------------------------- per kind


@dataclass(frozen=True)
class Column:
    name: str
    type: str = "string"
    priority: int = 0
    format: str = ""
    description: str = ""

    def definition(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "format": self.format,
            "description": self.description or self.name,
            "priority": self.priority,
        }


NAME = Column("Name", format="name", description="Name must be unique within a namespace.")
AGE = Column(
    "Age",
    description="CreationTimestamp is a timestamp representing the server time "
    "when this object was created.",
)

Printer = Callable[[Obj, datetime], list[Cell]]


def _age(obj: Obj, now: datetime) -> str:
    return _since(_get(obj, "metadata", "creationTimestamp"), now)


def _pod_status(pod: Obj) -> str:
    """The STATUS column as kubectl's printPod derives it (simplified: no sidecar nuances)."""
    status = _get(pod, "status") or {}
    reason = status.get("reason") or status.get("phase") or "Unknown"
    init_statuses = status.get("initContainerStatuses") or []
    init_total = len(_get(pod, "spec", "initContainers") or [])
    initializing = False
    for i, cs in enumerate(init_statuses):
        terminated = _get(cs, "state", "terminated")
        waiting = _get(cs, "state", "waiting")
        if terminated and terminated.get("exitCode") == 0:
            continue
        initializing = True
        if terminated:
            reason = "Init:" + (
                terminated.get("reason")
                or (f"Signal:{terminated['signal']}" if terminated.get("signal") else None)
                or f"ExitCode:{terminated.get('exitCode', 0)}"
            )
        elif waiting and waiting.get("reason") and waiting["reason"] != "PodInitializing":
            reason = f"Init:{waiting['reason']}"
        else:
            reason = f"Init:{i}/{init_total}"
        break
    if not initializing:
        has_running = False
        for cs in reversed(status.get("containerStatuses") or []):
            waiting = _get(cs, "state", "waiting")
            terminated = _get(cs, "state", "terminated")
            if waiting and waiting.get("reason"):
                reason = waiting["reason"]
            elif terminated and terminated.get("reason"):
                reason = terminated["reason"]
            elif terminated:
                reason = (
                    f"Signal:{terminated['signal']}"
                    if terminated.get("signal")
                    else f"ExitCode:{terminated.get('exitCode', 0)}"
                )
            elif _get(cs, "ready") and _get(cs, "state", "running") is not None:
                has_running = True
        if reason == "Completed" and has_running:
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or []
            )
            reason = "Running" if ready else "NotReady"
    if _get(pod, "metadata", "deletionTimestamp"):
        reason = "Unknown" if status.get("reason") == "NodeLost" else "Terminating"
    return str(reason)


def _pod(pod: Obj, now: datetime) -> list[Cell]:
    statuses = _get(pod, "status", "containerStatuses") or []
    total = len(_get(pod, "spec", "containers") or [])
    ready = sum(1 for cs in statuses if cs.get("ready"))
    restarts = sum(int(cs.get("restartCount") or 0) for cs in statuses)
    last = max(
        (
            t
            for cs in statuses
            if (t := _parse_time(_get(cs, "lastState", "terminated", "finishedAt")))
        ),
        default=None,
    )
    restart_cell = (
        f"{restarts} ({human_duration((now - last).total_seconds())} ago)"
        if restarts and last
        else str(restarts)
    )
    gates = _get(pod, "spec", "readinessGates") or []
    conditions = {c.get("type"): c.get("status") for c in _get(pod, "status", "conditions") or []}
    gates_cell = (
        f"{sum(1 for g in gates if conditions.get(g.get('conditionType')) == 'True')}/{len(gates)}"
        if gates
        else "<none>"
    )
    return [
        _get(pod, "metadata", "name"),
        f"{ready}/{total}",
        _pod_status(pod),
        restart_cell,
        _age(pod, now),
        _none(_get(pod, "status", "podIP")),
        _none(_get(pod, "spec", "nodeName")),
        _none(_get(pod, "status", "nominatedNodeName")),
        gates_cell,
    ]


def _namespace(ns: Obj, now: datetime) -> list[Cell]:
    return [_get(ns, "metadata", "name"), _get(ns, "status", "phase") or "", _age(ns, now)]


def _node(node: Obj, now: datetime) -> list[Cell]:
    conditions = _get(node, "status", "conditions") or []
    ready = next((c.get("status") for c in conditions if c.get("type") == "Ready"), None)
    status = {"True": "Ready", "False": "NotReady"}.get(str(ready), "Unknown")
    if _get(node, "spec", "unschedulable"):
        status += ",SchedulingDisabled"
    labels = _get(node, "metadata", "labels") or {}
    roles = sorted(
        k.partition("/")[2]
        for k in labels
        if k.startswith("node-role.kubernetes.io/") and k.partition("/")[2]
    )
    if "kubernetes.io/role" in labels:
        roles.append(labels["kubernetes.io/role"])
    addresses = _get(node, "status", "addresses") or []

    def address(kind: str) -> str:
        return _none(next((a.get("address") for a in addresses if a.get("type") == kind), None))

    info = _get(node, "status", "nodeInfo") or {}
    return [
        _get(node, "metadata", "name"),
        status,
        ",".join(roles) or "<none>",
        _age(node, now),
        info.get("kubeletVersion") or "",
        address("InternalIP"),
        address("ExternalIP"),
        info.get("osImage") or "<unknown>",
        info.get("kernelVersion") or "<unknown>",
        info.get("containerRuntimeVersion") or "<unknown>",
    ]


def _service(svc: Obj, now: datetime) -> list[Cell]:
    spec = _get(svc, "spec") or {}
    kind = spec.get("type") or "ClusterIP"
    if kind == "ExternalName":
        external = spec.get("externalName") or "<none>"
    elif kind == "LoadBalancer":
        ingress = _get(svc, "status", "loadBalancer", "ingress") or []
        ips = [i.get("ip") or i.get("hostname") for i in ingress] + list(
            spec.get("externalIPs") or []
        )
        external = ",".join(x for x in ips if x) or "<pending>"
    else:
        external = ",".join(spec.get("externalIPs") or []) or "<none>"
    ports = []
    for p in spec.get("ports") or []:
        node_port = f":{p['nodePort']}" if p.get("nodePort") else ""
        ports.append(f"{p.get('port')}{node_port}/{p.get('protocol') or 'TCP'}")
    selector = spec.get("selector") or {}
    return [
        _get(svc, "metadata", "name"),
        kind,
        _none(spec.get("clusterIP")),
        external,
        ",".join(ports) or "<none>",
        _age(svc, now),
        ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "<none>",
    ]


def _deployment(d: Obj, now: datetime) -> list[Cell]:
    status = _get(d, "status") or {}
    desired = _get(d, "spec", "replicas")
    desired = 1 if desired is None else desired
    containers = _get(d, "spec", "template", "spec", "containers") or []
    sel = _get(d, "spec", "selector") or {}
    sel_parts = [f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items())]
    return [
        _get(d, "metadata", "name"),
        f"{status.get('readyReplicas') or 0}/{desired}",
        int(status.get("updatedReplicas") or 0),
        int(status.get("availableReplicas") or 0),
        _age(d, now),
        ",".join(c.get("name", "") for c in containers),
        ",".join(c.get("image", "") for c in containers),
        ",".join(sel_parts) or "<none>",
    ]


def _policy(p: Obj, now: datetime) -> list[Cell]:
    valid = next(
        (
            c.get("status")
            for c in _get(p, "status", "conditions") or []
            if c.get("type") == "Valid"
        ),
        None,
    )
    return [_get(p, "metadata", "name"), _age(p, now), valid]


def _endpoint(cep: Obj, now: datetime) -> list[Cell]:
    del now  # Cilium's printer columns have no age
    return [
        _get(cep, "metadata", "name"),
        _get(cep, "status", "identity", "id"),
        _get(cep, "status", "policy", "ingress", "state"),
        _get(cep, "status", "policy", "egress", "state"),
        _get(cep, "status", "state"),
        _get(cep, "status", "networking", "addressing", 0, "ipv4"),
        _get(cep, "status", "networking", "addressing", 0, "ipv6"),
    ]


def _default(obj: Obj, now: datetime) -> list[Cell]:
    return [_get(obj, "metadata", "name"), _age(obj, now)]


_WIDE = 1
_PRINTERS: dict[tuple[str, str], tuple[tuple[Column, ...], Printer]] = {
    ("", "Pod"): (
        (
            NAME,
            Column(
                "Ready",
                description="The aggregate readiness state of this pod for accepting traffic.",
            ),
            Column("Status", description="The aggregate status of the containers in this pod."),
            Column(
                "Restarts",
                description="The number of times the containers in this pod have been restarted "
                "and when the last container in this pod has restarted.",
            ),
            AGE,
            Column("IP", priority=_WIDE, description="IP address allocated to the pod."),
            Column("Node", priority=_WIDE, description="Name of the Node the Pod is assigned to."),
            Column(
                "Nominated Node",
                priority=_WIDE,
                description="Name of the node where this pod has been nominated to.",
            ),
            Column("Readiness Gates", priority=_WIDE, description="Readiness gates of the pod."),
        ),
        _pod,
    ),
    ("", "Namespace"): ((NAME, Column("Status"), AGE), _namespace),
    ("", "Node"): (
        (
            NAME,
            Column("Status"),
            Column("Roles"),
            AGE,
            Column("Version"),
            Column("Internal-IP", priority=_WIDE),
            Column("External-IP", priority=_WIDE),
            Column("OS-Image", priority=_WIDE),
            Column("Kernel-Version", priority=_WIDE),
            Column("Container-Runtime", priority=_WIDE),
        ),
        _node,
    ),
    ("", "Service"): (
        (
            NAME,
            Column("Type"),
            Column("Cluster-IP"),
            Column("External-IP"),
            Column("Port(s)"),
            AGE,
            Column("Selector", priority=_WIDE),
        ),
        _service,
    ),
    ("apps", "Deployment"): (
        (
            NAME,
            Column("Ready"),
            Column("Up-to-date", type="integer"),
            Column("Available", type="integer"),
            AGE,
            Column("Containers", priority=_WIDE),
            Column("Images", priority=_WIDE),
            Column("Selector", priority=_WIDE),
        ),
        _deployment,
    ),
    ("cilium.io", "CiliumNetworkPolicy"): (
        (NAME, Column("Age", type="date"), Column("Valid")),
        _policy,
    ),
    ("cilium.io", "CiliumClusterwideNetworkPolicy"): (
        (NAME, Column("Age", type="date"), Column("Valid")),
        _policy,
    ),
    ("cilium.io", "CiliumEndpoint"): (
        (
            NAME,
            Column("Security Identity", type="integer"),
            Column("Ingress Enforcement", priority=_WIDE),
            Column("Egress Enforcement", priority=_WIDE),
            Column("Endpoint State"),
            Column("IPv4"),
            Column("IPv6"),
        ),
        _endpoint,
    ),
}


def to_table(
    resource: ResourceType,
    objects: Sequence[Obj],
    include_object: str | None = "Metadata",
    resource_version: str = "",
    *,
    continue_token: str = "",
    now: datetime | None = None,
) -> dict[str, Any]:
    """A ``meta.k8s.io/v1`` Table of ``objects`` (of ``resource``). ``include_object`` is the
    request's ``includeObject``: ``None``, ``Metadata`` (the default) or ``Object``."""
    columns, printer = _PRINTERS.get((resource.group, resource.kind), ((NAME, AGE), _default))
    when = now or datetime.now(UTC)
    mode = include_object or "Metadata"
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": printer(obj, when)}
        if mode == "Object":
            row["object"] = dict(obj)
        elif mode != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": dict(obj.get("metadata") or {}),
            }
        rows.append(row)
    metadata: dict[str, Any] = {"resourceVersion": resource_version}
    if continue_token:
        metadata["continue"] = continue_token
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": [c.definition() for c in columns],
        "rows": rows,
    }


def render(
    resource: ResourceType,
    objects: Sequence[Obj],
    resource_version: str = "",
    include_object: str | None = None,
) -> dict[str, Any]:
    """:func:`to_table` with the arguments in the order a watch or get handler has them."""
    return to_table(resource, objects, include_object, resource_version)
