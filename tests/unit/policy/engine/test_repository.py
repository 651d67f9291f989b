"""The policy repository: revisions, all-or-nothing replace, delete, rule selection; and the
computed-policy cache following it."""

from __future__ import annotations

import pytest

from ciliary.policy.api import parse_policy_text
from ciliary.policy.mapstate import MapKey
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


def test_subjects_the_same_rules_select_share_one_result() -> None:
    repo = Repository()
    cache = SelectorCache()
    repo.replace(policies())
    replica = pod(259, "shop", app="web", pod_template_hash="h2")  # other labels, same rules
    for identity in (WEB, replica, DB):
        cache.upsert_identity(identity)
    assert repo.selection(WEB.labels)[1] == repo.selection(replica.labels)[1]
    assert repo.selection(WEB.labels)[1] != repo.selection(DB.labels)[1]
    assert compute(repo, cache, replica) is compute(repo, cache, WEB)
    assert compute(repo, cache, DB) is not compute(repo, cache, WEB)


CHANGE = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-only, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress: [{fromEndpoints: [{matchLabels: {app: web}}], toPorts: [{ports: [{port: "5432"}]}]}]
"""


def test_a_change_keeps_the_results_it_does_not_touch() -> None:
    repo = Repository()
    cache = SelectorCache()
    repo.replace(policies())
    for identity in (WEB, DB):
        cache.upsert_identity(identity)
    web, db = compute(repo, cache, WEB), compute(repo, cache, DB)
    # a new policy selecting db only: web's result stays (same entries), at the new revision
    repo.replace(parse_policy_text(CHANGE, "c.yaml"))
    web2, db2 = compute(repo, cache, WEB), compute(repo, cache, DB)
    assert web2.entries is web.entries
    assert (web2.revision, db2.revision) == (repo.revision, repo.revision)
    assert db2.entries != db.entries
    assert db2.policies == (*db.policies, "CiliumNetworkPolicy/shop/db-only")
    # the same policy again is a change of db's rules (a new object, equal entries)
    repo.replace(parse_policy_text(CHANGE, "c.yaml"))
    db3 = compute(repo, cache, DB)
    assert db3.entries is not db2.entries and db3.entries == db2.entries
    assert compute(repo, cache, WEB).entries is web.entries
    # a new identity that db's selectors select: db recomputed, web (no such selector) kept
    cache.upsert_identity(pod(300, "shop", app="web", pod_template_hash="h3"))
    db4, web4 = compute(repo, cache, DB), compute(repo, cache, WEB)
    assert MapKey(300, False, 6, 5432, 16) in db4.entries
    assert web4.entries is web.entries
    assert web4.selector_cache_version == cache.version
    # deleting it: back to what db had before
    repo.delete(["CiliumNetworkPolicy/shop/db-only"])
    assert dict(compute(repo, cache, DB).entries) == dict(db.entries)
    assert compute(repo, cache, WEB).entries is web.entries
