"""The PolicyTest oracle itself: only the datapath's own event decides a case. A client's
timeout is no deny and a forwarded request whose reply never came is no allow; a case without
the event it needs fails, saying so."""

from __future__ import annotations

from typing import Any

import pytest

from ciliary.lab.policytest import PolicyTestCase, _check, _client_verdict


def case(**kw: Any) -> PolicyTestCase:
    base: dict[str, Any] = {"from": "default/client", "to": "shop/db", "port": 5432}
    return PolicyTestCase.model_validate({**base, **kw})


def observed(datapath: str | None, client: str, **kw: Any) -> dict[str, Any]:
    res: dict[str, Any] = {
        "datapath": datapath,
        "client": client,
        "client_verdict": _client_verdict(client),
        "trace": datapath,
        "drop_reason": 133 if datapath == "deny" else None,
        "drop_reason_desc": "Policy denied" if datapath == "deny" else None,
        "rules": [],
    }
    res.update(kw)
    return res


def test_a_drop_event_proves_a_deny() -> None:
    assert (
        _check(case(expect="deny", dropReason=133), observed("deny", "stopped (dropped)"), "pod")
        == []
    )


def test_a_client_timeout_is_no_deny() -> None:
    problems = _check(case(expect="deny", dropReason=133), observed(None, "timeout"), "pod")
    assert problems == [
        "no drop event from the datapath for this flow (the client saw timeout): the client"
        " alone proves no deny"
    ]
    assert _check(case(expect="deny"), observed(None, "timeout"), "ip") != []


def test_a_deny_needs_the_given_reason_else_a_policy_reason() -> None:
    wrong = observed(
        "deny", "timeout", drop_reason=181, drop_reason_desc="Policy denied by denylist"
    )
    assert _check(case(expect="deny", dropReason=133), wrong, "pod") == [
        "expected drop reason 133 (Policy denied), got 181 (Policy denied by denylist)"
    ]
    not_policy = observed("deny", "timeout", drop_reason=132, drop_reason_desc="Invalid source ip")
    assert _check(case(expect="deny"), not_policy, "pod") == [
        "dropped for Invalid source ip (132), not by policy"
    ]


def test_a_drop_the_client_got_through_is_reported() -> None:
    problems = _check(case(expect="deny"), observed("deny", "connected"), "pod")
    assert problems == ["the client got through (connected) although the datapath dropped"]


@pytest.mark.parametrize("client", ["connected", "refused", "answered", "replied"])
def test_an_allow_towards_a_pod_needs_the_reply(client: str) -> None:
    assert _check(case(expect="allow"), observed("allow", client), "pod") == []


def test_a_forwarded_request_without_a_reply_is_no_allow() -> None:
    problems = _check(case(expect="allow"), observed("allow", "timeout"), "pod")
    assert problems == ["the datapath forwarded the request but the client saw no reply (timeout)"]
    # outside the cluster nobody need answer: the FORWARDED event at to-stack is the proof
    assert _check(case(expect="allow", to="192.0.2.10"), observed("allow", "timeout"), "ip") == []


def test_a_client_reply_without_the_datapath_event_is_no_allow() -> None:
    problems = _check(case(expect="allow"), observed(None, "connected", trace="allow"), "pod")
    assert problems == [
        "no FORWARDED event from the datapath for this flow (the client saw connected): the"
        " client alone proves no allow"
    ]


def test_disagreements_fail() -> None:
    assert _check(case(expect="allow"), observed("deny", "stopped (dropped)"), "pod") == [
        "expected allow, the datapath says deny"
    ]
    assert _check(case(expect="deny"), observed("deny", "timeout", trace="allow"), "pod") == [
        "policy trace says allow but the datapath says deny"
    ]
    assert _check(case(expect="deny", rule="db-deny"), observed("deny", "timeout"), "pod") == [
        "no deciding rule contains 'db-deny'"
    ]
