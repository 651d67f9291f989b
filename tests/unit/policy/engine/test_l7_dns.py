"""DNS rules (``rules: dns``) per policy map key and the DNS proxy's verdict on them
(policy/l7.py, trace.dns_verdict): matchName/matchPattern, several rules on one key adding up,
L3/L4-only rules making every name pass, a denied or unmatched server refused."""

from __future__ import annotations

import pytest

from ciliary.policy.mapstate import PROTO_TCP, PROTO_UDP, MapKey
from ciliary.policy.trace import dns_verdict
from tests.unit.policy.engine.lab import WORLD, Lab, pod

CLIENT = pod(1000, "default", app="client")
OTHER = pod(1001, "default", app="other")
DNS = pod(1002, "kube-system", k8s_app="kube-dns")

DNS_RULES = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints:
    - matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s:k8s-app: kube-dns}
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns:
        - matchName: partner.example.com
        - matchPattern: "*.cilium.io"
"""


def lab() -> Lab:
    out = Lab(CLIENT, OTHER, DNS, WORLD)
    out.apply(DNS_RULES)
    return out


@pytest.mark.parametrize("protocol", [PROTO_UDP, PROTO_TCP])
@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("partner.example.com.", True),
        ("PARTNER.example.com", True),
        ("x.partner.example.com", False),
        ("docs.cilium.io.", True),
        ("a.docs.cilium.io", False),
        ("cilium.io", False),
        ("evil.com", False),
    ],
)
def test_dns_rules_select_names(protocol: int, name: str, allowed: bool) -> None:
    pol = lab().policy(CLIENT)
    verdict = dns_verdict(pol, DNS.id, protocol, 53, name)
    assert verdict.allowed is allowed
    assert verdict.reason == ("allowed" if allowed else "name not allowed")
    assert verdict.key == MapKey(DNS.id, True, protocol, 53, 16)
    assert {str(r) for r in verdict.rules} == {"CiliumNetworkPolicy default/dns rule 0 egress[0]"}


def test_the_entries_carry_their_dns_rules() -> None:
    pol = lab().policy(CLIENT)
    assert set(pol.l7) == {
        MapKey(DNS.id, True, PROTO_UDP, 53, 16),
        MapKey(DNS.id, True, PROTO_TCP, 53, 16),
        MapKey(DNS.id, True, 132, 53, 16),  # ANY is TCP, UDP and SCTP, as the L4 entries
    }
    l7 = pol.l7[MapKey(DNS.id, True, PROTO_UDP, 53, 16)]
    assert l7.kind == "dns" and not l7.wildcard
    assert lab().policy(OTHER).l7 == {}  # not selected: nothing


def test_a_server_the_datapath_denies_is_refused() -> None:
    pol = lab().policy(CLIENT)
    assert dns_verdict(pol, WORLD.id, PROTO_UDP, 53, "partner.example.com").reason == (
        "default deny"
    )
    assert not dns_verdict(pol, DNS.id, PROTO_UDP, 5353, "partner.example.com").allowed


def test_rules_add_up_and_l4_only_rules_allow_every_name() -> None:
    l7 = lab()
    l7.apply(DNS_RULES.replace("name: dns", "name: more").replace(
        "matchName: partner.example.com", "matchName: more.example.com"
    ))  # fmt: skip
    pol = l7.policy(CLIENT)
    assert dns_verdict(pol, DNS.id, PROTO_UDP, 53, "more.example.com").allowed
    assert dns_verdict(pol, DNS.id, PROTO_UDP, 53, "partner.example.com").allowed
    assert not dns_verdict(pol, DNS.id, PROTO_UDP, 53, "evil.com").allowed
    # the same peer and port without L7 rules: the proxy allows every name
    l7.apply(DNS_RULES.replace("name: dns", "name: l4").split("      rules:")[0])
    pol = l7.policy(CLIENT)
    assert pol.l7[MapKey(DNS.id, True, PROTO_UDP, 53, 16)].wildcard
    assert dns_verdict(pol, DNS.id, PROTO_UDP, 53, "evil.com").reason == "allowed"


def test_a_port_only_rule_for_every_peer_allows_every_name() -> None:
    l7 = lab()
    l7.apply("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: port-only, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toPorts: [{ports: [{port: "53", protocol: UDP}]}]
""")
    pol = l7.policy(CLIENT)
    assert dns_verdict(pol, DNS.id, PROTO_UDP, 53, "evil.com").allowed
    assert not dns_verdict(pol, DNS.id, PROTO_TCP, 53, "evil.com").allowed


def test_an_empty_dns_list_and_a_star_pattern_allow_every_name() -> None:
    for rules in ("dns: []", 'dns: [{matchPattern: "*"}]'):
        l7 = Lab(CLIENT, DNS)
        text = DNS_RULES.partition("        dns:")[0].replace("rules:", f"rules: {{{rules}}}")
        l7.apply(text)
        pol = l7.policy(CLIENT)
        assert MapKey(DNS.id, True, PROTO_UDP, 53, 16) in pol.l7, rules
        assert dns_verdict(pol, DNS.id, PROTO_UDP, 53, "anything.example").allowed, rules


def test_no_policy_and_no_l7_rule_allow() -> None:
    assert dns_verdict(None, DNS.id, PROTO_UDP, 53, "x.com").reason == "no L7 rule"
    l7 = Lab(CLIENT, DNS)
    l7.apply(DNS_RULES.partition("      rules:")[0])
    assert dns_verdict(l7.policy(CLIENT), DNS.id, PROTO_UDP, 53, "x.com").reason == "no L7 rule"
    with pytest.raises(ValueError, match="expected UDP"):
        dns_verdict(None, DNS.id, 1, 53, "x.com")
