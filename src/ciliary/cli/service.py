"""``ciliary service list``: the service frontends the node's BPF maps hold, as ``cilium-dbg
service list`` shows them: ``ID  Frontend  Service Type  Backend``, the backends numbered
``1 => 10.0.1.5:8080/TCP (active)``, one per line. The agent reads the maps (the CLI never
touches the kernel); the ids are the maps' (a frontend's id is its rev-NAT index).
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.text import Text

from ciliary.cli.output import (
    Context,
    Subparsers,
    add_node_flag,
    add_output_flag,
    fmt_addr,
    new_table,
    print_json,
    print_table,
    wants_json,
)
from ciliary.core.models import ServiceFrontend


def register(sub: Subparsers) -> None:
    p = sub.add_parser("service", help="the node's load-balanced services (BPF service maps)")
    ssub = p.add_subparsers(dest="service_cmd", required=True, metavar="COMMAND")
    lp = ssub.add_parser("list", aliases=["ls"], help="list service frontends and backends")
    add_node_flag(lp)
    add_output_flag(lp)
    lp.set_defaults(func=run_list)


def render_services(console: Console, frontends: list[ServiceFrontend]) -> None:
    table = new_table("ID", "Frontend", "Service Type", "Backend")
    for f in frontends:
        backends = [
            f"{i} => {fmt_addr(b.address, b.port)}/{b.protocol} ({b.state})"
            for i, b in enumerate(f.backends, start=1)
        ]
        frontend = f"{fmt_addr(f.address, f.port)}/{f.protocol}"
        # Text: an IPv6 address's brackets are not markup
        table.add_row(str(f.id), Text(frontend), f.type, Text("\n".join(backends)))
    print_table(console, table)


def run_list(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client() as client:
        frontends = client.service_frontends()
    if wants_json(args):
        print_json(frontends)
    else:
        render_services(ctx.console, frontends)
    return 0
