"""PolicyTest cases with hosts of the world outside the cluster (the Lab's ``spec.externals``):
``world:NAME`` (``world`` alone for a lab's only one) and a world host's address name that host,
probes from it run in its netns, a case needs a pod on the other side, and an allowed flow to a
world host needs its answer (the lab's world hosts answer, as pods do)."""

from __future__ import annotations

from typing import Any

import pytest

from ciliary.lab.policytest import PolicyTestCase, PolicyTestError, _check, _client_verdict, _Lab
from ciliary.lab.state import ExternalRecord, LabRecord, NodeRecord, PodRecord


def lab(*worlds: str) -> _Lab:
    """A ``_Lab`` of a record (its agents are not asked: the router addresses are given)."""
    rec = LabRecord(
        name="l",
        file=None,
        created_at=0,
        nodes=[NodeRecord(name="n1", netns="ciln-l-n1", state_dir="/s", pin_dir="/p", socket="/k")],
        pods=[
            PodRecord(
                name="web",
                namespace="shop",
                node="n1",
                netns="cilp-l-web",
                container_id="c",
                ipv4="10.200.0.5",
                ipv6="fd00:10:200::5",
            ),
        ],
        externals=[
            ExternalRecord(
                name=w, netns=f"cilw-l-{w}", ipv4=f"172.18.0.{254 - i}", ipv6=f"fc00::{254 - i:x}"
            )
            for i, w in enumerate(worlds)
        ],
    )
    out = _Lab.__new__(_Lab)
    out.rec = rec
    out.routers = {"n1": {4: "10.200.0.1", 6: "fd00:10:200::1"}}
    out.world = {e.name: e for e in rec.externals}
    return out


def case(**kw: Any) -> PolicyTestCase:
    return PolicyTestCase.model_validate({"port": 80, "expect": "allow", **kw})


def test_a_world_host_by_name_probes_from_its_netns() -> None:
    src, dst = lab("partner", "other").peers(case(**{"from": "world:partner", "to": "shop/web"}))
    assert (src.kind, src.ip, src.netns, src.node) == (
        "world",
        "172.18.0.254",
        "cilw-l-partner",
        None,
    )
    assert (dst.kind, dst.ip) == ("pod", "10.200.0.5")
    src, dst = lab("partner", "other").peers(
        case(**{"from": "shop/web", "to": "world:other", "family": 6})
    )
    assert (src.kind, dst.kind, dst.ip) == ("pod", "world", "fc00::fd")


def test_world_alone_is_the_only_world_host_and_its_address_is_it() -> None:
    _, dst = lab("partner").peers(case(**{"from": "shop/web", "to": "world"}))
    assert (dst.kind, dst.ip, dst.netns) == ("world", "172.18.0.254", "cilw-l-partner")
    _, dst = lab("partner").peers(case(**{"from": "shop/web", "to": "172.18.0.254"}))
    assert (dst.kind, dst.text) == ("world", "172.18.0.254")
    _, dst = lab("partner").peers(case(**{"from": "shop/web", "to": "172.18.0.9"}))
    assert dst.kind == "ip"


@pytest.mark.parametrize(
    ("src", "dst", "problem"),
    [
        ("world", "shop/web", "'world': which world host? (write world:NAME; a, b)"),
        ("world:c", "shop/web", "'world:c': the lab has no world host 'c' (a, b)"),
        ("world:a", "world:b", "'world:a' -> 'world:b': a case with a world host needs a pod"),
        ("host:n1", "world:b", "'host:n1' -> 'world:b': a case with a world host needs a pod"),
    ],
)
def test_bad_world_cases_are_named(src: str, dst: str, problem: str) -> None:
    with pytest.raises(PolicyTestError) as err:
        lab("a", "b").peers(case(**{"from": src, "to": dst}))
    assert str(err.value).startswith(problem)


def test_a_lab_without_world_hosts_says_so() -> None:
    with pytest.raises(PolicyTestError, match=r"none: the Lab has no spec\.externals"):
        lab().peers(case(**{"from": "world:x", "to": "shop/web"}))


def test_an_allow_towards_a_world_host_needs_its_answer() -> None:
    res = {
        "datapath": "allow", "client": "timeout", "client_verdict": _client_verdict("timeout"),
        "trace": "allow", "drop_reason": None, "drop_reason_desc": None, "rules": [],
    }  # fmt: skip
    allow = case(**{"from": "shop/web", "to": "world:a"})
    assert _check(allow, res, "world") == [
        "the datapath forwarded the request but the client saw no reply (timeout)"
    ]
    answered = {**res, "client": "refused", "client_verdict": _client_verdict("refused")}
    assert _check(allow, answered, "world") == []
