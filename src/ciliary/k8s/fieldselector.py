"""Kubernetes field selectors: ``?fieldSelector=metadata.name=p1,spec.nodeName!=n2``.

kubectl sends them for ``get --field-selector`` and, with ``metadata.name=X``, for every informer
behind ``wait`` and ``delete --wait``; the agent will watch its node's pods with
``spec.nodeName=<node>``. The grammar is ``k8s.io/apimachinery/pkg/fields``: terms split on
unescaped commas, each ``field=value``, ``field==value`` or ``field!=value`` (operators tried
in that order at each position), values unescaped (``\\,`` ``\\=`` ``\\\\``), an absent field
compared as the empty string. Unlike labels, a resource serves only some fields: kube-apiserver
refuses the others with ``field label not supported: <f>`` (a 400), so :func:`parse_field_selector`
takes the resource's supported set (:func:`supported_fields` gives kube-apiserver's for a kind)
and :func:`object_fields` extracts them from an object as the server compares them.

Signatures for the API server::

    sel = parse_field_selector(text, supported_fields(kind, namespaced))  # FieldSelectorError
    sel.matches(object_fields(obj, sel.fields))
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

__all__ = [
    "FieldRequirement",
    "FieldSelector",
    "FieldSelectorError",
    "object_fields",
    "parse_field_selector",
    "supported_fields",
]


class FieldSelectorError(ValueError):
    """A field selector the server refuses (400 BadRequest); the message is kube-apiserver's."""


FieldOp: TypeAlias = Literal["=", "!="]

# kube-apiserver's extra selectable fields per kind (pkg/registry/*/strategy.go *ToSelectableFields
# and the conversion funcs' allow-lists), beyond metadata.name / metadata.namespace.
_EXTRA_FIELDS: dict[str, tuple[str, ...]] = {
    "Pod": (
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ),
    "Node": ("spec.unschedulable",),
    "Namespace": ("status.phase",),
    "Event": (
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ),
    "Secret": ("type",),
    "ReplicaSet": ("status.replicas",),
    "Service": ("spec.clusterIP", "spec.type"),
}


def supported_fields(kind: str, namespaced: bool) -> frozenset[str]:
    """The fields kube-apiserver lets a list of ``kind`` be selected by (custom resources:
    ``metadata.name`` and ``metadata.namespace`` only; cluster-scoped kinds still accept
    ``metadata.namespace``, which is then empty)."""
    del namespaced  # both scopes accept metadata.namespace, as kube-apiserver does
    return frozenset(("metadata.name", "metadata.namespace", *_EXTRA_FIELDS.get(kind, ())))


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    field: str
    op: FieldOp
    value: str

    def matches(self, fields: Mapping[str, str]) -> bool:
        have = fields.get(self.field, "")
        return have == self.value if self.op == "=" else have != self.value

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")
        return f"{self.field}{self.op}{escaped}"


@dataclass(frozen=True, slots=True)
class FieldSelector:
    """Requirements that must all hold (sorted by field); none selects everything."""

    requirements: tuple[FieldRequirement, ...] = ()

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(r.field for r in self.requirements)

    @property
    def is_everything(self) -> bool:
        return not self.requirements

    def matches(self, fields: Mapping[str, str]) -> bool:
        return all(r.matches(fields) for r in self.requirements)

    def exact(self, field: str) -> str | None:
        """The value ``field=value`` demands, if one does (lets a server look up a single
        ``metadata.name`` instead of scanning a list)."""
        for r in self.requirements:
            if r.field == field and r.op == "=":
                return r.value
        return None

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


def _split_terms(text: str) -> list[str]:
    terms, current, escaped = [], [], False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            current.append(ch)
            escaped = True
        elif ch == ",":
            terms.append("".join(current))
            current = []
        else:
            current.append(ch)
    terms.append("".join(current))
    return terms


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\":
            if i + 1 >= len(value):
                raise FieldSelectorError(
                    f"invalid field selector: unterminated escape in {value!r}"
                )
            nxt = value[i + 1]
            if nxt not in "\\,=":
                raise FieldSelectorError(
                    f"invalid field selector: invalid escape sequence '\\{nxt}' in {value!r}"
                )
            out.append(nxt)
            i += 2
            continue
        if ch in ",=":  # only reachable for '=': commas split terms
            raise FieldSelectorError(f"invalid field selector: unescaped {ch!r} in {value!r}")
        out.append(ch)
        i += 1
    return "".join(out)


def parse_field_selector(text: str, supported: Collection[str] | None = None) -> FieldSelector:
    """Parses ``?fieldSelector=`` text; with ``supported``, any other field is refused with
    kube-apiserver's ``field label not supported: <f>``. Raises :class:`FieldSelectorError`."""
    reqs: list[FieldRequirement] = []
    for term in _split_terms(text):
        if not term:
            continue
        for i in range(len(term)):
            op = next((o for o in ("!=", "==", "=") if term.startswith(o, i)), None)
            if op is not None:
                field, value = term[:i], term[i + len(op) :]
                break
        else:
            raise FieldSelectorError(f"invalid selector: '{text}'; can't understand '{term}'")
        if supported is not None and field not in supported:
            raise FieldSelectorError(f"field label not supported: {field}")
        reqs.append(FieldRequirement(field, "!=" if op == "!=" else "=", _unescape(value)))
    return FieldSelector(tuple(sorted(reqs, key=lambda r: (r.field, r.op, r.value))))


def _as_field_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):  # Go's strconv.FormatBool, as fields.Set carries it
        return "true" if value else "false"
    return str(value)


def object_fields(obj: Mapping[str, Any], fields: Collection[str]) -> dict[str, str]:
    """The values of ``fields`` (dotted paths) in ``obj`` as the server compares them: absent →
    ``""``, booleans ``true``/``false``, numbers in decimal."""
    out: dict[str, str] = {}
    for field in fields:
        node: Any = obj
        for part in field.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if field == "source" and isinstance(node, Mapping):  # Event.source is an object
            node = node.get("component")
        out[field] = _as_field_value(node)
    return out
