"""``ciliary ipam list`` / ``ipam gc``: the node's address pools, blocks and who holds what.

``list`` shows Calico's view in pools mode (pools with their nodeSelector and natOutgoing, blocks
with their node affinity, every allocation with its owner ``<container id>/<ifname>``) and
Cilium's in cluster-pool mode (the node CIDR per family). ``gc`` asks the agent to release
addresses whose endpoint no longer exists.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from ciliary.cli.output import (
    Context,
    Subparsers,
    add_node_flag,
    add_output_flag,
    fmt_time,
    new_table,
    prefix_sort_key,
    print_json,
    print_table,
    wants_json,
)
from ciliary.core.models import IPAMListing


def register(sub: Subparsers) -> None:
    p = sub.add_parser("ipam", help="IP address management: pools, blocks, allocations")
    isub = p.add_subparsers(dest="ipam_cmd", required=True, metavar="COMMAND")
    ls = isub.add_parser("list", aliases=["ls"], help="pools, blocks and allocations")
    add_node_flag(ls)
    add_output_flag(ls)
    ls.set_defaults(func=run_list)
    gc = isub.add_parser("gc", help="release addresses whose endpoint no longer exists")
    add_node_flag(gc)
    add_output_flag(gc)
    gc.set_defaults(func=run_gc)


def render(console: Console, listing: IPAMListing) -> None:
    console.print(
        f"Node: {listing.node}   Mode: {listing.mode}"
        + (f"   strictAffinity: {listing.strict_affinity}" if listing.mode == "pools" else "")
    )
    pools = new_table(
        "POOL", "CIDR", "BLOCK SIZE", "NODE SELECTOR", "NAT OUTGOING", "DISABLED", "USED"
    )
    for p in listing.pools:
        pools.add_row(
            p.name, p.cidr, f"/{p.block_size}", p.node_selector, str(p.nat_outgoing).lower(),
            str(p.disabled).lower(), f"{p.used}/{p.size}",
        )  # fmt: skip
    print_table(console, pools)
    blocks = new_table("BLOCK", "POOL", "AFFINITY", "USED")
    for b in sorted(listing.blocks, key=lambda b: prefix_sort_key(b.cidr)):
        blocks.add_row(b.cidr, b.pool, b.affinity or "-", f"{b.used}/{b.size}")
    print_table(console, blocks)
    allocs = new_table("ADDRESS", "OWNER", "KIND", "POOL", "BLOCK", "SINCE")
    for a in sorted(listing.allocations, key=lambda a: prefix_sort_key(a.address)):
        allocs.add_row(
            f"{a.address}/{a.prefix_len}", a.owner, a.kind, a.pool, a.block or "-",
            fmt_time(a.created_at),
        )  # fmt: skip
    print_table(console, allocs)


def run_list(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client() as client:
        listing = client.ipam_list()
    if wants_json(args):
        print_json(listing)
    else:
        render(ctx.console, listing)
    return 0


def run_gc(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client() as client:
        released = client.ipam_gc()
    if wants_json(args):
        print_json(released)
    else:
        ctx.console.print(
            f"released {len(released.allocations)} address(es)"
            + "".join(f"\n  {a.address} ({a.owner})" for a in released.allocations)
        )
    return 0
