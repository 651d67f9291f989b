"""The engine against an independent reference, on random policies and every flow of a small world.

The reference evaluator below is written straight from the documented semantics, rule by rule,
without the selector cache, identities-as-labels tricks, map keys, port prefixes or LPM:

- the rules that apply are those whose subject selects the endpoint;
- in mode ``never`` everything is allowed; otherwise a direction is enforced in mode ``always``, or
  when a selecting rule has a section for it and does not say ``enableDefaultDeny: false``;
- a peer entry matches a flow when its L3 part selects the remote identity (no L3 member: every
  peer, if the entry has ports; endpoint selectors AND every ``fromRequires`` of the same kind of
  entry in that direction; entities by their meaning; CIDRs by address containment) and its L4
  part admits the protocol and port (none: everything; ``ANY`` = TCP/UDP/SCTP; port 0 every port;
  ranges inclusive; named ports of the endpoint owning the port; ICMP types);
- any matching deny entry: denied; else not enforced: allowed; else any matching allow entry:
  allowed; else default deny.

The engine has to agree on every flow (remote identity, protocol, port and direction), through
:func:`ciliary.policy.trace.trace`, which only simulates the datapath's lookups on the computed map
state. Agreement includes the reason, and the rules a trace names must be among those the
reference finds matching.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_network

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ciliary.policy.api import (
    ENTITIES,
    CIDRRule,
    FQDNSelector,
    ICMPField,
    L7Rules,
    LabelSet,
    PeerRule,
    Policy,
    PortProtocol,
    PortRule,
    Protocol,
    Requirement,
    Rule,
    Selector,
)
from ciliary.policy.identity import RESERVED_IDENTITIES, Identity, cidr_identity
from ciliary.policy.mapstate import Direction, RuleRef
from ciliary.policy.repository import Repository
from ciliary.policy.resolve import compute
from ciliary.policy.selectorcache import SelectorCache
from ciliary.policy.trace import trace

from .lab import NS, pod

Network = IPv4Network | IPv6Network

# ------------------------------------------------------------------------------------ the world

PODS = [
    pod(256 + i, ns, None, app=app, **({"env": env} if env else {}))
    for i, (ns, app, env) in enumerate(
        (ns, app, env) for ns in ("n1", "n2") for app in ("a", "b") for env in ("x", "y", "")
    )
]
CIDR_PREFIXES = {
    (1 << 24) | (n + 1): ip_network(text)
    for n, text in enumerate(
        ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.2.0.0/16", "192.168.1.0/24",
         "2001:db8::/32", "2001:db8:1::/48"]
    )
}  # fmt: skip
CIDRS = [cidr_identity(n & 0xFFFFFF, p) for n, p in CIDR_PREFIXES.items()]
IDENTITIES: list[Identity] = [*RESERVED_IDENTITIES, *PODS, *CIDRS]
PROTOCOLS = (6, 17, 132, 1, 58)
PORTS = (0, 8, 53, 79, 80, 81, 87, 88, 89, 128, 443, 8080, 8081, 8087, 8088, 8089, 65535)
NAMED_PORTS: dict[int, dict[str, tuple[int, str]]] = {
    PODS[0].id: {"http": (80, "TCP"), "dns": (53, "UDP")},
    PODS[1].id: {"http": (8080, "TCP")},
    PODS[3].id: {"http": (443, "TCP"), "dns": (53, "SCTP")},
    PODS[4].id: {"http": (8081, "UDP")},
    PODS[6].id: {"http": (8080, "SCTP"), "dns": (53, "TCP")},
    PODS[7].id: {"dns": (53, "TCP")},
    PODS[9].id: {"http": (8088, "TCP"), "dns": (8087, "UDP")},
    PODS[10].id: {"http": (89, "TCP")},
}
PROTOCOL_NAMES: tuple[Protocol, ...] = ("TCP", "UDP", "SCTP", "ANY")
PROTO = {"TCP": 6, "UDP": 17, "SCTP": 132}
ANY = frozenset({6, 17, 132})
LABEL_SETS = {i.id: LabelSet(i.labels) for i in IDENTITIES}

# ------------------------------------------------------------------------------------ reference


def ref_entity(entity: str, remote: Identity) -> bool:
    n = remote.id
    prefix = CIDR_PREFIXES.get(n)
    return {
        "all": True,
        "none": False,
        "world": n in (2, 9, 10) or prefix is not None,
        "world-ipv4": n == 9 or (prefix is not None and prefix.version == 4),
        "world-ipv6": n == 10 or (prefix is not None and prefix.version == 6),
        "cluster": n in (1, 3, 4, 5, 6, 7, 8) or 256 <= n < 1 << 24,
        "host": n == 1,
        "remote-node": n in (6, 7),
        "kube-apiserver": n == 7,
        "health": n == 4,
        "init": n == 5,
        "unmanaged": n == 3,
        "ingress": n == 8,
    }[entity]


def ref_cidr(rule: CIDRRule, remote: Identity) -> bool:
    """A CIDR identity is selected when its prefix lies inside the CIDR and shares no address
    with an exception; the world identity of a family is "every address not otherwise known", so
    only a CIDR covering the whole family without exceptions selects it."""
    cidr = rule.cidr
    assert cidr is not None
    if remote.id == (9 if cidr.version == 4 else 10):
        return cidr.prefixlen == 0 and not rule.except_cidrs
    prefix = CIDR_PREFIXES.get(remote.id)
    if prefix is None or prefix.version != cidr.version:
        return False
    inside = prefix.subnet_of(cidr)  # type: ignore[arg-type]
    return inside and not any(prefix.overlaps(e) for e in rule.except_cidrs)


def ref_l3(peer: PeerRule, remote: Identity, requires: Sequence[Selector]) -> bool:
    if peer.l3_wildcard:
        return bool(peer.ports or peer.icmps)
    labels = LABEL_SETS[remote.id]
    if any(s.matches(labels) and all(r.matches(labels) for r in requires) for s in peer.endpoints):
        return True
    if any(ref_entity(e, remote) for e in peer.entities):
        return True
    return any(ref_cidr(c, remote) for c in peer.cidrs)  # FQDNs etc. select nothing yet


def ref_l4(peer: PeerRule, protocol: int, port: int, named: Mapping[str, tuple[int, str]]) -> bool:
    if not peer.ports and not peer.icmps:
        return True
    for port_rule in peer.ports:
        if not port_rule.ports:
            return True
        for entry in port_rule.ports:
            allowed = ANY if entry.protocol == "ANY" else {PROTO[entry.protocol]}
            if entry.name is not None:
                if entry.name in named:
                    number, name_protocol = named[entry.name]
                    if PROTO[name_protocol] in allowed and (protocol, port) == (
                        PROTO[name_protocol],
                        number,
                    ):
                        return True
            elif protocol in allowed:
                low = entry.port or 0
                high = entry.end_port or low
                if low == 0 or low <= port <= high:
                    return True
    family = {"IPv4": 1, "IPv6": 58}
    return any(protocol == family[f.family] and port == f.type for f in peer.icmps)


class Reference:
    """The documented semantics for one endpoint, evaluated rule by rule for each flow."""

    def __init__(self, policies: Sequence[Policy], subject: Identity, mode: str) -> None:
        self.subject = subject
        self.mode = mode
        self.rules = [
            (p, r)
            for p in policies
            for r in p.rules
            if r.endpoint_selector is not None
            and r.endpoint_selector.matches(LABEL_SETS[subject.id])
        ]
        self._l3: dict[tuple[int, str, bool], list[tuple[RuleRef, PeerRule]]] = {}

    def enforced(self, direction: str) -> bool:
        if self.mode == "always":
            return True
        # a rule with a section for the direction enforces it, unless enableDefaultDeny is false
        if direction == "ingress":
            return any(
                (r.ingress or r.ingress_deny) and r.enable_default_deny[0] is not False
                for _, r in self.rules
            )
        return any(
            (r.egress or r.egress_deny) and r.enable_default_deny[1] is not False
            for _, r in self.rules
        )

    def l3_matches(
        self, remote: Identity, direction: str, deny: bool
    ) -> list[tuple[RuleRef, PeerRule]]:
        """The entries (of one direction, allow or deny) whose peers include ``remote``."""
        key = (remote.id, direction, deny)
        if key not in self._l3:
            entries = []
            for p, r in self.rules:
                if direction == "ingress":
                    section = r.ingress_deny if deny else r.ingress
                else:
                    section = r.egress_deny if deny else r.egress
                for peer in section:
                    where = (r.index, direction, deny, peer.index)
                    entries.append((RuleRef(p.key, p.kind, p.namespace, p.name, *where), peer))  # type: ignore[arg-type]
            # fromRequires: those of every entry of this kind in this direction, on endpoints
            requires = [s for _, peer in entries for s in peer.requires]
            self._l3[key] = [(ref, peer) for ref, peer in entries if ref_l3(peer, remote, requires)]
        return self._l3[key]

    def verdict(
        self, remote: Identity, direction: str, protocol: int, port: int
    ) -> tuple[str, set[RuleRef]]:
        """(reason, the rules whose entries match the flow and decide it)."""
        if self.mode == "never":
            return "not enforced", set()
        named = NAMED_PORTS.get((self.subject if direction == "ingress" else remote).id, {})

        def matching(deny: bool) -> set[RuleRef]:
            return {
                ref
                for ref, peer in self.l3_matches(remote, direction, deny)
                if ref_l4(peer, protocol, port, named)
            }

        denies = matching(True)
        if denies:
            return "denied by rule", denies
        allows = matching(False)
        if not self.enforced(direction):
            return "not enforced", allows
        return ("allowed", allows) if allows else ("default deny", set())


# ------------------------------------------------------------------------------------ strategies

LABEL_PAIRS = [
    ("k8s:app", "a"), ("k8s:app", "b"), ("k8s:env", "x"), ("k8s:env", "y"),
    (NS, "n1"), (NS, "n2"), ("any:app", "a"),
]  # fmt: skip
REQUIREMENTS = [
    Requirement("k8s:app", "In", ("a",)),
    Requirement("k8s:env", "NotIn", ("x",)),
    Requirement("k8s:env", "Exists"),
    Requirement("k8s:env", "DoesNotExist"),
    Requirement("any:app", "In", ("a", "b")),
    Requirement(NS, "In", ("n2",)),
]


# The strategies are built once, here, not inside each draw: building one (its validation, its
# cache lookup) cost more than drawing from it, most of this module's run time. The same
# strategies, so the same distributions.
_PAIRS = st.lists(st.sampled_from(LABEL_PAIRS), max_size=2, unique_by=lambda p: p[0])
_EXPRESSIONS = st.lists(st.sampled_from(REQUIREMENTS), max_size=2, unique=True)


@st.composite
def _selectors(draw: st.DrawFn) -> Selector:
    pairs = draw(_PAIRS)
    expressions = draw(_EXPRESSIONS)
    return Selector(tuple(sorted(pairs)), tuple(expressions))


SELECTORS = _selectors()


NETS = ["0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/16", "::/0", "2001:db8::/32"]
EXCEPT_NETS = ["10.1.0.0/16", "10.1.2.0/24", "10.2.0.0/16", "10.0.0.0/8", "2001:db8:1::/48"]


_NETS = st.sampled_from(NETS)
_EXCEPTS = {  # per CIDR of NETS: the lists of its candidate exceptions (none: no strategy)
    net: st.lists(st.sampled_from(candidates), unique=True)
    for net in map(ip_network, NETS)
    if (
        candidates := [
            e
            for e in map(ip_network, EXCEPT_NETS)
            if e.version == net.version and e.prefixlen > net.prefixlen and e.subnet_of(net)  # type: ignore[arg-type]
        ]
    )
}


@st.composite
def _cidr_rules(draw: st.DrawFn) -> CIDRRule:
    cidr = ip_network(draw(_NETS))
    excepts = draw(_EXCEPTS[cidr]) if cidr in _EXCEPTS else []
    return CIDRRule(cidr, tuple(excepts))


CIDR_RULES = _cidr_rules()


_PROTOCOL_NAMES = st.sampled_from(PROTOCOL_NAMES)
_ONE_IN_3 = st.integers(0, 2)
_PORT_NAMES = st.sampled_from(["http", "dns", "nope"])
_PORT_NUMBERS = st.sampled_from([0, 53, 80, 443, 8080])
_RANGE_LENGTHS = st.sampled_from([1, 7, 8])


@st.composite
def _port_protocols(draw: st.DrawFn) -> PortProtocol:
    protocol: Protocol = draw(_PROTOCOL_NAMES)
    if draw(_ONE_IN_3) == 0:
        name = draw(_PORT_NAMES)
        return PortProtocol(None, name=name, protocol=protocol)
    port = draw(_PORT_NUMBERS)
    end = None
    if port and draw(st.booleans()):
        end = port + draw(_RANGE_LENGTHS)
    return PortProtocol(port, end, protocol=protocol)


_PORT_PROTOCOLS = st.lists(_port_protocols(), min_size=1, max_size=2)
_ONE_IN_8 = st.integers(0, 7)
_ONE_IN_5 = st.integers(0, 4)


@st.composite
def _port_rules(draw: st.DrawFn) -> PortRule:
    ports = tuple(draw(_PORT_PROTOCOLS))
    if draw(_ONE_IN_8) == 0:
        ports = ()  # a toPorts entry listing no port: every port and protocol
    l7 = L7Rules("http") if draw(_ONE_IN_5) == 0 else None
    return PortRule(ports, l7)


_PEER_KINDS = st.sampled_from(["none", "endpoints", "endpoints", "entities", "cidrs", "fqdns"])
_ENDPOINTS = st.lists(SELECTORS, min_size=1, max_size=2)
_ENTITIES = st.lists(st.sampled_from(ENTITIES), min_size=1, max_size=2)
_CIDRS = st.lists(CIDR_RULES, min_size=1, max_size=2)
_REQUIRES = st.lists(SELECTORS, max_size=1)
_PORT_RULES = st.lists(_port_rules(), max_size=2)
_ICMPS = st.lists(
    st.builds(ICMPField, st.sampled_from(["IPv4", "IPv6"]), st.sampled_from([0, 8, 128])),
    max_size=1,
)


@st.composite
def peers(draw: st.DrawFn, index: int) -> PeerRule:
    kind = draw(_PEER_KINDS)
    endpoints: tuple[Selector, ...] = ()
    entities: tuple[str, ...] = ()
    cidrs: tuple[CIDRRule, ...] = ()
    fqdns: tuple[FQDNSelector, ...] = ()
    if kind == "endpoints":
        endpoints = tuple(draw(_ENDPOINTS))
    elif kind == "entities":
        entities = tuple(draw(_ENTITIES))
    elif kind == "cidrs":
        cidrs = tuple(draw(_CIDRS))
    elif kind == "fqdns":
        fqdns = (FQDNSelector(match_name="example.com"),)
    requires = tuple(draw(_REQUIRES)) if draw(st.booleans()) else ()
    ports = tuple(draw(_PORT_RULES))
    icmps = tuple(draw(_ICMPS))
    return PeerRule(
        index,
        endpoints=endpoints,
        requires=requires,
        entities=entities,  # type: ignore[arg-type]
        cidrs=cidrs,
        fqdns=fqdns,
        ports=ports,
        icmps=icmps,
    )


_PEERS = [peers(i) for i in range(2)]
_PEER_COUNTS = st.integers(0, 2)


@st.composite
def _peer_lists(draw: st.DrawFn) -> tuple[PeerRule, ...]:
    count = draw(_PEER_COUNTS)
    return tuple(draw(_PEERS[i]) for i in range(count))


PEER_LISTS = _peer_lists()
_DEFAULT_DENY = st.sampled_from([None, None, True, False])


@st.composite
def rules(draw: st.DrawFn, index: int) -> Rule:
    return Rule(
        index=index,
        path=f"specs[{index}]",
        endpoint_selector=draw(SELECTORS),
        ingress=draw(PEER_LISTS),
        ingress_deny=draw(PEER_LISTS),
        egress=draw(PEER_LISTS),
        egress_deny=draw(PEER_LISTS),
        enable_default_deny=(draw(_DEFAULT_DENY), draw(_DEFAULT_DENY)),
    )


_RULES = [rules(i) for i in range(3)]
_POLICY_COUNTS = st.integers(1, 2)
_RULE_COUNTS = st.integers(1, 3)


@st.composite
def policy_sets(draw: st.DrawFn) -> list[Policy]:
    out = []
    for n in range(draw(_POLICY_COUNTS)):
        count = draw(_RULE_COUNTS)
        out.append(
            Policy(
                kind="CiliumNetworkPolicy",
                namespace="n1",
                name=f"p{n}",
                rules=tuple(draw(_RULES[i]) for i in range(count)),
                source="test",
            )
        )
    return out


# ------------------------------------------------------------------------------------ the property


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    policy_sets(),
    st.sampled_from(PODS),
    st.sampled_from(["default"] * 7 + ["always", "always", "never"]),
)
def test_engine_agrees_with_the_reference_on_every_flow(
    policies: list[Policy], subject: Identity, mode: str
) -> None:
    repo = Repository()
    repo.replace(policies)
    cache = SelectorCache(IDENTITIES)
    policy = compute(
        repo,
        cache,
        subject,
        named_ports=NAMED_PORTS.get(subject.id, {}),
        remote_named_ports=NAMED_PORTS,
        mode=mode,  # type: ignore[arg-type]
    )
    ref = Reference(policies, subject, mode)
    directions: tuple[Direction, ...] = ("ingress", "egress")
    for direction in directions:
        for remote in IDENTITIES:
            for protocol in PROTOCOLS:
                for port in PORTS:
                    got = trace(policy, remote.id, protocol, port, direction)
                    reason, matching = ref.verdict(remote, direction, protocol, port)
                    where = (direction, str(remote), protocol, port)
                    assert got.reason == reason, (where, got, matching)
                    assert got.allowed == (reason in ("allowed", "not enforced"))
                    assert got.deciding <= matching, (where, got.deciding, matching)
                    if reason in ("allowed", "denied by rule"):
                        assert got.deciding, where


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_sets(), st.sampled_from(PODS), st.permutations(IDENTITIES))
def test_identities_arriving_late_give_the_same_policy(
    policies: list[Policy], subject: Identity, order: list[Identity]
) -> None:
    """Computing with an empty cache, then adding the identities one by one (recomputing after
    each), ends with the same map state as computing once with every identity known."""
    repo = Repository()
    repo.replace(policies)
    incremental = SelectorCache(())
    seen = compute(repo, incremental, subject, named_ports=NAMED_PORTS.get(subject.id, {}))
    for identity in order:
        changed = incremental.upsert_identity(identity)
        if changed & seen.selectors:
            seen = compute(repo, incremental, subject, named_ports=NAMED_PORTS.get(subject.id, {}))
    fresh = compute(
        repo, SelectorCache(IDENTITIES), subject, named_ports=NAMED_PORTS.get(subject.id, {})
    )
    assert dict(seen.entries) == dict(fresh.entries)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("replace"), policy_sets()),
            st.tuples(st.just("delete"), st.sampled_from(["p0", "p1"])),
            st.tuples(st.just("identity"), st.sampled_from(PODS + CIDRS)),
            st.tuples(st.just("forget"), st.sampled_from(PODS + CIDRS)),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_a_repository_changed_step_by_step_gives_what_a_fresh_one_gives(
    steps: list[tuple[str, object]],
) -> None:
    """Results kept across changes (shared by subjects with the same rules, kept while their
    rules and selections stay) equal computing from scratch, for every pod after every step."""
    repo = Repository()
    cache = SelectorCache([*RESERVED_IDENTITIES, *PODS[::2]])
    for op, arg in steps:
        if op == "replace":
            repo.replace(arg)  # type: ignore[arg-type]
        elif op == "delete":
            repo.delete([f"CiliumNetworkPolicy/n1/{arg}"])
        elif op == "identity":
            cache.upsert_identity(arg)  # type: ignore[arg-type]
        else:
            cache.remove_identity(arg.id)  # type: ignore[attr-defined]
        if op != "replace" and len(cache.selectors()) > 3:
            cache.retain(list(cache.selectors())[:3])  # as the agent drops unused selectors
        fresh_repo = Repository()
        fresh_repo.replace(repo.policies())
        fresh_cache = SelectorCache(cache.identities().values())
        for subject in PODS:
            kept = compute(repo, cache, subject, remote_named_ports=NAMED_PORTS)
            fresh = compute(fresh_repo, fresh_cache, subject, remote_named_ports=NAMED_PORTS)
            assert dict(kept.entries) == dict(fresh.entries), (op, subject)
            assert kept.selectors == fresh.selectors
            assert kept.revision == repo.revision
            assert kept.selector_cache_version == cache.version
            assert (kept.ingress_enforced, kept.egress_enforced, kept.policies) == (
                fresh.ingress_enforced,
                fresh.egress_enforced,
                fresh.policies,
            )
