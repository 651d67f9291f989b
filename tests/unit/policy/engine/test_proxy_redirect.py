"""L7 entries get the port of the node's proxy serving them (resolve.with_proxy_ports):
``rules: dns`` → cilium-dns-egress, ``rules: http`` → cilium-http-egress or -ingress;
kinds nobody serves (kafka) stay allowed at L4 and reported; ports without L7 rules and denies
are never redirected."""

from __future__ import annotations

from ciliary.core.proxyports import DNS_EGRESS, HTTP_EGRESS, HTTP_INGRESS, ProxyPorts
from ciliary.policy.mapstate import PROTO_SCTP, PROTO_TCP, PROTO_UDP, MapKey
from ciliary.policy.resolve import l7_note, with_proxy_ports
from tests.unit.policy.engine.lab import Lab, pod

CLIENT = pod(1000, "default", app="client")
WEB = pod(1001, "default", app="web")
DNS = pod(1002, "kube-system", k8s_app="kube-dns")
PORTS = ProxyPorts({DNS_EGRESS: 10000, HTTP_EGRESS: 10001, HTTP_INGRESS: 10002})

RULES = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints:
    - matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s:k8s-app: kube-dns}
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules: {dns: [{matchPattern: "*"}]}
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET}]}
    - ports: [{port: "9092", protocol: TCP}]
      rules: {kafka: [{topic: t}]}
    - ports: [{port: "8080", protocol: TCP}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{path: "/public"}]}
"""


def test_l7_entries_get_their_proxys_port() -> None:
    lab = Lab(CLIENT, WEB, DNS)
    lab.apply(RULES)
    plain = lab.policy(CLIENT)
    client = with_proxy_ports(plain, PORTS)
    ports = {k: e.proxy_port for k, e in client.entries.items() if e.proxy_port}
    assert ports == {
        MapKey(DNS.id, True, PROTO_UDP, 53, 16): 10000,
        MapKey(DNS.id, True, PROTO_TCP, 53, 16): 10000,
        MapKey(WEB.id, True, PROTO_TCP, 80, 16): 10001,
    }
    # without a proxy at all nothing is redirected, the L7 rules are reported
    assert not any(e.proxy_port for e in plain.entries.values())
    assert any(n.endswith(l7_note("http")) for n in plain.unsupported)
    # the served kinds' notes go, kafka's stays (allowed at L4, on port 9092)
    assert not any(n.endswith((l7_note("http"), l7_note("dns"))) for n in client.unsupported)
    assert any(n.endswith(l7_note("kafka")) for n in client.unsupported)
    assert client.entries[MapKey(WEB.id, True, PROTO_TCP, 9092, 16)].proxy_port == 0
    assert client.entries[MapKey(WEB.id, True, PROTO_TCP, 8080, 16)].proxy_port == 0
    assert client.entries[MapKey(DNS.id, True, PROTO_SCTP, 53, 16)].proxy_port == 0

    # ingress HTTP entries go to the ingress listener (the receiver's side redirects too);
    # without its port: allowed at L4, reported
    web = with_proxy_ports(lab.policy(WEB), PORTS)
    assert web.entries[MapKey(CLIENT.id, False, PROTO_TCP, 80, 16)].proxy_port == 10002
    assert not any(n.endswith(l7_note("http")) for n in web.unsupported)
    web_egress_only = with_proxy_ports(lab.policy(WEB), ProxyPorts({HTTP_EGRESS: 10001}))
    assert web_egress_only.entries[MapKey(CLIENT.id, False, PROTO_TCP, 80, 16)].proxy_port == 0
    assert any(n.endswith(l7_note("http")) for n in web_egress_only.unsupported)
    # a node without the egress HTTP proxy's port: allowed at L4, reported
    dns_only = with_proxy_ports(plain, ProxyPorts({DNS_EGRESS: 10000}))
    assert dns_only.entries[MapKey(WEB.id, True, PROTO_TCP, 80, 16)].proxy_port == 0
    assert dns_only.entries[MapKey(DNS.id, True, PROTO_UDP, 53, 16)].proxy_port == 10000
    assert any(n.endswith(l7_note("http")) for n in dns_only.unsupported)


def test_no_l7_rules_is_the_same_policy() -> None:
    lab = Lab(CLIENT, WEB, DNS)
    lab.apply(RULES.split("---", maxsplit=1)[1].replace('rules: {http: [{path: "/public"}]}', ""))
    pol = lab.policy(WEB)
    assert pol.ingress_enforced and not pol.l7
    assert with_proxy_ports(pol, PORTS) is pol
