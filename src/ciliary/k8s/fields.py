"""Typed Kubernetes documents, the pydantic way: the shared base, field types and error words.

Every typed document (the lab file's kinds, Calico's IPPool read by the agent, the object models)
is a :class:`StrictModel`: unknown fields are errors and values keep their types, so a typo is
reported instead of ignored. Validators speak one dialect — "expected …, got …" — and a problem
found inside a value names its place below the field (:class:`FieldProblemError`).
:func:`error_message` and :func:`format_path` turn a pydantic error into the one-line
``spec.containers[0].name: expected …`` that users see from ``ciliary lab`` and from the agent
alike. The syntax rules themselves come from :mod:`ciliary.k8s.names`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from ciliary.core.yamldoc import show
from ciliary.k8s.names import (
    DNS1123_LABEL_MAX,
    is_dns1123_label,
    is_dns1123_subdomain,
    is_env_var_name,
    is_label_value,
    is_port_name,
    label_key_fault,
)

__all__ = [
    "Annotations",
    "DNSSubdomain",
    "EnvName",
    "FieldProblemError",
    "LabelKey",
    "LabelValue",
    "Labels",
    "ObjectName",
    "PortName",
    "StrictModel",
    "dns_label",
    "dns_subdomain",
    "env_name",
    "error_message",
    "format_path",
    "label_key",
    "label_value",
    "port_name",
]


class FieldProblemError(ValueError):
    """A validator's complaint about a part of the value it checks (``subpath`` below its field)."""

    def __init__(self, message: str, *subpath: str | int) -> None:
        super().__init__(message)
        self.subpath: tuple[str | int, ...] = subpath


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def format_path(loc: Sequence[str | int]) -> str:
    """``('spec', 'containers', 0, 'name')`` -> ``spec.containers[0].name``; odd keys quoted (and
    cut at 80 characters)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)[:80]}]"  # keep the line readable
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


def error_message(err: Any) -> tuple[list[str | int], str]:
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
        message = f"unknown field (field names are strings, got {show(value)})"
    elif kind == "missing":
        message = "required field is missing"
    elif kind in _TYPE_WORDS:
        message = f"expected {_TYPE_WORDS[kind]}, got {show(value)}"
        if kind == "string_type" and isinstance(value, (bool, int, float)):
            message += " (quote it to make it a string)"
    elif kind == "literal_error":
        message = f"expected {ctx.get('expected', 'one of the allowed values')}, got {show(value)}"
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
        message = f"expected a number {op} {bound}, got {show(value)}"
    elif kind == "value_error" and isinstance(ctx.get("error"), Exception):
        exc = ctx["error"]
        if isinstance(exc, FieldProblemError):
            loc.extend(exc.subpath)
        message = str(exc)
    else:
        message = str(err.get("msg", "invalid value")).replace("Input should be", "expected")
        message += f", got {show(value)}"
    if key_problem:
        message = f"invalid key: {message}"
    return loc, message


def checked(valid: Callable[[str], bool], expectation: str) -> Callable[[str], str]:
    """A field check: the value itself when ``valid``, else the one-line error
    ``expected <expectation>, got <value>``."""

    def check(value: str) -> str:
        if not valid(value):
            raise ValueError(f"expected {expectation}, got {show(value)}")
        return value

    return check


def dns_label(max_len: int) -> Callable[[str], str]:
    return checked(
        lambda value: is_dns1123_label(value, max_len),
        "a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter"
        f" or digit, at most {max_len} characters)",
    )


label_key = checked(
    lambda value: label_key_fault(value) is None,
    "a label key ([prefix/]name: name at most 63 characters of letters, digits, '-', '_' and"
    " '.', starting and ending with a letter or digit; optional prefix a DNS subdomain)",
)
label_value = checked(
    is_label_value,
    "a label value (empty, or at most 63 characters of letters, digits, '-', '_' and '.',"
    " starting and ending with a letter or digit)",
)
dns_subdomain = checked(
    is_dns1123_subdomain,
    "a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', each dot-separated part"
    " starting and ending with a letter or digit, at most 253 characters)",
)
port_name = checked(
    is_port_name,
    "a port name (at most 15 lowercase letters, digits and '-', with at least one letter, no"
    " '--', not starting or ending with '-')",
)
env_name = checked(
    is_env_var_name,
    "an environment variable name (letters, digits, '_', '-' and '.', not starting with a digit)",
)


class StrictModel(BaseModel):
    """The base of every typed document: unknown fields are errors, values keep their YAML/JSON
    types (no "1" for 1), instances are immutable, fields are camelCase on the wire."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        populate_by_name=True,
        alias_generator=to_camel,
    )


LabelKey = Annotated[str, AfterValidator(label_key)]
LabelValue = Annotated[str, AfterValidator(label_value)]
Labels = dict[LabelKey, LabelValue]
Annotations = dict[LabelKey, str]
DNSSubdomain = Annotated[str, AfterValidator(dns_subdomain)]
ObjectName = Annotated[str, AfterValidator(dns_label(DNS1123_LABEL_MAX))]
PortName = Annotated[str, AfterValidator(port_name)]
EnvName = Annotated[str, AfterValidator(env_name)]
