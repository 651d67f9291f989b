"""``ciliary observe`` / ``ciliary hubble observe|status|list|relay``: the ``hubble`` CLI.

Same flags, defaults, error texts and output shapes as upstream's ``hubble`` so that muscle
memory, scripts and saved ``-o jsonpb`` files carry over: ``observe`` prints the last 20 flows
(``--last/--first/--all/--follow/--since/--until``), filters with from-/to-/bidirectional flags
and ``--not`` (see :mod:`ciliary.hubble.cliflags`), prints ``compact``/``dict``/``jsonpb``/
``table`` (see :mod:`ciliary.hubble.printer`) and can replay ``--input-file`` instead of asking a
server. ``status`` health-checks the server and shows its ring and, behind a relay, how many
nodes answer; ``list nodes|namespaces`` ask the relay (or a node).

Which server: ``--server`` (``unix:///path``, ``host:port``, ``tls://host:port``), else the
global ``--node NAME`` (that node's agent socket), else ``$HUBBLE_SERVER``, else the relay of
the one running lab (its ``relay.addr`` file), else ``localhost:4245`` like upstream. Every
failure is one ``Error:`` line naming the address and what to do about it.

``hubble relay`` only hands its arguments to :func:`ciliary.hubble.relay.main`, imported when
used so the other commands do not load the relay.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ciliary.cli.output import CLIError, Context, RootRequiredError, Subparsers
from ciliary.client import run_dir
from ciliary.hubble import cliflags
from ciliary.hubble.api.observer import observer_pb2, observer_pb2_grpc
from ciliary.hubble.api.relay import relay_pb2
from ciliary.hubble.client import ClientTLS, DialError, ServerAddress, connect_sync, parse_server
from ciliary.hubble.printer import (
    NOT_AVAILABLE,
    TIME_FORMATS,
    Output,
    Printer,
    PrinterOptions,
    TabWriter,
    go_duration,
)

SERVER_ENV = "HUBBLE_SERVER"
DEFAULT_SERVER = "localhost:4245"
LAB_DIR_NAME = "lab"
RELAY_ADDR_FILE = "relay.addr"
HUBBLE_SOCKET_NAME = "hubble.sock"
OBSERVER_SERVICE = "observer.Observer"
DEFAULT_DIAL_TIMEOUT = "5s"
DEFAULT_REQUEST_TIMEOUT = "12s"
_NOT_RUNNING_HINT = (
    "is the ciliary agent (or hubble relay) running? Start a lab with 'ciliary lab up', "
    f"or point --server or ${SERVER_ENV} at a running server"
)


# --------------------------------------------------------------------------- server choice


def default_server() -> str:
    """``$HUBBLE_SERVER``; else the relay address of the one running lab; else
    ``localhost:4245``. A lab publishes its relay in ``/run/ciliary/lab/<lab>/relay.addr``."""
    env = os.environ.get(SERVER_ENV, "").strip()
    if env:
        return env
    try:
        records = sorted((run_dir() / LAB_DIR_NAME).glob(f"*/{RELAY_ADDR_FILE}"))
    except OSError:
        records = []
    if len(records) == 1:
        try:
            addr = records[0].read_text().strip()
        except OSError:
            addr = ""
        if addr:
            return addr
    return DEFAULT_SERVER


def _server_of(args: argparse.Namespace, ctx: Context) -> str:
    if getattr(args, "server", None):
        return str(args.server)
    if ctx.node:
        return f"unix://{run_dir() / ctx.node / HUBBLE_SOCKET_NAME}"
    return default_server()


# --------------------------------------------------------------------------- argument types


def _duration(text: str) -> float:
    ns = cliflags.parse_go_duration(text)
    if ns is None or ns < 0:
        raise argparse.ArgumentTypeError(f'invalid duration "{text}" (e.g. 5s, 1m30s)')
    return ns / 1e9


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


def add_server_flags(p: argparse.ArgumentParser, suppress: bool = False) -> None:
    """Connection flags shared by every command that talks to a server."""
    d = (lambda _v: argparse.SUPPRESS) if suppress else (lambda v: v)
    g = p.add_argument_group("server")
    g.add_argument(
        "--server",
        default=d(None),
        metavar="ADDR",
        help=f"address of a Hubble server or relay: unix:///path, host:port or "
        f"tls://host:port (default: ${SERVER_ENV}, else the running lab's relay, "
        f"else {DEFAULT_SERVER})",
    )
    g.add_argument(
        "--timeout",
        type=_duration,
        default=d(_duration(DEFAULT_DIAL_TIMEOUT)),
        metavar="DURATION",
        help="dial timeout (default 5s)",
    )
    g.add_argument(
        "--request-timeout",
        type=_duration,
        default=d(_duration(DEFAULT_REQUEST_TIMEOUT)),
        metavar="DURATION",
        help="timeout of unary requests: status, list (default 12s)",
    )
    g.add_argument(
        "--tls",
        action="store_true",
        default=d(False),
        help="use TLS (implied by a tls:// server address)",
    )
    g.add_argument(
        "--tls-allow-insecure",
        action="store_true",
        default=d(False),
        help="skip verifying the server certificate (not supported: always an error)",
    )
    g.add_argument(
        "--tls-ca-cert-files",
        action="append",
        default=d(None),
        metavar="FILES",
        help="PEM CA certificate files (comma-separated, repeatable)",
    )
    g.add_argument(
        "--tls-client-cert-file",
        default=d(None),
        metavar="FILE",
        help="PEM client certificate (mTLS; implies TLS)",
    )
    g.add_argument(
        "--tls-client-key-file",
        default=d(None),
        metavar="FILE",
        help="PEM client key (mTLS; implies TLS)",
    )
    g.add_argument(
        "--tls-server-name",
        default=d(None),
        metavar="NAME",
        help="name the server certificate must carry (default: the dialed host)",
    )


def add_observe_flags(p: argparse.ArgumentParser, suppress: bool = False) -> None:
    """All of ``hubble observe``'s flags; ``suppress`` leaves unset ones out of the namespace
    (for ``observe flows``, so it does not reset options given before ``flows``)."""
    d = (lambda _v: argparse.SUPPRESS) if suppress else (lambda v: v)
    sel = p.add_argument_group("selectors")
    sel.add_argument(
        "--last",
        type=_uint,
        default=d(0),
        metavar="N",
        help=f"get the last N flows of each server's buffer (default "
        f"{cliflags.DEFAULT_LAST} when nothing else selects)",
    )
    sel.add_argument(
        "--first",
        type=_uint,
        default=d(0),
        metavar="N",
        help="get the first N flows of each server's buffer",
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


# --------------------------------------------------------------------------- connection


class _MultiCATLS(ClientTLS):
    """ClientTLS trusting several CA files (``--tls-ca-cert-files a.pem,b.pem``)."""

    __slots__ = ("ca_files",)

    def __init__(
        self,
        ca_files: Sequence[Path],
        cert_file: Path | None,
        key_file: Path | None,
        server_name: str | None,
    ) -> None:
        super().__init__(None, cert_file, key_file, server_name)
        object.__setattr__(self, "ca_files", tuple(ca_files))

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TLS client certificate and key must be given together")
        files: tuple[Path, ...] = object.__getattribute__(self, "ca_files")
        root = b"".join(f.read_bytes() for f in files) or None
        key = self.key_file.read_bytes() if self.key_file else None
        cert = self.cert_file.read_bytes() if self.cert_file else None
        return grpc.ssl_channel_credentials(
            root_certificates=root, private_key=key, certificate_chain=cert
        )


def _tls_of(args: argparse.Namespace, addr: ServerAddress) -> ClientTLS | None:
    cert, key = args.tls_client_cert_file, args.tls_client_key_file
    if not (args.tls or addr.tls or cert or key):
        return None
    if args.tls_allow_insecure:
        raise CLIError(
            "--tls-allow-insecure is not supported: gRPC for Python always verifies the server "
            "certificate; pass its CA with --tls-ca-cert-files (and --tls-server-name)"
        )
    if bool(cert) != bool(key):
        raise CLIError("--tls-client-cert-file and --tls-client-key-file must be given together")
    ca_files = [
        Path(part) for item in args.tls_ca_cert_files or () for part in item.split(",") if part
    ]
    return _MultiCATLS(
        ca_files,
        Path(cert) if cert else None,
        Path(key) if key else None,
        args.tls_server_name or None,
    )


def _check_unix_socket(addr: ServerAddress) -> None:
    if addr.kind != "unix":
        return
    path = Path(addr.path)
    try:
        exists = path.exists()
    except PermissionError as err:
        raise RootRequiredError() if os.geteuid() != 0 else CLIError(str(err)) from err
    if not exists:
        raise CLIError(
            f"cannot connect to the Hubble server at {addr}: no such socket; {_NOT_RUNNING_HINT}"
        )
    if not os.access(path, os.R_OK | os.W_OK):
        if os.geteuid() != 0:
            raise RootRequiredError()
        raise CLIError(f"cannot connect to the Hubble server at {addr}: permission denied")


def dial(args: argparse.Namespace, ctx: Context) -> tuple[grpc.Channel, ServerAddress]:
    """Opens a ready channel to the chosen server, or raises a one-line CLIError."""
    server = _server_of(args, ctx)
    try:
        addr = parse_server(server)
    except ValueError as err:
        raise CLIError(str(err)) from err
    tls = _tls_of(args, addr)
    _check_unix_socket(addr)
    try:
        channel = connect_sync(addr, tls, timeout=args.timeout)
    except DialError as err:
        raise CLIError(
            f"cannot connect to the Hubble server at {addr}: no answer within "
            f"{go_duration(int(args.timeout * 1e9))}; {_NOT_RUNNING_HINT}"
        ) from err
    except (OSError, ValueError) as err:  # unreadable TLS files, mismatched cert/key
        raise CLIError(f"cannot set up TLS for {addr}: {err}") from err
    return channel, addr


def _camel(code: grpc.StatusCode) -> str:
    return "".join(part.capitalize() for part in code.name.split("_"))


def rpc_error(err: grpc.RpcError, addr: ServerAddress, what: str = "") -> CLIError:
    """A gRPC failure as one line; upstream shows UNKNOWN errors' message only."""
    code: grpc.StatusCode = err.code()
    details: str = err.details() or ""
    prefix = f"{what}: " if what else ""
    if code == grpc.StatusCode.UNKNOWN:
        return CLIError(prefix + details)
    if code == grpc.StatusCode.UNAVAILABLE:
        return CLIError(
            f"{prefix}Hubble server at {addr} is unavailable ({details}); {_NOT_RUNNING_HINT}"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CLIError(f"{prefix}Hubble server at {addr} did not answer in time ({details})")
    return CLIError(f"{prefix}rpc error: code = {_camel(code)} desc = {details}")


# --------------------------------------------------------------------------- observe


_OUTPUTS = {
    "compact": Output.COMPACT,
    "dict": Output.DICT,
    "json": Output.JSONPB,
    "JSON": Output.JSONPB,
    "jsonpb": Output.JSONPB,
    "tab": Output.TABLE,
    "table": Output.TABLE,
}


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
    output = _OUTPUTS.get(args.output)
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
        with channel:
            call = observer_pb2_grpc.ObserverStub(channel).GetFlows(req)
            try:
                for res in call:
                    printer.write_get_flows_response(res)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.CANCELLED:
                    raise rpc_error(err, addr) from err
            except KeyboardInterrupt:  # Ctrl-C ends a --follow quietly, like upstream
                call.cancel()  # type: ignore[no-untyped-call]
    finally:
        printer.close()
    return 0


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


# --------------------------------------------------------------------------- status


def run_status(args: argparse.Namespace, ctx: Context) -> int:
    output = _OUTPUTS.get(args.output)
    if output is None:
        raise CLIError(f"invalid output format: {args.output}")
    channel, addr = dial(args, ctx)
    with channel:
        try:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=OBSERVER_SERVICE),
                timeout=args.request_timeout,
            )
        except grpc.RpcError as err:
            raise rpc_error(err, addr, "failed getting status") from err
        serving = health.status == health_pb2.HealthCheckResponse.SERVING
        if output is Output.COMPACT:
            state = (
                "Ok"
                if serving
                else "Unavailable: "
                + (health_pb2.HealthCheckResponse.ServingStatus.Name(health.status))
            )
            sys.stdout.write(f"Healthcheck (via {addr.target}): {state}\n")
            sys.stdout.flush()
        if not serving:
            raise CLIError("not healthy")
        try:
            status = observer_pb2_grpc.ObserverStub(channel).ServerStatus(
                observer_pb2.ServerStatusRequest(), timeout=args.request_timeout
            )
        except grpc.RpcError as err:
            raise rpc_error(err, addr, "failed to get hubble server status") from err
    Printer(PrinterOptions(output=output), sys.stdout, sys.stderr).write_server_status(status)
    return 0


# --------------------------------------------------------------------------- list


def _list_output(args: argparse.Namespace) -> str:
    if args.output not in ("json", "table", "wide"):
        raise CLIError(f"unknown output format: {args.output}")
    return str(args.output)


def _unary(
    args: argparse.Namespace, ctx: Context, call: Callable[[observer_pb2_grpc.ObserverStub], Any]
) -> Any:
    channel, addr = dial(args, ctx)
    with channel:
        try:
            return call(observer_pb2_grpc.ObserverStub(channel))
        except grpc.RpcError as err:
            raise rpc_error(err, addr) from err


def _print_json_list(messages: Sequence[Any]) -> None:
    import json  # noqa: PLC0415 - only for this output

    data = [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in messages]
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


_NODE_STATES = {
    relay_pb2.NODE_CONNECTED: "Connected",
    relay_pb2.NODE_UNAVAILABLE: "Unavailable",
    relay_pb2.NODE_GONE: "Gone",
    relay_pb2.NODE_ERROR: "Error",
}


def node_rows(nodes: Sequence[observer_pb2.Node], wide: bool) -> list[str]:
    """``hubble list nodes`` table lines (upstream's columns and number formats)."""
    tab = TabWriter()
    head = ["NAME", "STATUS", "AGE", "FLOWS/S", "CURRENT/MAX-FLOWS"]
    tab.row(*head, *(["VERSION", "ADDRESS", "TLS"] if wide else []))
    for n in sorted(nodes, key=lambda n: n.name):
        age = flows_per_sec = ratio = NOT_AVAILABLE
        uptime_s = round(n.uptime_ns / 1e9)
        if uptime_s > 0:
            age = go_duration(uptime_s * 1_000_000_000)
            flows_per_sec = f"{n.seen_flows / uptime_s:.2f}"
        if n.max_flows > 0:
            ratio = f"{n.num_flows}/{n.max_flows} ({n.num_flows / n.max_flows * 100:6.2f}%)"
        row = [n.name, _NODE_STATES.get(n.state, "Unknown"), age, flows_per_sec, ratio]
        if wide:
            tls = NOT_AVAILABLE
            if n.HasField("tls"):
                tls = "Enabled" if n.tls.enabled else "Disabled"
            row += [n.version or NOT_AVAILABLE, n.address, tls]
        tab.row(*row)
    return tab.render()


def run_list_nodes(args: argparse.Namespace, ctx: Context) -> int:
    output = _list_output(args)
    res = _unary(
        args,
        ctx,
        lambda stub: stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=args.request_timeout),
    )
    nodes = sorted(res.nodes, key=lambda n: n.name)
    if output == "json":
        _print_json_list(nodes)
    else:
        sys.stdout.write("\n".join(node_rows(nodes, output == "wide")) + "\n")
        sys.stdout.flush()
    return 0


def run_list_namespaces(args: argparse.Namespace, ctx: Context) -> int:
    output = _list_output(args)
    res = _unary(
        args,
        ctx,
        lambda stub: stub.GetNamespaces(
            observer_pb2.GetNamespacesRequest(), timeout=args.request_timeout
        ),
    )
    if output == "json":
        _print_json_list(list(res.namespaces))
        return 0
    tab = TabWriter()
    tab.row("NAMESPACE", *(["CLUSTER"] if output == "wide" else []))
    for ns in res.namespaces:
        cluster = [ns.cluster] if output == "wide" and ns.cluster else []
        tab.row(ns.namespace, *cluster)
    sys.stdout.write("\n".join(tab.render()) + "\n")
    sys.stdout.flush()
    return 0


# --------------------------------------------------------------------------- relay


def run_relay(args: argparse.Namespace, ctx: Context) -> int:
    relay = importlib.import_module("ciliary.hubble.relay")
    main: Callable[[list[str]], int | None] = relay.main
    try:
        rc = main(list(args.relay_args))
    except SystemExit as exc:  # the relay's own argparse (--help, usage errors)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return int(rc or 0)
