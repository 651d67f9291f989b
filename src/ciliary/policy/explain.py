"""Why a flow was dropped by default deny, in words a user can act on.

A default-deny drop (reason 133) matched no policy map entry, so the datapath's cookie names no
rule: the answer to "which policy dropped this?" is not a rule that matched but the policies that
*selected* the endpoint for that direction and so turned its default deny on (Cilium's policy
enforcement modes, ``Documentation/security/policy/intro.rst``). The engine records them per
direction when it computes an endpoint's policy (:attr:`EndpointPolicy.ingress_enforced_by`);
this module turns them into one sentence, shared by every place that explains a drop (the agent's
monitor events and Hubble flows, ``policy trace``, the PolicyTest runner), so they all say the same
thing::

    shop/db is selected for ingress by CiliumNetworkPolicy shop/db-from-web; no rule of it allows
    this peer/port

:func:`near_misses` finds the classic mistake behind many surprising default-deny drops: an allow
whose endpoint selector matches the peer's labels but not its namespace (a ``fromEndpoints``
written in one namespace's policy for pods of another: Kubernetes and Cilium scope such selectors
to the policy's own namespace unless they name one).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ciliary.policy.api.labels import NAMESPACE_LABEL, LabelSet, split_key
from ciliary.policy.api.model import Policy, PolicyKind
from ciliary.policy.api.selector import Selector
from ciliary.policy.mapstate import Direction
from ciliary.policy.repository import SelectedRule

__all__ = ["DefaultDeny", "PolicyRef", "near_misses"]


@dataclass(frozen=True, slots=True, order=True)
class PolicyRef:
    """A policy by name (``key`` is :attr:`Policy.key`)."""

    key: str
    kind: PolicyKind
    namespace: str | None
    name: str

    @classmethod
    def of(cls, policy: Policy) -> PolicyRef:
        return cls(policy.key, policy.kind, policy.namespace, policy.name)

    def __str__(self) -> str:
        where = self.name if self.namespace is None else f"{self.namespace}/{self.name}"
        return f"{self.kind} {where}"


@dataclass(frozen=True, slots=True)
class DefaultDeny:
    """Why ``endpoint``'s ``direction`` is in default deny: the policies that select it for that
    direction (empty: the agent's enforcement mode ``always`` alone)."""

    endpoint: str
    direction: Direction
    policies: tuple[PolicyRef, ...]

    @property
    def text(self) -> str:
        if not self.policies:
            return (
                f"{self.endpoint} has {self.direction} policy enforced by the agent's enforcement"
                " mode 'always'; no rule allows this peer/port"
            )
        names = ", ".join(str(p) for p in self.policies)
        them = "it" if len(self.policies) == 1 else "them"
        return (
            f"{self.endpoint} is selected for {self.direction} by {names};"
            f" no rule of {them} allows this peer/port"
        )


def _namespace_key(key: str) -> bool:
    return split_key(key)[1] == NAMESPACE_LABEL


def _without_namespace(selector: Selector) -> Selector:
    return Selector(
        tuple((k, v) for k, v in selector.match_labels if not _namespace_key(k)),
        tuple(r for r in selector.match_expressions if not _namespace_key(r.key)),
    )


def _shown(selector: Selector) -> str:
    """A selector as a user wrote it: keys without the ``any:`` source every key gets."""
    plain = Selector(
        tuple((k.removeprefix("any:"), v) for k, v in selector.match_labels),
        tuple(r._replace(key=r.key.removeprefix("any:")) for r in selector.match_expressions),
    )
    return str(plain)


def near_misses(
    rules: Iterable[SelectedRule], direction: Direction, peer_labels: Iterable[str]
) -> tuple[str, ...]:
    """Allow entries of ``rules`` (those selecting an endpoint) for ``direction`` whose endpoint
    selector matches the peer's labels except for the namespace: one line each, naming the rule,
    the namespace it requires and the peer's."""
    labels = LabelSet(peer_labels)
    peer_ns = sorted(labels.values("any", NAMESPACE_LABEL))
    out: list[str] = []
    for policy, rule in rules:
        for peer in rule.ingress if direction == "ingress" else rule.egress:
            for selector in peer.endpoints:
                if selector.matches(labels):
                    continue
                bare = _without_namespace(selector)
                if bare == selector or bare.is_wildcard or not bare.matches(labels):
                    continue
                wanted = sorted(
                    {v for k, v in selector.match_labels if _namespace_key(k)}
                    | {v for r in selector.match_expressions if _namespace_key(r.key)
                       for v in r.values}
                )  # fmt: skip
                where = f"{PolicyRef.of(policy)} {rule.path}.{direction}[{peer.index}]"
                out.append(
                    f"{where}: selects {_shown(bare)} in namespace {', '.join(wanted) or '?'},"
                    f" but the peer is in namespace {', '.join(peer_ns) or '(none)'}"
                )
    return tuple(dict.fromkeys(out))
