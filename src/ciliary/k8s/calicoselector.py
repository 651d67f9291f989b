"""Calico selectors (the subset an IPPool's ``nodeSelector`` needs): one parser, one matcher.

Pools are chosen per node by label selectors in Calico's syntax, so the same pool documents work
unchanged with Calico. The lab checks them when it reads a file and the agent evaluates them when
it allocates; two parsers used to do this and disagreed (the agent took keys that are not label
keys, had no nesting limit, and counted positions from 0), so both now use this one, which is the
stricter: keys are Kubernetes label keys, nesting is limited to 64 levels, positions are 1-based
characters. The semantics are Calico's: ``!=`` and ``not in`` also match label sets without the
key, ``&&`` binds tighter than ``||``, and an empty selector is ``all()``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Final

from ciliary.core.yamldoc import show
from ciliary.k8s.names import label_key_fault

__all__ = ["SELECTOR_SYNTAX", "Selector", "SelectorError", "parse_selector", "selector_text"]

SELECTOR_SYNTAX: Final = (
    'all(), has(k), k == "v", k != "v", k in {"a", "b"}, k not in {"a", "b"}, joined by !, &&,'
    " || and parentheses"
)
_SELECTOR_MAX_DEPTH = 64
_SELECTOR_TOKEN = re.compile(
    r"""(?P<op>&&|\|\||==|!=|[!(){},])|(?P<str>"[^"]*"|'[^']*')|(?P<word>[A-Za-z0-9_./-]+)"""
)


class SelectorError(ValueError):
    """A selector that does not parse; the message says what was expected, and where."""


@dataclasses.dataclass(frozen=True)
class _Token:
    kind: str  # "op", "str", "word" or "end"
    text: str
    position: int  # 1-based character of the selector text

    def shown(self) -> str:
        return "the end" if self.kind == "end" else repr(self.text)

    def is_op(self, text: str) -> bool:
        return self.kind == "op" and self.text == text

    def is_word(self, text: str) -> bool:
        return self.kind == "word" and self.text == text


def _quote(value: str) -> str:
    return f"'{value}'" if '"' in value else f'"{value}"'


class _Expr:
    def matches(self, labels: Mapping[str, str]) -> bool:
        raise NotImplementedError

    def grouped(self) -> str:
        """The canonical text, in parentheses where an operator would bind it apart."""
        return str(self)


@dataclasses.dataclass(frozen=True)
class _All(_Expr):
    def matches(self, labels: Mapping[str, str]) -> bool:
        return True

    def __str__(self) -> str:
        return "all()"


@dataclasses.dataclass(frozen=True)
class _Has(_Expr):
    key: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.key in labels

    def __str__(self) -> str:
        return f"has({self.key})"


@dataclasses.dataclass(frozen=True)
class _In(_Expr):
    """``k == "v"`` (one value), ``k in {...}``; negated: ``k != "v"``, ``k not in {...}``.

    As in Calico, a negated test also selects label sets without the key."""

    key: str
    values: frozenset[str]
    negated: bool

    def matches(self, labels: Mapping[str, str]) -> bool:
        found = self.key in labels and labels[self.key] in self.values
        return found != self.negated

    def __str__(self) -> str:
        if len(self.values) == 1:
            (value,) = self.values
            return f"{self.key} {'!=' if self.negated else '=='} {_quote(value)}"
        inner = ", ".join(_quote(v) for v in sorted(self.values))
        return f"{self.key} {'not in' if self.negated else 'in'} {{{inner}}}"


@dataclasses.dataclass(frozen=True)
class _Not(_Expr):
    operand: _Expr

    def matches(self, labels: Mapping[str, str]) -> bool:
        return not self.operand.matches(labels)

    def __str__(self) -> str:
        return f"!{self.operand.grouped()}"


@dataclasses.dataclass(frozen=True)
class _And(_Expr):
    operands: tuple[_Expr, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(o.matches(labels) for o in self.operands)

    def __str__(self) -> str:
        return " && ".join(o.grouped() if isinstance(o, _Or) else str(o) for o in self.operands)

    def grouped(self) -> str:
        return f"({self})"


@dataclasses.dataclass(frozen=True)
class _Or(_Expr):
    operands: tuple[_Expr, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return any(o.matches(labels) for o in self.operands)

    def __str__(self) -> str:
        return " || ".join(str(o) for o in self.operands)

    def grouped(self) -> str:
        return f"({self})"


@dataclasses.dataclass(frozen=True)
class Selector:
    """A parsed Calico selector (see :func:`parse_selector`)."""

    text: str = dataclasses.field(compare=False)
    expression: _Expr = dataclasses.field(repr=False)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a set of labels (a node's) is selected."""
        return self.expression.matches(labels)

    def __str__(self) -> str:
        """The canonical form: parses back to an equal selector (equality is by the parsed
        expression, not by spelling)."""
        return str(self.expression)


def _tokenize_selector(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            break
        match = _SELECTOR_TOKEN.match(text, position)
        if match is None:
            char = text[position]
            where = f"at character {position + 1}"
            if char in "\"'":
                raise SelectorError(f"unterminated string {where}")
            hint = {"=": " (use == to compare)", "&": " (use &&)", "|": " (use ||)"}.get(char, "")
            raise SelectorError(f"unexpected character {char!r} {where}{hint}")
        tokens.append(_Token(str(match.lastgroup), match.group(), position + 1))
        position = match.end()
    tokens.append(_Token("end", "", len(text) + 1))
    return tokens


class _SelectorParser:
    """Recursive descent over the tokens: ``or := and ('||' and)*``, ``and := unary ('&&'
    unary)*``, ``unary := '!' unary | primary``, ``primary := '(' or ')' | all() | has(k) |
    k == s | k != s | k in set | k not in set``, ``set := '{' [s (',' s)*] '}'``."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.index = 0
        self.depth = 0

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def take(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def expect(self, op: str) -> None:
        token = self.take()
        if not token.is_op(op):
            raise SelectorError(
                f"expected {op!r} at character {token.position}, got {token.shown()}"
            )

    def nest(self) -> None:
        self.depth += 1
        if self.depth > _SELECTOR_MAX_DEPTH:
            raise SelectorError(f"nested more than {_SELECTOR_MAX_DEPTH} levels deep")

    def parse(self) -> _Expr:
        if self.peek().kind == "end":
            return _All()  # an empty selector selects everything, as in Calico
        expression = self.disjunction()
        token = self.peek()
        if token.kind != "end":
            raise SelectorError(
                f"expected &&, || or the end at character {token.position}, got {token.shown()}"
            )
        return expression

    def disjunction(self) -> _Expr:
        operands = [self.conjunction()]
        while self.peek().is_op("||"):
            self.take()
            operands.append(self.conjunction())
        return operands[0] if len(operands) == 1 else _Or(tuple(operands))

    def conjunction(self) -> _Expr:
        operands = [self.unary()]
        while self.peek().is_op("&&"):
            self.take()
            operands.append(self.unary())
        return operands[0] if len(operands) == 1 else _And(tuple(operands))

    def unary(self) -> _Expr:
        if not self.peek().is_op("!"):
            return self.primary()
        self.take()
        self.nest()
        operand = self.unary()
        self.depth -= 1
        return _Not(operand)

    def primary(self) -> _Expr:
        token = self.take()
        if token.is_op("("):
            self.nest()
            expression = self.disjunction()
            self.expect(")")
            self.depth -= 1
            return expression
        if token.kind == "word" and token.text in ("all", "has") and self.peek().is_op("("):
            self.take()
            if token.text == "all":
                self.expect(")")
                return _All()
            key = self.key(self.take())
            self.expect(")")
            return _Has(key)
        if token.kind != "word":
            raise SelectorError(
                f"expected a label key, all(), has(key), '!' or '(' at character"
                f" {token.position}, got {token.shown()}"
            )
        key = self.key(token)
        operator = self.take()
        if operator.is_op("==") or operator.is_op("!="):
            return _In(key, frozenset({self.string()}), operator.text == "!=")
        if operator.is_word("in"):
            return _In(key, self.value_set(), False)
        if operator.is_word("not") and self.peek().is_word("in"):
            self.take()
            return _In(key, self.value_set(), True)
        raise SelectorError(
            f"expected ==, !=, in or not in after {key!r} at character {operator.position},"
            f" got {operator.shown()}"
        )

    def key(self, token: _Token) -> str:
        if token.kind == "word" and label_key_fault(token.text) is None:
            return token.text
        raise SelectorError(
            f"expected a label key at character {token.position}, got {token.shown()}"
        )

    def string(self) -> str:
        token = self.take()
        if token.kind != "str":
            raise SelectorError(
                f"expected a quoted string at character {token.position}, got {token.shown()}"
            )
        return token.text[1:-1]

    def value_set(self) -> frozenset[str]:
        self.expect("{")
        values: set[str] = set()
        if self.peek().is_op("}"):
            self.take()
            return frozenset()
        while True:
            values.add(self.string())
            token = self.take()
            if token.is_op("}"):
                return frozenset(values)
            if not token.is_op(","):
                raise SelectorError(
                    f"expected ',' or '}}' at character {token.position}, got {token.shown()}"
                )


@functools.lru_cache(maxsize=256)
def parse_selector(text: str) -> Selector:
    """Parse a Calico selector of the subset ``nodeSelector`` uses. Raises :class:`SelectorError`.

    ``all()``, ``has(k)``, ``k == "v"``, ``k != "v"``, ``k in {"a", "b"}``, ``k not in {...}``,
    ``!``, ``&&`` (binds tighter than ``||``) and parentheses; keys are Kubernetes label keys,
    values quoted with ``"`` or ``'``. Empty text selects everything, like ``all()``. As in Calico,
    ``!=`` and ``not in`` also select label sets that do not have the key.
    """
    return Selector(text, _SelectorParser(_tokenize_selector(text)).parse())


def selector_text(value: str) -> str:
    """A pydantic validator: ``value`` if it parses, else ValueError in the lab's words."""
    try:
        parse_selector(value)
    except SelectorError as exc:
        raise ValueError(
            f"expected a Calico selector ({SELECTOR_SYNTAX}), got {show(value)}: {exc}"
        ) from None
    return value
