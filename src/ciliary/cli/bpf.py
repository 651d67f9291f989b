"""``ciliary bpf ct list`` / ``nat list`` / ``lb list`` / ``ipcache list`` / ``policy get``: the
datapath's maps, via the agent.

Upstream's ``cilium-dbg bpf`` reads pinned maps directly; here the agent reads them and the CLI
asks it over the socket, because the CLI must never touch the kernel (import-linter contract) and
the agent already decodes keys and flags. The tables keep upstream's vocabulary (``expires``,
``RxFlagsSeen``/``TxFlagsSeen``, ``SourceSecurityID``), just in columns. ``bpf policy get`` shows
an endpoint's policy map like upstream (Allow/Deny, Ingress/Egress, the remote identity's labels,
``reserved:unknown`` for identity 0 i.e. any peer, ``ANY`` ports) plus the rules each entry was
derived from, which upstream only shows with ``cilium-dbg policy selectors``.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Mapping

from rich.console import Console
from rich.text import Text

from ciliary.cli.endpoint import find_endpoint
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
    print_kv,
    print_table,
    wants_json,
)
from ciliary.client import AgentClient
from ciliary.core.flow import ReservedIdentity
from ciliary.core.models import (
    CTEntry,
    EndpointPolicyStatus,
    IPCacheEntry,
    LBMapEntry,
    MaglevTable,
    NATEntry,
    PolicyMapEntry,
)


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

    nat = bsub.add_parser("nat", help="BPF masquerade (NAT) table")
    natsub = nat.add_subparsers(dest="nat_cmd", required=True, metavar="COMMAND")
    natl = natsub.add_parser("list", aliases=["ls"], help="list NAT entries")
    add_node_flag(natl)
    add_output_flag(natl)
    natl.set_defaults(func=run_nat_list)

    lb = bsub.add_parser("lb", help="service (load-balancing) maps")
    lbsub = lb.add_subparsers(dest="lb_cmd", required=True, metavar="COMMAND")
    lbl = lbsub.add_parser("list", aliases=["ls"], help="list service map entries")
    add_node_flag(lbl)
    add_output_flag(lbl)
    lbl.set_defaults(func=run_lb_list)
    mag = lbsub.add_parser("maglev", help="Maglev lookup tables")
    magsub = mag.add_subparsers(dest="maglev_cmd", required=True, metavar="COMMAND")
    magl = magsub.add_parser("list", aliases=["ls"], help="list each Maglev frontend's table")
    add_node_flag(magl)
    add_output_flag(magl)
    magl.set_defaults(func=run_maglev_list)

    ipc = bsub.add_parser("ipcache", help="IP to identity cache")
    ipcsub = ipc.add_subparsers(dest="ipcache_cmd", required=True, metavar="COMMAND")
    ipl = ipcsub.add_parser("list", aliases=["ls"], help="list ipcache entries")
    add_node_flag(ipl)
    add_output_flag(ipl)
    ipl.set_defaults(func=run_ipcache_list)

    pol = bsub.add_parser("policy", help="an endpoint's policy map")
    polsub = pol.add_subparsers(dest="policy_cmd", required=True, metavar="COMMAND")
    pg = polsub.add_parser("get", help="show the policy map of one endpoint")
    pg.add_argument(
        "endpoint", metavar="ENDPOINT", help="endpoint id, pod:[ns/]name or container-id:ID"
    )
    add_node_flag(pg)
    add_output_flag(pg)
    pg.set_defaults(func=run_policy_get)


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
            Text(f"{fmt_addr(e.src, e.sport)} -> {fmt_addr(e.dst, e.dport)}"),  # [v6] not markup
            fmt_duration(e.age_s),
            expires,
            str(e.tx_packets),
            str(e.tx_bytes),
            str(e.rx_packets),
            str(e.rx_bytes),
            _flags(e.tx_flags),
            _flags(e.rx_flags),
            _flags(e.flags + ([f"rev-nat={e.rev_nat_index}"] if e.rev_nat_index else [])),
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


# --------------------------------------------------------------------------- nat


def render_nat(console: Console, entries: list[NATEntry]) -> None:
    """One line per entry, as ``cilium-dbg bpf nat list``:
    ``TCP OUT 10.0.0.5:39130 -> 172.18.0.254:80 XLATE_SRC 172.18.0.2:39130 Created=3s ago``."""
    for e in entries:
        xlate = "XLATE_SRC" if e.direction == "OUT" else "XLATE_DST"
        console.print(
            f"{e.protocol} {e.direction} {fmt_addr(e.src, e.sport)} -> "
            f"{fmt_addr(e.dst, e.dport)} {xlate} {fmt_addr(e.to, e.to_port)} "
            f"Created={fmt_duration(e.age_s)} ago",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


def run_nat_list(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client() as client:
        entries = sorted(
            client.nat_list(), key=lambda e: (e.family, e.protocol, e.direction, e.src, e.sport)
        )
    if wants_json(args):
        print_json(entries)
    else:
        render_nat(ctx.console, entries)
    return 0


# --------------------------------------------------------------------------- lb


def render_lb(console: Console, entries: list[LBMapEntry]) -> None:
    """As ``cilium-dbg bpf lb list``: ``SERVICE ADDRESS (SLOT)`` then ``BACKEND ADDRESS
    (REVNAT_ID) (SLOT)``; the service entry (slot 0) shows ``0.0.0.0:0`` and its flags."""
    table = new_table("SERVICE ADDRESS", "BACKEND ADDRESS (REVNAT_ID) (SLOT)")
    for e in entries:
        service = f"{fmt_addr(e.service_address, e.service_port)}/{e.protocol} ({e.slot})"
        if e.backend_address is None:
            zero = "[::]:0" if ":" in e.service_address else "0.0.0.0:0"
            flags = f" [{', '.join(e.flags)}]" if e.flags else ""
            backend = f"{zero} ({e.rev_nat_index}) ({e.slot}){flags}"
        else:
            addr = fmt_addr(e.backend_address, e.backend_port)
            backend = f"{addr}/{e.protocol} ({e.rev_nat_index}) ({e.slot})"
        table.add_row(Text(service), Text(backend))  # brackets are not markup
    print_table(console, table)


def run_lb_list(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client() as client:
        entries = client.lb_list()
    if wants_json(args):
        print_json(entries)
    else:
        render_lb(ctx.console, entries)
    return 0


def render_maglev(console: Console, tables: list[MaglevTable]) -> None:
    """``SVC ID`` and the table, as ``cilium-dbg bpf lb maglev list``'s ``LUT``, summarised:
    its size and each backend id with how many entries it holds."""
    table = new_table("SVC ID", "FAMILY", "SIZE", "LUT (BACKEND ID: ENTRIES)")
    for t in tables:
        counts = Counter(t.backend_ids)
        lut = " ".join(f"{i}:{n}" for i, n in sorted(counts.items()))
        table.add_row(str(t.service_id), f"v{t.family}", str(len(t.backend_ids)), lut)
    print_table(console, table)


def run_maglev_list(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client() as client:
        tables = client.maglev_list()
    if wants_json(args):
        print_json(tables)
    else:
        render_maglev(ctx.console, tables)
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


# --------------------------------------------------------------------------- policy

ANY_IDENTITY_LABEL = "reserved:unknown"
"""How upstream labels identity 0 in a policy map: the entry matches any peer."""

_WILDCARD_PROTOCOLS = ("", "0", "*", "ANY")
_WILDCARD_PORTS = ("", "0", "*", "ANY")


def fmt_port_proto(protocol: str, ports: str) -> str:
    """``80/TCP``, ``8000-8015/TCP``, ``ANY/UDP`` (any port), ``ANY`` (any protocol)."""
    any_proto = protocol.strip().upper() in _WILDCARD_PROTOCOLS
    any_port = ports.strip().upper() in _WILDCARD_PORTS
    if any_proto and any_port:
        return "ANY"
    if any_port:
        return f"ANY/{protocol}"
    return f"{ports}/{'ANY' if any_proto else protocol}"


def identity_labels(identity: int, known: Mapping[int, list[str]]) -> list[str]:
    """Labels of a remote identity, from the agent's identities, else the reserved name."""
    if identity == 0:
        return [ANY_IDENTITY_LABEL]
    if known.get(identity):
        return sorted(known[identity])
    try:
        return [ReservedIdentity(identity).label]
    except ValueError:
        return ["(unknown identity)"]


def _port_sort(ports: str) -> int:
    head = ports.split("-", 1)[0]
    return int(head) if head.isdigit() else -1


def _entry_key(e: PolicyMapEntry) -> tuple[object, ...]:
    return (
        e.direction != "ingress",
        e.action != "deny",
        e.identity,
        e.protocol,
        _port_sort(e.ports),
        e.ports,
    )


def _enforced(on: bool) -> Text:
    return Text("enforced", style="green") if on else Text("not enforced", style="yellow")


def render_endpoint_policy(
    console: Console, status: EndpointPolicyStatus, known: Mapping[int, list[str]]
) -> None:
    """The enforcement state, then one row per policy map entry (upstream's columns)."""
    print_kv(
        console,
        [
            ("Endpoint", f"{status.endpoint_id} (identity {fmt_identity(status.identity)})"),
            (
                "Policy enforcement",
                Text("ingress ")
                + _enforced(status.ingress_enforced)
                + Text(", egress ")
                + _enforced(status.egress_enforced),
            ),
            ("Policy revision", str(status.revision)),
            ("Policies", "\n".join(sorted(status.policies)) or "(none select this endpoint)"),
        ],
    )
    for problem in status.unsupported:
        console.print(Text(f"Warning: not enforced: {problem}", style="yellow"))
    if not status.entries:
        console.print("No policy map entries")
        return
    table = new_table(
        "ACTION",
        "DIRECTION",
        "IDENTITY",
        "LABELS (source:key[=value])",
        "PORT/PROTO",
        "PROXY PORT",
        "PACKETS",
        "BYTES",
        "RULES",
    )
    for e in sorted(status.entries, key=_entry_key):
        action = Text("Allow") if e.action == "allow" else Text("Deny", style="bold red")
        table.add_row(
            action,
            e.direction.capitalize(),
            str(e.identity),
            "\n".join(identity_labels(e.identity, known)),
            fmt_port_proto(e.protocol, e.ports),
            str(e.proxy_port) if e.proxy_port else "NONE",
            str(e.packets),
            str(e.bytes),
            "\n".join(str(r) for r in e.rules) or "-",
        )
    print_table(console, table)


def resolve_endpoint_id(client: AgentClient, ref: str) -> int:
    """An endpoint id (asked as-is) or ``pod:[ns/]name`` / ``container-id:ID`` (looked up)."""
    return int(ref) if ref.isdigit() else find_endpoint(client, ref).id


def identity_labels_by_id(client: AgentClient) -> dict[int, list[str]]:
    """The labels of every identity the agent knows, for LABELS columns."""
    return {info.id: info.labels for info in client.identities()}


def run_policy_get(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client() as client:
        status = client.endpoint_policy(resolve_endpoint_id(client, args.endpoint))
        if wants_json(args):
            print_json(status)
            return 0
        known = identity_labels_by_id(client)
    render_endpoint_policy(ctx.console, status, known)
    return 0
