"""The policy repository: every accepted policy, by key, with a revision that only goes up.

Cilium keeps the imported rules in one repository (``pkg/policy/repository.go``) with a revision
number that every change increases; an endpoint's computed policy remembers the revision it was
computed at, so the agent can tell which endpoints are behind. This is that, for normalized
:class:`~ciliary.policy.api.model.Policy` values, keyed by :attr:`Policy.key`
(``kind/namespace/name``): replacing a policy replaces all its rules at once, as re-applying a
Kubernetes object does.

Selecting the rules that apply to an endpoint is the hot path (every regeneration asks), so rules
are indexed by the namespace their subject selector requires (``CiliumNetworkPolicy`` and
``NetworkPolicy`` subjects always carry one) and the answer is remembered per label set until the
next change. A rule's subject is its ``endpointSelector`` for endpoints and its ``nodeSelector`` for
the host endpoint (labels with ``reserved:host``); neither kind selects the other, as in Cilium's
``rule.matchesSubject``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from ciliary.policy.api.labels import NAMESPACE_LABEL, SOURCE_ANY, SOURCE_K8S, LabelSet
from ciliary.policy.api.model import Policy, Rule
from ciliary.policy.identity import LABEL_HOST

__all__ = ["Repository", "SelectedRule"]

_NAMESPACE_KEYS = (f"{SOURCE_K8S}:{NAMESPACE_LABEL}", f"{SOURCE_ANY}:{NAMESPACE_LABEL}")
_MEMO_LIMIT = 8192


class SelectedRule(NamedTuple):
    """A rule and the policy it belongs to."""

    policy: Policy
    rule: Rule


def _subject_namespace(rule: Rule) -> str | None:
    """The namespace a rule's subject requires (None: any, or not said by ``matchLabels``)."""
    if rule.node_selector is not None:
        return None
    for key in _NAMESPACE_KEYS:
        value = rule.subject.get(key)
        if value is not None:
            return value
    return None


class Repository:
    """Policies by key, with a revision. Not thread-safe (the agent calls it from its loop)."""

    def __init__(self) -> None:
        self._revision = 1
        self._policies: dict[str, Policy] = {}
        self._by_namespace: dict[str | None, list[SelectedRule]] = {}
        self._memo: dict[frozenset[str], tuple[SelectedRule, ...]] = {}

    @property
    def revision(self) -> int:
        """Starts at 1 and increases with every change."""
        return self._revision

    def __len__(self) -> int:
        return len(self._policies)

    def __contains__(self, key: object) -> bool:
        return key in self._policies

    def get(self, key: str) -> Policy | None:
        return self._policies.get(key)

    def policies(self) -> tuple[Policy, ...]:
        """Every policy, in key order."""
        return tuple(self._policies[key] for key in sorted(self._policies))

    def replace(self, policies: Sequence[Policy]) -> int:
        """Add the policies, replacing any with the same key, all at once (one new revision).
        Raises ValueError, changing nothing, if the batch has a key twice or a non-policy.
        Returns the new revision."""
        seen: set[str] = set()
        for policy in policies:
            if not isinstance(policy, Policy):
                raise ValueError(f"not a Policy: {policy!r}")
            if policy.key in seen:
                raise ValueError(f"policy {policy.key} given twice in one replace")
            seen.add(policy.key)
        for policy in policies:
            self._policies[policy.key] = policy
        self._changed()
        return self._revision

    def delete(self, keys: Iterable[str]) -> int:
        """Remove the policies with these keys (unknown keys are ignored). The revision goes up
        if anything was removed. Returns the (possibly new) revision."""
        removed = [key for key in set(keys) if self._policies.pop(key, None) is not None]
        if removed:
            self._changed()
        return self._revision

    def rules_for(self, labels: Iterable[str]) -> tuple[SelectedRule, ...]:
        """The rules whose subject selects an endpoint with these labels, in policy-key order."""
        key = labels if isinstance(labels, frozenset) else frozenset(labels)
        found = self._memo.get(key)
        if found is not None:
            return found
        label_set = LabelSet(key)
        is_node = LABEL_HOST in key
        candidates = list(self._by_namespace.get(None, ()))
        for namespace in sorted(label_set.values(SOURCE_ANY, NAMESPACE_LABEL)):
            candidates.extend(self._by_namespace.get(namespace, ()))
        selected = tuple(
            sorted(
                (
                    entry
                    for entry in candidates
                    if entry.rule.is_host_policy == is_node
                    and entry.rule.subject.matches(label_set)
                ),
                key=lambda e: (e.policy.key, e.rule.index),
            )
        )
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[key] = selected
        return selected

    def _changed(self) -> None:
        self._revision += 1
        self._memo.clear()
        index: dict[str | None, list[SelectedRule]] = {}
        for policy in self._policies.values():
            for rule in policy.rules:
                index.setdefault(_subject_namespace(rule), []).append(SelectedRule(policy, rule))
        self._by_namespace = index
