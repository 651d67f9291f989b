"""One handler per Hubble metric name, counting flows as upstream's ``pkg/hubble/metrics/*``.

Each handler registers its families in the registry it is given (names, help texts and label
names are upstream's) and counts one flow per ``process`` call; :data:`HANDLERS` maps metric
names to their factories. See the package docstring for what each metric counts. ``process``
takes a count too: a batch's flows are counted once per template (flows that differ only in
time, UUID and source port, which no label reads), ``n`` at a time.

Counters are :class:`BatchedCounter`: a flow adds one to a plain dict entry of its label
values, and the sums go into the Prometheus counters whenever the counter is collected (every
scrape, every ``get_sample_value``), so what is read is never behind what was counted; a
label set's child is still created at its first flow (its ``_created`` time is unchanged).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import Metric

from ciliary.core.flow import (
    MSG_ACCESS_LOG,
    MSG_CAPTURE,
    MSG_DROP,
    MSG_POLICY_VERDICT,
    MSG_TRACE,
    POLICY_MATCH_TYPES,
    TRACE_POINTS,
    ReservedIdentity,
)
from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.gopacket import DNS_RCODE_NAMES, ICMP4, ICMP6, IcmpTable, icmp_text
from ciliary.hubble.metrics.context import (
    ContextOptions,
    direction_name,
    enum_name,
    flow_protocol,
    is_reply,
    verdict_name,
)

NAMESPACE = "hubble"

_WORLD_LABEL = ReservedIdentity.WORLD.label

_ICMP6_PARAMETER_PROBLEM = (
    "ParameterProblem",
    ("ErroneousHeaderField", "UnrecognizedNextHeader", "UnrecognizedIPv6Option"),
)
_METRIC_ICMP6: IcmpTable = {**ICMP6, 4: _ICMP6_PARAMETER_PROBLEM}
"""gopacket's ICMPv6 names, but for code 2 of ParameterProblem, which the metrics call by its
own name where gopacket (and so the flow summaries) repeat code 1's."""


class Handler(Protocol):
    def process(self, flow: flow_pb2.Flow, n: int = 1) -> None:
        """Counts ``flow`` ``n`` times (``n`` flows alike in every field a label reads)."""


def counter(registry: CollectorRegistry, name: str, doc: str, labels: Sequence[str]) -> Counter:
    return Counter(f"{NAMESPACE}_{name}", doc, labelnames=list(labels), registry=registry)


class BatchedCounter:
    """A :class:`Counter` fed per flow through a dict: ``inc(values)`` sums per label values
    tuple, and the sums are added to the counter's children in one call per label set before
    the counter is collected (``flush``). One thread (the owner's event loop), as the module.

    Per flow this is a dict update instead of ``labels()`` (label validation, a lock, a tuple)
    and ``inc()`` (another lock); the sums are exact (integers in a float, as before)."""

    def __init__(self, registry: CollectorRegistry, name: str, doc: str, labels: Sequence[str]):
        self.counter = counter(registry, name, doc, labels)
        self._children: dict[tuple[str, ...], Counter] = {}
        self._pending: dict[tuple[str, ...], float] = {}
        collect = self.counter.collect

        def flushed_collect() -> Iterable[Metric]:
            self.flush()
            return collect()

        self.counter.collect = flushed_collect  # type: ignore[method-assign]

    def inc(self, values: tuple[str, ...], amount: float = 1) -> None:
        pending = self._pending
        n = pending.get(values)
        if n is not None:
            pending[values] = n + amount
            return
        if values not in self._children:
            # the child now, as an unbatched counter would (label count checked here too)
            self._children[values] = self.counter.labels(*values)
        pending[values] = amount

    def flush(self) -> None:
        """Adds what was counted since the last flush to the Prometheus counter."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        children = self._children
        for values, n in pending.items():
            children[values].inc(n)


def histogram(registry: CollectorRegistry, name: str, doc: str, labels: Sequence[str]) -> Histogram:
    return Histogram(f"{NAMESPACE}_{name}", doc, labelnames=list(labels), registry=registry)


class FlowHandler:
    def __init__(self, reg: CollectorRegistry, ctx: ContextOptions, _o: dict[str, str]) -> None:
        self.ctx = ctx
        self.flows = BatchedCounter(
            reg,
            "flows_processed_total",
            "Total number of flows processed",
            ["protocol", "type", "subtype", "verdict", *ctx.label_names()],
        )

    def process(self, flow: flow_pb2.Flow, n: int = 1) -> None:
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
            subtype = TRACE_POINTS.get(flow.event_type.sub_type, "")
        elif kind == MSG_POLICY_VERDICT:
            type_name = "PolicyVerdict"
        else:
            type_name = "Unknown"
            subtype = str(kind)
        self.flows.inc(
            (flow_protocol(flow), type_name, subtype, verdict_name(flow),
             *self.ctx.label_values(flow)),
            n,
        )  # fmt: skip


class DropHandler:
    def __init__(self, reg: CollectorRegistry, ctx: ContextOptions, _o: dict[str, str]) -> None:
        self.ctx = ctx
        self.drops = BatchedCounter(
            reg, "drop_total", "Number of drops", [*ctx.label_names(), "reason", "protocol"]
        )

    def process(self, flow: flow_pb2.Flow, n: int = 1) -> None:
        if flow.verdict != _DROPPED:
            return
        reason = enum_name(flow_pb2.DropReason, flow.drop_reason_desc)
        self.drops.inc((*self.ctx.label_values(flow), reason, flow_protocol(flow)), n)


_FORWARDING = (flow_pb2.FORWARDED, flow_pb2.REDIRECTED)
_DROPPED = flow_pb2.DROPPED


class TCPHandler:
    def __init__(self, reg: CollectorRegistry, ctx: ContextOptions, _o: dict[str, str]) -> None:
        self.ctx = ctx
        self.flags = BatchedCounter(
            reg, "tcp_flags_total", "TCP flag occurrences", ["flag", "family", *ctx.label_names()]
        )

    def process(self, flow: flow_pb2.Flow, n: int = 1) -> None:
        if flow.verdict not in _FORWARDING or not flow.HasField("IP"):
            return
        if flow.l4.WhichOneof("protocol") != "TCP" or not flow.l4.TCP.HasField("flags"):
            return
        flags = flow.l4.TCP.flags
        family = enum_name(flow_pb2.IPVersion, flow.IP.ipVersion)
        rest = self.ctx.label_values(flow)
        if flags.FIN:
            self.flags.inc(("FIN", family, *rest), n)
        if flags.SYN:
            self.flags.inc(("SYN-ACK" if flags.ACK else "SYN", family, *rest), n)
        if flags.RST:
            self.flags.inc(("RST", family, *rest), n)


class PortDistributionHandler:
    def __init__(self, reg: CollectorRegistry, ctx: ContextOptions, _o: dict[str, str]) -> None:
        self.ctx = ctx
        self.ports = BatchedCounter(
            reg,
            "port_distribution_total",
            "Numbers of packets distributed by destination port",
            ["protocol", "port", *ctx.label_names()],
        )

    def process(self, flow: flow_pb2.Flow, n: int = 1) -> None:
        # a flow not known to be a request says nothing about the service port
        if flow.verdict not in _FORWARDING or is_reply(flow) is not False:
            return
        proto = flow.l4.WhichOneof("protocol") if flow.HasField("l4") else None
        if proto in ("TCP", "UDP", "SCTP"):
            port = str(getattr(flow.l4, proto).destination_port)
        elif proto in ("ICMPv4", "ICMPv6"):
            port = "0"
        else:
            return
        self.ports.inc((proto, port, *self.ctx.label_values(flow)), n)


class ICMPHandler:
    def __init__(self, reg: CollectorRegistry, ctx: ContextOptions, _o: dict[str, str]) -> None:
        self.ctx = ctx
        self.icmp = BatchedCounter(
            reg, "icmp_total", "Number of ICMP messages", ["family", "type", *ctx.label_names()]
        )

    def process(self, flow: flow_pb2.Flow, n: int = 1) -> None:
        proto = flow.l4.WhichOneof("protocol") if flow.HasField("l4") else None
        if proto == "ICMPv4":
            family, table = "IPv4", ICMP4
            typ, code = flow.l4.ICMPv4.type, flow.l4.ICMPv4.code
        elif proto == "ICMPv6":
            family, table = "IPv6", _METRIC_ICMP6
            typ, code = flow.l4.ICMPv6.type, flow.l4.ICMPv6.code
        else:
            return
        name = icmp_text(table, typ, code)
        self.icmp.inc((family, name, *self.ctx.label_values(flow)), n)


class PolicyHandler:
    def __init__(self, reg: CollectorRegistry, ctx: ContextOptions, _o: dict[str, str]) -> None:
        self.ctx = ctx
        self.verdicts = BatchedCounter(
            reg,
            "policy_verdicts_total",
            "Total number of Cilium network policy verdicts",
            ["direction", "match", "action", *ctx.label_names()],
        )

    def process(self, flow: flow_pb2.Flow, n: int = 1) -> None:
        kind = flow.event_type.type
        if kind == MSG_POLICY_VERDICT:
            # the host may reach any local endpoint: its verdicts say nothing about policy
            if flow.source.identity == ReservedIdentity.HOST:
                return
            match = POLICY_MATCH_TYPES.get(flow.policy_match_type, "unknown").lower()
        elif kind == MSG_ACCESS_LOG:
            record = flow.l7.WhichOneof("record") if flow.HasField("l7") else None
            match = f"l7/{record or ''}"
        else:
            return
        action = verdict_name(flow).lower()
        self.verdicts.inc((direction_name(flow), match, action, *self.ctx.label_values(flow)), n)


class FlowsToWorldHandler:
    def __init__(self, reg: CollectorRegistry, ctx: ContextOptions, o: dict[str, str]) -> None:
        self.ctx = ctx
        keys = {k.lower() for k in o}
        self.any_drop = "any-drop" in keys
        self.port = "port" in keys
        self.syn_only = "syn-only" in keys
        labels = ["protocol", "verdict", *(["port"] if self.port else []), *ctx.label_names()]
        self.flows = BatchedCounter(
            reg, "flows_to_world_total", "Total number of flows to reserved:world", labels
        )

    def process(self, flow: flow_pb2.Flow, n: int = 1) -> None:
        if (
            not flow.HasField("destination")
            or _WORLD_LABEL not in flow.destination.labels
            or not flow.HasField("event_type")
            or not flow.HasField("l4")
        ):
            return
        dropped = flow.verdict == _DROPPED
        if dropped and not self.any_drop and flow.drop_reason_desc != flow_pb2.POLICY_DENIED:
            return
        reply = bool(is_reply(flow))
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
        self.flows.inc((*labels, *self.ctx.label_values(flow)), n)


class DNSHandler:
    def __init__(self, reg: CollectorRegistry, ctx: ContextOptions, o: dict[str, str]) -> None:
        self.ctx = ctx
        keys = {k.lower() for k in o}
        self.query = "query" in keys
        self.ignore_aaaa = "ignoreaaaa" in keys
        extra = ["query"] if self.query else []
        names = ctx.label_names()
        common = [*names, "rcode", "qtypes", "ips_returned", *extra]
        self.queries = BatchedCounter(
            reg, "dns_queries_total", "Number of DNS queries observed", common
        )
        self.responses = BatchedCounter(
            reg, "dns_responses_total", "Number of DNS responses observed", common
        )
        self.types = BatchedCounter(
            reg,
            "dns_response_types_total",
            "Number of DNS response types",
            [*names, "type", "qtypes", *extra],
        )

    def process(self, flow: flow_pb2.Flow, n: int = 1) -> None:
        if not flow.HasField("l7") or flow.l7.WhichOneof("record") != "dns":
            return
        dns = flow.l7.dns
        if self.ignore_aaaa and list(dns.qtypes) == ["AAAA"]:
            return
        ctx = self.ctx.label_values(flow)
        qtypes = ",".join(dns.qtypes)
        extra = [dns.query] if self.query else []
        ips = str(len(dns.ips))
        if flow.verdict == _DROPPED:
            self.queries.inc((*ctx, "Policy denied", qtypes, ips, *extra), n)
        elif not is_reply(flow):
            self.queries.inc((*ctx, "", qtypes, ips, *extra), n)
        else:
            rcode = DNS_RCODE_NAMES.get(dns.rcode, "")
            self.responses.inc((*ctx, rcode, qtypes, ips, *extra), n)
            for rrtype in dns.rrtypes:
                self.types.inc((*ctx, rrtype, qtypes, *extra), n)


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
        self.requests = counter(
            reg, "http_requests_total", "Count of HTTP requests", [*names, *request_labels]
        )
        self.responses = (
            None
            if v2
            else counter(
                reg,
                "http_responses_total",
                "Count of HTTP responses",
                [*names, "method", "protocol", "status", "reporter"],
            )
        )
        self.duration = histogram(
            reg,
            "http_request_duration_seconds",
            "Quantiles of HTTP request duration in seconds",
            [*names, "method", "reporter"],
        )

    def _exemplar(self, flow: flow_pb2.Flow) -> dict[str, str] | None:
        trace_id = flow.trace_context.parent.trace_id if self.exemplars else ""
        return {"traceID": trace_id} if trace_id else None

    def process(self, flow: flow_pb2.Flow, n: int = 1) -> None:
        """``n`` flows alike, each with ``flow``'s latency."""
        if n:
            self.process_latencies(flow, [flow.l7.latency_ns] * n)

    def process_latencies(self, flow: flow_pb2.Flow, latencies_ns: Sequence[int]) -> None:
        """A flow per latency: alike in every other field (a batch's template and its rows'
        ``l7.latency_ns``). Labels are resolved once; the duration histogram observes each."""
        if not latencies_ns or not flow.HasField("l7") or flow.l7.WhichOneof("record") != "http":
            return
        http, kind = flow.l7.http, flow.l7.type
        reporter, exemplar = _reporter(flow), self._exemplar(flow)
        n = len(latencies_ns)
        if self.v2:
            if kind != flow_pb2.L7FlowType.RESPONSE:
                return
            ctx = self.ctx.label_values(flow, invert=True)
            requests = self.requests.labels(*ctx, http.method, http.protocol, str(http.code),
                                            reporter)  # fmt: skip
        else:
            ctx = self.ctx.label_values(flow)
            if kind == flow_pb2.L7FlowType.REQUEST:
                child = self.requests.labels(*ctx, http.method, http.protocol, reporter)
                _inc(child, n, exemplar)
                return
            if kind != flow_pb2.L7FlowType.RESPONSE or self.responses is None:
                return
            requests = self.responses.labels(*ctx, http.method, http.protocol, str(http.code),
                                             reporter)  # fmt: skip
        _inc(requests, n, exemplar)
        duration = self.duration.labels(*ctx, http.method, reporter)
        for latency in latencies_ns:
            duration.observe(latency / 1e9, exemplar)


def _inc(child: Counter, n: int, exemplar: dict[str, str] | None) -> None:
    """``n`` increments of a counter child: one call, or one per flow with an exemplar (each
    increment carries its flow's exemplar, as flow by flow)."""
    if exemplar is None:
        child.inc(n)
        return
    for _ in range(n):
        child.inc(exemplar=exemplar)


class KafkaHandler:
    def __init__(self, reg: CollectorRegistry, ctx: ContextOptions, _o: dict[str, str]) -> None:
        self.ctx = ctx
        names = ctx.label_names()
        self.requests = counter(
            reg,
            "kafka_requests_total",
            "Count of Kafka requests",
            [*names, "topic", "api_key", "error_code", "reporter"],
        )
        self.duration = histogram(
            reg,
            "kafka_request_duration_seconds",
            "Quantiles of Kafka request duration in seconds",
            [*names, "topic", "api_key", "reporter"],
        )

    def process(self, flow: flow_pb2.Flow, n: int = 1) -> None:
        if n != 1:  # histograms observe each flow (L7 flows come one at a time anyway)
            for _ in range(n):
                self.process(flow)
            return
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
