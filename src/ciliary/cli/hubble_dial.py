"""Which Hubble server the ``hubble`` commands talk to, and how they reach it.

``--server`` (``unix:///path``, ``host:port``, ``tls://host:port``), else the global ``--node
NAME`` (that node's agent socket), else ``$HUBBLE_SERVER``, else the relay of the one running
lab (its ``relay.addr`` file), else ``localhost:4245`` like upstream. The connection flags
(timeouts, TLS) are declared here with the code that reads them, and every failure to reach a
server, or a gRPC error from it, becomes one ``Error:`` line naming the address and what to do.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from ciliary.cli.output import CLIError, Context, RootRequiredError
from ciliary.client import run_dir
from ciliary.hubble import cliflags
from ciliary.hubble.client import ClientTLS, DialError, ServerAddress, connect_sync, parse_server
from ciliary.hubble.goformat import go_duration
from ciliary.hubble.printer import Output

SERVER_ENV = "HUBBLE_SERVER"
DEFAULT_SERVER = "localhost:4245"
LAB_DIR_NAME = "lab"
RELAY_ADDR_FILE = "relay.addr"
HUBBLE_SOCKET_NAME = "hubble.sock"
DEFAULT_DIAL_TIMEOUT = "5s"
DEFAULT_REQUEST_TIMEOUT = "12s"
_NOT_RUNNING_HINT = (
    "is the ciliary agent (or hubble relay) running? Start a lab with 'ciliary lab up', "
    f"or point --server or ${SERVER_ENV} at a running server"
)

OUTPUTS = {
    "compact": Output.COMPACT,
    "dict": Output.DICT,
    "json": Output.JSONPB,
    "JSON": Output.JSONPB,
    "jsonpb": Output.JSONPB,
    "tab": Output.TABLE,
    "table": Output.TABLE,
}
"""``-o`` values of ``observe`` and ``status`` (upstream's names and aliases)."""


# --------------------------------------------------------------------------- server choice


def _lab_relay() -> tuple[str, Path] | None:
    """The relay address the one running lab publishes (``<lab dir>/relay.addr``: its unix
    socket, or ``tls://host:port``) and that lab's directory."""
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
            return addr, records[0].parent
    return None


def _lab_of_relay(server: str) -> Path | None:
    """The directory of the lab that publishes ``server`` as its relay, if one does."""
    try:
        records = sorted((run_dir() / LAB_DIR_NAME).glob(f"*/{RELAY_ADDR_FILE}"))
    except OSError:
        return None
    for record in records:
        try:
            if record.read_text().strip() == server:
                return record.parent
        except OSError:
            continue
    return None


def default_server() -> str:
    """``$HUBBLE_SERVER``; else the relay address of the one running lab; else
    ``localhost:4245``. A lab publishes its relay in ``/run/ciliary/lab/<lab>/relay.addr``."""
    env = os.environ.get(SERVER_ENV, "").strip()
    if env:
        return env
    lab = _lab_relay()
    return lab[0] if lab is not None else DEFAULT_SERVER


def lab_client_tls(lab_dir: Path) -> ClientTLS | None:
    """The client certificate a lab issues for its TCP relay (``<lab dir>/tls/``: the lab CA,
    ``hubble-client.crt``/``.key``), if it has one."""
    from ciliary.lab.certs import USER_CLIENT_STEM, LabCA  # noqa: PLC0415 (cryptography: slow)

    ca = LabCA(lab_dir)
    pair = ca.pair(USER_CLIENT_STEM)
    if not all(p.is_file() for p in (ca.ca_cert, pair.cert, pair.key)):
        return None
    return ClientTLS(ca.ca_cert, pair.cert, pair.key)


def lab_tls_of(server: str) -> ClientTLS | None:
    """The client certificate to dial ``server`` with when it is a lab's TLS relay, else None."""
    lab_dir = _lab_of_relay(server)
    return lab_client_tls(lab_dir) if lab_dir is not None else None


def lab_kubeconfig_of(server: str) -> Path | None:
    """The kubeconfig of the lab whose relay ``server`` is, if it is a lab's and has an API."""
    from ciliary.lab import manager  # noqa: PLC0415 (the lab's record: only when asked)

    lab_dir = _lab_of_relay(server)
    if lab_dir is None:
        return None
    try:
        return manager.kubeconfig(lab_dir.name)
    except manager.LabError:
        return None


def _server_of(args: argparse.Namespace, ctx: Context) -> str:
    if getattr(args, "server", None):
        return str(args.server)
    if ctx.node:
        return f"unix://{run_dir() / ctx.node / HUBBLE_SOCKET_NAME}"
    return default_server()


# --------------------------------------------------------------------------- flags


def duration_arg(text: str) -> float:
    """argparse type of the timeout flags: a Go duration (``5s``, ``1m30s``) in seconds."""
    ns = cliflags.parse_go_duration(text)
    if ns is None or ns < 0:
        raise argparse.ArgumentTypeError(f'invalid duration "{text}" (e.g. 5s, 1m30s)')
    return ns / 1e9


def suppressible(suppress: bool) -> Callable[[Any], Any]:
    """A flag's default, or ``argparse.SUPPRESS`` to leave an unset flag out of the namespace
    (for a sub-command repeating its parent's flags, so it does not reset them)."""
    return (lambda _v: argparse.SUPPRESS) if suppress else (lambda v: v)


def add_server_flags(p: argparse.ArgumentParser, suppress: bool = False) -> None:
    """Connection flags shared by every command that talks to a server."""
    d = suppressible(suppress)
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
        type=duration_arg,
        default=d(duration_arg(DEFAULT_DIAL_TIMEOUT)),
        metavar="DURATION",
        help="dial timeout (default 5s)",
    )
    g.add_argument(
        "--request-timeout",
        type=duration_arg,
        default=d(duration_arg(DEFAULT_REQUEST_TIMEOUT)),
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
    if addr.tls and not (args.tls_ca_cert_files or args.tls_client_cert_file):
        lab_dir = _lab_of_relay(server)  # a lab's TLS relay: its CA and user certificate
        if lab_dir is not None:
            tls = lab_client_tls(lab_dir) or tls
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
