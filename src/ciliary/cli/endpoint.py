"""``ciliary endpoint list|get``: the node's endpoints as ``cilium-dbg endpoint`` shows them.

The list keeps upstream's columns and order (ENDPOINT, the two POLICY ENFORCEMENT columns,
IDENTITY, LABELS one per line, IPv6, IPv4, STATUS) so muscle memory and scripts carry over, and
adds POD because in a lab the pod name is what people look for. ``get`` takes an endpoint id or,
as upstream does, ``pod:[ns/]name`` / ``container-id:ID``.
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.text import Text

from ciliary.cli.output import (
    CLIError,
    Context,
    Subparsers,
    add_node_flag,
    add_output_flag,
    fmt_duration,
    fmt_identity,
    fmt_opt,
    fmt_time,
    k8s_labels,
    new_table,
    print_json,
    print_kv,
    print_table,
    wants_json,
)
from ciliary.client import AgentClient
from ciliary.core.flow import ReservedIdentity
from ciliary.core.models import Endpoint, EndpointState


def register(sub: Subparsers) -> None:
    p = sub.add_parser("endpoint", aliases=["ep"], help="list and inspect endpoints")
    esub = p.add_subparsers(dest="endpoint_cmd", required=True, metavar="COMMAND")

    lp = esub.add_parser("list", aliases=["ls"], help="list the node's endpoints")
    add_node_flag(lp)
    add_output_flag(lp)
    lp.set_defaults(func=run_list)

    gp = esub.add_parser("get", help="show one endpoint in detail")
    gp.add_argument("id", metavar="ID", help="endpoint id, pod:[ns/]name or container-id:ID")
    gp.add_argument(
        "--policy", action="store_true", help="also show the realized policy (bpf policy get)"
    )
    add_node_flag(gp)
    add_output_flag(gp)
    gp.set_defaults(func=run_get)


# --------------------------------------------------------------------------- list


def endpoint_labels(ep: Endpoint) -> list[str]:
    labels = k8s_labels(ep.labels, ep.namespace if ep.pod_name else None)
    if not labels:
        try:
            labels = [ReservedIdentity(ep.identity).label]
        except ValueError:
            labels = ["no labels"]
    return labels


def _state_text(state: EndpointState) -> Text:
    if state is EndpointState.READY:
        return Text(state.value, style="green")
    if state in (EndpointState.NOT_READY, EndpointState.INVALID, EndpointState.DISCONNECTED):
        return Text(state.value, style="bold red")
    return Text(state.value, style="yellow")


def pod_ref(ep: Endpoint) -> str:
    return f"{ep.namespace}/{ep.pod_name}" if ep.pod_name else "-"


def render_list(console: Console, endpoints: list[Endpoint]) -> None:
    table = new_table(
        "ENDPOINT",
        "POLICY (ingress)\nENFORCEMENT",
        "POLICY (egress)\nENFORCEMENT",
        "IDENTITY",
        "LABELS (source:key[=value])",
        "IPv6",
        "IPv4",
        "STATUS",
        "POD",
    )
    for ep in sorted(endpoints, key=lambda e: e.id):
        table.add_row(
            str(ep.id),
            ep.policy_ingress,
            ep.policy_egress,
            str(ep.identity),
            "\n".join(endpoint_labels(ep)),
            ep.ipv6 or "",
            ep.ipv4 or "",
            _state_text(ep.state),
            pod_ref(ep),
        )
    print_table(console, table)


def run_list(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client() as client:
        endpoints = client.endpoints()
    if wants_json(args):
        print_json(sorted(endpoints, key=lambda e: e.id))
    else:
        render_list(ctx.console, endpoints)
    return 0


# --------------------------------------------------------------------------- get


def find_endpoint(client: AgentClient, ref: str) -> Endpoint:
    """Resolve ``ID``, ``pod:[ns/]name`` or ``container-id:ID`` to one endpoint."""
    if ref.isdigit():
        return client.endpoint(int(ref))
    kind, sep, value = ref.partition(":")
    if not sep or not value:
        raise CLIError(
            f"invalid endpoint {ref!r}: expected an id, pod:[ns/]name or container-id:ID"
        )
    endpoints = client.endpoints()
    if kind == "pod":
        ns, _, name = value.rpartition("/")
        ns = ns or "default"
        matches = [e for e in endpoints if e.namespace == ns and e.pod_name == name]
        what = f"pod {ns}/{name}"
    elif kind == "container-id":
        matches = [e for e in endpoints if e.container_id == value]
        what = f"container {value}"
    else:
        raise CLIError(f"invalid endpoint prefix {kind!r}: use pod: or container-id:")
    if not matches:
        raise CLIError(f"no endpoint for {what}")
    return matches[0]


def render_detail(console: Console, ep: Endpoint, *, now: float | None = None) -> None:
    now = time.time() if now is None else now
    print_kv(
        console,
        [
            ("Endpoint", str(ep.id)),
            ("State", _state_text(ep.state)),
            ("Pod", pod_ref(ep)),
            ("Container ID", ep.container_id),
            ("Identity", fmt_identity(ep.identity)),
            ("Labels", "\n".join(endpoint_labels(ep))),
            ("Policy enforcement", f"ingress {ep.policy_ingress}, egress {ep.policy_egress}"),
            ("IPv4", fmt_opt(ep.ipv4)),
            ("IPv6", fmt_opt(ep.ipv6)),
            ("Interface", f"{ep.ifname} (MAC {ep.mac}) in netns {ep.netns}"),
            ("Host interface", f"{ep.lxc} (ifindex {ep.lxc_ifindex}, MAC {ep.node_mac})"),
            ("Created", f"{fmt_time(ep.created_at)} ({fmt_duration(now - ep.created_at)} ago)"),
        ],
    )
    print_kv(console, [("State log", "" if ep.log else "(empty)")])
    if ep.log:
        table = new_table("  TIME", "STATE", "REASON")
        for change in ep.log:
            table.add_row(f"  {fmt_time(change.time)}", _state_text(change.state), change.reason)
        print_table(console, table)


def run_get(args: argparse.Namespace, ctx: Context) -> int:
    if getattr(args, "policy", False):
        return _run_get_with_policy(args, ctx)
    with ctx.client() as client:
        ep = find_endpoint(client, args.id)
    if wants_json(args):
        print_json(ep)
    else:
        render_detail(ctx.console, ep)
    return 0


def _run_get_with_policy(args: argparse.Namespace, ctx: Context) -> int:
    from ciliary.cli import bpf  # noqa: PLC0415 - bpf imports this module

    with ctx.client() as client:
        ep = find_endpoint(client, args.id)
        status = client.endpoint_policy(ep.id)
        known = {} if wants_json(args) else bpf.identity_labels_by_id(client)
    if wants_json(args):
        print_json({"endpoint": ep, "policy": status})
        return 0
    render_detail(ctx.console, ep)
    ctx.console.print()
    bpf.render_endpoint_policy(ctx.console, status, known)
    return 0
