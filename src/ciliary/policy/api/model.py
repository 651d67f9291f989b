"""The normalized policy model: what every accepted policy document becomes.

The policy engine should not care whether a rule came from a ``CiliumNetworkPolicy``, a cluster-wide
one or a Kubernetes ``NetworkPolicy``, nor how it was spelled, so all three are turned into the same
frozen values, already in the form Cilium works with after importing them:

- selectors have ``source:key`` keys and carry the namespace scoping Cilium adds (see
  :mod:`ciliary.policy.api.translate`);
- ``toCIDR`` and ``toCIDRSet`` entries are both :class:`CIDRRule` (masked networks, a bare address
  being a /32 or /128);
- ports are numbers, or lowercase names resolved later per endpoint; ICMP types are numbers;
- FQDN names and patterns are lowercase without the trailing dot.

Every value is hashable and immutable, so the engine can cache on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Literal, TypeAlias

from ciliary.policy.api.labels import Label
from ciliary.policy.api.selector import Selector

__all__ = [
    "ENTITIES",
    "AWSGroup",
    "CIDRRule",
    "Entity",
    "FQDNSelector",
    "HTTPHeaderMatch",
    "HTTPRule",
    "ICMPField",
    "KafkaRule",
    "L7Rules",
    "Listener",
    "Network",
    "PeerRule",
    "Policy",
    "PolicyKind",
    "PortProtocol",
    "PortRule",
    "Protocol",
    "Rule",
    "Secret",
    "Service",
    "TLSContext",
]

Network: TypeAlias = IPv4Network | IPv6Network
PolicyKind: TypeAlias = Literal[
    "CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy", "NetworkPolicy"
]
Protocol: TypeAlias = Literal["TCP", "UDP", "SCTP", "ANY"]
Entity: TypeAlias = Literal[
    "all",
    "world",
    "world-ipv4",
    "world-ipv6",
    "cluster",
    "host",
    "remote-node",
    "init",
    "health",
    "unmanaged",
    "kube-apiserver",
    "ingress",
    "none",
]
ENTITIES: tuple[Entity, ...] = (
    "all",
    "world",
    "world-ipv4",
    "world-ipv6",
    "cluster",
    "host",
    "remote-node",
    "init",
    "health",
    "unmanaged",
    "kube-apiserver",
    "ingress",
    "none",
)
"""Cilium's entity names (``pkg/policy/api/entity.go``), in documentation order."""


@dataclass(frozen=True, slots=True)
class CIDRRule:
    """A CIDR peer: ``cidr`` minus ``except_cidrs`` (``fromCIDR``/``toCIDR`` entries have no
    exceptions), or a reference to ``CiliumCIDRGroup`` objects by name or by labels."""

    cidr: Network | None
    except_cidrs: tuple[Network, ...] = ()
    group_ref: str | None = None
    group_selector: Selector | None = None


@dataclass(frozen=True, slots=True)
class FQDNSelector:
    """``toFQDNs`` entry or DNS L7 rule: exactly one of an exact name or a ``*`` pattern."""

    match_name: str | None = None
    match_pattern: str | None = None


@dataclass(frozen=True, slots=True)
class Service:
    """``toServices`` entry: a Kubernetes Service by name, or Services by label selector.

    ``namespace`` None means any namespace (as in Cilium)."""

    name: str | None = None
    namespace: str | None = None
    selector: Selector | None = None


@dataclass(frozen=True, slots=True)
class AWSGroup:
    """``fromGroups``/``toGroups`` AWS security groups (kept; ciliary has no cloud provider)."""

    labels: tuple[tuple[str, str], ...] = ()
    security_group_ids: tuple[str, ...] = ()
    security_group_names: tuple[str, ...] = ()
    region: str | None = None


@dataclass(frozen=True, slots=True)
class PortProtocol:
    """One port entry. ``port`` 0 means every port; ``end_port`` is set only for a real range
    (greater than ``port``); ``name`` (lowercase) is set instead of ``port`` for a named port."""

    port: int | None
    end_port: int | None = None
    name: str | None = None
    protocol: Protocol = "ANY"


@dataclass(frozen=True, slots=True)
class Secret:
    name: str
    namespace: str | None = None


@dataclass(frozen=True, slots=True)
class HTTPHeaderMatch:
    name: str
    value: str | None = None
    secret: Secret | None = None
    mismatch: Literal["LOG", "ADD", "DELETE", "REPLACE"] | None = None


@dataclass(frozen=True, slots=True)
class HTTPRule:
    """HTTP constraints; ``method``, ``path`` and ``host`` are extended POSIX regexes."""

    method: str | None = None
    path: str | None = None
    host: str | None = None
    headers: tuple[str, ...] = ()
    header_matches: tuple[HTTPHeaderMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class KafkaRule:
    """Kafka constraints; ``role`` and ``api_key`` are lowercase."""

    role: str | None = None
    api_key: str | None = None
    api_version: int | None = None
    client_id: str | None = None
    topic: str | None = None


@dataclass(frozen=True, slots=True)
class L7Rules:
    """The L7 rules of a port rule, of exactly one ``kind``.

    An empty tuple of the ``kind`` (``rules: {http: []}``) still sends the port's traffic through
    the proxy, allowing every request of that protocol, as in Cilium."""

    kind: Literal["http", "dns", "kafka", "l7"]
    http: tuple[HTTPRule, ...] = ()
    dns: tuple[FQDNSelector, ...] = ()
    kafka: tuple[KafkaRule, ...] = ()
    l7proto: str | None = None
    l7: tuple[tuple[tuple[str, str], ...], ...] = ()


@dataclass(frozen=True, slots=True)
class TLSContext:
    secret: Secret
    trusted_ca: str | None = None
    certificate: str | None = None
    private_key: str | None = None


@dataclass(frozen=True, slots=True)
class Listener:
    """A reference to an Envoy listener defined in a ``CiliumEnvoyConfig``."""

    name: str
    envoy_config_name: str
    envoy_config_kind: str | None = None
    priority: int | None = None


@dataclass(frozen=True, slots=True)
class PortRule:
    """A ``toPorts`` entry: the ports (an empty tuple means every port and protocol) and what
    applies on them. Deny rules only ever have ``ports``."""

    ports: tuple[PortProtocol, ...] = ()
    l7: L7Rules | None = None
    server_names: tuple[str, ...] = ()
    terminating_tls: TLSContext | None = None
    originating_tls: TLSContext | None = None
    listener: Listener | None = None


@dataclass(frozen=True, slots=True)
class ICMPField:
    """One ICMP type of one family (named types resolved to their numbers)."""

    family: Literal["IPv4", "IPv6"]
    type: int


@dataclass(frozen=True, slots=True)
class PeerRule:
    """One ingress/egress (allow or deny) entry: the peers (L3) and what of them (L4/L7).

    Members are AND'ed, as in Cilium. ``endpoints`` are ``fromEndpoints``/``toEndpoints``,
    ``requires`` ``fromRequires``/``toRequires`` (constraints folded into every rule selecting
    the same subject; they grant nothing alone). When no L3 member is given
    (:attr:`l3_wildcard`), ports/ICMP rules apply to every peer, and an entry with nothing at
    all (``- {}``) allows nothing but still turns default deny on.
    """

    index: int
    endpoints: tuple[Selector, ...] = ()
    requires: tuple[Selector, ...] = ()
    entities: tuple[Entity, ...] = ()
    cidrs: tuple[CIDRRule, ...] = ()
    fqdns: tuple[FQDNSelector, ...] = ()
    services: tuple[Service, ...] = ()
    nodes: tuple[Selector, ...] = ()
    groups: tuple[AWSGroup, ...] = ()
    ports: tuple[PortRule, ...] = ()
    icmps: tuple[ICMPField, ...] = ()
    authentication: Literal["disabled", "required", "test-always-fail"] | None = None

    @property
    def l3_wildcard(self) -> bool:
        """Whether no L3 peer member (endpoints, entities, CIDRs, FQDNs, services, nodes,
        groups) is given."""
        return not (
            self.endpoints
            or self.entities
            or self.cidrs
            or self.fqdns
            or self.services
            or self.nodes
            or self.groups
        )

    @property
    def l7_rules(self) -> tuple[L7Rules, ...]:
        return tuple(p.l7 for p in self.ports if p.l7 is not None)


@dataclass(frozen=True, slots=True)
class Rule:
    """One policy rule (a ``spec``/``specs`` entry; the one rule of a Kubernetes policy).

    Exactly one of ``endpoint_selector`` and ``node_selector`` is set. ``enable_default_deny``
    is (ingress, egress) as written, None when not given; :attr:`default_deny_ingress` and
    :attr:`default_deny_egress` resolve it the way Cilium does. ``path`` is where the rule is in
    its document (``spec``, ``specs[2]``).
    """

    index: int
    path: str
    endpoint_selector: Selector | None
    node_selector: Selector | None = None
    ingress: tuple[PeerRule, ...] = ()
    ingress_deny: tuple[PeerRule, ...] = ()
    egress: tuple[PeerRule, ...] = ()
    egress_deny: tuple[PeerRule, ...] = ()
    enable_default_deny: tuple[bool | None, bool | None] = (None, None)
    description: str = ""
    labels: tuple[Label, ...] = ()
    log: str | None = None

    @property
    def subject(self) -> Selector:
        """The selector of the endpoints (or nodes) the rule applies to."""
        selector = self.endpoint_selector or self.node_selector
        assert selector is not None
        return selector

    @property
    def is_host_policy(self) -> bool:
        return self.node_selector is not None

    @property
    def default_deny_ingress(self) -> bool:
        """Whether the rule puts its subjects' ingress into default deny: as written, else
        whether it has ingress or ingressDeny entries."""
        given = self.enable_default_deny[0]
        return given if given is not None else bool(self.ingress or self.ingress_deny)

    @property
    def default_deny_egress(self) -> bool:
        given = self.enable_default_deny[1]
        return given if given is not None else bool(self.egress or self.egress_deny)


@dataclass(frozen=True, slots=True)
class Policy:
    """One policy document. ``namespace`` is None for a cluster-wide policy; ``source`` is
    ``file:document``; :attr:`key` identifies the policy (``kind/namespace/name``, or
    ``kind/name`` when cluster-scoped)."""

    kind: PolicyKind
    namespace: str | None
    name: str
    rules: tuple[Rule, ...]
    source: str
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        if self.namespace is None:
            return f"{self.kind}/{self.name}"
        return f"{self.kind}/{self.namespace}/{self.name}"

    @property
    def display_name(self) -> str:
        """``ns/name`` (namespaced) or ``name``, as in error messages."""
        return self.name if self.namespace is None else f"{self.namespace}/{self.name}"
