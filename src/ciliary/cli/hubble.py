"""``ciliary observe`` / ``ciliary hubble observe|status|list|relay``: the ``hubble`` CLI.

Same flags, defaults, error texts and output shapes as upstream's ``hubble`` so that muscle
memory, scripts and saved ``-o jsonpb`` files carry over: ``observe`` prints the last 20 flows
(``--last/--first/--all/--follow/--since/--until``), filters with from-/to-/bidirectional flags
and ``--not`` (see :mod:`ciliary.hubble.cliflags`), prints ``compact``/``dict``/``jsonpb``/
``table`` (see :mod:`ciliary.hubble.printer`) and can replay ``--input-file`` instead of asking a
server. ``status`` health-checks the server and shows its ring and, behind a relay, how many
nodes answer; ``list nodes|namespaces`` ask the relay (or a node).

Which server, and how failures read: :mod:`ciliary.cli.hubble_dial`; ``status`` and ``list``:
:mod:`ciliary.cli.hubble_status`.

``hubble ui`` serves the Hubble UI (:mod:`ciliary.cli.hubble_ui`). ``hubble relay`` only hands
its arguments to :func:`ciliary.hubble.relay.main`, imported when used so the other commands do
not load the relay.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

import grpc
from google.protobuf import json_format

from ciliary.cli.hubble_dial import (
    OUTPUTS,
    add_server_flags,
    dial,
    rpc_error,
    suppressible,
)
from ciliary.cli.hubble_status import run_list_namespaces, run_list_nodes, run_status
from ciliary.cli.hubble_ui import register_ui
from ciliary.cli.output import CLIError, Context, Subparsers
from ciliary.core.flow import EventType
from ciliary.hubble import cliflags
from ciliary.hubble.api.observer import observer_pb2, observer_pb2_grpc
from ciliary.hubble.goformat import TIME_FORMATS
from ciliary.hubble.printer import Output, Printer, PrinterOptions

# --------------------------------------------------------------------------- flags


def _uint(text: str) -> int:
    if not text.isdigit() or int(text) >= 2**64:
        raise argparse.ArgumentTypeError(f'invalid value "{text}": expected a positive integer')
    return int(text)


def _go_bool(text: str) -> bool:
    value = text.lower()
    if value in ("1", "t", "true"):
        return True
    if value in ("0", "f", "false"):
        return False
    raise argparse.ArgumentTypeError(f'invalid boolean "{text}"')


class _FilterAction(argparse.Action):
    """Records ``(flag, value)`` in command-line order: ``--not`` depends on that order."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        self.flag: cliflags.FilterFlag = kwargs.pop("flag")
        nargs = None if self.flag.takes_value else 0
        super().__init__(option_strings, dest, nargs=nargs, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        pairs = getattr(namespace, self.dest, None)
        if not isinstance(pairs, list):
            pairs = []
            setattr(namespace, self.dest, pairs)
        value = values if isinstance(values, str) else self.flag.implicit
        pairs.append((self.flag.name, value))


def add_observe_flags(p: argparse.ArgumentParser, suppress: bool = False) -> None:
    """All of ``hubble observe``'s flags; ``suppress`` leaves unset ones out of the namespace
    (for ``observe flows``, so it does not reset options given before ``flows``)."""
    d = suppressible(suppress)
    sel = p.add_argument_group("selectors")
    sel.add_argument(
        "--last",
        type=_uint,
        default=d(0),
        metavar="N",
        help=f"get the last N flows of each server's buffer (through a relay: N per node; "
        f"default {cliflags.DEFAULT_LAST} when nothing else selects)",
    )
    sel.add_argument(
        "--first",
        type=_uint,
        default=d(0),
        metavar="N",
        help="get the first N flows of each server's buffer (through a relay: N per node)",
    )
    sel.add_argument(
        "--all", action="store_true", default=d(False), help="get all flows stored in the buffers"
    )
    sel.add_argument(
        "-f", "--follow", action="store_true", default=d(False), help="follow flows output"
    )
    sel.add_argument(
        "--since",
        default=d(""),
        metavar="TIME",
        help="flows since TIME: relative (5m, 1h30m) or RFC3339, 2006-01-02, ...",
    )
    sel.add_argument(
        "--until",
        default=d(""),
        metavar="TIME",
        help="flows until TIME (same formats as --since; ignored with --follow)",
    )
    filt = p.add_argument_group("filters (repeat a flag to OR values; --not negates the next)")
    for flag in cliflags.FILTER_FLAGS:
        names = [f"-{flag.short}"] if flag.short else []
        names.append(f"--{flag.name}")
        kwargs: dict[str, Any] = {"flag": flag, "help": flag.help}
        if flag.takes_value:
            kwargs["metavar"] = "VALUE"
        filt.add_argument(
            *names, dest="filter_flags", action=_FilterAction, default=d(None), **kwargs
        )
    raw = p.add_argument_group("raw filters")
    raw.add_argument(
        "--allowlist",
        action="append",
        default=d(None),
        metavar="JSON",
        help="allowlist as JSON encoded FlowFilters",
    )
    raw.add_argument(
        "--denylist",
        action="append",
        default=d(None),
        metavar="JSON",
        help="denylist as JSON encoded FlowFilters",
    )
    fmt = p.add_argument_group("formatting")
    fmt.add_argument(
        "-o",
        "--output",
        default=d("compact"),
        metavar="FORMAT",
        help="compact (default), dict, json (= jsonpb: GetFlowsResponse in proto3 "
        "JSON, one per line), jsonpb, table",
    )
    fmt.add_argument(
        "--time-format",
        default=d("StampMilli"),
        metavar="NAME",
        help="one of " + ", ".join(TIME_FORMATS) + " (default StampMilli)",
    )
    fmt.add_argument(
        "--print-node-name", action="store_true", default=d(False), help="print the node name"
    )
    fmt.add_argument(
        "--print-policy-names",
        action="store_true",
        default=d(False),
        help="print the names of the policies that allowed/denied a flow",
    )
    fmt.add_argument(
        "--numeric",
        action="store_true",
        default=d(False),
        help="display all information in numeric form",
    )
    fmt.add_argument(
        "--ip-translation",
        type=_go_bool,
        nargs="?",
        const=True,
        default=d(True),
        metavar="BOOL",
        help="show pod/service/DNS names instead of IPs (default true)",
    )
    fmt.add_argument(
        "--color", default=d("auto"), metavar="WHEN", help="auto (default), always or never"
    )
    other = p.add_argument_group("other")
    other.add_argument(
        "-s",
        "--silent-errors",
        action="store_true",
        default=d(False),
        help="silently ignore errors and warnings",
    )
    other.add_argument(
        "--print-raw-filters",
        action="store_true",
        default=d(False),
        help="print allowlist/denylist filters and exit without a request",
    )
    other.add_argument(
        "--input-file",
        default=d(""),
        metavar="FILE",
        help="read flows (-o jsonpb lines) from FILE instead of a server ('-' = stdin)",
    )
    add_server_flags(p, suppress)


def _observe_parser(sub: Subparsers, name: str, help_text: str) -> None:
    p = sub.add_parser(
        name,
        help=help_text,
        allow_abbrev=False,
        description="Observe flows of a Hubble server (or relay).",
    )
    add_observe_flags(p)
    fsub = p.add_subparsers(dest="observe_command", metavar="{flows}")
    flows = fsub.add_parser("flows", help="observe flows (the default)", allow_abbrev=False)
    add_observe_flags(flows, suppress=True)
    p.set_defaults(func=run_observe)


def register(sub: Subparsers) -> None:
    _observe_parser(sub, "observe", "observe flows of Hubble (same as 'hubble observe')")
    p = sub.add_parser("hubble", help="Hubble: observe flows, server status, nodes, relay")
    hsub = p.add_subparsers(dest="hubble_command", required=True, metavar="COMMAND")
    _observe_parser(hsub, "observe", "observe flows of a Hubble server")
    st = hsub.add_parser("status", help="health and flow-buffer status of a Hubble server")
    st.add_argument(
        "-o",
        "--output",
        default="compact",
        metavar="FORMAT",
        help="compact (default), dict, json, table",
    )
    add_server_flags(st)
    st.set_defaults(func=run_status)
    ls = hsub.add_parser("list", help="list Hubble nodes or namespaces")
    lsub = ls.add_subparsers(dest="list_command", required=True, metavar="OBJECT")
    for name, aliases, func, help_text in (
        ("nodes", ["node"], run_list_nodes, "list the nodes a relay sees"),
        ("namespaces", [], run_list_namespaces, "list namespaces with recent flows"),
    ):
        lp = lsub.add_parser(name, aliases=aliases, help=help_text)
        lp.add_argument(
            "-o",
            "--output",
            default="table",
            metavar="FORMAT",
            help="json, table (default) or wide",
        )
        add_server_flags(lp)
        lp.set_defaults(func=func)
    relay = hsub.add_parser(
        "relay",
        help="run a Hubble relay (arguments go to the relay; see 'hubble relay --help')",
        add_help=False,
        prefix_chars="\x00",  # every word, options included, belongs to the relay
    )
    relay.add_argument("relay_args", nargs="*")
    relay.set_defaults(func=run_relay)
    register_ui(hsub)


# --------------------------------------------------------------------------- observe


def _color(when: str, out: TextIO) -> bool:
    when = when.lower()
    if when == "always":
        return True
    if when == "never":
        return False
    return out.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def build_observe_request(
    args: argparse.Namespace,
) -> tuple[observer_pb2.GetFlowsRequest, Output]:
    """Flags → (request, output format); CLIError with upstream's messages."""
    try:
        allow, deny = cliflags.build_filters(args.filter_flags or [])
    except cliflags.FlagError as err:
        raise CLIError(str(err)) from err
    output = OUTPUTS.get(args.output)
    if output is None:
        raise CLIError(f"invalid output format: {args.output}")
    if output is Output.TABLE and args.follow:
        raise CLIError("table output format is not compatible with follow mode")
    selector = cliflags.Selector(
        last=args.last,
        first=args.first,
        all=args.all,
        follow=args.follow,
        since=args.since,
        until=args.until,
        from_file=bool(args.input_file),
    )
    try:
        req = cliflags.build_request(
            selector,
            allow=allow,
            deny=deny,
            raw_allow=args.allowlist or (),
            raw_deny=args.denylist or (),
        )
    except cliflags.FlagError as err:
        raise CLIError(str(err)) from err
    return req, output


def run_observe(args: argparse.Namespace, ctx: Context) -> int:
    req, output = build_observe_request(args)
    if args.print_raw_filters:
        sys.stdout.write(cliflags.raw_filters_yaml(req))
        sys.stdout.flush()
        return 0
    printer = Printer(
        PrinterOptions(
            output=output,
            time_format=args.time_format,
            ip_translation=args.ip_translation and not args.numeric,
            node_name=args.print_node_name,
            policy_names=args.print_policy_names,
            color=_color(args.color, sys.stdout),
            silent_errors=args.silent_errors,
        ),
        sys.stdout,
        sys.stderr,
    )
    try:
        if args.input_file:
            for res in _read_flows_file(args.input_file, req, printer):
                printer.write_get_flows_response(res)
            return 0
        channel, addr = dial(args, ctx)
        flows = 0
        with channel:
            call = observer_pb2_grpc.ObserverStub(channel).GetFlows(req)
            try:
                for res in call:
                    flows += res.HasField("flow")
                    printer.write_get_flows_response(res)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.CANCELLED:
                    raise rpc_error(err, addr) from err
            except KeyboardInterrupt:  # Ctrl-C ends a --follow quietly, like upstream
                call.cancel()  # type: ignore[no-untyped-call]
        if not flows and asks_for_l7(req):
            sys.stderr.write(NO_L7_NOTE)
    finally:
        printer.close()
    return 0


NO_L7_NOTE = (
    "note: no L7 flows. Hubble has L7 data (l7.http, l7.dns) only for traffic an L7 rule "
    "sends to a proxy (toPorts[].rules.http or .dns of a CiliumNetworkPolicy); without one a "
    "connection's flows are L3/L4 only. To see L7 flows without enforcing anything, add an "
    'allow-all rule: rules: {http: [{}]} (HTTP) or rules: {dns: [{matchPattern: "*"}]} (DNS). '
    "'ciliary bpf policy get' shows the entries with a PROXY PORT.\n"
)
"""Why ``ciliary observe`` printed no L7 flow when asked for some (upstream's CLI has no such
note; ours goes to stderr, so ``-o json`` output stays clean)."""

_L7_FIELDS = (
    "http_status_code", "http_method", "http_path", "http_url", "http_header", "dns_query",
)  # fmt: skip


def asks_for_l7(req: observer_pb2.GetFlowsRequest) -> bool:
    """True when an allow filter of ``req`` can only match L7 flows (``--type l7``,
    ``--protocol http|dns|kafka``, an ``--http-*`` filter, a raw filter's ``dns_query``)."""
    for ff in req.whitelist:
        if any(e.type == EventType.ACCESS_LOG for e in ff.event_type):
            return True
        if ff.protocol and all(p.lower() in ("http", "dns", "kafka") for p in ff.protocol):
            return True
        if any(len(getattr(ff, name)) for name in _L7_FIELDS):
            return True
    return False


def _read_flows_file(
    path: str, req: observer_pb2.GetFlowsRequest, printer: Printer
) -> Iterator[observer_pb2.GetFlowsResponse]:
    """``--input-file``: jsonpb lines filtered and selected as a server would."""
    from ciliary.hubble.filters import FilterError, build_filter  # noqa: PLC0415 - only here

    try:
        match = build_filter(req.whitelist, req.blacklist)
    except FilterError as err:
        raise CLIError(str(err)) from err
    filtered = bool(req.whitelist or req.blacklist)
    since = req.since.ToNanoseconds() if req.HasField("since") else None
    until = req.until.ToNanoseconds() if req.HasField("until") else None
    number = req.number
    last: collections.deque[observer_pb2.GetFlowsResponse] | None = None
    if number and not req.first and number != cliflags.ALL_FLOWS:
        last = collections.deque(maxlen=number)
    returned = 0
    try:
        source: contextlib.AbstractContextManager[TextIO] = (
            contextlib.nullcontext(sys.stdin) if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
        )
    except OSError as err:
        raise CLIError(f"cannot read --input-file {path}: {err.strerror or err}") from err
    with source as stream:
        for lineno, line in enumerate(stream, 1):
            if not line.strip():
                continue
            res = observer_pb2.GetFlowsResponse()
            try:
                json_format.Parse(line, res, ignore_unknown_fields=True)
            except json_format.ParseError as err:
                printer.write_err(f"Failed to unmarshal json to flow (line {lineno}): {err}")
                continue
            ts = res.time.ToNanoseconds() if res.HasField("time") else None
            if ts is None and res.HasField("flow") and res.flow.HasField("time"):
                ts = res.flow.time.ToNanoseconds()
            if since is not None and ts is not None and ts < since:
                continue
            if until is not None and ts is not None and ts > until:
                continue
            if res.HasField("flow"):
                if not match(res.flow):
                    continue
            elif filtered:
                continue
            if last is not None:
                last.append(res)
                continue
            yield res
            returned += 1
            if req.first and returned >= number:
                return
    if last is not None:
        yield from last


# --------------------------------------------------------------------------- relay


def run_relay(args: argparse.Namespace, ctx: Context) -> int:
    relay = importlib.import_module("ciliary.hubble.relay")
    main: Callable[[list[str]], int | None] = relay.main
    try:
        rc = main(list(args.relay_args))
    except SystemExit as exc:  # the relay's own argparse (--help, usage errors)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return int(rc or 0)
