"""``ciliary status``: one screen answering "is this node's agent healthy, and how full is it?".

Shaped like ``cilium-dbg status`` (aligned ``Key:   value`` lines, ``Ok``/``Warning``/``Failure``
in front of the details) so that people who know Cilium read it at a glance; ``--verbose`` expands
the one-line summaries (kernel features, programs) into one line per item. The map pressure table
is always shown because a map filling up is the failure a datapath hits silently.
"""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.text import Text

from ciliary.cli import health
from ciliary.cli.output import (
    Context,
    Subparsers,
    add_node_flag,
    add_output_flag,
    fmt_bool,
    fmt_duration,
    new_table,
    print_json,
    print_kv,
    print_table,
    wants_json,
)
from ciliary.core.models import KernelFeatures, StatusResponse

PRESSURE_WARN = 0.9

_FEATURES: tuple[tuple[str, str], ...] = (
    ("btf", "BTF"),
    ("bpffs", "bpffs"),
    ("cgroup2", "cgroup2"),
    ("tcx", "tcx"),
    ("ringbuf", "ringbuf"),
    ("lpm_trie", "lpm-trie"),
    ("lru_hash", "lru-hash"),
    ("redirect_peer", "redirect-peer"),
)

# Lifecycle order, so "Endpoints:" lists states the way an endpoint goes through them.
_STATE_ORDER = (
    "ready",
    "creating",
    "restoring",
    "waiting-for-identity",
    "waiting-to-regenerate",
    "regenerating",
    "not-ready",
    "disconnecting",
    "disconnected",
    "invalid",
)


def register(sub: Subparsers) -> None:
    p = sub.add_parser("status", help="show the agent's health, datapath, IPAM and map pressure")
    p.add_argument("--verbose", "-v", action="store_true", help="one line per feature/program")
    p.add_argument(
        "--all-health", action="store_true", help="the cluster health of every node, not only "
        "of the unreachable ones (as cilium-dbg status --all-health)"
    )  # fmt: skip
    add_node_flag(p)
    add_output_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client() as client:
        status = client.status()
    if wants_json(args):
        print_json(status)
    else:
        render(ctx.console, status, verbose=args.verbose, all_health=args.all_health)
    return 0


def _status_word(ok: bool, warn: bool = False) -> Text:
    if not ok:
        return Text("Failure", style="bold red")
    if warn:
        return Text("Warning", style="yellow")
    return Text("Ok", style="green")


def _missing_features(kernel: KernelFeatures) -> list[str]:
    return [name for attr, name in _FEATURES if not getattr(kernel, attr)]


def render(
    console: Console, st: StatusResponse, *, verbose: bool = False, all_health: bool = False
) -> None:
    rows: list[tuple[str, Text | str]] = []
    rows.append(("Node", st.node))
    rows.append(
        ("Ciliary", _status_word(st.healthy) + Text(f"   {st.version} (agent pid {st.pid})"))
    )
    rows.append(("Uptime", fmt_duration(st.uptime_s)))

    missing = _missing_features(st.kernel)
    kernel = _status_word(True, warn=bool(missing)) + Text(f"   {st.kernel.release}")
    if missing:
        kernel += Text(f" (missing: {', '.join(missing)})")
    else:
        kernel += Text(" (all required features present)")
    rows.append(("Kernel", kernel))

    dp = st.datapath
    rows.append(
        (
            "Datapath",
            _status_word(bool(dp.programs))
            + Text(f"   {dp.object}: {len(dp.programs)} programs pinned in {dp.pin_dir}"),
        )
    )
    rows.append(
        (
            "NodeMonitor",
            _status_word(True, warn=dp.events_lost > 0)
            + Text(f"   aggregation {dp.monitor_aggregation}, {dp.events_lost} events lost"),
        )
    )

    ipam = st.ipam
    pools: list[str] = []
    if ipam.ipv4_cidr:
        pools.append(f"IPv4: {ipam.ipv4_cidr} (router {ipam.ipv4_router or '-'})")
    if ipam.ipv6_cidr:
        pools.append(f"IPv6: {ipam.ipv6_cidr} (router {ipam.ipv6_router or '-'})")
    rows.append(("IPAM", f"{ipam.allocated} allocated; " + (", ".join(pools) or "no pools")))

    total = sum(st.endpoints_by_state.values())
    ready = st.endpoints_by_state.get("ready", 0)
    order = {s: i for i, s in enumerate(_STATE_ORDER)}
    states = sorted(st.endpoints_by_state.items(), key=lambda kv: (order.get(kv[0], 99), kv[0]))
    detail = ", ".join(f"{n} {s}" for s, n in states if n and s != "ready")
    rows.append(
        (
            "Endpoints",
            _status_word(True, warn=ready != total)
            + Text(f"   {ready}/{total} ready" + (f" ({detail})" if detail else "")),
        )
    )
    # upstream's "Proxy Status" line, with each proxy's port (ciliary.core.proxyports)
    ports = ", ".join(f"{name} {port}" for name, port in sorted(st.proxy_ports.items()))
    rows.append(("Proxy Status", _status_word(True) + Text(f"   {ports}") if ports else "Disabled"))
    if st.kubernetes_apis is not None:  # upstream's line, a JSON list of the synced resources
        rows.append(("Kubernetes APIs", Text(json.dumps(st.kubernetes_apis))))
    if st.cluster_nodes is not None:  # the node manager's nodes (their CiliumNodes)
        nodes = [
            f"{n.name}{' (local)' if n.local else ''} {', '.join(n.node_ips) or '-'}"
            for n in st.cluster_nodes
        ]
        rows.append(("Cluster nodes", f"{len(nodes)} known: " + "; ".join(nodes)))
    if st.cluster_health is not None:  # the health prober's (agent/health.py)
        rows.append(("Cluster health", health.summary(st.cluster_health)))
    print_kv(console, rows)
    if st.cluster_health is not None:
        health.render_table(console, st.cluster_health, all_nodes=all_health)

    if verbose:
        print_kv(console, [("Kernel features", "")])
        print_kv(
            console,
            [(name, fmt_bool(bool(getattr(st.kernel, attr)))) for attr, name in _FEATURES],
            indent=2,
        )
        print_kv(console, [("BPF programs", "")])
        for prog in dp.programs:
            console.print(Text(f"  {prog}"))

    print_kv(console, [("Map pressure", "")])
    table = new_table("  NAME", "ENTRIES", "MAX", "PRESSURE")
    for m in sorted(st.maps, key=lambda m: m.name):
        style = "bold red" if m.pressure >= PRESSURE_WARN else None
        table.add_row(
            f"  {m.name}", str(m.entries), str(m.max_entries), f"{m.pressure:.1%}", style=style
        )
    print_table(console, table)
