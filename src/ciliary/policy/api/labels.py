"""Cilium labels: ``source:key=value`` strings, and the rules label keys and values follow.

Policy selectors are matched against an endpoint's *security labels*, which Cilium writes with the
source they came from: ``k8s:app=web`` (a pod label), ``k8s:io.kubernetes.pod.namespace=shop`` (its
namespace), ``reserved:host`` (the node itself). A selector key may name a source (``k8s:app``) or
not (``app``, the same as ``any:app``), so matching needs the source kept apart from the key:
:func:`parse_label` (``k8s.labelselector``'s, the one parser of label strings, shared with
Hubble's label filters) splits a label string the way Cilium's ``ParseLabel`` does and
:class:`LabelSet` answers "which values does this key have, from this source or from any".

The key and value syntax checks are Kubernetes' (a label key is a qualified name, optionally
behind a DNS-subdomain prefix; a value is at most 63 characters), applied as Cilium applies them:
to the key with its source folded in as ``source.key``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Final

from ciliary.k8s.labelselector import CiliumLabel as Label
from ciliary.k8s.labelselector import parse_cilium_label as parse_label
from ciliary.k8s.names import KeyFault, is_label_value, label_key_fault

__all__ = [
    "NAMESPACE_LABEL",
    "NAMESPACE_LABELS_PREFIX",
    "POLICY_LABEL_DERIVED_FROM",
    "POLICY_LABEL_NAME",
    "POLICY_LABEL_NAMESPACE",
    "SOURCE_ANY",
    "SOURCE_CIDR_GROUP",
    "SOURCE_K8S",
    "SOURCE_RESERVED",
    "SOURCE_UNSPEC",
    "Label",
    "LabelSet",
    "label_value_problem",
    "parse_label",
    "qualified_name_problem",
    "split_key",
]

SOURCE_ANY: Final = "any"
"""A selector key source that matches labels of every source."""
SOURCE_K8S: Final = "k8s"
SOURCE_RESERVED: Final = "reserved"
SOURCE_UNSPEC: Final = "unspec"
"""The source of a label written without one (Cilium's ``LabelSourceUnspec``)."""
SOURCE_CIDR_GROUP: Final = "cidrgroup"

NAMESPACE_LABEL: Final = "io.kubernetes.pod.namespace"
"""The security label holding a pod's namespace name (source ``k8s``)."""
NAMESPACE_LABELS_PREFIX: Final = "io.cilium.k8s.namespace.labels."
"""Prefix of the security labels carrying the labels of a pod's namespace (source ``k8s``)."""
POLICY_LABEL_NAME: Final = "io.cilium.k8s.policy.name"
POLICY_LABEL_NAMESPACE: Final = "io.cilium.k8s.policy.namespace"
POLICY_LABEL_DERIVED_FROM: Final = "io.cilium.k8s.policy.derived-from"


def split_key(text: str) -> tuple[str, str]:
    """A selector key's (source, key): ``k8s:app`` -> ``("k8s", "app")``, ``app`` -> ``("any",
    "app")``, ``$host`` -> ``("reserved", "host")`` (Cilium's ``GetExtendedKeyFrom``)."""
    if text.startswith("$"):
        return SOURCE_RESERVED, text[1:]
    head, colon, tail = text.partition(":")
    if colon:
        return head or SOURCE_ANY, tail
    return SOURCE_ANY, text


class LabelSet:
    """An immutable set of labels, indexed by key for selector matching.

    Built from :class:`Label` objects, label strings (``k8s:app=web``), or a mapping of
    ``source:key`` to value (``{"k8s:app": "web"}``; a key without source gets ``unspec``).
    """

    __slots__ = ("_by_key", "_labels")

    def __init__(self, labels: Iterable[Label | str] | Mapping[str, str] = ()) -> None:
        items: list[Label] = []
        if isinstance(labels, Mapping):
            for key, value in labels.items():
                items.append(parse_label(f"{key}={value}"))
        else:
            for label in labels:
                items.append(label if isinstance(label, Label) else parse_label(label))
        self._labels: frozenset[Label] = frozenset(items)
        by_key: dict[str, list[Label]] = {}
        for label in sorted(self._labels):
            by_key.setdefault(label.key, []).append(label)
        self._by_key: dict[str, tuple[Label, ...]] = {k: tuple(v) for k, v in by_key.items()}

    def __iter__(self) -> Iterator[Label]:
        return iter(sorted(self._labels))

    def __len__(self) -> int:
        return len(self._labels)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, str):
            try:
                item = parse_label(item)
            except ValueError:
                return False
        return item in self._labels

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelSet) and self._labels == other._labels

    def __hash__(self) -> int:
        return hash(self._labels)

    def __repr__(self) -> str:
        return f"LabelSet({[str(label) for label in self]!r})"

    def values(self, source: str, key: str) -> frozenset[str]:
        """The values of ``key`` among labels of ``source`` (of every source for ``any``)."""
        found = self._by_key.get(key, ())
        if source == SOURCE_ANY:
            return frozenset(label.value for label in found)
        return frozenset(label.value for label in found if label.source == source)

    def pairs(self) -> frozenset[tuple[str, str]]:
        """The (key, value) pairs present, without their source (``("app", "web")`` for
        ``k8s:app=web``)."""
        return frozenset((label.key, label.value) for label in self._labels)

    def has_value(self, source: str, key: str, value: str) -> bool:
        """Whether a label of ``source`` (any source for ``any``) has ``key`` = ``value``
        (``value in values(source, key)``, without building the set)."""
        for label in self._by_key.get(key, ()):
            if label.value == value and source in (SOURCE_ANY, label.source):
                return True
        return False

    def has(self, source: str, key: str) -> bool:
        """Whether a label has ``key`` (from ``source``, or from any source for ``any``)."""
        found = self._by_key.get(key, ())
        return bool(found) if source == SOURCE_ANY else any(lb.source == source for lb in found)


# --------------------------------------------------------------------------------------------
# Kubernetes' label syntax

_KEY_PROBLEMS: dict[KeyFault, str] = {
    KeyFault.SLASHES: "at most one '/' (between a DNS-subdomain prefix and the name)",
    KeyFault.PREFIX_EMPTY: "the prefix {prefix!r} must be a DNS subdomain",
    KeyFault.PREFIX_INVALID: "the prefix {prefix!r} must be a DNS subdomain",
    KeyFault.NAME_EMPTY: "the name part is empty",
    KeyFault.NAME_TOO_LONG: "the name part {name20!r}... is longer than 63 characters",
    KeyFault.NAME_INVALID: (
        "the name part {name!r} must be letters, digits, '-', '_' and '.', starting and"
        " ending with a letter or digit"
    ),
}
_PREFIX_RULE = " (lowercase letters, digits, '-' and '.', at most 253 characters)"


def qualified_name_problem(text: str) -> str | None:
    """What makes ``text`` not a Kubernetes qualified name (``[prefix/]name``), or None: the check
    is :func:`ciliary.k8s.names.label_key_fault`, the words are the policy checker's."""
    fault = label_key_fault(text)
    if fault is None:
        return None
    prefix, _, name = text.rpartition("/")
    problem = _KEY_PROBLEMS[fault].format(prefix=prefix, name=name, name20=name[:20])
    if fault in (KeyFault.PREFIX_EMPTY, KeyFault.PREFIX_INVALID):
        problem += _PREFIX_RULE
    return problem


def label_value_problem(text: str) -> str | None:
    """What makes ``text`` not a Kubernetes label value (empty, or at most 63 characters of
    letters, digits, ``-``, ``_`` and ``.``, alphanumeric at both ends), or None."""
    if is_label_value(text):
        return None
    return (
        "a label value is empty or at most 63 characters of letters, digits, '-', '_' and '.',"
        " starting and ending with a letter or digit"
    )
