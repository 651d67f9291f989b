"""The policy repository: every accepted policy, by key, with a revision that only goes up.

Cilium keeps the imported rules in one repository (``pkg/policy/repository.go``) with a revision
number that every change increases; an endpoint's computed policy remembers the revision it was
computed at, so the agent can tell which endpoints are behind. This is that, for normalized
:class:`~ciliary.policy.api.model.Policy` values, keyed by :attr:`Policy.key`
(``kind/namespace/name``): replacing a policy replaces all its rules at once, as re-applying a
Kubernetes object does.

Selecting the rules that apply to an endpoint is the hot path (every regeneration asks), so rules
are indexed by the namespace their subject selector requires (``CiliumNetworkPolicy`` and
``NetworkPolicy`` subjects always carry one) and the answer is remembered per label set. A change
forgets only the answers it can alter: those holding a rule of a replaced or deleted policy, and
those a new rule's subject selects; the others stay, so one rule change at 10k endpoints does not
make every endpoint look changed. Every answer also carries a token (:meth:`Repository.selection`):
equal tokens mean the very same rules (policies are numbered as they are stored, numbers never
reused), which is what lets the engine share one computed policy among all the identities that the
same rules select. A rule's subject is its ``endpointSelector`` for endpoints and its
``nodeSelector`` for the host endpoint (labels with ``reserved:host``); neither kind selects the
other, as in Cilium's ``rule.matchesSubject``.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Sequence
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


class _Selection(NamedTuple):
    """A remembered answer of :meth:`Repository.selection`, with what a change needs to know."""

    rules: tuple[SelectedRule, ...]
    policies: frozenset[int]
    """The serials of the policies the rules belong to."""
    token: int
    label_set: LabelSet
    is_node: bool


class Repository:
    """Policies by key, with a revision. Not thread-safe (the agent calls it from its loop)."""

    def __init__(self) -> None:
        self._revision = 1
        self._policies: dict[str, Policy] = {}
        self._serials: dict[str, int] = {}
        """Per stored policy, the number it was stored under (a replaced policy gets a new one)."""
        self._next_serial = 1
        self._by_namespace: dict[str | None, list[SelectedRule]] = {}
        self._memo: dict[frozenset[str], _Selection] = {}
        self._tokens: dict[tuple[tuple[int, int], ...], int] = {}
        self._token_numbers = itertools.count(1)

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
        gone = [self._serials[key] for key in seen if key in self._serials]
        for policy in policies:
            self._policies[policy.key] = policy
            self._serials[policy.key] = self._next_serial
            self._next_serial += 1
        self._changed(gone, policies)
        return self._revision

    def delete(self, keys: Iterable[str]) -> int:
        """Remove the policies with these keys (unknown keys are ignored). The revision goes up
        if anything was removed. Returns the (possibly new) revision."""
        gone = []
        for key in set(keys):
            if self._policies.pop(key, None) is not None:
                gone.append(self._serials.pop(key))
        if gone:
            self._changed(gone, ())
        return self._revision

    def rules_for(self, labels: Iterable[str]) -> tuple[SelectedRule, ...]:
        """The rules whose subject selects an endpoint with these labels, in policy-key order."""
        return self.selection(labels)[0]

    def selection(self, labels: Iterable[str]) -> tuple[tuple[SelectedRule, ...], int]:
        """:meth:`rules_for` and its token, a number: equal tokens mean the same stored rules
        select both label sets, and the same rules get the same token (tokens of different
        revisions compare too: a policy stored again is a new one), unless more than 8192
        distinct rule lists were seen since."""
        key = labels if isinstance(labels, frozenset) else frozenset(labels)
        found = self._memo.get(key)
        if found is not None:
            return found.rules, found.token
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
        serials = tuple((self._serials[s.policy.key], s.rule.index) for s in selected)
        token = self._tokens.get(serials)
        if token is None:  # a small number per distinct rule list: cheap to hash as a key
            if len(self._tokens) >= _MEMO_LIMIT:
                self._tokens.clear()  # numbers are never reused: a forgotten list gets a new one
            token = self._tokens[serials] = next(self._token_numbers)
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        policies = frozenset(serial for serial, _ in serials)
        self._memo[key] = _Selection(selected, policies, token, label_set, is_node)
        return selected, token

    def _changed(self, gone: Collection[int], added: Iterable[Policy]) -> None:
        """A new revision: the index rebuilt, and the remembered selections that ``gone``
        (serials of policies replaced or deleted) or the rules of ``added`` can alter
        forgotten."""
        self._revision += 1
        index: dict[str | None, list[SelectedRule]] = {}
        for policy in self._policies.values():
            for rule in policy.rules:
                index.setdefault(_subject_namespace(rule), []).append(SelectedRule(policy, rule))
        self._by_namespace = index
        new_rules = [rule for policy in added for rule in policy.rules]
        if not self._memo:
            return
        gone_set = set(gone)
        stale = [
            labels
            for labels, found in self._memo.items()
            if not found.policies.isdisjoint(gone_set)
            or any(
                rule.is_host_policy == found.is_node and rule.subject.matches(found.label_set)
                for rule in new_rules
            )
        ]
        for labels in stale:
            del self._memo[labels]
