"""Kubernetes resource quantities (``250m``, ``64Mi``, ``1Gi``, ``0.5``, ``1e3``): the one parser.

``resource.Quantity``'s grammar: a signed decimal number, then either a binary suffix (``Ki Mi
Gi Ti Pi Ei``, powers of 1024), a decimal one (``n u m "" k M G T P E``) or a decimal exponent
(``e3``, ``E-2``). Values are exact (:class:`~decimal.Decimal`); the conversions round up as
kubelet does when it writes cgroup limits (``cpu`` in millicores, ``memory`` in bytes).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

__all__ = ["QuantityError", "cpu_millis", "memory_bytes", "parse_quantity"]

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_FORM = re.compile(
    r"^(?P<num>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<bin>Ki|Mi|Gi|Ti|Pi|Ei)|(?P<exp>[eE][+-]?[0-9]+)|(?P<dec>[numkMGTPE]?))$"
)


class QuantityError(ValueError):
    """Not a quantity (the message is kube-apiserver's)."""


def parse_quantity(value: str | int | float) -> Decimal:
    """The exact value of a quantity."""
    if isinstance(value, bool):
        raise QuantityError(f"quantities must match the regular expression: {value!r}")
    if isinstance(value, int | float):
        return Decimal(str(value))
    m = _FORM.match(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise QuantityError(
            f"quantities must match the regular expression "
            f"'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {value!r}"
        )
    try:
        number = Decimal(m["num"])
    except InvalidOperation:
        raise QuantityError(f"not a number: {value!r}") from None
    if m["bin"]:
        return number * Decimal(1024) ** _BINARY[m["bin"]]
    if m["exp"]:
        return number.scaleb(int(m["exp"][1:]))
    return number.scaleb(_DECIMAL[m["dec"] or ""])


def cpu_millis(value: str | int | float) -> int:
    """A CPU quantity in millicores, rounded up (``0.1`` and ``100m`` are 100)."""
    return _ceil(parse_quantity(value) * 1000)


def memory_bytes(value: str | int | float) -> int:
    """A memory quantity in bytes, rounded up (``64Mi`` is 67108864, ``1G`` 10**9)."""
    return _ceil(parse_quantity(value))


def _ceil(value: Decimal) -> int:
    if value < 0:
        raise QuantityError(f"must be greater than or equal to 0: {value}")
    return math.ceil(value)
