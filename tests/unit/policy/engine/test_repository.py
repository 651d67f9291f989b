"""The policy repository: revisions, all-or-nothing replace, delete, rule selection; and the
computed-policy cache following it."""

from __future__ import annotations

import pytest

from ciliary.policy.api import parse_policy_text
from ciliary.policy.repository import Repository
from ciliary.policy.resolve import compute
from ciliary.policy.selectorcache import SelectorCache

from .lab import HOST, pod

TEXT = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress: [{}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: all, namespace: shop}
specs:
- endpointSelector: {}
  egress: [{}]
- endpointSelector: {matchLabels: {app: db}}
  ingress: [{}]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: everywhere}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egressDeny: [{toEntities: [world]}]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: host}
spec:
  nodeSelector: {}
  ingress: [{}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: other}
spec:
  podSelector: {}
"""

WEB = pod(256, "shop", app="web")
DB = pod(257, "shop", app="db")
OTHER_WEB = pod(258, "other", app="web")


def policies() -> list:  # type: ignore[type-arg]
    return parse_policy_text(TEXT, "p.yaml")


def test_revision_goes_up_with_every_change() -> None:
    repo = Repository()
    assert repo.revision == 1
    assert repo.replace(policies()) == 2
    assert len(repo) == 5
    assert repo.replace(policies()[:1]) == 3  # re-applying counts as a change
    assert repo.delete(["nope"]) == 3  # nothing removed: no new revision
    assert repo.delete(["CiliumNetworkPolicy/shop/web"]) == 4
    assert "CiliumNetworkPolicy/shop/web" not in repo
    assert repo.get("CiliumClusterwideNetworkPolicy/everywhere") is not None
    assert [p.key for p in repo.policies()] == sorted(p.key for p in repo.policies())


def test_replace_is_all_or_nothing() -> None:
    repo = Repository()
    first = policies()
    repo.replace(first[:2])
    with pytest.raises(ValueError, match="given twice"):
        repo.replace([first[2], first[2]])
    with pytest.raises(ValueError, match="not a Policy"):
        repo.replace([first[3], "nope"])  # type: ignore[list-item]
    assert repo.revision == 2
    assert {p.key for p in repo.policies()} == {first[0].key, first[1].key}


def test_replacing_a_policy_replaces_all_its_rules() -> None:
    repo = Repository()
    repo.replace(policies())
    assert len([s for s in repo.rules_for(DB.labels) if s.policy.name == "all"]) == 2
    smaller = parse_policy_text(
        """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: all, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: nothing}}
  egress: [{}]
""",
        "p.yaml",
    )
    repo.replace(smaller)
    assert [s for s in repo.rules_for(DB.labels) if s.policy.name == "all"] == []


def test_rules_for_selects_by_subject_namespace_and_kind() -> None:
    repo = Repository()
    repo.replace(policies())
    web = [(s.policy.key, s.rule.index) for s in repo.rules_for(WEB.labels)]
    assert web == [
        ("CiliumClusterwideNetworkPolicy/everywhere", 0),
        ("CiliumNetworkPolicy/shop/all", 0),
        ("CiliumNetworkPolicy/shop/web", 0),
    ]
    other = [s.policy.key for s in repo.rules_for(OTHER_WEB.labels)]
    assert other == ["CiliumClusterwideNetworkPolicy/everywhere", "NetworkPolicy/other/web"]
    assert [s.policy.key for s in repo.rules_for(HOST.labels)] == [
        "CiliumClusterwideNetworkPolicy/host"
    ]
    assert repo.rules_for({"k8s:app=web"}) == tuple(
        s for s in repo.rules_for(WEB.labels) if s.policy.namespace is None
    )


def test_compute_is_cached_and_follows_revisions_and_identities() -> None:
    repo = Repository()
    cache = SelectorCache()
    cache.upsert_identity(WEB)
    repo.replace(policies())
    first = compute(repo, cache, WEB)
    assert compute(repo, cache, WEB) is first
    assert first.revision == repo.revision
    assert first.policies == (
        "CiliumClusterwideNetworkPolicy/everywhere",
        "CiliumNetworkPolicy/shop/all",
        "CiliumNetworkPolicy/shop/web",
    )
    # a different mode or named ports is a different result
    assert compute(repo, cache, WEB, mode="never") is not first
    assert compute(repo, cache, WEB, named_ports={"http": (80, "TCP")}) is not first
    # a change of identities or policies invalidates
    cache.upsert_identity(pod(300, "shop", app="x"))
    second = compute(repo, cache, WEB)
    assert second is not first
    assert second.entries == first.entries
    repo.delete(["CiliumClusterwideNetworkPolicy/everywhere"])
    third = compute(repo, cache, WEB)
    assert third.revision == repo.revision
    assert all(not e.deny for e in third.entries.values())
    # another cache with the same version number is not confused with this one
    other_cache = SelectorCache()
    assert compute(repo, other_cache, WEB) is not third
