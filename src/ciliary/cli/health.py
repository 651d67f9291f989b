"""``ciliary health status`` and the cluster health lines of ``ciliary status``: can this node
reach every node of the cluster, and how fast?

Both read the agent's status (its prober's results, ``agent/health.py``) and print them as
upstream does: ``cilium-health status`` (per node, per address of the node — "Host
connectivity to" — and of its health endpoint — "Endpoint connectivity to" —: "ICMP to stack"
and "HTTP to agent" with the round-trip time or the error) and ``cilium-dbg status``'s "Cluster
health: N/M reachable" line, with the table of the nodes that are not (``--all-health``: of
every node), one row per address of either path.
"""

from __future__ import annotations

import argparse
import datetime

from rich.console import Console
from rich.text import Text

from ciliary.cli.output import (
    Context,
    Subparsers,
    add_node_flag,
    add_output_flag,
    new_table,
    print_json,
    print_kv,
    print_table,
    wants_json,
)
from ciliary.core.models import ClusterHealth, ConnectivityStatus, NodeHealth, StatusResponse


def register(sub: Subparsers) -> None:
    p = sub.add_parser("health", help="cluster connectivity as this node's agent probes it")
    hsub = p.add_subparsers(dest="health_command", required=True, metavar="COMMAND")
    s = hsub.add_parser("status", help="display connectivity to the other nodes")
    add_node_flag(s)
    add_output_flag(s)
    s.set_defaults(func=run_status)


def run_status(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client() as client:
        status = client.status()
    if wants_json(args):
        print_json(status.cluster_health)
        return 0
    render_health(ctx.console, status)
    return 0 if status.cluster_health is not None else 1


def fmt_rtt(seconds: float) -> str:
    """Go's duration text, as upstream's ``RTT=``: ``634.746µs``, ``1.204ms``."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3f}µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3f}ms"
    return f"{seconds:.3f}s"


def fmt_time(unix: float | None) -> str:
    if unix is None:
        return "never"
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _probe_text(probe: ConnectivityStatus | None) -> Text:
    if probe is None:
        return Text("not probed yet", style="yellow")
    if probe.ok and probe.latency_s is not None:
        return Text("OK", style="green") + Text(f", RTT={fmt_rtt(probe.latency_s)}")
    return Text(probe.status or "failed", style="red")


def _node_label(node: NodeHealth) -> str:
    return f"{node.name} (localhost)" if node.local else node.name


def render_health(console: Console, st: StatusResponse) -> None:
    """``cilium-health status``: every node, every address, both probes."""
    health = st.cluster_health
    if health is None:
        console.print(f"Cluster health: not checked by the agent of {st.node} (no Kubernetes API, "
                      "or --enable-health-checking=false)")  # fmt: skip
        return
    print_kv(console, [("Probe time", fmt_time(health.last_probe)), ("Nodes", "")])
    for node in health.nodes:
        console.print(Text(f"  {_node_label(node)}:"))
        if not node.host:
            console.print(Text("    no node IPs in its CiliumNode", style="yellow"))
        paths = [("Host", p) for p in node.host] + [("Endpoint", p) for p in node.endpoint]
        for which, path in paths:
            console.print(Text(f"    {which} connectivity to {path.ip}:"))
            print_kv(
                console,
                [
                    ("ICMP to stack", _probe_text(path.icmp)),
                    ("HTTP to agent", _probe_text(path.http)),
                ],
                indent=6,
            )


def _cell(probe: ConnectivityStatus | None) -> str:
    if probe is None:
        return "-"
    if probe.ok and probe.latency_s is not None:
        return f"reachable {fmt_rtt(probe.latency_s)}"
    return "unreachable"


def summary(health: ClusterHealth) -> Text:
    """``cilium-dbg status``'s line: ``2/3 reachable   (<time of the last probe>)``."""
    total, ok = len(health.nodes), health.reachable()
    style = "green" if ok == total and health.last_probe is not None else "red"
    if health.last_probe is None:
        style = "yellow"
    return Text(f"{ok}/{total} reachable", style=style) + Text(
        f"   ({fmt_time(health.last_probe)})"
    )


def render_table(console: Console, health: ClusterHealth, *, all_nodes: bool) -> None:
    """The nodes (only the unreachable ones unless ``all_nodes``), one row per address of the
    node (PATH ``node``) and of its health endpoint (``endpoint``)."""
    nodes = [n for n in health.nodes if all_nodes or not n.reachable()]
    if not nodes or health.last_probe is None:
        return
    table = new_table("  NAME", "PATH", "IP", "ICMP", "HTTP")
    for node in nodes:
        paths = [("node", p) for p in node.host] + [("endpoint", p) for p in node.endpoint]
        for i, (which, path) in enumerate(paths):
            name = f"  {_node_label(node)}" if i == 0 else ""
            table.add_row(name, which, path.ip, _cell(path.icmp), _cell(path.http))
        if not node.host:
            table.add_row(f"  {_node_label(node)}", "node", "-", "-", "-")
    print_table(console, table)
