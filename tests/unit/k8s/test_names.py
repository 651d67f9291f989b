"""Kubernetes name and label syntax: one set of predicates, and every surface words the same
verdict (API server, lab file, policy translator)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ciliary.k8s import fields, labelselector, names
from ciliary.k8s.names import KeyFault, label_key_fault
from ciliary.policy.api import labels as policy_labels
from ciliary.policy.api import translate


@pytest.mark.parametrize(
    ("text", "label", "subdomain"),
    [
        ("a", True, True),
        ("web-1", True, True),
        ("a.b", False, True),
        ("-a", False, False),
        ("a-", False, False),
        ("A", False, False),
        ("a_b", False, False),
        ("", False, False),
        ("a" * 63, True, True),
        ("a" * 64, False, True),
        (".".join(["a" * 63] * 4), False, False),  # 255 characters
        (".".join(["a" * 63] * 3 + ["a" * 61]), False, True),  # 253 characters
        ("a..b", False, False),
    ],
)
def test_dns1123(text: str, label: bool, subdomain: bool) -> None:
    assert names.is_dns1123_label(text) is label
    assert names.is_dns1123_subdomain(text) is subdomain
    # the policy translator answers the same (in its own words)
    assert (translate.dns_label_problem(text) is None) is label
    assert (translate.dns_subdomain_problem(text) is None) is subdomain


def test_dns1123_label_length_is_the_callers() -> None:
    assert names.is_dns1123_label("a" * 15, 15)
    assert not names.is_dns1123_label("a" * 16, 15)


@pytest.mark.parametrize(
    ("key", "fault"),
    [
        ("app", None),
        ("app.kubernetes.io/name", None),
        ("a_b.c-d", None),
        ("a/b/c", KeyFault.SLASHES),
        ("/name", KeyFault.PREFIX_EMPTY),
        ("Example.com/name", KeyFault.PREFIX_INVALID),
        ("example.com/", KeyFault.NAME_EMPTY),
        ("", KeyFault.NAME_EMPTY),
        ("a" * 64, KeyFault.NAME_TOO_LONG),
        ("-app", KeyFault.NAME_INVALID),
        ("k8s:app", KeyFault.NAME_INVALID),
    ],
)
def test_label_key_faults(key: str, fault: KeyFault | None) -> None:
    assert label_key_fault(key) is fault
    assert (labelselector.label_key_problem(key) is None) is (fault is None)
    assert (policy_labels.qualified_name_problem(key) is None) is (fault is None)


def test_kube_apiserver_words_for_keys_and_values() -> None:
    assert labelselector.label_key_problem("a/b/c") == (
        "prefix part must be a lowercase RFC 1123 subdomain of at most 253 characters"
    )
    assert labelselector.label_key_problem("x/") == "name part must be non-empty"
    assert labelselector.label_value_problem("a" * 64) == "must be no more than 63 characters"
    assert labelselector.label_value_problem("") is None


_TEXT = st.text(alphabet="aZ09-_./:", max_size=70)


@given(_TEXT)
def test_every_surface_agrees_on_label_keys_and_values(text: str) -> None:
    """The lab's pydantic types (k8s.fields), the policy checker and the API server's checks used
    to carry their own regular expressions; they now share one verdict."""
    valid_key = label_key_fault(text) is None
    assert (labelselector.label_key_problem(text) is None) is valid_key
    assert (policy_labels.qualified_name_problem(text) is None) is valid_key
    try:
        fields.label_key(text)
    except ValueError:
        assert not valid_key
    else:
        assert valid_key
    valid_value = names.is_label_value(text)
    assert (labelselector.label_value_problem(text) is None) is valid_value
    assert (policy_labels.label_value_problem(text) is None) is valid_value


@pytest.mark.parametrize(
    ("text", "port", "env"),
    [
        ("http", True, True),
        ("web-8080", True, True),
        ("8080", False, False),  # a port name needs a letter; an env name may not start so
        ("a--b", False, True),
        ("-a", False, True),
        ("a" * 16, False, True),
        ("HTTP", False, True),
        ("MY_VAR.x", False, True),
        ("", False, False),
    ],
)
def test_port_and_env_var_names(text: str, port: bool, env: bool) -> None:
    assert names.is_port_name(text) is port
    assert names.is_env_var_name(text) is env
