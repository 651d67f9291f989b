"""Field selectors: apimachinery's grammar, kube-apiserver's per-kind supported fields."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ciliary.k8s.fieldselector import (
    FieldRequirement,
    FieldSelectorError,
    object_fields,
    parse_field_selector,
    supported_fields,
)

POD = {
    "metadata": {"name": "p1", "namespace": "default"},
    "spec": {"nodeName": "n1", "hostNetwork": False},
    "status": {"phase": "Running"},
}
POD_FIELDS = supported_fields("Pod", True)


@pytest.mark.parametrize(
    ("text", "selected"),
    [
        ("", True),
        ("metadata.name=p1", True),
        ("metadata.name==p1", True),
        ("metadata.name!=p1", False),
        ("metadata.name=p1,spec.nodeName=n1", True),
        ("metadata.name=p1,spec.nodeName=n2", False),
        ("spec.nodeName!=n2", True),
        ("spec.hostNetwork=false", True),
        ("status.podIP=", True),  # absent compares as ""
        ("status.phase=Running,", True),  # empty terms are skipped
    ],
)
def test_pod_field_selectors(text: str, selected: bool) -> None:
    sel = parse_field_selector(text, POD_FIELDS)
    assert sel.matches(object_fields(POD, sel.fields)) is selected


def test_unsupported_field_is_kube_apiservers_message() -> None:
    with pytest.raises(FieldSelectorError, match=r"^field label not supported: spec\.foo$"):
        parse_field_selector("metadata.name=p1,spec.foo=bar", POD_FIELDS)
    with pytest.raises(FieldSelectorError, match=r"field label not supported: spec\.nodeName"):
        parse_field_selector("spec.nodeName=n1", supported_fields("CiliumNetworkPolicy", True))
    assert "metadata.namespace" in supported_fields("Node", False)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("metadata.name", "can't understand 'metadata.name'"),
        ("a=b=c", "unescaped '='"),
        ("a=b\\x", "invalid escape sequence"),
        ("a=b\\", "unterminated escape"),
    ],
)
def test_bad_field_selectors(text: str, why: str) -> None:
    with pytest.raises(FieldSelectorError, match=why):
        parse_field_selector(text)


def test_escapes_and_exact() -> None:
    sel = parse_field_selector(r"metadata.name=a\,b\=c\\d,spec.nodeName!=x")
    assert sel.exact("metadata.name") == "a,b=c\\d"
    assert sel.exact("spec.nodeName") is None
    assert str(sel) == r"metadata.name=a\,b\=c\\d,spec.nodeName!=x"


@given(
    st.lists(
        st.builds(
            FieldRequirement,
            st.sampled_from(["metadata.name", "spec.nodeName"]),
            st.sampled_from(["=", "!="]),
            st.text(alphabet="ab,=\\", max_size=4),
        ),
        max_size=3,
    ),
    st.dictionaries(
        st.sampled_from(["metadata.name", "spec.nodeName"]), st.text(alphabet="ab,=\\", max_size=4)
    ),
)
def test_rendered_field_selectors_round_trip(
    reqs: list[FieldRequirement], fields: dict[str, str]
) -> None:
    sel = parse_field_selector(",".join(str(r) for r in reqs))
    assert sorted(sel.requirements, key=str) == sorted(reqs, key=str)
    assert sel.matches(fields) == all(r.matches(fields) for r in reqs)
