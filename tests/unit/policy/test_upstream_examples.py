"""Upstream policy examples, verbatim, parse into the normalized model Cilium would build.

Sources: cilium/cilium ``examples/policies/**`` (path@commit noted per example), the Cilium docs,
kubernetes/website ``content/en/examples/service/networking/*`` and the
ahmetb/kubernetes-network-policy-recipes recipes. A few upstream examples are invalid for the
API server (a top-level ``description``, operator ``in``, ``HTTP`` instead of ``http``); they are
at the end, with the error each gets.
"""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from ciliary.policy.api import (
    CIDRRule,
    FQDNSelector,
    HTTPRule,
    ICMPField,
    KafkaRule,
    L7Rules,
    Label,
    PeerRule,
    Policy,
    PolicyError,
    PortProtocol,
    PortRule,
    Requirement,
    Rule,
    Selector,
    Service,
    parse_policy_text,
)

FILE = "upstream.yaml"
NS = "k8s:io.kubernetes.pod.namespace"
NS_EXISTS = Requirement(NS, "Exists")


def sel(labels: dict[str, str] | None = None, *expressions: Requirement) -> Selector:
    return Selector(tuple(sorted((labels or {}).items())), tuple(expressions))


def pp(port: int | str, protocol: str = "TCP", end: int | None = None) -> PortProtocol:
    if isinstance(port, str):
        return PortProtocol(port=None, name=port, protocol=protocol)  # type: ignore[arg-type]
    return PortProtocol(port=port, end_port=end, protocol=protocol)  # type: ignore[arg-type]


def ports(*protocols: PortProtocol, l7: L7Rules | None = None) -> PortRule:
    return PortRule(ports=protocols, l7=l7)


def one(text: str) -> Policy:
    policies = parse_policy_text(text, FILE)
    assert len(policies) == 1
    return policies[0]


def only_rule(text: str) -> Rule:
    policy = one(text)
    assert len(policy.rules) == 1
    return policy.rules[0]


def cnp_labels(name: str, namespace: str = "default") -> tuple[Label, ...]:
    return (
        Label("k8s", "io.cilium.k8s.policy.derived-from", "CiliumNetworkPolicy"),
        Label("k8s", "io.cilium.k8s.policy.name", name),
        Label("k8s", "io.cilium.k8s.policy.namespace", namespace),
    )


# --------------------------------------------------------------------------------------------
# CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy


def test_l3_labels_based() -> None:
    # examples/policies/l3/simple/l3.yaml@e0cc421a
    policy = one(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "l3-rule"
spec:
  endpointSelector:
    matchLabels:
      role: backend
  ingress:
  - fromEndpoints:
    - matchLabels:
        role: frontend
"""
    )
    assert policy.kind == "CiliumNetworkPolicy"
    assert (policy.namespace, policy.name) == ("default", "l3-rule")
    assert policy.key == "CiliumNetworkPolicy/default/l3-rule"
    assert policy.source == f"{FILE}:1"
    assert policy.rules == (
        Rule(
            index=0,
            path="spec",
            endpoint_selector=sel({"any:role": "backend", NS: "default"}),
            ingress=(PeerRule(0, endpoints=(sel({"any:role": "frontend", NS: "default"}),)),),
            labels=cnp_labels("l3-rule"),
        ),
    )
    rule = policy.rules[0]
    assert rule.default_deny_ingress and not rule.default_deny_egress
    assert rule.subject.matches(["k8s:role=backend", f"{NS}=default"])
    assert not rule.subject.matches(["k8s:role=backend", f"{NS}=other"])


def test_from_entities_world() -> None:
    # examples/policies/l3/entities/world.yaml@94b67c85
    rule = only_rule(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "from-world-to-role-public"
spec:
  endpointSelector:
    matchLabels:
      role: public
  ingress:
    - fromEntities:
      - world
"""
    )
    assert rule.ingress == (PeerRule(0, entities=("world",)),)


def test_cidr_and_cidr_set_with_except() -> None:
    # examples/policies/l3/cidr/cidr.yaml@25972d8e
    rule = only_rule(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "cidr-rule"
spec:
  endpointSelector:
    matchLabels:
      app: myService
  egress:
  - toCIDR:
    - 20.1.1.1/32
  - toCIDRSet:
    - cidr: 10.0.0.0/8
      except:
      - 10.96.0.0/12
"""
    )
    assert rule.egress == (
        PeerRule(0, cidrs=(CIDRRule(ip_network("20.1.1.1/32")),)),
        PeerRule(1, cidrs=(CIDRRule(ip_network("10.0.0.0/8"), (ip_network("10.96.0.0/12"),)),)),
    )
    assert rule.default_deny_egress and not rule.default_deny_ingress


def test_egress_deny() -> None:
    # examples/policies/l3/egress-deny/egress-deny.yaml@669f18e3
    rule = only_rule(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "deny-egress-example"
spec:
  endpointSelector:
    matchLabels:
      role: frontend
  egress:
  - toEntities:
    - all
  egressDeny:
  - toEndpoints:
    - matchLabels:
        role: backend
"""
    )
    assert rule.egress == (PeerRule(0, entities=("all",)),)
    assert rule.egress_deny == (
        PeerRule(0, endpoints=(sel({"any:role": "backend", NS: "default"}),)),
    )


def test_from_requires_in_specs_with_description() -> None:
    # examples/policies/l3/requires/requires.yaml@21d690e1
    policy = one(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "requires-rule"
specs:
  - description: "For endpoints with env=prod, only allow if source also has label env=prod"
    endpointSelector:
      matchLabels:
        env: prod
    ingress:
    - fromRequires:
      - matchLabels:
          env: prod
"""
    )
    (rule,) = policy.rules
    assert rule.path == "specs[0]"
    assert rule.description.startswith("For endpoints with env=prod")
    assert rule.ingress == (PeerRule(0, requires=(sel({"any:env": "prod", NS: "default"}),)),)
    assert rule.ingress[0].l3_wildcard


def test_l4_port_range() -> None:
    # examples/policies/l4/l4_port_range.yaml@5954beaa
    rule = only_rule(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "l4-port-range-rule"
spec:
  endpointSelector:
    matchLabels:
      app: myService
  egress:
    - toPorts:
      - ports:
        - port: "80"
          endPort: 444
          protocol: TCP
"""
    )
    assert rule.egress == (PeerRule(0, ports=(ports(pp(80, end=444)),)),)
    assert rule.egress[0].l3_wildcard


def test_l4_single_port() -> None:
    # examples/policies/l4/l4.yaml@0b47e871
    rule = only_rule(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "l4-rule"
spec:
  endpointSelector:
    matchLabels:
      app: myService
  egress:
    - toPorts:
      - ports:
        - port: "80"
          protocol: TCP
"""
    )
    assert rule.egress == (PeerRule(0, ports=(ports(pp(80)),)),)


def test_icmp_numeric_and_named() -> None:
    # examples/policies/l4/icmp.yaml@27182408
    rule = only_rule(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "icmp-rule"
spec:
  endpointSelector:
    matchLabels:
      app: myService
  egress:
  - icmps:
    - fields:
      - type: 8
        family: IPv4
      - type: EchoRequest
        family: IPv6
"""
    )
    assert rule.egress == (PeerRule(0, icmps=(ICMPField("IPv4", 8), ICMPField("IPv6", 128))),)


def test_http_l7() -> None:
    # examples/policies/l7/http/http.yaml@669f18e3
    rule = only_rule(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "l7-rule"
spec:
  endpointSelector:
    matchLabels:
      app: myService
  ingress:
  - toPorts:
    - ports:
      - port: '80'
        protocol: TCP
      rules:
        http:
        - method: GET
          path: "/path1$"
        - method: PUT
          path: "/path2$"
          headers:
          - 'X-My-Header: true'
"""
    )
    http = L7Rules(
        kind="http",
        http=(
            HTTPRule(method="GET", path="/path1$"),
            HTTPRule(method="PUT", path="/path2$", headers=("X-My-Header: true",)),
        ),
    )
    assert rule.ingress == (PeerRule(0, ports=(ports(pp(80), l7=http),)),)
    assert rule.ingress[0].l7_rules == (http,)


def test_dns_l7_and_to_fqdns() -> None:
    # examples/policies/l7/dns/dns.yaml@21d690e1
    rule = only_rule(
        """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: "tofqdn-dns-visibility"
spec:
  endpointSelector:
    matchLabels:
      any:org: alliance
  egress:
  - toEndpoints:
    - matchLabels:
       "k8s:io.kubernetes.pod.namespace": kube-system
       "k8s:k8s-app": kube-dns
    toPorts:
      - ports:
         - port: "53"
           protocol: ANY
        rules:
          dns:
            - matchName: "cilium.io"
            - matchPattern: "*.cilium.io"
            - matchPattern: "*.api.cilium.io"

  - toFQDNs:
      - matchName: "cilium.io"
      - matchName: "sub.cilium.io"
      - matchName: "service1.api.cilium.io"
      - matchPattern: "special*service.api.cilium.io"
    toPorts:
      - ports:
         - port: "80"
           protocol: TCP
"""
    )
    assert rule.endpoint_selector == sel({"any:org": "alliance", NS: "default"})
    dns = L7Rules(
        kind="dns",
        dns=(
            FQDNSelector(match_name="cilium.io"),
            FQDNSelector(match_pattern="*.cilium.io"),
            FQDNSelector(match_pattern="*.api.cilium.io"),
        ),
    )
    assert rule.egress == (
        PeerRule(
            0,
            # the selector names its namespace, so the policy namespace is not added
            endpoints=(sel({NS: "kube-system", "k8s:k8s-app": "kube-dns"}),),
            ports=(ports(pp(53, "ANY"), l7=dns),),
        ),
        PeerRule(
            1,
            fqdns=(
                FQDNSelector(match_name="cilium.io"),
                FQDNSelector(match_name="sub.cilium.io"),
                FQDNSelector(match_name="service1.api.cilium.io"),
                FQDNSelector(match_pattern="special*service.api.cilium.io"),
            ),
            ports=(ports(pp(80)),),
        ),
    )


def test_to_fqdns_with_dns_endpoint_rule() -> None:
    # examples/policies/l3/fqdn/fqdn.yaml@1921188b
    rule = only_rule(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "to-fqdn"
spec:
  endpointSelector:
    matchLabels:
      app: test-app
  egress:
    - toEndpoints:
      - matchLabels:
          "k8s:io.kubernetes.pod.namespace": kube-system
          "k8s:k8s-app": kube-dns
    - toFQDNs:
        - matchName: "my-remote-service.com"
"""
    )
    assert rule.egress[1] == PeerRule(1, fqdns=(FQDNSelector(match_name="my-remote-service.com"),))


def test_ccnp_node_selector_host_policy() -> None:
    # examples/policies/host/demo-host-policy.yaml@21d690e1
    policy = one(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: "demo-host-policy"
spec:
  description: ""
  nodeSelector:
    matchLabels:
      node-access: ssh
  ingress:
  - fromEntities:
    - cluster
  - toPorts:
    - ports:
      - port: "22"
        protocol: TCP
  - icmps:
    - fields:
      - type: EchoRequest
        family: IPv4
"""
    )
    assert policy.namespace is None
    assert policy.key == "CiliumClusterwideNetworkPolicy/demo-host-policy"
    (rule,) = policy.rules
    assert rule.endpoint_selector is None
    assert rule.node_selector == sel({"any:node-access": "ssh"})  # nodes are not namespaced
    assert rule.is_host_policy
    assert rule.ingress == (
        PeerRule(0, entities=("cluster",)),
        PeerRule(1, ports=(ports(pp(22)),)),
        PeerRule(2, icmps=(ICMPField("IPv4", 8),)),
    )
    assert rule.labels == (
        Label("k8s", "io.cilium.k8s.policy.derived-from", "CiliumClusterwideNetworkPolicy"),
        Label("k8s", "io.cilium.k8s.policy.name", "demo-host-policy"),
    )


def test_to_entities_host() -> None:
    # examples/policies/l3/entities/host.yaml@25972d8e
    rule = only_rule(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "dev-to-host"
spec:
  endpointSelector:
    matchLabels:
      env: dev
  egress:
    - toEntities:
      - host
"""
    )
    assert rule.egress == (PeerRule(0, entities=("host",)),)


def test_ccnp_ingress_deny_world_with_empty_endpoint_selector() -> None:
    # examples/policies/l3/entities/from_world_deny.yaml@e0cc421a
    rule = only_rule(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: "external-lockdown"
spec:
  endpointSelector: {}
  ingressDeny:
  - fromEntities:
    - "world"
  ingress:
  - fromEntities:
    - "all"
"""
    )
    assert rule.endpoint_selector == Selector()  # cluster-wide: not scoped, selects all
    assert rule.ingress_deny == (PeerRule(0, entities=("world",)),)
    assert rule.ingress == (PeerRule(0, entities=("all",)),)


def test_to_services_by_name() -> None:
    # examples/policies/l3/service/service.yaml@21d690e1
    rule = only_rule(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "service-rule"
spec:
  endpointSelector:
    matchLabels:
      id: app2
  egress:
  - toServices:
    - k8sService:
        serviceName: myservice
        namespace: default
"""
    )
    assert rule.egress == (PeerRule(0, services=(Service(name="myservice", namespace="default"),)),)


def test_to_services_by_labels() -> None:
    # examples/policies/l3/service/service-labels.yaml@25972d8e
    rule = only_rule(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "service-labels-rule"
spec:
  endpointSelector:
    matchLabels:
      id: app2
  egress:
  - toServices:
    - k8sServiceSelector:
        selector:
          matchLabels:
            head: none
"""
    )
    assert rule.egress == (PeerRule(0, services=(Service(selector=sel({"any:head": "none"})),)),)


def test_from_endpoints_in_another_namespace() -> None:
    # examples/policies/kubernetes/namespace/namespace-policy.yaml@25972d8e
    policy = one(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "k8s-expose-across-namespace"
  namespace: ns1
spec:
  endpointSelector:
    matchLabels:
      name: leia
  ingress:
  - fromEndpoints:
    - matchLabels:
        k8s:io.kubernetes.pod.namespace: ns2
        name: luke
"""
    )
    (rule,) = policy.rules
    assert policy.namespace == "ns1"
    assert rule.endpoint_selector == sel({"any:name": "leia", NS: "ns1"})
    assert rule.ingress == (PeerRule(0, endpoints=(sel({"any:name": "luke", NS: "ns2"}),)),)
    assert rule.ingress[0].endpoints[0].matches([f"{NS}=ns2", "k8s:name=luke"])


def test_egress_default_deny() -> None:
    # examples/policies/l3/egress-default-deny/egress-default-deny.yaml@e0cc421a
    rule = only_rule(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "deny-all-egress"
spec:
  endpointSelector:
    matchLabels:
      role: restricted
  egress:
  - {}
"""
    )
    assert rule.egress == (PeerRule(0),)
    assert rule.egress[0].l3_wildcard and not rule.egress[0].ports
    assert rule.default_deny_egress


def test_kafka_l7() -> None:
    # examples/policies/l7/kafka/kafka.yaml@ed49278a
    rule = only_rule(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "rule1"
spec:
  description: "enable empire-hq to produce to empire-announce and deathstar-plans"
  endpointSelector:
    matchLabels:
      app: kafka
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: empire-hq
    toPorts:
    - ports:
      - port: "9092"
        protocol: TCP
      rules:
        kafka:
        - apiKey: "apiversions"
        - apiKey: "metadata"
        - apiKey: "produce"
          topic: "deathstar-plans"
        - apiKey: "produce"
          topic: "empire-announce"
"""
    )
    kafka = L7Rules(
        kind="kafka",
        kafka=(
            KafkaRule(api_key="apiversions"),
            KafkaRule(api_key="metadata"),
            KafkaRule(api_key="produce", topic="deathstar-plans"),
            KafkaRule(api_key="produce", topic="empire-announce"),
        ),
    )
    assert rule.ingress == (
        PeerRule(
            0,
            endpoints=(sel({"any:app": "empire-hq", NS: "default"}),),
            ports=(ports(pp(9092), l7=kafka),),
        ),
    )


def test_namespace_labels_keys() -> None:
    # examples/policies/kubernetes/namespace/namespace-labels-policy.yaml@a9700377
    rule = only_rule(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "alliance-only"
spec:
  endpointSelector:
    matchLabels:
      name: rebel-base
  ingress:
  - fromEndpoints:
    - matchLabels:
        io.cilium.k8s.namespace.labels.faction: "alliance"
  egress:
  - toEndpoints:
    - matchLabels:
        io.cilium.k8s.namespace.labels.faction: "alliance"
"""
    )
    # Not a namespace key: Cilium still scopes the peer to the policy namespace ("namespace
    # labels ... will be ignored in CiliumNetworkPolicy resources", security/policy/kubernetes.rst)
    peer = sel({"any:io.cilium.k8s.namespace.labels.faction": "alliance", NS: "default"})
    assert rule.ingress == (PeerRule(0, endpoints=(peer,)),)
    assert rule.egress == (PeerRule(0, endpoints=(peer,)),)


def test_from_init_entity_and_l4_only_rule() -> None:
    # examples/policies/l4/from_init.yaml@25972d8e
    rule = only_rule(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "from-init"
spec:
  endpointSelector:
    matchLabels:
      app: myService
  ingress:
    - fromEntities:
      - init
    - toPorts:
      - ports:
        - port: "53"
          protocol: UDP
"""
    )
    assert rule.ingress == (
        PeerRule(0, entities=("init",)),
        PeerRule(1, ports=(ports(pp(53, "UDP")),)),
    )


def test_ingress_allow_all_empty_from_endpoints() -> None:
    # examples/policies/l3/ingress-allow-all/ingress-allow-all.yaml@21d690e1
    rule = only_rule(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "allow-all-to-victim"
spec:
  endpointSelector:
    matchLabels:
      role: victim
  ingress:
  - fromEndpoints:
    - {}
"""
    )
    # {} becomes "every pod of the policy namespace"
    assert rule.ingress == (PeerRule(0, endpoints=(sel({NS: "default"}),)),)


def test_server_names() -> None:
    # examples/policies/l4/l4_sni.yaml@a9700377
    rule = only_rule(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "l4-sni-rule"
spec:
  endpointSelector:
    matchLabels:
      app: myService
  egress:
  - toPorts:
    - ports:
      - port: "443"
        protocol: TCP
      serverNames:
      - one.one.one.one
"""
    )
    assert rule.egress == (
        PeerRule(0, ports=(PortRule(ports=(pp(443),), server_names=("one.one.one.one",)),)),
    )


def test_empty_endpoint_selector_is_the_whole_namespace() -> None:
    # examples/policies/kubernetes/namespace/kubedns-policy.yaml@48bc5acb
    rule = only_rule(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "allow-to-kubedns"
spec:
  endpointSelector:
    {}
  egress:
  - toEndpoints:
    - matchLabels:
        k8s:io.kubernetes.pod.namespace: kube-system
        k8s-app: kube-dns
    toPorts:
    - ports:
      - port: '53'
        protocol: UDP
"""
    )
    assert rule.endpoint_selector == sel({NS: "default"})
    assert rule.egress == (
        PeerRule(
            0,
            endpoints=(sel({NS: "kube-system", "any:k8s-app": "kube-dns"}),),
            ports=(ports(pp(53, "UDP")),),
        ),
    )


def test_service_account_labels() -> None:
    # examples/policies/kubernetes/serviceaccount/serviceaccount-policy.yaml@1abdf6cf
    rule = only_rule(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "k8s-svc-account"
spec:
  endpointSelector:
    matchLabels:
      io.cilium.k8s.policy.serviceaccount: leia
  ingress:
  - fromEndpoints:
    - matchLabels:
        io.cilium.k8s.policy.serviceaccount: luke
"""
    )
    assert rule.endpoint_selector == sel(
        {"any:io.cilium.k8s.policy.serviceaccount": "leia", NS: "default"}
    )


def test_to_entities_kube_apiserver() -> None:
    # examples/policies/l3/entities/apiserver.yaml@669f18e3
    rule = only_rule(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "dev-to-kube-apiserver"
spec:
  endpointSelector:
    matchLabels:
      env: dev
  egress:
    - toEntities:
      - kube-apiserver
"""
    )
    assert rule.egress == (PeerRule(0, entities=("kube-apiserver",)),)


def test_from_entities_host_and_remote_node() -> None:
    # examples/policies/l3/entities/nodes.yaml@e25e6405
    rule = only_rule(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "to-dev-from-nodes-in-cluster"
spec:
  endpointSelector:
    matchLabels:
      env: dev
  ingress:
    - fromEntities:
      - host
      - remote-node
"""
    )
    assert rule.ingress == (PeerRule(0, entities=("host", "remote-node")),)


def test_ccnp_default_deny_from_the_docs() -> None:
    # docs.cilium.io/en/latest/network/servicemesh/default-deny-ingress-policy/
    # (examples/kubernetes/servicemesh/policy/default-deny.yaml)
    rule = only_rule(
        """\
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: "default-deny"
spec:
  description: "Block all the traffic (except DNS) by default"
  egress:
  - toEndpoints:
    - matchLabels:
        io.kubernetes.pod.namespace: kube-system
        k8s-app: kube-dns
    toPorts:
    - ports:
      - port: '53'
        protocol: UDP
      rules:
        dns:
        - matchPattern: '*'
  endpointSelector:
    matchExpressions:
    - key: io.kubernetes.pod.namespace
      operator: NotIn
      values:
      - kube-system
"""
    )
    assert rule.endpoint_selector == sel(
        {}, Requirement("any:io.kubernetes.pod.namespace", "NotIn", ("kube-system",))
    )
    # The peer names a namespace (any: source), so no "namespace Exists" is added.
    assert rule.egress == (
        PeerRule(
            0,
            endpoints=(
                sel({"any:io.kubernetes.pod.namespace": "kube-system", "any:k8s-app": "kube-dns"}),
            ),
            ports=(
                ports(
                    pp(53, "UDP"),
                    l7=L7Rules(kind="dns", dns=(FQDNSelector(match_pattern="*"),)),
                ),
            ),
        ),
    )
    assert rule.endpoint_selector.matches([f"{NS}=shop"])
    assert not rule.endpoint_selector.matches([f"{NS}=kube-system"])


def test_ccnp_peer_without_namespace_selects_pods_of_every_namespace() -> None:
    # examples/policies/kubernetes/clusterwide/wildcard-from-endpoints.yaml@1f933476, with its
    # top-level description moved into spec (see test_top_level_description_is_rejected)
    rule = only_rule(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: "wildcard-from-endpoints"
spec:
  description: "Policy for ingress allow to kube-dns from all Cilium managed endpoints in
    the cluster"
  endpointSelector:
    matchLabels:
      k8s:io.kubernetes.pod.namespace: kube-system
      k8s-app: kube-dns
  ingress:
  - fromEndpoints:
    - {}
    toPorts:
    - ports:
      - port: "53"
        protocol: UDP
"""
    )
    assert rule.description.endswith("endpoints in the cluster")
    assert rule.endpoint_selector == sel({NS: "kube-system", "any:k8s-app": "kube-dns"})
    assert rule.ingress == (
        PeerRule(0, endpoints=(sel({}, NS_EXISTS),), ports=(ports(pp(53, "UDP")),)),
    )
    assert rule.ingress[0].endpoints[0].matches([f"{NS}=anything"])
    assert not rule.ingress[0].endpoints[0].matches(["reserved:world"])


def test_ccnp_selects_across_namespaces() -> None:
    # examples/policies/kubernetes/clusterwide/clusterscope-policy.yaml@669f18e3
    rule = only_rule(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: "clusterwide-policy-example"
spec:
  description: "Policy for selective ingress allow to a pod from only a pod with given label"
  endpointSelector:
    matchLabels:
      name: leia
  ingress:
  - fromEndpoints:
    - matchLabels:
        name: luke
"""
    )
    assert rule.endpoint_selector == sel({"any:name": "leia"})
    assert rule.ingress == (PeerRule(0, endpoints=(sel({"any:name": "luke"}, NS_EXISTS),)),)


def test_ccnp_reserved_subject() -> None:
    # examples/policies/kubernetes/clusterwide/health.yaml@54768890
    rule = only_rule(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: "cilium-health-checks"
spec:
  endpointSelector:
    matchLabels:
      'reserved:health': ''
  ingress:
    - fromEntities:
      - remote-node
  egress:
    - toEntities:
      - remote-node
"""
    )
    assert rule.endpoint_selector == sel({"reserved:health": ""})
    assert rule.endpoint_selector.matches(["reserved:health"])
    assert rule.ingress == (PeerRule(0, entities=("remote-node",)),)
    assert rule.egress == (PeerRule(0, entities=("remote-node",)),)


def test_isolate_namespaces_two_documents() -> None:
    # examples/policies/kubernetes/namespace/isolate-namespaces.yaml@97ee46be
    policies = parse_policy_text(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "isolate-ns1"
  namespace: ns1
spec:
  endpointSelector:
    matchLabels:
      {}
  ingress:
  - fromEndpoints:
    - matchLabels:
        {}
---
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "isolate-ns1"
  namespace: ns2
spec:
  endpointSelector:
    matchLabels:
      {}
  ingress:
  - fromEndpoints:
    - matchLabels:
        {}
""",
        FILE,
    )
    assert [p.key for p in policies] == [
        "CiliumNetworkPolicy/ns1/isolate-ns1",
        "CiliumNetworkPolicy/ns2/isolate-ns1",
    ]
    for policy in policies:
        (rule,) = policy.rules
        same_namespace = sel({NS: policy.namespace or ""})
        assert rule.endpoint_selector == same_namespace
        assert rule.ingress == (PeerRule(0, endpoints=(same_namespace,)),)


# --------------------------------------------------------------------------------------------
# networking.k8s.io/v1 NetworkPolicy


def np_labels(name: str, namespace: str = "default") -> tuple[Label, ...]:
    return (
        Label("k8s", "io.cilium.k8s.policy.derived-from", "NetworkPolicy"),
        Label("k8s", "io.cilium.k8s.policy.name", name),
        Label("k8s", "io.cilium.k8s.policy.namespace", namespace),
    )


def test_k8s_default_deny_ingress() -> None:
    # kubernetes/website content/en/examples/service/networking/
    # network-policy-default-deny-ingress.yaml@57121873
    policy = one(
        """\
---
{
  apiVersion: "networking.k8s.io/v1",
  kind: "NetworkPolicy",
  metadata: {
    name: "default-deny-ingress",
  },
  spec: {
    podSelector: {},
    policyTypes: [
      "Ingress",
    ],
  },
}
"""
    )
    assert policy.key == "NetworkPolicy/default/default-deny-ingress"
    assert policy.rules == (
        Rule(
            index=0,
            path="spec",
            endpoint_selector=sel({NS: "default"}),
            ingress=(PeerRule(0),),
            labels=np_labels("default-deny-ingress"),
        ),
    )
    assert policy.rules[0].default_deny_ingress and not policy.rules[0].default_deny_egress


def test_k8s_default_deny_all() -> None:
    # .../network-policy-default-deny-all.yaml@7a090ad7
    rule = only_rule(
        """\
---
{
  apiVersion: "networking.k8s.io/v1",
  kind: "NetworkPolicy",
  metadata: {
    name: "default-deny-all",
  },
  spec: {
    podSelector: {},
    policyTypes: [
      "Ingress",
      "Egress",
    ],
  },
}
"""
    )
    assert (rule.ingress, rule.egress) == ((PeerRule(0),), (PeerRule(0),))
    assert rule.default_deny_ingress and rule.default_deny_egress


def test_k8s_default_deny_egress_only() -> None:
    # .../network-policy-default-deny-egress.yaml@7a090ad7
    rule = only_rule(
        """\
---
{
  apiVersion: "networking.k8s.io/v1",
  kind: "NetworkPolicy",
  metadata: {
    name: "default-deny-egress",
  },
  spec: {
    podSelector: {},
    policyTypes: [
      "Egress",
    ],
  },
}
"""
    )
    assert (rule.ingress, rule.egress) == ((), (PeerRule(0),))
    assert not rule.default_deny_ingress and rule.default_deny_egress


def test_k8s_allow_all_ingress() -> None:
    # .../network-policy-allow-all-ingress.yaml@7a090ad7
    rule = only_rule(
        """\
---
{
  apiVersion: "networking.k8s.io/v1",
  kind: "NetworkPolicy",
  metadata: {
    name: "allow-all-ingress",
  },
  spec: {
    podSelector: {},
    ingress: [{}],
    policyTypes: [
      "Ingress",
    ],
  },
}
"""
    )
    # An entry without peers allows every peer: the wildcard selector, not namespace-scoped.
    assert rule.ingress == (PeerRule(0, endpoints=(Selector(),)),)
    assert rule.ingress[0].endpoints[0].matches(["reserved:world"])


def test_k8s_end_port_egress_only() -> None:
    # .../networkpolicy-multiport-egress.yaml@32b80366
    rule = only_rule(
        """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: multi-port-egress
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
  - Egress
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 32000
      endPort: 32768

"""
    )
    assert rule.endpoint_selector == sel({"k8s:role": "db", NS: "default"})
    assert rule.ingress == ()
    assert rule.egress == (
        PeerRule(
            0,
            cidrs=(CIDRRule(ip_network("10.0.0.0/24")),),
            ports=(ports(pp(32000, end=32768)),),
        ),
    )


def test_k8s_ip_block_with_except_namespace_and_pod_peers() -> None:
    # .../networkpolicy.yaml@3842a284
    rule = only_rule(
        """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-network-policy
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
    - namespaceSelector:
        matchLabels:
          project: myproject
    - podSelector:
        matchLabels:
          role: frontend
    ports:
    - protocol: TCP
      port: 6379
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 5978

"""
    )
    redis = (ports(pp(6379)),)
    assert rule.ingress == (
        PeerRule(
            0,
            cidrs=(CIDRRule(ip_network("172.17.0.0/16"), (ip_network("172.17.1.0/24"),)),),
            ports=redis,
        ),
        PeerRule(
            1,
            endpoints=(sel({"k8s:io.cilium.k8s.namespace.labels.project": "myproject"}),),
            ports=redis,
        ),
        PeerRule(2, endpoints=(sel({"k8s:role": "frontend", NS: "default"}),), ports=redis),
    )
    assert rule.egress == (
        PeerRule(0, cidrs=(CIDRRule(ip_network("10.0.0.0/24")),), ports=(ports(pp(5978)),)),
    )


def test_k8s_allow_same_namespace_with_null_match_labels() -> None:
    # ahmetb/kubernetes-network-policy-recipes 04-deny-traffic-from-other-namespaces.md
    rule = only_rule(
        """\
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata:
  namespace: secondary
  name: deny-from-other-namespaces
spec:
  podSelector:
    matchLabels:
  ingress:
  - from:
    - podSelector: {}
"""
    )
    assert rule.endpoint_selector == sel({NS: "secondary"})
    assert rule.ingress == (PeerRule(0, endpoints=(sel({NS: "secondary"}),)),)
    assert rule.egress == ()


def test_k8s_allow_from_namespace_by_label() -> None:
    # ahmetb/kubernetes-network-policy-recipes 06-allow-traffic-from-a-namespace.md
    rule = only_rule(
        """\
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata:
  name: web-allow-prod
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          purpose: production
"""
    )
    peer = sel({"k8s:io.cilium.k8s.namespace.labels.purpose": "production"})
    assert rule.ingress == (PeerRule(0, endpoints=(peer,)),)
    assert peer.matches(
        [f"{NS}=prod", "k8s:io.cilium.k8s.namespace.labels.purpose=production", "k8s:app=x"]
    )


def test_k8s_namespace_and_pod_selector_are_anded() -> None:
    # ahmetb/kubernetes-network-policy-recipes
    # 07-allow-traffic-from-some-pods-in-another-namespace.md
    rule = only_rule(
        """\
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata:
  name: web-allow-all-ns-monitoring
  namespace: default
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
    - from:
      - namespaceSelector:     # chooses all pods in namespaces labelled with team=operations
          matchLabels:
            team: operations
        podSelector:           # chooses pods with type=monitoring
          matchLabels:
            type: monitoring
"""
    )
    assert rule.ingress == (
        PeerRule(
            0,
            endpoints=(
                sel(
                    {
                        "k8s:io.cilium.k8s.namespace.labels.team": "operations",
                        "k8s:type": "monitoring",
                    }
                ),
            ),
        ),
    )


def test_k8s_port_only_rule_from_pods() -> None:
    # ahmetb/kubernetes-network-policy-recipes 09-allow-traffic-only-to-a-port.md
    rule = only_rule(
        """\
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata:
  name: api-allow-5000
spec:
  podSelector:
    matchLabels:
      app: apiserver
  ingress:
  - ports:
    - port: 5000
    from:
    - podSelector:
        matchLabels:
          role: monitoring
"""
    )
    assert rule.ingress == (
        PeerRule(
            0,
            endpoints=(sel({"k8s:role": "monitoring", NS: "default"}),),
            ports=(ports(pp(5000)),),
        ),
    )


def test_k8s_named_port_and_empty_namespace_selector() -> None:
    # The named-port form of recipe 09, with a namespaceSelector {} (every namespace) peer.
    rule = only_rule(
        """\
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata:
  name: api-allow-named
  namespace: shop
spec:
  podSelector:
    matchLabels:
      app: apiserver
  ingress:
  - ports:
    - port: api-port
    from:
    - namespaceSelector: {}
"""
    )
    assert rule.ingress == (
        PeerRule(0, endpoints=(sel({}, NS_EXISTS),), ports=(ports(pp("api-port")),)),
    )


def test_multi_document_file_keeps_order() -> None:
    policies = parse_policy_text(
        """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a, namespace: x}
spec: {podSelector: {}}
---
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a, namespace: x, uid: 1234, resourceVersion: "7", creationTimestamp: 2024-01-01}
spec: {endpointSelector: {}, ingress: [{}]}
status: {conditions: []}
""",
        FILE,
    )
    assert [(p.kind, p.source) for p in policies] == [
        ("NetworkPolicy", f"{FILE}:1"),
        ("CiliumNetworkPolicy", f"{FILE}:3"),
    ]


# --------------------------------------------------------------------------------------------
# Upstream examples the API server would not accept either


def error(text: str) -> str:
    with pytest.raises(PolicyError) as info:
        parse_policy_text(text, FILE)
    assert len(info.value.problems) >= 1
    return str(info.value)


def test_top_level_description_is_rejected() -> None:
    # examples/policies/kubernetes/clusterwide/wildcard-from-endpoints.yaml@1f933476
    assert error(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumClusterwideNetworkPolicy
description: "Policy for ingress allow to kube-dns from all Cilium managed endpoints in the cluster"
metadata:
  name: "wildcard-from-endpoints"
spec:
  endpointSelector:
    matchLabels:
      k8s:io.kubernetes.pod.namespace: kube-system
      k8s-app: kube-dns
  ingress:
  - fromEndpoints:
    - {}
    toPorts:
    - ports:
      - port: "53"
        protocol: UDP
"""
    ) == (
        f"{FILE}: document 1 (CiliumClusterwideNetworkPolicy wildcard-from-endpoints):"
        " description: unknown field"
    )


def test_lowercase_operator_is_rejected() -> None:
    # examples/policies/l3/match-expressions/or-statement.yaml@ca295501
    assert error(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "or-statement-policy"
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints:
    - matchExpressions:
      - key: "k8s:io.kubernetes.pod.namespace"
        operator: "in"
        values:
        - "production"
    - matchExpressions:
      - key: "k8s:cilium.example.com/policy"
        operator: "in"
        values:
        - "strict"
"""
    ) == (
        f"{FILE}: document 1 (CiliumNetworkPolicy default/or-statement-policy):"
        " spec.ingress[0].fromEndpoints[0].matchExpressions[0].operator: expected 'In', 'NotIn',"
        " 'Exists' or 'DoesNotExist', got 'in'"
    )


def test_uppercase_http_is_rejected() -> None:
    # examples/policies/l7/http/http.yaml@0b47e871 (fixed upstream to "http" later)
    assert error(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "l7-rule"
spec:
  endpointSelector:
    matchLabels:
      app: myService
  ingress:
  - toPorts:
    - ports:
      - port: '80'
        protocol: TCP
      rules:
        HTTP:
        - method: GET
          path: "/path1$"
"""
    ) == (
        f"{FILE}: document 1 (CiliumNetworkPolicy default/l7-rule):"
        " spec.ingress[0].toPorts[0].rules.HTTP: unknown field"
    )


def test_null_egress_is_no_egress() -> None:
    # examples/policies/l3/egress-default-deny/egress-default-deny.yaml@08649f13: "egress:" is
    # null, which the API server drops; the rule is then empty (use "egress: [{}]").
    assert error(
        """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "deny-all-egress"
spec:
  endpointSelector:
    matchLabels:
      role: restricted
  egress:
"""
    ) == (
        f"{FILE}: document 1 (CiliumNetworkPolicy default/deny-all-egress): spec: a rule needs"
        " at least one of ingress, ingressDeny, egress and egressDeny (an empty list counts as"
        " none; an entry {} allows nothing and turns default deny on)"
    )
