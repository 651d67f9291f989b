"""Kubernetes NetworkPolicy recipes (ahmetb/kubernetes-network-policy-recipes), with real packets.

One lab (``examples/policies/recipes.yaml``); each test imports one ``recipe-*.yaml``, checks
flows with the datapath's own verdict (and ``policy trace``), and deletes it again.

Semantics asserted, with their sources:
- NetworkPolicy ``ingress: []`` / ``podSelector: {}`` peers / ``namespaceSelector`` peers,
  ``policyTypes``: Kubernetes' NetworkPolicy reference (``networking.k8s.io/v1``: "If this field
  is empty then this NetworkPolicy does not allow any traffic"; "policyTypes ... If not
  specified ... Egress only if the policy has an egress section") and the recipes 01, 04, 06;
- ``endPort`` (stable in Kubernetes 1.25): "the range of ports from port to endPort, inclusive";
- ``ipBlock`` in Cilium: CIDR rules match only peers without an endpoint identity (Cilium docs,
  security/policy/layer3 "IP/CIDR based: ... if the remote peer is not an endpoint"); an address
  of the node is the ``host`` identity, not a CIDR (cilium/cilium#16308: "When Cilium detects that
  the IP address is associated with the host ... map that IP address to the host identity and
  avoid matching via IPs"); ``except`` carves holes in the block (``CIDRRule.ExceptCIDRs``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .test_policy_runner import EXAMPLES, PolicyLab, case, policy_lab, refusals_are_final


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyLab]:
    yield from policy_lab(tmp_path_factory, "recipes.yaml", "rcp")


@pytest.fixture
def recipe(lab: PolicyLab) -> Iterator[PolicyLab]:
    """The lab, policy-free again after the test (whatever it imported is deleted)."""
    try:
        yield lab
    finally:
        lab.delete_policies()


def _import(lab: PolicyLab, name: str) -> None:
    path = EXAMPLES / name
    lab.import_policy(path.read_text(), str(path))


def test_deny_all_to_an_application(recipe: PolicyLab) -> None:
    _import(recipe, "recipe-deny-all.yaml")
    recipe.expect(
        """
        - {name: same-ns, from: default/client, to: default/web, port: 80, expect: deny,
           dropReason: 133}
        - {name: other-ns, from: prod/client, to: default/web, port: 80, expect: deny}
        - {name: icmp, from: dev/client, to: default/web, protocol: ICMP, expect: deny}
        - {name: other-app, from: default/client, to: prod/api, port: 7, expect: allow}
        - {name: web-out, from: default/web, to: prod/api, port: 7, protocol: UDP, expect: allow}
        """
    )


def test_deny_from_other_namespaces(recipe: PolicyLab) -> None:
    _import(recipe, "recipe-same-namespace.yaml")
    recipe.expect(
        """
        - {name: same-ns, from: prod/client, to: prod/api, port: 7, expect: allow,
           rule: NetworkPolicy prod/deny-from-other-namespaces}
        - {name: same-ns-udp, from: prod/client, to: prod/api, port: 7, protocol: UDP,
           expect: allow}
        - {name: from-default, from: default/client, to: prod/api, port: 7, expect: deny,
           dropReason: 133}
        - {name: from-dev, from: dev/client, to: prod/api, port: 7, protocol: UDP, expect: deny}
        - {name: unselected-ns, from: dev/client, to: default/web, port: 80, expect: allow}
        """
    )


def test_allow_from_a_namespace_by_label(recipe: PolicyLab) -> None:
    _import(recipe, "recipe-from-namespace.yaml")
    recipe.expect(
        """
        - {name: prod, from: prod/client, to: default/web, port: 80, expect: allow}
        - {name: prod-api, from: prod/api, to: default/web, port: 80, expect: allow}
        - {name: dev, from: dev/client, to: default/web, port: 80, expect: deny, dropReason: 133}
        - {name: own-ns, from: default/client, to: default/web, port: 80, expect: deny}
        """
    )


def test_ipblock_matches_only_addresses_outside_the_cluster(recipe: PolicyLab) -> None:
    """A block covering every pod and the node allows none of them; outside the cluster it
    allows what it covers (to-stack FORWARDED) and nothing else."""
    _import(recipe, "recipe-ipblock.yaml")
    report = recipe.expect(
        """
        - {name: pod-in-block, from: default/client, to: default/web, port: 80, expect: deny,
           dropReason: 133}
        - {name: pod-in-block-icmp, from: default/client, to: prod/api, protocol: ICMP,
           expect: deny}
        - {name: host-in-block, from: default/client, to: host, port: 80, expect: deny}
        - {name: world-in-block, from: default/client, to: 203.0.113.9, port: 443, expect: allow}
        - {name: world-in-block-udp, from: default/client, to: 203.0.113.200, port: 53,
           protocol: UDP, expect: allow}
        - {name: world-in-except, from: default/client, to: 192.0.2.200, port: 443,
           expect: deny, dropReason: 133}
        - {name: world-outside, from: default/client, to: 198.51.100.1, port: 443, expect: deny}
        - {name: ingress-untouched, from: prod/client, to: default/client, protocol: ICMP,
           expect: allow}
        """
    )
    world = case(report, "world-in-block")
    assert world.datapath_event.startswith("FORWARDED egress to-stack"), world


def test_ipblock_except_allows_the_rest_of_the_block(recipe: PolicyLab) -> None:
    _import(recipe, "recipe-ipblock.yaml")
    recipe.expect(
        """
        - {name: world-in-block-not-except, from: default/client, to: 192.0.2.1, port: 443,
           expect: allow}
        """
    )


def test_port_range_with_endport(recipe: PolicyLab, monkeypatch: pytest.MonkeyPatch) -> None:
    """8000..8010 inclusive; nobody listens there, so an allowed SYN is answered by a reset
    ("refused") and a denied one is dropped."""
    refusals_are_final(monkeypatch)
    _import(recipe, "recipe-endport.yaml")
    report = recipe.expect(
        """
        - {name: "8000", from: default/client, to: default/web, port: 8000, expect: allow}
        - {name: "8005", from: default/client, to: default/web, port: 8005, expect: allow}
        - {name: "8010", from: default/client, to: default/web, port: 8010, expect: allow}
        - {name: "8011", from: default/client, to: default/web, port: 8011, expect: deny,
           dropReason: 133}
        - {name: "7999", from: default/client, to: default/web, port: 7999, expect: deny}
        - {name: "80", from: default/client, to: default/web, port: 80, expect: deny}
        - {name: udp-8005, from: default/client, to: default/web, port: 8005, protocol: UDP,
           expect: deny}
        - {name: other-ns, from: prod/client, to: default/web, port: 8005, expect: deny}
        """
    )
    assert case(report, "8005").client == "refused"


def test_policy_types_egress_only(recipe: PolicyLab, monkeypatch: pytest.MonkeyPatch) -> None:
    refusals_are_final(monkeypatch)  # nobody listens on the client's 22
    _import(recipe, "recipe-egress-only.yaml")
    report = recipe.expect(
        """
        - {name: to-web-80, from: default/client, to: default/web, port: 80, expect: allow}
        - {name: to-web-81, from: default/client, to: default/web, port: 81, expect: deny,
           dropReason: 133}
        - {name: to-api, from: default/client, to: prod/api, port: 7, protocol: UDP,
           expect: deny}
        - {name: ingress-free, from: prod/api, to: default/client, protocol: ICMP, expect: allow}
        - {name: ingress-free-tcp, from: dev/client, to: default/client, port: 22, expect: allow}
        - {name: other-clients, from: prod/client, to: prod/api, port: 7, expect: allow}
        """
    )
    assert case(report, "to-web-81").direction == "egress"
    assert case(report, "ingress-free-tcp").client == "refused"
