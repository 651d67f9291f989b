"""Kubernetes quantities: suffixes, exponents, rounding up, refusals."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ciliary.k8s.quantity import QuantityError, cpu_millis, memory_bytes, parse_quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("64Mi", 64 * 2**20), ("1Gi", 2**30), ("1Ki", 1024), ("1.5Gi", 3 * 2**29),
        ("1G", 10**9), ("500k", 500_000), ("250m", Decimal("0.25")), ("100u", Decimal("0.0001")),
        ("1e3", 1000), ("2E-2", Decimal("0.02")), ("0.5", Decimal("0.5")), (".5", Decimal("0.5")),
        ("3", 3), (2, 2), (0.25, Decimal("0.25")),
    ],
)  # fmt: skip
def test_parse(text: str | int | float, value: Decimal | int) -> None:
    assert parse_quantity(text) == value


def test_conversions_round_up() -> None:
    assert [cpu_millis(v) for v in ("250m", "0.1", "1", 2, "1.0005", "1u")] == [
        250, 100, 1000, 2000, 1001, 1,
    ]  # fmt: skip
    assert [memory_bytes(v) for v in ("64Mi", "1Gi", "1G", "1.5", "128974848")] == [
        67108864, 1073741824, 10**9, 2, 128974848,
    ]  # fmt: skip


@pytest.mark.parametrize("bad", ["", "Mi", "1MB", "1 Gi", "1Gb", "abc", "1.2.3", "--1", True])
def test_refused(bad: object) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(bad)  # type: ignore[arg-type]


def test_negative_limits_refused() -> None:
    with pytest.raises(QuantityError, match="greater than or equal to 0"):
        memory_bytes("-1Mi")
