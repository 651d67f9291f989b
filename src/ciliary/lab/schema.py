"""The lab file: a Kubernetes-style multi-document YAML file, parsed and checked before any change.

A lab is described the way a cluster is: one ``Lab`` document (``ciliary.io/v1alpha1``) naming the
nodes and the pod address pools, then ``Namespace`` and ``Pod`` documents (``v1``) with the fields
Kubernetes gives them. Building a lab creates namespaces, veths and BPF state, so every mistake must
be caught here, before anything is created, and reported so that it can be fixed without guessing:
each problem is one line naming the file, the document, the dotted path of the field and what was
expected (``lab.yaml: document 2 (Pod shop/web): spec.containers[0].comand: unknown field``).

Unknown fields are errors (every model forbids extras), values have Kubernetes' types and syntax
(names are DNS-1123 labels, label keys and values follow the label rules), and the checks that span
documents (duplicates, undeclared namespaces or nodes, requested addresses outside the node's pod
CIDR) run after every document has been read. Policy documents are not understood here: their kinds
are registered as *deferred* and kept as raw mappings for the policy layer to parse.

IPAM has two modes. In ``cluster-pool`` mode (the default) node pod CIDRs are derived the way
Cilium's operator does, deterministically: node *i* (file order) gets the *i*-th subnet of the
configured mask size of the first pool CIDR. In ``pools`` mode addresses come from Calico-style
``IPPool`` documents (``projectcalico.org/v3``), carved into blocks that nodes take on demand, with
an optional ``IPAMConfiguration``; a pool's ``nodeSelector`` (a Calico selector, parsed here by
:func:`parse_selector`) picks the nodes, by their ``labels``, that allocate from it automatically.
There are no node CIDRs in that mode, so pod address requests are checked against the pools.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeAlias

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel

from ciliary.core.yamldoc import YAMLDocumentError, load_documents
from ciliary.core.yamldoc import show as _show
from ciliary.k8s.names import (
    is_dns1123_label,
    is_dns1123_subdomain,
    is_label_value,
    label_key_fault,
)

__all__ = [
    "CALICO_API_VERSION",
    "CORE_API_VERSION",
    "DEFAULT_SCENARIO",
    "DEFERRED_KINDS",
    "IMPLICIT_NAMESPACES",
    "IPV4_POOLS_ANNOTATION",
    "IPV6_POOLS_ANNOTATION",
    "LAB_API_VERSION",
    "REQUESTED_IPS_ANNOTATION",
    "Container",
    "ContainerPort",
    "EnvVar",
    "IPAMConfiguration",
    "IPAMConfigurationMetadata",
    "IPAMConfigurationSpec",
    "IPAMMode",
    "IPAMSpec",
    "IPPool",
    "IPPoolMetadata",
    "IPPoolSpec",
    "LabBody",
    "LabFile",
    "LabFileError",
    "LabMetadata",
    "LabSpec",
    "Namespace",
    "NamespaceMetadata",
    "NodeCIDRs",
    "NodeSpec",
    "PodBody",
    "PodMetadata",
    "PodSpec",
    "RawDocument",
    "Selector",
    "SelectorError",
    "load_default",
    "load_lab_file",
    "node_cidrs",
    "parse_documents",
    "parse_lab_text",
    "parse_selector",
    "register_deferred_kind",
    "with_running_pods",
]

LAB_API_VERSION: Final = "ciliary.io/v1alpha1"
CORE_API_VERSION: Final = "v1"
IMPLICIT_NAMESPACES: tuple[str, ...] = ("default", "kube-system")
"""Namespaces that exist in every lab without a Namespace document, as in every cluster."""
CALICO_API_VERSION: Final = "projectcalico.org/v3"
REQUESTED_IPS_ANNOTATION = "cni.projectcalico.org/ipAddrs"
"""Calico's pod annotation: a JSON list of the addresses the pod asks for (one per family)."""
IPV4_POOLS_ANNOTATION = "cni.projectcalico.org/ipv4pools"
"""Calico's pod annotation (``pools`` mode): a JSON list of the IPv4 pools to allocate from."""
IPV6_POOLS_ANNOTATION = "cni.projectcalico.org/ipv6pools"
"""Calico's pod annotation (``pools`` mode): a JSON list of the IPv6 pools to allocate from."""

LAB_NAME_MAX = 20  # the lab name prefixes network namespace names
NODE_NAME_MAX = 15  # node names become interface names (IFNAMSIZ - 1)
OBJECT_NAME_MAX = 63

IPAddress: TypeAlias = IPv4Address | IPv6Address

DEFERRED_KINDS: dict[str, frozenset[str]] = {
    "CiliumNetworkPolicy": frozenset({"cilium.io/v2"}),
    "CiliumClusterwideNetworkPolicy": frozenset({"cilium.io/v2"}),
    "NetworkPolicy": frozenset({"networking.k8s.io/v1"}),
}
"""Kinds this module accepts without understanding them, by kind, with their apiVersions.

Documents of these kinds are kept as :class:`RawDocument` in :attr:`LabFile.other_documents` for
the layer that owns them (policy) to parse; any other unknown kind is an error."""


def register_deferred_kind(kind: str, *api_versions: str) -> None:
    """Accept documents of ``kind`` (with one of ``api_versions``) as raw, deferred documents."""
    if not api_versions:
        raise ValueError(f"register_deferred_kind({kind!r}): give at least one apiVersion")
    DEFERRED_KINDS[kind] = DEFERRED_KINDS.get(kind, frozenset()) | frozenset(api_versions)


# --------------------------------------------------------------------------------------------
# Errors


def _one_line(text: str) -> str:
    return re.sub(r"\s*[\r\n]+\s*", " ", text).strip()


class LabFileError(Exception):
    """A lab file that cannot be used. ``str()`` is the first problem, on one line.

    ``problems`` holds every problem found (one line each, the first equal to ``str(self)``), so a
    front end can show them all at once.
    """

    def __init__(self, problems: str | Sequence[str]) -> None:
        lines = [problems] if isinstance(problems, str) else list(problems)
        if not lines:
            raise ValueError("LabFileError needs at least one problem")
        self.problems: list[str] = [_one_line(p) for p in lines]
        super().__init__(self.problems[0])

    def __str__(self) -> str:
        return self.problems[0]


class _FieldProblemError(ValueError):
    """A validator's complaint about a part of the value it checks (``subpath`` below its field)."""

    def __init__(self, message: str, *subpath: str | int) -> None:
        super().__init__(message)
        self.subpath: tuple[str | int, ...] = subpath


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _format_path(loc: Sequence[str | int]) -> str:
    """``('spec', 'containers', 0, 'name')`` -> ``spec.containers[0].name``; odd keys quoted."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "int_parsing": "an integer",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _error_message(err: Any) -> tuple[list[str | int], str]:
    """Translate one pydantic error into (field path, "what was expected" message)."""
    loc: list[str | int] = list(err.get("loc", ()))
    kind = err.get("type", "")
    value = err.get("input")
    ctx = err.get("ctx") or {}
    key_problem = bool(loc) and loc[-1] == "[key]"
    if key_problem:
        loc = loc[:-1]
    if kind == "extra_forbidden":
        message = "unknown field"
    elif kind == "invalid_key":
        message = f"unknown field (field names are strings, got {_show(value)})"
    elif kind == "missing":
        message = "required field is missing"
    elif kind in _TYPE_WORDS:
        message = f"expected {_TYPE_WORDS[kind]}, got {_show(value)}"
        if kind == "string_type" and isinstance(value, (bool, int, float)):
            message += " (quote it to make it a string)"
    elif kind == "literal_error":
        message = f"expected {ctx.get('expected', 'one of the allowed values')}, got {_show(value)}"
    elif kind == "too_short":
        message = (
            f"expected at least {ctx.get('min_length')} item(s), got {ctx.get('actual_length')}"
        )
    elif kind == "too_long":
        message = (
            f"expected at most {ctx.get('max_length')} item(s), got {ctx.get('actual_length')}"
        )
    elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {
            "greater_than_equal": ">=",
            "greater_than": ">",
            "less_than_equal": "<=",
            "less_than": "<",
        }[kind]
        bound = next(iter(ctx.values()), "?")
        message = f"expected a number {op} {bound}, got {_show(value)}"
    elif kind == "value_error" and isinstance(ctx.get("error"), Exception):
        exc = ctx["error"]
        if isinstance(exc, _FieldProblemError):
            loc.extend(exc.subpath)
        message = str(exc)
    else:
        message = str(err.get("msg", "invalid value")).replace("Input should be", "expected")
        message += f", got {_show(value)}"
    if key_problem:
        message = f"invalid key: {message}"
    return loc, message


# --------------------------------------------------------------------------------------------
# Value syntax (Kubernetes' rules)

_IANA_SVC_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")


def _dns_label(max_len: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not is_dns1123_label(value, max_len):
            raise ValueError(
                "expected a DNS-1123 label (lowercase letters, digits and '-', starting and ending"
                f" with a letter or digit, at most {max_len} characters), got {_show(value)}"
            )
        return value

    return check


def _label_key(value: str) -> str:
    expected = (
        "expected a label key ([prefix/]name: name at most 63 characters of letters, digits,"
        " '-', '_' and '.', starting and ending with a letter or digit; optional prefix a DNS"
        f" subdomain), got {_show(value)}"
    )
    if label_key_fault(value) is not None:
        raise ValueError(expected)
    return value


def _label_value(value: str) -> str:
    if not is_label_value(value):
        raise ValueError(
            "expected a label value (empty, or at most 63 characters of letters, digits, '-', '_'"
            f" and '.', starting and ending with a letter or digit), got {_show(value)}"
        )
    return value


def _port_name(value: str) -> str:
    # Kubernetes' IANA_SVC_NAME: at most 15 characters, lowercase alphanumerics and '-', at least
    # one letter, no '--', not starting or ending with '-'.
    if (
        len(value) > 15
        or not _IANA_SVC_NAME.fullmatch(value)
        or "--" in value
        or not re.search("[a-z]", value)
    ):
        raise ValueError(
            "expected a port name (at most 15 lowercase letters, digits and '-', with at least one"
            f" letter, no '--', not starting or ending with '-'), got {_show(value)}"
        )
    return value


def _env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise ValueError(
            "expected an environment variable name (letters, digits, '_', '-' and '.', not"
            f" starting with a digit), got {_show(value)}"
        )
    return value


def _network(family: int) -> Callable[[object], object]:
    cls: type[IPv4Network | IPv6Network] = IPv4Network if family == 4 else IPv6Network
    example = "10.200.0.0/16" if family == 4 else "fd00:10:200::/104"

    def parse(value: object) -> object:
        if not isinstance(value, str):
            raise ValueError(f"expected an IPv{family} CIDR like {example}, got {_show(value)}")
        try:
            return cls(value.strip(), strict=True)
        except ValueError as exc:
            raise ValueError(
                f"expected an IPv{family} CIDR like {example}, got {_show(value)} ({exc})"
            ) from None

    return parse


LabName = Annotated[str, AfterValidator(_dns_label(LAB_NAME_MAX))]
NodeName = Annotated[str, AfterValidator(_dns_label(NODE_NAME_MAX))]
ObjectName = Annotated[str, AfterValidator(_dns_label(OBJECT_NAME_MAX))]
LabelKey = Annotated[str, AfterValidator(_label_key)]
LabelValue = Annotated[str, AfterValidator(_label_value)]
Labels = dict[LabelKey, LabelValue]
Annotations = dict[LabelKey, str]
PortName = Annotated[str, AfterValidator(_port_name)]
EnvName = Annotated[str, AfterValidator(_env_name)]
V4Network = Annotated[IPv4Network, BeforeValidator(_network(4))]
V6Network = Annotated[IPv6Network, BeforeValidator(_network(6))]


def _parse_requested_ips(value: str) -> list[IPAddress]:
    """Parse the requested-IPs annotation: a JSON list of at most one address per family."""
    expected = 'expected a JSON list of addresses like ["10.200.0.50", "fd00:10:200::32"]'
    try:
        items = json.loads(value)
    except (ValueError, RecursionError):
        raise ValueError(f"{expected}, got {_show(value)} (not JSON)") from None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"{expected}, got {_show(value)}")
    addresses: list[IPAddress] = []
    for item in items:
        try:
            address = ipaddress.ip_address(item.strip())
        except ValueError:
            raise ValueError(f"{expected}: {_show(item)} is not an IP address") from None
        if isinstance(address, IPv6Address) and address.scope_id:
            raise ValueError(f"{expected}: {_show(item)} has a zone, pod addresses have none")
        if any(a.version == address.version for a in addresses):
            raise ValueError(
                f"{expected}: more than one IPv{address.version} address (a pod has one per family)"
            )
        addresses.append(address)
    return addresses


def _dns_subdomain(value: str) -> str:
    if not is_dns1123_subdomain(value):
        raise ValueError(
            "expected a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', each"
            " dot-separated part starting and ending with a letter or digit, at most 253"
            f" characters), got {_show(value)}"
        )
    return value


_POOLS_EXPECTED = 'expected a JSON list of IP pool names like ["pool-a", "pool-b"]'


def _parse_pool_names(value: str) -> list[str]:
    """Parse an ``ipv4pools``/``ipv6pools`` annotation: a JSON list of pool names."""
    try:
        items = json.loads(value)
    except (ValueError, RecursionError):
        raise ValueError(f"{_POOLS_EXPECTED}, got {_show(value)} (not JSON)") from None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"{_POOLS_EXPECTED}, got {_show(value)}")
    return list(items)


# --------------------------------------------------------------------------------------------
# Calico selectors (the subset an IPPool's nodeSelector needs)

_SELECTOR_SYNTAX: Final = (
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


class _Expr:
    def matches(self, labels: Mapping[str, str]) -> bool:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class _All(_Expr):
    def matches(self, labels: Mapping[str, str]) -> bool:
        return True


@dataclasses.dataclass(frozen=True)
class _Has(_Expr):
    key: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.key in labels


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


@dataclasses.dataclass(frozen=True)
class _Not(_Expr):
    operand: _Expr

    def matches(self, labels: Mapping[str, str]) -> bool:
        return not self.operand.matches(labels)


@dataclasses.dataclass(frozen=True)
class _And(_Expr):
    operands: tuple[_Expr, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(o.matches(labels) for o in self.operands)


@dataclasses.dataclass(frozen=True)
class _Or(_Expr):
    operands: tuple[_Expr, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return any(o.matches(labels) for o in self.operands)


@dataclasses.dataclass(frozen=True)
class Selector:
    """A parsed Calico selector (see :func:`parse_selector`)."""

    text: str
    expression: _Expr = dataclasses.field(repr=False, compare=False)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a set of labels (a node's) is selected."""
        return self.expression.matches(labels)


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
        if token.kind == "word":
            with contextlib.suppress(ValueError):
                return _label_key(token.text)
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


def parse_selector(text: str) -> Selector:
    """Parse a Calico selector of the subset ``nodeSelector`` uses. Raises :class:`SelectorError`.

    ``all()``, ``has(k)``, ``k == "v"``, ``k != "v"``, ``k in {"a", "b"}``, ``k not in {...}``,
    ``!``, ``&&`` (binds tighter than ``||``) and parentheses; keys are Kubernetes label keys,
    values quoted with ``"`` or ``'``. Empty text selects everything, like ``all()``. As in Calico,
    ``!=`` and ``not in`` also select label sets that do not have the key.
    """
    return Selector(text, _SelectorParser(_tokenize_selector(text)).parse())


def _selector_text(value: str) -> str:
    try:
        parse_selector(value)
    except SelectorError as exc:
        raise ValueError(
            f"expected a Calico selector ({_SELECTOR_SYNTAX}), got {_show(value)}: {exc}"
        ) from None
    return value


_LINK_LOCAL: dict[int, IPv4Network | IPv6Network] = {
    4: IPv4Network("169.254.0.0/16"),
    6: IPv6Network("fe80::/10"),
}


def _pool_cidr(value: object) -> object:
    expected = "expected an IPv4 or IPv6 CIDR like 10.244.0.0/16 or fd00:10:244::/64"
    if not isinstance(value, str):
        raise ValueError(f"{expected}, got {_show(value)}")
    text = value.strip()
    if "/" not in text:
        raise ValueError(f"{expected}, got {_show(value)} (no prefix length)")
    if "%" in text:
        raise ValueError(f"{expected}, got {_show(value)} (a pool has no zone)")
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"{expected}, got {_show(value)} ({exc})") from None
    link_local = _LINK_LOCAL[network.version]
    if _overlap(network, link_local):
        raise ValueError(
            f"{network} overlaps the IPv{network.version} link-local range {link_local}"
            " (pod addresses cannot be link-local)"
        )
    return network


# --------------------------------------------------------------------------------------------
# Models


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        populate_by_name=True,
        alias_generator=to_camel,
    )


class NodeSpec(_Model):
    """One node of the lab (a network namespace on this machine).

    ``labels`` are the node's Kubernetes labels; in ``pools`` mode IP pools select nodes by them
    (``nodeSelector``), and the lab gives them to the node's agent."""

    name: NodeName
    labels: Labels = Field(default_factory=dict)


IPAMMode: TypeAlias = Literal["cluster-pool", "pools"]


class IPAMSpec(_Model):
    """How pod addresses are allocated.

    ``cluster-pool`` (the default), with Cilium's option names: each node gets a pod CIDR cut
    from the pool; an empty pool list disables that family. ``pools``: addresses come from the
    file's ``IPPool`` documents (:attr:`LabFile.ip_pools`); the ``clusterPool*`` options must not
    be given, and the model holds empty cluster pools (no node CIDRs, see :func:`node_cidrs`).
    """

    mode: IPAMMode = "cluster-pool"
    cluster_pool_ipv4_pod_cidr_list: list[V4Network] = Field(
        default_factory=lambda: [IPv4Network("10.200.0.0/16")], alias="clusterPoolIPv4PodCIDRList"
    )
    cluster_pool_ipv4_mask_size: int = Field(default=24, alias="clusterPoolIPv4MaskSize")
    cluster_pool_ipv6_pod_cidr_list: list[V6Network] = Field(
        default_factory=lambda: [IPv6Network("fd00:10:200::/104")],
        alias="clusterPoolIPv6PodCIDRList",
    )
    cluster_pool_ipv6_mask_size: int = Field(default=120, alias="clusterPoolIPv6MaskSize")

    @field_validator("cluster_pool_ipv4_mask_size")
    @classmethod
    def _check_v4_mask(cls, value: int, info: ValidationInfo) -> int:
        return _check_mask(value, info.data.get("cluster_pool_ipv4_pod_cidr_list"), 4)

    @field_validator("cluster_pool_ipv6_mask_size")
    @classmethod
    def _check_v6_mask(cls, value: int, info: ValidationInfo) -> int:
        return _check_mask(value, info.data.get("cluster_pool_ipv6_pod_cidr_list"), 6)

    @model_validator(mode="before")
    @classmethod
    def _no_cluster_pool_in_pools_mode(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("mode") != "pools":
            return data
        for name, info in cls.model_fields.items():
            for key in (info.alias, name):
                if name != "mode" and key in data:
                    raise _FieldProblemError(
                        "only valid with mode cluster-pool (in mode pools, addresses come from"
                        " IPPool documents)",
                        str(key),
                    )
        return {**data, "clusterPoolIPv4PodCIDRList": [], "clusterPoolIPv6PodCIDRList": []}

    @model_serializer(mode="wrap")
    def _dump_without_cluster_pool_in_pools_mode(
        self, handler: SerializerFunctionWrapHandler
    ) -> Any:
        data = handler(self)
        if self.mode == "pools" and isinstance(data, dict):
            for name, info in type(self).model_fields.items():
                if name != "mode":
                    data.pop(name, None)
                    data.pop(info.alias, None)
        return data

    @model_validator(mode="after")
    def _one_family(self) -> IPAMSpec:
        if self.mode != "cluster-pool":
            return self
        if not self.cluster_pool_ipv4_pod_cidr_list and not self.cluster_pool_ipv6_pod_cidr_list:
            raise ValueError(
                "expected at least one of clusterPoolIPv4PodCIDRList and"
                " clusterPoolIPv6PodCIDRList to be non-empty"
            )
        return self

    @property
    def ipv4_pool(self) -> IPv4Network | None:
        """The pool node IPv4 CIDRs are cut from (the first of the list), None if disabled."""
        pools = self.cluster_pool_ipv4_pod_cidr_list
        return pools[0] if pools else None

    @property
    def ipv6_pool(self) -> IPv6Network | None:
        pools = self.cluster_pool_ipv6_pod_cidr_list
        return pools[0] if pools else None

    def capacity(self) -> int:
        """How many nodes the pools can give a pod CIDR to (the smaller of the families).

        Only for ``cluster-pool`` mode: in ``pools`` mode nodes take blocks on demand and
        :class:`ValueError` is raised."""
        if self.mode != "cluster-pool":
            raise ValueError("capacity(): mode pools has no node CIDRs (nodes take blocks)")
        sizes = []
        if self.ipv4_pool is not None:
            sizes.append(1 << (self.cluster_pool_ipv4_mask_size - self.ipv4_pool.prefixlen))
        if self.ipv6_pool is not None:
            sizes.append(1 << (self.cluster_pool_ipv6_mask_size - self.ipv6_pool.prefixlen))
        return min(sizes)


def _check_mask(value: int, pools: object, family: int) -> int:
    bits, largest = (32, 30) if family == 4 else (128, 126)
    smallest = 1
    if isinstance(pools, list) and pools:
        smallest = max(p.prefixlen for p in pools if isinstance(p, (IPv4Network, IPv6Network)))
    if not smallest <= value <= largest:
        why = f"the pool prefix is /{smallest}" if smallest > 1 else f"{bits}-bit addresses"
        raise ValueError(
            f"expected a mask size between {smallest} and {largest} ({why}; a node CIDR needs room"
            f" for the network and router addresses and a pod), got {_show(value)}"
        )
    return value


class LabMetadata(_Model):
    name: LabName


_HUBBLE_METRIC_NAMES = frozenset(
    {"dns", "drop", "tcp", "flow", "port-distribution", "icmp", "policy", "flows-to-world",
     "http", "httpV2", "kafka"}
)  # fmt: skip


_DEFAULT_HUBBLE_METRICS = ("dns", "drop", "tcp", "flow", "port-distribution", "icmp", "policy")


def _hubble_metric(text: str) -> str:
    name = text.split(":", 1)[0]
    if name not in _HUBBLE_METRIC_NAMES:
        raise ValueError(
            f"unknown Hubble metric {name!r} (expected one of "
            f"{', '.join(sorted(_HUBBLE_METRIC_NAMES))}, optionally with ':option=value;...')"
        )
    return text


def _capacity(value: int) -> int:
    if not 1 <= value <= 65535 or (value + 1) & value:
        raise ValueError(f"{value} is not 2^n-1 between 1 and 65535 (e.g. 4095, 8191, 65535)")
    return value


def _listen_address(text: str) -> str:
    if text == "":
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not host:port (e.g. 127.0.0.1:4245, :4245)")
    if host not in ("", "localhost") and not host.startswith("127.") and host != "[::1]":
        raise ValueError(f"{text!r}: the relay listens on loopback only (127.0.0.1, [::1])")
    return text


class HubbleRelaySpec(_Model):
    """The lab's Hubble Relay (one per lab, in the root netns)."""

    enabled: bool = True
    listen_address: Annotated[str, AfterValidator(_listen_address)] = ""
    """``""``: a root-only unix socket in the lab's directory; a loopback ``host:port`` (port 0:
    a free one) serves TLS and requires client certificates (the lab's CA issues them)."""


class HubbleExportSpec(_Model):
    """Flow export to JSON lines on each node (upstream's ``hubble-export-file-*``)."""

    enabled: bool = False
    max_size_mb: int = Field(default=10, ge=1)
    max_backups: int = Field(default=5, ge=0)


class HubbleSpec(_Model):
    """Hubble on every node of the lab, with the metrics a Helm install usually enables."""

    enabled: bool = True
    event_buffer_capacity: Annotated[int, AfterValidator(_capacity)] = 4095
    metrics: list[Annotated[str, AfterValidator(_hubble_metric)]] = Field(
        default_factory=lambda: [*_DEFAULT_HUBBLE_METRICS]
    )
    relay: HubbleRelaySpec = Field(default_factory=HubbleRelaySpec)
    export: HubbleExportSpec = Field(default_factory=HubbleExportSpec)


class LabBody(_Model):
    """The ``spec`` of the Lab document."""

    ipam: IPAMSpec = Field(default_factory=IPAMSpec)
    monitor_aggregation: Literal["none", "medium"] = "medium"
    hubble: HubbleSpec = Field(default_factory=HubbleSpec)
    nodes: list[NodeSpec] = Field(min_length=1)

    @field_validator("nodes")
    @classmethod
    def _check_nodes(cls, nodes: list[NodeSpec], info: ValidationInfo) -> list[NodeSpec]:
        first: dict[str, int] = {}
        for i, node in enumerate(nodes):
            if node.name in first:
                raise _FieldProblemError(
                    f"duplicate node name {node.name!r} (also spec.nodes[{first[node.name]}])",
                    i,
                    "name",
                )
            first[node.name] = i
        ipam = info.data.get("ipam")
        if (
            isinstance(ipam, IPAMSpec)
            and ipam.mode == "cluster-pool"
            and len(nodes) > ipam.capacity()
        ):
            pools = []
            if ipam.ipv4_pool is not None:
                pools.append(f"{ipam.ipv4_pool} in /{ipam.cluster_pool_ipv4_mask_size} subnets")
            if ipam.ipv6_pool is not None:
                pools.append(f"{ipam.ipv6_pool} in /{ipam.cluster_pool_ipv6_mask_size} subnets")
            raise ValueError(
                f"{len(nodes)} nodes do not fit in the pod CIDR pool ({' and '.join(pools)}"
                f" holds {ipam.capacity()} nodes)"
            )
        return nodes


class LabSpec(_Model):
    """The ``Lab`` document: the lab's name, its nodes and how pod addresses are allocated."""

    api_version: Literal["ciliary.io/v1alpha1"] = LAB_API_VERSION
    kind: Literal["Lab"] = "Lab"
    metadata: LabMetadata
    spec: LabBody

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def nodes(self) -> list[NodeSpec]:
        return self.spec.nodes

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.spec.nodes]

    @property
    def ipam(self) -> IPAMSpec:
        return self.spec.ipam


EncapsulationMode: TypeAlias = Literal["Never", "Always", "CrossSubnet"]
PoolUse: TypeAlias = Literal["Workload", "Tunnel"]
PoolName = Annotated[str, AfterValidator(_dns_subdomain)]
PoolCIDR = Annotated[IPv4Network | IPv6Network, BeforeValidator(_pool_cidr)]
NodeSelector = Annotated[str, AfterValidator(_selector_text)]


def _all_uses() -> list[PoolUse]:
    return ["Workload", "Tunnel"]


_BLOCK_SIZES: dict[int, tuple[int, int, int]] = {4: (20, 32, 26), 6: (116, 128, 122)}
"""Per family: the smallest and largest block prefix length Calico accepts, and its default."""


class IPPoolMetadata(_Model):
    name: PoolName
    labels: Labels = Field(default_factory=dict)
    annotations: Annotations = Field(default_factory=dict)


class IPPoolSpec(_Model):
    """The ``spec`` of an IPPool, with Calico's fields and defaults."""

    cidr: PoolCIDR
    block_size: int = Field(default=None, validate_default=True)
    ipip_mode: EncapsulationMode = "Never"
    vxlan_mode: EncapsulationMode = "Never"
    nat_outgoing: bool = False
    disabled: bool = False
    node_selector: NodeSelector = "all()"
    allowed_uses: list[PoolUse] = Field(default_factory=_all_uses, min_length=1)
    assignment_mode: Literal["Automatic", "Manual"] = "Automatic"

    @field_validator("block_size", mode="before")
    @classmethod
    def _default_block_size(cls, value: object, info: ValidationInfo) -> object:
        if value is not None:
            return value
        cidr = info.data.get("cidr")
        return _BLOCK_SIZES[cidr.version if isinstance(cidr, IPv6Network) else 4][2]

    @field_validator("block_size")
    @classmethod
    def _check_block_size(cls, value: int, info: ValidationInfo) -> int:
        cidr = info.data.get("cidr")
        if not isinstance(cidr, IPv4Network | IPv6Network):
            return value
        smallest, largest, _ = _BLOCK_SIZES[cidr.version]
        if not smallest <= value <= largest:
            raise ValueError(
                f"expected a block size between {smallest} and {largest} for an"
                f" IPv{cidr.version} pool, got {_show(value)}"
            )
        return value

    @field_validator("allowed_uses")
    @classmethod
    def _unique_uses(cls, uses: list[str]) -> list[str]:
        for i, use in enumerate(uses):
            if use in uses[:i]:
                raise _FieldProblemError(f"{use} is given twice", i)
        return uses

    @model_validator(mode="after")
    def _check_pool(self) -> IPPoolSpec:
        if self.ipip_mode != "Never" and self.vxlan_mode != "Never":
            raise _FieldProblemError(
                f"ipipMode and vxlanMode cannot both be enabled (ipipMode is {self.ipip_mode});"
                " set one of them to Never",
                "vxlanMode",
            )
        if self.cidr.version == 6 and self.ipip_mode != "Never":
            raise _FieldProblemError(
                "expected Never for an IPv6 pool (IPIP carries IPv4 only; use vxlanMode), got"
                f" {_show(self.ipip_mode)}",
                "ipipMode",
            )
        if self.block_size < self.cidr.prefixlen:
            if "block_size" in self.model_fields_set:
                raise _FieldProblemError(
                    f"expected a block size of at least the pool's prefix length"
                    f" {self.cidr.prefixlen} (a block lies inside the pool), got"
                    f" {_show(self.block_size)}",
                    "blockSize",
                )
            raise _FieldProblemError(
                f"{self.cidr} is smaller than one block (/{self.block_size}, the default"
                f" blockSize for IPv{self.cidr.version}); set blockSize to at least"
                f" {self.cidr.prefixlen}",
                "cidr",
            )
        return self


class IPPool(_Model):
    """An ``IPPool`` document (``projectcalico.org/v3``): a range pods take addresses from.

    ``pools`` mode only. :meth:`to_calico_json` is the document in Calico's JSON shape."""

    api_version: Literal["projectcalico.org/v3"] = CALICO_API_VERSION
    kind: Literal["IPPool"] = "IPPool"
    metadata: IPPoolMetadata
    spec: IPPoolSpec

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def cidr(self) -> IPv4Network | IPv6Network:
        return self.spec.cidr

    @property
    def version(self) -> int:
        """4 or 6."""
        return self.spec.cidr.version

    @property
    def enabled(self) -> bool:
        return not self.spec.disabled

    @property
    def for_workloads(self) -> bool:
        """Whether pods may take addresses from it (``allowedUses`` has Workload)."""
        return "Workload" in self.spec.allowed_uses

    @property
    def automatic(self) -> bool:
        """Whether pods that name no pool take addresses from it (``assignmentMode``)."""
        return self.spec.assignment_mode == "Automatic"

    @property
    def selector(self) -> Selector:
        """``spec.nodeSelector``, parsed."""
        return parse_selector(self.spec.node_selector)

    def selects(self, node_labels: Mapping[str, str]) -> bool:
        """Whether the pool's ``nodeSelector`` selects a node with these labels."""
        return self.selector.matches(node_labels)

    def to_calico_json(self) -> dict[str, Any]:
        """The document as Calico stores it: apiVersion, kind, metadata, spec (defaults filled)."""
        return self.model_dump(by_alias=True, mode="json")


def _ipam_configuration_name(value: str) -> str:
    if value != "default":
        raise ValueError(
            f"expected 'default' (Calico reads one IPAMConfiguration, named default), got"
            f" {_show(value)}"
        )
    return value


class IPAMConfigurationMetadata(_Model):
    name: Annotated[str, AfterValidator(_ipam_configuration_name)]
    labels: Labels = Field(default_factory=dict)
    annotations: Annotations = Field(default_factory=dict)


class IPAMConfigurationSpec(_Model):
    """Calico's IPAM settings: block affinity and how many blocks a node may take."""

    strict_affinity: bool = False
    max_blocks_per_host: int = Field(default=20, ge=0, le=2**31 - 1)
    """0 means unlimited."""
    auto_allocate_blocks: bool = True


class IPAMConfiguration(_Model):
    """The ``IPAMConfiguration`` document (``projectcalico.org/v3``), named ``default``.

    ``pools`` mode only; :attr:`LabFile.ipam_config` holds the defaults when the file has none."""

    api_version: Literal["projectcalico.org/v3"] = CALICO_API_VERSION
    kind: Literal["IPAMConfiguration"] = "IPAMConfiguration"
    metadata: IPAMConfigurationMetadata
    spec: IPAMConfigurationSpec = Field(default_factory=IPAMConfigurationSpec)

    def to_calico_json(self) -> dict[str, Any]:
        """The document as Calico stores it: apiVersion, kind, metadata, spec (defaults filled)."""
        return self.model_dump(by_alias=True, mode="json")


def _default_ipam_configuration() -> IPAMConfiguration:
    return IPAMConfiguration(metadata=IPAMConfigurationMetadata(name="default"))


class NamespaceMetadata(_Model):
    name: ObjectName
    labels: Labels = Field(default_factory=dict)
    annotations: Annotations = Field(default_factory=dict)


class Namespace(_Model):
    """A ``Namespace`` document; its labels select pods in policies (``namespaceSelector``)."""

    api_version: Literal["v1"] = CORE_API_VERSION
    kind: Literal["Namespace"] = "Namespace"
    metadata: NamespaceMetadata

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def labels(self) -> dict[str, str]:
        return self.metadata.labels


class EnvVar(_Model):
    name: EnvName
    value: str = ""


class ContainerPort(_Model):
    """A declared container port; its name can be used in policies (``toPorts`` named ports)."""

    name: PortName | None = None
    container_port: int = Field(ge=1, le=65535)
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"


class Container(_Model):
    """A container: here only a command line, run in the pod's network namespace."""

    name: ObjectName
    image: str | None = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    command: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)
    working_dir: str | None = None
    ports: list[ContainerPort] = Field(default_factory=list)

    @field_validator("ports")
    @classmethod
    def _unique_port_names(cls, ports: list[ContainerPort]) -> list[ContainerPort]:
        first: dict[str, int] = {}
        for i, port in enumerate(ports):
            if port.name is None:
                continue
            if port.name in first:
                raise _FieldProblemError(
                    f"duplicate port name {port.name!r} (also ports[{first[port.name]}])", i, "name"
                )
            first[port.name] = i
        return ports

    def argv(self) -> list[str]:
        return [*self.command, *self.args]


class PodMetadata(_Model):
    name: ObjectName
    namespace: ObjectName = "default"
    labels: Labels = Field(default_factory=dict)
    annotations: Annotations = Field(default_factory=dict)

    @field_validator("annotations")
    @classmethod
    def _check_requested_ips(cls, annotations: dict[str, str]) -> dict[str, str]:
        value = annotations.get(REQUESTED_IPS_ANNOTATION)
        if value is not None:
            try:
                _parse_requested_ips(value)
            except ValueError as exc:
                raise _FieldProblemError(str(exc), REQUESTED_IPS_ANNOTATION) from None
        for key in (IPV4_POOLS_ANNOTATION, IPV6_POOLS_ANNOTATION):
            value = annotations.get(key)
            if value is not None:
                try:
                    _parse_pool_names(value)
                except ValueError as exc:
                    raise _FieldProblemError(str(exc), key) from None
        return annotations


class PodBody(_Model):
    """The ``spec`` of a Pod document (Kubernetes' ``PodSpec``)."""

    node_name: NodeName | None = None
    restart_policy: Literal["Always", "OnFailure", "Never"] = "Always"
    termination_grace_period_seconds: int = Field(default=30, ge=0, le=2**63 - 1)
    containers: list[Container] = Field(min_length=1)

    @field_validator("containers")
    @classmethod
    def _check_containers(cls, containers: list[Container]) -> list[Container]:
        first: dict[str, int] = {}
        for i, container in enumerate(containers):
            if container.name in first:
                raise _FieldProblemError(
                    f"duplicate container name {container.name!r}"
                    f" (also spec.containers[{first[container.name]}])",
                    i,
                    "name",
                )
            first[container.name] = i
        if not any(c.argv() for c in containers):
            raise ValueError(
                "expected at least one container with a command (command or args), e.g."
                " command: [ciliary, workload, pause]"
            )
        return containers


class PodSpec(_Model):
    """A ``Pod`` document. In a :class:`LabFile` its namespace and node are resolved."""

    api_version: Literal["v1"] = CORE_API_VERSION
    kind: Literal["Pod"] = "Pod"
    metadata: PodMetadata
    spec: PodBody

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @property
    def key(self) -> str:
        """``namespace/name``, unique in a lab."""
        return f"{self.metadata.namespace}/{self.metadata.name}"

    @property
    def labels(self) -> dict[str, str]:
        return self.metadata.labels

    @property
    def annotations(self) -> dict[str, str]:
        return self.metadata.annotations

    @property
    def containers(self) -> list[Container]:
        return self.spec.containers

    @property
    def node_name(self) -> str:
        """The node the pod runs on. Always set for pods of a :class:`LabFile`."""
        if self.spec.node_name is None:
            raise RuntimeError(f"pod {self.key} has not been assigned a node")
        return self.spec.node_name

    def with_node(self, node_name: str) -> PodSpec:
        return self.model_copy(
            update={"spec": self.spec.model_copy(update={"node_name": node_name})}
        )

    def requested_ips(self) -> list[IPAddress]:
        """Addresses asked for with the ``cni.projectcalico.org/ipAddrs`` annotation."""
        value = self.metadata.annotations.get(REQUESTED_IPS_ANNOTATION)
        return [] if value is None else _parse_requested_ips(value)

    def requested_pools(self, version: int) -> list[str] | None:
        """The IPv``version`` pools named by ``cni.projectcalico.org/ipv{4,6}pools``, in order;
        None without the annotation (``pools`` mode: the pod takes from the automatic pools)."""
        key = IPV4_POOLS_ANNOTATION if version == 4 else IPV6_POOLS_ANNOTATION
        value = self.metadata.annotations.get(key)
        return None if value is None else _parse_pool_names(value)

    def argv(self) -> list[str]:
        """The command line to run in the pod: the first container with a command."""
        for container in self.spec.containers:
            if container.argv():
                return container.argv()
        raise RuntimeError(f"pod {self.key} has no container with a command")

    def main_container(self) -> Container:
        """The container whose command :meth:`argv` runs."""
        for container in self.spec.containers:
            if container.argv():
                return container
        raise RuntimeError(f"pod {self.key} has no container with a command")

    def env(self) -> dict[str, str]:
        """The environment :meth:`argv` runs with (its container's ``env``, later entries win)."""
        return {var.name: var.value for var in self.main_container().env}

    def working_dir(self) -> str | None:
        """The directory :meth:`argv` runs in (its container's ``workingDir``), if given."""
        return self.main_container().working_dir

    def named_ports(self) -> dict[str, ContainerPort]:
        """Declared ports by name, across containers (the first declaration of a name wins)."""
        ports: dict[str, ContainerPort] = {}
        for container in self.spec.containers:
            for port in container.ports:
                if port.name is not None:
                    ports.setdefault(port.name, port)
        return ports


@dataclasses.dataclass(frozen=True)
class RawDocument:
    """A document of a deferred kind (a policy), kept as read for the layer that understands it."""

    filename: str
    index: int  # 1-based position in the file
    api_version: str
    kind: str
    name: str | None
    namespace: str | None
    body: dict[str, Any]

    @property
    def where(self) -> str:
        """``FILE: document N (Kind ns/name)``, the prefix of a one-line error about it."""
        return _where(self.filename, self.index, _describe(self.body))


@dataclasses.dataclass(frozen=True)
class LabFile:
    """A checked lab file: the lab, namespaces, pods (namespace and node resolved), and the rest.

    ``ip_pools`` and ``ipam_config`` are the file's IPPool documents (file order) and its
    IPAMConfiguration (Calico's defaults when it has none); in ``cluster-pool`` mode there are no
    pools. In a :class:`LabFile` of documents added to a running lab they are the running lab's.
    """

    lab: LabSpec
    namespaces: list[Namespace]
    pods: list[PodSpec]
    other_documents: list[RawDocument]
    filename: str = "<lab>"
    ip_pools: list[IPPool] = dataclasses.field(default_factory=list)
    ipam_config: IPAMConfiguration = dataclasses.field(default_factory=_default_ipam_configuration)

    @property
    def ipam_mode(self) -> IPAMMode:
        """``cluster-pool`` (node CIDRs, :func:`node_cidrs`) or ``pools`` (:attr:`ip_pools`)."""
        return self.lab.ipam.mode

    def ip_pool(self, name: str) -> IPPool:
        """The IP pool ``name``."""
        for pool in self.ip_pools:
            if pool.name == name:
                return pool
        raise KeyError(name)

    def namespace_names(self) -> list[str]:
        """Declared namespaces, then the implicit ones that were not declared."""
        names = [ns.name for ns in self.namespaces]
        return names + [n for n in IMPLICIT_NAMESPACES if n not in names]

    def namespace_labels(self, name: str) -> dict[str, str]:
        """The labels of a namespace (empty for an undeclared implicit one)."""
        for ns in self.namespaces:
            if ns.name == name:
                return ns.labels
        if name in IMPLICIT_NAMESPACES:
            return {}
        raise KeyError(name)

    def pod(self, key: str) -> PodSpec:
        """The pod ``namespace/name``."""
        for pod in self.pods:
            if pod.key == key:
                return pod
        raise KeyError(key)

    def pods_on(self, node_name: str) -> list[PodSpec]:
        return [p for p in self.pods if p.node_name == node_name]


# --------------------------------------------------------------------------------------------
# Node CIDRs


@dataclasses.dataclass(frozen=True)
class NodeCIDRs:
    """A node's pod CIDRs and router (gateway) addresses, per family (None when disabled)."""

    ipv4: IPv4Network | None
    ipv6: IPv6Network | None
    ipv4_router: IPv4Address | None
    ipv6_router: IPv6Address | None


def node_cidrs(lab: LabSpec | LabFile) -> dict[str, NodeCIDRs]:
    """Each node's pod CIDRs, as Cilium's operator allocates them in cluster-pool mode.

    Node *i* (0-based, file order) gets the *i*-th subnet of ``clusterPoolIPv{4,6}MaskSize`` of the
    first CIDR of each pool; its router address is the first host address of that subnet. In
    ``pools`` mode nodes have no CIDR: every node is present with all four values None.
    """
    spec = lab.lab if isinstance(lab, LabFile) else lab
    ipam = spec.ipam
    result: dict[str, NodeCIDRs] = {}
    for i, node in enumerate(spec.nodes):
        v4 = v6 = None
        if ipam.ipv4_pool is not None:
            mask = ipam.cluster_pool_ipv4_mask_size
            start = int(ipam.ipv4_pool.network_address) + (i << (32 - mask))
            v4 = IPv4Network((start, mask))
        if ipam.ipv6_pool is not None:
            mask = ipam.cluster_pool_ipv6_mask_size
            start = int(ipam.ipv6_pool.network_address) + (i << (128 - mask))
            v6 = IPv6Network((start, mask))
        result[node.name] = NodeCIDRs(
            ipv4=v4,
            ipv6=v6,
            ipv4_router=None if v4 is None else v4.network_address + 1,
            ipv6_router=None if v6 is None else v6.network_address + 1,
        )
    return result


def with_running_pods(
    base: LabFile,
    pods: Iterable[tuple[str, str, str | None, str | None]],
    *,
    namespaces: Mapping[str, Mapping[str, str]] | None = None,
) -> LabFile:
    """``base`` as the lab runs now, to check documents applied to it (``parse_documents``).

    ``pods`` are the running pods as ``(namespace, name, ipv4, ipv6)`` with the addresses they
    actually have: the result's pods are exactly these, each the file's pod when the file has it,
    else a stand-in for a pod applied later (placed on the node whose CIDR holds its address; on
    the first node in ``pools`` mode, where nodes have no CIDR), and
    their requested addresses are replaced by the running ones, so that a new pod cannot ask for an
    address already in use. ``namespaces`` (name -> labels) adds namespaces applied later.
    """
    by_key = {pod.key: pod for pod in base.pods}
    cidrs = node_cidrs(base.lab)
    running: list[PodSpec] = []
    for namespace, name, *addresses in pods:
        ips: list[str] = []
        for text in addresses:
            if text:
                with contextlib.suppress(ValueError):
                    ips.append(str(ipaddress.ip_interface(text).ip))
        pod = by_key.get(f"{namespace}/{name}")
        if pod is None:
            node = next(
                (
                    n
                    for n, c in cidrs.items()
                    if any(
                        ipaddress.ip_address(ip) in net
                        for ip in ips
                        for net in (c.ipv4, c.ipv6)
                        if net is not None
                    )
                ),
                base.lab.node_names[0],
            )
            pod = PodSpec.model_validate(
                {
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {
                        "nodeName": node,
                        "containers": [{"name": "running", "command": ["<running>"]}],
                    },
                },
                strict=False,
            )
        annotations = {k: v for k, v in pod.annotations.items() if k != REQUESTED_IPS_ANNOTATION}
        if ips:
            annotations[REQUESTED_IPS_ANNOTATION] = json.dumps(ips)
        metadata = pod.metadata.model_copy(update={"annotations": annotations})
        running.append(pod.model_copy(update={"metadata": metadata}))
    declared = list(base.namespaces)
    known = {ns.name for ns in declared}
    for ns_name, labels in (namespaces or {}).items():
        if ns_name not in known:
            known.add(ns_name)
            declared.append(
                Namespace.model_validate({"metadata": {"name": ns_name, "labels": dict(labels)}})
            )
    return dataclasses.replace(base, namespaces=declared, pods=running)


# --------------------------------------------------------------------------------------------
# Reading YAML


def _load_yaml(text: str, filename: str) -> list[tuple[int, object]]:
    """The documents of a YAML stream as (1-based index, value), empty documents left out."""
    try:
        return load_documents(text, filename)
    except YAMLDocumentError as err:
        raise LabFileError(str(err)) from None


# --------------------------------------------------------------------------------------------
# Documents

_KnownDocument: TypeAlias = LabSpec | Namespace | PodSpec | IPPool | IPAMConfiguration
_KNOWN_KINDS: dict[str, tuple[str, type[_KnownDocument]]] = {
    "Lab": (LAB_API_VERSION, LabSpec),
    "Namespace": (CORE_API_VERSION, Namespace),
    "Pod": (CORE_API_VERSION, PodSpec),
    "IPPool": (CALICO_API_VERSION, IPPool),
    "IPAMConfiguration": (CALICO_API_VERSION, IPAMConfiguration),
}

_NAME_LIKE = re.compile(r"[\w.\-/]{1,80}")


def _name_text(value: str) -> str:
    return value if _NAME_LIKE.fullmatch(value) else _show(value)


def _describe(doc: dict[Any, Any]) -> str | None:
    """``Pod shop/web``-like description of a raw document, from whatever it has."""
    kind = doc.get("kind")
    if not isinstance(kind, str):
        return None
    kind = _name_text(kind)
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    name = _name_text(name) if isinstance(name, str) else None
    if name is None:
        return kind
    namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    if isinstance(namespace, str):
        name = f"{_name_text(namespace)}/{name}"
    elif kind == "Pod" or (kind in DEFERRED_KINDS and kind != "CiliumClusterwideNetworkPolicy"):
        name = f"default/{name}"
    return f"{kind} {name}"


def _where(filename: str, index: int, description: str | None) -> str:
    return f"{filename}: document {index}" + (f" ({description})" if description else "")


@dataclasses.dataclass(frozen=True)
class _Doc:
    index: int
    where: str
    value: _KnownDocument | RawDocument


def _parse_document(doc: object, filename: str, index: int) -> _Doc:
    """Validate one document on its own; raise LabFileError with all its problems."""
    if not isinstance(doc, dict):
        raise LabFileError(
            f"{_where(filename, index, None)}: expected a mapping (an object with apiVersion,"
            f" kind, metadata), got {_show(doc)}"
        )
    where = _where(filename, index, _describe(doc))
    kind = doc.get("kind")
    api_version = doc.get("apiVersion")
    if kind is None:
        raise LabFileError(f"{where}: kind: required field is missing")
    if not isinstance(kind, str):
        raise LabFileError(f"{where}: kind: expected a string, got {_show(kind)}")
    if kind in _KNOWN_KINDS:
        api_versions = frozenset({_KNOWN_KINDS[kind][0]})
    elif kind in DEFERRED_KINDS:
        api_versions = DEFERRED_KINDS[kind]
    else:
        known = ", ".join([*_KNOWN_KINDS, *sorted(DEFERRED_KINDS)])
        raise LabFileError(f"{where}: kind: unknown kind {_show(kind)} (expected one of {known})")
    wanted = " or ".join(repr(v) for v in sorted(api_versions))
    if api_version is None:
        raise LabFileError(f"{where}: apiVersion: required field is missing (expected {wanted})")
    if not isinstance(api_version, str) or api_version not in api_versions:
        raise LabFileError(
            f"{where}: apiVersion: expected {wanted} for kind {kind}, got {_show(api_version)}"
        )
    if kind in DEFERRED_KINDS:
        metadata = doc.get("metadata")
        if not isinstance(metadata, dict):
            raise LabFileError(f"{where}: metadata: expected a mapping, got {_show(metadata)}")
        name = metadata.get("name")
        namespace = metadata.get("namespace")
        if not isinstance(name, str):
            raise LabFileError(f"{where}: metadata.name: expected a string, got {_show(name)}")
        if namespace is not None and not isinstance(namespace, str):
            raise LabFileError(
                f"{where}: metadata.namespace: expected a string, got {_show(namespace)}"
            )
        raw = RawDocument(filename, index, str(api_version), kind, name, namespace, doc)
        return _Doc(index, where, raw)
    model = _KNOWN_KINDS[kind][1]
    try:
        value = model.model_validate(doc)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc, message = _error_message(err)
            path = _format_path(loc)
            problems.append(f"{where}: {path}: {message}" if path else f"{where}: {message}")
        raise LabFileError(problems) from None
    return _Doc(index, where, value)


_IPS_PATH = _format_path(["metadata", "annotations", REQUESTED_IPS_ANNOTATION])


def parse_documents(
    text: str, filename: str, *, require_lab: bool, base: LabFile | None = None
) -> LabFile:
    """Parse and check a lab file, or (``require_lab=False``) documents to add to a lab.

    With ``require_lab`` the text must hold exactly one Lab document. Without it (``lab apply``)
    the documents are checked against ``base``, the running lab: its nodes, namespaces, pods,
    requested addresses and IP pools count for duplicates, ``nodeName`` and address checks, and
    the returned :class:`LabFile` holds ``base.lab``, ``base.ip_pools``, ``base.ipam_config`` and
    only the new documents (IPPool and IPAMConfiguration documents cannot be added). Round-robin
    node assignment continues after the base's pods. Raises :class:`LabFileError`.
    """
    docs = _load_yaml(text, filename)
    if not docs:
        what = "a Lab document" if require_lab or base is None else "documents to add to the lab"
        raise LabFileError(f"{filename}: the file has no documents (expected {what})")
    problems: list[str] = []
    parsed: list[_Doc] = []
    for index, doc in docs:
        try:
            parsed.append(_parse_document(doc, filename, index))
        except LabFileError as exc:
            problems.extend(exc.problems)
    if problems:
        raise LabFileError(problems)

    lab_docs = [d for d in parsed if isinstance(d.value, LabSpec)]
    if len(lab_docs) > 1:
        raise LabFileError(
            f"{lab_docs[1].where}: a second Lab document (the first is document"
            f" {lab_docs[0].index}); a file describes one lab"
        )
    if lab_docs and base is not None:
        raise LabFileError(
            f"{lab_docs[0].where}: a Lab document cannot be added to the running lab"
            f" {base.lab.name!r}; only Namespace, Pod and policy documents can"
        )
    if lab_docs:
        assert isinstance(lab_docs[0].value, LabSpec)
        lab = lab_docs[0].value
    elif base is not None and not require_lab:
        lab = base.lab
    else:
        raise LabFileError(
            f"{filename}: no Lab document (apiVersion: {LAB_API_VERSION}, kind: Lab) in the file"
        )
    checked = _check_together(lab, lab_docs[0] if lab_docs else None, parsed, base)
    return LabFile(
        lab=lab,
        namespaces=checked.namespaces,
        pods=checked.pods,
        other_documents=[d.value for d in parsed if isinstance(d.value, RawDocument)],
        filename=filename,
        ip_pools=checked.ip_pools,
        ipam_config=checked.ipam_config,
    )


@dataclasses.dataclass(frozen=True)
class _Checked:
    namespaces: list[Namespace]
    pods: list[PodSpec]
    ip_pools: list[IPPool]
    ipam_config: IPAMConfiguration


def _check_together(
    lab: LabSpec, lab_doc: _Doc | None, parsed: list[_Doc], base: LabFile | None
) -> _Checked:
    """The checks that span documents; returns namespaces, pods with nodes assigned, pools."""
    problems: list[tuple[int, str]] = []

    def problem(doc: _Doc, path: str, message: str) -> None:
        problems.append(
            (doc.index, f"{doc.where}: {path}: {message}" if path else f"{doc.where}: {message}")
        )

    declared: dict[str, str] = {}
    if base is not None:
        for ns in base.namespaces:
            declared[ns.name] = "it already exists in the lab"
    namespaces: list[Namespace] = []
    for doc in parsed:
        if isinstance(doc.value, Namespace):
            name = doc.value.name
            if name in declared:
                problem(doc, "metadata.name", f"duplicate namespace {name!r} ({declared[name]})")
                continue
            declared[name] = f"also declared in document {doc.index}"
            namespaces.append(doc.value)

    pools_mode = lab.ipam.mode == "pools"
    ip_pools, ipam_config = _check_pools(lab, lab_doc, parsed, base, problem)
    node_labels = {node.name: node.labels for node in lab.nodes}
    node_names = lab.node_names
    cidrs = node_cidrs(lab)
    pod_owner: dict[str, str] = {}
    ip_owner: dict[IPAddress, str] = {}
    round_robin = 0
    if base is not None:
        for pod in base.pods:
            pod_owner[pod.key] = "it already exists in the lab"
            for ip in pod.requested_ips():
                ip_owner[ip] = f"pod {pod.key}, already in the lab"
        round_robin = len(base.pods)

    pods: list[PodSpec] = []
    for doc in parsed:
        if not isinstance(doc.value, PodSpec):
            continue
        pod = doc.value
        if pod.key in pod_owner:
            problem(doc, "metadata.name", f"duplicate pod {pod.key} ({pod_owner[pod.key]})")
            continue
        pod_owner[pod.key] = f"also in document {doc.index}"
        if pod.namespace not in declared and pod.namespace not in IMPLICIT_NAMESPACES:
            problem(
                doc,
                "metadata.namespace",
                f"namespace {pod.namespace!r} is not declared (add a Namespace document; only"
                f" {' and '.join(IMPLICIT_NAMESPACES)} exist without one)",
            )
        assigned = pod.spec.node_name is None
        if assigned:
            node = node_names[round_robin % len(node_names)]
            round_robin += 1
            pod = pod.with_node(node)
        elif pod.node_name not in node_names:
            problem(
                doc,
                "spec.nodeName",
                f"node {pod.node_name!r} is not a node of lab {lab.name!r}"
                f" (nodes: {', '.join(node_names)})",
            )
            pods.append(pod)
            continue
        if pools_mode:
            for path, complaint in _pool_annotation_problems(pod, ip_pools, node_labels, assigned):
                problem(doc, path, complaint)
        else:
            for key in (IPV4_POOLS_ANNOTATION, IPV6_POOLS_ANNOTATION):
                if key in pod.annotations:
                    problem(
                        doc,
                        _format_path(["metadata", "annotations", key]),
                        f"only valid with spec.ipam.mode: pools (lab {lab.name!r} uses"
                        " cluster-pool)",
                    )
        for ip in pod.requested_ips():
            message: str | None
            if pools_mode:
                message = _check_pool_ip(ip, pod, ip_pools, node_labels[pod.node_name], assigned)
            else:
                message = _check_requested_ip(ip, pod.node_name, cidrs[pod.node_name], assigned)
            if message is None and ip in ip_owner:
                message = f"{ip} is also requested by {ip_owner[ip]}"
            if message is not None:
                problem(doc, _IPS_PATH, message)
            ip_owner.setdefault(ip, f"pod {pod.key} (document {doc.index})")
        pods.append(pod)
    if problems:
        problems.sort(key=lambda p: p[0])
        raise LabFileError([p[1] for p in problems])
    return _Checked(namespaces, pods, ip_pools, ipam_config)


def _check_pools(
    lab: LabSpec,
    lab_doc: _Doc | None,
    parsed: list[_Doc],
    base: LabFile | None,
    problem: Callable[[_Doc, str, str], None],
) -> tuple[list[IPPool], IPAMConfiguration]:
    """The IPPool and IPAMConfiguration documents against the lab and each other."""
    if base is not None:
        for doc in parsed:
            if isinstance(doc.value, IPPool | IPAMConfiguration):
                problem(
                    doc,
                    "",
                    f"an {doc.value.kind} cannot be added to the running lab {base.lab.name!r};"
                    " only Namespace, Pod and policy documents can",
                )
        return list(base.ip_pools), base.ipam_config
    if lab.ipam.mode != "pools":
        for doc in parsed:
            if isinstance(doc.value, IPPool | IPAMConfiguration):
                problem(
                    doc,
                    "",
                    f"{doc.value.kind} documents need spec.ipam.mode: pools (lab {lab.name!r}"
                    " uses cluster-pool)",
                )
        return [], _default_ipam_configuration()
    ipam_config: IPAMConfiguration | None = None
    config_index = 0
    pool_docs: dict[str, _Doc] = {}
    pools: list[IPPool] = []
    for doc in parsed:
        if isinstance(doc.value, IPAMConfiguration):
            if ipam_config is not None:
                problem(
                    doc,
                    "",
                    f"a second IPAMConfiguration (the first is document {config_index}); Calico"
                    " reads one, named default",
                )
            else:
                ipam_config, config_index = doc.value, doc.index
        if not isinstance(doc.value, IPPool):
            continue
        pool = doc.value
        if pool.name in pool_docs:
            problem(
                doc,
                "metadata.name",
                f"duplicate IPPool name {pool.name!r} (also in document"
                f" {pool_docs[pool.name].index})",
            )
            continue
        for other_doc in pool_docs.values():
            assert isinstance(other_doc.value, IPPool)
            other = other_doc.value
            if _overlap(pool.cidr, other.cidr):
                problem(
                    doc,
                    "spec.cidr",
                    f"pool {pool.name!r} ({pool.cidr}) overlaps pool {other.name!r}"
                    f" ({other.cidr}, document {other_doc.index})",
                )
                break
        pool_docs[pool.name] = doc
        pools.append(pool)
    if lab_doc is not None and not any(p.enabled and p.for_workloads for p in pools):
        have = (
            "it has none"
            if not pools
            else "every one is disabled or has no Workload in allowedUses"
        )
        problem(
            lab_doc,
            "spec.ipam.mode",
            f"mode pools needs at least one enabled IPPool document (apiVersion:"
            f" {CALICO_API_VERSION}, kind: IPPool) for pods, and {have}",
        )
    return pools, ipam_config or _default_ipam_configuration()


def _overlap(a: IPv4Network | IPv6Network, b: IPv4Network | IPv6Network) -> bool:
    if isinstance(a, IPv4Network) and isinstance(b, IPv4Network):
        return a.overlaps(b)
    if isinstance(a, IPv6Network) and isinstance(b, IPv6Network):
        return a.overlaps(b)
    return False


# What the agent does in pools mode, which these checks follow: a node gets the address families,
# and in each its router address, of the enabled Workload pools with assignmentMode Automatic that
# select it; its pods take addresses in those families only, from those pools or from the pools
# they name, and a pool a pod names or asks an address of must select the pod's node (stricter
# than Calico, which ignores nodeSelector for them).


def _node_families(pools: Sequence[IPPool], labels: Mapping[str, str]) -> set[int]:
    return {
        p.version
        for p in pools
        if p.enabled and p.for_workloads and p.automatic and p.selects(labels)
    }


def _round_robin(assigned: bool) -> str:
    return " (assigned round-robin; set spec.nodeName to choose the node)" if assigned else ""


def _not_selected(pool: IPPool, node: str, labels: Mapping[str, str], assigned: bool) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in labels.items()) or "none"
    return (
        f"does not select node {node} (nodeSelector {pool.spec.node_selector!r}, node labels:"
        f" {shown}){_round_robin(assigned)}"
    )


def _no_family(version: int, node: str, assigned: bool) -> str:
    return (
        f"node {node} has no IPv{version} addresses: no enabled Workload IPv{version} pool with"
        " assignmentMode Automatic selects it (the node's router address comes from one)"
        + _round_robin(assigned)
    )


def _pool_annotation_problems(
    pod: PodSpec,
    pools: Sequence[IPPool],
    node_labels: Mapping[str, Mapping[str, str]],
    assigned: bool,
) -> list[tuple[str, str]]:
    """(field path, message) problems of a pod's node and pool annotations in ``pools`` mode."""
    if not any(p.enabled and p.for_workloads for p in pools):
        return []  # the Lab document is in error already
    node = pod.node_name
    labels = node_labels[node]
    families = _node_families(pools, labels)
    if not families:
        shown = ", ".join(f"{k}={v}" for k, v in labels.items()) or "none"
        return [
            (
                "spec.nodeName",
                f"no IP pool gives addresses on node {node}: no enabled Workload pool with"
                " assignmentMode Automatic has a nodeSelector that selects its labels"
                f" ({shown}){_round_robin(assigned)}",
            )
        ]
    by_name = {p.name: p for p in pools}
    problems: list[tuple[str, str]] = []
    for version, key in ((4, IPV4_POOLS_ANNOTATION), (6, IPV6_POOLS_ANNOTATION)):
        names = pod.requested_pools(version)
        path = _format_path(["metadata", "annotations", key])
        for name in names or ():
            pool = by_name.get(name)
            if pool is None:
                known = ", ".join(repr(p) for p in by_name) or "none"
                problems.append((path, f"no IPPool is named {name!r} (pools: {known})"))
            elif pool.version != version:
                problems.append(
                    (
                        path,
                        f"pool {name!r} is an IPv{pool.version} pool ({pool.cidr}); this"
                        f" annotation names IPv{version} pools",
                    )
                )
            elif not pool.enabled:
                problems.append((path, f"pool {name!r} is disabled"))
            elif not pool.for_workloads:
                problems.append(
                    (path, f"pool {name!r} is not for pods (allowedUses has no Workload)")
                )
            elif not pool.selects(labels):
                problems.append(
                    (path, f"pool {name!r} {_not_selected(pool, node, labels, assigned)}")
                )
        if names and version not in families:
            problems.append((path, _no_family(version, node, assigned)))
    return problems


def _check_pool_ip(
    ip: IPAddress,
    pod: PodSpec,
    pools: Sequence[IPPool],
    labels: Mapping[str, str],
    assigned: bool,
) -> str | None:
    """What is wrong with an address asked for in ``pools`` mode, if anything."""
    holders = [p for p in pools if p.version == ip.version and ip in p.cidr]
    if not holders:
        family = [f"{p.name} {p.cidr}" for p in pools if p.version == ip.version]
        listed = f"pools: {', '.join(family)}" if family else f"the lab has no IPv{ip.version} pool"
        return f"{ip} is not inside any IP pool ({listed})"
    usable = [p for p in holders if p.enabled and p.for_workloads]
    if not usable:
        pool = holders[0]
        why = "is disabled" if not pool.enabled else "has no Workload in allowedUses"
        return f"{ip} is inside pool {pool.name!r} ({pool.cidr}), which {why}"
    pool = usable[0]
    named = pod.requested_pools(ip.version)
    if named and pool.name not in named:
        key = IPV4_POOLS_ANNOTATION if ip.version == 4 else IPV6_POOLS_ANNOTATION
        return (
            f"{ip} is inside pool {pool.name!r}, not one of the pools named by {key}"
            f" ({', '.join(named)})"
        )
    if not pool.selects(labels):
        return (
            f"{ip} is inside pool {pool.name!r} ({pool.cidr}), which"
            f" {_not_selected(pool, pod.node_name, labels, assigned)}"
        )
    if ip.version not in _node_families(pools, labels):
        return f"{ip}: {_no_family(ip.version, pod.node_name, assigned)}"
    return None


def _check_requested_ip(ip: IPAddress, node: str, cidrs: NodeCIDRs, assigned: bool) -> str | None:
    network: IPv4Network | IPv6Network | None = cidrs.ipv4 if ip.version == 4 else cidrs.ipv6
    if network is None:
        return (
            f"{ip} is an IPv{ip.version} address but IPv{ip.version} is disabled in this lab"
            f" (clusterPoolIPv{ip.version}PodCIDRList is empty)"
        )
    if ip not in network:
        how = " (assigned round-robin; set spec.nodeName to choose the node)" if assigned else ""
        return f"{ip} is not inside the pod CIDR {network} of node {node}{how}"
    if ip == network.network_address:
        return f"{ip} is the network address of node {node}'s pod CIDR {network}"
    if ip == network.network_address + 1:
        return f"{ip} is node {node}'s router address (the first address of {network})"
    if ip.version == 4 and ip == network.broadcast_address:
        return f"{ip} is the broadcast address of node {node}'s pod CIDR {network}"
    return None


def parse_lab_text(text: str, filename: str) -> LabFile:
    """Parse and check a whole lab file (exactly one Lab document). Raises LabFileError."""
    return parse_documents(text, filename, require_lab=True)


def load_lab_file(path: Path) -> LabFile:
    """Read and check the lab file at ``path``. Raises LabFileError (also if it cannot be read)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise LabFileError(f"{path}: cannot read the lab file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise LabFileError(f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    return parse_lab_text(text, str(path))


_SCENARIOS = resources.files(__package__ or "ciliary.lab") / "scenarios"
DEFAULT_SCENARIO: str = (_SCENARIOS / "default.yaml").read_text(encoding="utf-8")
"""The lab ``ciliary demo`` and ``ciliary lab up`` build when given no file."""


def load_default() -> LabFile:
    """The default scenario, parsed."""
    return parse_lab_text(DEFAULT_SCENARIO, "scenarios/default.yaml")
