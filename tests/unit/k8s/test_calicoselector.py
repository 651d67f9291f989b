"""Calico selectors (IPPool nodeSelector): grammar, semantics, canonical form, and the cases on
which the agent's former parser disagreed with the lab's."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ciliary.k8s.calicoselector import SelectorError, parse_selector

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
    ("text", "message"),
    [
        ("all(", "expected ')' at character 5, got the end"),
        ("all(x)", "expected ')' at character 5, got 'x'"),
        ("has()", "expected a label key at character 5, got ')'"),
        ("zone", "expected ==, !=, in or not in after 'zone' at character 5, got the end"),
        ("zone == a", "expected a quoted string at character 9, got 'a'"),
        ('zone == "a', "unterminated string at character 9"),
        (
            'zone == "a" &&',
            "expected a label key, all(), has(key), '!' or '(' at character 15, got the end",
        ),
        ('zone == "a" zone', "expected &&, || or the end at character 13, got 'zone'"),
        ('(zone == "a"', "expected ')' at character 13, got the end"),
        ('zone in {"a" "b"}', "expected ',' or '}' at character 14, got '\"b\"'"),
        ('zone in "a"', "expected '{' at character 9, got '\"a\"'"),
        ("zone not {}", "expected ==, !=, in or not in after 'zone' at character 6, got 'not'"),
        ('zone = "a"', "unexpected character '=' at character 6 (use == to compare)"),
        ("&& x", "expected a label key, all(), has(key), '!' or '(' at character 1, got '&&'"),
        ("has(a) & has(b)", "unexpected character '&' at character 8 (use &&)"),
    ],
)
def test_errors_say_what_was_expected_and_where(text: str, message: str) -> None:
    """Positions are 1-based characters (the agent's parser used to count from 0)."""
    with pytest.raises(SelectorError) as info:
        parse_selector(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("_zone == 'a'", "expected a label key at character 1, got '_zone'"),
        ("has(a//b)", "expected a label key at character 5, got 'a//b'"),
        ("Zone.IO/x == 'a'", "expected a label key at character 1, got 'Zone.IO/x'"),
        ("(" * 65 + "all()" + ")" * 65, "nested more than 64 levels deep"),
        ("!" * 65 + "all()", "nested more than 64 levels deep"),
    ],
)
def test_what_the_agent_accepted_and_the_lab_refused_is_refused(text: str, message: str) -> None:
    """The agent's parser took any word as a key and had no nesting limit (deep nesting was a
    RecursionError); the lab refused both. One parser now, the stricter."""
    with pytest.raises(SelectorError) as info:
        parse_selector(text)
    assert str(info.value) == message


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
    except SelectorError as err:
        assert "\n" not in str(err)
    else:
        sel.matches(NODE)
