"""Label selectors over Cilium labels, with Kubernetes' matching semantics.

A selector is a Kubernetes ``LabelSelector`` whose keys carry a Cilium label source: ``k8s:app``
matches only labels of source ``k8s`` with key ``app``; ``any:app`` (what a key written without a
source, ``app``, becomes) matches ``app`` from every source; ``reserved:host`` matches the host's
reserved label. Keys are stored normalized, always as ``source:key``, so two selectors that mean the
same thing compare equal.

Matching follows ``k8s.io/apimachinery`` requirements: ``In`` needs the key with one of the values,
``NotIn`` is true when the key is absent or has none of them, ``Exists``/``DoesNotExist`` test
presence, and every requirement must hold (an empty selector selects everything). When an ``any:``
key finds the same key under several sources, ``In`` holds if any of them has an allowed value and
``NotIn`` if none has (Cilium looks at one of them, in an order that is not specified).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple, TypeAlias

from ciliary.policy.api.labels import Label, LabelSet, split_key

__all__ = ["Operator", "Requirement", "Selector"]

_split_key = functools.lru_cache(maxsize=4096)(split_key)
"""``split_key`` remembered: selectors match on the hot path with a few distinct keys."""

Operator: TypeAlias = Literal["In", "NotIn", "Exists", "DoesNotExist"]
OPERATORS: tuple[Operator, ...] = ("In", "NotIn", "Exists", "DoesNotExist")


class Requirement(NamedTuple):
    """One ``matchExpressions`` entry: key (``source:key``), operator and sorted values."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: LabelSet) -> bool:
        source, key = split_key(self.key)
        if self.operator == "Exists":
            return labels.has(source, key)
        if self.operator == "DoesNotExist":
            return not labels.has(source, key)
        found = labels.values(source, key)
        hit = any(v in found for v in self.values)
        return hit if self.operator == "In" else not hit

    def __str__(self) -> str:
        if self.operator == "Exists":
            return self.key
        if self.operator == "DoesNotExist":
            return f"!{self.key}"
        word = "in" if self.operator == "In" else "notin"
        return f"{self.key} {word} ({','.join(self.values)})"


LabelsLike: TypeAlias = LabelSet | Iterable[Label | str] | Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Selector:
    """A normalized label selector: ``match_labels`` as sorted ``(source:key, value)`` pairs and
    ``match_expressions`` as :class:`Requirement` tuples, all of which must hold."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    @property
    def is_wildcard(self) -> bool:
        """Whether it selects everything (no requirement at all)."""
        return not self.match_labels and not self.match_expressions

    def has_key(self, key: str) -> bool:
        """Whether ``key`` (``source:key``) appears in ``match_labels`` or ``match_expressions``."""
        return any(k == key for k, _ in self.match_labels) or any(
            r.key == key for r in self.match_expressions
        )

    def has_source(self, source: str) -> bool:
        """Whether some key has label source ``source``."""
        keys = [k for k, _ in self.match_labels] + [r.key for r in self.match_expressions]
        return any(split_key(k)[0] == source for k in keys)

    @property
    def index_label(self) -> tuple[str, str | None] | None:
        """A label every selected label set has, without its source: (key, value) of the first
        ``matchLabels`` entry, else (key, None) for the key of the first ``In``/``Exists``
        expression; None when no label is required (what the selector cache indexes by)."""
        for key, value in self.match_labels:
            return split_key(key)[1], value
        for requirement in self.match_expressions:
            if requirement.operator in ("In", "Exists"):
                return split_key(requirement.key)[1], None
        return None

    def get(self, key: str) -> str | None:
        """The value ``match_labels`` requires for ``key``, if any."""
        for k, v in self.match_labels:
            if k == key:
                return v
        return None

    def with_label(self, key: str, value: str) -> Selector:
        """This selector also requiring ``key=value`` (replacing a ``match_labels`` entry of
        ``key``, as Cilium's ``AddMatch`` does)."""
        labels = dict(self.match_labels)
        labels[key] = value
        return Selector(tuple(sorted(labels.items())), self.match_expressions)

    def with_requirement(self, requirement: Requirement) -> Selector:
        return Selector(self.match_labels, (*self.match_expressions, requirement))

    def matches(self, labels: LabelsLike) -> bool:
        """Whether labels are selected. ``labels`` are Cilium labels: :class:`Label` objects,
        strings like ``k8s:app=web`` / ``reserved:host``, or a ``{"k8s:app": "web"}`` mapping."""
        label_set = labels if isinstance(labels, LabelSet) else LabelSet(labels)
        for key, value in self.match_labels:
            if not label_set.has_value(*_split_key(key), value):
                return False
        return all(r.matches(label_set) for r in self.match_expressions)

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in self.match_labels]
        parts += [str(r) for r in self.match_expressions]
        return ",".join(parts) if parts else "<all>"
