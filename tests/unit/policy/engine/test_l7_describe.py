"""What ``policy trace`` and PolicyTest reports say of an entry's L7 rules
(``L7Policy.describe``), computed by the engine from Cilium's L7 example and others, and the
agent's trace half that carries them with the proxy port the datapath redirects to."""

from __future__ import annotations

from ciliary.agent.policytrace import _half
from ciliary.core.proxyports import HTTP_INGRESS, ProxyPorts
from ciliary.policy.mapstate import PROTO_TCP, MapKey
from ciliary.policy.resolve import with_proxy_ports
from ciliary.policy.trace import trace
from tests.unit.policy.engine.lab import Lab, pod

DEATHSTAR = pod(1000, "default", org="empire", **{"class": "deathstar"})
TIEFIGHTER = pod(1001, "default", org="empire", **{"class": "tiefighter"})
XWING = pod(1002, "default", org="alliance", **{"class": "xwing"})

RULES = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule1, namespace: default}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: POST, path: /v1/request-landing}
        - {path: /v1/status, host: "deathstar.*", headers: [X-Ok],
           headerMatches: [{name: X-Ship, value: tie}]}
    - ports: [{port: "9092", protocol: TCP}]
      rules: {kafka: [{role: produce, topic: t}]}
    - ports: [{port: "81", protocol: TCP}]
      rules: {http: [{}]}
  egress:
  - toEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "53", protocol: UDP}]
      rules: {dns: [{matchName: a.example}, {matchPattern: "*.example"}]}
"""


def _l7(port: int, protocol: int = PROTO_TCP, egress: bool = False) -> tuple[str, ...]:
    lab = Lab(DEATHSTAR, TIEFIGHTER, XWING)
    lab.apply(RULES)
    return lab.policy(DEATHSTAR).l7[MapKey(TIEFIGHTER.id, egress, protocol, port, 16)].describe()


def test_each_rule_in_the_policys_spelling() -> None:
    assert _l7(80) == (
        "http: method=POST path=/v1/request-landing",
        "http: path=/v1/status host=deathstar.* header=X-Ok headerMatch=X-Ship=tie",
    )
    assert _l7(53, 17, egress=True) == ("dns: matchName=a.example", "dns: matchPattern=*.example")
    assert _l7(9092) == ("kafka: role=produce topic=t",)
    assert _l7(81) == ("http: every request",)


def test_the_trace_half_names_the_l7_rules_and_the_proxy() -> None:
    lab = Lab(DEATHSTAR, TIEFIGHTER, XWING)
    lab.apply(RULES)
    pol = with_proxy_ports(lab.policy(DEATHSTAR), ProxyPorts({HTTP_INGRESS: 10002}))
    allowed = trace(pol, TIEFIGHTER.id, PROTO_TCP, 80, "ingress")
    half = _half("ingress", None, TIEFIGHTER.id, allowed, None, pol)  # type: ignore[arg-type]
    assert half.allowed and half.proxy_port == 10002
    assert half.l7[0] == "http: method=POST path=/v1/request-landing"
    denied = trace(pol, XWING.id, PROTO_TCP, 80, "ingress")
    assert not denied.allowed
    # default deny asks the manager for near misses only with an endpoint: none here
    half = _half("ingress", None, XWING.id, denied, None, pol)  # type: ignore[arg-type]
    assert (half.l7, half.proxy_port) == ([], 0)
