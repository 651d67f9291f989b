"""Cilium's documented policy semantics (docs.cilium.io "Layer 3/4 Examples", "Deny Policies",
"Policy Enforcement Modes"), through the real parser and the engine, checked by tracing flows."""

from __future__ import annotations

import pytest

from ciliary.policy.fqdn import DNSCache, DNSLookup
from ciliary.policy.mapstate import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    MapKey,
)
from ciliary.policy.resolve import compute
from ciliary.policy.trace import trace

from .lab import (
    APISERVER,
    HEALTH,
    HOST,
    INGRESS,
    INIT,
    REMOTE_NODE,
    UNMANAGED,
    WORLD,
    WORLD4,
    WORLD6,
    Lab,
    cidr,
    pod,
)

BACKEND = pod(256, "default", role="backend")
FRONTEND = pod(257, "default", role="frontend")
OTHER = pod(258, "default", role="other")
ELSEWHERE = pod(259, "elsewhere", role="frontend")
PROD = pod(260, "default", env="prod", role="backend")
PROD_FRONTEND = pod(261, "default", env="prod", role="frontend")
NET10 = cidr(1, "10.2.0.0/16")
NET96 = cidr(2, "10.96.0.0/16")
HOST_IP = cidr(3, "20.1.1.1/32")
V6 = cidr(4, "2001:db8::/48")
PODS = (BACKEND, FRONTEND, OTHER, ELSEWHERE, PROD, PROD_FRONTEND)
RESERVED = (HOST, WORLD, WORLD4, WORLD6, REMOTE_NODE, APISERVER, HEALTH, INIT, UNMANAGED, INGRESS)
CIDRS = (NET10, NET96, HOST_IP, V6)
EVERYONE = PODS + RESERVED + CIDRS


def lab(text: str, **kwargs: object) -> Lab:
    out = Lab(*EVERYONE, **kwargs)  # type: ignore[arg-type]
    out.apply(text)
    return out


def ids(*identities: object) -> set[int]:
    return {i.id for i in identities}  # type: ignore[attr-defined]


BACKEND_SUBJECT = "endpointSelector: {matchLabels: {role: backend}}"
FROM_FRONTEND = "fromEndpoints: [{matchLabels: {role: frontend}}]"
TO_FRONTEND = "toEndpoints: [{matchLabels: {role: frontend}}]"


def ports(*entries: str) -> str:
    """A ``toPorts`` member with these ``port/protocol`` (``8000-8010/TCP``) entries."""
    out = []
    for entry in entries:
        port, protocol = entry.split("/")
        first, _, last = port.partition("-")
        end = f", endPort: {last}" if last else ""
        out.append(f'{{port: "{first}"{end}, protocol: {protocol}}}')
    return f"toPorts: [{{ports: [{', '.join(out)}]}}]"


def entry(*members: str) -> str:
    """One peer entry (a YAML list item) with these members."""
    return "- " + "\n  ".join(members)


def backend(**sections: str) -> str:
    """A backend rule with these sections (``ingress=entry(...)``)."""
    parts = [BACKEND_SUBJECT]
    for name, body in sections.items():
        key = {"ingress_deny": "ingressDeny", "egress_deny": "egressDeny"}.get(name, name)
        parts.append(f"{key}:\n{body}")
    return "\n".join(parts)


def cnp(name: str, spec: str, namespace: str = "default") -> str:
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return (
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{body}\n---\n"
    )


# ------------------------------------------------------------------------------------ Layer 3


def test_labels_based_ingress() -> None:
    lab_ = lab(
        cnp(
            "l3-rule",
            """
endpointSelector: {matchLabels: {role: backend}}
ingress:
- fromEndpoints: [{matchLabels: {role: frontend}}]
""",
        )
    )
    # the CNP scopes fromEndpoints to its namespace: the frontend elsewhere is not selected
    assert lab_.allowed_from(BACKEND, EVERYONE) == ids(FRONTEND, PROD_FRONTEND)
    assert lab_.allowed_from(PROD, EVERYONE) == ids(FRONTEND, PROD_FRONTEND)
    assert lab_.ingress(FRONTEND, OTHER).reason == "not enforced"


def test_ingress_allow_all_in_namespace_and_empty_entry_default_deny() -> None:
    lab_ = lab(
        cnp("allow-all", backend(ingress="- fromEndpoints: [{}]"))
        + cnp("deny-all", "endpointSelector: {matchLabels: {role: frontend}}\ningress:\n- {}")
    )
    assert lab_.allowed_from(BACKEND, EVERYONE) == ids(*PODS) - ids(ELSEWHERE)
    assert lab_.allowed_from(FRONTEND, EVERYONE) == set()
    assert lab_.policy(FRONTEND).ingress_enforced
    assert not lab_.policy(FRONTEND).egress_enforced


def test_egress_default_deny_with_empty_entry() -> None:
    lab_ = lab(cnp("egress-default-deny", "endpointSelector: {}\negress:\n- {}"))
    assert {e.id for e in EVERYONE if lab_.egress(FRONTEND, e).allowed} == set()
    assert lab_.ingress(FRONTEND, OTHER).allowed


def test_requires_restricts_every_from_endpoints() -> None:
    # docs "Additional Label Requirements": env=prod endpoints only reachable from env=prod
    lab_ = lab(
        cnp(
            "requires-rule",
            """
endpointSelector: {matchLabels: {env: prod}}
ingress:
- fromRequires: [{matchLabels: {env: prod}}]
""",
        )
        + cnp(
            "l3-rule",
            """
endpointSelector: {matchLabels: {env: prod}}
ingress:
- fromEndpoints: [{matchLabels: {role: frontend}}]
""",
        )
    )
    assert lab_.allowed_from(PROD, EVERYONE) == ids(PROD_FRONTEND)
    # neither rule selects the plain backend
    assert lab_.ingress(BACKEND, OTHER).reason == "not enforced"


def test_requires_alone_allows_nothing_but_enforces() -> None:
    lab_ = lab(
        cnp(
            "requires-only",
            "endpointSelector: {matchLabels: {env: prod}}\n"
            "ingress:\n- fromRequires: [{matchLabels: {env: prod}}]",
        )
    )
    assert lab_.allowed_from(PROD, EVERYONE) == set()
    assert lab_.policy(PROD).ingress_enforced


def test_requires_do_not_restrict_entities_or_port_only_rules() -> None:
    # Cilium folds requirements into fromEndpoints selectors only
    lab_ = lab(
        cnp(
            "mixed",
            """
endpointSelector: {matchLabels: {env: prod}}
ingress:
- fromRequires: [{matchLabels: {env: prod}}]
- fromEndpoints: [{matchLabels: {role: frontend}}]
- fromEntities: [world]
- toPorts: [{ports: [{port: "8443", protocol: TCP}]}]
""",
        )
    )
    assert lab_.allowed_from(PROD, EVERYONE) == ids(PROD_FRONTEND, WORLD, WORLD4, WORLD6, *CIDRS)
    assert lab_.allowed_from(PROD, EVERYONE, PROTO_TCP, 8443) == ids(*EVERYONE)


def test_deny_requires_restrict_deny_selectors() -> None:
    lab_ = lab(
        cnp(
            "deny-with-requires",
            """
endpointSelector: {matchLabels: {role: backend}}
ingress:
- fromEntities: [all]
ingressDeny:
- fromEndpoints: [{matchLabels: {role: frontend}}]
  fromRequires: [{matchLabels: {env: prod}}]
""",
        )
    )
    denied = {e.id for e in EVERYONE if not lab_.ingress(BACKEND, e).allowed}
    assert denied == ids(PROD_FRONTEND)


# ------------------------------------------------------------------------------------ entities


@pytest.mark.parametrize(
    ("entity", "expected"),
    [
        ("world", ids(WORLD, WORLD4, WORLD6, *CIDRS)),
        ("world-ipv4", ids(WORLD4, NET10, NET96, HOST_IP)),
        ("world-ipv6", ids(WORLD6, V6)),
        ("cluster", ids(*PODS, HOST, REMOTE_NODE, APISERVER, HEALTH, INIT, UNMANAGED, INGRESS)),
        ("host", ids(HOST)),
        ("remote-node", ids(REMOTE_NODE, APISERVER)),
        ("kube-apiserver", ids(APISERVER)),
        ("health", ids(HEALTH)),
        ("init", ids(INIT)),
        ("unmanaged", ids(UNMANAGED)),
        ("ingress", ids(INGRESS)),
        ("all", ids(*EVERYONE)),
        ("none", set()),
    ],
)
def test_entities(entity: str, expected: set[int]) -> None:
    lab_ = lab(cnp("entities", backend(ingress=f"- fromEntities: [{entity}]")))
    assert lab_.allowed_from(BACKEND, EVERYONE) == expected


def test_entity_all_uses_the_wildcard_identity() -> None:
    lab_ = lab(cnp("all", backend(egress="- toEntities: [all]")))
    entries = lab_.policy(BACKEND).entries
    assert MapKey(0, True) in entries
    assert not entries[MapKey(0, True)].deny
    # a peer that appears later is covered without recomputing
    assert lab_.egress(BACKEND, cidr(99, "1.2.3.4/32")).allowed


def test_new_identity_is_selected_after_recompute() -> None:
    lab_ = lab(cnp("world", backend(egress="- toEntities: [world]")))
    late = cidr(50, "8.8.8.8/32")
    before = lab_.policy(BACKEND)
    assert not lab_.egress(BACKEND, late).allowed
    changed = lab_.cache.upsert_identity(late)
    assert changed & before.selectors  # the agent learns this endpoint needs regenerating
    assert lab_.egress(BACKEND, late).allowed


# ------------------------------------------------------------------------------------ CIDR


def test_to_cidr_and_cidr_set_with_except() -> None:
    lab_ = lab(
        cnp(
            "cidr-rule",
            """
endpointSelector: {matchLabels: {role: backend}}
egress:
- toCIDR: [20.1.1.1/32]
- toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]
""",
        )
    )
    reached = {e.id for e in EVERYONE if lab_.egress(BACKEND, e).allowed}
    assert reached == ids(HOST_IP, NET10)


def test_to_fqdns_selects_the_ips_dns_gave_for_the_names() -> None:
    """toFQDNs (matchName, matchPattern) selects the CIDR identities of the IPs the DNS cache
    holds for matching names; a new answer or an expiry changes the result."""
    lab_ = lab(
        cnp(
            "fqdn-rule",
            """
endpointSelector: {matchLabels: {role: backend}}
egress:
- toFQDNs: [{matchName: api.example.com}, {matchPattern: "*.cdn.example.com"}]
""",
        )
    )
    assert lab_.policy(BACKEND).unsupported  # no DNS data: reported, nothing selected
    assert not lab_.egress(BACKEND, HOST_IP).allowed
    lab_.fqdns = DNSCache()
    assert not lab_.egress(BACKEND, HOST_IP).allowed and not lab_.policy(BACKEND).unsupported
    lab_.fqdns.update(DNSLookup("API.example.com.", ("20.1.1.1",), 30, 0.0))
    assert {e.id for e in EVERYONE if lab_.egress(BACKEND, e).allowed} == ids(HOST_IP)
    lab_.fqdns.update(DNSLookup("img.cdn.example.com", ("2001:db8::",), 60, 0.0))
    assert not lab_.egress(BACKEND, V6).allowed  # a /48 identity is not the /128 selected
    lab_.add(late := cidr(60, "2001:db8::/128"))
    assert lab_.egress(BACKEND, late).allowed
    lab_.fqdns.update(DNSLookup("x.other.cdn.example.com", ("8.8.8.8",), 60, 0.0))
    lab_.add(other := cidr(61, "8.8.8.8/32"))
    assert not lab_.egress(BACKEND, other).allowed  # one label for '*'
    lab_.fqdns.expire(30.0)  # a zombie: selected until no connection uses it
    assert lab_.egress(BACKEND, HOST_IP).allowed
    lab_.fqdns.zombies.ct_gc_done(31.0, 61.0)  # a conntrack GC pass saw no connection
    lab_.fqdns.collect_zombies()
    assert not lab_.egress(BACKEND, HOST_IP).allowed and lab_.egress(BACKEND, late).allowed


def test_cidr_never_selects_cluster_identities() -> None:
    lab_ = lab(cnp("c", backend(ingress="- fromCIDR: [0.0.0.0/0]")))
    assert lab_.allowed_from(BACKEND, EVERYONE) == ids(WORLD4, NET10, NET96, HOST_IP)


# ------------------------------------------------------------------------------------ Layer 4


def test_l4_only_rule_applies_to_every_peer() -> None:
    lab_ = lab(
        cnp(
            "l4-rule",
            """
endpointSelector: {matchLabels: {role: backend}}
ingress:
- toPorts: [{ports: [{port: "80", protocol: TCP}]}]
""",
        )
    )
    assert lab_.allowed_from(BACKEND, EVERYONE, PROTO_TCP, 80) == ids(*EVERYONE)
    assert lab_.allowed_from(BACKEND, EVERYONE, PROTO_TCP, 81) == set()
    assert lab_.allowed_from(BACKEND, EVERYONE, PROTO_UDP, 80) == set()
    ingress_keys = {k for k in lab_.policy(BACKEND).entries if not k.egress}
    assert ingress_keys == {MapKey(0, False, PROTO_TCP, 80, 16)}


def test_labels_dependent_l4_and_any_protocol() -> None:
    lab_ = lab(
        cnp(
            "l4-labels",
            """
endpointSelector: {matchLabels: {role: backend}}
ingress:
- fromEndpoints: [{matchLabels: {role: frontend}}]
  toPorts: [{ports: [{port: "53", protocol: ANY}]}]
""",
        )
    )
    for protocol in (PROTO_TCP, PROTO_UDP, PROTO_SCTP):
        assert lab_.ingress(BACKEND, FRONTEND, protocol, 53).allowed
    assert not lab_.ingress(BACKEND, FRONTEND, PROTO_ICMP, 53).allowed
    assert not lab_.ingress(BACKEND, OTHER, PROTO_UDP, 53).allowed


def test_l3_only_rule_allows_icmp_but_a_port_rule_does_not() -> None:
    lab_ = lab(
        cnp("l3", backend(ingress=entry(FROM_FRONTEND)))
        + cnp(
            "l4",
            "endpointSelector: {matchLabels: {role: frontend}}\ningress:\n" + entry(ports("0/ANY")),
        )
    )
    assert lab_.ingress(BACKEND, FRONTEND, PROTO_ICMP, 8).allowed
    assert lab_.ingress(FRONTEND, BACKEND, PROTO_TCP, 12345).allowed
    assert not lab_.ingress(FRONTEND, BACKEND, PROTO_ICMP, 8).allowed


def test_icmp_types() -> None:
    lab_ = lab(
        cnp(
            "icmp-rule",
            """
endpointSelector: {matchLabels: {role: backend}}
ingress:
- fromEndpoints: [{matchLabels: {role: frontend}}]
  icmps:
  - fields:
    - {type: 8, family: IPv4}
    - {type: EchoRequest, family: IPv6}
""",
        )
    )
    assert lab_.ingress(BACKEND, FRONTEND, PROTO_ICMP, 8).allowed
    assert not lab_.ingress(BACKEND, FRONTEND, PROTO_ICMP, 0).allowed
    assert lab_.ingress(BACKEND, FRONTEND, PROTO_ICMPV6, 128).allowed
    assert not lab_.ingress(BACKEND, FRONTEND, PROTO_ICMPV6, 8).allowed
    assert not lab_.ingress(BACKEND, FRONTEND, PROTO_TCP, 8).allowed


def test_icmp_type_zero_is_one_type_not_every_type() -> None:
    lab_ = lab(cnp("icmp0", backend(ingress="- icmps: [{fields: [{type: 0}]}]")))
    assert lab_.ingress(BACKEND, OTHER, PROTO_ICMP, 0).allowed
    assert not lab_.ingress(BACKEND, OTHER, PROTO_ICMP, 8).allowed


# ------------------------------------------------------------------------------------ deny

A, D, N = "allowed", "denied by rule", "default deny"
FE_80 = entry(FROM_FRONTEND, ports("80/TCP"))
DENY_CASES = [
    # (deny entry, allow entry, flows (src, protocol, port, expected reason))
    (  # L3 deny vs L4 allow of the same peer
        entry(FROM_FRONTEND),
        FE_80,
        [(FRONTEND, PROTO_TCP, 80, D), (FRONTEND, PROTO_TCP, 81, D)],
    ),
    (  # L4 deny vs L3 allow of the same peer
        FE_80,
        entry(FROM_FRONTEND),
        [(FRONTEND, PROTO_TCP, 80, D), (FRONTEND, PROTO_TCP, 81, A), (FRONTEND, PROTO_UDP, 80, A)],
    ),
    (  # wildcard L4 deny vs specific L3 allow
        entry(ports("80/TCP")),
        entry(FROM_FRONTEND),
        [(FRONTEND, PROTO_TCP, 80, D), (FRONTEND, PROTO_TCP, 81, A), (OTHER, PROTO_TCP, 81, N)],
    ),
    (  # wildcard L3 deny vs specific L4 allow
        "- fromEntities: [all]",
        FE_80,
        [(FRONTEND, PROTO_TCP, 80, D)],
    ),
    (  # specific L4 deny vs wildcard L4 allow
        FE_80,
        entry(ports("80/TCP")),
        [(FRONTEND, PROTO_TCP, 80, D), (OTHER, PROTO_TCP, 80, A), (WORLD4, PROTO_TCP, 80, A)],
    ),
    (  # specific L3 deny vs wildcard L3 allow
        "- fromEntities: [world]",
        "- fromEntities: [all]",
        [(WORLD4, PROTO_TCP, 80, D), (NET10, PROTO_UDP, 1, D), (OTHER, PROTO_TCP, 80, A)],
    ),
    (  # port range deny vs single port allow
        entry(FROM_FRONTEND, ports("8000-8010/TCP")),
        entry(FROM_FRONTEND, ports("8005/TCP", "8011/TCP")),
        [(FRONTEND, PROTO_TCP, 8005, D), (FRONTEND, PROTO_TCP, 8011, A)],
    ),
    (  # single port deny vs port range allow
        entry(ports("8005/TCP")),
        entry(FROM_FRONTEND, ports("8000-8010/TCP")),
        [
            (FRONTEND, PROTO_TCP, 8004, A),
            (FRONTEND, PROTO_TCP, 8005, D),
            (FRONTEND, PROTO_TCP, 8006, A),
        ],
    ),
    (  # every port of one protocol denied vs a port allowed
        entry(FROM_FRONTEND, ports("0/TCP")),
        entry(FROM_FRONTEND, ports("80/ANY")),
        [(FRONTEND, PROTO_TCP, 80, D), (FRONTEND, PROTO_UDP, 80, A), (FRONTEND, PROTO_SCTP, 80, A)],
    ),
]


@pytest.mark.parametrize(("deny", "allow", "flows"), DENY_CASES)
def test_deny_beats_allow_at_every_specificity(
    deny: str, allow: str, flows: list[tuple[object, int, int, str]]
) -> None:
    subject = BACKEND_SUBJECT
    deny_part, allow_part = f"ingressDeny:\n{deny}", f"ingress:\n{allow}"
    texts = [
        cnp("one", f"{subject}\n{deny_part}\n{allow_part}"),
        cnp("one", f"{subject}\n{allow_part}\n{deny_part}"),
        cnp("a-deny", f"{subject}\n{deny_part}") + cnp("z-allow", f"{subject}\n{allow_part}"),
        cnp("a-allow", f"{subject}\n{allow_part}") + cnp("z-deny", f"{subject}\n{deny_part}"),
    ]
    for text in texts:
        lab_ = lab(text)
        for src, protocol, port, expected in flows:
            result = lab_.ingress(BACKEND, src, protocol, port)  # type: ignore[arg-type]
            assert result.reason == expected, (text, src, protocol, port, result)
            if expected == D:
                assert result.drop_reason == 181
                assert result.deciding
                assert all(ref.deny for ref in result.deciding)


def test_deny_world_allow_everything_else() -> None:
    # docs "Deny Policies" example shape: allow all, deny the world
    lab_ = lab(
        cnp(
            "external-lockdown",
            """
endpointSelector: {}
ingressDeny:
- fromEntities: [world]
ingress:
- fromEntities: [all]
""",
        )
    )
    assert lab_.allowed_from(BACKEND, EVERYONE) == ids(*EVERYONE) - ids(
        WORLD, WORLD4, WORLD6, *CIDRS
    )


def test_no_allow_entry_is_longer_than_a_covering_deny() -> None:
    lab_ = lab(
        cnp(
            "mix",
            """
endpointSelector: {matchLabels: {role: backend}}
ingressDeny:
- fromEndpoints: [{matchLabels: {role: frontend}}]
  toPorts: [{ports: [{port: "8000", endPort: 8015, protocol: TCP}]}]
- toPorts: [{ports: [{port: "0", protocol: UDP}]}]
ingress:
- fromEndpoints: [{}]
  toPorts: [{ports: [{port: "8004", endPort: 8100, protocol: ANY}]}]
""",
        )
    )
    entries = lab_.policy(BACKEND).entries
    denies = [k for k, e in entries.items() if e.deny]
    for key, entry in entries.items():
        if entry.deny:
            continue
        for deny in denies:
            if deny.identity in (key.identity, 0):
                assert not deny.covers(key), (deny, key)


# ------------------------------------------------------------------------------------ enforcement


def test_enable_default_deny_false_does_not_enforce() -> None:
    lab_ = lab(
        cnp(
            "intercept",
            """
endpointSelector: {matchLabels: {role: backend}}
enableDefaultDeny: {ingress: false, egress: false}
ingress:
- fromEndpoints: [{matchLabels: {role: frontend}}]
ingressDeny:
- fromEntities: [world]
""",
        )
    )
    policy = lab_.policy(BACKEND)
    assert (policy.ingress_enforced, policy.egress_enforced) == (False, False)
    assert lab_.ingress(BACKEND, OTHER).reason == "not enforced"
    # deny rules still apply
    assert lab_.ingress(BACKEND, WORLD4).reason == "denied by rule"


def test_enable_default_deny_false_loses_to_another_enforcing_rule() -> None:
    lab_ = lab(
        cnp(
            "soft",
            "endpointSelector: {}\nenableDefaultDeny: {ingress: false}\ningress:\n"
            + entry(FROM_FRONTEND),
        )
        + cnp("hard", backend(ingress="- fromEndpoints: [{matchLabels: {role: other}}]"))
    )
    assert lab_.allowed_from(BACKEND, EVERYONE) == ids(FRONTEND, PROD_FRONTEND, OTHER)
    assert lab_.ingress(FRONTEND, OTHER).reason == "not enforced"


def test_mode_always_enforces_without_rules() -> None:
    lab_ = Lab(*EVERYONE, mode="always")
    policy = lab_.policy(BACKEND)
    assert (policy.ingress_enforced, policy.egress_enforced) == (True, True)
    assert dict(policy.entries) == {}
    assert lab_.ingress(BACKEND, FRONTEND).reason == "default deny"
    assert lab_.egress(BACKEND, FRONTEND).reason == "default deny"


def test_mode_never_ignores_every_rule_including_deny() -> None:
    text = cnp("d", "endpointSelector: {}\ningressDeny:\n- fromEntities: [all]\negress:\n- {}")
    lab_ = lab(text, mode="never")
    policy = lab_.policy(BACKEND)
    assert (policy.ingress_enforced, policy.egress_enforced) == (False, False)
    assert set(policy.entries) == {MapKey(0, False), MapKey(0, True)}
    assert lab_.ingress(BACKEND, WORLD4).reason == "not enforced"
    assert lab_.egress(BACKEND, WORLD4).reason == "not enforced"


def test_not_enforced_direction_has_the_allow_all_entry() -> None:
    lab_ = lab(cnp("i", backend(ingress="- {}")))
    policy = lab_.policy(BACKEND)
    assert set(policy.entries) == {MapKey(0, True)}
    assert MapKey(0, True).prefixlen == 40
    # an endpoint no rule selects: both directions allow-all
    assert set(lab_.policy(OTHER).entries) == {MapKey(0, False), MapKey(0, True)}


def test_allow_localhost() -> None:
    lab_ = lab(cnp("i", backend(ingress="- {}", ingress_deny=entry(FROM_FRONTEND))))
    assert not lab_.ingress(BACKEND, HOST).allowed
    policy = lab_.policy(BACKEND, allow_localhost=True)
    assert MapKey(HOST.id, False) in policy.entries
    assert trace(policy, HOST.id, PROTO_TCP, 80, "ingress").allowed
    assert not trace(policy, FRONTEND.id, PROTO_TCP, 80, "ingress").allowed


# ------------------------------------------------------------------------------------ host


def test_host_policy_selects_only_the_host_endpoint() -> None:
    lab_ = lab(
        """
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: host-fw}
spec:
  nodeSelector: {}
  ingress:
  - fromEntities: [remote-node]
    toPorts: [{ports: [{port: "22", protocol: TCP}]}]
"""
    )
    host_policy = lab_.policy(HOST)
    assert host_policy.ingress_enforced
    assert lab_.ingress(HOST, REMOTE_NODE, PROTO_TCP, 22).allowed
    assert not lab_.ingress(HOST, WORLD4, PROTO_TCP, 22).allowed
    assert lab_.ingress(BACKEND, WORLD4, PROTO_TCP, 22).reason == "not enforced"


def test_endpoint_selector_never_selects_the_host() -> None:
    lab_ = lab(
        """
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: everything}
spec:
  endpointSelector: {}
  ingress:
  - {}
"""
    )
    assert lab_.policy(BACKEND).ingress_enforced
    assert not lab_.policy(HOST).ingress_enforced


# ------------------------------------------------------------------------------------ not yet


def test_fqdn_services_and_l7_are_reported() -> None:
    lab_ = lab(
        cnp(
            "later",
            """
endpointSelector: {matchLabels: {role: backend}}
egress:
- toFQDNs: [{matchName: api.example.com}]
  toPorts: [{ports: [{port: "443", protocol: TCP}]}]
- toEndpoints: [{matchLabels: {role: frontend}}]
  toPorts:
  - ports: [{port: "80", protocol: TCP}]
    rules:
      http: [{method: GET, path: "/public"}]
""",
        )
    )
    policy = lab_.policy(BACKEND)
    assert any("toFQDNs" in note for note in policy.unsupported)
    assert any("L7 http" in note for note in policy.unsupported)
    assert all("CiliumNetworkPolicy default/later" in note for note in policy.unsupported)
    assert not lab_.egress(BACKEND, WORLD4, PROTO_TCP, 443).allowed  # FQDN selects nothing yet
    assert lab_.egress(BACKEND, FRONTEND, PROTO_TCP, 80).allowed  # L7 allowed at L4
    assert not lab_.egress(BACKEND, FRONTEND, PROTO_TCP, 81).allowed


def test_egress_named_port_of_selected_destinations() -> None:
    lab_ = lab(
        cnp(
            "named",
            backend(
                egress=entry("toEndpoints: [{matchLabels: {role: frontend}}]", ports("web/ANY"))
            ),
        )
    )
    lab_.named_ports = {FRONTEND.id: {"web": (8080, "TCP")}, OTHER.id: {"web": (80, "TCP")}}
    assert lab_.egress(BACKEND, FRONTEND, PROTO_TCP, 8080).allowed
    assert not lab_.egress(BACKEND, FRONTEND, PROTO_TCP, 80).allowed
    assert not lab_.egress(BACKEND, OTHER, PROTO_TCP, 80).allowed  # not selected
    assert not lab_.egress(BACKEND, PROD_FRONTEND, PROTO_TCP, 8080).allowed  # has no such name
    # without the destinations' named ports the entry cannot be made, and that is reported
    alone = compute(lab_.repo, lab_.cache, BACKEND)
    assert not trace(alone, FRONTEND.id, PROTO_TCP, 8080, "egress").allowed
    assert any("egress named port 'web'" in note for note in alone.unsupported)


def test_non_endpoint_side_enforces_nothing() -> None:
    lab_ = lab(cnp("i", backend(ingress=entry(FROM_FRONTEND))))
    flow = lab_.flow(WORLD4, BACKEND)
    assert flow.egress.reason == "not enforced"
    assert flow.ingress.reason == "default deny"
    assert lab_.flow(BACKEND, WORLD4).allowed


def test_enable_default_deny_true_needs_a_section() -> None:
    # Cilium reads enableDefaultDeny only for rules with entries in that direction
    lab_ = lab(
        cnp(
            "egress-only",
            "endpointSelector: {matchLabels: {role: backend}}\n"
            "enableDefaultDeny: {ingress: true, egress: true}\n"
            "egress:\n- toEntities: [world]",
        )
    )
    policy = lab_.policy(BACKEND)
    assert (policy.ingress_enforced, policy.egress_enforced) == (False, True)
