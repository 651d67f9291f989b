"""Hubble's flow metrics (``--hubble-metrics``) and the Prometheus endpoint that serves them.

Why here and shaped like this: Hubble metrics are derived from the same decoded flows the
observer keeps in its ring, so they are computed in the observer's flow hook, once per flow, and
never by re-reading the ring. The spec language, metric names, label names and label values are
upstream Hubble's (``pkg/hubble/metrics/*``, Documentation/observability/metrics.rst), so
upstream dashboards, alerts and PromQL work unchanged:

    --hubble-metrics "dns:query;ignoreAAAA drop:sourceContext=pod;destinationContext=pod tcp flow
                      port-distribution icmp policy flows-to-world httpV2:exemplars=true"

Metrics are separated by spaces or commas (as upstream's flag and Helm list); a metric's options
follow ``:`` and are separated by ``;``. A comma inside an option value (``labelsContext=a,b``)
stays in that value: a comma starts a new metric only when a known metric name follows it.

Handlers (one per metric name) and what they count:
  flow              hubble_flows_processed_total{protocol,type,subtype,verdict}
  drop              hubble_drop_total{reason,protocol}                         (DROPPED flows)
  tcp               hubble_tcp_flags_total{flag,family}          (FORWARDED/REDIRECTED TCP)
  port-distribution hubble_port_distribution_total{protocol,port} (non-reply, forwarded)
  icmp              hubble_icmp_total{family,type}
  policy            hubble_policy_verdicts_total{direction,match,action} (policy-verdict events)
  flows-to-world    hubble_flows_to_world_total{protocol,verdict[,port]}  (any-drop, port, syn-only)
  dns               hubble_dns_{queries,responses,response_types}_total   (query, ignoreAAAA)
  http / httpV2     hubble_http_requests_total, hubble_http_request_duration_seconds (+ v1
                    hubble_http_responses_total)                          (exemplars=true)
  kafka             hubble_kafka_requests_total, hubble_kafka_request_duration_seconds
and ``hubble_lost_events_total{source}``, registered whenever any metric is enabled.
The L7 families (dns, http, httpV2, kafka) are accepted and registered, but stay empty until the
datapath produces L7 flows (ciliary has no L7 proxy yet).

Every handler takes upstream's context options: ``sourceContext``/``destinationContext`` (and
their ``Egress``/``Ingress`` variants) add a ``source``/``destination`` label whose value is the
first non-empty of a ``|`` chain of identity|namespace|pod|pod-name|pod-short|dns|ip|
reserved-identity|workload|workload-name|app; ``labelsContext`` adds separate labels
(source_ip, source_namespace, ... traffic_direction), always present even when empty.

Deliberate differences from upstream, each a fix: ICMPv6 messages are labelled family="IPv6"
(upstream says "IPv4"); Kafka's error_code is the decimal number (upstream turns it into a rune);
an unknown option is an error rather than silently ignored; a metric with only an Egress/Ingress
context variant still gets its ``source``/``destination`` label; and httpV2's inverted labels
apply the source chain to the request's source even when only one side has a context.

Threading: ``on_flow``/``on_lost`` and the HTTP exposition all run on the owner's event loop.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder

from ciliary.hubble.api.flow import flow_pb2

log = logging.getLogger(__name__)

NAMESPACE = "hubble"

# monitor message types (CiliumEventType.type), as upstream's pkg/monitor/api
MSG_DROP = 1
MSG_CAPTURE = 3
MSG_TRACE = 4
MSG_POLICY_VERDICT = 5
MSG_ACCESS_LOG = 129

RESERVED_HOST_IDENTITY = 1
WORLD_LABEL = "reserved:world"
KUBE_APISERVER_LABEL = "reserved:kube-apiserver"

TRACE_OBSERVATION_POINTS = {
    0: "to-endpoint",
    1: "to-proxy",
    2: "to-host",
    3: "to-stack",
    4: "to-overlay",
    5: "from-endpoint",
    6: "from-proxy",
    7: "from-host",
    8: "from-stack",
    9: "from-overlay",
    10: "from-network",
    11: "to-network",
    12: "to-crypto",
    13: "from-crypto",
}
POLICY_MATCH_TYPES = {0: "none", 1: "l3-only", 2: "l3-l4", 3: "l4-only", 4: "all"}

# ---- ICMP type/code names (gopacket's ICMPv4TypeCode/ICMPv6TypeCode String()) ----------------

_ICMP4: dict[int, tuple[str, dict[int, str] | None]] = {
    0: ("EchoReply", None),
    3: (
        "DestinationUnreachable",
        dict(enumerate((
            "Net", "Host", "Protocol", "Port", "FragmentationNeeded", "SourceRoutingFailed",
            "NetUnknown", "HostUnknown", "SourceIsolated", "NetAdminProhibited",
            "HostAdminProhibited", "NetTOS", "HostTOS", "CommAdminProhibited", "HostPrecedence",
            "PrecedenceCutoff",
        ))),
    ),
    4: ("SourceQuench", None),
    5: ("Redirect", {0: "Net", 1: "Host", 2: "TOS+Net", 3: "TOS+Host"}),
    8: ("EchoRequest", None),
    9: ("RouterAdvertisement", None),
    10: ("RouterSolicitation", None),
    11: ("TimeExceeded", {0: "TTLExceeded", 1: "FragmentReassemblyTimeExceeded"}),
    12: ("ParameterProblem", {0: "PointerIndicatesError", 1: "MissingOption", 2: "BadLength"}),
    13: ("TimestampRequest", None),
    14: ("TimestampReply", None),
    15: ("InfoRequest", None),
    16: ("InfoReply", None),
    17: ("AddressMaskRequest", None),
    18: ("AddressMaskReply", None),
}  # fmt: skip
_ICMP6: dict[int, tuple[str, dict[int, str] | None]] = {
    1: (
        "DestinationUnreachable",
        dict(enumerate((
            "NoRouteToDst", "AdminProhibited", "BeyondScopeOfSrc", "AddressUnreachable",
            "PortUnreachable", "SrcAddressFailedPolicy", "RejectRouteToDst",
        ))),
    ),
    2: ("PacketTooBig", None),
    3: ("TimeExceeded", {0: "HopLimitExceeded", 1: "FragmentReassemblyTimeExceeded"}),
    4: (
        "ParameterProblem",
        {0: "ErroneousHeaderField", 1: "UnrecognizedNextHeader", 2: "UnrecognizedIPv6Option"},
    ),
    128: ("EchoRequest", None),
    129: ("EchoReply", None),
    133: ("RouterSolicitation", None),
    134: ("RouterAdvertisement", None),
    135: ("NeighborSolicitation", None),
    136: ("NeighborAdvertisement", None),
    137: ("Redirect", None),
}  # fmt: skip


def icmp_type_name(table: dict[int, tuple[str, dict[int, str] | None]], typ: int, code: int) -> str:
    """Type/code as gopacket prints them: ``EchoRequest``, ``DestinationUnreachable(Port)``."""
    info = table.get(typ)
    if info is None:
        return f"{typ}({code})"
    name, codes = info
    if codes is None:
        return name if code == 0 else f"{name}(Code: {code})"
    code_name = codes.get(code)
    return f"{name}({code_name})" if code_name is not None else f"{name}(Code: {code})"


DNS_RCODES = {
    0: "No Error",
    1: "Format Error",
    2: "Server Failure",
    3: "Non-Existent Domain",
    4: "Not Implemented",
    5: "Query Refused",
    6: "Name Exists when it should not",
    7: "RR Set Exists when it should not",
    8: "RR Set that should exist does not",
    9: "Not Authorized",
    10: "Name not contained in zone",
    11: "DSO-TYPE Not Implemented",
    16: "Bad OPT Version",
    17: "Key not recognized",
    18: "Signature out of time window",
    19: "Bad TKEY Mode",
    20: "Duplicate key name",
    21: "Algorithm not supported",
    22: "Bad Truncation",
    23: "Bad/missing Server Cookie",
}

# ---- flow helpers --------------------------------------------------------------------------


def _enum_name(enum: Any, value: int) -> str:
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)


def verdict_name(flow: flow_pb2.Flow) -> str:
    return _enum_name(flow_pb2.Verdict, flow.verdict)


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


def _is_reply(flow: flow_pb2.Flow) -> bool | None:
    return flow.is_reply.value if flow.HasField("is_reply") else None


def _direction(flow: flow_pb2.Flow) -> str:
    return _enum_name(flow_pb2.TrafficDirection, flow.traffic_direction).lower()


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
_CONTEXT_KEYS = {
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
    if KUBE_APISERVER_LABEL in labels:
        return KUBE_APISERVER_LABEL
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
        return "unknown" if direction == 0 else _direction(flow)
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
        if ingress and direction == flow_pb2.TrafficDirection.INGRESS:
            return ingress
        if egress and direction == flow_pb2.TrafficDirection.EGRESS:
            return egress
        return both


def _listed(bad: list[str]) -> str:
    return ", ".join(repr(b) for b in bad) or "''"


def parse_context_options(metric: str, options: dict[str, str]) -> ContextOptions:
    """Context options out of a metric's options (keys are case-insensitive, as upstream)."""
    ctx = ContextOptions()
    for key, value in options.items():
        low = key.lower()
        if low in _CONTEXT_KEYS:
            chain = tuple(v for v in value.split("|"))
            bad = [v for v in chain if v.lower() not in CONTEXT_IDENTIFIERS]
            if not value or bad:
                raise ValueError(
                    f"metric {metric!r}: option {key}={value!r}: unknown context "
                    f"{_listed(bad)} (expected a '|'-separated chain "
                    f"of {'|'.join(CONTEXT_IDENTIFIERS)})"
                )
            setattr(ctx, _CONTEXT_KEYS[low], tuple(v.lower() for v in chain))
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


# ---- spec parsing --------------------------------------------------------------------------

_CONTEXT_OPTION_KEYS = frozenset({*_CONTEXT_KEYS, "labelscontext"})
# metric name → its own option keys (lower case) besides the context options
METRIC_OPTIONS: dict[str, frozenset[str]] = {
    "flow": frozenset(),
    "drop": frozenset(),
    "tcp": frozenset(),
    "port-distribution": frozenset(),
    "icmp": frozenset(),
    "policy": frozenset(),
    "flows-to-world": frozenset({"any-drop", "port", "syn-only"}),
    "dns": frozenset({"query", "ignoreaaaa"}),
    "http": frozenset({"exemplars"}),
    "httpV2": frozenset({"exemplars"}),
    "kafka": frozenset(),
}


@dataclass(frozen=True)
class MetricSpec:
    name: str
    options: dict[str, str] = field(default_factory=dict)


def _split_metrics(spec: str) -> list[str]:
    out: list[str] = []
    for token in spec.split():
        for piece in token.split(","):
            name = piece.split(":", 1)[0]
            if name in METRIC_OPTIONS or not out or not piece:
                out.append(piece)
            else:  # a comma inside an option value (labelsContext=a,b)
                out[-1] += "," + piece
    return [p for p in out if p]


def parse_metrics_spec(spec: str | Sequence[str]) -> list[MetricSpec]:
    """``--hubble-metrics`` text (or a list of its items) → metric specs; ValueError if invalid."""
    text = spec if isinstance(spec, str) else " ".join(spec)
    specs: list[MetricSpec] = []
    for item in _split_metrics(text):
        name, _, opts = item.partition(":")
        if name not in METRIC_OPTIONS:
            raise ValueError(
                f"unknown Hubble metric {name!r} in {item!r} (expected one of: "
                f"{', '.join(METRIC_OPTIONS)})"
            )
        if any(s.name == name for s in specs):
            raise ValueError(f"Hubble metric {name!r} is given twice")
        options: dict[str, str] = {}
        for opt in opts.split(";"):
            if not opt:
                continue
            key, _, value = opt.partition("=")
            if key.lower() not in _CONTEXT_OPTION_KEYS | METRIC_OPTIONS[name]:
                own = sorted(METRIC_OPTIONS[name])
                raise ValueError(
                    f"metric {name!r}: unknown option {key!r} (expected "
                    f"{', '.join([*own, 'sourceContext', 'destinationContext', 'labelsContext'])}"
                    " or their Egress/Ingress variants)"
                )
            options[key] = value
        specs.append(MetricSpec(name, options))
    names = {s.name for s in specs}
    if {"http", "httpV2"} <= names:
        raise ValueError("Hubble metrics 'http' and 'httpV2' cannot be enabled together")
    return specs


# ---- handlers ------------------------------------------------------------------------------


class Handler(Protocol):
    def process(self, flow: flow_pb2.Flow) -> None: ...


def _counter(registry: CollectorRegistry, name: str, doc: str, labels: Sequence[str]) -> Counter:
    return Counter(f"{NAMESPACE}_{name}", doc, labelnames=list(labels), registry=registry)


def _histogram(
    registry: CollectorRegistry, name: str, doc: str, labels: Sequence[str]
) -> Histogram:
    return Histogram(f"{NAMESPACE}_{name}", doc, labelnames=list(labels), registry=registry)


class FlowHandler:
    def __init__(self, reg: CollectorRegistry, ctx: ContextOptions, _o: dict[str, str]) -> None:
        self.ctx = ctx
        self.flows = _counter(
            reg,
            "flows_processed_total",
            "Total number of flows processed",
            ["protocol", "type", "subtype", "verdict", *ctx.label_names()],
        )

    def process(self, flow: flow_pb2.Flow) -> None:
        kind = flow.event_type.type
        subtype = ""
        if kind == MSG_ACCESS_LOG:
            type_name = "L7"
            record = flow.l7.WhichOneof("record") if flow.HasField("l7") else None
            subtype = {"dns": "DNS", "http": "HTTP", "kafka": "Kafka"}.get(record or "", "")
        elif kind == MSG_DROP:
            type_name = "Drop"
        elif kind == MSG_CAPTURE:
            type_name = "Capture"
        elif kind == MSG_TRACE:
            type_name = "Trace"
            subtype = TRACE_OBSERVATION_POINTS.get(flow.event_type.sub_type, "")
        elif kind == MSG_POLICY_VERDICT:
            type_name = "PolicyVerdict"
        else:
            type_name = "Unknown"
            subtype = str(kind)
        self.flows.labels(
            flow_protocol(flow), type_name, subtype, verdict_name(flow),
            *self.ctx.label_values(flow),
        ).inc()  # fmt: skip


class DropHandler:
    def __init__(self, reg: CollectorRegistry, ctx: ContextOptions, _o: dict[str, str]) -> None:
        self.ctx = ctx
        self.drops = _counter(
            reg, "drop_total", "Number of drops", [*ctx.label_names(), "reason", "protocol"]
        )

    def process(self, flow: flow_pb2.Flow) -> None:
        if flow.verdict != flow_pb2.Verdict.DROPPED:
            return
        reason = _enum_name(flow_pb2.DropReason, flow.drop_reason_desc)
        self.drops.labels(*self.ctx.label_values(flow), reason, flow_protocol(flow)).inc()


_FORWARDING = (flow_pb2.Verdict.FORWARDED, flow_pb2.Verdict.REDIRECTED)


class TCPHandler:
    def __init__(self, reg: CollectorRegistry, ctx: ContextOptions, _o: dict[str, str]) -> None:
        self.ctx = ctx
        self.flags = _counter(
            reg, "tcp_flags_total", "TCP flag occurrences", ["flag", "family", *ctx.label_names()]
        )

    def process(self, flow: flow_pb2.Flow) -> None:
        if flow.verdict not in _FORWARDING or not flow.HasField("IP"):
            return
        if flow.l4.WhichOneof("protocol") != "TCP" or not flow.l4.TCP.HasField("flags"):
            return
        flags = flow.l4.TCP.flags
        family = _enum_name(flow_pb2.IPVersion, flow.IP.ipVersion)
        rest = self.ctx.label_values(flow)
        if flags.FIN:
            self.flags.labels("FIN", family, *rest).inc()
        if flags.SYN:
            self.flags.labels("SYN-ACK" if flags.ACK else "SYN", family, *rest).inc()
        if flags.RST:
            self.flags.labels("RST", family, *rest).inc()


class PortDistributionHandler:
    def __init__(self, reg: CollectorRegistry, ctx: ContextOptions, _o: dict[str, str]) -> None:
        self.ctx = ctx
        self.ports = _counter(
            reg,
            "port_distribution_total",
            "Numbers of packets distributed by destination port",
            ["protocol", "port", *ctx.label_names()],
        )

    def process(self, flow: flow_pb2.Flow) -> None:
        # a flow not known to be a request says nothing about the service port
        if flow.verdict not in _FORWARDING or _is_reply(flow) is not False:
            return
        proto = flow.l4.WhichOneof("protocol") if flow.HasField("l4") else None
        if proto in ("TCP", "UDP", "SCTP"):
            port = str(getattr(flow.l4, proto).destination_port)
        elif proto in ("ICMPv4", "ICMPv6"):
            port = "0"
        else:
            return
        self.ports.labels(proto, port, *self.ctx.label_values(flow)).inc()


class ICMPHandler:
    def __init__(self, reg: CollectorRegistry, ctx: ContextOptions, _o: dict[str, str]) -> None:
        self.ctx = ctx
        self.icmp = _counter(
            reg, "icmp_total", "Number of ICMP messages", ["family", "type", *ctx.label_names()]
        )

    def process(self, flow: flow_pb2.Flow) -> None:
        proto = flow.l4.WhichOneof("protocol") if flow.HasField("l4") else None
        if proto == "ICMPv4":
            family, table = "IPv4", _ICMP4
            typ, code = flow.l4.ICMPv4.type, flow.l4.ICMPv4.code
        elif proto == "ICMPv6":
            family, table = "IPv6", _ICMP6
            typ, code = flow.l4.ICMPv6.type, flow.l4.ICMPv6.code
        else:
            return
        name = icmp_type_name(table, typ, code)
        self.icmp.labels(family, name, *self.ctx.label_values(flow)).inc()


class PolicyHandler:
    def __init__(self, reg: CollectorRegistry, ctx: ContextOptions, _o: dict[str, str]) -> None:
        self.ctx = ctx
        self.verdicts = _counter(
            reg,
            "policy_verdicts_total",
            "Total number of Cilium network policy verdicts",
            ["direction", "match", "action", *ctx.label_names()],
        )

    def process(self, flow: flow_pb2.Flow) -> None:
        kind = flow.event_type.type
        if kind == MSG_POLICY_VERDICT:
            # the host may reach any local endpoint: its verdicts say nothing about policy
            if flow.source.identity == RESERVED_HOST_IDENTITY:
                return
            match = POLICY_MATCH_TYPES.get(flow.policy_match_type, "unknown")
        elif kind == MSG_ACCESS_LOG:
            record = flow.l7.WhichOneof("record") if flow.HasField("l7") else None
            match = f"l7/{record or ''}"
        else:
            return
        action = verdict_name(flow).lower()
        self.verdicts.labels(_direction(flow), match, action, *self.ctx.label_values(flow)).inc()


class FlowsToWorldHandler:
    def __init__(self, reg: CollectorRegistry, ctx: ContextOptions, o: dict[str, str]) -> None:
        self.ctx = ctx
        keys = {k.lower() for k in o}
        self.any_drop = "any-drop" in keys
        self.port = "port" in keys
        self.syn_only = "syn-only" in keys
        labels = ["protocol", "verdict", *(["port"] if self.port else []), *ctx.label_names()]
        self.flows = _counter(
            reg, "flows_to_world_total", "Total number of flows to reserved:world", labels
        )

    def process(self, flow: flow_pb2.Flow) -> None:
        if (
            not flow.HasField("destination")
            or WORLD_LABEL not in flow.destination.labels
            or not flow.HasField("event_type")
            or not flow.HasField("l4")
        ):
            return
        dropped = flow.verdict == flow_pb2.Verdict.DROPPED
        if dropped and not self.any_drop and flow.drop_reason_desc != flow_pb2.POLICY_DENIED:
            return
        reply = bool(_is_reply(flow))
        if not dropped and reply:  # replies would count ephemeral ports
            return
        proto = flow.l4.WhichOneof("protocol")
        if self.syn_only and (proto != "TCP" or not flow.l4.TCP.flags.SYN or reply):
            return
        labels = [flow_protocol(flow), verdict_name(flow)]
        if self.port:
            port = ""
            if proto in ("TCP", "UDP", "SCTP"):
                port = str(getattr(flow.l4, proto).destination_port)
            labels.append(port)
        self.flows.labels(*labels, *self.ctx.label_values(flow)).inc()


class DNSHandler:
    def __init__(self, reg: CollectorRegistry, ctx: ContextOptions, o: dict[str, str]) -> None:
        self.ctx = ctx
        keys = {k.lower() for k in o}
        self.query = "query" in keys
        self.ignore_aaaa = "ignoreaaaa" in keys
        extra = ["query"] if self.query else []
        names = ctx.label_names()
        common = [*names, "rcode", "qtypes", "ips_returned", *extra]
        self.queries = _counter(reg, "dns_queries_total", "Number of DNS queries observed", common)
        self.responses = _counter(
            reg, "dns_responses_total", "Number of DNS responses observed", common
        )
        self.types = _counter(
            reg,
            "dns_response_types_total",
            "Number of DNS response types",
            [*names, "type", "qtypes", *extra],
        )

    def process(self, flow: flow_pb2.Flow) -> None:
        if not flow.HasField("l7") or flow.l7.WhichOneof("record") != "dns":
            return
        dns = flow.l7.dns
        if self.ignore_aaaa and list(dns.qtypes) == ["AAAA"]:
            return
        ctx = self.ctx.label_values(flow)
        qtypes = ",".join(dns.qtypes)
        extra = [dns.query] if self.query else []
        ips = str(len(dns.ips))
        if flow.verdict == flow_pb2.Verdict.DROPPED:
            self.queries.labels(*ctx, "Policy denied", qtypes, ips, *extra).inc()
        elif not _is_reply(flow):
            self.queries.labels(*ctx, "", qtypes, ips, *extra).inc()
        else:
            rcode = DNS_RCODES.get(dns.rcode, "")
            self.responses.labels(*ctx, rcode, qtypes, ips, *extra).inc()
            for rrtype in dns.rrtypes:
                self.types.labels(*ctx, rrtype, qtypes, *extra).inc()


def _reporter(flow: flow_pb2.Flow) -> str:
    if flow.traffic_direction == flow_pb2.TrafficDirection.EGRESS:
        return "client"
    if flow.traffic_direction == flow_pb2.TrafficDirection.INGRESS:
        return "server"
    return "unknown"


class HTTPHandler:
    """``http`` (v1: requests and responses apart) and ``httpV2`` (response flows only, labels
    from the request's point of view)."""

    def __init__(
        self, reg: CollectorRegistry, ctx: ContextOptions, o: dict[str, str], v2: bool
    ) -> None:
        self.ctx, self.v2 = ctx, v2
        value = next((v for k, v in o.items() if k.lower() == "exemplars"), "false")
        if value not in ("true", "false"):
            name = "httpV2" if v2 else "http"
            raise ValueError(f"metric {name!r}: exemplars={value!r} (expected true or false)")
        self.exemplars = value == "true"
        names = ctx.label_names()
        request_labels = ["method", "protocol", *(["status"] if v2 else []), "reporter"]
        self.requests = _counter(
            reg, "http_requests_total", "Count of HTTP requests", [*names, *request_labels]
        )
        self.responses = (
            None
            if v2
            else _counter(
                reg,
                "http_responses_total",
                "Count of HTTP responses",
                [*names, "method", "protocol", "status", "reporter"],
            )
        )
        self.duration = _histogram(
            reg,
            "http_request_duration_seconds",
            "Quantiles of HTTP request duration in seconds",
            [*names, "method", "reporter"],
        )

    def _exemplar(self, flow: flow_pb2.Flow) -> dict[str, str] | None:
        trace_id = flow.trace_context.parent.trace_id if self.exemplars else ""
        return {"traceID": trace_id} if trace_id else None

    def process(self, flow: flow_pb2.Flow) -> None:
        if not flow.HasField("l7") or flow.l7.WhichOneof("record") != "http":
            return
        http, kind = flow.l7.http, flow.l7.type
        reporter, exemplar = _reporter(flow), self._exemplar(flow)
        latency = flow.l7.latency_ns / 1e9
        if self.v2:
            if kind != flow_pb2.L7FlowType.RESPONSE:
                return
            ctx = self.ctx.label_values(flow, invert=True)
            status = str(http.code)
            self.requests.labels(*ctx, http.method, http.protocol, status, reporter).inc(
                exemplar=exemplar
            )
            self.duration.labels(*ctx, http.method, reporter).observe(latency, exemplar)
            return
        ctx = self.ctx.label_values(flow)
        if kind == flow_pb2.L7FlowType.REQUEST:
            self.requests.labels(*ctx, http.method, http.protocol, reporter).inc(exemplar=exemplar)
        elif kind == flow_pb2.L7FlowType.RESPONSE and self.responses is not None:
            status = str(http.code)
            self.responses.labels(*ctx, http.method, http.protocol, status, reporter).inc(
                exemplar=exemplar
            )
            self.duration.labels(*ctx, http.method, reporter).observe(latency, exemplar)


class KafkaHandler:
    def __init__(self, reg: CollectorRegistry, ctx: ContextOptions, _o: dict[str, str]) -> None:
        self.ctx = ctx
        names = ctx.label_names()
        self.requests = _counter(
            reg,
            "kafka_requests_total",
            "Count of Kafka requests",
            [*names, "topic", "api_key", "error_code", "reporter"],
        )
        self.duration = _histogram(
            reg,
            "kafka_request_duration_seconds",
            "Quantiles of Kafka request duration in seconds",
            [*names, "topic", "api_key", "reporter"],
        )

    def process(self, flow: flow_pb2.Flow) -> None:
        if not flow.HasField("l7") or flow.l7.WhichOneof("record") != "kafka":
            return
        if flow.l7.type != flow_pb2.L7FlowType.REQUEST:
            return
        kafka, reporter = flow.l7.kafka, _reporter(flow)
        ctx = self.ctx.label_values(flow)
        self.requests.labels(
            *ctx, kafka.topic, kafka.api_key, str(kafka.error_code), reporter
        ).inc()
        self.duration.labels(*ctx, kafka.topic, kafka.api_key, reporter).observe(
            flow.l7.latency_ns / 1e9
        )


HandlerFactory = Callable[[CollectorRegistry, ContextOptions, dict[str, str]], Handler]
HANDLERS: dict[str, HandlerFactory] = {
    "flow": FlowHandler,
    "drop": DropHandler,
    "tcp": TCPHandler,
    "port-distribution": PortDistributionHandler,
    "icmp": ICMPHandler,
    "policy": PolicyHandler,
    "flows-to-world": FlowsToWorldHandler,
    "dns": DNSHandler,
    "http": lambda r, c, o: HTTPHandler(r, c, o, v2=False),
    "httpV2": lambda r, c, o: HTTPHandler(r, c, o, v2=True),
    "kafka": KafkaHandler,
}


class FlowMetrics:
    """The enabled Hubble metrics, registered in ``registry``; feed it with ``on_flow`` and
    ``on_lost`` (the observer's hooks). An empty spec enables nothing (``enabled`` is False)."""

    def __init__(self, spec: str | Sequence[str], registry: CollectorRegistry) -> None:
        self.registry = registry
        self.specs = parse_metrics_spec(spec)
        self._handlers: list[tuple[str, Handler]] = []
        for item in self.specs:
            ctx = parse_context_options(item.name, item.options)
            self._handlers.append((item.name, HANDLERS[item.name](registry, ctx, item.options)))
        self._lost: Counter | None = None
        if self._handlers:
            self._lost = _counter(
                registry, "lost_events_total", "Number of lost events", ["source"]
            )
        self._failed: set[str] = set()

    @property
    def enabled(self) -> bool:
        return bool(self._handlers)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self._handlers]

    def on_flow(self, flow: flow_pb2.Flow) -> None:
        for name, handler in self._handlers:
            try:
                handler.process(flow)
            except Exception:
                # a metric must never stop the flow path; say so once per metric
                if name not in self._failed:
                    self._failed.add(name)
                    log.exception("hubble metric %r failed on a flow (reported once)", name)

    def on_lost(self, lost: flow_pb2.LostEvent) -> None:
        if self._lost is None:
            return
        source = _enum_name(flow_pb2.LostEventSource, lost.source).lower()
        self._lost.labels(source).inc(lost.num_events_lost)


# ---- HTTP exposition -----------------------------------------------------------------------


def parse_listen_address(address: str) -> tuple[str | None, int]:
    """``":9965"`` (all interfaces), ``"127.0.0.1:0"``, ``"[::1]:9965"`` → (host, port)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"invalid listen address {address!r} (expected [HOST]:PORT)")
    host = host.strip("[]")
    return (host or None), int(port_text)


class MetricsServer:
    """Serves ``/metrics`` of one registry over HTTP (aiohttp, on the running event loop).

    Content negotiation as prometheus_client's: OpenMetrics when the Accept header asks for
    ``application/openmetrics-text`` (needed for exemplars), the classic text format otherwise.
    The registry is collected on the event loop, so collectors may read loop-owned state.
    """

    def __init__(self, registry: CollectorRegistry, address: str) -> None:
        self.registry = registry
        self.host, self._port = parse_listen_address(address)
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when started with port 0; give a host with port 0,
        as each address family of ``":0"`` would get a port of its own)."""
        if self._runner is not None:
            for addr in self._runner.addresses:
                if isinstance(addr, tuple):
                    return int(addr[1])
        return self._port

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(self.registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._port, reuse_address=True).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("metrics server listening on %s:%d", self.host or "*", self.port)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
