"""Kubernetes label selectors: the one parser of the string grammar, and the one matcher.

Three callers speak label selectors and must agree on every corner of them: the API server's
``?labelSelector=`` (``app=web,tier in (a,b),!canary,replicas>2``), objects' ``LabelSelector``
fields (``matchLabels`` / ``matchExpressions``: Deployments, NetworkPolicies, Services' plain
maps) and Hubble's ``--label`` flow filters, whose keys may carry a Cilium label source
(``k8s:app``, ``reserved:host``; a bare key matches any source, as upstream's ``labels.go``
translates ``src:key`` to ``src.key`` before Kubernetes parsing). They all go through
:func:`_parse`, which follows ``k8s.io/apimachinery/pkg/labels`` (lexer tokens, empty values in
``in (a,)`` and ``a=``, keywords allowed as values, ``>``/``<`` only on integers, keys and values
validated), so a typo is an error naming the selector rather than "nothing matched".

- :func:`parse_selector` → :class:`Selector` over ``Mapping[str, str]`` labels (API server);
- :meth:`Selector.from_label_selector` ← the ``LabelSelector`` dict form (``None`` selects
  nothing, ``{}`` everything, as ``metav1.LabelSelectorAsSelector``);
- :func:`parse_cilium_selector` → :class:`CiliumRequirement` list over :class:`CiliumLabel`
  (Hubble filters).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from ciliary.k8s.names import (
    LABEL_VALUE_MAX,
    KeyFault,
    is_label_value,
    is_qualified_name_part,
    label_key_fault,
)

__all__ = [
    "CiliumLabel",
    "CiliumRequirement",
    "Op",
    "Requirement",
    "Selector",
    "SelectorError",
    "label_key_problem",
    "label_value_problem",
    "parse_cilium_label",
    "parse_cilium_selector",
    "parse_selector",
]


class SelectorError(ValueError):
    """A label selector that does not parse or validate; the message names the selector."""


Op: TypeAlias = Literal["exists", "!", "=", "!=", "in", "notin", "gt", "lt"]

_INT_RE = re.compile(r"^[+-]?[0-9]+$")
_TOKEN = re.compile(r"\s*(!=|==|=|!|,|\(|\)|<|>|[^\s!=,()<>]+)")
_SPECIAL = frozenset({"!=", "==", "=", "!", ",", "(", ")", "<", ">"})
_KEYWORDS = frozenset({"in", "notin"})


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a valid label value (None when it is), in kube-apiserver's words:
    at most 63 characters, alphanumeric at both ends, ``-_.`` inside; empty is valid."""
    if len(value) > LABEL_VALUE_MAX:
        return "must be no more than 63 characters"
    if not is_label_value(value):
        return (
            "a valid label must be an empty string or consist of alphanumeric characters, "
            "'-', '_' or '.', and must start and end with an alphanumeric character"
        )
    return None


_BAD_PREFIX = "prefix part must be a lowercase RFC 1123 subdomain of at most 253 characters"
_KEY_PROBLEMS: dict[KeyFault, str] = {
    KeyFault.SLASHES: _BAD_PREFIX,
    KeyFault.PREFIX_EMPTY: "prefix part must be non-empty",
    KeyFault.PREFIX_INVALID: _BAD_PREFIX,
    KeyFault.NAME_EMPTY: "name part must be non-empty",
    KeyFault.NAME_TOO_LONG: "name part must be no more than 63 characters",
    KeyFault.NAME_INVALID: (
        "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
        "start and end with an alphanumeric character"
    ),
}


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid label key (a qualified name: ``[prefix/]name``, the prefix a
    DNS-1123 subdomain of at most 253 characters, the name at most 63), in kube-apiserver's
    words, or None."""
    fault = label_key_fault(key)
    return None if fault is None else _KEY_PROBLEMS[fault]


def _holds(op: str, values: frozenset[str], value: str | None) -> bool:
    """Kubernetes' ``Requirement.Matches`` for one label value (None: the key is absent)."""
    if op == "exists":
        return value is not None
    if op == "!":
        return value is None
    if op in ("=", "in"):
        return value is not None and value in values
    if op in ("!=", "notin"):
        return value is None or value not in values
    if value is None or not _INT_RE.match(value):
        return False
    (bound,) = values
    return int(value) > int(bound) if op == "gt" else int(value) < int(bound)


def _render(key: str, op: str, values: frozenset[str]) -> str:
    if op == "exists":
        return key
    if op == "!":
        return f"!{key}"
    if op in ("in", "notin"):
        listed = ",".join(sorted(values)) if values != {""} else ","  # "()" would not parse
        return f"{key} {op} ({listed})"
    (value,) = values
    sym = {"gt": ">", "lt": "<"}.get(op, op)
    return f"{key}{sym}{value}"


# --------------------------------------------------------------------------- the grammar


def _parse(selector: str) -> list[tuple[str, Op, frozenset[str]]]:
    """Tokens to ``(key, op, values)`` as apimachinery's parser; keys are not validated here."""
    tokens: list[str] = []
    text = selector.rstrip()
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:  # pragma: no cover - the pattern accepts any non-space run
            raise SelectorError(f"invalid label selector {selector!r}")
        tokens.append(m.group(1))
        pos = m.end()
    i = 0

    def fail(why: str) -> SelectorError:
        return SelectorError(f"invalid label selector {selector!r}: {why}")

    def peek() -> str | None:
        return tokens[i] if i < len(tokens) else None

    def take() -> str:
        nonlocal i
        if i >= len(tokens):
            raise fail("unexpected end")
        i += 1
        return tokens[i - 1]

    def take_key() -> str:
        tok = take()
        if tok in _SPECIAL or tok in _KEYWORDS:
            raise fail(f"unexpected {tok!r}, expected a key")
        return tok

    def take_value() -> str:  # keywords are values here, as in the Values lexer context
        tok = take()
        if tok in _SPECIAL:
            raise fail(f"unexpected {tok!r}, expected a value")
        return _checked_value(tok)

    def _checked_value(value: str) -> str:
        problem = label_value_problem(value)
        if problem:
            raise fail(f"value {value!r} is not a valid label value: {problem}")
        return value

    out: list[tuple[str, Op, frozenset[str]]] = []
    while i < len(tokens):
        if peek() == "!":
            take()
            out.append((take_key(), "!", frozenset()))
        else:
            key = take_key()
            nxt = peek()
            if nxt is None or nxt == ",":
                out.append((key, "exists", frozenset()))
            elif nxt in ("=", "==", "!="):
                take()
                value = "" if peek() in (None, ",") else take_value()
                out.append((key, "!=" if nxt == "!=" else "=", frozenset({value})))
            elif nxt in _KEYWORDS:
                take()
                if take() != "(":
                    raise fail(f"expected '(' after {nxt!r}")
                values: set[str] = set()
                expect_value = True
                while True:
                    tok = take()
                    if tok == ")":
                        if expect_value and values:
                            values.add("")  # "in (a,)": an empty value, as in k8s
                        break
                    if tok == ",":
                        if expect_value:
                            values.add("")  # "(,a)" and "(a,,b)"
                        expect_value = True
                        continue
                    if not expect_value or tok in _SPECIAL:
                        raise fail(f"expected ',' or ')' got {tok!r}")
                    values.add(_checked_value(tok))
                    expect_value = False
                if not values:
                    raise fail(f"{nxt!r} needs at least one value")
                out.append((key, "in" if nxt == "in" else "notin", frozenset(values)))
            elif nxt in ("<", ">"):
                take()
                bound = take()
                if not _INT_RE.match(bound):
                    raise fail(f"{nxt!r} needs an integer, got {bound!r}")
                out.append((key, "gt" if nxt == ">" else "lt", frozenset({_checked_value(bound)})))
            else:
                raise fail(f"unexpected {nxt!r} after key {key!r}")
        nxt = peek()
        if nxt is None:
            break
        if take() != ",":
            raise fail(f"expected ',' got {nxt!r}")
        if peek() is None:
            raise fail("trailing ','")
    return out


# --------------------------------------------------------------------------- Kubernetes labels


@dataclass(frozen=True, slots=True)
class Requirement:
    """One requirement on one label key."""

    key: str
    op: Op
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return _holds(self.op, self.values, labels.get(self.key))

    def __str__(self) -> str:
        return _render(self.key, self.op, self.values)


_OPERATORS: dict[str, Op] = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}


@dataclass(frozen=True, slots=True)
class Selector:
    """Requirements that must all hold (sorted by key, as apimachinery sorts them).

    No requirement selects everything; ``nothing`` (a null ``LabelSelector``) selects nothing.
    """

    requirements: tuple[Requirement, ...] = ()
    nothing: bool = False

    @property
    def is_everything(self) -> bool:
        return not self.requirements and not self.nothing

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        if self.nothing:
            return False
        have = labels or {}
        return all(r.matches(have) for r in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> Selector:
        """``key=value`` for every entry (a Service's or ReplicationController's selector)."""
        reqs = [
            Requirement(_checked_key(k, "", ""), "=", frozenset({v})) for k, v in labels.items()
        ]
        return cls(tuple(sorted(reqs, key=lambda r: r.key)))

    @classmethod
    def from_label_selector(cls, doc: Mapping[str, Any] | None, field: str = "") -> Selector:
        """A ``LabelSelector`` object (``matchLabels``, ``matchExpressions``). ``field`` (e.g.
        ``spec.selector``) prefixes the field paths of errors, as kube-apiserver's validation."""
        if doc is None:
            return cls(nothing=True)
        where = f"{field}." if field else ""
        reqs: list[Requirement] = []
        match_labels = doc.get("matchLabels") or {}
        if not isinstance(match_labels, Mapping):
            raise SelectorError(f"{where}matchLabels: Invalid value: must be a map")
        for k, v in match_labels.items():
            path = f"{where}matchLabels"
            key = _checked_key(str(k), path, "")
            if not isinstance(v, str) or label_value_problem(v):
                raise SelectorError(
                    f"{path}: Invalid value: {v!r}: {label_value_problem(str(v)) or 'not a string'}"
                )
            reqs.append(Requirement(key, "=", frozenset({v})))
        exprs = doc.get("matchExpressions") or []
        if not isinstance(exprs, Sequence) or isinstance(exprs, str):
            raise SelectorError(f"{where}matchExpressions: Invalid value: must be a list")
        for n, expr in enumerate(exprs):
            path = f"{where}matchExpressions[{n}]"
            if not isinstance(expr, Mapping):
                raise SelectorError(f"{path}: Invalid value: must be an object")
            key = _checked_key(str(expr.get("key", "")), f"{path}.key", "")
            operator = expr.get("operator")
            if operator not in _OPERATORS:
                raise SelectorError(
                    f"{path}.operator: Invalid value: {operator!r}: not a valid selector operator"
                )
            op = _OPERATORS[str(operator)]
            values = expr.get("values") or []
            if not isinstance(values, Sequence) or isinstance(values, str):
                raise SelectorError(f"{path}.values: Invalid value: must be a list")
            if op in ("in", "notin") and not values:
                raise SelectorError(
                    f"{path}.values: Required value: must be specified when `operator` is "
                    "'In' or 'NotIn'"
                )
            if op in ("exists", "!") and values:
                raise SelectorError(
                    f"{path}.values: Forbidden: may not be specified when `operator` is "
                    "'Exists' or 'DoesNotExist'"
                )
            for v in values:
                problem = label_value_problem(v) if isinstance(v, str) else "not a string"
                if problem:
                    raise SelectorError(f"{path}.values: Invalid value: {v!r}: {problem}")
            reqs.append(Requirement(key, op, frozenset(values)))
        return cls(tuple(sorted(reqs, key=lambda r: r.key)))


def _checked_key(key: str, field: str, selector: str) -> str:
    problem = label_key_problem(key)
    if problem:
        if field:
            raise SelectorError(f"{field}: Invalid value: {key!r}: {problem}")
        raise SelectorError(
            f"invalid label selector {selector!r}: key {key!r} is not a valid label key: {problem}"
        )
    return key


def parse_selector(selector: str) -> Selector:
    """Parses ``?labelSelector=`` text. Raises :class:`SelectorError` (a 400 BadRequest)."""
    reqs = [Requirement(_checked_key(k, "", selector), op, v) for k, op, v in _parse(selector)]
    return Selector(tuple(sorted(reqs, key=lambda r: r.key)))


# --------------------------------------------------------------------------- Cilium labels


@dataclass(frozen=True, order=True, slots=True)
class CiliumLabel:
    """One Cilium label: ``source:key=value`` (``source:key`` when the value is empty)."""

    source: str
    key: str
    value: str = ""

    def __str__(self) -> str:
        if self.value:
            return f"{self.source}:{self.key}={self.value}"
        return f"{self.source}:{self.key}"


def parse_cilium_label(text: str) -> CiliumLabel:
    """Splits a label string as Cilium's ``ParseLabel`` does; ValueError when it has no key.

    ``k8s:app=web`` → ``("k8s", "app", "web")``; ``reserved:host`` → ``("reserved", "host",
    "")``; ``$host`` is short for ``reserved:host`` (and, as upstream, ``reserved:=host`` too); a
    label without a source (``app=web``) gets source ``unspec``. Only the part before the first
    ``=`` is searched for the source, so values may hold ``:``.
    """
    source = ""
    rest = text
    if rest.startswith("$"):
        source, rest = "reserved", rest[1:]
    key, equals, value = rest.partition("=")
    if not source:
        head, colon, tail = key.partition(":")
        if colon:
            source, key = head, tail
    if not key and source == "reserved":
        key, value = value, ""
    if not key:
        raise ValueError(f"label {text!r} has no key")
    return CiliumLabel(source or "unspec", key, value if equals else "")


@dataclass(frozen=True, slots=True)
class CiliumRequirement:
    """One requirement on one key of one label source (``any``: every source)."""

    source: str
    key: str
    op: Op
    values: frozenset[str]

    def matches(self, labels: Sequence[CiliumLabel]) -> bool:
        value = None
        for label in labels:
            if label.key == self.key and self.source in ("any", label.source):
                value = label.value
                break
        return _holds(self.op, self.values, value)


def _cilium_key(token: str, selector: str) -> tuple[str, str]:
    # Upstream translates "src:key" to "src.key" and a bare "key" to "any.key" before k8s
    # parsing, so the source is everything before the first colon.
    source, sep, key = token.partition(":")
    if not sep:
        source, key = "any", token
    if not source or not key:
        raise SelectorError(f"invalid label selector {selector!r}: bad key {token!r}")
    prefix, slash, name = key.rpartition("/")
    if not is_qualified_name_part(name) or (slash and not prefix):
        raise SelectorError(
            f"invalid label selector {selector!r}: key {token!r} is not a valid label key"
        )
    return source, key


def parse_cilium_selector(selector: str) -> list[CiliumRequirement]:
    """Parses a label selector whose keys may carry a Cilium source (``k8s:app in (a,b)``),
    requirements in the order written. An empty selector selects everything."""
    out = []
    for token, op, values in _parse(selector):
        source, key = _cilium_key(token, selector)
        out.append(CiliumRequirement(source, key, op, values))
    return out
