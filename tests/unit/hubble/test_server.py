"""HubbleServer end to end: unix socket + TCP, health, TLS/mTLS with a throwaway CA, Peer
Notify, socket hygiene, and the client-side address parsing and dialing."""

from __future__ import annotations

import asyncio
import socket
import stat
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ciliary.hubble.api.observer import observer_pb2, observer_pb2_grpc
from ciliary.hubble.api.peer import peer_pb2, peer_pb2_grpc
from ciliary.hubble.client import (
    ClientTLS,
    DialError,
    ServerAddress,
    aio_channel,
    connect,
    connect_sync,
    parse_server,
)
from ciliary.hubble.observer import LocalObserver
from ciliary.hubble.peer import PeerInfo, diff_peers
from ciliary.hubble.server import HubbleServer, TLSConfig, parse_listen_address

from .test_observer import make_flow


def arun(coro_fn: Callable[[], Awaitable[Any]], timeout: float = 10) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro_fn(), timeout)

    return asyncio.run(main())


async def status_over(ch: grpc.aio.Channel) -> observer_pb2.ServerStatusResponse:
    stub = observer_pb2_grpc.ObserverStub(ch)
    resp: observer_pb2.ServerStatusResponse = await stub.ServerStatus(
        observer_pb2.ServerStatusRequest(), timeout=5
    )
    return resp


# ------------------------------------------------------------------ plain server


def test_unix_and_tcp_listeners_health_and_socket_mode(tmp_path: Path) -> None:
    sock = tmp_path / "run" / "node-a" / "hubble.sock"

    async def body() -> None:
        obs = LocalObserver("node-a", capacity=15)
        obs.on_flow(make_flow(1))
        server = HubbleServer(obs, unix_path=sock, tcp_address="127.0.0.1:0")
        await server.start()
        try:
            assert stat.S_IMODE(sock.stat().st_mode) == 0o600
            assert server.tcp_port and server.tcp_port > 0
            for addr in (f"unix://{sock}", f"127.0.0.1:{server.tcp_port}"):
                ch = await connect(addr, timeout=5)
                async with ch:
                    assert (await status_over(ch)).num_flows == 1
                    health = health_pb2_grpc.HealthStub(ch)
                    for service in ("", "observer.Observer"):
                        resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
                        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await server.stop(0)
        assert not sock.exists()

    arun(body)


def test_health_answers_upstream_service_name(tmp_path: Path) -> None:
    """Upstream's ``hubble status`` asks grpc.health.v1 for ``hubble.server.Observer``."""

    async def body() -> None:
        server = HubbleServer(LocalObserver("node-a"), unix_path=tmp_path / "hubble.sock")
        await server.start()
        try:
            ch = await connect(server.unix_address or "", timeout=5)
            async with ch:
                resp = await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service="hubble.server.Observer"), timeout=5
                )
                assert resp.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await server.stop(0)

    arun(body)


def test_all_addresses_form_and_sync_client(tmp_path: Path) -> None:
    async def body() -> None:
        server = HubbleServer(LocalObserver("n"), tcp_address=":0")
        await server.start()
        try:

            def sync_call() -> int:
                ch = connect_sync(f"localhost:{server.tcp_port}", timeout=5)
                with ch:
                    stub = observer_pb2_grpc.ObserverStub(ch)
                    return int(stub.ServerStatus(observer_pb2.ServerStatusRequest()).max_flows)

            assert await asyncio.to_thread(sync_call) == 4095
        finally:
            await server.stop(0)

    arun(body)


def test_stale_socket_is_replaced_but_a_live_one_is_not(tmp_path: Path) -> None:
    sock = tmp_path / "hubble.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()  # leaves the file, nobody listening
    (tmp_path / "plain").write_text("x")

    async def body() -> None:
        first = HubbleServer(LocalObserver("a"), unix_path=sock)
        await first.start()
        try:
            second = HubbleServer(LocalObserver("b"), unix_path=sock)
            with pytest.raises(FileExistsError, match="in use"):
                await second.start()
            assert sock.exists()  # the failed start did not remove the live socket
            ch = await connect(f"unix://{sock}", timeout=5)
            async with ch:
                await status_over(ch)
            third = HubbleServer(LocalObserver("c"), unix_path=tmp_path / "plain")
            with pytest.raises(FileExistsError, match="not a socket"):
                await third.start()
        finally:
            await first.stop(0)

    arun(body)


def test_server_needs_a_listener_and_valid_address() -> None:
    with pytest.raises(ValueError, match="needs a unix socket path"):
        HubbleServer(LocalObserver("n"))
    with pytest.raises(ValueError, match="bad port"):
        HubbleServer(LocalObserver("n"), tcp_address="127.0.0.1:http")


@pytest.mark.parametrize(
    ("given", "want"),
    [(":4244", "[::]:4244"), ("0.0.0.0:1", "0.0.0.0:1"), ("[::1]:0", "[::1]:0")],
)
def test_parse_listen_address(given: str, want: str) -> None:
    assert parse_listen_address(given) == want


@pytest.mark.parametrize("bad", ["4244", "::1:80", "host:99999", "[::1]80"])
def test_parse_listen_address_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid listen address"):
        parse_listen_address(bad)


# ------------------------------------------------------------------ TLS


@dataclass(frozen=True)
class PKI:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _ca(d: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "1", "-subj", f"/CN={name}",
        cwd=d,
    )  # fmt: skip


def _leaf(d: Path, name: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=d,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext",
        cwd=d,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "other")
    _leaf(
        d,
        "server",
        "subjectAltName=DNS:localhost,DNS:node-a.default.hubble-grpc.cilium.io,IP:127.0.0.1\n"
        "extendedKeyUsage=serverAuth\n",
    )
    _leaf(d, "client", "extendedKeyUsage=clientAuth\n")
    return PKI(
        d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key",
        d / "other.crt",
    )  # fmt: skip


def test_tls_server_and_client(pki: PKI) -> None:
    async def body() -> None:
        tls = TLSConfig(pki.server_cert, pki.server_key)
        server = HubbleServer(LocalObserver("node-a"), tcp_address="127.0.0.1:0", tls=tls)
        await server.start()
        try:
            port = server.tcp_port
            ch = await connect(f"tls://127.0.0.1:{port}", ClientTLS(ca_file=pki.ca), timeout=5)
            async with ch:
                assert (await status_over(ch)).max_flows == 4095
            named = ClientTLS(ca_file=pki.ca, server_name="node-a.default.hubble-grpc.cilium.io")
            ch = await connect(f"127.0.0.1:{port}", named, timeout=5)
            async with ch:
                await status_over(ch)
            # a client trusting another CA cannot talk to it
            with pytest.raises(DialError):
                await connect(f"tls://127.0.0.1:{port}", ClientTLS(ca_file=pki.other_ca), 1)
            # a plaintext client cannot either
            with pytest.raises(DialError):
                await connect(f"127.0.0.1:{port}", timeout=1)
        finally:
            await server.stop(0)

    arun(body)


def test_mtls_requires_a_client_certificate(pki: PKI) -> None:
    async def body() -> None:
        tls = TLSConfig(pki.server_cert, pki.server_key, client_ca_file=pki.ca)
        server = HubbleServer(LocalObserver("node-a"), tcp_address="127.0.0.1:0", tls=tls)
        await server.start()
        try:
            addr = f"tls://localhost:{server.tcp_port}"
            good = ClientTLS(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
            ch = await connect(addr, good, timeout=5)
            async with ch:
                await status_over(ch)
            ch = aio_channel(addr, ClientTLS(ca_file=pki.ca))
            async with ch:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await status_over(ch)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await server.stop(0)

    arun(body)


def test_client_tls_needs_cert_and_key_together(pki: PKI) -> None:
    with pytest.raises(ValueError, match="together"):
        ClientTLS(cert_file=pki.client_cert).credentials()


# ------------------------------------------------------------------ Peer


def test_peer_notify_streams_adds_then_changes(tmp_path: Path) -> None:
    peers = [
        PeerInfo("node-b", "unix:///run/ciliary/node-b/hubble.sock"),
        PeerInfo("node-a", "unix:///run/ciliary/node-a/hubble.sock"),
    ]

    async def body() -> list[tuple[str, str, int, str | None]]:
        server = HubbleServer(
            LocalObserver("node-a"),
            unix_path=tmp_path / "h.sock",
            peers=lambda: list(peers),
            peer_poll_interval=30,
        )
        await server.start()
        out: list[tuple[str, str, int, str | None]] = []
        try:
            async with grpc.aio.insecure_channel(server.unix_address or "") as ch:
                stub = peer_pb2_grpc.PeerStub(ch)
                call = stub.Notify(peer_pb2.NotifyRequest())
                it = call.__aiter__()

                async def take(n: int) -> None:
                    for _ in range(n):
                        cn = await anext(it)
                        tls = cn.tls.server_name if cn.HasField("tls") else None
                        out.append((cn.name, cn.address, cn.type, tls))

                await take(2)
                peers[:] = [
                    PeerInfo("node-a", "10.0.0.1:4244", "node-a.default.hubble-grpc.cilium.io"),
                    PeerInfo("node-c", "unix:///run/ciliary/node-c/hubble.sock"),
                ]
                assert server.peer_servicer is not None
                server.peer_servicer.notify_changed()
                await take(3)
                call.cancel()
        finally:
            await server.stop(0)
        return out

    added, deleted, updated = peer_pb2.PEER_ADDED, peer_pb2.PEER_DELETED, peer_pb2.PEER_UPDATED
    assert arun(body) == [
        ("node-a", "unix:///run/ciliary/node-a/hubble.sock", added, None),
        ("node-b", "unix:///run/ciliary/node-b/hubble.sock", added, None),
        ("node-b", "unix:///run/ciliary/node-b/hubble.sock", deleted, None),
        ("node-a", "10.0.0.1:4244", updated, "node-a.default.hubble-grpc.cilium.io"),
        ("node-c", "unix:///run/ciliary/node-c/hubble.sock", added, None),
    ]


def test_peer_default_self_listing_and_polling_an_async_lister(tmp_path: Path) -> None:
    peers = [PeerInfo("a", "10.0.0.1:4244")]

    async def list_peers() -> list[PeerInfo]:
        return list(peers)

    async def first_note(server: HubbleServer, then: Callable[[], None] | None) -> list[str]:
        await server.start()
        try:
            async with grpc.aio.insecure_channel(server.unix_address or "") as ch:
                stub = peer_pb2_grpc.PeerStub(ch)
                call = stub.Notify(peer_pb2.NotifyRequest())
                it = call.__aiter__()
                notes = [await anext(it)]
                if then is not None:
                    then()  # no notify_changed(): the next poll must see it
                    notes.append(await anext(it))
                call.cancel()
                return [f"{n.type}:{n.name}:{n.address}" for n in notes]
        finally:
            await server.stop(0)

    own = HubbleServer(LocalObserver("node-z"), unix_path=tmp_path / "z.sock")
    assert arun(lambda: first_note(own, None)) == [f"1:node-z:unix://{tmp_path / 'z.sock'}"]

    polled = HubbleServer(
        LocalObserver("node-y"),
        unix_path=tmp_path / "y.sock",
        peers=list_peers,
        peer_poll_interval=0.05,
    )
    assert arun(lambda: first_note(polled, peers.clear)) == [
        "1:a:10.0.0.1:4244",
        "2:a:10.0.0.1:4244",
    ]
    assert diff_peers({"a": peers_a()}, {"a": peers_a()}) == []


def peers_a() -> PeerInfo:
    return PeerInfo("a", "x:1")


# ------------------------------------------------------------------ client address parsing


@pytest.mark.parametrize(
    ("text", "want", "target"),
    [
        ("unix:///run/x.sock", ServerAddress("unix", path="/run/x.sock"), "unix:///run/x.sock"),
        ("unix:rel.sock", ServerAddress("unix", path="rel.sock"), "unix:rel.sock"),
        ("localhost:4245", ServerAddress("tcp", host="localhost", port=4245), "localhost:4245"),
        (":4245", ServerAddress("tcp", host="", port=4245), "localhost:4245"),
        ("10.0.0.1:4244", ServerAddress("tcp", host="10.0.0.1", port=4244), "10.0.0.1:4244"),
        ("[::1]:4244", ServerAddress("tcp", host="::1", port=4244), "[::1]:4244"),
        (
            "tls://relay.example:443",
            ServerAddress("tcp", host="relay.example", port=443, tls=True),
            "relay.example:443",
        ),
    ],
)
def test_parse_server(text: str, want: ServerAddress, target: str) -> None:
    got = parse_server(text)
    assert got == want and got.target == target


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        ("", "empty"),
        ("localhost", "expected unix:///path, host:port"),
        ("http://x:1", "unsupported scheme 'http'"),
        ("unix://relative", "absolute path"),
        ("unix:", "missing socket path"),
        ("host:0", "out of 1..65535"),
        ("host:abc", "not a number"),
        ("::1:80", "IPv6 address must be written"),
        ("tls://host", "expected unix:///path"),
    ],
)
def test_parse_server_rejects(text: str, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        parse_server(text)


def test_dial_timeout_on_nothing_listening(tmp_path: Path) -> None:
    with pytest.raises(DialError, match="no answer within"):
        arun(lambda: connect(f"unix://{tmp_path / 'none.sock'}", timeout=0.2))
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(DialError):
        connect_sync(f"127.0.0.1:{port}", timeout=0.2)
