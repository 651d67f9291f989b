"""``ciliary hubble relay``: the flags of upstream's ``hubble-relay serve`` and the process
around :class:`~ciliary.hubble.relay.server.RelayServer` (logs on stderr, pid file, SIGTERM and
SIGINT stop it gracefully).

Durations take Go's form (``500ms``, ``5s``, ``1m``) as upstream's flags do, or plain seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from ciliary.hubble.cliflags import parse_go_duration
from ciliary.hubble.relay.observer import ObserverConfig
from ciliary.hubble.relay.pool import (
    ClientTLSConfig,
    PeerSpec,
    PoolConfig,
    parse_peer_address,
    parse_static_peers,
)
from ciliary.hubble.relay.server import (
    DEFAULT_LISTEN_ADDRESS,
    RelayConfig,
    RelayServer,
    ServerTLSConfig,
)
from ciliary.hubble.server import remove_stale_socket

log = logging.getLogger("ciliary.hubble.relay")


def parse_duration(text: str) -> float:
    """Go duration (``1m30s``, ``250ms``) or plain seconds → seconds; must be positive."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        nanoseconds = parse_go_duration(text)
        if nanoseconds is None:
            raise argparse.ArgumentTypeError(
                f"invalid duration {text!r} (e.g. 500ms, 5s, 1m, or seconds)"
            ) from None
        seconds = nanoseconds / 1e9
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"duration must be positive, not {text!r}")
    return seconds


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, not {value}")
    return value


def _paths(values: list[str] | None) -> tuple[Path, ...]:
    return tuple(Path(p) for v in values or [] for p in v.split(",") if p)


def build_parser(prog: str = "ciliary hubble relay") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Hubble Relay: one Observer API over every node's Hubble server.",
    )
    p.add_argument(
        "--listen-address",
        default=DEFAULT_LISTEN_ADDRESS,
        help="address to serve on: [host]:port or unix:///path (default %(default)s)",
    )
    p.add_argument(
        "--peer-service",
        metavar="ADDRESS",
        help="a Hubble server whose peer.Peer/Notify lists the nodes, "
        "e.g. unix:///run/ciliary/node1/hubble.sock",
    )
    p.add_argument(
        "--peers", metavar="NAME=ADDRESS,...", help="static peers, added to those of --peer-service"
    )
    p.add_argument(
        "--dial-timeout",
        type=parse_duration,
        default=5.0,
        metavar="DURATION",
        help="connection attempt timeout towards peers (default 5s)",
    )
    p.add_argument(
        "--retry-timeout",
        type=parse_duration,
        default=30.0,
        metavar="DURATION",
        help="wait before reconnecting to the peer service, and the longest "
        "reconnect backoff towards a peer (default 30s)",
    )
    p.add_argument(
        "--sort-buffer-len-max",
        type=_positive_int,
        default=100,
        metavar="N",
        help="flows buffered per follow request for sorting (default 100)",
    )
    p.add_argument(
        "--sort-buffer-drain-timeout",
        type=parse_duration,
        default=1.0,
        metavar="DURATION",
        help="flows older than this leave the sort buffer even when it is not full "
        "(follow mode; default 1s)",
    )
    srv = p.add_argument_group("relay server TLS")
    srv.add_argument("--tls-relay-server-cert-file", type=Path, metavar="FILE")
    srv.add_argument("--tls-relay-server-key-file", type=Path, metavar="FILE")
    srv.add_argument(
        "--tls-relay-client-ca-files",
        action="append",
        metavar="FILE[,FILE]",
        help="CAs of accepted client certificates (enables mTLS)",
    )
    srv.add_argument(
        "--disable-server-tls",
        action="store_true",
        help="serve plaintext even if a certificate is given",
    )
    cli = p.add_argument_group("client TLS (relay to nodes over TCP)")
    cli.add_argument(
        "--tls-hubble-server-ca-files",
        action="append",
        metavar="FILE[,FILE]",
        help="CAs the nodes' certificates are checked against (default: system)",
    )
    cli.add_argument("--tls-hubble-client-cert-file", type=Path, metavar="FILE")
    cli.add_argument("--tls-hubble-client-key-file", type=Path, metavar="FILE")
    cli.add_argument(
        "--disable-client-tls", action="store_true", help="dial every node in plaintext"
    )
    p.add_argument("--pid-file", type=Path, metavar="FILE")
    p.add_argument("-D", "--debug", action="store_true", help="debug logging")
    return p  # fmt: skip


def config_from_args(args: argparse.Namespace) -> RelayConfig:
    """Builds the relay config; ValueError describes a bad combination."""
    static: list[PeerSpec] = parse_static_peers(args.peers) if args.peers else []
    if args.peer_service is None and not static:
        raise ValueError("need --peer-service and/or --peers")
    if args.peer_service is not None:
        parse_peer_address(args.peer_service)  # fail now, not in a retry loop
    server_tls: ServerTLSConfig | None = None
    cert, key = args.tls_relay_server_cert_file, args.tls_relay_server_key_file
    if not args.disable_server_tls and (cert or key):
        if not (cert and key):
            raise ValueError(
                "--tls-relay-server-cert-file and --tls-relay-server-key-file go together"
            )
        server_tls = ServerTLSConfig(cert, key, _paths(args.tls_relay_client_ca_files))
    ccert, ckey = args.tls_hubble_client_cert_file, args.tls_hubble_client_key_file
    if (ccert is None) != (ckey is None):
        raise ValueError(
            "--tls-hubble-client-cert-file and --tls-hubble-client-key-file go together"
        )
    for path in (*(_paths(args.tls_hubble_server_ca_files)), ccert, ckey):
        if path is not None and not args.disable_client_tls and not path.is_file():
            raise ValueError(f"no such file: {path}")
    return RelayConfig(
        listen_address=args.listen_address,
        peer_service=args.peer_service,
        static_peers=tuple(static),
        pool=PoolConfig(
            dial_timeout=args.dial_timeout,
            retry_timeout=args.retry_timeout,
            tls=ClientTLSConfig(
                enabled=not args.disable_client_tls,
                ca_files=_paths(args.tls_hubble_server_ca_files),
                cert_file=ccert,
                key_file=ckey,
            ),
        ),
        observer=ObserverConfig(
            sort_buffer_len_max=args.sort_buffer_len_max,
            sort_buffer_drain_timeout=args.sort_buffer_drain_timeout,
            node_call_timeout=args.dial_timeout,
            rejoin_backoff_max=args.retry_timeout,
        ),
        server_tls=server_tls,
    )


def _unix_path(listen_address: str) -> Path | None:
    if not listen_address.startswith("unix:"):
        return None
    return Path(listen_address[len("unix:") :].removeprefix("//"))


async def serve(config: RelayConfig, pid_file: Path | None = None) -> None:
    """Runs the relay until SIGTERM/SIGINT.

    A unix listener is root-only as the nodes' sockets are (the relay serves every node's
    flows): the socket is created under umask 077 and then set to 0600, a stale one (left by a
    killed relay) replaced, one in use refused."""
    relay = RelayServer(config)
    sock = _unix_path(config.listen_address)
    if sock is not None:
        sock.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_socket(sock)
        os.umask(0o077)
    await relay.start()
    if sock is not None:
        os.chmod(sock, 0o600)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if pid_file is not None:
            pid_file.write_text(f"{os.getpid()}\n")
        await stop.wait()
        log.info("signal received, stopping")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await relay.stop()
        if pid_file is not None:
            pid_file.unlink(missing_ok=True)


def main(argv: list[str] | None = None, prog: str = "ciliary hubble relay") -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.debug:
        logging.getLogger("ciliary.hubble.relay").setLevel(logging.DEBUG)
    try:
        config = config_from_args(args)
    except ValueError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config, args.pid_file))
    except OSError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 1
    return 0
