"""The relay's gRPC server: observer.Observer over the peer pool, plus grpc.health.v1.

Health follows upstream: "", "hubble.server.Observer" (the name upstream's clients ask for) and
"observer.Observer" are SERVING while the Peer service stream is up (always, with only static
peers) and at least one peer is available, NOT_SERVING otherwise; re-evaluated every
``health_interval`` seconds. A relay that cannot reach any node is alive but
useless, and a load balancer should know.

Start-up order: the pool first (so the first request already sees the peers being dialled),
then the listener. Stop: stop accepting, give in-flight calls ``grace`` seconds, then close the
pool's channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ciliary.hubble.api.observer import observer_pb2_grpc
from ciliary.hubble.observer import OBSERVER_HEALTH_SERVICES
from ciliary.hubble.relay.observer import ObserverConfig, RelayObserver
from ciliary.hubble.relay.pool import PeerPool, PeerSpec, PoolConfig

log = logging.getLogger("ciliary.hubble.relay")

DEFAULT_LISTEN_ADDRESS = ":4245"

# grpcio-health-checking ships an asyncio servicer (``health.aio``) its stubs do not declare.
_AioHealthServicer: Any = getattr(health, "aio").HealthServicer  # noqa: B009


@dataclass(frozen=True, slots=True)
class ServerTLSConfig:
    """The relay's own listener: certificate and key, and client CAs (given: mTLS)."""

    cert_file: Path
    key_file: Path
    client_ca_files: tuple[Path, ...] = ()

    def credentials(self) -> grpc.ServerCredentials:
        ca = b"".join(p.read_bytes() for p in self.client_ca_files) or None
        return grpc.ssl_server_credentials(
            [(self.key_file.read_bytes(), self.cert_file.read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )


@dataclass(frozen=True, slots=True)
class RelayConfig:
    listen_address: str = DEFAULT_LISTEN_ADDRESS
    peer_service: str | None = None
    static_peers: tuple[PeerSpec, ...] = ()
    pool: PoolConfig = field(default_factory=PoolConfig)
    observer: ObserverConfig = field(default_factory=ObserverConfig)
    server_tls: ServerTLSConfig | None = None
    health_interval: float = 1.0
    grace: float = 2.0


def grpc_listen_address(address: str) -> str:
    """``:4245`` (Go's form: every address) → ``[::]:4245``; ``unix:///p`` and ``host:port``
    pass through."""
    if address.startswith(":"):
        return f"[::]{address}"
    return address


class RelayServer:
    """The relay: start() binds and serves, stop() winds everything down."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.pool = PeerPool(
            config.pool, peer_service=config.peer_service, static_peers=list(config.static_peers)
        )
        self._server: grpc.aio.Server | None = None
        self._health: Any = _AioHealthServicer()
        self._health_task: asyncio.Task[None] | None = None
        self.port = 0  # bound TCP port (0 for a unix listener)

    @property
    def address(self) -> str:
        """Where clients reach the relay (``host:port`` with the bound port, or ``unix://``)."""
        listen = self.config.listen_address
        if listen.startswith("unix:"):
            return listen
        host = listen.rpartition(":")[0] or "localhost"
        if host in ("[::]", "0.0.0.0"):
            host = "localhost"
        return f"{host}:{self.port}"

    async def start(self) -> None:
        await self.pool.start()
        server = grpc.aio.server()
        observer_pb2_grpc.add_ObserverServicer_to_server(
            RelayObserver(self.pool, self.config.observer), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        await self._update_health()
        listen = grpc_listen_address(self.config.listen_address)
        try:
            if self.config.server_tls is None:
                self.port = server.add_insecure_port(listen)
            else:
                self.port = server.add_secure_port(listen, self.config.server_tls.credentials())
        except RuntimeError as err:
            await self.pool.stop()
            raise OSError(f"cannot listen on {self.config.listen_address}: {err}") from err
        await server.start()
        self._server = server
        self._health_task = asyncio.get_running_loop().create_task(
            self._health_loop(), name="relay:health"
        )
        log.info(
            "hubble relay listening on %s (tls: %s)",
            self.address,
            "mtls"
            if self.config.server_tls and self.config.server_tls.client_ca_files
            else bool(self.config.server_tls),
        )

    async def _update_health(self) -> None:
        peers = self.pool.list()
        ok = self.pool.peer_service_connected and any(p.available for p in peers)
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", *OBSERVER_HEALTH_SERVICES):
            await self._health.set(service, status)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval)
            await self._update_health()

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def stop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
            self._health_task = None
        if self._server is not None:
            await self._health.enter_graceful_shutdown()
            await self._server.stop(self.config.grace)
            self._server = None
        await self.pool.stop()
        log.info("hubble relay stopped")


__all__ = ["RelayConfig", "RelayServer", "ServerTLSConfig"]
