"""Cilium labels and Kubernetes label selectors over them, for ``--label``-style flow filters.

Flow endpoints carry labels as Cilium prints them, ``source:key=value`` (``k8s:app=web``,
``reserved:world``); filters select them with Kubernetes label-selector syntax (``app in (a,b)``,
``!k8s:tier``, ``k8s:replicas>2``) whose keys may carry a Cilium source prefix, a bare key
matching any source, as upstream's ``labels.go`` translates them. The parser validates keys and
values as Kubernetes does, so a typo is an error naming the selector rather than "no flows".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass


class SelectorError(ValueError):
    """A label selector that does not parse; the message names the selector."""


@dataclass(frozen=True, slots=True)
class Label:
    """One Cilium label: ``source:key=value``."""

    source: str
    key: str
    value: str


def parse_label(text: str) -> Label:
    """Parses a Cilium label ``[source:]key[=value]`` (no source → ``unspec``)."""
    source = "unspec"
    colon = text.find(":")
    eq = text.find("=")
    if text.startswith("$"):
        source, text = "reserved", text[1:]
    elif colon >= 0 and (eq < 0 or colon < eq):
        source, text = text[:colon], text[colon + 1 :]
    key, _, value = text.partition("=")
    if source == "reserved" and not key:
        key, value = value, ""
    return Label(source, key, value)


def _lookup(labels: Sequence[Label], source: str, key: str) -> str | None:
    for label in labels:
        if label.key == key and source in ("any", label.source):
            return label.value
    return None


_NAME_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_SELECTOR_TOKEN = re.compile(r"\s*(!=|==|=|!|,|\(|\)|<|>|[^\s!=,()<>]+)")


@dataclass(frozen=True, slots=True)
class Requirement:
    """One requirement of a selector, on one key (of one source, or of ``any``)."""

    source: str
    key: str
    op: str  # "exists", "!", "=", "!=", "in", "notin", "gt", "lt"
    values: frozenset[str]

    def matches(self, labels: Sequence[Label]) -> bool:
        value = _lookup(labels, self.source, self.key)
        op = self.op
        if op == "exists":
            return value is not None
        if op == "!":
            return value is None
        if op in ("=", "in"):
            return value is not None and value in self.values
        if op in ("!=", "notin"):
            return value is None or value not in self.values
        if value is None:
            return False
        try:
            have = int(value)
        except ValueError:
            return False
        (bound,) = self.values
        return have > int(bound) if op == "gt" else have < int(bound)


def _selector_key(token: str, selector: str) -> tuple[str, str]:
    # Upstream translates "src:key" to "src.key" and a bare "key" to "any.key" before k8s
    # parsing, so the source is everything before the first colon.
    source, sep, key = token.partition(":")
    if not sep:
        source, key = "any", token
    if not source or not key:
        raise SelectorError(f"invalid label selector {selector!r}: bad key {token!r}")
    prefix, slash, name = key.rpartition("/")
    if len(name) > 63 or not name or not _NAME_RE.match(name) or (slash and not prefix):
        raise SelectorError(
            f"invalid label selector {selector!r}: key {token!r} is not a valid label key"
        )
    return source, key


def _check_value(value: str, selector: str) -> str:
    if len(value) > 63 or not _NAME_RE.match(value):
        raise SelectorError(
            f"invalid label selector {selector!r}: value {value!r} is not a valid label value"
        )
    return value


def parse_selector(selector: str) -> list[Requirement]:
    """Parses a Kubernetes label selector with Cilium source prefixes (``k8s:app in (a,b)``).

    An empty selector selects everything (as in Kubernetes).
    """
    tokens: list[str] = []
    pos = 0
    text = selector.rstrip()
    while pos < len(text):
        m = _SELECTOR_TOKEN.match(text, pos)
        if m is None:  # pragma: no cover - the pattern accepts any non-space run
            raise SelectorError(f"invalid label selector {selector!r}")
        tokens.append(m.group(1))
        pos = m.end()
    reqs: list[Requirement] = []
    i = 0

    def take() -> str:
        nonlocal i
        if i >= len(tokens):
            raise SelectorError(f"invalid label selector {selector!r}: unexpected end")
        tok = tokens[i]
        i += 1
        return tok

    def peek() -> str | None:
        return tokens[i] if i < len(tokens) else None

    while i < len(tokens):
        tok = take()
        if tok == "!":
            source, key = _selector_key(take(), selector)
            reqs.append(Requirement(source, key, "!", frozenset()))
        else:
            if tok in {",", "(", ")", "=", "==", "!=", "<", ">"}:
                raise SelectorError(f"invalid label selector {selector!r}: unexpected {tok!r}")
            source, key = _selector_key(tok, selector)
            nxt = peek()
            if nxt is None or nxt == ",":
                reqs.append(Requirement(source, key, "exists", frozenset()))
            elif nxt in ("=", "==", "!="):
                take()
                op = "!=" if nxt == "!=" else "="
                value = ""
                if peek() not in (None, ","):
                    value = take()
                    if value in {"(", ")", "=", "==", "!=", "!", "<", ">"}:
                        raise SelectorError(
                            f"invalid label selector {selector!r}: unexpected {value!r}"
                        )
                value = _check_value(value, selector)
                reqs.append(Requirement(source, key, op, frozenset({value})))
            elif nxt in ("in", "notin"):
                take()
                if take() != "(":
                    raise SelectorError(
                        f"invalid label selector {selector!r}: expected '(' after {nxt!r}"
                    )
                values: set[str] = set()
                expect_value = True
                while True:
                    t = take()
                    if t == ")":
                        if expect_value and values:
                            values.add("")  # "in (a,)" has an empty value, as in k8s
                        break
                    if t == ",":
                        if expect_value:
                            values.add("")
                        expect_value = True
                        continue
                    if not expect_value:
                        raise SelectorError(
                            f"invalid label selector {selector!r}: expected ',' or ')' got {t!r}"
                        )
                    values.add(_check_value(t, selector))
                    expect_value = False
                if not values:
                    raise SelectorError(
                        f"invalid label selector {selector!r}: {nxt!r} needs at least one value"
                    )
                reqs.append(Requirement(source, key, nxt, frozenset(values)))
            elif nxt in ("<", ">"):
                take()
                bound = take()
                if not re.fullmatch(r"-?[0-9]+", bound):
                    raise SelectorError(
                        f"invalid label selector {selector!r}: {nxt!r} needs an integer, "
                        f"got {bound!r}"
                    )
                reqs.append(
                    Requirement(source, key, "gt" if nxt == ">" else "lt", frozenset({bound}))
                )
            else:
                raise SelectorError(
                    f"invalid label selector {selector!r}: unexpected {nxt!r} after key {tok!r}"
                )
        nxt = peek()
        if nxt is None:
            break
        if take() != ",":
            raise SelectorError(f"invalid label selector {selector!r}: expected ',' got {nxt!r}")
        if peek() is None:
            raise SelectorError(f"invalid label selector {selector!r}: trailing ','")
    return reqs
