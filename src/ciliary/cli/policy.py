"""``ciliary policy import|get|delete|validate|trace``: the policy repository, as ``cilium-dbg``.

Upstream's verbs and their shapes: ``import`` answers with the new ``Revision: N``, ``get`` lists
what is loaded with the revision, ``delete`` takes keys or ``--all``. Two verbs matter most to
someone writing policy, and both are built for scripts as much as for people:

- ``validate`` runs **offline** (no agent, no root) through the same parser the agent uses
  (``ciliary.policy.api`` is pure), and prints every problem, one line each, naming the file, the
  document and the field, so a CI job or an editor can check policy before anything is imported;
- ``trace`` asks the agent whether a connection would be allowed and *why* (the deciding rule, or
  "default deny", and the policy map entry that matched, for each half of the connection), and
  exits 0 when allowed and 1 when denied, so ``ciliary policy trace ... && echo open`` works.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.text import Text

from ciliary.cli import policytest
from ciliary.cli.output import (
    CLIError,
    Context,
    Subparsers,
    add_node_flag,
    add_output_flag,
    fmt_identity,
    new_table,
    print_json,
    print_kv,
    print_table,
    wants_json,
)
from ciliary.client import AgentAPIError
from ciliary.core.flow import DROP_POLICY, drop_reason_text
from ciliary.core.models import (
    PolicyChangeResponse,
    PolicyListResponse,
    PolicySummary,
    TraceHalf,
    TraceRequest,
    TraceResponse,
)

STDIN = "-"
STDIN_NAME = "<stdin>"
CHANGE_TIMEOUT = 120.0
"""Import/delete wait for the endpoints' regeneration; give them longer than a plain query."""

TraceProtocol = Literal["TCP", "UDP", "SCTP", "ICMP", "ICMPv6"]
_PROTOCOLS: dict[str, TraceProtocol] = {
    "tcp": "TCP",
    "udp": "UDP",
    "sctp": "SCTP",
    "icmp": "ICMP",
    "icmpv4": "ICMP",
    "icmp4": "ICMP",
    "icmpv6": "ICMPv6",
    "icmp6": "ICMPv6",
}
_DPORT = re.compile(r"^(?P<port>\d+)(?:/(?P<proto>[A-Za-z0-9]+))?$")


def register(sub: Subparsers) -> None:
    p = sub.add_parser("policy", help="import, inspect, validate and trace network policy")
    psub = p.add_subparsers(dest="policy_cmd", required=True, metavar="COMMAND")

    imp = psub.add_parser("import", help="import policy YAML (all documents or nothing)")
    imp.add_argument("file", metavar="FILE", help="policy YAML file, or - for stdin")
    add_node_flag(imp)
    add_output_flag(imp)
    imp.set_defaults(func=run_import)

    get = psub.add_parser("get", help="list the imported policies and the revision")
    get.add_argument(
        "key", nargs="?", metavar="KEY", help="only this policy (kind/ns/name, ns/name or name)"
    )
    add_node_flag(get)
    add_output_flag(get)
    get.set_defaults(func=run_get)

    delete = psub.add_parser("delete", help="delete policies by key, or all of them")
    delete.add_argument("keys", nargs="*", metavar="KEY", help="policy key (kind/ns/name)")
    delete.add_argument("--all", action="store_true", help="delete every policy")
    add_node_flag(delete)
    add_output_flag(delete)
    delete.set_defaults(func=run_delete)

    val = psub.add_parser(
        "validate", help="check policy files offline (no agent): every problem, one line each"
    )
    val.add_argument("files", nargs="+", metavar="FILE", help="policy YAML file, or - for stdin")
    add_output_flag(val)
    val.set_defaults(func=run_validate)

    tr = psub.add_parser(
        "trace",
        help="would this connection be allowed, and by which rule? (exit 0 allowed, 1 denied)",
    )
    tr.add_argument(
        "--from", dest="src", required=True, metavar="SRC", help="[ns/]pod, endpoint id or IP"
    )
    tr.add_argument(
        "--to", dest="dst", required=True, metavar="DST", help="[ns/]pod, endpoint id or IP"
    )
    tr.add_argument(
        "--dport",
        type=_dport_arg,
        default=("TCP", 0),
        metavar="PORT[/PROTO]",
        help="destination port and protocol: 80/tcp (default tcp), 53/udp, 8/icmp (ICMP type)",
    )
    add_node_flag(tr)
    add_output_flag(tr)
    tr.set_defaults(func=run_trace)

    policytest.register(psub)


# --------------------------------------------------------------------------- reading files


def _read(name: str) -> tuple[str, str]:
    if name == STDIN:
        return sys.stdin.read(), STDIN_NAME
    return Path(name).read_text(encoding="utf-8"), name


def _read_problem(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(exc, OSError):
        return str(exc.strerror or exc)
    return str(exc)


def read_policy_file(name: str) -> tuple[str, str]:
    """``(text, filename)`` of ``name`` (``-``: stdin); unreadable files raise CLIError."""
    try:
        return _read(name)
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"cannot read {name}: {_read_problem(exc)}") from None


# --------------------------------------------------------------------------- import / delete


def render_change(console: Console, change: PolicyChangeResponse, verb: str) -> None:
    console.print(f"Revision: {change.revision}")
    for key in change.keys:
        console.print(f"{verb}: {key}")


def parse_offline(text: str, filename: str) -> tuple[list[tuple[str, str]], list[str]]:
    """``([(key, kind), ...], problems)`` from the agent's own parser, run here.

    Imported on first use: the policy language (YAML, the schema) costs every other command
    a noticeable share of its start-up time.
    """
    from ciliary.policy.api import PolicyError, parse_policy_text  # noqa: PLC0415

    try:
        policies = parse_policy_text(text, filename)
    except PolicyError as exc:
        return [], exc.problems
    return [(p.key, str(p.kind)) for p in policies], []


def _all_problems(text: str, filename: str) -> list[str]:
    return parse_offline(text, filename)[1]


def run_import(args: argparse.Namespace, ctx: Context) -> int:
    text, filename = read_policy_file(args.file)
    with ctx.client(timeout=CHANGE_TIMEOUT) as client:
        try:
            change = client.policy_import(text, filename)
        except AgentAPIError as exc:
            if exc.kind != "policy":
                raise
            # the agent reports the first problem; say how many more there are (same parser)
            more = len(_all_problems(text, filename)) - 1
            if more <= 0:
                raise
            plural = "s" if more > 1 else ""
            raise CLIError(
                f"{exc.message} (+{more} more problem{plural}: ciliary policy validate {args.file})"
            ) from exc
    if wants_json(args):
        print_json(change)
    else:
        render_change(ctx.console, change, "Imported")
    return 0


def run_delete(args: argparse.Namespace, ctx: Context) -> int:
    if args.all == bool(args.keys):
        raise CLIError("give the keys of the policies to delete, or --all (not both)")
    with ctx.client(timeout=CHANGE_TIMEOUT) as client:
        change = client.policy_delete(list(args.keys), all=args.all)
    if wants_json(args):
        print_json(change)
    else:
        render_change(ctx.console, change, "Deleted")
    return 0


# --------------------------------------------------------------------------- get


def _display(p: PolicySummary) -> str:
    return p.name if p.namespace is None else f"{p.namespace}/{p.name}"


def select_policies(policies: Sequence[PolicySummary], key: str) -> list[PolicySummary]:
    """The policies ``key`` names: an exact key, else ``ns/name`` or a cluster-wide ``name``."""
    exact = [p for p in policies if p.key == key]
    if exact:
        return exact
    found = [p for p in policies if _display(p) == key]
    if not found:
        raise CLIError(f"policy {key} not found (see `ciliary policy get`)")
    return found


def render_policies(console: Console, listing: PolicyListResponse) -> None:
    table = new_table("KEY", "KIND", "NAMESPACE", "NAME", "RULES", "SOURCE")
    for p in sorted(listing.policies, key=lambda p: p.key):
        table.add_row(p.key, p.kind, p.namespace or "-", p.name, str(p.rules), p.source)
    if listing.policies:
        print_table(console, table)
    else:
        console.print("No policies imported")
    console.print(f"Revision: {listing.revision}")


def run_get(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.client() as client:
        listing = client.policy_list()
    policies = sorted(listing.policies, key=lambda p: p.key)
    if args.key:
        policies = select_policies(policies, args.key)
    listing = listing.model_copy(update={"policies": policies})
    if wants_json(args):
        print_json(listing)
    else:
        render_policies(ctx.console, listing)
    return 0


# --------------------------------------------------------------------------- validate


def _kinds(kinds: Sequence[str]) -> str:
    counts = Counter(kinds)
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))


def validate_file(name: str) -> tuple[str, list[str], list[str], list[str]]:
    """``(filename, keys, kinds, problems)`` of one file, checked offline."""
    try:
        text, filename = _read(name)
    except (OSError, UnicodeDecodeError) as exc:
        return name, [], [], [f"{name}: cannot read: {_read_problem(exc)}"]
    parsed, problems = parse_offline(text, filename)
    if problems:
        prefix = f"{filename}:"
        return filename, [], [], [p if p.startswith(prefix) else f"{prefix} {p}" for p in problems]
    return filename, [k for k, _ in parsed], [kind for _, kind in parsed], []


def run_validate(args: argparse.Namespace, ctx: Context) -> int:
    if list(args.files).count(STDIN) > 1:
        raise CLIError("stdin (-) can only be read once")
    results = [validate_file(name) for name in args.files]
    ok = all(not problems for _, _, _, problems in results)
    if wants_json(args):
        print_json(
            [
                {"file": f, "valid": not problems, "policies": keys, "problems": problems}
                for f, keys, _, problems in results
            ]
        )
        return 0 if ok else 1
    for filename, keys, kinds, problems in results:
        for problem in problems:
            ctx.console.print(problem)
        if not problems:
            noun = "policy" if len(keys) == 1 else "policies"
            ctx.console.print(f"{filename}: {len(keys)} {noun} valid ({_kinds(kinds)})")
    return 0 if ok else 1


# --------------------------------------------------------------------------- trace


def parse_dport(value: str | None) -> tuple[TraceProtocol, int]:
    """``80/tcp`` -> ``("TCP", 80)``; no protocol means TCP; ICMP's "port" is the type."""
    if value is None:
        return "TCP", 0
    m = _DPORT.match(value.strip())
    proto_name = (m.group("proto") or "tcp").lower() if m else ""
    if not m or proto_name not in _PROTOCOLS:
        raise CLIError(
            f"invalid --dport {value!r}: expected PORT[/PROTO] with PROTO one of "
            "tcp, udp, sctp, icmp, icmpv6 (e.g. 80/tcp, 53/udp, 8/icmp)"
        )
    protocol = _PROTOCOLS[proto_name]
    port = int(m.group("port"))
    limit = 255 if protocol in ("ICMP", "ICMPv6") else 65535
    if port > limit:
        what = "ICMP type" if limit == 255 else "port"
        raise CLIError(f"invalid --dport {value!r}: {what} must be 0..{limit}")
    return protocol, port


def _dport_arg(value: str) -> tuple[TraceProtocol, int]:
    """``--dport``'s argparse type: a bad value is a usage error (exit 2), not a verdict (1)."""
    try:
        return parse_dport(value)
    except CLIError as exc:
        message = str(exc).removeprefix(f"invalid --dport {value!r}: ")
        raise argparse.ArgumentTypeError(message) from None


def final_verdict(tr: TraceResponse) -> str:
    """``ALLOWED``, or ``DENIED (<drop reason>)`` as the datapath would report the drop."""
    if tr.allowed:
        return "ALLOWED"
    reason = tr.drop_reason_desc or drop_reason_text(tr.drop_reason or DROP_POLICY)
    return f"DENIED ({reason})"


def _ports(tr: TraceResponse) -> str:
    if tr.protocol.upper().startswith("ICMP"):
        return f"{tr.protocol} type {tr.port}"
    return f"{tr.port or 'ANY'}/{tr.protocol}"


def _identity(number: int) -> str:
    """``identity 256``, ``identity 2, reserved:world``."""
    return "identity " + fmt_identity(number).replace(" (", ", ").removesuffix(")")


def _half_rows(half: TraceHalf) -> list[tuple[str, str | Text]]:
    if half.rules:
        rules = "\n".join(str(r) for r in half.rules)
    elif half.reason == "default deny":
        rules = f"default deny: {half.explanation or 'no rule allows this flow'}"
    elif half.endpoint is None:
        rules = "none (not a local endpoint: no policy applies)"
    elif half.reason == "not enforced":
        rules = f"none ({half.direction} policy is not enforced on this endpoint)"
    else:
        rules = "none"
    verdict = Text("allowed", style="green") if half.allowed else Text("denied", style="bold red")
    rows: list[tuple[str, str | Text]] = [
        ("Verdict", verdict),
        ("Reason", half.reason),
        ("Rules", rules),
        ("Matched entry", half.matched or "-"),
    ]
    if half.l7:
        proxy = f"\n(each request decided by the L7 proxy on port {half.proxy_port})"
        rows.append(("L7 rules", "\n".join(half.l7) + (proxy if half.proxy_port else "")))
    if half.near_misses:
        rows.append(("Near misses", "\n".join(half.near_misses)))
    return rows


def render_trace(console: Console, tr: TraceResponse) -> None:
    console.print(
        f"Tracing From: {tr.src} ({_identity(tr.src_identity)}) => "
        f"To: {tr.dst} ({_identity(tr.dst_identity)}) Ports: [{_ports(tr)}]"
    )
    console.print()
    style = "bold green" if tr.allowed else "bold red"
    console.print(Text("Final verdict: ") + Text(final_verdict(tr), style=style))
    for half, title, side in (
        (tr.egress, "Egress", "source"),
        (tr.ingress, "Ingress", "destination"),
    ):
        console.print()
        if not half.endpoint:
            where = f"{side} is not a local endpoint"
        elif half.endpoint.startswith("endpoint"):
            where = half.endpoint
        else:
            where = f"endpoint {half.endpoint}"
        console.print(f"{title} verdict ({side} policy, {where}):")
        print_kv(console, _half_rows(half), indent=2)


def run_trace(args: argparse.Namespace, ctx: Context) -> int:
    protocol, port = args.dport
    req = TraceRequest(src=args.src, dst=args.dst, protocol=protocol, port=port)
    with ctx.client() as client:
        result = client.policy_trace(req)
    if wants_json(args):
        print_json(result)
    else:
        render_trace(ctx.console, result)
    return 0 if result.allowed else 1
