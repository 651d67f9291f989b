"""What the normalized model makes of the different ways to write the same thing."""

from __future__ import annotations

from ipaddress import ip_network
from typing import Any

import yaml

from ciliary.policy.api import (
    CIDRRule,
    FQDNSelector,
    ICMPField,
    Label,
    PeerRule,
    PortProtocol,
    PortRule,
    Requirement,
    Rule,
    Selector,
    parse_policy_documents,
    parse_policy_text,
)

NS = "k8s:io.kubernetes.pod.namespace"


def rule_of(spec: dict[str, Any], kind: str = "CiliumNetworkPolicy") -> Rule:
    doc = {
        "apiVersion": "networking.k8s.io/v1" if kind == "NetworkPolicy" else "cilium.io/v2",
        "kind": kind,
        "metadata": {"name": "p", "namespace": "shop"},
        "spec": spec,
    }
    (policy,) = parse_policy_documents([(1, doc)], "n.yaml")
    (rule,) = policy.rules
    return rule


def egress(*entries: dict[str, Any]) -> tuple[PeerRule, ...]:
    return rule_of({"endpointSelector": {}, "egress": list(entries)}).egress


def test_named_ports_stay_named_and_lowercase() -> None:
    (peer,) = egress({"toPorts": [{"ports": [{"port": "HTTP-Alt"}, {"port": 8080}]}]})
    assert peer.ports == (
        PortRule(
            ports=(
                PortProtocol(port=None, name="http-alt", protocol="ANY"),
                PortProtocol(port=8080, protocol="ANY"),
            )
        ),
    )


def test_end_port_equal_or_zero_is_a_single_port() -> None:
    (peer,) = egress(
        {"toPorts": [{"ports": [{"port": "80", "endPort": 80}, {"port": "81", "endPort": 0}]}]}
    )
    assert peer.ports[0].ports == (PortProtocol(port=80), PortProtocol(port=81))


def test_cidrs() -> None:
    (peer,) = egress({"toCIDR": ["192.0.2.7", "2001:db8::1", "10.1.2.3/8", "fd00::1/64"]})
    assert peer.cidrs == (
        CIDRRule(ip_network("192.0.2.7/32")),
        CIDRRule(ip_network("2001:db8::1/128")),
        CIDRRule(ip_network("10.0.0.0/8")),
        CIDRRule(ip_network("fd00::/64")),
    )
    (peer,) = egress({"toCIDRSet": [{"cidrGroupRef": "office"}]})
    assert peer.cidrs == (CIDRRule(None, group_ref="office"),)
    (peer,) = egress({"toCIDRSet": [{"cidrGroupSelector": {"matchLabels": {"site": "a"}}}]})
    assert peer.cidrs == (CIDRRule(None, group_selector=Selector((("cidrgroup:site", "a"),))),)


def test_fqdns_are_lowercase_without_the_trailing_dot() -> None:
    (peer,) = egress({"toFQDNs": [{"matchName": "API.Example.COM."}, {"matchPattern": "*"}]})
    assert peer.fqdns == (
        FQDNSelector(match_name="api.example.com"),
        FQDNSelector(match_pattern="*"),
    )


def test_icmp_types_as_strings() -> None:
    (peer,) = egress({"icmps": [{"fields": [{"type": "0"}, {"type": "255", "family": "IPv6"}]}]})
    assert peer.icmps == (ICMPField("IPv4", 0), ICMPField("IPv6", 255))


def test_enable_default_deny_labels_and_log() -> None:
    rule = rule_of(
        {
            "endpointSelector": {},
            "ingress": [{}],
            "enableDefaultDeny": {"ingress": False},
            "labels": [{"key": "team", "value": "a"}, {"key": "z", "source": "k8s"}],
            "log": {"value": "audit-me"},
        }
    )
    assert rule.enable_default_deny == (False, None)
    assert not rule.default_deny_ingress and not rule.default_deny_egress
    assert Label("unspec", "team", "a") in rule.labels
    assert Label("k8s", "z") in rule.labels
    assert rule.log == "audit-me"


def test_init_subject_is_not_namespaced() -> None:
    rule = rule_of(
        {
            "endpointSelector": {"matchLabels": {"reserved:init": ""}},
            "egress": [{"toEndpoints": [{"matchLabels": {"app": "dns"}}]}],
        }
    )
    # Cilium leaves both the subject and its peers alone: init endpoints have no labels yet.
    assert rule.endpoint_selector == Selector((("reserved:init", ""),))
    assert rule.egress[0].endpoints == (Selector((("any:app", "dns"),)),)


def test_user_namespace_in_the_subject_is_replaced() -> None:
    rule = rule_of({"endpointSelector": {"matchLabels": {NS: "other"}}, "ingress": [{}]})
    assert rule.endpoint_selector == Selector(((NS, "shop"),))


def test_requires_are_scoped_even_with_reserved_keys() -> None:
    rule = rule_of(
        {
            "endpointSelector": {},
            "ingress": [
                {"fromRequires": [{"matchLabels": {"reserved:host": ""}}]},
                {"fromEndpoints": [{"matchLabels": {"reserved:host": ""}}]},
            ],
        }
    )
    assert rule.ingress[0].requires == (Selector(((NS, "shop"), ("reserved:host", ""))),)
    assert rule.ingress[1].endpoints == (Selector((("reserved:host", ""),)),)


def test_namespace_in_match_expressions_is_respected() -> None:
    expression = {"key": "io.kubernetes.pod.namespace", "operator": "In", "values": ["b", "a"]}
    (peer,) = egress({"toEndpoints": [{"matchExpressions": [expression]}]})
    assert peer.endpoints == (
        Selector((), (Requirement("any:io.kubernetes.pod.namespace", "In", ("a", "b")),)),
    )


def test_spec_and_specs_together() -> None:
    text = yaml.safe_dump(
        {
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "both"},
            "spec": {"endpointSelector": {}, "ingress": [{}]},
            "specs": [{"endpointSelector": {}, "egress": [{}]}] * 2,
        }
    )
    (policy,) = parse_policy_text(text, "n.yaml")
    assert [(r.index, r.path) for r in policy.rules] == [
        (0, "spec"),
        (1, "specs[0]"),
        (2, "specs[1]"),
    ]


def test_k8s_policy_types_default() -> None:
    # No policyTypes, egress rules only: Kubernetes defaults to [Ingress, Egress], and Cilium
    # adds the default-deny ingress entry.
    rule = rule_of({"podSelector": {}, "egress": [{}]}, kind="NetworkPolicy")
    assert rule.ingress == (PeerRule(0),)
    assert rule.egress == (PeerRule(0, endpoints=(Selector(),)),)
    assert rule.default_deny_ingress and rule.default_deny_egress


def test_k8s_ports() -> None:
    rule = rule_of(
        {
            "podSelector": {},
            "ingress": [
                {"ports": [{"protocol": "UDP"}, {"port": "dns", "protocol": "SCTP"}, {"port": 1}]}
            ],
        },
        kind="NetworkPolicy",
    )
    assert rule.ingress[0].ports == (
        PortRule(ports=(PortProtocol(port=0, protocol="UDP"),)),
        PortRule(ports=(PortProtocol(port=None, name="dns", protocol="SCTP"),)),
        PortRule(ports=(PortProtocol(port=1, protocol="TCP"),)),
    )


def test_policy_metadata() -> None:
    text = yaml.safe_dump(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": "np",
                "labels": {"b": "2", "a": "1"},
                "annotations": {"note": "free text: anything"},
                "managedFields": [{"manager": "kubectl"}],
                "generation": 3,
            },
            "spec": {"podSelector": {}},
        }
    )
    (policy,) = parse_policy_text(text, "n.yaml")
    assert policy.namespace == "default"
    assert policy.display_name == "default/np"
    assert policy.labels == (("a", "1"), ("b", "2"))
    assert policy.annotations == (("note", "free text: anything"),)
