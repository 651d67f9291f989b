"""A metric's context options: which extra labels it has and how a flow fills them.

Upstream's ``pkg/hubble/metrics/api`` context options, shared by every handler:
``sourceContext``/``destinationContext`` (and their ``Egress``/``Ingress`` variants) add a
``source``/``destination`` label whose value is the first non-empty of a ``|`` chain of
identifiers; ``labelsContext`` adds separate labels (source_ip, source_namespace, ...
traffic_direction), always present even when empty. The small flow readers the handlers share
(protocol, verdict, direction names) live here too, next to the context values built from them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ciliary.core.flow import (
    MSG_ACCESS_LOG,
    MSG_CAPTURE,
    MSG_DROP,
    MSG_POLICY_VERDICT,
    MSG_TRACE,
    ReservedIdentity,
)
from ciliary.hubble.api.flow import flow_pb2

_KUBE_APISERVER_LABEL = ReservedIdentity.KUBE_APISERVER.label

# ---- flow readers ----------------------------------------------------------------------------


_enum_names: dict[object, dict[int, str]] = {}
"""Per enum wrapper, number → name, as its ``Name`` answers (``Name`` goes through the
descriptor in Python on every call)."""


def enum_name(enum: Any, value: int) -> str:
    """Name of ``value`` in a protobuf enum; the number if it has none."""
    names = _enum_names.get(enum)
    if names is None:
        by_number = enum.DESCRIPTOR.values_by_number
        names = _enum_names[enum] = {n: str(v.name) for n, v in by_number.items()}
    name = names.get(value)
    return name if name is not None else str(value)


def verdict_name(flow: flow_pb2.Flow) -> str:
    """The flow's verdict as its enum name (``FORWARDED``)."""
    return enum_name(flow_pb2.Verdict, flow.verdict)


def flow_protocol(flow: flow_pb2.Flow) -> str:
    """Upstream's ``v1.FlowProtocol``: the L7 protocol if any, else the L4 protocol."""
    kind = flow.event_type.type
    if kind == MSG_ACCESS_LOG:
        record = flow.l7.WhichOneof("record") if flow.HasField("l7") else None
        return {"dns": "DNS", "http": "HTTP"}.get(record or "", "Unknown L7")
    if kind in (MSG_DROP, MSG_TRACE, MSG_POLICY_VERDICT, MSG_CAPTURE):
        proto = flow.l4.WhichOneof("protocol") if flow.HasField("l4") else None
        return proto if proto else "Unknown L4"
    return "Unknown flow"


def is_reply(flow: flow_pb2.Flow) -> bool | None:
    """``is_reply`` when the flow knows it, else None."""
    return flow.is_reply.value if flow.HasField("is_reply") else None


def direction_name(flow: flow_pb2.Flow) -> str:
    """``ingress``, ``egress``, ``traffic_direction_unknown``."""
    return enum_name(flow_pb2.TrafficDirection, flow.traffic_direction).lower()


# ---- context options -----------------------------------------------------------------------

CONTEXT_IDENTIFIERS = (
    "identity",
    "namespace",
    "pod",
    "pod-short",
    "pod-name",
    "dns",
    "ip",
    "reserved-identity",
    "workload",
    "workload-name",
    "app",
)
CONTEXT_LABELS = (
    "source_ip",
    "source_pod",
    "source_namespace",
    "source_workload",
    "source_workload_kind",
    "source_app",
    "destination_ip",
    "destination_pod",
    "destination_namespace",
    "destination_workload",
    "destination_workload_kind",
    "destination_app",
    "traffic_direction",
)
CONTEXT_KEYS = {
    "sourcecontext": "source",
    "sourceegresscontext": "source_egress",
    "sourceingresscontext": "source_ingress",
    "destinationcontext": "destination",
    "destinationegresscontext": "destination_egress",
    "destinationingresscontext": "destination_ingress",
}
_SHORT_POD = re.compile(r"^(.+?)(-[a-z0-9]+){1,2}$")
_APP_LABELS = ("k8s:app.kubernetes.io/name=", "k8s:k8s-app=", "k8s:app=")


def _app_of(labels: Iterable[str]) -> str:
    for label in labels:
        for prefix in _APP_LABELS:
            if label.startswith(prefix) and label[len(prefix) :]:
                return label[len(prefix) :]
    return ""


def _reserved_of(labels: Sequence[str]) -> str:
    if _KUBE_APISERVER_LABEL in labels:
        return _KUBE_APISERVER_LABEL
    return next((label for label in labels if label.startswith("reserved:")), "")


def _context_value(ident: str, flow: flow_pb2.Flow, source: bool) -> str:
    ep = flow.source if source else flow.destination
    workload = ep.workloads[0] if ep.workloads else None
    if ident == "namespace":
        return ep.namespace
    if ident == "identity":
        return ",".join(ep.labels)
    if ident in ("pod", "pod-short"):
        pod = ep.pod_name if ident == "pod" else _SHORT_POD.sub(r"\1", ep.pod_name)
        return f"{ep.namespace}/{pod}" if ep.namespace else pod
    if ident == "pod-name":
        return ep.pod_name
    if ident == "dns":
        return ",".join(flow.source_names if source else flow.destination_names)
    if ident == "ip":
        return flow.IP.source if source else flow.IP.destination
    if ident == "reserved-identity":
        return _reserved_of(ep.labels)
    if ident == "workload":
        if workload is None or not workload.name:
            return ""
        return f"{ep.namespace}/{workload.name}" if ep.namespace else workload.name
    if ident == "workload-name":
        return workload.name if workload is not None else ""
    if ident == "app":
        return _app_of(ep.labels)
    raise AssertionError(f"unhandled context identifier {ident}")


def _label_value(label: str, flow: flow_pb2.Flow, invert: bool) -> str:
    if label == "traffic_direction":
        direction = flow.traffic_direction
        return "unknown" if direction == 0 else direction_name(flow)
    side, _, what = label.partition("_")
    source = (side == "source") != invert
    ep = flow.source if source else flow.destination
    if what == "ip":
        return flow.IP.source if source else flow.IP.destination
    if what == "pod":
        return ep.pod_name
    if what == "namespace":
        return ep.namespace
    if what == "workload":
        return ep.workloads[0].name if ep.workloads else ""
    if what == "workload_kind":
        return ep.workloads[0].kind if ep.workloads else ""
    if what == "app":
        return _app_of(ep.labels)
    raise AssertionError(f"unhandled context label {label}")


@dataclass
class ContextOptions:
    """The context options of one metric: which extra labels it has and how to fill them."""

    source: tuple[str, ...] = ()
    source_egress: tuple[str, ...] = ()
    source_ingress: tuple[str, ...] = ()
    destination: tuple[str, ...] = ()
    destination_egress: tuple[str, ...] = ()
    destination_ingress: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()  # in CONTEXT_LABELS order

    def _has_source(self) -> bool:
        return bool(self.source or self.source_egress or self.source_ingress)

    def _has_destination(self) -> bool:
        return bool(self.destination or self.destination_egress or self.destination_ingress)

    def label_names(self) -> list[str]:
        names = list(self.labels)
        if self._has_source():
            names.append("source")
        if self._has_destination():
            names.append("destination")
        return names

    def label_values(self, flow: flow_pb2.Flow, invert: bool = False) -> list[str]:
        """Values in ``label_names`` order; ``invert`` swaps source and destination (for
        metrics taken from reply flows, e.g. httpV2)."""
        if not (
            self.labels
            or self.source
            or self.source_egress
            or self.source_ingress
            or self.destination
            or self.destination_egress
            or self.destination_ingress
        ):
            return []  # no context options (the common case): nothing to read
        values = [_label_value(label, flow, invert) for label in self.labels]
        direction = flow.traffic_direction
        src = self._chain(direction, self.source, self.source_ingress, self.source_egress)
        dst = self._chain(
            direction, self.destination, self.destination_ingress, self.destination_egress
        )
        # inverted, the source chain reads the flow's destination (the request's source)
        src_value = next((v for v in (_context_value(i, flow, not invert) for i in src) if v), "")
        dst_value = next((v for v in (_context_value(i, flow, invert) for i in dst) if v), "")
        if self._has_source():
            values.append(src_value)
        if self._has_destination():
            values.append(dst_value)
        return values

    @staticmethod
    def _chain(
        direction: int,
        both: tuple[str, ...],
        ingress: tuple[str, ...],
        egress: tuple[str, ...],
    ) -> tuple[str, ...]:
        if ingress and direction == flow_pb2.INGRESS:
            return ingress
        if egress and direction == flow_pb2.EGRESS:
            return egress
        return both


def _listed(bad: list[str]) -> str:
    return ", ".join(repr(b) for b in bad) or "''"


def parse_context_options(metric: str, options: dict[str, str]) -> ContextOptions:
    """Context options out of a metric's options (keys are case-insensitive, as upstream)."""
    ctx = ContextOptions()
    for key, value in options.items():
        low = key.lower()
        if low in CONTEXT_KEYS:
            chain = tuple(v for v in value.split("|"))
            bad = [v for v in chain if v.lower() not in CONTEXT_IDENTIFIERS]
            if not value or bad:
                raise ValueError(
                    f"metric {metric!r}: option {key}={value!r}: unknown context "
                    f"{_listed(bad)} (expected a '|'-separated chain "
                    f"of {'|'.join(CONTEXT_IDENTIFIERS)})"
                )
            setattr(ctx, CONTEXT_KEYS[low], tuple(v.lower() for v in chain))
        elif low == "labelscontext":
            wanted = [v for v in value.split(",")]
            bad = [v for v in wanted if v not in CONTEXT_LABELS]
            if not value or bad:
                raise ValueError(
                    f"metric {metric!r}: option {key}={value!r}: invalid labelsContext value "
                    f"{_listed(bad)} (expected a comma-separated list "
                    f"of {', '.join(CONTEXT_LABELS)})"
                )
            ctx.labels = tuple(label for label in CONTEXT_LABELS if label in wanted)
    return ctx
