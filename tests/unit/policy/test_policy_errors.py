"""Every rejection, with its exact one-line message: file, document, field path, problem."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from ciliary.policy.api import (
    PolicyError,
    parse_policy_documents,
    parse_policy_text,
)

FILE = "policy.yaml"
CNP_WHERE = f"{FILE}: document 1 (CiliumNetworkPolicy shop/web)"
CCNP_WHERE = f"{FILE}: document 1 (CiliumClusterwideNetworkPolicy all)"
NP_WHERE = f"{FILE}: document 1 (NetworkPolicy shop/np)"


def cnp(*egress: dict[str, Any], **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"endpointSelector": {"matchLabels": {"app": "web"}}}
    if egress:
        body["egress"] = list(egress)
    body.update(spec)
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": body,
    }


def ccnp(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": "all"},
        "spec": spec,
    }


def np(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"podSelector": {}}
    body.update(spec)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "np", "namespace": "shop"},
        "spec": body,
    }


def problems(*docs: dict[str, Any] | str) -> list[str]:
    text = "---\n".join(d if isinstance(d, str) else yaml.safe_dump(d) for d in docs)
    with pytest.raises(PolicyError) as info:
        parse_policy_text(text, FILE)
    assert str(info.value) == info.value.problems[0]
    for line in info.value.problems:
        assert "\n" not in line
    return info.value.problems


def error(*docs: dict[str, Any] | str) -> str:
    return problems(*docs)[0]


def port_rule(*ports: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"toPorts": [{"ports": list(ports), **extra}]}


# --------------------------------------------------------------------------------------------
# Files and documents


def test_yaml_syntax_and_duplicate_keys() -> None:
    assert error("a: [1, 2\n") == (
        f"{FILE}: line 2 column 1: expected ',' or ']', but got '<stream end>' (while parsing a"
        " flow sequence at line 1 column 4)"
    )
    assert error("kind: NetworkPolicy\nkind: NetworkPolicy\n") == (
        f"{FILE}: line 2 column 1: duplicate key 'kind' (first given on line 1)"
    )
    assert error("") == f"{FILE}: the file has no documents (expected policy documents)"


def test_documents_that_are_not_policies() -> None:
    assert error("- a\n") == (
        f"{FILE}: document 1: expected a mapping (a policy with apiVersion, kind, metadata and"
        " spec), got a list"
    )
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop"}}
    assert error(pod) == (
        f"{FILE}: document 1 (Pod shop/web): kind: Pod is not a policy kind (expected one of"
        " CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy)"
    )
    assert (
        error({"metadata": {"name": "x"}}) == f"{FILE}: document 1: kind: required field is missing"
    )
    assert error({"kind": 5}) == f"{FILE}: document 1: kind: expected a string, got int 5"
    doc = cnp({})
    doc["apiVersion"] = "cilium.io/v1"
    assert error(doc) == (
        f"{CNP_WHERE}: apiVersion: expected 'cilium.io/v2' for kind CiliumNetworkPolicy, got"
        " 'cilium.io/v1'"
    )
    del doc["apiVersion"]
    assert (
        error(doc)
        == f"{CNP_WHERE}: apiVersion: required field is missing (expected 'cilium.io/v2')"
    )


def test_all_problems_of_all_documents_are_reported() -> None:
    bad_port = cnp(port_rule({"port": "80", "endPort": 70}))
    found = problems(cnp({}), bad_port, np(policyTypes=["Sideways"]))
    assert found == [
        f"{FILE}: document 2 (CiliumNetworkPolicy shop/web): spec.egress[0].toPorts[0].ports[0]"
        ".endPort: must be >= port (80)",
        f"{FILE}: document 3 (NetworkPolicy shop/np): spec.policyTypes[0]: expected 'Ingress' or"
        " 'Egress', got 'Sideways'",
    ]


def test_duplicate_policies_in_one_file() -> None:
    assert error(cnp({}), cnp({})) == (
        f"{FILE}: document 2 (CiliumNetworkPolicy shop/web): metadata.name: duplicate policy"
        " CiliumNetworkPolicy shop/web (also document 1)"
    )


def test_parse_policy_documents() -> None:
    assert parse_policy_documents([], "lab.yaml") == []
    (policy,) = parse_policy_documents([(4, cnp({}))], "lab.yaml")
    assert policy.source == "lab.yaml:4"
    with pytest.raises(PolicyError) as info:
        parse_policy_documents([(2, {"apiVersion": "v1", "kind": "Namespace"})], "lab.yaml")
    assert str(info.value) == (
        "lab.yaml: document 2 (Namespace): kind: Namespace is not a policy kind (expected one of"
        " CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy)"
    )


def test_metadata() -> None:
    doc = cnp({})
    doc["metadata"]["nmae"] = "x"
    assert error(doc) == f"{CNP_WHERE}: metadata.nmae: unknown field"
    doc = cnp({})
    del doc["metadata"]["name"]
    assert error(doc) == (
        f"{FILE}: document 1 (CiliumNetworkPolicy): metadata.name: required field is missing"
    )
    doc = cnp({})
    doc["metadata"]["name"] = "Web_1"
    assert error(doc) == (
        f"{FILE}: document 1 (CiliumNetworkPolicy shop/Web_1): metadata.name: expected a"
        " DNS-1123 subdomain (lowercase letters, digits, '-' and '.', each part starting and"
        " ending with a letter or digit, at most 253 characters), got 'Web_1'"
    )
    doc = cnp({})
    doc["metadata"]["labels"] = {"team": "a b"}
    assert error(doc) == (
        f"{CNP_WHERE}: metadata.labels.team: a label value is empty or at most 63 characters of"
        " letters, digits, '-', '_' and '.', starting and ending with a letter or digit, got"
        " 'a b'"
    )


def test_unknown_fields_and_types_anywhere() -> None:
    doc = cnp({})
    doc["spec"]["egress"][0]["toPort"] = []
    assert error(doc) == f"{CNP_WHERE}: spec.egress[0].toPort: unknown field"
    assert error(cnp(port_rule({"port": "80", "protocol": "tcp"}))) == (
        f"{CNP_WHERE}: spec.egress[0].toPorts[0].ports[0].protocol: expected 'TCP', 'UDP', 'SCTP'"
        " or 'ANY', got 'tcp'"
    )
    assert error(cnp({}, enableDefaultDeny={"ingress": "yes"})) == (
        f"{CNP_WHERE}: spec.enableDefaultDeny.ingress: expected true or false, got 'yes'"
    )
    assert error(cnp({"toEndpoints": {"matchLabels": {}}})) == (
        f"{CNP_WHERE}: spec.egress[0].toEndpoints: expected a list, got a mapping"
    )
    assert error(cnp(port_rule({"port": 80.5}))) == (
        f"{CNP_WHERE}: spec.egress[0].toPorts[0].ports[0].port: expected a number or a string,"
        " got float 80.5"
    )
    assert error(cnp({"toEndpoints": [{"matchLabels": {"app": 1}}]})) == (
        f"{CNP_WHERE}: spec.egress[0].toEndpoints[0].matchLabels.app: expected a string, got int 1"
        " (quote it to make it a string)"
    )


# --------------------------------------------------------------------------------------------
# Cilium rules


def test_spec_or_specs() -> None:
    doc = cnp({})
    del doc["spec"]
    assert error(doc) == f"{CNP_WHERE}: spec: required field is missing (give spec, specs or both)"
    doc["specs"] = []
    assert error(doc) == f"{CNP_WHERE}: specs: expected at least one rule, got an empty list"


def test_endpoint_selector_xor_node_selector() -> None:
    doc = cnp({})
    del doc["spec"]["endpointSelector"]
    assert error(doc) == (
        f"{CNP_WHERE}: spec: a rule needs endpointSelector (or, in a"
        " CiliumClusterwideNetworkPolicy, nodeSelector); {} selects everything"
    )
    assert error(ccnp(endpointSelector={}, nodeSelector={}, ingress=[{}])) == (
        f"{CCNP_WHERE}: spec.nodeSelector: cannot be combined with endpointSelector (a rule"
        " selects endpoints or nodes)"
    )
    assert error(cnp({}, nodeSelector={})) == (
        f"{CNP_WHERE}: spec.nodeSelector: cannot be combined with endpointSelector (a rule"
        " selects endpoints or nodes)"
    )
    doc = cnp({}, nodeSelector={})
    del doc["spec"]["endpointSelector"]
    assert error(doc) == (
        f"{CNP_WHERE}: spec.nodeSelector: only a CiliumClusterwideNetworkPolicy may select nodes"
        " (host policies are cluster-wide); use endpointSelector"
    )


def test_rule_without_sections() -> None:
    expected = (
        f"{CNP_WHERE}: spec: a rule needs at least one of ingress, ingressDeny, egress and"
        " egressDeny (an empty list counts as none; an entry {} allows nothing and turns default"
        " deny on)"
    )
    assert error(cnp()) == expected
    assert error(cnp(ingress=[])) == expected


def test_specs_paths() -> None:
    doc = cnp({})
    doc["specs"] = [doc["spec"], cnp(port_rule({"port": "80", "endPort": 70}))["spec"]]
    assert error(doc) == (
        f"{CNP_WHERE}: specs[1].egress[0].toPorts[0].ports[0].endPort: must be >= port (80)"
    )


def test_l3_members_cannot_be_combined() -> None:
    assert error(cnp({"toFQDNs": [{"matchName": "a.io"}], "toEndpoints": [{}]})) == (
        f"{CNP_WHERE}: spec.egress[0].toFQDNs: cannot be combined with toEndpoints in the same"
        " rule (Cilium allows one kind of peer per rule; write one rule per kind)"
    )
    assert error(cnp({"toFQDNs": [{"matchName": "a.io"}], "toCIDR": ["1.1.1.1"]})) == (
        f"{CNP_WHERE}: spec.egress[0].toFQDNs: cannot be combined with toCIDR in the same rule"
        " (Cilium allows one kind of peer per rule; write one rule per kind)"
    )
    assert error(cnp(ingress=[{"fromEndpoints": [{}], "fromEntities": ["world"]}])) == (
        f"{CNP_WHERE}: spec.ingress[0].fromEntities: cannot be combined with fromEndpoints in the"
        " same rule (Cilium allows one kind of peer per rule; write one rule per kind)"
    )


def test_icmps_and_to_ports_cannot_be_combined() -> None:
    rule = port_rule({"port": "80"})
    rule["icmps"] = [{"fields": [{"type": 8}]}]
    assert error(cnp(rule)) == (
        f"{CNP_WHERE}: spec.egress[0].icmps: cannot be combined with toPorts in the same rule"
        " (write a separate rule)"
    )


def test_entities() -> None:
    assert error(cnp({"toEntities": ["world", "internet"]})) == (
        f"{CNP_WHERE}: spec.egress[0].toEntities[1]: unknown entity 'internet' (expected one of"
        " all, world, world-ipv4, world-ipv6, cluster, host, remote-node, init, health,"
        " unmanaged, kube-apiserver, ingress, none)"
    )


def test_cidrs() -> None:
    assert error(cnp({"toCIDR": ["10.0.0.256"]})) == (
        f"{CNP_WHERE}: spec.egress[0].toCIDR[0]: expected a CIDR or an IP address like"
        " 10.0.0.0/8 or fd00::/64, got '10.0.0.256' ('10.0.0.256' is not an IP address)"
    )
    assert error(cnp({"toCIDR": ["10.0.0.0/33"]})) == (
        f"{CNP_WHERE}: spec.egress[0].toCIDR[0]: expected a CIDR or an IP address like"
        " 10.0.0.0/8 or fd00::/64, got '10.0.0.0/33' (prefix length 33 is longer than 32)"
    )
    assert error(cnp({"toCIDR": ["10.0.0.0/255.0.0.0"]})) == (
        f"{CNP_WHERE}: spec.egress[0].toCIDR[0]: expected a CIDR or an IP address like"
        " 10.0.0.0/8 or fd00::/64, got '10.0.0.0/255.0.0.0' (invalid prefix length"
        " '255.0.0.0')"
    )
    assert error(cnp({"toCIDRSet": [{"cidr": "10.0.0.1"}]})) == (
        f"{CNP_WHERE}: spec.egress[0].toCIDRSet[0].cidr: expected a CIDR (address/prefix length)"
        " like 10.0.0.0/8 or fd00::/64, got '10.0.0.1' (no prefix length)"
    )
    assert error(cnp({"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}]})) == (
        f"{CNP_WHERE}: spec.egress[0].toCIDRSet[0].except[0]: 11.0.0.0/16 is not inside cidr"
        " 10.0.0.0/8"
    )
    assert error(cnp({"toCIDRSet": [{"cidr": "10.1.2.3/8", "except": ["fd00::/64"]}]})) == (
        f"{CNP_WHERE}: spec.egress[0].toCIDRSet[0].except[0]: fd00::/64 is not inside cidr"
        " 10.1.2.3/8 (10.0.0.0/8)"
    )
    assert error(cnp({"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.0.0.0/4"]}]})) == (
        f"{CNP_WHERE}: spec.egress[0].toCIDRSet[0].except[0]: 10.0.0.0/4 is not inside cidr"
        " 10.0.0.0/8"
    )
    assert error(cnp({"toCIDRSet": [{"except": ["10.0.0.0/8"]}]})) == (
        f"{CNP_WHERE}: spec.egress[0].toCIDRSet[0]: expected one of cidr, cidrGroupRef and"
        " cidrGroupSelector"
    )
    assert error(cnp({"toCIDRSet": [{"cidr": "10.0.0.0/8", "cidrGroupRef": "g"}]})) == (
        f"{CNP_WHERE}: spec.egress[0].toCIDRSet[0].cidrGroupRef: cannot be combined with cidr"
        " (give one of cidr, cidrGroupRef and cidrGroupSelector)"
    )
    assert error(cnp({"toCIDRSet": [{"cidrGroupRef": "g", "except": ["10.0.0.0/8"]}]})) == (
        f"{CNP_WHERE}: spec.egress[0].toCIDRSet[0].except: only valid with cidr"
    )


def test_ports() -> None:
    path = f"{CNP_WHERE}: spec.egress[0].toPorts[0].ports[0]"
    assert error(cnp(port_rule({"port": "65536"}))) == (
        f"{path}.port: expected a port number 0-65535, got '65536'"
    )
    assert error(cnp(port_rule({"port": 70000}))) == (
        f"{path}.port: expected a port number 0-65535, got int 70000"
    )
    assert error(cnp(port_rule({"port": "80-90"}))) == (
        f"{path}.port: expected a port number (0-65535) or a port name (an IANA service name: at"
        " most 15 letters, digits and '-', with at least one letter, no '--', not starting or"
        " ending with '-'), got '80-90' (for a range, use endPort)"
    )
    assert error(cnp(port_rule({"port": "080"}))) == (
        f"{path}.port: expected a port number (0-65535) or a port name (an IANA service name: at"
        " most 15 letters, digits and '-', with at least one letter, no '--', not starting or"
        " ending with '-'), got '080' (no leading zeros: Cilium would read the number as octal)"
    )
    assert error(cnp(port_rule({"port": ""}))) == (
        f'{path}.port: must not be empty ("0" means every port)'
    )
    assert error(cnp(port_rule({"protocol": "TCP"}))) == (
        f'{path}.port: required field is missing ("0" means every port)'
    )
    assert error(cnp(port_rule({"port": "80", "endPort": 79}))) == (
        f"{path}.endPort: must be >= port (80)"
    )
    assert error(cnp(port_rule({"port": "http", "endPort": 90}))) == (
        f"{path}.endPort: only valid with a numeric port (port is the named port 'http')"
    )
    assert error(cnp(port_rule({"port": "80", "endPort": 65536}))) == (
        f"{path}.endPort: expected a port number 0-65535, got int 65536"
    )
    assert error(cnp(port_rule(*[{"port": str(p)} for p in range(41)]))) == (
        f"{CNP_WHERE}: spec.egress[0].toPorts[0].ports: too many ports (41; at most 40)"
    )


def test_l7_rules() -> None:
    http = {"rules": {"http": [{"method": "GET"}]}}
    ports = f"{CNP_WHERE}: spec.egress[0].toPorts[0]"
    assert error(cnp(port_rule({"port": "80", "endPort": 90, "protocol": "TCP"}, **http))) == (
        f"{ports}.ports[0].endPort: L7 rules do not support port ranges"
    )
    assert error(cnp(port_rule({"port": "http"}, **http))) == (
        f"{ports}.ports[0].protocol: L7 rules need protocol TCP (got ANY, the default); only DNS"
        " rules may use UDP or ANY"
    )
    assert error(cnp(port_rule({"port": "80", "protocol": "UDP"}, **http))) == (
        f"{ports}.ports[0].protocol: L7 rules need protocol TCP (got UDP); only DNS rules may use"
        " UDP or ANY"
    )
    assert error(cnp(port_rule({"port": "0", "protocol": "TCP"}, **http))) == (
        f"{ports}.ports[0].port: L7 rules cannot be used with port 0 (every port)"
    )
    both = {"rules": {"http": [{}], "dns": [{"matchName": "a.io"}]}}
    assert error(cnp(port_rule({"port": "53", "protocol": "TCP"}, **both))) == (
        f"{ports}.rules.dns: cannot be combined with http (one L7 protocol per port rule)"
    )
    assert error(cnp(port_rule(rules={"dns": [{"matchPattern": "*"}]}))) == (
        f"{ports}.rules.dns: DNS rules need a port (usually 53)"
    )
    assert error(cnp(port_rule({"port": "80", "protocol": "TCP"}, rules={"l7": [{"a": "b"}]}))) == (
        f"{ports}.rules.l7: needs l7proto (the L7 protocol the rules are for)"
    )
    assert error(
        cnp(port_rule({"port": "80", "protocol": "TCP"}, rules={"http": [{"path": "("}]}))
    ) == (
        f"{ports}.rules.http[0].path: not a valid regular expression: '(' (missing ), unterminated"
        " subpattern at position 0)"
    )


def test_dns_rules_are_egress_only() -> None:
    dns = port_rule({"port": "53", "protocol": "UDP"}, rules={"dns": [{"matchName": "a.io"}]})
    assert error(cnp(ingress=[dns])) == (
        f"{CNP_WHERE}: spec.ingress[0].toPorts[0].rules.dns: DNS rules are only allowed on egress"
    )


def test_host_policies_have_no_l7() -> None:
    http = port_rule({"port": "80", "protocol": "TCP"}, rules={"http": [{}]})
    assert error(ccnp(nodeSelector={}, ingress=[http])) == (
        f"{CCNP_WHERE}: spec.ingress[0].toPorts[0].rules: host policies (nodeSelector) support"
        " no L7 rules on ingress"
    )
    assert error(ccnp(nodeSelector={}, egress=[http])) == (
        f"{CCNP_WHERE}: spec.egress[0].toPorts[0].rules: host policies (nodeSelector) support"
        " only DNS L7 rules on egress"
    )
    dns = port_rule({"port": "53", "protocol": "UDP"}, rules={"dns": [{"matchPattern": "*"}]})
    assert parse_policy_text(yaml.safe_dump(ccnp(nodeSelector={}, egress=[dns])), FILE)


def test_server_names_and_listener() -> None:
    tcp = {"port": "443", "protocol": "TCP"}
    base = f"{CNP_WHERE}: spec.egress[0].toPorts[0]"
    assert (
        error(cnp(port_rule(tcp, serverNames=[""]))) == f"{base}.serverNames[0]: must not be empty"
    )
    assert error(cnp(port_rule(tcp, serverNames=["a.io"], rules={"http": [{}]}))) == (
        f"{base}.serverNames: with L7 rules, serverNames need terminatingTLS (the proxy must see"
        " the TLS handshake)"
    )
    listener = {"name": "l", "envoyConfig": {"name": "cec"}}
    assert error(cnp(ingress=[port_rule(tcp, listener=listener)])) == (
        f"{CNP_WHERE}: spec.ingress[0].toPorts[0].listener: a listener is only allowed on egress"
    )
    assert error(cnp(port_rule(tcp, listener=listener, rules={"http": [{}]}))) == (
        f"{base}.listener: cannot be combined with L7 rules"
    )


def test_icmp_types() -> None:
    fields = f"{CNP_WHERE}: spec.egress[0].icmps[0].fields"
    assert error(cnp({"icmps": [{"fields": [{"type": "PacketTooBig"}]}]})) == (
        f"{fields}[0].type: unknown IPv4 ICMP type 'PacketTooBig' (expected 0-255 or one of"
        " EchoReply, DestinationUnreachable, Redirect, Echo, EchoRequest, RouterAdvertisement,"
        " RouterSelection, RouterSolicitation, TimeExceeded, ParameterProblem, Timestamp,"
        " TimestampReply, Photuris, ExtendedEchoRequest, ExtendedEchoReply)"
    )
    assert error(cnp({"icmps": [{"fields": [{"type": 256}]}]})) == (
        f"{fields}[0].type: expected an ICMP type 0-255, got int 256"
    )
    assert error(cnp({"icmps": [{"fields": [{"type": 8, "family": "IPv5"}]}]})) == (
        f"{fields}[0].family: expected 'IPv4' or 'IPv6', got 'IPv5'"
    )
    assert error(cnp({"icmps": [{"fields": [{"type": 8}] * 41}]})) == (
        f"{fields}: too many ICMP types (41; at most 40)"
    )


def test_fqdn_selectors() -> None:
    fqdn = f"{CNP_WHERE}: spec.egress[0].toFQDNs[0]"
    assert error(cnp({"toFQDNs": [{"matchName": "a.io", "matchPattern": "*.io"}]})) == (
        f"{fqdn}.matchPattern: cannot be combined with matchName (give one of them per entry)"
    )
    assert error(cnp({"toFQDNs": [{}]})) == f"{fqdn}: expected matchName or matchPattern"
    assert error(cnp({"toFQDNs": [{"matchName": "a..io"}]})) == (
        f"{fqdn}.matchName: expected a DNS name (letters, digits, '-', '_' and '.' between"
        " non-empty parts, at most 255 characters), got 'a..io'"
    )
    assert error(cnp({"toFQDNs": [{"matchName": "*.io"}]})) == (
        f"{fqdn}.matchName: expected a DNS name (letters, digits, '-', '_' and '.' between"
        " non-empty parts, at most 255 characters), got '*.io'"
    )


def test_deny_rules_have_no_l7_and_no_fqdns() -> None:
    deny = port_rule({"port": "80", "protocol": "TCP"}, rules={"http": [{}]})
    assert error(cnp(ingressDeny=[deny])) == (
        f"{CNP_WHERE}: spec.ingressDeny[0].toPorts[0].rules: unknown field"
    )
    assert error(cnp(egressDeny=[{"toFQDNs": [{"matchName": "a.io"}]}])) == (
        f"{CNP_WHERE}: spec.egressDeny[0].toFQDNs: unknown field"
    )


def test_selectors() -> None:
    selector = f"{CNP_WHERE}: spec.egress[0].toEndpoints[0]"
    assert error(cnp({"toEndpoints": [{"matchLabels": {"a b": "x"}}]})) == (
        f"{selector}.matchLabels[\"a b\"]: invalid label key 'a b' (expected [source:]key, like"
        " app, k8s:app or k8s:app.kubernetes.io/name, checked as 'any.a b'): the name part"
        " 'any.a b' must be letters, digits, '-', '_' and '.', starting and ending with a letter"
        " or digit"
    )
    assert error(cnp({"toEndpoints": [{"matchLabels": {"app": "-x"}}]})) == (
        f"{selector}.matchLabels.app: a label value is empty or at most 63 characters of letters,"
        " digits, '-', '_' and '.', starting and ending with a letter or digit, got '-x'"
    )
    expression: dict[str, Any] = {"key": "app", "operator": "In"}
    assert error(cnp({"toEndpoints": [{"matchExpressions": [expression]}]})) == (
        f"{selector}.matchExpressions[0].values: must be given (at least one) when operator is In"
    )
    expression = {"key": "app", "operator": "Exists", "values": ["a"]}
    assert error(cnp({"toEndpoints": [{"matchExpressions": [expression]}]})) == (
        f"{selector}.matchExpressions[0].values: must be empty when operator is Exists"
    )
    assert error(cnp({"toEndpoints": [{"matchLabels": {"app": "a", "any:app": "b"}}]})) == (
        # (yaml.safe_dump sorts keys: any:app comes first)
        f"{selector}.matchLabels.app: the same key as 'any:app' (both are 'any:app')"
    )


def test_services() -> None:
    assert error(cnp({"toServices": [{}]})) == (
        f"{CNP_WHERE}: spec.egress[0].toServices[0]: expected k8sService or k8sServiceSelector"
    )
    assert error(cnp({"toServices": [{"k8sService": {"namespace": "x"}}]})) == (
        f"{CNP_WHERE}: spec.egress[0].toServices[0].k8sService.serviceName: required field is"
        " missing"
    )


def test_kafka() -> None:
    kafka = f"{CNP_WHERE}: spec.ingress[0].toPorts[0].rules.kafka[0]"

    def rule(*entries: dict[str, str]) -> dict[str, Any]:
        return cnp(
            ingress=[port_rule({"port": "9092", "protocol": "TCP"}, rules={"kafka": list(entries)})]
        )

    assert error(rule({"role": "produce", "apiKey": "fetch"})) == (
        f"{kafka}.apiKey: cannot be combined with role"
    )
    assert (
        error(rule({"role": "admin"})) == f"{kafka}.role: expected produce or consume, got 'admin'"
    )
    assert error(rule({"apiVersion": "x"})) == (
        f"{kafka}.apiVersion: expected a number 0-32767 (as a string), got 'x'"
    )


# --------------------------------------------------------------------------------------------
# Kubernetes NetworkPolicy


def test_network_policy_spec() -> None:
    doc = np()
    del doc["spec"]["podSelector"]
    assert error(doc) == f"{NP_WHERE}: spec.podSelector: required field is missing"
    assert error(np(policyTypes=["Ingress", "Egress", "Ingress"])) == (
        f"{NP_WHERE}: spec.policyTypes: may not list more than two policy types"
    )


def test_network_policy_peers() -> None:
    assert error(np(ingress=[{"from": [{}]}])) == (
        f"{NP_WHERE}: spec.ingress[0].from[0]: expected podSelector, namespaceSelector or ipBlock"
    )
    peer = {"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}}
    assert error(np(egress=[{"to": [peer]}])) == (
        f"{NP_WHERE}: spec.egress[0].to[0].ipBlock: cannot be combined with podSelector or"
        " namespaceSelector in the same peer (write separate peers)"
    )
    block = {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}
    assert error(np(egress=[{"to": [block]}])) == (
        f"{NP_WHERE}: spec.egress[0].to[0].ipBlock.except[0]: 10.0.0.0/8 must be a strict subset"
        " of cidr 10.0.0.0/8"
    )
    assert error(np(egress=[{"to": [{"ipBlock": {"cidr": "10.0.0.1"}}]}])) == (
        f"{NP_WHERE}: spec.egress[0].to[0].ipBlock.cidr: expected a CIDR (address/prefix length)"
        " like 10.0.0.0/8 or fd00::/64, got '10.0.0.1' (no prefix length)"
    )
    selector = {"podSelector": {"matchLabels": {"k8s:app": "x"}}}
    assert error(np(ingress=[{"from": [selector]}])) == (
        f'{NP_WHERE}: spec.ingress[0].from[0].podSelector.matchLabels["k8s:app"]: invalid label'
        " key 'k8s:app': the name part 'k8s:app' must be letters, digits, '-', '_' and '.',"
        " starting and ending with a letter or digit"
    )


def test_network_policy_ports() -> None:
    port = f"{NP_WHERE}: spec.ingress[0].ports[0]"

    def rule(**fields: Any) -> dict[str, Any]:
        return np(ingress=[{"ports": [fields]}])

    assert error(rule(port=0)) == f"{port}.port: expected a port number 1-65535, got int 0"
    assert error(rule(port="80")) == (
        f"{port}.port: expected a port number (1-65535) or a port name (at most 15 lowercase"
        " letters, digits and '-', with at least one letter, no '--', not starting or ending"
        " with '-'), got '80'"
    )
    assert error(rule(port="http", endPort=90)) == (
        f"{port}.endPort: only valid with a numeric port (port is the named port 'http')"
    )
    assert error(rule(port=90, endPort=80)) == f"{port}.endPort: must be >= port (90)"
    assert error(rule(endPort=80)) == f"{port}.endPort: only valid with port"
    assert error(rule(port=80, protocol="ICMP")) == (
        f"{port}.protocol: expected 'TCP', 'UDP' or 'SCTP', got 'ICMP'"
    )


def test_inputs_are_not_modified() -> None:
    doc = cnp({"toEndpoints": [{"matchLabels": {"app": "db"}}]})
    before = copy.deepcopy(doc)
    parse_policy_documents([(1, doc)], FILE)
    assert doc == before
