"""A policy verdict whose connection goes to an L7 proxy (the datapath's VERDICT_REDIRECTED,
bpf/lib/events.h policy_verdict_notify with the proxy port, as upstream's verdict > 0): the
monitor names it REDIRECTED and ``ciliary monitor`` prints upstream's ``action redirect``."""

from __future__ import annotations

from typing import cast

from ciliary.agent.monitor import Monitor
from ciliary.cli.monitor import format_event
from ciliary.core.flow import Verdict
from ciliary.datapath.loader import NodeDatapath

from .test_flows import event


def test_a_redirected_policy_verdict_is_action_redirect() -> None:
    mon = Monitor("n1", cast(NodeDatapath, None), {9: "default/deathstar"}.get)
    verdict = event(type=5, verdict=int(Verdict.REDIRECTED), obs_point=0, traffic_direction=1)
    ev = mon.decode(verdict)
    assert (ev.type, ev.verdict) == ("policy-verdict", "REDIRECTED")
    assert ", action redirect, " in format_event(ev)
    allowed = mon.decode(event(type=5, verdict=int(Verdict.FORWARDED), obs_point=0))
    assert ", action allow, " in format_event(allowed)
