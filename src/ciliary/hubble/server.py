"""The node's Hubble gRPC server: Observer + Peer + health, on a unix socket and TCP.

Like upstream's agent, the server listens on a local unix socket (always plaintext; access
is controlled by the file mode, 0600) and optionally on a TCP address (``:4244`` = every
address) that may use TLS, or mTLS when a client CA is given (``--hubble-tls-*``). The
standard ``grpc.health.v1`` service reports "", ``hubble.server.Observer`` (the name upstream's
clients ask for) and ``observer.Observer`` SERVING while the server runs, so relays and probes
can check it without speaking Hubble.

A stale socket file (left by a crashed agent) is removed before binding; a socket somebody
still answers on is not, so two agents can never silently steal each other's socket.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ciliary.hubble.api.observer import observer_pb2_grpc
from ciliary.hubble.api.peer import peer_pb2_grpc
from ciliary.hubble.observer import OBSERVER_HEALTH_SERVICES, LocalObserver, ObserverServicer
from ciliary.hubble.peer import DEFAULT_POLL_INTERVAL, ListPeers, PeerInfo, PeerServicer

log = logging.getLogger(__name__)

# grpcio-health-checking ships an asyncio servicer (``health.aio``) its stubs do not declare.
_AioHealthServicer: Any = getattr(health, "aio").HealthServicer  # noqa: B009

PEER_SERVICE = "peer.Peer"
DEFAULT_LISTEN_PORT = 4244


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """Server TLS: certificate chain and key; with ``client_ca_file`` clients must present a
    certificate signed by that CA (mTLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        ca = self.client_ca_file.read_bytes() if self.client_ca_file else None
        return grpc.ssl_server_credentials(
            [(self.key_file.read_bytes(), self.cert_file.read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )


def split_listen_address(address: str) -> tuple[str | None, int]:
    """``:4244`` → (None: all addresses, 4244); ``host:port`` / ``[v6]:port`` → (host without
    brackets, port). The one parser of listen addresses (gRPC and metrics servers, agent flags).

    Raises ValueError for anything without a valid port (0 is allowed: an ephemeral port).
    """
    text = address.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise ValueError(f"invalid listen address {address!r}: expected [ipv6]:port")
        host, port = text[1:end], text[end + 2 :]
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"invalid listen address {address!r}: expected host:port or :port")
        if ":" in host:
            raise ValueError(f"invalid listen address {address!r}: write IPv6 as [addr]:port")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"invalid listen address {address!r}: bad port {port!r}")
    return (host or None), int(port)


def parse_listen_address(address: str) -> str:
    """``:4244`` → ``[::]:4244`` (all addresses), ``host:port`` / ``[v6]:port`` unchanged: the
    form grpc's ``add_insecure_port`` takes."""
    host, port = split_listen_address(address)
    if host is None:
        return f"[::]:{port}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def remove_stale_socket(path: Path) -> None:
    """Removes a unix socket nobody answers on (left by a killed server); FileExistsError for
    one in use or a path that is not a socket. (Shared with the relay's unix listener.)"""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(str(path))
    except OSError as err:
        if err.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
    else:
        raise FileExistsError(f"{path} is in use by another server")
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@dataclass
class HubbleServer:
    """gRPC server of one node. ``start()`` binds and serves; ``stop()`` drains and unbinds.

    ``peers`` (a sync or async callable returning :class:`~ciliary.hubble.peer.PeerInfo`s)
    enables ``peer.Peer``; without it the Peer service lists only this node's own unix socket.
    """

    observer: LocalObserver
    unix_path: Path | None = None
    tcp_address: str | None = None
    tls: TLSConfig | None = None
    peers: ListPeers | None = None
    peer_poll_interval: float = DEFAULT_POLL_INTERVAL
    tcp_port: int | None = field(default=None, init=False)
    _server: grpc.aio.Server | None = field(default=None, init=False, repr=False)
    _health: Any = field(default=None, init=False, repr=False)
    peer_servicer: PeerServicer | None = field(default=None, init=False, repr=False)
    _owns_socket: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.unix_path is None and self.tcp_address is None:
            raise ValueError("HubbleServer needs a unix socket path, a TCP address, or both")
        if self.unix_path is not None:
            self.unix_path = Path(self.unix_path)
        if self.tcp_address is not None:
            parse_listen_address(self.tcp_address)

    @property
    def unix_address(self) -> str | None:
        """The ``unix:///...`` address clients dial, if the server has a socket."""
        return f"unix://{self.unix_path}" if self.unix_path is not None else None

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("HubbleServer already started")
        server = grpc.aio.server()
        observer_pb2_grpc.add_ObserverServicer_to_server(ObserverServicer(self.observer), server)
        self.peer_servicer = PeerServicer(self._list_peers_fn(), self.peer_poll_interval)
        peer_pb2_grpc.add_PeerServicer_to_server(self.peer_servicer, server)
        self._health = _AioHealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        try:
            if self.unix_path is not None:
                self.unix_path.parent.mkdir(parents=True, exist_ok=True)
                remove_stale_socket(self.unix_path)
                self._owns_socket = True
                self._add_port(server, f"unix://{self.unix_path}", None)
                os.chmod(self.unix_path, 0o600)
            if self.tcp_address is not None:
                target = parse_listen_address(self.tcp_address)
                self.tcp_port = self._add_port(server, target, self.tls)
            await server.start()
        except BaseException:
            await server.stop(None)
            self._remove_socket()
            raise
        if self.unix_path is not None:
            os.chmod(self.unix_path, 0o600)
        serving = health_pb2.HealthCheckResponse.SERVING
        for service in ("", *OBSERVER_HEALTH_SERVICES, PEER_SERVICE):
            await self._health.set(service, serving)
        self._server = server
        log.info(
            "hubble server for %s listening on %s%s",
            self.observer.node_name,
            self.unix_address or "",
            f" tcp port {self.tcp_port}" + (" (tls)" if self.tls else "")
            if self.tcp_port is not None
            else "",
        )

    @staticmethod
    def _add_port(server: grpc.aio.Server, target: str, tls: TLSConfig | None) -> int:
        try:
            port = (
                server.add_secure_port(target, tls.credentials())
                if tls is not None
                else server.add_insecure_port(target)
            )
        except RuntimeError as err:
            raise OSError(f"hubble server cannot listen on {target}: {err}") from err
        if port == 0 and not target.startswith("unix:"):
            raise OSError(f"hubble server cannot listen on {target}")
        return port

    def _list_peers_fn(self) -> ListPeers:
        if self.peers is not None:
            return self.peers
        own = [PeerInfo(self.observer.node_name, self.unix_address)] if self.unix_address else []
        return lambda: own

    async def stop(self, grace: float | None = 1.0) -> None:
        """Reports NOT_SERVING, lets streams finish for ``grace`` seconds, then closes."""
        server, self._server = self._server, None
        if server is None:
            return
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        await server.stop(grace)
        self._remove_socket()
        self.tcp_port = None

    def _remove_socket(self) -> None:
        if self.unix_path is not None and self._owns_socket:
            self._owns_socket = False
            with contextlib.suppress(FileNotFoundError):
                self.unix_path.unlink()

    async def __aenter__(self) -> HubbleServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


__all__ = [
    "DEFAULT_LISTEN_PORT",
    "HubbleServer",
    "TLSConfig",
    "parse_listen_address",
    "remove_stale_socket",
    "split_listen_address",
]
