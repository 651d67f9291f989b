"""``ciliary bpf ct list`` / ``bpf ipcache list``: the datapath's maps, as the agent reads them.

Upstream's ``cilium-dbg bpf`` reads pinned maps directly; here the agent reads them and the CLI
asks it over the socket, because the CLI must never touch the kernel (import-linter contract) and
the agent already decodes keys and flags. The tables keep upstream's vocabulary (``expires``,
``RxFlagsSeen``/``TxFlagsSeen``, ``SourceSecurityID``), just in columns.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from ciliary.cli.output import (
    Context,
    Subparsers,
    add_node_flag,
    add_output_flag,
    fmt_addr,
    fmt_duration,
    fmt_identity,
    new_table,
    prefix_sort_key,
    print_json,
    print_table,
    wants_json,
)
from ciliary.core.models import CTEntry, IPCacheEntry


def register(sub: Subparsers) -> None:
    p = sub.add_parser("bpf", help="inspect the datapath's BPF maps")
    bsub = p.add_subparsers(dest="bpf_cmd", required=True, metavar="MAP")

    ct = bsub.add_parser("ct", help="connection tracking table")
    ctsub = ct.add_subparsers(dest="ct_cmd", required=True, metavar="COMMAND")
    ctl = ctsub.add_parser("list", aliases=["ls"], help="list connection tracking entries")
    ctl.add_argument(
        "scope", nargs="?", choices=["global"], default="global", help="the global CT map"
    )
    add_node_flag(ctl)
    add_output_flag(ctl)
    ctl.set_defaults(func=run_ct_list)

    ipc = bsub.add_parser("ipcache", help="IP to identity cache")
    ipcsub = ipc.add_subparsers(dest="ipcache_cmd", required=True, metavar="COMMAND")
    ipl = ipcsub.add_parser("list", aliases=["ls"], help="list ipcache entries")
    add_node_flag(ipl)
    add_output_flag(ipl)
    ipl.set_defaults(func=run_ipcache_list)


# --------------------------------------------------------------------------- ct


def _ct_key(e: CTEntry) -> tuple[object, ...]:
    return (
        e.family,
        e.protocol,
        prefix_sort_key(e.src),
        e.sport,
        prefix_sort_key(e.dst),
        e.dport,
    )


def _flags(names: list[str]) -> str:
    return ",".join(names) if names else "-"


def render_ct(console: Console, entries: list[CTEntry]) -> None:
    table = new_table(
        "PROTO",
        "CONNECTION",
        "AGE",
        "EXPIRES",
        "TX PKTS",
        "TX BYTES",
        "RX PKTS",
        "RX BYTES",
        "TX FLAGS SEEN",
        "RX FLAGS SEEN",
        "FLAGS",
        "IDENTITY (src->dst)",
    )
    for e in sorted(entries, key=_ct_key):
        expires = "expired" if e.expires_in_s <= 0 else fmt_duration(e.expires_in_s)
        table.add_row(
            e.protocol,
            f"{fmt_addr(e.src, e.sport)} -> {fmt_addr(e.dst, e.dport)}",
            fmt_duration(e.age_s),
            expires,
            str(e.tx_packets),
            str(e.tx_bytes),
            str(e.rx_packets),
            str(e.rx_bytes),
            _flags(e.tx_flags),
            _flags(e.rx_flags),
            _flags(e.flags),
            f"{e.src_identity}->{e.dst_identity}",
        )
    print_table(console, table)


def run_ct_list(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client() as client:
        entries = sorted(client.ct_list(), key=_ct_key)
    if wants_json(args):
        print_json(entries)
    else:
        render_ct(ctx.console, entries)
    return 0


# --------------------------------------------------------------------------- ipcache


def render_ipcache(console: Console, entries: list[IPCacheEntry]) -> None:
    table = new_table("PREFIX", "IDENTITY", "TUNNEL ENDPOINT")
    for e in entries:
        table.add_row(e.prefix, fmt_identity(e.identity), e.tunnel_endpoint or "-")
    print_table(console, table)


def run_ipcache_list(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client() as client:
        entries = sorted(client.ipcache_list(), key=lambda e: prefix_sort_key(e.prefix))
    if wants_json(args):
        print_json(entries)
    else:
        render_ipcache(ctx.console, entries)
    return 0
