"""Kubernetes' name and label syntax, checked in one place.

Object names (DNS-1123 labels and subdomains), label keys (qualified names: ``[prefix/]name``)
and label values are checked by the API server, the lab file parser, the policy translator and
the Calico selector parser. Each of them words its errors for its own audience (kube-apiserver's
``Invalid value`` causes, the lab's "expected …, got …", the policy's field-path lines), but the
rules themselves must not drift apart, so the predicates live here and only here, following
``k8s.io/apimachinery/pkg/util/validation``. A key's fault comes back as a :class:`KeyFault` so
that each caller can say *what* is wrong in its own words.
"""

from __future__ import annotations

import enum
import re
from typing import Final

__all__ = [
    "DNS1123_LABEL_MAX",
    "DNS1123_SUBDOMAIN_MAX",
    "LABEL_VALUE_MAX",
    "QUALIFIED_NAME_MAX",
    "KeyFault",
    "is_dns1123_label",
    "is_dns1123_subdomain",
    "is_env_var_name",
    "is_label_value",
    "is_port_name",
    "is_qualified_name_part",
    "label_key_fault",
]

DNS1123_LABEL_MAX: Final = 63
DNS1123_SUBDOMAIN_MAX: Final = 253
QUALIFIED_NAME_MAX: Final = 63
LABEL_VALUE_MAX: Final = 63

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_IANA_SVC_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_ENV_VAR_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")


def is_dns1123_label(text: str, max_len: int = DNS1123_LABEL_MAX) -> bool:
    """Lowercase alphanumerics and ``-``, alphanumeric at both ends, at most ``max_len``
    characters (63 in Kubernetes; callers whose names become interface names ask for fewer)."""
    return len(text) <= max_len and _DNS1123_LABEL.fullmatch(text) is not None


def is_dns1123_subdomain(text: str) -> bool:
    """DNS-1123 labels joined by ``.``, at most 253 characters."""
    return len(text) <= DNS1123_SUBDOMAIN_MAX and _DNS1123_SUBDOMAIN.fullmatch(text) is not None


def is_qualified_name_part(text: str) -> bool:
    """The name part of a qualified name: 1 to 63 alphanumerics, ``-``, ``_``, ``.``, alphanumeric
    at both ends."""
    return len(text) <= QUALIFIED_NAME_MAX and _QUALIFIED_NAME.fullmatch(text) is not None


def is_label_value(text: str) -> bool:
    """Empty, or a qualified name part (at most 63 characters)."""
    return not text or is_qualified_name_part(text)


def is_port_name(text: str) -> bool:
    """Kubernetes' IANA_SVC_NAME (a container port's name): at most 15 lowercase alphanumerics
    and ``-``, at least one letter, no ``--``, not starting or ending with ``-``."""
    return (
        len(text) <= 15
        and _IANA_SVC_NAME.fullmatch(text) is not None
        and "--" not in text
        and any("a" <= c <= "z" for c in text)
    )


def is_env_var_name(text: str) -> bool:
    """Letters, digits, ``_``, ``-`` and ``.``, not starting with a digit."""
    return _ENV_VAR_NAME.fullmatch(text) is not None


class KeyFault(enum.Enum):
    """What makes a label key (a qualified name) invalid, first fault found."""

    SLASHES = "more than one '/'"
    PREFIX_EMPTY = "empty prefix"
    PREFIX_INVALID = "prefix not a DNS-1123 subdomain"
    NAME_EMPTY = "empty name"
    NAME_TOO_LONG = "name longer than 63 characters"
    NAME_INVALID = "name has characters other than alphanumerics, '-', '_', '.' inside"


def label_key_fault(key: str) -> KeyFault | None:
    """Why ``key`` is not a qualified name (``[prefix/]name``: the prefix a DNS-1123 subdomain,
    the name a qualified name part), or None when it is one."""
    prefix, slash, name = key.rpartition("/")
    if slash:
        if "/" in prefix:
            return KeyFault.SLASHES
        if not prefix:
            return KeyFault.PREFIX_EMPTY
        if not is_dns1123_subdomain(prefix):
            return KeyFault.PREFIX_INVALID
    if not name:
        return KeyFault.NAME_EMPTY
    if len(name) > QUALIFIED_NAME_MAX:
        return KeyFault.NAME_TOO_LONG
    if _QUALIFIED_NAME.fullmatch(name) is None:
        return KeyFault.NAME_INVALID
    return None
