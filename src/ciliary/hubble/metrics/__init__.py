"""Hubble's flow metrics (``--hubble-metrics``) and the Prometheus endpoint that serves them.

Why here and shaped like this: Hubble metrics are derived from the same decoded flows the
observer keeps in its ring, so they are computed in the observer's flow hook, once per flow, and
never by re-reading the ring. The spec language, metric names, label names and label values are
upstream Hubble's (``pkg/hubble/metrics/*``, Documentation/observability/metrics.rst), so
upstream dashboards, alerts and PromQL work unchanged:

    --hubble-metrics "dns:query;ignoreAAAA drop:sourceContext=pod;destinationContext=pod tcp flow
                      port-distribution icmp policy flows-to-world httpV2:exemplars=true"

The spec language is parsed in :mod:`.spec`, context options in :mod:`.context`, the
handlers live in :mod:`.handlers` and the HTTP endpoint in :mod:`.server`.

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
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter

from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.metrics.context import (
    ContextOptions,
    enum_name,
    parse_context_options,
)
from ciliary.hubble.metrics.handlers import HANDLERS, Handler, HTTPHandler, counter
from ciliary.hubble.metrics.server import MetricsServer
from ciliary.hubble.metrics.spec import MetricSpec, parse_metrics_spec
from ciliary.hubble.server import split_listen_address as parse_listen_address

log = logging.getLogger(__name__)


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
            self._lost = counter(registry, "lost_events_total", "Number of lost events", ["source"])
        self._failed: set[str] = set()

    @property
    def enabled(self) -> bool:
        return bool(self._handlers)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self._handlers]

    def on_flow(self, flow: flow_pb2.Flow) -> None:
        self.on_flows(flow, 1)

    def on_flows(self, flow: flow_pb2.Flow, n: int, latencies_ns: list[int] | None = None) -> None:
        """Counts ``n`` flows alike in every field a label reads (an observer's counted hook:
        a batch's template and its rows); ``latencies_ns``, when given, are the ``n`` flows'
        own ``l7.latency_ns`` (the template has none), which the latency histograms observe
        one by one."""
        for name, handler in self._handlers:
            try:
                if latencies_ns is not None and isinstance(handler, HTTPHandler):
                    handler.process_latencies(flow, latencies_ns)
                else:
                    handler.process(flow, n)
            except Exception:
                # a metric must never stop the flow path; say so once per metric
                if name not in self._failed:
                    self._failed.add(name)
                    log.exception("hubble metric %r failed on a flow (reported once)", name)

    def on_lost(self, lost: flow_pb2.LostEvent) -> None:
        if self._lost is None:
            return
        source = enum_name(flow_pb2.LostEventSource, lost.source).lower()
        self._lost.labels(source).inc(lost.num_events_lost)


__all__ = [
    "ContextOptions",
    "FlowMetrics",
    "MetricSpec",
    "MetricsServer",
    "parse_context_options",
    "parse_listen_address",
    "parse_metrics_spec",
]
