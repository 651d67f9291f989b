"""Resolving the policy of one endpoint: the rules that select it, turned into policy map entries.

:func:`compute` is Cilium's policy distillation (``pkg/policy/repository.go``
``resolvePolicyLocked``, ``rule.go``, ``l4.go``, ``mapstate.go``) for one subject identity, with the
semantics Cilium and Kubernetes document, each decision below with where it comes from:

Which rules apply
    Rules whose subject selector selects the endpoint's labels (endpoint selectors for endpoints,
    node selectors for the host endpoint only: ``rule.matchesSubject``). Allows from all of them
    add up; any deny beats any allow (``Documentation/security/policy/deny.rst``).

Enforcement (``Documentation/security/policy/intro.rst``, "Policy Enforcement Modes")
    ``default``: a direction is enforced (default deny) once a selecting rule has a section for it,
    unless the rule says ``enableDefaultDeny: false`` for it (such rules "are ignored when
    determining the default mode"). ``enableDefaultDeny: true`` on a rule without a section for
    that direction enforces nothing: Cilium only looks at it for rules with ``ingress``/
    ``ingressDeny`` (``egress``/``egressDeny``) entries (``computePolicyEnforcementAndRules``).
    ``always``: both directions enforced even without rules. ``never``: nothing enforced and no
    rule applies, deny rules included. A direction that is not enforced gets the allow-all entry
    (identity 0, every protocol), and deny rules still apply on top of it (Cilium adds a wildcard
    allow in that case, ``computePolicyEnforcementAndRules``; a deny still wins).

Peers (``l4.go``/``rule.go`` ``mergeIngress``; ``Documentation/security/policy/language.rst``)
    A peer entry with ports but no L3 member applies to every peer: identity 0. An
    empty endpoint selector and the entity ``all`` select everything: identity 0 too, so that peers
    not known yet are covered, as Cilium's wildcard selector. Other selectors become the identities
    the :class:`~ciliary.policy.selectorcache.SelectorCache` says they select. A peer entry with
    nothing at all (``- {}``) allows nothing, but its rule still turns enforcement on.

``fromRequires``/``toRequires``
    As Cilium applies them (``resolveL4IngressPolicy``: requirements of every rule selecting the
    endpoint are appended to the ``matchExpressions`` of every ``fromEndpoints`` selector, via
    ``GetSourceEndpointSelectorsWithRequirements``): the requirements of all allow entries of one
    direction (of every rule selecting the endpoint) restrict every endpoint selector of the allow
    entries of that direction, and likewise deny requirements restrict deny entries' endpoint
    selectors. They grant nothing alone, and they do not restrict entity, CIDR or port-only
    entries (Cilium only folds them into ``fromEndpoints``; the docs call them "a foundation for any
    fromEndpoints relationship").

Ports (``l4.go``; ``Documentation/security/policy/language.rst``, "Layer 4 Examples")
    No ports and no ICMP: every protocol and port (one key per identity, prefix 40). Protocol
    ``ANY`` is TCP, UDP and SCTP (``mergeIngress`` expands it so); port 0 is every port of the
    protocol; a range becomes the fewest LPM blocks covering it; a ``toPorts`` entry listing no port
    is every protocol and port. Named ports: ingress ones resolve through the endpoint's own
    ``named_ports`` (a name it does not have, or has for another protocol, gives no entry, as
    Cilium's ``GetNamedPort``); egress ones name the *destination's* port, so they resolve per
    selected identity through ``remote_named_ports`` (a wildcard peer: every identity that has the
    name); without ``remote_named_ports`` they give no entry and are reported. As Cilium's
    ``NamedPortMultiMap.GetNamedPorts`` (``pkg/policy/types``), each selected identity gets the
    port its pods declare under the name (a name may stand for different numbers in different
    identities: one entry each); a name unknown for an identity (not scheduled yet) gives none.
    :func:`merge_named_ports` builds ``remote_named_ports`` from pods' declarations (pods of one
    identity declaring different numbers for one name give no entry, as upstream's duplicates).
    :attr:`EndpointPolicy.egress_port_names` says which names an endpoint's entries depend on.
    ICMP fields: protocol 1 (IPv4) or 58 (IPv6) with the type in the port field
    (``bpf/lib/policy.h``).

Services (``toServices``, :mod:`.services`)
    The endpoint addresses of the selector-less Services an entry names or selects, as CIDR
    peers (one host prefix each); a Service with a pod selector gives nothing (as upstream,
    reported). Without service data (``services`` None) an entry selects nothing (reported).

FQDNs (``toFQDNs``, :mod:`.fqdn`)
    The IPs the DNS cache holds for the names an entry matches, as CIDR peers (one host prefix
    each, whose identity is a local CIDR identity), as upstream selects them; a name with no
    answer yet selects nothing. Without DNS data (``fqdns`` None) an entry selects nothing
    (reported).

L7 rules (``rules: {dns|http|...}``, :mod:`.l7`)
    An allow entry some rule gives L7 rules keeps them in :attr:`EndpointPolicy.l7` (what the
    proxy that entry's traffic goes to allows; an L3/L4-only rule on the same entry, or on the
    same port for every peer, makes it allow every request, as upstream's wildcard L7 rule).

L7 rules (:mod:`.l7`)
    An allow entry some rule sends to a proxy is in :attr:`EndpointPolicy.l7`;
    :func:`with_proxy_ports` (the agent's, which knows the node's proxy ports) gives it the
    port of the proxy that serves its kind, which the datapath redirects the connection to.
    Without it (or for a kind no proxy serves) the entry allows at L4 and is reported.

Not implemented yet (reported in :attr:`EndpointPolicy.unsupported`, so the agent can warn)
    ``from/toNodes``, ``from/toGroups`` and CIDR group references
    select nothing; SNI, TLS interception and listeners are allowed at L4, without the proxy;
    ``authentication`` is not enforced.

Results are shared and kept (:func:`compute`): one per set of selected rules (all the identities of
a deployment, which differ only in labels no rule looks at, get the same object) and other inputs
(mode, named ports, services, DNS answers), kept across repository revisions that do not change
those rules and across identity changes that do not change the selections they used. Recomputing
an unchanged endpoint is a dictionary lookup; after one rule change only the rule sets holding it
are computed again.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Final, Literal, TypeAlias

from ciliary.core.proxyports import ProxyPorts
from ciliary.policy.api.model import L7Rules, PeerRule, PortRule
from ciliary.policy.api.selector import Requirement, Selector
from ciliary.policy.explain import PolicyRef
from ciliary.policy.fqdn import DNSCache
from ciliary.policy.identity import WILDCARD_IDENTITY, Identity, reserved_identity
from ciliary.policy.l7 import L7Policy
from ciliary.policy.mapstate import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    Direction,
    LPMIndex,
    MapEntry,
    MapKey,
    MapStateBuilder,
    RuleRef,
    allow_all_key,
    map_key,
    port_range_prefixes,
)
from ciliary.policy.repository import Repository, SelectedRule
from ciliary.policy.selectorcache import (
    CIDRPeer,
    EntityPeer,
    LabelPeer,
    PeerSelector,
    SelectorCache,
    is_wildcard,
)
from ciliary.policy.services import ServiceEndpoints

__all__ = [
    "EndpointPolicy", "Mode", "NamedPorts", "compute", "l7_note", "merge_named_ports",
    "with_proxy_ports",
]  # fmt: skip

Mode: TypeAlias = Literal["default", "always", "never"]
NamedPorts: TypeAlias = Mapping[str, tuple[int, str]]
"""Port name → (port number, protocol ``TCP``/``UDP``/``SCTP``), as a pod's container ports."""

_NO_NAMED_PORTS: Final[NamedPorts] = MappingProxyType({})
_PROTOCOLS: Final[dict[str, int]] = {"TCP": PROTO_TCP, "UDP": PROTO_UDP, "SCTP": PROTO_SCTP}
_ANY: Final = (PROTO_TCP, PROTO_UDP, PROTO_SCTP)
_HOST: Final = int(reserved_identity("host").id)
_MEMO_LIMIT: Final = 4096
_DIRECTIONS: Final[tuple[Direction, Direction]] = ("ingress", "egress")


@dataclass(frozen=True, slots=True)
class EndpointPolicy:
    """The computed policy of one endpoint: its policy map entries and how it was decided.

    ``entries`` is read-only and shared between callers (results are cached). ``selectors`` are the
    peer selectors the entries depend on: when the selector cache reports one of them changed, the
    endpoint needs recomputing. ``policies`` are the keys of the policies with a rule selecting the
    endpoint; ``ingress_enforced_by``/``egress_enforced_by`` those of them whose rules turned that
    direction's default deny on (what a default-deny drop is explained with, :mod:`.explain`).
    ``egress_port_names`` are the egress named ports its rules use: when the named ports
    of other identities change for one of them, the endpoint needs recomputing.
    """

    revision: int
    ingress_enforced: bool
    egress_enforced: bool
    entries: Mapping[MapKey, MapEntry]
    unsupported: tuple[str, ...] = ()
    selectors: frozenset[PeerSelector] = frozenset()
    policies: tuple[str, ...] = ()
    selector_cache_version: int = 0
    egress_port_names: frozenset[str] = frozenset()
    ingress_enforced_by: tuple[PolicyRef, ...] = ()
    egress_enforced_by: tuple[PolicyRef, ...] = ()
    l7: Mapping[MapKey, L7Policy] = field(default_factory=lambda: MappingProxyType({}))
    """The allow entries whose traffic goes through a proxy, with what it allows
    (:mod:`.l7`)."""
    _index: LPMIndex | None = field(default=None, init=False, repr=False, compare=False)

    def enforced(self, direction: Direction) -> bool:
        return self.ingress_enforced if direction == "ingress" else self.egress_enforced

    def enforced_by(self, direction: Direction) -> tuple[PolicyRef, ...]:
        """The policies whose rules put ``direction`` into default deny (empty when it is not
        enforced, or enforced by the mode ``always`` alone)."""
        return self.ingress_enforced_by if direction == "ingress" else self.egress_enforced_by

    def lookup(
        self, identity: int, egress: bool, protocol: int, port: int
    ) -> tuple[MapKey, MapEntry] | None:
        """The longest-prefix match among the entries of one identity (the datapath's lookup)."""
        index = self._index
        if index is None:
            index = LPMIndex(self.entries)
            object.__setattr__(self, "_index", index)
        return index.lookup(identity, egress, protocol, port)


@dataclass(frozen=True, slots=True)
class _AllPorts:
    """Every protocol and port (prefix 40)."""


@dataclass(frozen=True, slots=True)
class _Ports:
    """Ports (ICMP types) ``lo``..``hi`` of one protocol; 0..65535 is every port."""

    protocol: int
    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class _NamedPort:
    """A port by name, resolved against whoever owns it; ``protocols`` are those allowed."""

    name: str
    protocols: tuple[int, ...]


_L4: TypeAlias = _AllPorts | _Ports | _NamedPort
_ALL: Final = _AllPorts()


def _requirements(selectors: Iterable[Selector]) -> tuple[Requirement, ...]:
    """``fromRequires`` selectors as match expressions (Cilium's
    ``ConvertToLabelSelectorRequirementSlice``: each ``matchLabels`` pair becomes ``In``)."""
    out: list[Requirement] = []
    for selector in selectors:
        out.extend(Requirement(key, "In", (value,)) for key, value in selector.match_labels)
        out.extend(selector.match_expressions)
    return tuple(dict.fromkeys(out))


def _with_requirements(selector: Selector, requirements: tuple[Requirement, ...]) -> Selector:
    if not requirements:
        return selector
    expressions = tuple(dict.fromkeys((*selector.match_expressions, *requirements)))
    return Selector(selector.match_labels, expressions)


@dataclass
class _Resolver:
    cache: SelectorCache
    named_ports: NamedPorts
    remote_named_ports: Mapping[int, NamedPorts] | None
    services: ServiceEndpoints | None = None
    fqdns: DNSCache | None = None
    builder: MapStateBuilder = field(default_factory=MapStateBuilder)
    selectors: set[PeerSelector] = field(default_factory=set)
    egress_port_names: set[str] = field(default_factory=set)
    notes: dict[str, None] = field(default_factory=dict)
    l7: dict[MapKey, list[tuple[L7Rules | None, RuleRef]]] = field(default_factory=dict)
    """Per allow key, each rule's L7 rules (None: the rule allows it without any)."""

    def note(self, where: str, what: str) -> None:
        self.notes[f"{where}: {what}"] = None

    def peer(
        self,
        selected: SelectedRule,
        direction: Direction,
        deny: bool,
        peer: PeerRule,
        requirements: tuple[Requirement, ...],
    ) -> None:
        policy, rule = selected
        ref = RuleRef(
            policy.key,
            policy.kind,
            policy.namespace,
            policy.name,
            rule.index,
            direction,
            deny,
            peer.index,
        )
        section = direction + ("Deny" if deny else "")
        where = f"{policy.kind} {policy.display_name} {rule.path}.{section}[{peer.index}]"
        targets = self._targets(peer, requirements, where)
        ports = self._ports(peer, where)
        if not targets or not ports:
            return
        egress = direction == "egress"
        add = self.builder.add
        # each port range cut into LPM prefixes once, not once per target
        blocks = {
            item: port_range_prefixes(item.lo, item.hi)
            for item, _ in ports
            if isinstance(item, _Ports)
        }
        for target in sorted(targets):
            for item, l7 in ports:
                if isinstance(item, _AllPorts):
                    keys = [map_key(target, egress)]
                elif isinstance(item, _Ports):
                    keys = [
                        map_key(target, egress, item.protocol, port, prefix)
                        for port, prefix in blocks[item]
                    ]
                else:
                    keys = [
                        map_key(identity, egress, protocol, port, 16)
                        for identity, protocol, port in self._named(item, target, egress, where)
                    ]
                for key in keys:
                    add(key, deny, ref)
                    if not deny:
                        self.l7.setdefault(key, []).append((l7, ref))

    def l7_policies(self, entries: Mapping[MapKey, MapEntry]) -> dict[MapKey, L7Policy]:
        """The L7 side of every allow entry of ``entries`` that some rule sends to a proxy."""
        out: dict[MapKey, L7Policy] = {}
        for key, found in self.l7.items():
            entry = entries.get(key)
            with_rules = [(rules, ref) for rules, ref in found if rules is not None]
            if entry is None or entry.deny or not with_rules:
                continue
            kind = with_rules[0][0].kind
            same = [(rules, ref) for rules, ref in with_rules if rules.kind == kind]
            # an L3/L4-only rule on the same port for every peer allows every request of any
            # peer too (upstream's wildcardL3L4Rules)
            any_peer = self.l7.get(MapKey(0, key.egress, key.protocol, key.port, key.port_prefix))
            out[key] = L7Policy(
                kind=kind,
                rules=tuple(dict.fromkeys(rules for rules, _ in same)),
                wildcard=len(same) < len(found)
                or any(_allows_all(r) for r, _ in same)
                or any(rules is None for rules, _ in any_peer or ()),
                derived_from=frozenset(ref for _, ref in same),
            )
        return out

    def _targets(
        self, peer: PeerRule, requirements: tuple[Requirement, ...], where: str
    ) -> frozenset[int]:
        """The identities a peer entry selects ({0} for every peer)."""
        if peer.l3_wildcard:
            # no L3 member: its ports apply to every peer; without ports either (``- {}``, or
            # only requirements) it selects nothing (Cilium's mergeIngress adds no filter)
            if peer.ports or peer.icmps:
                return frozenset({WILDCARD_IDENTITY})
            return frozenset()
        peers: list[PeerSelector] = [
            LabelPeer(_with_requirements(s, requirements)) for s in peer.endpoints
        ]
        peers.extend(EntityPeer(entity) for entity in peer.entities)
        for cidr in peer.cidrs:
            if cidr.cidr is None:
                self.note(where, "CIDR groups (cidrGroupRef/cidrGroupSelector) select nothing yet")
            else:
                peers.append(CIDRPeer(cidr.cidr, cidr.except_cidrs))
        if peer.fqdns:
            if self.fqdns is None:
                self.note(where, "toFQDNs selects nothing (no DNS data)")
            else:
                peers.extend(CIDRPeer(prefix) for prefix in self.fqdns.prefixes(peer.fqdns))
        for entry in peer.services:
            if self.services is None:
                self.note(where, "toServices selects nothing (no service data)")
                continue
            for key in self.services.matching(entry):
                if self.services.has_selector(key):
                    what = "has a selector: only selector-less Services are translated (upstream)"
                    self.note(where, f"toServices: Service {key[0]}/{key[1]} {what}")
            peers.extend(CIDRPeer(prefix) for prefix in self.services.prefixes(entry))
        if peer.nodes:
            self.note(where, "fromNodes/toNodes selects nothing yet")
        if peer.groups:
            self.note(where, "fromGroups/toGroups (cloud security groups) select nothing")
        if any(is_wildcard(p) for p in peers):
            return frozenset({WILDCARD_IDENTITY})
        found: set[int] = set()
        for selector in peers:
            self.selectors.add(selector)
            found |= self.cache.selections(selector)
        return frozenset(found)

    def _ports(self, peer: PeerRule, where: str) -> list[tuple[_L4, L7Rules | None]]:
        """The ports of a peer entry, each with the L7 rules of its ``toPorts`` entry."""
        if peer.authentication in ("required", "test-always-fail"):
            self.note(where, f"authentication mode {peer.authentication!r} is not enforced yet")
        if not peer.ports and not peer.icmps:
            return [(_ALL, None)]
        out: list[tuple[_L4, L7Rules | None]] = []
        for port_rule in peer.ports:
            self._note_l7(port_rule, where)
            l7 = port_rule.l7
            if not port_rule.ports:
                out.append((_ALL, l7))
                continue
            for entry in port_rule.ports:
                protocols = _ANY if entry.protocol == "ANY" else (_PROTOCOLS[entry.protocol],)
                if entry.name is not None:
                    out.append((_NamedPort(entry.name, protocols), l7))
                    continue
                lo = entry.port or 0
                hi = 0xFFFF if lo == 0 else (entry.end_port or lo)
                out.extend((_Ports(protocol, lo, hi), l7) for protocol in protocols)
        for icmp in peer.icmps:
            protocol = PROTO_ICMP if icmp.family == "IPv4" else PROTO_ICMPV6
            out.append((_Ports(protocol, icmp.type, icmp.type), None))
        return out

    def _note_l7(self, port_rule: PortRule, where: str) -> None:
        if port_rule.l7 is not None:
            self.note(where, l7_note(port_rule.l7.kind))
        if port_rule.server_names:
            self.note(where, "serverNames (SNI) is not enforced yet (allowed at L4)")
        if port_rule.terminating_tls or port_rule.originating_tls:
            self.note(where, "TLS interception is not supported yet (allowed at L4)")
        if port_rule.listener is not None:
            self.note(where, "Envoy listeners are not supported yet (allowed at L4)")

    def _named(
        self, item: _NamedPort, target: int, egress: bool, where: str
    ) -> list[tuple[int, int, int]]:
        """(identity, protocol, port) of a named port for one target."""
        if not egress:
            found = _resolve(self.named_ports, item)
            return [] if found is None else [(target, *found)]
        self.egress_port_names.add(item.name)
        if self.remote_named_ports is None:
            self.note(
                where,
                f"egress named port {item.name!r} needs the destinations' named ports"
                " (not given: no entry)",
            )
            return []
        if target != WILDCARD_IDENTITY:
            found = _resolve(self.remote_named_ports.get(target, _NO_NAMED_PORTS), item)
            return [] if found is None else [(target, *found)]
        out = []
        for identity, ports in sorted(self.remote_named_ports.items()):
            found = _resolve(ports, item)
            if found is not None:
                out.append((identity, *found))
        return out


def _allows_all(rules: L7Rules) -> bool:
    """An empty list of its kind (``dns: []``): every request of the protocol passes."""
    return not {"http": rules.http, "dns": rules.dns, "kafka": rules.kafka, "l7": rules.l7}[
        rules.kind
    ]


def l7_note(kind: str) -> str:
    """The note of a rule's L7 rules of ``kind`` until a proxy serves them
    (:func:`with_proxy_ports` lifts it for the kinds the node's proxies serve)."""
    return f"L7 {kind} rules are not enforced (no proxy serves them: allowed at L4)"


def with_proxy_ports(policy: EndpointPolicy, ports: ProxyPorts) -> EndpointPolicy:
    """``policy`` with its L7 entries redirected: each allow entry whose traffic some rule
    sends to a proxy (:attr:`EndpointPolicy.l7`) gets the port of the node's proxy serving its
    kind in its direction (DNS egress, HTTP egress and ingress: ``ciliary.core.proxyports``),
    as upstream's ``ProxyPort`` in the policy map (bpf/lib/proxy.h redirects both directions);
    the notes of the served kinds go. Kinds no proxy serves (kafka, generic ``l7``, DNS on
    ingress) stay allowed at L4 and noted. The same object when nothing changes (no L7 entry),
    so the computation's sharing holds."""
    redirects: dict[MapKey, MapEntry] = {}
    served: set[str] = set()
    unserved: set[str] = set()
    for key, l7 in policy.l7.items():
        if key.protocol not in (PROTO_TCP, PROTO_UDP):
            continue  # the proxies take TCP and UDP (protocol ANY's SCTP: allowed at L4)
        port = ports.for_l7(l7.kind, key.egress)
        entry = policy.entries.get(key)
        if port is None or entry is None or entry.deny:
            unserved.add(l7.kind)
            continue
        served.add(l7.kind)
        if entry.proxy_port != port:
            redirects[key] = replace(entry, proxy_port=port)
    lifted = {l7_note(kind) for kind in served - unserved}
    notes = tuple(n for n in policy.unsupported if not any(n.endswith(f": {x}") for x in lifted))
    if not redirects and notes == policy.unsupported:
        return policy
    entries = dict(policy.entries)
    entries.update(redirects)
    return replace(policy, entries=MappingProxyType(entries), unsupported=notes)


def _resolve(ports: NamedPorts, item: _NamedPort) -> tuple[int, int] | None:
    """(protocol, port) of ``item`` among ``ports``, if the name exists with an allowed
    protocol."""
    found = ports.get(item.name)
    if found is None:
        return None
    port, protocol_name = found
    protocol = _PROTOCOLS.get(protocol_name.upper())
    if protocol is None or protocol not in item.protocols or not 0 < port <= 0xFFFF:
        return None
    return protocol, port


def merge_named_ports(
    declarations: Iterable[tuple[int, NamedPorts]],
) -> Mapping[int, NamedPorts]:
    """Named ports by identity, from (identity, one pod's named ports) pairs: what
    :func:`compute` takes as ``remote_named_ports``. Pods of one identity declaring one name
    alike count once; declaring it differently (another number or protocol) drops the name for
    that identity (Cilium's ``ErrDuplicateNamedPorts``: no entry rather than a guess)."""
    merged: dict[int, dict[str, tuple[int, str]]] = {}
    conflicts: set[tuple[int, str]] = set()
    for identity, ports in declarations:
        mine = merged.setdefault(identity, {})
        for name, (port, protocol) in ports.items():
            key = name.lower()
            value = (port, (protocol or "TCP").upper())
            if (identity, key) in conflicts:
                continue
            found = mine.get(key)
            if found is None:
                mine[key] = value
            elif found != value:
                conflicts.add((identity, key))
                del mine[key]
    return MappingProxyType(
        {identity: MappingProxyType(ports) for identity, ports in merged.items() if ports}
    )


def _freeze_remote(
    remote: Mapping[int, NamedPorts] | None,
) -> tuple[tuple[int, frozenset[tuple[str, tuple[int, str]]]], ...] | None:
    if remote is None:
        return None
    return tuple(sorted((identity, frozenset(ports.items())) for identity, ports in remote.items()))


@dataclass
class _Memoized:
    """A computed policy and the selector cache's :attr:`~SelectorCache.drops` count when its
    selectors were last made sure to be kept."""

    policy: EndpointPolicy
    drops: int


@dataclass
class _Memo:
    cache_uid: int
    results: dict[object, _Memoized] = field(default_factory=dict)
    remote: Mapping[int, NamedPorts] | None = None
    remote_frozen: object = None


_memos: weakref.WeakKeyDictionary[Repository, _Memo] = weakref.WeakKeyDictionary()


def _frozen_remote(memo: _Memo, remote: Mapping[int, NamedPorts] | None) -> object:
    """``remote`` as a memo key part; a read-only mapping (what :func:`merge_named_ports`
    returns) is frozen once per object, not once per call."""
    if remote is not None and remote is memo.remote and isinstance(remote, MappingProxyType):
        return memo.remote_frozen
    frozen = _freeze_remote(remote)
    memo.remote, memo.remote_frozen = remote, frozen
    return frozen


def compute(
    repo: Repository,
    cache: SelectorCache,
    subject: Identity,
    *,
    named_ports: NamedPorts = _NO_NAMED_PORTS,
    remote_named_ports: Mapping[int, NamedPorts] | None = None,
    mode: Mode = "default",
    allow_localhost: bool = False,
    services: ServiceEndpoints | None = None,
    fqdns: DNSCache | None = None,
) -> EndpointPolicy:
    """The policy map state of the endpoint ``subject`` under the policies in ``repo``.

    ``named_ports`` are the endpoint's own (ingress named ports); ``remote_named_ports`` the named
    ports of other identities (egress named ports), by identity. ``allow_localhost`` adds an allow
    of every ingress from the host identity (Cilium's ``--allow-localhost=always``, which
    Kubernetes installs use so kubelet probes reach pods; deny rules still win over it).

    Results are shared: every subject the same rules select (:meth:`Repository.selection`) with
    the same other inputs gets the same result, and a result outlives repository revisions and
    selector cache versions that do not touch it (rules it was made of unchanged, selections it
    used unchanged); it is then handed out again with the current ``revision`` and
    ``selector_cache_version``, its ``entries`` the very same mapping.
    """
    memo = _memos.get(repo)
    if memo is None or memo.cache_uid != cache.uid or len(memo.results) >= _MEMO_LIMIT:
        memo = _Memo(cache.uid)
        _memos[repo] = memo
    _, token = repo.selection(subject.labels)
    memo_key = (
        token,
        mode,
        allow_localhost,
        frozenset(named_ports.items()) if named_ports else None,
        _frozen_remote(memo, remote_named_ports),
        None if services is None else (id(services), services.version),
        None if fqdns is None else (id(fqdns), fqdns.version),
    )
    found = memo.results.get(memo_key)
    if found is not None:
        pol = found.policy
        if pol.selector_cache_version != cache.version:
            if not cache.unchanged_since(pol.selectors, pol.selector_cache_version):
                found = None
            else:
                pol = replace(pol, selector_cache_version=cache.version)
                found.policy = pol
    if found is not None:
        pol = found.policy
        if pol.revision != repo.revision:
            pol = replace(pol, revision=repo.revision)
            found.policy = pol
        if found.drops != cache.drops:
            # the selector cache may have dropped selectors since (retain): keep the ones this
            # policy depends on tracked, so identity changes keep reporting them
            for selector in pol.selectors:
                cache.selections(selector)
            found.drops = cache.drops
        return pol
    pol = _compute(
        repo,
        cache,
        subject,
        named_ports=named_ports,
        remote_named_ports=remote_named_ports,
        mode=mode,
        allow_localhost=allow_localhost,
        services=services,
        fqdns=fqdns,
    )
    memo.results[memo_key] = _Memoized(pol, cache.drops)
    return pol


def _compute(
    repo: Repository,
    cache: SelectorCache,
    subject: Identity,
    *,
    named_ports: NamedPorts,
    remote_named_ports: Mapping[int, NamedPorts] | None,
    mode: Mode,
    allow_localhost: bool,
    services: ServiceEndpoints | None = None,
    fqdns: DNSCache | None = None,
) -> EndpointPolicy:
    if mode == "never":
        entries = {allow_all_key(False): MapEntry(False), allow_all_key(True): MapEntry(False)}
        return EndpointPolicy(
            repo.revision,
            False,
            False,
            MappingProxyType(entries),
            selector_cache_version=cache.version,
        )
    selected = repo.rules_for(subject.labels)
    resolver = _Resolver(cache, named_ports, remote_named_ports, services, fqdns)
    enforced: dict[Direction, bool] = {}
    enforcers: dict[Direction, tuple[PolicyRef, ...]] = {}
    for direction in _DIRECTIONS:
        egress = direction == "egress"
        if egress:
            on_by = [
                s for s in selected if (s.rule.egress or s.rule.egress_deny)
                and s.rule.default_deny_egress
            ]  # fmt: skip
            allows = [(s, p) for s in selected for p in s.rule.egress]
            denies = [(s, p) for s in selected for p in s.rule.egress_deny]
        else:
            on_by = [
                s for s in selected if (s.rule.ingress or s.rule.ingress_deny)
                and s.rule.default_deny_ingress
            ]  # fmt: skip
            allows = [(s, p) for s in selected for p in s.rule.ingress]
            denies = [(s, p) for s in selected for p in s.rule.ingress_deny]
        enforced[direction] = bool(on_by) or mode == "always"
        enforcers[direction] = tuple(dict.fromkeys(PolicyRef.of(s.policy) for s in on_by))
        _resolve_peers(resolver, direction, True, denies)
        _resolve_peers(resolver, direction, False, allows)
        if not enforced[direction]:
            resolver.builder.add(allow_all_key(egress), False)
        elif allow_localhost and not egress:
            resolver.builder.add(MapKey(_HOST, False), False)
    entries = resolver.builder.build()
    return EndpointPolicy(
        revision=repo.revision,
        ingress_enforced=enforced["ingress"],
        egress_enforced=enforced["egress"],
        entries=MappingProxyType(entries),
        unsupported=tuple(resolver.notes),
        selectors=frozenset(resolver.selectors),
        policies=tuple(dict.fromkeys(s.policy.key for s in selected)),
        selector_cache_version=cache.version,
        egress_port_names=frozenset(resolver.egress_port_names),
        ingress_enforced_by=enforcers["ingress"],
        egress_enforced_by=enforcers["egress"],
        l7=MappingProxyType(resolver.l7_policies(entries)),
    )


def _resolve_peers(
    resolver: _Resolver,
    direction: Direction,
    deny: bool,
    peers: Sequence[tuple[SelectedRule, PeerRule]],
) -> None:
    requirements = _requirements(req for _, peer in peers for req in peer.requires)
    for selected, peer in peers:
        resolver.peer(selected, direction, deny, peer, requirements)
