"""Calico selector subset used by IPPool nodeSelector: grammar, semantics, errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ciliary.agent.ipam import IPAMError, parse_selector

NODE = {"zone": "a", "kubernetes.io/hostname": "node1", "gpu": "", "tier": "web"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("all()", True),
        ("", True),
        ("   ", True),
        ("has(zone)", True),
        ("has(disk)", False),
        ("has(kubernetes.io/hostname)", True),
        ('zone == "a"', True),
        ("zone == 'a'", True),
        ('zone == "b"', False),
        ('disk == "ssd"', False),
        ('zone != "b"', True),
        ('zone != "a"', False),
        ('disk != "ssd"', True),  # Calico: != also matches nodes without the label
        ('zone in {"a", "b"}', True),
        ('zone in {"b"}', False),
        ("zone in {}", False),
        ('disk in {"ssd"}', False),
        ('zone not in {"b", "c"}', True),
        ('zone not in {"a"}', False),
        ('disk not in {"ssd"}', True),
        ("!has(disk)", True),
        ("!all()", False),
        ("!!has(zone)", True),
        ('has(zone) && zone == "a"', True),
        ('has(zone) && zone == "b"', False),
        ('zone == "b" || tier == "web"', True),
        ('zone == "b" || tier == "db"', False),
        # && binds tighter than ||
        ('zone == "a" || zone == "b" && tier == "db"', True),
        ('(zone == "a" || zone == "b") && tier == "db"', False),
        ('!(zone == "a" && tier == "db")', True),
        ('kubernetes.io/hostname == "node1"', True),
        ('gpu == ""', True),
        ('all() && !(zone in {"x","y"})', True),
        ('has == "x"', False),  # a label may be called like a function name
        ('in in {"x"}', False),
        ('not not in {"x"}', True),
    ],
)
def test_matches(text: str, expected: bool) -> None:
    assert parse_selector(text).matches(NODE) is expected


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("all(", 4, "expected ')'"),
        ("all(x)", 4, "all() takes no argument"),
        ("has()", 4, "expected a label key"),
        ("zone", 4, "expected '==', '!=', 'in' or 'not in' after label key 'zone'"),
        ("zone == a", 8, "expected a quoted value"),
        ('zone == "a', 8, "unterminated string"),
        ('zone == "a" &&', 14, "expected a label key"),
        ('zone == "a" zone', 12, "expected '&&', '||' or end of selector"),
        ('(zone == "a"', 12, "expected ')'"),
        ('zone in {"a" "b"}', 13, "expected ',' or '}'"),
        ('zone in "a"', 8, "expected '{'"),
        ("zone not {}", 5, "expected '==', '!=', 'in' or 'not in'"),
        ('zone = "a"', 5, "unexpected character '='"),
        ("&& x", 0, "expected a label key"),
        ("has(a) & has(b)", 7, "unexpected character '&'"),
    ],
)
def test_errors_name_selector_and_position(text: str, position: int, fragment: str) -> None:
    with pytest.raises(IPAMError) as info:
        parse_selector(text)
    message = str(info.value)
    assert info.value.kind == "invalid"
    assert repr(text) in message
    assert f"at position {position}:" in message
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "text",
    [
        "all()",
        'zone == "a"',
        "zone != 'a\"b'",
        'has(zone) && (zone in {"a", "b"} || !has(gpu))',
        'zone not in {"a"} || tier == "web" && !all()',
    ],
)
def test_canonical_text_round_trips(text: str) -> None:
    sel = parse_selector(text)
    again = parse_selector(str(sel))
    assert str(again) == str(sel)
    assert again == sel


_keys = st.sampled_from(["zone", "tier", "disk", "kubernetes.io/hostname"])
_values = st.sampled_from(["a", "b", "web", ""])
_labels = st.dictionaries(_keys, _values, max_size=4)


def _expr() -> st.SearchStrategy[str]:
    leaf = st.one_of(
        st.just("all()"),
        _keys.map(lambda k: f"has({k})"),
        st.tuples(_keys, st.sampled_from(["==", "!="]), _values).map(
            lambda t: f'{t[0]} {t[1]} "{t[2]}"'
        ),
        st.tuples(_keys, st.sampled_from(["in", "not in"]), st.lists(_values, max_size=3)).map(
            lambda t: f"{t[0]} {t[1]} {{{', '.join(repr(v) for v in t[2])}}}"
        ),
    )
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            inner.map(lambda e: f"!({e})"),
            st.tuples(inner, st.sampled_from(["&&", "||"]), inner).map(
                lambda t: f"({t[0]}) {t[1]} ({t[2]})"
            ),
        ),
        max_leaves=8,
    )


@given(_expr(), _labels)
def test_canonical_form_means_the_same(text: str, labels: dict[str, str]) -> None:
    sel = parse_selector(text)
    assert parse_selector(str(sel)).matches(labels) == sel.matches(labels)


@given(st.text(alphabet="abz()!&|=\" {},'.", max_size=30))
def test_arbitrary_text_parses_or_fails_cleanly(text: str) -> None:
    try:
        sel = parse_selector(text)
    except IPAMError as err:
        assert err.kind == "invalid"
        assert "\n" not in str(err)
    else:
        sel.matches(NODE)
