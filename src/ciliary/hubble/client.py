"""Where a Hubble server is and how to open a gRPC channel to it (CLI and relay side).

Hubble's clients name servers as ``unix:///path`` (the agent's local socket),
``host:port`` / ``:port`` (plain TCP) or ``tls://host:port`` (TCP with TLS); the relay also
dials peers by the address the Peer service announced. Parsing lives here, once, so a typo
fails with one clear message instead of a gRPC "name resolution" error minutes later.

Channels are plain grpc / grpc.aio channels; :func:`connect` adds the dial timeout Hubble's
CLI has (``--timeout``, 5 s by default) by waiting for the channel to become ready.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc
import grpc.aio
from grpc_health.v1.health_pb2 import HealthCheckRequest
from grpc_health.v1.health_pb2_grpc import HealthStub

DEFAULT_DIAL_TIMEOUT = 5.0


class DialError(ConnectionError):
    """The server did not become reachable within the dial timeout."""


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """A parsed server address.

    ``kind`` is ``"unix"`` (``path`` set) or ``"tcp"`` (``host``/``port`` set; ``host`` may be
    ``""`` for the ``:port`` form, which a client dials as ``localhost``). ``tls`` is True for
    the ``tls://`` scheme.
    """

    kind: Literal["unix", "tcp"]
    path: str = ""
    host: str = ""
    port: int = 0
    tls: bool = False

    @property
    def target(self) -> str:
        """The gRPC target string to dial."""
        if self.kind == "unix":
            return f"unix:{self.path}" if not self.path.startswith("/") else f"unix://{self.path}"
        host = self.host or "localhost"
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        return f"{host}:{self.port}"

    @property
    def authority_host(self) -> str:
        """The host name TLS verifies by default (``localhost`` for unix sockets)."""
        return self.host or "localhost"

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix://{self.path}"
        return ("tls://" if self.tls else "") + self.target


def _parse_port(text: str, original: str) -> int:
    if not text.isdigit():
        raise ValueError(f"invalid server address {original!r}: port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"invalid server address {original!r}: port {port} is out of 1..65535")
    return port


def _split_host_port(hostport: str, original: str) -> tuple[str, int]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or not hostport[end + 1 :].startswith(":"):
            raise ValueError(f"invalid server address {original!r}: expected [ipv6]:port")
        host, port_text = hostport[1:end], hostport[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as err:
            raise ValueError(f"invalid server address {original!r}: {err}") from err
        return host, _parse_port(port_text, original)
    host, sep, port_text = hostport.rpartition(":")
    if not sep:
        raise ValueError(
            f"invalid server address {original!r}: expected unix:///path, host:port, :port "
            "or tls://host:port"
        )
    if ":" in host:
        raise ValueError(
            f"invalid server address {original!r}: an IPv6 address must be written [addr]:port"
        )
    if any(c in host for c in "/ @?#"):
        raise ValueError(f"invalid server address {original!r}: bad host {host!r}")
    return host, _parse_port(port_text, original)


def parse_server(text: str) -> ServerAddress:
    """Parses ``unix:///path``, ``host:port``, ``:port``, ``[v6]:port`` or ``tls://host:port``.

    Raises ValueError naming the problem for anything else (other schemes, missing port, ...).
    """
    original = text
    text = text.strip()
    if not text:
        raise ValueError("invalid server address '': empty")
    if text.startswith("unix:"):
        rest = text[len("unix:") :]
        if rest.startswith("//"):
            rest = rest[2:]
            if not rest.startswith("/"):
                raise ValueError(
                    f"invalid server address {original!r}: unix:// needs an absolute path "
                    "(unix:///run/...)"
                )
        if not rest:
            raise ValueError(f"invalid server address {original!r}: missing socket path")
        return ServerAddress(kind="unix", path=rest)
    tls = False
    if text.startswith("tls://"):
        tls = True
        text = text[len("tls://") :]
    elif "://" in text:
        scheme = text.split("://", 1)[0]
        raise ValueError(
            f"invalid server address {original!r}: unsupported scheme {scheme!r} "
            "(use unix:///path, host:port or tls://host:port)"
        )
    host, port = _split_host_port(text, original)
    return ServerAddress(kind="tcp", host=host, port=port, tls=tls)


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """TLS settings of a client: trust anchors, optional client certificate (mTLS), and the
    name the server's certificate must carry (defaults to the dialed host)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TLS client certificate and key must be given together")
        root = self.ca_file.read_bytes() if self.ca_file else None
        key = self.key_file.read_bytes() if self.key_file else None
        cert = self.cert_file.read_bytes() if self.cert_file else None
        return grpc.ssl_channel_credentials(
            root_certificates=root, private_key=key, certificate_chain=cert
        )


def _resolve(
    server: str | ServerAddress, tls: ClientTLS | None
) -> tuple[ServerAddress, ClientTLS | None, list[tuple[str, str | int]]]:
    addr = parse_server(server) if isinstance(server, str) else server
    if addr.tls and tls is None:
        tls = ClientTLS()
    options: list[tuple[str, str | int]] = []
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
        options.append(("grpc.default_authority", tls.server_name))
    elif addr.kind == "unix":
        # gRPC's default authority for unix targets is the path, which is not a valid
        # :authority; use localhost like the Go client does.
        options.append(("grpc.default_authority", "localhost"))
    return addr, tls, options


def aio_channel(server: str | ServerAddress, tls: ClientTLS | None = None) -> grpc.aio.Channel:
    """Opens (lazily) an asyncio channel; TLS when ``tls`` is given or the address says tls://."""
    addr, tls, options = _resolve(server, tls)
    if tls is None:
        return grpc.aio.insecure_channel(addr.target, options=options)
    return grpc.aio.secure_channel(addr.target, tls.credentials(), options=options)


def sync_channel(server: str | ServerAddress, tls: ClientTLS | None = None) -> grpc.Channel:
    """Opens (lazily) a blocking channel; same rules as :func:`aio_channel`."""
    addr, tls, options = _resolve(server, tls)
    if tls is None:
        return grpc.insecure_channel(addr.target, options=options)
    return grpc.secure_channel(addr.target, tls.credentials(), options=options)


def _timeout_message(server: str | ServerAddress, timeout: float) -> str:
    return f"cannot connect to Hubble server {server}: no answer within {timeout:g}s"


async def connect(
    server: str | ServerAddress,
    tls: ClientTLS | None = None,
    timeout: float = DEFAULT_DIAL_TIMEOUT,
) -> grpc.aio.Channel:
    """Opens an asyncio channel and waits until it is ready; DialError after ``timeout`` s."""
    channel = aio_channel(server, tls)
    try:
        await asyncio.wait_for(channel.channel_ready(), timeout)
    except TimeoutError as err:
        await channel.close(None)
        raise DialError(_timeout_message(server, timeout)) from err
    except BaseException:
        await channel.close(None)
        raise
    return channel


def connect_sync(
    server: str | ServerAddress,
    tls: ClientTLS | None = None,
    timeout: float = DEFAULT_DIAL_TIMEOUT,
) -> grpc.Channel:
    """Blocking twin of :func:`connect`. Readiness is proven by one health check that waits for
    the connection (any answer, even UNIMPLEMENTED, means connected), not by
    ``grpc.channel_ready_future``: its connectivity subscription makes the channel's close wait
    for a 200 ms polling tick, which a one-shot CLI pays on every run."""
    channel = sync_channel(server, tls)
    try:
        HealthStub(channel).Check(HealthCheckRequest(), timeout=timeout, wait_for_ready=True)
    except grpc.RpcError as err:
        code = err.code() if isinstance(err, grpc.Call) else None
        if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
            channel.close()
            raise DialError(_timeout_message(server, timeout)) from err
        # the server answered (UNIMPLEMENTED, NOT_FOUND …): the connection is up
    except BaseException:
        channel.close()
        raise
    return channel
