"""``ciliary identity list|get``: security identities, as ``cilium-dbg identity`` shows them.

Upstream's table is ID and LABELS (one label per line); ENDPOINTS is added because in a lab the
question is usually "which pods share this identity?". Reserved identities (``reserved:world``,
``reserved:host``, ...) are listed too: they are what policy and ``bpf policy get`` talk about.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from ciliary.cli.output import (
    CLIError,
    Context,
    Subparsers,
    add_node_flag,
    add_output_flag,
    new_table,
    print_json,
    print_table,
    wants_json,
)
from ciliary.core.models import IdentityInfo


def register(sub: Subparsers) -> None:
    p = sub.add_parser("identity", help="list and inspect security identities")
    isub = p.add_subparsers(dest="identity_cmd", required=True, metavar="COMMAND")

    lp = isub.add_parser("list", aliases=["ls"], help="list the node's identities")
    add_node_flag(lp)
    add_output_flag(lp)
    lp.set_defaults(func=run_list)

    gp = isub.add_parser("get", help="show one identity")
    gp.add_argument("id", metavar="ID", help="numeric identity")
    add_node_flag(gp)
    add_output_flag(gp)
    gp.set_defaults(func=run_get)


def identity_labels(info: IdentityInfo) -> list[str]:
    return sorted(info.labels) or ["no labels"]


def render_identities(console: Console, identities: list[IdentityInfo]) -> None:
    table = new_table("ID", "LABELS", "ENDPOINTS")
    for info in sorted(identities, key=lambda i: i.id):
        endpoints = ", ".join(str(e) for e in sorted(info.endpoints)) or "-"
        table.add_row(str(info.id), "\n".join(identity_labels(info)), endpoints)
    print_table(console, table)


def run_list(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client() as client:
        identities = sorted(client.identities(), key=lambda i: i.id)
    if wants_json(args):
        print_json(identities)
    else:
        render_identities(ctx.console, identities)
    return 0


def run_get(args: argparse.Namespace, ctx: Context) -> int:
    try:
        number = int(args.id)
    except ValueError:
        raise CLIError(f"invalid identity {args.id!r}: expected a number") from None
    if number < 0:
        raise CLIError(f"invalid identity {args.id!r}: expected a number")
    with ctx.client() as client:
        info = client.identity(number)
    if wants_json(args):
        print_json(info)
    else:
        render_identities(ctx.console, [info])
    return 0
