"""``ciliary fqdn cache list``: the DNS answers toFQDNs rules select IPs from, as ``cilium-dbg
fqdn cache list`` shows them (source, FQDN, IP, expiration). The agent holds the cache (its
``--tofqdns-pre-cache`` answers, later its DNS proxy's); source ``connection`` marks an expired
answer's IP kept while a connection may use it (a zombie, checked again at the next conntrack GC
pass, its expiration). ``-o json`` writes the entries in the pre-cache file's shape (``fqdn``,
``ips``, ``ttl``, ``lookup-time``, and ``source`` for zombies), so a node's cache can seed
another agent."""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

from rich.text import Text

from ciliary.cli.output import (
    Context,
    Subparsers,
    add_node_flag,
    add_output_flag,
    new_table,
    print_json,
    print_table,
    wants_json,
)
from ciliary.core.models import FQDN_SOURCE_CONNECTION, FQDN_SOURCE_LOOKUP, FQDNCacheEntry


def register(sub: Subparsers) -> None:
    p = sub.add_parser("fqdn", help="the DNS names toFQDNs rules select (the agent's DNS cache)")
    fsub = p.add_subparsers(dest="fqdn_cmd", required=True, metavar="COMMAND")
    cp = fsub.add_parser("cache", help="the DNS cache")
    csub = cp.add_subparsers(dest="cache_cmd", required=True, metavar="COMMAND")
    lp = csub.add_parser("list", aliases=["ls"], help="list names, IPs and their expiry")
    add_node_flag(lp)
    add_output_flag(lp)
    lp.set_defaults(func=run_list)


def pre_cache(entries: list[FQDNCacheEntry], now: float) -> list[dict[str, object]]:
    """The entries as ``--tofqdns-pre-cache`` reads them: one per name, its IPs and the TTL
    left (the longest of its IPs'), looked up ``now``; then the zombies, one per name
    (``"source": "connection"``, pending deletion from ``now``)."""
    by_name: dict[str, list[FQDNCacheEntry]] = defaultdict(list)
    zombies: dict[str, list[str]] = defaultdict(list)
    for e in entries:
        if e.source == FQDN_SOURCE_LOOKUP:
            by_name[e.fqdn].append(e)
        else:
            zombies[e.fqdn].append(e.ip)
    answers: list[dict[str, object]] = [
        {
            "fqdn": name,
            "ips": [e.ip for e in found],
            "ttl": max(0, int(max(e.expiration_time.timestamp() for e in found) - now)),
            "lookup-time": int(now),
        }
        for name, found in sorted(by_name.items())
    ]
    return answers + [
        {"fqdn": name, "ips": ips, "ttl": 0, "lookup-time": int(now),
         "source": FQDN_SOURCE_CONNECTION}
        for name, ips in sorted(zombies.items())
    ]  # fmt: skip


def run_list(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client() as client:
        entries = client.fqdn_cache()
    if wants_json(args):
        print_json(pre_cache(entries, time.time()))
        return 0
    table = new_table("Source", "FQDN", "IP", "ExpirationTime")
    for e in entries:
        table.add_row(
            e.source, e.fqdn, Text(e.ip), e.expiration_time.strftime("%Y-%m-%dT%H:%M:%SZ")
        )
    print_table(ctx.console, table)
    return 0
