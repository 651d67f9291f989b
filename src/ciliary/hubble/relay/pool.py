"""The relay's pool of Hubble peers: who they are, and one gRPC channel to each.

Peers come from a node's ``peer.Peer/Notify`` stream (PEER_ADDED / PEER_UPDATED upsert,
PEER_DELETED removes) and/or a static list given on the command line. Every peer gets one
long-lived channel; a watcher task per channel keeps asking gRPC to connect whenever the channel
falls idle, so gRPC's own reconnect backoff (capped at ``retry_timeout``) brings a restarted
node back without any request having to fail first.

Contract with the observer: :meth:`PeerPool.list` is a snapshot; a peer is *available* unless
its channel is in TRANSIENT_FAILURE or SHUTDOWN (upstream's rule: an idle or connecting channel
is worth a try). A peer that cannot be reached is reported, never fatal. Losing the Peer service
keeps the peers already known (their channels decide their state) and retries after
``retry_timeout``, as upstream does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from ciliary.hubble.api.peer import peer_pb2, peer_pb2_grpc
from ciliary.hubble.client import ServerAddress, parse_server

log = logging.getLogger("ciliary.hubble.relay.pool")

# upstream appends the Hubble server port when a peer announces a bare IP
DEFAULT_HUBBLE_PORT = 4244

_UNAVAILABLE_STATES = frozenset(
    {grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN}
)


@dataclass(frozen=True, slots=True)
class ClientTLSConfig:
    """How the relay dials peers over TCP: ``enabled`` False means plaintext always
    (``--disable-client-tls``); otherwise TLS for peers that announce it (or are written
    ``tls://``), verified against ``ca_files`` (system roots when empty), with an optional
    client certificate for mTLS."""

    enabled: bool = True
    ca_files: tuple[Path, ...] = ()
    cert_file: Path | None = None
    key_file: Path | None = None

    def credentials(self, server_name: str | None) -> tuple[grpc.ChannelCredentials, str | None]:
        root = b"".join(p.read_bytes() for p in self.ca_files) or None
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TLS client certificate and key must be given together")
        cert = self.cert_file.read_bytes() if self.cert_file else None
        key = self.key_file.read_bytes() if self.key_file else None
        return (
            grpc.ssl_channel_credentials(
                root_certificates=root, private_key=key, certificate_chain=cert
            ),
            server_name,
        )


@dataclass(frozen=True, slots=True)
class PoolConfig:
    dial_timeout: float = 5.0
    retry_timeout: float = 30.0
    tls: ClientTLSConfig = field(default_factory=ClientTLSConfig)


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """What is known of a peer from the Peer service or the command line."""

    name: str
    address: ServerAddress
    tls_server_name: str = ""  # set: the peer announced TLS

    @property
    def tls_announced(self) -> bool:
        return bool(self.tls_server_name) or self.address.tls


@dataclass(frozen=True, slots=True)
class Peer:
    """A snapshot of one peer for the observer."""

    name: str
    address: str
    tls_enabled: bool
    tls_server_name: str
    channel: grpc.aio.Channel
    available: bool


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def parse_peer_address(text: str) -> ServerAddress:
    """A Peer-service or ``--peers`` address: ``unix:///p``, ``host:port``, ``tls://host:port``
    or a bare IP (upstream's form, port 4244)."""
    try:
        return parse_server(text)
    except ValueError:
        if text and ":" not in text.removeprefix("[").split("]")[0]:
            return parse_server(f"{text}:{DEFAULT_HUBBLE_PORT}")
        if text.count(":") > 1 and not text.startswith("["):  # bare IPv6
            return parse_server(f"[{text}]:{DEFAULT_HUBBLE_PORT}")
        raise


def parse_static_peers(text: str) -> list[PeerSpec]:
    """``name=address,name2=address2`` (``--peers``); ValueError names the bad entry."""
    peers: list[PeerSpec] = []
    seen: set[str] = set()
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, sep, address = entry.partition("=")
        name = name.strip()
        if not sep or not name or not address.strip():
            raise ValueError(f"bad --peers entry {entry!r} (want name=address)")
        if name in seen:
            raise ValueError(f"--peers names {name!r} twice")
        seen.add(name)
        peers.append(PeerSpec(name=name, address=parse_peer_address(address.strip())))
    return peers


class _PeerConn:
    """One peer's channel and its connectivity watcher."""

    def __init__(self, spec: PeerSpec, channel: grpc.aio.Channel, tls: bool) -> None:
        self.spec = spec
        self.channel = channel
        self.tls = tls
        self.state = grpc.ChannelConnectivity.IDLE
        self.watcher: asyncio.Task[None] | None = None

    async def watch(self) -> None:
        state = self.channel.get_state(try_to_connect=True)
        while True:
            if state != self.state:
                log.debug("peer %s: %s", self.spec.name, state.name)
            self.state = state
            if state == grpc.ChannelConnectivity.SHUTDOWN:
                return
            await self.channel.wait_for_state_change(state)
            state = self.channel.get_state(try_to_connect=True)


class PeerPool:
    """Peers and their channels; start() once, stop() once, all on the relay's event loop."""

    def __init__(
        self,
        config: PoolConfig,
        *,
        peer_service: str | None = None,
        static_peers: list[PeerSpec] | None = None,
    ) -> None:
        self._cfg = config
        self._peer_service = peer_service
        self._static = list(static_peers or [])
        self._peers: dict[str, _PeerConn] = {}
        self._service_connected = peer_service is None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        for spec in self._static:
            self.upsert(spec)
        if self._peer_service is not None:
            self._spawn(self._watch_peer_service(self._peer_service), "peer-service")

    async def stop(self) -> None:
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        for name in list(self._peers):
            await self._close(self._peers.pop(name))
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"relay-pool:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- queries -----------------------------------------------------------------------------

    @property
    def peer_service_connected(self) -> bool:
        """True while the Peer service stream is up (always True without a Peer service)."""
        return self._service_connected

    def list(self) -> list[Peer]:
        return [
            Peer(
                name=c.spec.name,
                address=str(c.spec.address),
                tls_enabled=c.tls,
                tls_server_name=c.spec.tls_server_name if c.tls else "",
                channel=c.channel,
                available=c.state not in _UNAVAILABLE_STATES,
            )
            for c in sorted(self._peers.values(), key=lambda c: c.spec.name)
        ]

    def knows(self, name: str) -> bool:
        return name in self._peers

    # -- changes -----------------------------------------------------------------------------

    def upsert(self, spec: PeerSpec) -> None:
        old = self._peers.get(spec.name)
        if old is not None and old.spec == spec:
            return  # nothing changed: keep the connection
        if old is not None:
            self._spawn(self._close(old), f"close:{spec.name}")
        try:
            conn = self._open(spec)
        except (OSError, ValueError) as err:
            log.warning("peer %s (%s): cannot set up a channel: %s", spec.name, spec.address, err)
            self._peers.pop(spec.name, None)
            return
        self._peers[spec.name] = conn
        conn.watcher = self._spawn(conn.watch(), f"watch:{spec.name}")
        log.info("peer %s at %s (tls: %s)", spec.name, spec.address, conn.tls)

    def remove(self, name: str) -> None:
        conn = self._peers.pop(name, None)
        if conn is not None:
            log.info("peer %s removed", name)
            self._spawn(self._close(conn), f"close:{name}")

    def _open(self, spec: PeerSpec) -> _PeerConn:
        addr = spec.address
        options: list[tuple[str, str | int]] = [
            ("grpc.initial_reconnect_backoff_ms", _ms(min(1.0, self._cfg.retry_timeout))),
            ("grpc.max_reconnect_backoff_ms", _ms(self._cfg.retry_timeout)),
            ("grpc.min_reconnect_backoff_ms", _ms(self._cfg.dial_timeout)),
        ]
        use_tls = addr.kind == "tcp" and self._cfg.tls.enabled and spec.tls_announced
        if not use_tls:
            if addr.kind == "unix":
                options.append(("grpc.default_authority", "localhost"))
            return _PeerConn(spec, grpc.aio.insecure_channel(addr.target, options=options), False)
        server_name = spec.tls_server_name or None
        creds, name = self._cfg.tls.credentials(server_name)
        if name:
            options.append(("grpc.ssl_target_name_override", name))
            options.append(("grpc.default_authority", name))
        return _PeerConn(spec, grpc.aio.secure_channel(addr.target, creds, options=options), True)

    async def _close(self, conn: _PeerConn) -> None:
        if conn.watcher is not None:
            conn.watcher.cancel()
        await conn.channel.close(None)

    # -- the Peer service --------------------------------------------------------------------

    async def _watch_peer_service(self, address: str) -> None:
        while not self._stopping:
            try:
                spec = PeerSpec(name="peer-service", address=parse_peer_address(address))
                conn = self._open(spec)
            except (OSError, ValueError) as err:
                log.error("peer service %s: %s", address, err)
                return
            try:
                stub = peer_pb2_grpc.PeerStub(conn.channel)
                call = stub.Notify(peer_pb2.NotifyRequest())
                async for cn in call:
                    if not self._service_connected:
                        log.info("peer service %s: connected", address)
                    self._service_connected = True
                    self._apply(cn)
                log.info(
                    "peer service %s: stream ended; retrying in %gs",
                    address,
                    self._cfg.retry_timeout,
                )
            except grpc.aio.AioRpcError as err:
                log.info(
                    "peer service %s: %s: %s; retrying in %gs",
                    address,
                    err.code().name,
                    err.details(),
                    self._cfg.retry_timeout,
                )
            finally:
                self._service_connected = False
                await conn.channel.close(None)
            await asyncio.sleep(self._cfg.retry_timeout)

    def _apply(self, cn: peer_pb2.ChangeNotification) -> None:
        if not cn.name:
            log.warning("peer service: notification without a name ignored")
            return
        if cn.type == peer_pb2.PEER_DELETED:
            self.remove(cn.name)
            return
        if cn.type not in (peer_pb2.PEER_ADDED, peer_pb2.PEER_UPDATED):
            log.warning("peer service: unknown notification type %d for %s", cn.type, cn.name)
            return
        try:
            address = parse_peer_address(cn.address)
        except ValueError as err:
            log.warning("peer %s: %s", cn.name, err)
            return
        server_name = cn.tls.server_name if cn.HasField("tls") else ""
        if cn.HasField("tls") and not server_name:
            server_name = address.authority_host
        self.upsert(PeerSpec(name=cn.name, address=address, tls_server_name=server_name))
