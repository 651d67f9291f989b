"""A default-deny drop names why, on every surface fed from the datapath's event: the agent's
monitor events (``ciliary monitor``, the PolicyTest runner), Hubble flows (in ``extensions``,
never in upstream's ``*_denied_by``) and the Hubble printer (``ciliary observe
--print-policy-names``)."""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Any, cast

from ciliary.agent.flows import FlowDecoder, FlowGetters
from ciliary.agent.monitor import Monitor
from ciliary.cli.monitor import format_event
from ciliary.datapath.loader import NodeDatapath
from ciliary.hubble.api.observer import observer_pb2
from ciliary.hubble.explain import default_deny_of
from ciliary.hubble.printer import Printer, PrinterOptions
from ciliary.policy.explain import DefaultDeny, PolicyRef
from ciliary.policy.mapstate import Direction

from .test_flows import event

REF = PolicyRef(
    "CiliumNetworkPolicy/shop/db-from-web", "CiliumNetworkPolicy", "shop", "db-from-web"
)
TEXT = (
    "shop/server is selected for ingress by CiliumNetworkPolicy shop/db-from-web;"
    " no rule of it allows this peer/port"
)
# a default-deny drop at the receiver's ingress: reason 133, no cookie (no entry matched)
DROP = event(type=1, verdict=2, drop_reason=133, obs_point=0, traffic_direction=1)


def _explainer(asked: list[tuple[int, str]]) -> Any:
    def default_deny(ep_id: int, direction: Direction) -> DefaultDeny | None:
        asked.append((ep_id, direction))
        name = {9: "shop/server", 7: "default/client"}[ep_id]
        return DefaultDeny(name, direction, (REF,))

    return default_deny


def _monitor(asked: list[tuple[int, str]]) -> Monitor:
    pods = {7: "default/client", 9: "shop/server"}
    return Monitor("n1", cast(NodeDatapath, None), pods.get, default_deny=_explainer(asked))


def test_monitor_event_names_the_policies_of_the_deciding_endpoint() -> None:
    asked: list[tuple[int, str]] = []
    ev = _monitor(asked).decode(DROP)
    assert asked == [(9, "ingress")]  # the receiver (dst_ep_id) for an ingress drop
    assert ev.verdict_reason == "default deny"
    assert ev.default_deny_by == ["CiliumNetworkPolicy shop/db-from-web"]
    assert ev.explanation == TEXT
    assert format_event(ev).endswith(f"default deny: {TEXT}")

    egress = _monitor(asked).decode(replace(DROP, traffic_direction=2))
    assert asked[-1] == (7, "egress")  # the sender (ep_id) for an egress drop
    assert egress.explanation.startswith("default/client is selected for egress by")


def test_monitor_explains_only_default_deny_drops() -> None:
    asked: list[tuple[int, str]] = []
    mon = _monitor(asked)
    by_rule = mon.decode(replace(DROP, policy_cookie=3))  # a matched entry: its rules say why
    deny_rule = mon.decode(replace(DROP, drop_reason=181, policy_cookie=0))
    forwarded = mon.decode(event())
    assert asked == []
    for ev in (by_rule, deny_rule, forwarded):
        assert (ev.default_deny_by, ev.explanation, ev.verdict_reason) == ([], "", "")


def test_flow_carries_the_explanation_in_extensions_not_in_denied_by() -> None:
    asked: list[tuple[int, str]] = []
    decoder = FlowDecoder("n1", FlowGetters(default_deny=_monitor(asked).why_default_deny))
    f = decoder.decode(DROP)
    assert not f.ingress_denied_by and not f.egress_denied_by and not f.policy_log
    assert default_deny_of(f) == (TEXT, ["CiliumNetworkPolicy shop/db-from-web"])
    # a flow without it (any other event) has none
    assert default_deny_of(decoder.decode(event())) is None

    out = io.StringIO()
    printer = Printer(PrinterOptions(policy_names=True), out, io.StringIO())
    printer.write_get_flows_response(observer_pb2.GetFlowsResponse(flow=f))
    printer.close()
    assert f"DROPPED (default deny: {TEXT})" in out.getvalue()
