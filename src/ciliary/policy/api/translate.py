"""Cilium's validation rules, and the translation of each policy kind into the normalized model.

A document that has the right shape (:mod:`ciliary.policy.api.schema`) is checked here the way
Cilium checks it when importing a rule (``pkg/policy/api/rule_validation.go``: ``Rule.Validate``,
``IngressRule.Validate``, ``PortRule.Validate``, ``CIDRRule.Validate``, ...) and the way the API
server checks a ``NetworkPolicy`` (``ValidateNetworkPolicySpec``), each problem with the path of the
field it is about, and translated on the way, so that checking and translating cannot disagree.

Translation decisions, all as in Cilium:

- ``CiliumNetworkPolicy`` (``pkg/k8s/apis/cilium.io/utils/utils.go``, ``ParseToCiliumRule``): the
  ``endpointSelector`` always gets ``k8s:io.kubernetes.pod.namespace=<policy namespace>``
  (replacing any namespace the user wrote), unless it selects ``reserved:init``;
  ``from/toEndpoints`` and ``from/toRequires`` selectors get the same label unless they already
  name a namespace (key ``k8s:`` or ``any:io.kubernetes.pod.namespace``) or the rule selects
  ``reserved:init``; ``from/toEndpoints`` with a ``reserved:`` key are left alone.
- ``CiliumClusterwideNetworkPolicy``: the same, except that the subject is not scoped and peer
  selectors get ``k8s:io.kubernetes.pod.namespace`` *Exists* instead (they select pods of every
  namespace, never non-pod identities through an empty selector).
- ``NetworkPolicy`` (``pkg/k8s/network_policy.go``, ``ParseNetworkPolicy``): one rule; the
  ``podSelector`` becomes a ``k8s:`` selector plus the policy namespace; each ``from``/``to`` peer
  becomes its own peer rule with the ports of its ``ingress``/``egress`` entry; a ``podSelector``
  alone is scoped to the policy namespace; a ``namespaceSelector`` selects on
  ``k8s:io.cilium.k8s.namespace.labels.<key>`` (empty: ``io.kubernetes.pod.namespace`` *Exists*,
  every namespace) AND'ed with the ``podSelector`` if any; ``ipBlock`` becomes a CIDR rule; an entry
  without peers allows every peer (wildcard selector); each port is its own port rule, protocol
  TCP by default, no port meaning every port; when there is no ingress entry and ``policyTypes``
  has Ingress or lacks Egress, an empty ingress entry is added (default deny), and likewise for
  egress when ``policyTypes`` has Egress. Cilium does not add its cluster label here: a lab is one
  cluster and its endpoints carry no ``io.cilium.k8s.policy.cluster`` label.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from ciliary.k8s.fields import format_path
from ciliary.k8s.names import is_dns1123_label, is_dns1123_subdomain
from ciliary.policy.api import schema
from ciliary.policy.api.errors import show
from ciliary.policy.api.labels import (
    NAMESPACE_LABEL,
    NAMESPACE_LABELS_PREFIX,
    POLICY_LABEL_DERIVED_FROM,
    POLICY_LABEL_NAME,
    POLICY_LABEL_NAMESPACE,
    SOURCE_K8S,
    SOURCE_RESERVED,
    SOURCE_UNSPEC,
    Label,
    label_value_problem,
    qualified_name_problem,
    split_key,
)
from ciliary.policy.api.model import (
    ENTITIES,
    AWSGroup,
    CIDRRule,
    Entity,
    FQDNSelector,
    HTTPHeaderMatch,
    HTTPRule,
    ICMPField,
    KafkaRule,
    L7Rules,
    Listener,
    Network,
    PeerRule,
    PolicyKind,
    PortProtocol,
    PortRule,
    Protocol,
    Rule,
    Secret,
    Service,
    TLSContext,
)
from ciliary.policy.api.selector import Requirement, Selector

__all__ = [
    "ICMPV4_TYPES",
    "ICMPV6_TYPES",
    "KAFKA_API_KEYS",
    "MAX_ICMP_FIELDS",
    "MAX_PORTS",
    "Translator",
]

Path = tuple[str | int, ...]

MAX_PORTS = 40
"""Ports per port rule (Cilium's ``maxPorts``)."""
MAX_ICMP_FIELDS = 40
NS_KEY = f"{SOURCE_K8S}:{NAMESPACE_LABEL}"
NS_ANY_KEY = f"any:{NAMESPACE_LABEL}"
INIT_KEY = f"{SOURCE_RESERVED}:init"

ICMPV4_TYPES: dict[str, int] = {
    "EchoReply": 0,
    "DestinationUnreachable": 3,
    "Redirect": 5,
    "Echo": 8,
    "EchoRequest": 8,
    "RouterAdvertisement": 9,
    "RouterSelection": 10,
    "RouterSolicitation": 10,
    "TimeExceeded": 11,
    "ParameterProblem": 12,
    "Timestamp": 13,
    "TimestampReply": 14,
    "Photuris": 40,
    "ExtendedEchoRequest": 42,
    "ExtendedEchoReply": 43,
}
"""ICMPv4 type names (``pkg/policy/api/icmp.go``)."""
ICMPV6_TYPES: dict[str, int] = {
    "DestinationUnreachable": 1,
    "PacketTooBig": 2,
    "TimeExceeded": 3,
    "ParameterProblem": 4,
    "EchoRequest": 128,
    "EchoReply": 129,
    "MulticastListenerQuery": 130,
    "MulticastListenerReport": 131,
    "MulticastListenerDone": 132,
    "RouterSolicitation": 133,
    "RouterAdvertisement": 134,
    "NeighborSolicitation": 135,
    "NeighborAdvertisement": 136,
    "RedirectMessage": 137,
    "RouterRenumbering": 138,
    "ICMPNodeInformationQuery": 139,
    "ICMPNodeInformationResponse": 140,
    "InverseNeighborDiscoverySolicitation": 141,
    "InverseNeighborDiscoveryAdvertisement": 142,
    "HomeAgentAddressDiscoveryRequest": 144,
    "HomeAgentAddressDiscoveryReply": 145,
    "MobilePrefixSolicitation": 146,
    "MobilePrefixAdvertisement": 147,
    "DuplicateAddressRequestCodeSuffix": 157,
    "DuplicateAddressConfirmationCodeSuffix": 158,
    "ExtendedEchoRequest": 160,
    "ExtendedEchoReply": 161,
}
"""ICMPv6 type names (``pkg/policy/api/icmp.go``)."""

KAFKA_API_KEYS: tuple[str, ...] = (
    "produce",
    "fetch",
    "offsets",
    "metadata",
    "leaderandisr",
    "stopreplica",
    "updatemetadata",
    "controlledshutdown",
    "offsetcommit",
    "offsetfetch",
    "findcoordinator",
    "joingroup",
    "heartbeat",
    "leavegroup",
    "syncgroup",
    "describegroups",
    "listgroups",
    "saslhandshake",
    "apiversions",
    "createtopics",
    "deletetopics",
    "deleterecords",
    "initproducerid",
    "offsetforleaderepoch",
    "addpartitionstotxn",
    "addoffsetstotxn",
    "endtxn",
    "writetxnmarkers",
    "txnoffsetcommit",
    "describeacls",
    "createacls",
    "deleteacls",
    "describeconfigs",
    "alterconfigs",
)
"""Kafka API key names Cilium accepts (``pkg/policy/api/kafka``), case-insensitive."""

_INGRESS_L3: tuple[tuple[str, str], ...] = (
    ("fromEndpoints", "from_endpoints"),
    ("fromCIDR", "from_cidr"),
    ("fromCIDRSet", "from_cidr_set"),
    ("fromEntities", "from_entities"),
    ("fromNodes", "from_nodes"),
    ("fromGroups", "from_groups"),
)
_EGRESS_L3: tuple[tuple[str, str], ...] = (
    ("toEndpoints", "to_endpoints"),
    ("toCIDR", "to_cidr"),
    ("toCIDRSet", "to_cidr_set"),
    ("toEntities", "to_entities"),
    ("toServices", "to_services"),
    ("toFQDNs", "to_fqdns"),
    ("toGroups", "to_groups"),
    ("toNodes", "to_nodes"),
)

# --------------------------------------------------------------------------------------------
# Value syntax

_PREFIX_LENGTH = re.compile(r"0|[1-9][0-9]{0,2}")
_FQDN_NAME = re.compile(r"[-a-zA-Z0-9_]+(\.[-a-zA-Z0-9_]+)*\.?")
_FQDN_PATTERN = re.compile(r"[-a-zA-Z0-9_*]+(\.[-a-zA-Z0-9_*]+)*\.?")
_PORT_NUMBER = re.compile(r"[0-9]{1,5}")
_SVC_NAME_CHARS = re.compile(r"[A-Za-z0-9-]{1,15}")
_KAFKA_TOPIC = re.compile(r"[a-zA-Z0-9._-]+")
_ICMP_NUMBER = re.compile(r"0|[1-9][0-9]{0,2}")
MAX_FQDN_LENGTH = 255
MAX_KAFKA_TOPIC_LENGTH = 255

_CIDR_EXAMPLE = "like 10.0.0.0/8 or fd00::/64"
_PORT_NAME_RULE = (
    "at most 15 letters, digits and '-', with at least one letter, no '--', not starting or"
    " ending with '-'"
)


def dns_subdomain_problem(text: str) -> str | None:
    if not is_dns1123_subdomain(text):
        return (
            "expected a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', each part"
            " starting and ending with a letter or digit, at most 253 characters), got"
            f" {show(text)}"
        )
    return None


def dns_label_problem(text: str) -> str | None:
    if not is_dns1123_label(text):
        return (
            "expected a DNS-1123 label (lowercase letters, digits and '-', starting and ending with"
            f" a letter or digit, at most 63 characters), got {show(text)}"
        )
    return None


def parse_network(text: str, *, allow_address: bool) -> Network:
    """A CIDR (host bits masked), or with ``allow_address`` a bare address as a /32 or /128.

    Raises ValueError with the reason. Follows Go's ``netip.ParsePrefix``/``ParseAddr``: no
    zones, no netmask notation, no leading zeros."""
    if "%" in text:
        raise ValueError("zones (%...) are not allowed")
    address, slash, bits = text.partition("/")
    if not slash and not allow_address:
        raise ValueError("no prefix length")
    if slash and not _PREFIX_LENGTH.fullmatch(bits):
        raise ValueError(f"invalid prefix length {bits!r}")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"{address!r} is not an IP address") from None
    if not slash:
        return ipaddress.ip_network(ip)
    if int(bits) > ip.max_prefixlen:
        raise ValueError(f"prefix length {bits} is longer than {ip.max_prefixlen}")
    return ipaddress.ip_network((ip, int(bits)), strict=False)


def is_cilium_port_name(text: str) -> bool:
    """Cilium's ``iana.IsSvcName`` (case-insensitive IANA service name)."""
    return (
        _SVC_NAME_CHARS.fullmatch(text) is not None
        and not text.startswith("-")
        and not text.endswith("-")
        and "--" not in text
        and any(c.isalpha() for c in text)
    )


def is_k8s_port_name(text: str) -> bool:
    """Kubernetes' ``IsValidPortName`` (lowercase IANA service name)."""
    return is_cilium_port_name(text) and text == text.lower()


def _contains(outer: Network, inner: Network) -> bool:
    return (
        outer.version == inner.version
        and outer.prefixlen <= inner.prefixlen
        and inner.network_address in outer
    )


# --------------------------------------------------------------------------------------------
# The translator


@dataclass
class Translator:
    """Checks and translates one document; problems are (path, message) pairs."""

    kind: PolicyKind
    namespace: str | None
    name: str
    problems: list[tuple[Path, str]] = field(default_factory=list)

    def problem(self, path: Path, message: str) -> None:
        self.problems.append((path, message))

    # ---------------------------------------------------------------------------- metadata

    def metadata(self, meta: schema.Metadata) -> None:
        problem = dns_subdomain_problem(meta.name)
        if problem:
            self.problem(("metadata", "name"), problem)
        if meta.namespace is not None and self.kind != "CiliumClusterwideNetworkPolicy":
            problem = dns_label_problem(meta.namespace)
            if problem:
                self.problem(("metadata", "namespace"), problem)
        for key, value in meta.labels.items():
            self._label_key(("metadata", "labels", key), key)
            problem = label_value_problem(value)
            if problem:
                self.problem(("metadata", "labels", key), f"{problem}, got {show(value)}")
        for key in meta.annotations:
            self._label_key(("metadata", "annotations", key), key)

    def _label_key(self, path: Path, key: str) -> None:
        problem = qualified_name_problem(key)
        if problem:
            self.problem(path, f"invalid key {show(key)}: {problem}")

    def policy_labels(self) -> tuple[Label, ...]:
        """The labels Cilium gives every rule of a policy (``GetPolicyLabels``, without uid)."""
        labels = [
            Label(SOURCE_K8S, POLICY_LABEL_DERIVED_FROM, self.kind),
            Label(SOURCE_K8S, POLICY_LABEL_NAME, self.name),
        ]
        if self.namespace is not None:
            labels.append(Label(SOURCE_K8S, POLICY_LABEL_NAMESPACE, self.namespace))
        return tuple(labels)

    # ---------------------------------------------------------------------------- selectors

    def selector(
        self, raw: schema.LabelSelector, path: Path, *, prefix: str | None = None
    ) -> Selector | None:
        """A selector with Cilium keys (``[source:]key``), or, with ``prefix``, with plain
        Kubernetes keys put behind ``prefix`` (``k8s:``). None if it has problems."""
        before = len(self.problems)
        labels: dict[str, str] = {}
        written: dict[str, str] = {}
        for key, value in raw.match_labels.items():
            where = (*path, "matchLabels", key)
            normalized = self._selector_key(key, where, prefix)
            problem = label_value_problem(value)
            if problem:
                self.problem(where, f"{problem}, got {show(value)}")
            if normalized is None:
                continue
            if normalized in written:
                self.problem(
                    where,
                    f"the same key as {written[normalized]!r} (both are {normalized!r})",
                )
                continue
            written[normalized] = key
            labels[normalized] = value
        requirements: list[Requirement] = []
        for i, expression in enumerate(raw.match_expressions):
            where = (*path, "matchExpressions", i)
            normalized = self._selector_key(expression.key, (*where, "key"), prefix)
            values = expression.values
            if expression.operator in ("In", "NotIn") and not values:
                self.problem(
                    (*where, "values"),
                    f"must be given (at least one) when operator is {expression.operator}",
                )
            if expression.operator in ("Exists", "DoesNotExist") and values:
                self.problem(
                    (*where, "values"),
                    f"must be empty when operator is {expression.operator}",
                )
            for j, value in enumerate(values):
                problem = label_value_problem(value)
                if problem:
                    self.problem((*where, "values", j), f"{problem}, got {show(value)}")
            if normalized is not None:
                requirements.append(
                    Requirement(normalized, expression.operator, tuple(sorted(set(values))))
                )
        if len(self.problems) > before:
            return None
        return Selector(tuple(sorted(labels.items())), tuple(requirements))

    def _selector_key(self, key: str, path: Path, prefix: str | None) -> str | None:
        if prefix is not None:
            problem = qualified_name_problem(key)
            if problem:
                self.problem(path, f"invalid label key {show(key)}: {problem}")
                return None
            return prefix + key
        source, bare = split_key(key)
        # Cilium validates the key as Kubernetes does, with the source folded in: source.key
        problem = qualified_name_problem(f"{source}.{bare}") if bare else "the key is empty"
        if problem:
            extended = f"{source}.{bare}"
            checked = f", checked as {extended!r}" if bare else ""
            self.problem(
                path,
                f"invalid label key {show(key)} (expected [source:]key, like app, k8s:app or"
                f" k8s:app.kubernetes.io/name{checked}): {problem}",
            )
            return None
        return f"{source}:{bare}"

    def _scoped_peer(self, selector: Selector, *, endpoints: bool, matches_init: bool) -> Selector:
        """Cilium's ``getEndpointSelector``: limit a peer selector to the policy namespace
        (``CiliumNetworkPolicy``) or to pods of any namespace (cluster-wide)."""
        if endpoints and selector.has_source(SOURCE_RESERVED):
            return selector
        if matches_init or selector.has_key(NS_KEY) or selector.has_key(NS_ANY_KEY):
            return selector
        if self.namespace is None:
            return selector.with_requirement(Requirement(NS_KEY, "Exists"))
        return selector.with_label(NS_KEY, self.namespace)

    # ---------------------------------------------------------------------------- Cilium rules

    def cilium_rules(self, doc: schema.CiliumPolicyDocument) -> tuple[Rule, ...]:
        entries: list[tuple[Path, schema.CiliumRule]] = []
        if doc.spec is not None:
            entries.append((("spec",), doc.spec))
        for i, raw in enumerate(doc.specs or ()):
            entries.append((("specs", i), raw))
        if not entries:
            if doc.specs is not None:
                self.problem(("specs",), "expected at least one rule, got an empty list")
            else:
                self.problem(("spec",), "required field is missing (give spec, specs or both)")
        rules: list[Rule] = []
        for index, (path, raw) in enumerate(entries):
            rule = self.cilium_rule(index, path, raw)
            if rule is not None:
                rules.append(rule)
        return tuple(rules)

    def cilium_rule(self, index: int, path: Path, raw: schema.CiliumRule) -> Rule | None:
        before = len(self.problems)
        if raw.endpoint_selector is None and raw.node_selector is None:
            self.problem(
                path,
                "a rule needs endpointSelector (or, in a CiliumClusterwideNetworkPolicy,"
                " nodeSelector); {} selects everything",
            )
        if raw.endpoint_selector is not None and raw.node_selector is not None:
            self.problem(
                (*path, "nodeSelector"),
                "cannot be combined with endpointSelector (a rule selects endpoints or nodes)",
            )
        elif raw.node_selector is not None and self.kind != "CiliumClusterwideNetworkPolicy":
            self.problem(
                (*path, "nodeSelector"),
                "only a CiliumClusterwideNetworkPolicy may select nodes (host policies are"
                " cluster-wide); use endpointSelector",
            )
        if not (raw.ingress or raw.ingress_deny or raw.egress or raw.egress_deny):
            self.problem(
                path,
                "a rule needs at least one of ingress, ingressDeny, egress and egressDeny (an"
                " empty list counts as none; an entry {} allows nothing and turns default deny"
                " on)",
            )
        host = raw.node_selector is not None and raw.endpoint_selector is None
        endpoint_selector: Selector | None = None
        node_selector: Selector | None = None
        matches_init = False
        if raw.endpoint_selector is not None:
            endpoint_selector = self.selector(raw.endpoint_selector, (*path, "endpointSelector"))
            if endpoint_selector is not None:
                matches_init = endpoint_selector.has_key(INIT_KEY)
                if self.namespace is not None and not matches_init:
                    endpoint_selector = endpoint_selector.with_label(NS_KEY, self.namespace)
        if raw.node_selector is not None:
            node_selector = self.selector(raw.node_selector, (*path, "nodeSelector"))

        def peers(
            entries: Sequence[
                schema.IngressRule
                | schema.IngressDenyRule
                | schema.EgressRule
                | schema.EgressDenyRule
            ],
            name: str,
        ) -> tuple[PeerRule, ...]:
            out = []
            for i, entry in enumerate(entries):
                peer = self.peer_rule(entry, (*path, name, i), i, matches_init, host)
                if peer is not None:
                    out.append(peer)
            return tuple(out)

        ingress = peers(raw.ingress, "ingress")
        ingress_deny = peers(raw.ingress_deny, "ingressDeny")
        egress = peers(raw.egress, "egress")
        egress_deny = peers(raw.egress_deny, "egressDeny")
        labels = list(self.policy_labels())
        for i, label in enumerate(raw.labels):
            if not label.key:
                self.problem((*path, "labels", i, "key"), "must not be empty")
            labels.append(Label(label.source or SOURCE_UNSPEC, label.key, label.value))
        if len(self.problems) > before:
            return None
        return Rule(
            index=index,
            path=format_path(path),
            endpoint_selector=endpoint_selector,
            node_selector=node_selector,
            ingress=ingress,
            ingress_deny=ingress_deny,
            egress=egress,
            egress_deny=egress_deny,
            enable_default_deny=(raw.enable_default_deny.ingress, raw.enable_default_deny.egress),
            description=raw.description,
            labels=tuple(sorted(labels, key=lambda lb: (lb.key, lb.source, lb.value))),
            log=raw.log.value if raw.log is not None else None,
        )

    def peer_rule(
        self,
        raw: schema.IngressRule
        | schema.IngressDenyRule
        | schema.EgressRule
        | schema.EgressDenyRule,
        path: Path,
        index: int,
        matches_init: bool,
        host: bool,
    ) -> PeerRule | None:
        before = len(self.problems)
        ingress = isinstance(raw, schema.IngressRule | schema.IngressDenyRule)
        deny = isinstance(raw, schema.IngressDenyRule | schema.EgressDenyRule)
        table = _INGRESS_L3 if ingress else _EGRESS_L3
        present = [name for name, attr in table if getattr(raw, attr, None)]
        if len(present) > 1:
            self.problem(
                (*path, present[1]),
                f"cannot be combined with {present[0]} in the same rule (Cilium allows one kind"
                " of peer per rule; write one rule per kind)",
            )
        if raw.icmps and raw.to_ports:
            self.problem(
                (*path, "icmps"),
                "cannot be combined with toPorts in the same rule (write a separate rule)",
            )
        direction = "from" if ingress else "to"
        if isinstance(raw, schema.IngressRule | schema.IngressDenyRule):
            endpoints_raw, requires_raw = raw.from_endpoints, raw.from_requires
            cidr_raw, cidr_set_raw = raw.from_cidr, raw.from_cidr_set
            entities_raw, nodes_raw, groups_raw = raw.from_entities, raw.from_nodes, raw.from_groups
        else:
            endpoints_raw, requires_raw = raw.to_endpoints, raw.to_requires
            cidr_raw, cidr_set_raw = raw.to_cidr, raw.to_cidr_set
            entities_raw, nodes_raw, groups_raw = raw.to_entities, raw.to_nodes, raw.to_groups

        endpoints: list[Selector] = []
        for i, selector_raw in enumerate(endpoints_raw):
            selector = self.selector(selector_raw, (*path, f"{direction}Endpoints", i))
            if selector is not None:
                endpoints.append(
                    self._scoped_peer(selector, endpoints=True, matches_init=matches_init)
                )
        requires: list[Selector] = []
        for i, selector_raw in enumerate(requires_raw):
            selector = self.selector(selector_raw, (*path, f"{direction}Requires", i))
            if selector is not None:
                requires.append(
                    self._scoped_peer(selector, endpoints=False, matches_init=matches_init)
                )
        cidrs: list[CIDRRule] = []
        for i, text in enumerate(cidr_raw):
            network = self._network(text, (*path, f"{direction}CIDR", i), allow_address=True)
            if network is not None:
                cidrs.append(CIDRRule(network))
        for i, cidr_rule in enumerate(cidr_set_raw):
            translated = self.cidr_rule(cidr_rule, (*path, f"{direction}CIDRSet", i))
            if translated is not None:
                cidrs.append(translated)
        entities: list[Entity] = []
        for i, entity in enumerate(entities_raw):
            if entity in ENTITIES:
                entities.append(entity)
            else:
                self.problem(
                    (*path, f"{direction}Entities", i),
                    f"unknown entity {show(entity)} (expected one of {', '.join(ENTITIES)})",
                )
        nodes: list[Selector] = []
        for i, selector_raw in enumerate(nodes_raw):
            selector = self.selector(selector_raw, (*path, f"{direction}Nodes", i))
            if selector is not None:
                nodes.append(selector)
        groups = tuple(self.aws_group(g) for g in groups_raw)
        services: list[Service] = []
        fqdns: list[FQDNSelector] = []
        if isinstance(raw, schema.EgressRule | schema.EgressDenyRule):
            for i, service in enumerate(raw.to_services):
                translated_service = self.service(service, (*path, "toServices", i))
                if translated_service is not None:
                    services.append(translated_service)
        if isinstance(raw, schema.EgressRule):
            for i, fqdn in enumerate(raw.to_fqdns):
                selector_fqdn = self.fqdn(fqdn, (*path, "toFQDNs", i))
                if selector_fqdn is not None:
                    fqdns.append(selector_fqdn)
        ports: list[PortRule] = []
        port_rules: Sequence[schema.PortRule | schema.PortDenyRule] = raw.to_ports
        for i, port_rule in enumerate(port_rules):
            translated_ports = self.port_rule(
                port_rule, (*path, "toPorts", i), ingress=ingress, deny=deny, host=host
            )
            if translated_ports is not None:
                ports.append(translated_ports)
        icmps: list[ICMPField] = []
        for i, icmp_rule in enumerate(raw.icmps):
            where = (*path, "icmps", i, "fields")
            if len(icmp_rule.fields) > MAX_ICMP_FIELDS:
                self.problem(
                    where,
                    f"too many ICMP types ({len(icmp_rule.fields)}; at most {MAX_ICMP_FIELDS})",
                )
            for j, icmp_field in enumerate(icmp_rule.fields):
                translated_icmp = self.icmp_field(icmp_field, (*where, j))
                if translated_icmp is not None:
                    icmps.append(translated_icmp)
        authentication = None
        if isinstance(raw, schema.IngressRule | schema.EgressRule) and raw.authentication:
            authentication = raw.authentication.mode
        if len(self.problems) > before:
            return None
        return PeerRule(
            index=index,
            endpoints=tuple(endpoints),
            requires=tuple(requires),
            entities=tuple(entities),
            cidrs=tuple(cidrs),
            fqdns=tuple(fqdns),
            services=tuple(services),
            nodes=tuple(nodes),
            groups=groups,
            ports=tuple(ports),
            icmps=tuple(icmps),
            authentication=authentication,
        )

    # ---------------------------------------------------------------------------- L3 values

    def _network(self, text: str, path: Path, *, allow_address: bool) -> Network | None:
        try:
            return parse_network(text, allow_address=allow_address)
        except ValueError as exc:
            what = "a CIDR or an IP address" if allow_address else "a CIDR (address/prefix length)"
            self.problem(path, f"expected {what} {_CIDR_EXAMPLE}, got {show(text)} ({exc})")
            return None

    def cidr_rule(self, raw: schema.CIDRRule, path: Path) -> CIDRRule | None:
        given = [
            name
            for name, value in (
                ("cidr", raw.cidr),
                ("cidrGroupRef", raw.cidr_group_ref),
                ("cidrGroupSelector", raw.cidr_group_selector),
            )
            if value is not None
        ]
        if not given:
            self.problem(path, "expected one of cidr, cidrGroupRef and cidrGroupSelector")
            return None
        if len(given) > 1:
            self.problem(
                (*path, given[1]),
                f"cannot be combined with {given[0]} (give one of cidr, cidrGroupRef and"
                " cidrGroupSelector)",
            )
            return None
        if raw.cidr is None:
            if raw.except_:
                self.problem((*path, "except"), "only valid with cidr")
                return None
            if raw.cidr_group_ref is not None:
                problem = dns_subdomain_problem(raw.cidr_group_ref)
                if problem:
                    self.problem((*path, "cidrGroupRef"), problem)
                    return None
                return CIDRRule(None, group_ref=raw.cidr_group_ref)
            assert raw.cidr_group_selector is not None
            selector = self.selector(
                raw.cidr_group_selector, (*path, "cidrGroupSelector"), prefix="cidrgroup:"
            )
            return None if selector is None else CIDRRule(None, group_selector=selector)
        network = self._network(raw.cidr, (*path, "cidr"), allow_address=False)
        excepts: list[Network] = []
        for i, text in enumerate(raw.except_):
            excluded = self._network(text, (*path, "except", i), allow_address=False)
            if excluded is None or network is None:
                continue
            if not _contains(network, excluded):
                self.problem(
                    (*path, "except", i), f"{text} is not inside cidr {_shown(raw.cidr, network)}"
                )
                continue
            excepts.append(excluded)
        if network is None or len(excepts) < len(raw.except_):
            return None
        return CIDRRule(network, tuple(excepts))

    def aws_group(self, raw: schema.Groups) -> AWSGroup:
        aws = raw.aws or schema.AWSGroup()
        return AWSGroup(
            labels=tuple(sorted(aws.labels.items())),
            security_group_ids=tuple(aws.security_groups_ids),
            security_group_names=tuple(aws.security_groups_names),
            region=aws.region,
        )

    def service(self, raw: schema.Service, path: Path) -> Service | None:
        if raw.k8s_service is None and raw.k8s_service_selector is None:
            self.problem(path, "expected k8sService or k8sServiceSelector")
            return None
        if raw.k8s_service is not None and raw.k8s_service_selector is not None:
            self.problem(
                (*path, "k8sServiceSelector"),
                "cannot be combined with k8sService (write one toServices entry for each)",
            )
            return None
        if raw.k8s_service is not None:
            where = (*path, "k8sService")
            name, namespace = raw.k8s_service.service_name, raw.k8s_service.namespace
            if name is None:
                self.problem((*where, "serviceName"), "required field is missing")
                return None
            problem = dns_label_problem(name)
            if problem:
                self.problem((*where, "serviceName"), problem)
                return None
            if not self._namespace_ok(namespace, (*where, "namespace")):
                return None
            return Service(name=name, namespace=namespace)
        assert raw.k8s_service_selector is not None
        where = (*path, "k8sServiceSelector")
        namespace = raw.k8s_service_selector.namespace
        selector = self.selector(raw.k8s_service_selector.selector, (*where, "selector"))
        if not self._namespace_ok(namespace, (*where, "namespace")) or selector is None:
            return None
        return Service(namespace=namespace, selector=selector)

    def _namespace_ok(self, namespace: str | None, path: Path) -> bool:
        if namespace is None:
            return True
        problem = dns_label_problem(namespace)
        if problem:
            self.problem(path, problem)
        return problem is None

    def fqdn(self, raw: schema.FQDNSelector, path: Path) -> FQDNSelector | None:
        if raw.match_name is not None and raw.match_pattern is not None:
            self.problem(
                (*path, "matchPattern"),
                "cannot be combined with matchName (give one of them per entry)",
            )
            return None
        if raw.match_name is None and raw.match_pattern is None:
            self.problem(path, "expected matchName or matchPattern")
            return None
        if raw.match_name is not None:
            name = self._fqdn_text(raw.match_name, (*path, "matchName"), pattern=False)
            return None if name is None else FQDNSelector(match_name=name)
        assert raw.match_pattern is not None
        pattern = self._fqdn_text(raw.match_pattern, (*path, "matchPattern"), pattern=True)
        return None if pattern is None else FQDNSelector(match_pattern=pattern)

    def _fqdn_text(self, text: str, path: Path, *, pattern: bool) -> str | None:
        syntax = _FQDN_PATTERN if pattern else _FQDN_NAME
        if len(text) > MAX_FQDN_LENGTH or not syntax.fullmatch(text):
            allowed = "letters, digits, '-', '_'" + (", '*'" if pattern else "")
            self.problem(
                path,
                f"expected a DNS {'pattern' if pattern else 'name'} ({allowed} and '.' between"
                f" non-empty parts, at most {MAX_FQDN_LENGTH} characters), got {show(text)}",
            )
            return None
        normalized = text.lower()
        return normalized[:-1] if normalized.endswith(".") else normalized

    # ---------------------------------------------------------------------------- L4

    def cilium_port(self, raw: schema.PortProtocol, path: Path) -> PortProtocol | None:
        protocol: Protocol = raw.protocol or "ANY"
        port = raw.port
        if port is None:
            self.problem((*path, "port"), 'required field is missing ("0" means every port)')
            return None
        number: int | None = None
        name: str | None = None
        if isinstance(port, int):
            number = port
        elif is_cilium_port_name(port):
            name = port.lower()
        elif _PORT_NUMBER.fullmatch(port) and (port == "0" or not port.startswith("0")):
            number = int(port)
        elif not port:
            self.problem((*path, "port"), 'must not be empty ("0" means every port)')
            return None
        else:
            hint = " (for a range, use endPort)" if "-" in port or ":" in port else ""
            if _PORT_NUMBER.fullmatch(port):
                hint = " (no leading zeros: Cilium would read the number as octal)"
            self.problem(
                (*path, "port"),
                "expected a port number (0-65535) or a port name (an IANA service name:"
                f" {_PORT_NAME_RULE}), got {show(port)}{hint}",
            )
            return None
        if number is not None and not 0 <= number <= 65535:
            self.problem((*path, "port"), f"expected a port number 0-65535, got {show(port)}")
            return None
        end = raw.end_port
        if end is not None and end != 0:
            if name is not None:
                self.problem(
                    (*path, "endPort"),
                    f"only valid with a numeric port (port is the named port {name!r})",
                )
                return None
            assert number is not None
            if not 0 <= end <= 65535:
                self.problem((*path, "endPort"), f"expected a port number 0-65535, got {show(end)}")
                return None
            if end < number:
                self.problem((*path, "endPort"), f"must be >= port ({number})")
                return None
        end_port = end if end and number is not None and end > number else None
        return PortProtocol(port=number, end_port=end_port, name=name, protocol=protocol)

    def port_rule(
        self,
        raw: schema.PortRule | schema.PortDenyRule,
        path: Path,
        *,
        ingress: bool,
        deny: bool,
        host: bool,
    ) -> PortRule | None:
        before = len(self.problems)
        if len(raw.ports) > MAX_PORTS:
            self.problem(
                (*path, "ports"), f"too many ports ({len(raw.ports)}; at most {MAX_PORTS})"
            )
        ports: list[PortProtocol | None] = [
            self.cilium_port(p, (*path, "ports", i)) for i, p in enumerate(raw.ports)
        ]
        if isinstance(raw, schema.PortDenyRule) or deny:
            if len(self.problems) > before:
                return None
            return PortRule(ports=tuple(p for p in ports if p is not None))
        l7 = None
        if raw.rules is not None:
            l7 = self.l7_rules(raw.rules, (*path, "rules"), raw, ports, ingress=ingress, host=host)
        for i, server_name in enumerate(raw.server_names):
            if not server_name:
                self.problem((*path, "serverNames", i), "must not be empty")
        if raw.server_names and l7 is not None and raw.terminating_tls is None:
            self.problem(
                (*path, "serverNames"),
                "with L7 rules, serverNames need terminatingTLS (the proxy must see the TLS"
                " handshake)",
            )
        terminating = self.tls(raw.terminating_tls, (*path, "terminatingTLS"))
        originating = self.tls(raw.originating_tls, (*path, "originatingTLS"))
        listener = None
        if raw.listener is not None:
            listener = self.listener(raw.listener, (*path, "listener"))
            if ingress:
                self.problem((*path, "listener"), "a listener is only allowed on egress")
            elif raw.rules is not None and l7 is not None:
                self.problem((*path, "listener"), "cannot be combined with L7 rules")
        if len(self.problems) > before:
            return None
        return PortRule(
            ports=tuple(p for p in ports if p is not None),
            l7=l7,
            server_names=tuple(raw.server_names),
            terminating_tls=terminating,
            originating_tls=originating,
            listener=listener,
        )

    def tls(self, raw: schema.TLSContext | None, path: Path) -> TLSContext | None:
        if raw is None:
            return None
        if not raw.secret.name:
            self.problem((*path, "secret", "name"), "must not be empty")
        return TLSContext(
            secret=Secret(raw.secret.name, raw.secret.namespace),
            trusted_ca=raw.trusted_ca,
            certificate=raw.certificate,
            private_key=raw.private_key,
        )

    def listener(self, raw: schema.Listener, path: Path) -> Listener:
        if not raw.name:
            self.problem((*path, "name"), "must not be empty")
        if not raw.envoy_config.name:
            self.problem((*path, "envoyConfig", "name"), "must not be empty")
        if raw.priority is not None and not 1 <= raw.priority <= 100:
            self.problem((*path, "priority"), f"expected 1-100, got {show(raw.priority)}")
        return Listener(
            name=raw.name,
            envoy_config_name=raw.envoy_config.name,
            envoy_config_kind=raw.envoy_config.kind,
            priority=raw.priority,
        )

    def icmp_field(self, raw: schema.ICMPField, path: Path) -> ICMPField | None:
        names = ICMPV4_TYPES if raw.family == "IPv4" else ICMPV6_TYPES
        value = raw.type
        if isinstance(value, str) and _ICMP_NUMBER.fullmatch(value):
            value = int(value)
        if isinstance(value, int):
            if 0 <= value <= 255:
                return ICMPField(raw.family, value)
            self.problem((*path, "type"), f"expected an ICMP type 0-255, got {show(value)}")
            return None
        if value in names:
            return ICMPField(raw.family, names[value])
        self.problem(
            (*path, "type"),
            f"unknown {raw.family} ICMP type {show(value)} (expected 0-255 or one of"
            f" {', '.join(names)})",
        )
        return None

    # ---------------------------------------------------------------------------- L7

    def l7_rules(
        self,
        raw: schema.L7Rules,
        path: Path,
        port_rule: schema.PortRule,
        ports: Sequence[PortProtocol | None],
        *,
        ingress: bool,
        host: bool,
    ) -> L7Rules | None:
        kinds: list[Literal["http", "dns", "kafka", "l7"]] = []
        if raw.http is not None:
            kinds.append("http")
        if raw.kafka is not None:
            kinds.append("kafka")
        if raw.dns is not None:
            kinds.append("dns")
        if raw.l7 is not None and raw.l7proto is None:
            self.problem((*path, "l7"), "needs l7proto (the L7 protocol the rules are for)")
        if raw.l7proto is not None:
            kinds.append("l7")
        if not kinds:
            return None
        if len(kinds) > 1:
            second = "l7proto" if kinds[1] == "l7" else kinds[1]
            self.problem(
                (*path, second),
                f"cannot be combined with {kinds[0]} (one L7 protocol per port rule)",
            )
            return None
        kind = kinds[0]
        if kind == "dns" and ingress:
            self.problem((*path, "dns"), "DNS rules are only allowed on egress")
        elif host and (ingress or kind != "dns"):
            self.problem(
                path,
                "host policies (nodeSelector) support no L7 rules on ingress"
                if ingress
                else "host policies (nodeSelector) support only DNS L7 rules on egress",
            )
        if kind == "dns" and not port_rule.ports:
            self.problem((*path, "dns"), "DNS rules need a port (usually 53)")
        for i, port in enumerate(ports):
            if port is None:
                continue
            where = (*path[:-1], "ports", i)
            if port.port == 0:
                self.problem((*where, "port"), "L7 rules cannot be used with port 0 (every port)")
            if kind != "dns" and port.protocol != "TCP":
                default = "" if port_rule.ports[i].protocol else ", the default"
                self.problem(
                    (*where, "protocol"),
                    f"L7 rules need protocol TCP (got {port.protocol}{default}); only DNS rules"
                    " may use UDP or ANY",
                )
            if port.end_port is not None:
                self.problem((*where, "endPort"), "L7 rules do not support port ranges")
        http = tuple(
            h for i, x in enumerate(raw.http or ()) if (h := self.http(x, (*path, "http", i)))
        )
        dns = tuple(
            d for i, x in enumerate(raw.dns or ()) if (d := self.fqdn(x, (*path, "dns", i)))
        )
        kafka = tuple(
            k for i, x in enumerate(raw.kafka or ()) if (k := self.kafka(x, (*path, "kafka", i)))
        )
        generic = tuple(tuple(sorted(entry.items())) for entry in raw.l7 or ())
        return L7Rules(kind=kind, http=http, dns=dns, kafka=kafka, l7proto=raw.l7proto, l7=generic)

    def http(self, raw: schema.HTTPRule, path: Path) -> HTTPRule | None:
        before = len(self.problems)
        for name, value in (("method", raw.method), ("path", raw.path), ("host", raw.host)):
            if value:
                self._regex(value, (*path, name))
        matches: list[HTTPHeaderMatch] = []
        for i, match in enumerate(raw.header_matches):
            where = (*path, "headerMatches", i)
            if not match.name:
                self.problem((*where, "name"), "must not be empty")
            secret = None
            if match.secret is not None:
                if not match.secret.name:
                    self.problem((*where, "secret", "name"), "must not be empty")
                secret = Secret(match.secret.name, match.secret.namespace)
            matches.append(HTTPHeaderMatch(match.name, match.value, secret, match.mismatch))
        if len(self.problems) > before:
            return None
        return HTTPRule(
            method=raw.method or None,
            path=raw.path or None,
            host=raw.host or None,
            headers=tuple(raw.headers),
            header_matches=tuple(matches),
        )

    def _regex(self, text: str, path: Path) -> None:
        # Envoy uses RE2, Cilium validates with Go's regexp (also RE2); Python's re is the
        # nearest at hand and rejects the same malformed patterns.
        try:
            re.compile(text)
        except (re.error, RecursionError, OverflowError, ValueError) as exc:
            self.problem(path, f"not a valid regular expression: {show(text)} ({exc})")

    def kafka(self, raw: schema.KafkaRule, path: Path) -> KafkaRule | None:
        before = len(self.problems)
        role = raw.role.lower() if raw.role else None
        api_key = raw.api_key.lower() if raw.api_key else None
        if role and api_key:
            self.problem((*path, "apiKey"), "cannot be combined with role")
        if role and role not in ("produce", "consume"):
            self.problem((*path, "role"), f"expected produce or consume, got {show(raw.role)}")
        if api_key and api_key not in KAFKA_API_KEYS:
            self.problem(
                (*path, "apiKey"),
                f"unknown Kafka API key {show(raw.api_key)} (expected one of"
                f" {', '.join(KAFKA_API_KEYS)})",
            )
        version = None
        if raw.api_version:
            if raw.api_version.isascii() and raw.api_version.isdigit():
                with contextlib.suppress(ValueError):
                    version = int(raw.api_version)
            if version is None or version > 32767:
                self.problem(
                    (*path, "apiVersion"),
                    f"expected a number 0-32767 (as a string), got {show(raw.api_version)}",
                )
        if raw.topic and (
            len(raw.topic) > MAX_KAFKA_TOPIC_LENGTH or not _KAFKA_TOPIC.fullmatch(raw.topic)
        ):
            self.problem(
                (*path, "topic"),
                "expected a Kafka topic (letters, digits, '.', '_' and '-', at most"
                f" {MAX_KAFKA_TOPIC_LENGTH} characters), got {show(raw.topic)}",
            )
        if len(self.problems) > before:
            return None
        return KafkaRule(
            role=role,
            api_key=api_key,
            api_version=version,
            client_id=raw.client_id or None,
            topic=raw.topic or None,
        )

    # ---------------------------------------------------------------------------- NetworkPolicy

    def network_policy_rule(self, spec: schema.NetworkPolicySpec) -> Rule | None:
        before = len(self.problems)
        namespace = self.namespace or "default"
        path: Path = ("spec",)
        subject = self.selector(spec.pod_selector, (*path, "podSelector"), prefix="k8s:")
        types = spec.policy_types
        if types is not None and len(types) > 2:
            self.problem((*path, "policyTypes"), "may not list more than two policy types")
        ingress: list[PeerRule] = []
        for i, entry in enumerate(spec.ingress):
            where = (*path, "ingress", i)
            ports = self.network_policy_ports(entry.ports, (*where, "ports"))
            if not entry.from_:
                ingress.append(PeerRule(len(ingress), endpoints=(Selector(),), ports=ports))
            for j, peer in enumerate(entry.from_):
                translated = self.network_policy_peer(peer, (*where, "from", j), len(ingress))
                if translated is not None:
                    ingress.append(_with_ports(translated, ports))
        egress: list[PeerRule] = []
        for i, egress_entry in enumerate(spec.egress):
            where = (*path, "egress", i)
            ports = self.network_policy_ports(egress_entry.ports, (*where, "ports"))
            if not egress_entry.to:
                egress.append(PeerRule(len(egress), endpoints=(Selector(),), ports=ports))
            for j, peer in enumerate(egress_entry.to):
                translated = self.network_policy_peer(peer, (*where, "to", j), len(egress))
                if translated is not None:
                    egress.append(_with_ports(translated, ports))
        listed = set(types or ())
        if not ingress and ("Ingress" in listed or "Egress" not in listed):
            ingress.append(PeerRule(0))
        if not egress and "Egress" in listed:
            egress.append(PeerRule(0))
        if len(self.problems) > before or subject is None:
            return None
        return Rule(
            index=0,
            path="spec",
            endpoint_selector=subject.with_label(NS_KEY, namespace),
            ingress=tuple(ingress),
            egress=tuple(egress),
            labels=self.policy_labels(),
        )

    def network_policy_peer(
        self, peer: schema.NetworkPolicyPeer, path: Path, index: int
    ) -> PeerRule | None:
        if peer.pod_selector is None and peer.namespace_selector is None and peer.ip_block is None:
            self.problem(path, "expected podSelector, namespaceSelector or ipBlock")
            return None
        if peer.ip_block is not None:
            if peer.pod_selector is not None or peer.namespace_selector is not None:
                self.problem(
                    (*path, "ipBlock"),
                    "cannot be combined with podSelector or namespaceSelector in the same peer"
                    " (write separate peers)",
                )
                return None
            cidr = self.ip_block(peer.ip_block, (*path, "ipBlock"))
            return None if cidr is None else PeerRule(index, cidrs=(cidr,))
        pods = None
        if peer.pod_selector is not None:
            pods = self.selector(peer.pod_selector, (*path, "podSelector"), prefix="k8s:")
            if pods is None:
                return None
        if peer.namespace_selector is None:
            assert pods is not None
            return PeerRule(index, endpoints=(pods.with_label(NS_KEY, self.namespace or ""),))
        namespaces = self.selector(
            peer.namespace_selector,
            (*path, "namespaceSelector"),
            prefix=f"{SOURCE_K8S}:{NAMESPACE_LABELS_PREFIX}",
        )
        if namespaces is None:
            return None
        if namespaces.is_wildcard:
            namespaces = Selector((), (Requirement(NS_KEY, "Exists"),))
        if pods is not None:
            namespaces = Selector(
                tuple(sorted((*namespaces.match_labels, *pods.match_labels))),
                (*namespaces.match_expressions, *pods.match_expressions),
            )
        return PeerRule(index, endpoints=(namespaces,))

    def ip_block(self, raw: schema.IPBlock, path: Path) -> CIDRRule | None:
        network = self._network(raw.cidr, (*path, "cidr"), allow_address=False)
        excepts: list[Network] = []
        for i, text in enumerate(raw.except_):
            excluded = self._network(text, (*path, "except", i), allow_address=False)
            if excluded is None or network is None:
                continue
            if not _contains(network, excluded) or excluded.prefixlen <= network.prefixlen:
                self.problem(
                    (*path, "except", i),
                    f"{text} must be a strict subset of cidr {_shown(raw.cidr, network)}",
                )
                continue
            excepts.append(excluded)
        if network is None or len(excepts) < len(raw.except_):
            return None
        return CIDRRule(network, tuple(excepts))

    def network_policy_ports(
        self, ports: Sequence[schema.NetworkPolicyPort], path: Path
    ) -> tuple[PortRule, ...]:
        out: list[PortRule] = []
        for i, raw in enumerate(ports):
            port = self.network_policy_port(raw, (*path, i))
            if port is not None:
                out.append(PortRule(ports=(port,)))
        return tuple(out)

    def network_policy_port(self, raw: schema.NetworkPolicyPort, path: Path) -> PortProtocol | None:
        if raw.port is None:
            if raw.end_port is not None:
                self.problem((*path, "endPort"), "only valid with port")
                return None
            return PortProtocol(port=0, protocol=raw.protocol)
        if isinstance(raw.port, str):
            if not is_k8s_port_name(raw.port):
                self.problem(
                    (*path, "port"),
                    "expected a port number (1-65535) or a port name (at most 15 lowercase"
                    " letters, digits and '-', with at least one letter, no '--', not starting"
                    f" or ending with '-'), got {show(raw.port)}",
                )
                return None
            if raw.end_port is not None:
                self.problem(
                    (*path, "endPort"),
                    f"only valid with a numeric port (port is the named port {raw.port!r})",
                )
                return None
            return PortProtocol(port=None, name=raw.port, protocol=raw.protocol)
        if not 1 <= raw.port <= 65535:
            self.problem((*path, "port"), f"expected a port number 1-65535, got {show(raw.port)}")
            return None
        end = raw.end_port
        if end is not None:
            if not 1 <= end <= 65535:
                self.problem((*path, "endPort"), f"expected a port number 1-65535, got {show(end)}")
                return None
            if end < raw.port:
                self.problem((*path, "endPort"), f"must be >= port ({raw.port})")
                return None
        end_port = end if end is not None and end > raw.port else None
        return PortProtocol(port=raw.port, end_port=end_port, protocol=raw.protocol)


def _shown(text: str, network: Network) -> str:
    """A CIDR as written, with its masked form when that differs (``10.1.2.3/8 (10.0.0.0/8)``)."""
    return text if text == str(network) else f"{text} ({network})"


def _with_ports(peer: PeerRule, ports: tuple[PortRule, ...]) -> PeerRule:
    return PeerRule(peer.index, endpoints=peer.endpoints, cidrs=peer.cidrs, ports=ports)
