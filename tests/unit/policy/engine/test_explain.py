"""Why a default-deny drop happened: the policies that selected the endpoint for that direction
(recorded by the engine, carried by the trace), the sentence every surface prints, and the near
misses ``policy trace`` reports (a selector that matched the peer's labels but not its
namespace)."""

from __future__ import annotations

from ciliary.policy.explain import DefaultDeny, PolicyRef, near_misses

from .lab import HOST, Lab, pod

WEB = pod(256, "shop", app="web")
DB = pod(257, "shop", app="db")
CLIENT = pod(258, "default", app="client")
WEB_ELSEWHERE = pod(259, "default", app="web")

DB_FROM_WEB = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-from-web, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
"""
DENY_ALL = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
"""


def _lab(*texts: str) -> Lab:
    lab = Lab(WEB, DB, CLIENT, WEB_ELSEWHERE, HOST)
    for text in texts:
        lab.apply(text)
    return lab


def test_default_deny_names_the_policies_that_select_the_endpoint_per_direction() -> None:
    lab = _lab(DB_FROM_WEB, DENY_ALL)
    db = lab.policy(DB)
    assert [str(p) for p in db.ingress_enforced_by] == [
        "CiliumNetworkPolicy shop/db-from-web",
        "NetworkPolicy shop/default-deny",
    ]
    # only the NetworkPolicy has an egress section: it alone enforces egress
    assert [str(p) for p in db.egress_enforced_by] == ["NetworkPolicy shop/default-deny"]
    result = lab.ingress(DB, CLIENT, port=5432)
    assert result.reason == "default deny"
    assert result.enforced_by == db.ingress_enforced_by
    # an allowed flow or a not-enforced direction names no default deny
    assert lab.ingress(DB, WEB, port=5432).enforced_by == ()
    assert lab.policy(CLIENT).ingress_enforced_by == ()


def test_default_deny_text() -> None:
    ref = PolicyRef(
        "CiliumNetworkPolicy/shop/db-from-web", "CiliumNetworkPolicy", "shop", "db-from-web"
    )
    one = DefaultDeny("shop/db", "ingress", (ref,))
    assert one.text == (
        "shop/db is selected for ingress by CiliumNetworkPolicy shop/db-from-web;"
        " no rule of it allows this peer/port"
    )
    two = PolicyRef(
        "CiliumClusterwideNetworkPolicy/all", "CiliumClusterwideNetworkPolicy", None, "all"
    )
    assert DefaultDeny("shop/db", "egress", (ref, two)).text == (
        "shop/db is selected for egress by CiliumNetworkPolicy shop/db-from-web,"
        " CiliumClusterwideNetworkPolicy all; no rule of them allows this peer/port"
    )
    assert "enforcement mode 'always'" in DefaultDeny("shop/db", "ingress", ()).text


def test_mode_always_enforces_without_a_policy_to_name() -> None:
    lab = Lab(WEB, DB, mode="always")
    result = lab.ingress(DB, WEB)
    assert (result.reason, result.enforced_by) == ("default deny", ())


def test_near_miss_selector_matches_labels_but_not_the_namespace() -> None:
    """``fromEndpoints: app=web`` in a shop policy means shop's web only: web pods of another
    namespace are a near miss, a client is not."""
    lab = _lab(DB_FROM_WEB)
    assert not lab.ingress(DB, WEB_ELSEWHERE, port=5432).allowed
    rules = lab.repo.rules_for(DB.labels)
    misses = near_misses(rules, "ingress", WEB_ELSEWHERE.labels)
    assert misses == (
        "CiliumNetworkPolicy shop/db-from-web spec.ingress[0]: selects app=web in namespace"
        " shop, but the peer is in namespace default",
    )
    assert near_misses(rules, "ingress", CLIENT.labels) == ()
    assert near_misses(rules, "ingress", WEB.labels) == ()  # it matches: no miss
    assert near_misses(rules, "egress", WEB_ELSEWHERE.labels) == ()
