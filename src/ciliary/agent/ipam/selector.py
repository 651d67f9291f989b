"""The subset of Calico's selector language an IPPool's ``nodeSelector`` needs.

Pools are chosen per node by label selectors written in Calico's syntax (``all()``,
``has(k)``, ``k == "v"``, ``k != "v"``, ``k in {"a", "b"}``, ``k not in {…}``, ``!``, ``&&``,
``||``, parentheses), so the same pool documents work unchanged with Calico. The semantics are
Calico's: ``!=`` and ``not in`` also match nodes without the label, ``&&`` binds tighter than
``||``, and an empty selector is ``all()``. A malformed selector is an ``IPAMError`` naming the
selector and the position where parsing failed.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ciliary.agent.ipam.types import IPAMError


class Selector:
    """A parsed selector: ``matches(labels)``; ``str()`` gives it back in canonical form."""

    def matches(self, labels: Mapping[str, str]) -> bool:
        raise NotImplementedError


def _quote(value: str) -> str:
    return f"'{value}'" if '"' in value else f'"{value}"'


@dataclass(frozen=True)
class _All(Selector):
    def matches(self, labels: Mapping[str, str]) -> bool:
        return True

    def __str__(self) -> str:
        return "all()"


@dataclass(frozen=True)
class _Has(Selector):
    key: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.key in labels

    def __str__(self) -> str:
        return f"has({self.key})"


@dataclass(frozen=True)
class _Equal(Selector):
    key: str
    value: str
    negated: bool

    def matches(self, labels: Mapping[str, str]) -> bool:
        return (labels.get(self.key) == self.value) != self.negated

    def __str__(self) -> str:
        return f"{self.key} {'!=' if self.negated else '=='} {_quote(self.value)}"


@dataclass(frozen=True)
class _In(Selector):
    key: str
    values: tuple[str, ...]
    negated: bool

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        return (value is not None and value in self.values) != self.negated

    def __str__(self) -> str:
        inner = ", ".join(_quote(v) for v in self.values)
        return f"{self.key} {'not in' if self.negated else 'in'} {{{inner}}}"


@dataclass(frozen=True)
class _Not(Selector):
    operand: Selector

    def matches(self, labels: Mapping[str, str]) -> bool:
        return not self.operand.matches(labels)

    def __str__(self) -> str:
        return f"!{_group(self.operand)}"


@dataclass(frozen=True)
class _And(Selector):
    operands: tuple[Selector, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(op.matches(labels) for op in self.operands)

    def __str__(self) -> str:
        return " && ".join(_group(op) if isinstance(op, _Or) else str(op) for op in self.operands)


@dataclass(frozen=True)
class _Or(Selector):
    operands: tuple[Selector, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return any(op.matches(labels) for op in self.operands)

    def __str__(self) -> str:
        return " || ".join(str(op) for op in self.operands)


def _group(sel: Selector) -> str:
    return f"({sel})" if isinstance(sel, _And | _Or) else str(sel)


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<op>&&|\|\||==|!=|[!(){},])
      | "(?P<dq>[^"]*)"
      | '(?P<sq>[^']*)'
      | (?P<word>[A-Za-z0-9_][A-Za-z0-9_./\-]*)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str  # "op", "str", "word", "end"
    text: str
    pos: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            tokens.append(_Token("end", "", pos))
            return tokens
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            ch = text[pos]
            what = "unterminated string" if ch in "\"'" else f"unexpected character {ch!r}"
            raise _error(text, pos, what)
        start = m.start(m.lastgroup or 0)
        if m.group("op") is not None:
            tokens.append(_Token("op", m.group("op"), start))
        elif m.group("dq") is not None:
            tokens.append(_Token("str", m.group("dq"), start - 1))
        elif m.group("sq") is not None:
            tokens.append(_Token("str", m.group("sq"), start - 1))
        else:
            tokens.append(_Token("word", m.group("word"), start))
        pos = m.end()


def _error(text: str, pos: int, what: str) -> IPAMError:
    return IPAMError(f"invalid selector {text!r} at position {pos}: {what}", "invalid")


def _show(tok: _Token) -> str:
    if tok.kind == "end":
        return "end of selector"
    if tok.kind == "str":
        return f"string {_quote(tok.text)}"
    return repr(tok.text)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def peek(self, ahead: int = 1) -> _Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def fail(self, expected: str) -> IPAMError:
        return _error(self.text, self.tok.pos, f"expected {expected}, found {_show(self.tok)}")

    def accept(self, kind: str, text: str | None = None) -> _Token | None:
        tok = self.tok
        if tok.kind == kind and (text is None or tok.text == text):
            self.i += 1
            return tok
        return None

    def expect(self, kind: str, text: str | None, expected: str) -> _Token:
        tok = self.accept(kind, text)
        if tok is None:
            raise self.fail(expected)
        return tok

    def parse(self) -> Selector:
        if self.tok.kind == "end":
            return _All()
        sel = self.parse_or()
        if self.tok.kind != "end":
            raise self.fail("'&&', '||' or end of selector")
        return sel

    def parse_or(self) -> Selector:
        operands = [self.parse_and()]
        while self.accept("op", "||"):
            operands.append(self.parse_and())
        return operands[0] if len(operands) == 1 else _Or(tuple(operands))

    def parse_and(self) -> Selector:
        operands = [self.parse_unary()]
        while self.accept("op", "&&"):
            operands.append(self.parse_unary())
        return operands[0] if len(operands) == 1 else _And(tuple(operands))

    def parse_unary(self) -> Selector:
        if self.accept("op", "!"):
            return _Not(self.parse_unary())
        if self.accept("op", "("):
            inner = self.parse_or()
            self.expect("op", ")", "')'")
            return inner
        return self.parse_term()

    def parse_term(self) -> Selector:
        tok = self.tok
        if tok.kind != "word":
            raise self.fail("a label key, all(), has(), '!' or '('")
        if tok.text == "all" and self.peek().text == "(" and self.peek().kind == "op":
            self.i += 2
            self.expect("op", ")", "')' (all() takes no argument)")
            return _All()
        if tok.text == "has" and self.peek().text == "(" and self.peek().kind == "op":
            self.i += 2
            key = self.expect("word", None, "a label key").text
            self.expect("op", ")", "')'")
            return _Has(key)
        self.i += 1
        key = tok.text
        if self.accept("op", "=="):
            return _Equal(key, self.expect("str", None, "a quoted value").text, negated=False)
        if self.accept("op", "!="):
            return _Equal(key, self.expect("str", None, "a quoted value").text, negated=True)
        if self.accept("word", "in"):
            return _In(key, self.parse_set(), negated=False)
        if self.tok.kind == "word" and self.tok.text == "not" and self.peek().text == "in":
            self.i += 2
            return _In(key, self.parse_set(), negated=True)
        raise self.fail(f"'==', '!=', 'in' or 'not in' after label key {key!r}")

    def parse_set(self) -> tuple[str, ...]:
        self.expect("op", "{", "'{'")
        values: list[str] = []
        if self.accept("op", "}"):
            return ()
        while True:
            values.append(self.expect("str", None, "a quoted value").text)
            if self.accept("op", "}"):
                return tuple(dict.fromkeys(values))
            self.expect("op", ",", "',' or '}'")


@functools.lru_cache(maxsize=256)
def parse_selector(text: str) -> Selector:
    """Parse a Calico selector; ``IPAMError`` (kind invalid) when it is malformed."""
    return _Parser(text).parse()
