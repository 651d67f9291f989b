"""The agent's own Prometheus metrics (``--prometheus-serve-addr``, default ``:9962``).

Why a custom collector: most of what an operator watches about an agent is *state* (endpoints per
state, policies and their revision, identities, BPF map fill), and the agent already holds that
state. Mirroring it into gauges would mean touching a gauge on every change and keeping the two
in step; instead a collector asks the agent through plain callables when, and only when, Prometheus
scrapes. Between scrapes it costs nothing. The one thing that is an *event* rather than a state,
endpoint regeneration, is a histogram and a counter fed by the endpoint manager.

Names and labels are upstream Cilium's (``pkg/metrics``) where a counterpart exists:
``cilium_endpoint``, ``cilium_endpoint_state{endpoint_state}``,
``cilium_endpoint_regenerations_total{outcome}`` (success|fail),
``cilium_endpoint_regeneration_time_stats_seconds{scope,status}`` (scope ``total``; status
success|failure), ``cilium_policy``, ``cilium_policy_max_revision``,
``cilium_policy_regeneration_total``, ``cilium_identity{type}``
(cluster_local|node_local|reserved), ``cilium_bpf_map_pressure{map_name}`` and
``cilium_version{version,revision,arch}``, ``cilium_policy_l7_total{rule,proxy_type}`` (the
L7 proxies' requests: ``received``, ``forwarded``, ``denied``, ``parse_errors``; proxy type
``fqdn`` for the DNS proxy, as upstream's).

Threading contract: the callables are invoked from whatever thread runs ``registry.collect()``.
The metrics HTTP server (``ciliary.hubble.metrics.MetricsServer``) renders on the event loop, so
the callables run on the agent's loop and may read its (not thread-safe) state directly. A callable
that raises costs only its own metric family in that scrape (logged), never the whole scrape.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ciliary.core.models import EndpointState

log = logging.getLogger(__name__)

NAMESPACE = "cilium"

# Identity numbering (as Cilium): reserved identities sit below 256, node-local (CIDR)
# identities carry the local-scope bit 1<<24, everything else is cluster-wide.
MIN_ALLOCATED_IDENTITY = 256
LOCAL_IDENTITY_FLAG = 1 << 24

# Regeneration takes milliseconds to seconds: buckets from 1 ms to ~1 min.
REGENERATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

EndpointsByState = Callable[[], dict[str, int]]
PolicyStats = Callable[[], tuple[int, int]]
IdentityCounts = Callable[[], dict[str, int]]
MapPressure = Callable[[], list[tuple[str, int, int]]]
L7Stats = Callable[[], dict[tuple[str, str], int]]
"""(proxy type, rule) → requests so far (``cilium_policy_l7_total``)."""


def identity_type(number: int) -> str:
    """The ``type`` label of ``cilium_identity`` for one identity number."""
    if number & LOCAL_IDENTITY_FLAG:
        return "node_local"
    if number < MIN_ALLOCATED_IDENTITY:
        return "reserved"
    return "cluster_local"


def count_identities(numbers: Iterable[int]) -> dict[str, int]:
    """Identity numbers → counts per ``type`` (every type present, zeros included)."""
    out = {"cluster_local": 0, "node_local": 0, "reserved": 0}
    for number in numbers:
        out[identity_type(number)] += 1
    return out


def _version() -> str:
    try:
        return metadata.version("ciliary")
    except metadata.PackageNotFoundError:
        return "unknown"


class _StateCollector(Collector):
    """Reads agent state through callables at scrape time (see the module docstring)."""

    def __init__(
        self,
        *,
        endpoints_by_state: EndpointsByState,
        policy_stats: PolicyStats,
        identities: IdentityCounts,
        map_pressure: MapPressure,
        version: str,
        l7_stats: L7Stats | None = None,
    ) -> None:
        self._l7 = l7_stats
        self._endpoints = endpoints_by_state
        self._policy = policy_stats
        self._identities = identities
        self._maps = map_pressure
        self._version = version
        self._states = [s.value for s in EndpointState]

    def describe(self) -> Iterable[Metric]:
        # Describing without calling into the agent: registration must not read state.
        return []

    def collect(self) -> Iterator[Metric]:
        for name, build in (
            ("endpoints", self._collect_endpoints),
            ("policy", self._collect_policy),
            ("identity", self._collect_identities),
            ("bpf map pressure", self._collect_maps),
            ("L7 proxies", self._collect_l7),
        ):
            try:
                yield from build()
            except Exception:
                log.exception("metrics: cannot read the agent's %s", name)
        version = GaugeMetricFamily(
            f"{NAMESPACE}_version",
            "Cilium version",
            labels=["version", "revision", "arch"],
        )
        version.add_metric([self._version, "", f"{platform.system()}/{platform.machine()}"], 1)
        yield version

    def _collect_endpoints(self) -> list[Metric]:
        counts = self._endpoints()
        total = GaugeMetricFamily(
            f"{NAMESPACE}_endpoint",
            "Number of endpoints managed by this agent",
            value=sum(counts.values()),
        )
        by_state = GaugeMetricFamily(
            f"{NAMESPACE}_endpoint_state",
            "Count of all endpoints, tagged by different endpoint states",
            labels=["endpoint_state"],
        )
        for state in sorted({*self._states, *counts}):
            by_state.add_metric([state], counts.get(state, 0))
        return [total, by_state]

    def _collect_policy(self) -> list[Metric]:
        count, revision = self._policy()
        return [
            GaugeMetricFamily(
                f"{NAMESPACE}_policy", "Number of policies currently loaded", value=count
            ),
            GaugeMetricFamily(
                f"{NAMESPACE}_policy_max_revision",
                "Highest policy revision number in the agent",
                value=revision,
            ),
        ]

    def _collect_identities(self) -> list[Metric]:
        family = GaugeMetricFamily(
            f"{NAMESPACE}_identity",
            "Number of identities currently allocated",
            labels=["type"],
        )
        for kind, count in sorted(self._identities().items()):
            family.add_metric([kind], count)
        return [family]

    def _collect_maps(self) -> list[Metric]:
        family = GaugeMetricFamily(
            f"{NAMESPACE}_bpf_map_pressure",
            "Fill percentage of map, tagged by map name",
            labels=["map_name"],
        )
        for name, entries, max_entries in self._maps():
            if max_entries > 0:
                family.add_metric([name], entries / max_entries)
        return [family]

    def _collect_l7(self) -> list[Metric]:
        if self._l7 is None:
            return []
        family = CounterMetricFamily(
            f"{NAMESPACE}_policy_l7",
            "Number of total proxy requests handled",
            labels=["rule", "proxy_type"],
        )
        for (proxy_type, rule), count in sorted(self._l7().items()):
            family.add_metric([rule, proxy_type], count)
        return [family]


class AgentMetrics:
    """The agent's registry content: the state collector plus regeneration timing.

    ``endpoints_by_state()`` → {state: count}; ``policy_stats()`` → (policies, max revision);
    ``identities()`` → {type: count} (see ``count_identities``); ``map_pressure()`` →
    [(map name, entries, max entries)]; ``l7_stats()`` → {(proxy type, rule): requests}.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        endpoints_by_state: EndpointsByState,
        policy_stats: PolicyStats,
        identities: IdentityCounts,
        map_pressure: MapPressure,
        *,
        version: str | None = None,
        l7_stats: L7Stats | None = None,
    ) -> None:
        self.registry = registry
        registry.register(
            _StateCollector(
                endpoints_by_state=endpoints_by_state,
                policy_stats=policy_stats,
                identities=identities,
                map_pressure=map_pressure,
                version=version if version is not None else _version(),
                l7_stats=l7_stats,
            )
        )
        self._regenerations = Counter(
            f"{NAMESPACE}_endpoint_regenerations",
            "Count of all endpoint regenerations that have completed, tagged by outcome",
            labelnames=["outcome"],
            registry=registry,
        )
        self._regeneration_time = Histogram(
            f"{NAMESPACE}_endpoint_regeneration_time_stats_seconds",
            "Endpoint regeneration time stats labeled by the scope",
            labelnames=["scope", "status"],
            buckets=REGENERATION_BUCKETS,
            registry=registry,
        )
        self._policy_regenerations = Counter(
            f"{NAMESPACE}_policy_regeneration",
            "Total number of successful policy regenerations",
            registry=registry,
        )
        # Series that exist from the start, so rate() has a zero to start from.
        for outcome in ("success", "fail"):
            self._regenerations.labels(outcome)

    def observe_regeneration(self, seconds: float, ok: bool, scope: str = "total") -> None:
        """One endpoint regeneration finished (``ok``) or failed, after ``seconds``."""
        self._regenerations.labels("success" if ok else "fail").inc()
        self._regeneration_time.labels(scope, "success" if ok else "failure").observe(seconds)
        if ok:
            self._policy_regenerations.inc()
