"""``ciliary monitor``: live datapath trace and drop events, one line each, like ``cilium monitor``.

The agent decodes the ring buffer and streams :class:`MonitorEvent` objects; this module only
filters (``--type`` server-side, ``--from``/``--to``/``--related-to`` here) and prints them in
upstream's one-line shapes, so an upstream-trained eye (or grep) finds ``-> endpoint 12`` and
``xx drop (Policy denied)`` where it expects them. Pod names, which upstream only shows with
``-v``, are appended when the agent knows them because lab pods are addressed by name, and so is
the policy verdict's "why" (the deciding rules, or ``default deny``) when the agent knows it.
``-o json`` emits one JSON object per line, flushed, for scripts and tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator

from ciliary.cli.output import (
    Context,
    Subparsers,
    add_node_flag,
    add_output_flag,
    fmt_addr,
    wants_json,
)
from ciliary.core.flow import POLICY_MATCH_TYPES
from ciliary.core.models import MONITOR_EVENT_TYPES, MonitorEvent
from ciliary.hubble.gopacket import ICMP4_TYPE_NAMES, ICMP6_TYPE_NAMES, TCP_FLAG_ORDER

# cilium's traceSummary(): where in the datapath a trace was emitted.
_TRACE_POINTS: dict[str, str] = {
    "to-endpoint": "-> endpoint {dst_ep}",
    "to-proxy": "-> proxy",
    "to-host": "-> host",
    "to-stack": "-> stack",
    "to-overlay": "-> overlay",
    "to-network": "-> network",
    "from-endpoint": "<- endpoint {src_ep}",
    "from-proxy": "<- proxy",
    "from-host": "<- host",
    "from-stack": "<- stack",
    "from-overlay": "<- overlay",
    "from-network": "<- network",
}


def register(sub: Subparsers) -> None:
    p = sub.add_parser("monitor", help="print live datapath trace/drop events")
    add_node_flag(p)
    add_output_flag(p)
    p.add_argument("-t", "--type", choices=MONITOR_EVENT_TYPES, help="only events of this type")
    p.add_argument("--from", dest="from_ep", type=int, metavar="ID", help="source endpoint id")
    p.add_argument("--to", dest="to_ep", type=int, metavar="ID", help="destination endpoint id")
    p.add_argument(
        "--related-to", type=int, metavar="ID", help="events from or to this endpoint id"
    )
    p.add_argument("-n", "--count", type=int, metavar="N", help="exit after N events")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- formatting


def _point(ev: MonitorEvent) -> str:
    return ev.observation_point.strip().lower().replace("_", "-")


def _l4(ev: MonitorEvent) -> str:
    proto = ev.protocol.lower()
    if proto in ("icmp", "icmpv4", "icmpv6"):
        table = ICMP6_TYPE_NAMES if ev.ip_version == 6 or proto == "icmpv6" else ICMP4_TYPE_NAMES
        name = table.get(ev.icmp_type, f"type {ev.icmp_type}")
        code = f" code {ev.icmp_code}" if ev.icmp_code and ev.icmp_type in (1, 3, 11) else ""
        return f"{fmt_addr(ev.src_ip)} -> {fmt_addr(ev.dst_ip)} {proto} {name}{code}"
    conn = f"{fmt_addr(ev.src_ip, ev.src_port)} -> {fmt_addr(ev.dst_ip, ev.dst_port)} {proto}"
    if proto == "tcp" and ev.tcp_flags:
        flags = [f for f in TCP_FLAG_ORDER if f in ev.tcp_flags]
        flags += [f for f in ev.tcp_flags if f not in TCP_FLAG_ORDER]
        conn += " " + ", ".join(flags)
    return conn


def _pods(ev: MonitorEvent) -> str:
    if not ev.src_pod and not ev.dst_pod:
        return ""
    return f" ({ev.src_pod or '?'} -> {ev.dst_pod or '?'})"


def _policy(ev: MonitorEvent) -> str:
    """Why policy let the flow through or dropped it: the deciding rules, else the reason."""
    if ev.policy_rules:
        return " policy: " + ", ".join(ev.policy_rules)
    if ev.explanation:  # a default deny: the policies that selected the endpoint
        return f" {ev.verdict_reason}: {ev.explanation}"
    return f" {ev.verdict_reason}" if ev.verdict_reason else ""


def format_event(ev: MonitorEvent) -> str:
    """One ``cilium monitor`` line for ``ev``, with the policy verdict's rules when known."""
    ifname = ev.ifname or str(ev.ifindex)
    identity = f"identity {ev.src_identity}->{ev.dst_identity}"
    if ev.type == "drop":
        reason = ev.drop_reason_desc or f"reason {ev.drop_reason}"
        return (
            f"xx drop ({reason}) flow 0x0 to endpoint {ev.dst_endpoint_id}, "
            f"ifindex {ev.ifindex} ({ifname}), {identity}: {_l4(ev)}{_pods(ev)}{_policy(ev)}"
        )
    if ev.type == "policy-verdict":
        local = ev.dst_endpoint_id if ev.traffic_direction == "ingress" else ev.endpoint_id
        remote = ev.src_identity if ev.traffic_direction == "ingress" else ev.dst_identity
        match = POLICY_MATCH_TYPES.get(ev.policy_match_type, str(ev.policy_match_type))
        # upstream's actions; "redirect": the connection goes to an L7 proxy
        action = {"DROPPED": "deny", "REDIRECTED": "redirect"}.get(ev.verdict, "allow")
        return (
            f"Policy verdict log: flow 0x0 local EP ID {local}, remote ID {remote}, "
            f"proto {ev.protocol}, {ev.traffic_direction}, action {action}, match {match}, "
            f"{_l4(ev)}{_pods(ev)}{_policy(ev)}"
        )
    where = _TRACE_POINTS.get(_point(ev), "-> " + (_point(ev) or "trace")).format(
        dst_ep=ev.dst_endpoint_id, src_ep=ev.endpoint_id
    )
    state = ev.ct_state.lower() or "unknown"
    return (
        f"{where} flow 0x0 , {identity} state {state} ifindex {ifname} "
        f"orig-ip {ev.src_ip}: {_l4(ev)}{_pods(ev)}{_policy(ev)}"
    )


# --------------------------------------------------------------------------- filtering


def matches(ev: MonitorEvent, args: argparse.Namespace) -> bool:
    if args.type and ev.type != args.type:
        return False
    if args.from_ep is not None and ev.endpoint_id != args.from_ep:
        return False
    if args.to_ep is not None and ev.dst_endpoint_id != args.to_ep:
        return False
    related = args.related_to
    return related is None or related in (ev.endpoint_id, ev.dst_endpoint_id)


def _selected(events: Iterator[MonitorEvent], args: argparse.Namespace) -> Iterator[MonitorEvent]:
    seen = 0
    for ev in events:
        if not matches(ev, args):
            continue
        yield ev
        seen += 1
        if args.count is not None and seen >= args.count:
            return


def run(args: argparse.Namespace, ctx: Context) -> int:
    if args.count is not None and args.count <= 0:
        return 0
    as_json = wants_json(args)
    with ctx.client() as client:
        if not as_json:
            ctx.err_console.print(
                f"Listening for events on {client.socket_path}. Press Ctrl-C to quit"
            )
        try:
            with contextlib.closing(client.monitor(args.type)) as stream:
                for ev in _selected(stream, args):
                    line = json.dumps(ev.model_dump(mode="json")) if as_json else format_event(ev)
                    sys.stdout.write(line + "\n")
                    sys.stdout.flush()
        except KeyboardInterrupt:
            return 0
    return 0
