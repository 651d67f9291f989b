"""Kubernetes NetworkPolicy semantics (kubernetes.io "Network Policies" and the usual recipes),
through the real parser and the engine, checked by tracing flows over identities."""

from __future__ import annotations

from ciliary.policy.mapstate import PROTO_SCTP, PROTO_TCP, PROTO_UDP

from .lab import HOST, WORLD4, Lab, cidr, pod

WEB = pod(256, "shop", app="web")
DB = pod(257, "shop", app="db")
OTHER = pod(258, "other", {"team": "blue"}, app="client")
PROD = pod(259, "prod", {"team": "blue", "env": "prod"}, app="client")
INSIDE = cidr(1, "10.2.0.0/16")
EXCEPTED = cidr(2, "10.1.2.0/24")
WHOLE = cidr(3, "10.0.0.0/8")
OUTSIDE = cidr(4, "192.168.1.0/24")
EVERYONE = (WEB, DB, OTHER, PROD, INSIDE, EXCEPTED, WHOLE, OUTSIDE, HOST, WORLD4)


def lab(text: str) -> Lab:
    out = Lab(*EVERYONE)
    out.apply(text)
    return out


def test_default_deny_ingress_in_a_namespace() -> None:
    lab_ = lab("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-ingress, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Ingress]
""")
    assert lab_.allowed_from(WEB, EVERYONE) == set()
    assert lab_.ingress(WEB, DB).reason == "default deny"
    assert lab_.ingress(WEB, DB).drop_reason == 133
    # egress untouched, other namespaces untouched
    assert lab_.egress(WEB, OTHER).reason == "not enforced"
    assert lab_.ingress(OTHER, WEB).reason == "not enforced"
    policy = lab_.policy(WEB)
    assert (policy.ingress_enforced, policy.egress_enforced) == (True, False)


def test_policy_without_policy_types_and_no_rules_is_ingress_deny() -> None:
    lab_ = lab("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
""")
    assert lab_.policy(WEB).ingress_enforced
    assert not lab_.policy(WEB).egress_enforced
    assert not lab_.policy(DB).ingress_enforced


def test_allow_all_ingress() -> None:
    lab_ = lab("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-ingress, namespace: shop}
spec:
  podSelector: {}
  ingress: [{}]
""")
    assert lab_.allowed_from(WEB, EVERYONE) == {e.id for e in EVERYONE}
    assert lab_.ingress(WEB, WORLD4).reason == "allowed"
    assert lab_.policy(WEB).ingress_enforced


def test_deny_all_both_directions() -> None:
    lab_ = lab("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-all, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
""")
    assert not lab_.allowed(WEB, DB)
    assert lab_.flow(WEB, DB).egress.reason == "default deny"
    assert lab_.egress(WEB, WORLD4).reason == "default deny"


def test_egress_only_policy_leaves_ingress_open() -> None:
    lab_ = lab("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-only, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: 5432}]
""")
    policy = lab_.policy(WEB)
    assert (policy.ingress_enforced, policy.egress_enforced) == (False, True)
    assert lab_.egress(WEB, DB, PROTO_TCP, 5432).reason == "allowed"
    assert lab_.egress(WEB, DB, PROTO_TCP, 5433).reason == "default deny"
    assert lab_.egress(WEB, DB, PROTO_UDP, 5432).reason == "default deny"  # TCP by default
    assert lab_.egress(WEB, OTHER, PROTO_TCP, 5432).reason == "default deny"
    assert lab_.ingress(WEB, OTHER).reason == "not enforced"


def test_allow_from_namespace_by_label() -> None:
    lab_ = lab("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-team-blue, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: blue}}}]
""")
    assert lab_.allowed_from(WEB, EVERYONE) == {OTHER.id, PROD.id}


def test_namespace_and_pod_selector_in_one_peer_are_anded() -> None:
    lab_ = lab("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {env: prod}}
      podSelector: {matchLabels: {app: client}}
""")
    assert lab_.allowed_from(WEB, EVERYONE) == {PROD.id}


def test_namespace_or_pod_selector_as_two_peers_are_ored() -> None:
    lab_ = lab("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {env: prod}}
    - podSelector: {matchLabels: {app: db}}
""")
    assert lab_.allowed_from(WEB, EVERYONE) == {PROD.id, DB.id}


def test_allow_same_namespace_only() -> None:
    lab_ = lab("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: same-namespace, namespace: shop}
spec:
  podSelector: {}
  ingress:
  - from: [{podSelector: {}}]
""")
    assert lab_.allowed_from(WEB, EVERYONE) == {WEB.id, DB.id}


def test_allow_from_all_namespaces_is_pods_only() -> None:
    lab_ = lab("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: all-namespaces, namespace: shop}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {}}]
""")
    assert lab_.allowed_from(WEB, EVERYONE) == {WEB.id, DB.id, OTHER.id, PROD.id}


def test_ip_block_with_except_selects_cidr_identities_inside_only() -> None:
    lab_ = lab("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ipblock, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
""")
    # 10.2/16 is inside; 10.1.2/24 is in the exception; the /8 identity overlaps the exception
    # (Cilium cuts 10/8 minus 10.1/16 into the prefixes around it, none of which holds the /8)
    assert lab_.allowed_from(WEB, EVERYONE) == {INSIDE.id}
    # pods are never CIDR-selected
    assert not lab_.ingress(WEB, DB).allowed


def test_ip_block_without_except_selects_the_prefix_and_everything_inside() -> None:
    lab_ = lab("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ipblock, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/8}}]
  policyTypes: [Egress]
""")
    reached = {e.id for e in EVERYONE if lab_.egress(WEB, e).allowed}
    assert reached == {INSIDE.id, EXCEPTED.id, WHOLE.id}


def test_ip_block_everything_is_world() -> None:
    lab_ = lab("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: to-internet, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 0.0.0.0/0}}]
""")
    reached = {e.id for e in EVERYONE if lab_.egress(WEB, e).allowed}
    assert reached == {INSIDE.id, EXCEPTED.id, WHOLE.id, OUTSIDE.id, WORLD4.id}


def test_end_port_range() -> None:
    lab_ = lab("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: range, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{protocol: TCP, port: 32000, endPort: 32768}]
""")
    for port, ok in [(31999, False), (32000, True), (32500, True), (32768, True), (32769, False)]:
        assert lab_.ingress(WEB, DB, PROTO_TCP, port).allowed is ok, port
    assert not lab_.ingress(WEB, DB, PROTO_UDP, 32000).allowed
    assert not lab_.ingress(WEB, OTHER, PROTO_TCP, 32000).allowed


def test_port_without_number_is_every_port_of_the_protocol() -> None:
    lab_ = lab("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: udp-any, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - ports: [{protocol: UDP}]
""")
    assert lab_.ingress(WEB, OTHER, PROTO_UDP, 9).allowed
    assert lab_.ingress(WEB, WORLD4, PROTO_UDP, 65535).allowed
    assert not lab_.ingress(WEB, OTHER, PROTO_TCP, 9).allowed
    assert not lab_.ingress(WEB, OTHER, PROTO_SCTP, 9).allowed


def test_named_port_resolves_against_the_destination_pod() -> None:
    lab_ = lab("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named, namespace: shop}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: http}]
""")
    lab_.named_ports = {WEB.id: {"http": (8080, "TCP")}, DB.id: {"metrics": (9090, "TCP")}}
    assert lab_.ingress(WEB, OTHER, PROTO_TCP, 8080).allowed
    assert not lab_.ingress(WEB, OTHER, PROTO_TCP, 80).allowed
    # db has no port named http: nothing allowed
    assert not lab_.ingress(DB, OTHER, PROTO_TCP, 8080).allowed
    assert lab_.ingress(DB, OTHER, PROTO_TCP, 8080).reason == "default deny"


def test_egress_named_port_resolves_per_destination() -> None:
    lab_ = lab("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: db}]
""")
    lab_.named_ports = {DB.id: {"db": (5432, "TCP")}, OTHER.id: {"db": (3306, "TCP")}}
    assert lab_.egress(WEB, DB, PROTO_TCP, 5432).allowed
    assert not lab_.egress(WEB, DB, PROTO_TCP, 3306).allowed
    assert lab_.egress(WEB, OTHER, PROTO_TCP, 3306).allowed
    assert not lab_.egress(WEB, PROD, PROTO_TCP, 5432).allowed


def test_dns_egress_recipe() -> None:
    dns = pod(300, "kube-system", k8s_app="kube-dns")
    lab_ = Lab(*EVERYONE, dns)
    lab_.apply("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-dns, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {}
      podSelector: {matchLabels: {k8s-app: kube-dns}}
    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
""")
    assert lab_.egress(WEB, dns, PROTO_UDP, 53).allowed
    assert lab_.egress(WEB, dns, PROTO_TCP, 53).allowed
    assert not lab_.egress(WEB, dns, PROTO_TCP, 80).allowed
    assert not lab_.egress(WEB, DB, PROTO_UDP, 53).allowed


def test_union_of_two_policies() -> None:
    lab_ = lab("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b, namespace: shop}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: blue}}}]
    ports: [{port: 443}]
""")
    assert lab_.ingress(WEB, DB, PROTO_TCP, 80).allowed
    assert not lab_.ingress(WEB, DB, PROTO_TCP, 443).allowed
    assert lab_.ingress(WEB, OTHER, PROTO_TCP, 443).allowed
    assert not lab_.ingress(WEB, OTHER, PROTO_TCP, 80).allowed
    result = lab_.ingress(WEB, OTHER, PROTO_TCP, 443)
    assert {r.name for r in result.deciding} == {"b"}


def test_both_sides_must_allow() -> None:
    lab_ = lab("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-ingress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: other}}}]
""")
    flow = lab_.flow(WEB, DB)
    assert flow.egress.allowed
    assert not flow.ingress.allowed
    assert not flow.allowed
    assert flow.deciding is flow.ingress
