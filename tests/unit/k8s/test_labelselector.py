"""Label selectors: the string grammar as apimachinery parses it, the dict form, one matcher."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ciliary.k8s.labelselector import (
    CiliumLabel,
    Requirement,
    Selector,
    SelectorError,
    parse_cilium_label,
    parse_cilium_selector,
    parse_selector,
)
from ciliary.policy import api as policy_api

LABELS = {"app": "web", "tier": "front", "replicas": "3", "example.com/team": "a"}


@pytest.mark.parametrize(
    ("text", "selected"),
    [
        ("", True),
        ("   ", True),
        ("app=web", True),
        ("app==web", True),
        ("app = web", True),
        ("app!=web", False),
        ("app!=db", True),
        ("missing!=x", True),  # != holds when the key is absent
        ("app in (web, db)", True),
        ("app notin (web)", False),
        ("missing notin (x)", True),
        ("app", True),
        ("!app", False),
        ("!missing", True),
        ("replicas>2", True),
        ("replicas<3", False),
        ("app>2", False),  # not an integer: never holds
        ("missing>2", False),
        ("example.com/team=a,app", True),
        ("app=web,tier=back", False),
        ("missing=", False),  # an empty value is a value, not "absent"
        ("app in (web,)", True),
        ("x in (in, notin)", False),  # keywords are values inside a list
        ("app=in", False),
    ],
)
def test_string_selectors_match_as_kubernetes(text: str, selected: bool) -> None:
    assert parse_selector(text).matches(LABELS) is selected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("app in ()", "needs at least one value"),
        ("app in (a b)", "expected ',' or '\\)'"),
        ("app=(x", "unexpected '\\('"),
        ("app=x,", "trailing ','"),
        ("=x", "unexpected '='"),
        ("a b", "unexpected 'b'"),
        ("in in (a)", "expected a key"),
        ("app=" + "x" * 64, "not a valid label value"),
        ("app=-x", "not a valid label value"),
        ("Bad_Prefix/app=x", "not a valid label key"),
        ("/app", "not a valid label key"),
        ("k8s:app=x", "not a valid label key"),  # a Cilium source is not a Kubernetes key
        ("replicas>x", "needs an integer"),
        ("replicas>-1", "not a valid label value"),  # apimachinery validates it as a value too
        ("app in x", "expected '\\('"),
        ("app,,tier", "expected a key"),
        ("!", "unexpected end"),
    ],
)
def test_bad_selectors_name_the_selector_and_why(text: str, why: str) -> None:
    with pytest.raises(SelectorError, match=why) as err:
        parse_selector(text)
    assert "invalid label selector" in str(err.value)


def test_empty_values_as_apimachinery() -> None:
    assert parse_selector("a in (,b)").requirements[0].values == {"", "b"}
    assert parse_selector("a in (b,,c)").requirements[0].values == {"", "b", "c"}
    assert parse_selector("a=").requirements == (Requirement("a", "=", frozenset({""})),)
    assert parse_selector("a=").matches({"a": ""})


def test_requirements_sorted_by_key_and_rendered() -> None:
    sel = parse_selector("z notin (b,a), !y, app==web, n>1, k")
    assert [r.key for r in sel.requirements] == ["app", "k", "n", "y", "z"]
    assert str(sel) == "app=web,k,n>1,!y,z notin (a,b)"
    assert parse_selector(str(sel)) == sel


def test_label_selector_dict_form() -> None:
    doc: dict[str, Any] = {
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["front", "back"]},
            {"key": "canary", "operator": "DoesNotExist"},
        ],
    }
    sel = Selector.from_label_selector(doc)
    assert sel.matches(LABELS)
    assert not sel.matches({**LABELS, "canary": "1"})
    assert str(sel) == "app=web,!canary,tier in (back,front)"  # sorted by key
    assert sel == parse_selector("app=web,tier in (front,back),!canary")
    assert Selector.from_label_selector({}).matches({})  # empty selects everything
    assert not Selector.from_label_selector(None).matches(LABELS)  # null selects nothing
    assert Selector.from_labels({"app": "web"}).matches(LABELS)


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ({"matchExpressions": [{"key": "a", "operator": "In"}]}, r"\[0\]\.values: Required"),
        (
            {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
            r"\[0\]\.values: Forbidden",
        ),
        ({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}, "operator"),
        ({"matchExpressions": [{"key": "a b", "operator": "Exists"}]}, r"\[0\]\.key: Invalid"),
        ({"matchLabels": {"a": "-x"}}, "spec.selector.matchLabels: Invalid value"),
    ],
)
def test_label_selector_dict_errors_carry_field_paths(doc: dict[str, Any], why: str) -> None:
    with pytest.raises(SelectorError, match=why) as err:
        Selector.from_label_selector(doc, "spec.selector")
    assert str(err.value).startswith("spec.selector.")


_keys = st.sampled_from(["a", "b", "example.com/c"])
_vals = st.sampled_from(["x", "y", "1", "2", ""])


@st.composite
def _requirements(draw: st.DrawFn) -> Requirement:
    key = draw(_keys)
    op = draw(st.sampled_from(["exists", "!", "=", "!=", "in", "notin", "gt", "lt"]))
    if op in ("exists", "!"):
        return Requirement(key, op, frozenset())
    if op in ("gt", "lt"):
        return Requirement(key, op, frozenset({draw(st.sampled_from(["0", "1", "5"]))}))
    if op in ("=", "!="):
        return Requirement(key, op, frozenset({draw(_vals)}))
    return Requirement(key, op, frozenset(draw(st.lists(_vals, min_size=1, max_size=3))))


def _oracle(r: Requirement, labels: dict[str, str]) -> bool:
    have = labels.get(r.key)
    if r.op == "exists":
        return have is not None
    if r.op == "!":
        return have is None
    if r.op in ("=", "in"):
        return have in r.values
    if r.op in ("!=", "notin"):
        return have not in r.values
    if have is None or not have.isdigit():
        return False
    (bound,) = r.values
    return int(have) > int(bound) if r.op == "gt" else int(have) < int(bound)


@given(
    st.lists(_requirements(), max_size=4),
    st.dictionaries(_keys, _vals, max_size=3),
)
def test_rendered_selectors_reparse_and_match_like_the_oracle(
    reqs: list[Requirement], labels: dict[str, str]
) -> None:
    text = ",".join(str(r) for r in reqs)
    sel = parse_selector(text)
    assert sorted(sel.requirements, key=str) == sorted(reqs, key=str)
    assert sel.matches(labels) == all(_oracle(r, labels) for r in reqs)


@given(st.text(alphabet="ab=!,() <>in1 ", max_size=20))
def test_parser_never_crashes(text: str) -> None:
    with contextlib.suppress(SelectorError):
        parse_selector(text)


def test_cilium_flavour_keeps_sources_and_order() -> None:
    reqs = parse_cilium_selector("k8s:app in (a, b), !x, reserved:host")
    assert [(r.source, r.key, r.op) for r in reqs] == [
        ("k8s", "app", "in"),
        ("any", "x", "!"),
        ("reserved", "host", "exists"),
    ]
    labels = [parse_cilium_label(s) for s in ("k8s:app=a", "$host", "unspec-key=1")]
    assert labels[1].source == "reserved" and labels[1].key == "host"
    assert all(r.matches(labels) for r in reqs)
    assert not parse_cilium_selector("container:app=a")[0].matches(labels)
    assert parse_cilium_selector("unspec-key=1")[0].matches(labels)
    with pytest.raises(SelectorError, match="bad key"):
        parse_cilium_selector(":app")


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("k8s:app=web", CiliumLabel("k8s", "app", "web")),
        ("$host", CiliumLabel("reserved", "host")),
        ("reserved:=host", CiliumLabel("reserved", "host")),  # upstream ParseLabel's special case
        ("app=a:b", CiliumLabel("unspec", "app", "a:b")),
        ("k8s:url=http://x", CiliumLabel("k8s", "url", "http://x")),
    ],
)
def test_one_cilium_label_parser_for_policy_and_hubble(text: str, label: CiliumLabel) -> None:
    """Policy's ``parse_label`` and Hubble's label filters used to parse label strings apart
    (Hubble took ``reserved:=host``, policy refused it; policy refused ``k8s:=x``, Hubble made a
    label with an empty key of it): both are now this one function."""
    assert parse_cilium_label(text) == label
    assert policy_api.parse_label is parse_cilium_label
    assert policy_api.Label is CiliumLabel
    with pytest.raises(ValueError, match="has no key"):
        parse_cilium_label("k8s:=x")
