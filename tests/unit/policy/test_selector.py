"""Cilium labels and selector matching: sources, ``any:``, reserved labels, K8s operators."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ciliary.policy.api import Label, LabelSet, Requirement, Selector, parse_label

NS = "k8s:io.kubernetes.pod.namespace"


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("k8s:app=web", Label("k8s", "app", "web")),
        ("k8s:io.kubernetes.pod.namespace=shop", Label("k8s", NS[4:], "shop")),
        ("reserved:host", Label("reserved", "host", "")),
        ("$world", Label("reserved", "world", "")),
        ("app=web", Label("unspec", "app", "web")),
        ("k8s:url=http://x", Label("k8s", "url", "http://x")),
        ("k8s:app.kubernetes.io/name=db", Label("k8s", "app.kubernetes.io/name", "db")),
        ("k8s:empty=", Label("k8s", "empty", "")),
    ],
)
def test_parse_label(text: str, label: Label) -> None:
    assert parse_label(text) == label


def test_label_strings_round_trip() -> None:
    for text in ("k8s:app=web", "reserved:host", "unspec:app=a:b"):
        assert str(parse_label(text)) == text
    with pytest.raises(ValueError, match="has no key"):
        parse_label("k8s:=x")


def test_label_set() -> None:
    labels = LabelSet(["k8s:app=web", "container:app=other", "reserved:host"])
    assert len(labels) == 3
    assert "k8s:app=web" in labels and Label("reserved", "host") in labels
    assert "k8s:app=db" not in labels and "=" not in labels
    assert labels.values("k8s", "app") == {"web"}
    assert labels.values("any", "app") == {"web", "other"}
    assert labels.has("reserved", "host") and labels.has("any", "host")
    assert not labels.has("k8s", "host")
    assert LabelSet({"k8s:app": "web"}) == LabelSet([Label("k8s", "app", "web")])
    assert LabelSet({"app": "web"}) == LabelSet(["unspec:app=web"])
    assert hash(LabelSet(["k8s:a=b"])) == hash(LabelSet([Label("k8s", "a", "b")]))
    assert repr(LabelSet(["k8s:a=b"])) == "LabelSet(['k8s:a=b'])"


POD = ["k8s:app=web", "k8s:tier=front", f"{NS}=shop"]


def test_sources() -> None:
    assert Selector((("k8s:app", "web"),)).matches(POD)
    assert Selector((("any:app", "web"),)).matches(POD)
    assert not Selector((("container:app", "web"),)).matches(POD)
    assert Selector((("reserved:host", ""),)).matches(["reserved:host"])
    assert not Selector((("reserved:host", ""),)).matches(["reserved:world"])
    assert Selector((("k8s:app", "web"),)).matches({"k8s:app": "web"})
    assert Selector((("k8s:app", "web"),)).matches(LabelSet(POD))
    assert Selector((("k8s:app", "web"),)).matches([Label("k8s", "app", "web")])


def test_empty_selector_selects_everything() -> None:
    assert Selector().is_wildcard
    assert Selector().matches([])
    assert Selector().matches(["reserved:world"])
    assert str(Selector()) == "<all>"


@pytest.mark.parametrize(
    ("requirement", "selected"),
    [
        (Requirement("k8s:app", "In", ("db", "web")), True),
        (Requirement("k8s:app", "In", ("db",)), False),
        (Requirement("k8s:missing", "In", ("x",)), False),
        (Requirement("k8s:app", "NotIn", ("db",)), True),
        (Requirement("k8s:app", "NotIn", ("web",)), False),
        (Requirement("k8s:missing", "NotIn", ("x",)), True),
        (Requirement("k8s:tier", "Exists"), True),
        (Requirement("k8s:missing", "Exists"), False),
        (Requirement("k8s:tier", "DoesNotExist"), False),
        (Requirement("k8s:missing", "DoesNotExist"), True),
        (Requirement("any:io.kubernetes.pod.namespace", "In", ("shop",)), True),
    ],
)
def test_operators(requirement: Requirement, selected: bool) -> None:
    assert Selector((), (requirement,)).matches(POD) is selected


def test_all_requirements_must_hold() -> None:
    selector = Selector((("k8s:app", "web"),), (Requirement(NS, "In", ("other",)),))
    assert not selector.matches(POD)
    assert str(selector) == f"k8s:app=web,{NS} in (other)"


def test_any_source_over_several_sources() -> None:
    labels = ["k8s:app=web", "container:app=db"]
    assert Selector((), (Requirement("any:app", "In", ("db",)),)).matches(labels)
    assert not Selector((), (Requirement("any:app", "NotIn", ("db",)),)).matches(labels)


def test_selector_helpers() -> None:
    selector = Selector((("k8s:app", "web"),))
    scoped = selector.with_label(NS, "shop")
    assert scoped.match_labels == (("k8s:app", "web"), (NS, "shop"))
    assert scoped.with_label(NS, "other").get(NS) == "other"
    assert scoped.has_key(NS) and not selector.has_key(NS)
    assert scoped.has_source("k8s") and not scoped.has_source("reserved")
    exists = selector.with_requirement(Requirement(NS, "Exists"))
    assert exists.has_key(NS)
    assert str(exists) == f"k8s:app=web,{NS}"
    assert str(Requirement("k8s:a", "DoesNotExist")) == "!k8s:a"


keys = st.sampled_from(["app", "tier", "team"])
values = st.sampled_from(["a", "b", "c"])


@given(
    labels=st.dictionaries(keys, values),
    wanted=st.dictionaries(keys, values),
)
def test_match_labels_is_a_subset_test(labels: dict[str, str], wanted: dict[str, str]) -> None:
    pod = [f"k8s:{k}={v}" for k, v in labels.items()]
    selector = Selector(tuple(sorted((f"k8s:{k}", v) for k, v in wanted.items())))
    assert selector.matches(pod) == (wanted.items() <= labels.items())
    as_expressions = Selector(
        (), tuple(Requirement(f"any:{k}", "In", (v,)) for k, v in sorted(wanted.items()))
    )
    assert as_expressions.matches(pod) == selector.matches(pod)
