"""The node's Envoy with compiled HTTP policy, as a pod's redirected connection meets it.

A network namespace of the test's own holds everything: a server "endpoint" (10.199.0.2: an
aiohttp HTTP/1.1 server on 8080 and 8081, a gRPC health server on 50051), client addresses
(.3, .4, .5) and one Envoy started by :class:`EnvoyProcess` (shared by the module: it starts in
~0.5 s). Connections to the server's ports are handed to Envoy's transparent listeners by an
iptables TPROXY rule, which, as the datapath's ``bpf_sk_assign``, keeps the original destination
as the accepted socket's local address; Envoy's own upstream connections carry the proxy mark
(0xa00) and are not redirected again. gRPC's server and client run as processes of their own in
the namespace: gRPC makes its sockets on threads of its own, which live in whatever namespace the
process first used gRPC in (the root one, after any earlier gRPC test in the same process).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import grpc
import pytest
from aiohttp import web
from grpc_health.v1 import health_pb2

from ciliary import processes
from ciliary.agent import envoyconfig as cfg
from ciliary.agent.accesslog import AccessLogReader, HTTPAccess
from ciliary.agent.envoy import EnvoyConfigWriter, EnvoyError, EnvoyPaths, EnvoyProcess
from ciliary.agent.envoypolicy import EndpointView, NodeEnvoy, http_listeners, identity_prefixes
from ciliary.core.proxyports import HTTP_EGRESS, HTTP_INGRESS, ProxyPorts
from ciliary.datapath.linux import netns
from ciliary.policy.api.model import HTTPHeaderMatch, HTTPRule
from ciliary.policy.resolve import EndpointPolicy
from tests.unit.policy.engine.lab import Lab, pod

pytestmark = pytest.mark.privileged

T = TypeVar("T")
SERVER = "10.199.0.2"
ALLOWED, OTHER, EGRESS_CLIENT = "10.199.0.3", "10.199.0.4", "10.199.0.5"
INGRESS_PORT, EGRESS_PORT = 15001, 15002
PROXY_MARK = 0xA00
NODE_INGRESS_PORT = 15011
PORTS = ProxyPorts({HTTP_INGRESS: INGRESS_PORT, HTTP_EGRESS: EGRESS_PORT})


class NetnsLoop:
    """An event loop on a thread that lives in a network namespace: sockets it makes and
    processes it starts are there."""

    def __init__(self, path: str) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            netns.enter(path)  # this thread only
            asyncio.set_event_loop(self.loop)
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True, name="envoy-test-loop")
        self.thread.start()
        ready.wait()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            # closed, or its self-pipe and the loop surface as unraisable ResourceWarnings in
            # whichever later test the garbage collector happens to run (seen: test_identity)
            self.loop.close()


def _ns(name: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", name, *args], check=True, capture_output=True)


def _tproxy(name: str, dport: int, proxy_port: int) -> None:
    _ns(name, "iptables", "-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "-d", SERVER,
        "--dport", str(dport), "-m", "mark", "!", "--mark", f"{PROXY_MARK:#x}/0xf00",
        "-j", "TPROXY", "--on-port", str(proxy_port), "--tproxy-mark", "0x200/0xf00")  # fmt: skip


async def _upstreams() -> list[Callable[[], Awaitable[None]]]:
    async def echo(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                await ws.send_str(f"echo {msg.data}")
            return ws
        seen = f"{request.method} {request.path_qs} from upstream"
        if request.path.startswith("/out/"):  # the egress chain's: who connected
            seen += f" (client {request.remote})"
        return web.Response(text=seen + "\n")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for port in (8080, 8081, 8082):
        await web.TCPSite(runner, SERVER, port).start()
    grpc_server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", GRPC_SERVER, f"{SERVER}:50051", stdout=asyncio.subprocess.PIPE
    )
    assert grpc_server.stdout is not None
    ready = await asyncio.wait_for(grpc_server.stdout.readline(), 20)
    assert ready == b"ready\n", f"the gRPC health server did not start: {ready!r}"

    async def stop_grpc() -> None:
        grpc_server.terminate()
        await grpc_server.wait()

    return [runner.cleanup, stop_grpc]


GRPC_SERVER = """
import asyncio, sys
import grpc
from grpc_health.v1 import health, health_pb2_grpc

async def main() -> None:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    if not server.add_insecure_port(sys.argv[1]):
        sys.exit(f"cannot listen on {sys.argv[1]}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""

GRPC_CLIENT = """
import asyncio, sys
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

async def main() -> None:
    async with grpc.aio.insecure_channel(sys.argv[1]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        code = "OK"
        try:
            async for _ in stub.Watch(health_pb2.HealthCheckRequest(), timeout=10):
                break
        except grpc.aio.AioRpcError as err:
            code = err.code().name
        print(reply.status, code)

asyncio.run(main())
"""


def ingress(peers: tuple[cfg.PeerHTTPRules, ...]) -> cfg.ProxyListener:
    chains = (
        cfg.HTTPChain("ep7-ingress-8080", "ingress", (SERVER,), 8080, peers),
        cfg.HTTPChain("ep7-ingress-50051", "ingress", (SERVER,), 50051, GRPC_PEERS),
    )
    return cfg.ProxyListener("cilium-http-ingress", INGRESS_PORT, "ingress", chains)


BASE_PEERS = (
    cfg.PeerHTTPRules(
        (f"{ALLOWED}/32",),
        (
            HTTPRule(method="GET", path="/public.*"),
            HTTPRule(method="PUT|POST", path="/v1/request-landing"),
            HTTPRule(path="/headers", headers=("X-Token: abc",)),
            HTTPRule(path="/present", headers=("X-Flag",)),
            HTTPRule(path="/matches", header_matches=(HTTPHeaderMatch("X-Team", "blue"),)),
            HTTPRule(host="api\\.example", path="/host"),
        ),
    ),
)
GRPC_PEERS = (
    cfg.PeerHTTPRules(None, (HTTPRule(method="POST", path="/grpc.health.v1.Health/Check"),)),
)
EGRESS = cfg.ProxyListener(
    "cilium-http-egress",
    EGRESS_PORT,
    "egress",
    (
        cfg.HTTPChain(
            "ep9-egress-8081",
            "egress",
            (EGRESS_CLIENT,),
            8081,
            (cfg.PeerHTTPRules((f"{SERVER}/32",), (HTTPRule(method="GET", path="/out/.*"),)),),
        ),
    ),
    original_source_mark=PROXY_MARK,  # upstream as the pod (original_src), marked
)


class Env:
    def __init__(
        self,
        loop: NetnsLoop,
        envoy: EnvoyProcess,
        writer: EnvoyConfigWriter,
        records: list[HTTPAccess],
    ) -> None:
        self.loop, self.envoy, self.writer, self.records = loop, envoy, writer, records

    def apply(self, *listeners: cfg.ProxyListener) -> None:
        """Write the configuration and wait until Envoy runs every file's version."""
        self.writer.apply(listeners, [cfg.cluster(d, PROXY_MARK) for d in ("ingress", "egress")])
        wanted = self._versions()

        async def applied() -> None:
            deadline = time.monotonic() + 10
            while True:
                have = await self.envoy.config_versions()
                if all(have.get(name) == v for name, v in wanted.items()):
                    return
                assert time.monotonic() < deadline, (
                    f"not applied: {wanted} vs {have}: {self.envoy.paths.log.read_text()[-1500:]}"
                )
                await asyncio.sleep(0.05)

        self.loop.run(applied())

    def _versions(self) -> dict[str, str]:
        """What the writer wrote last: the files' versions (LDS, CDS, each route's)."""
        paths = self.writer.paths
        out = {p.stem: json.loads(p.read_text())["version_info"] for p in (paths.lds, paths.cds)}
        for path in paths.routes.glob("*.json"):
            doc = json.loads(path.read_text())
            out[doc["resources"][0]["name"]] = doc["version_info"]
        return out


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    name = f"f-envoy-{os.getpid()}"
    path = str(netns.create(name))
    loop = NetnsLoop(path)
    envoy: EnvoyProcess | None = None
    cleanups: list[Callable[[], Awaitable[None]]] = []
    try:
        for a in (SERVER, ALLOWED, OTHER, EGRESS_CLIENT):
            _ns(name, "ip", "addr", "add", f"{a}/32", "dev", "lo")
        _ns(name, "ip", "rule", "add", "fwmark", "0x200/0xf00", "lookup", "100")
        _ns(name, "ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
        for dport in (8080, 50051):
            _tproxy(name, dport, INGRESS_PORT)
        _tproxy(name, 8081, EGRESS_PORT)
        _tproxy(name, 8082, NODE_INGRESS_PORT)
        cleanups = loop.run(_upstreams())
        paths = EnvoyPaths(tmp_path_factory.mktemp("envoy"))
        envoy = EnvoyProcess("f-test", paths)
        writer = EnvoyConfigWriter(paths, ipv6=True)  # the [::] socket too (v6only)
        records: list[HTTPAccess] = []
        reader = AccessLogReader(paths.access_log, lambda b: records.extend(b.records()))
        loop.run(_start_reader(reader))
        cleanups.append(lambda: _stop_reader(reader))
        loop.run(envoy.start())
        e = Env(loop, envoy, writer, records)
        e.apply(ingress(BASE_PEERS), EGRESS)
        yield e
    finally:
        if envoy is not None:
            loop.run(envoy.stop())
        for cleanup in cleanups:
            with contextlib.suppress(Exception):
                loop.run(cleanup())
        loop.close()
        netns.remove(name)


async def _start_reader(reader: AccessLogReader) -> None:
    reader.start()


async def _stop_reader(reader: AccessLogReader) -> None:
    reader.stop()


async def _request(
    method: str,
    path: str,
    *,
    source: str = ALLOWED,
    port: int = 8080,
    headers: tuple[str, ...] = (),
    host: str | None = None,
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None,
) -> tuple[int, bytes]:
    """One HTTP/1.1 request (on ``conn`` when given, kept open) → (status, body)."""
    if conn is None:
        reader, writer = await asyncio.open_connection(SERVER, port, local_addr=(source, 0))
    else:
        reader, writer = conn
    head = [f"{method} {path} HTTP/1.1", f"Host: {host or f'{SERVER}:{port}'}",
            "Content-Length: 0", *headers]  # fmt: skip
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        key, _, value = line.decode().partition(":")
        if key.lower() == "content-length":
            length = int(value)
    body = await reader.readexactly(length)
    if conn is None:
        writer.close()
    return int(status_line.split()[1]), body


def test_http_rules_allow_and_deny_as_cilium(env: Env) -> None:
    async def run() -> dict[str, tuple[int, bytes]]:
        cases = {
            "get public": _request("GET", "/public/index.html"),
            "get private": _request("GET", "/private"),
            "post public": _request("POST", "/public/x"),
            "put landing": _request("PUT", "/v1/request-landing"),
            "landing prefix only": _request("PUT", "/v1/request-landing/more"),
            "public from other peer": _request("GET", "/public/x", source=OTHER),
            "header exact": _request("GET", "/headers", headers=("X-Token: abc",)),
            "header wrong value": _request("GET", "/headers", headers=("X-Token: abd",)),
            "header present": _request("GET", "/present", headers=("X-Flag: 1",)),
            "header absent": _request("GET", "/present"),
            "headerMatches": _request("GET", "/matches", headers=("X-Team: blue",)),
            "headerMatches wrong": _request("GET", "/matches", headers=("X-Team: red",)),
            "host": _request("GET", "/host", host="api.example"),
            "host other": _request("GET", "/host", host="api.example.org"),
        }
        results = await asyncio.gather(*cases.values())
        return dict(zip(cases, results, strict=True))

    got = env.loop.run(run())
    allowed = {"get public", "put landing", "header exact", "header present", "headerMatches",
               "host"}  # fmt: skip
    for case, (status, body) in got.items():
        if case in allowed:
            assert status == 200 and body.endswith(b"from upstream\n"), (case, status, body)
        else:
            assert (status, body) == (403, b"Access denied\r\n"), (case, status, body)


def test_denied_response_is_ciliums_byte_for_byte(env: Env) -> None:
    async def raw() -> bytes:
        reader, writer = await asyncio.open_connection(SERVER, 8080, local_addr=(OTHER, 0))
        writer.write(b"GET /x HTTP/1.1\r\nHost: s\r\n\r\n")
        data = await reader.readuntil(b"Access denied\r\n")
        writer.close()
        return data

    data = env.loop.run(raw())
    head = data.split(b"\r\n\r\n")[0].lower().split(b"\r\n")
    assert head[0] == b"http/1.1 403 forbidden"
    assert {b"content-length: 15", b"content-type: text/plain", b"server: envoy"} <= set(head)


def test_h2c_and_grpc_enforced_per_request(env: Env) -> None:
    async def grpc_calls() -> tuple[int, str]:
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-c", GRPC_CLIENT, f"{SERVER}:50051", stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(client.communicate(), 25)
        assert client.returncode == 0, out
        status, code = out.decode().split()
        return int(status), code

    status, denied = env.loop.run(grpc_calls())
    assert status == health_pb2.HealthCheckResponse.SERVING  # allowed method, over h2c
    assert denied == grpc.StatusCode.PERMISSION_DENIED.name  # grpc-status 7, as upstream

    async def watch_record() -> HTTPAccess:
        deadline = time.monotonic() + 5
        while True:
            found = [r for r in env.records if r.url.endswith("/grpc.health.v1.Health/Watch")]
            if found:
                return found[-1]
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)

    rec = env.loop.run(watch_record())
    assert (rec.protocol, rec.verdict, rec.grpc_status, rec.method) == (
        "HTTP/2",
        "DROPPED",
        7,
        "POST",
    )

    # plain HTTP/2 with prior knowledge: a denied request is the same 403
    out = env.loop.run(_curl("--http2-prior-knowledge", f"http://{SERVER}:8080/private"))
    assert out == "403 2 Access denied\r\n"


async def _curl(*args: str) -> str:
    """``<code> <http version> <body>`` of one curl request from the allowed client."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", "--interface", ALLOWED, "-w", "\n%{http_code} %{http_version}", *args,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    body, _, status = out.decode().rpartition("\n")
    return f"{status} {body}"


async def _status_or_closed(method: str, path: str, **kw: Any) -> int:
    """The status, or 0 when Envoy closed the connection without an answer."""
    try:
        return (await _request(method, path, **kw))[0]
    except (asyncio.IncompleteReadError, ConnectionError, IndexError):
        return 0


def test_egress_chain_checks_the_destination(env: Env) -> None:
    async def run() -> list[int]:
        return [
            await _status_or_closed("GET", "/out/a", source=EGRESS_CLIENT, port=8081),
            await _status_or_closed("GET", "/in/a", source=EGRESS_CLIENT, port=8081),
            # another source is no endpoint of a chain: the connection is closed
            await _status_or_closed("GET", "/out/a", source=OTHER, port=8081),
        ]

    assert env.loop.run(run()) == [200, 403, 0]
    # the upstream connection left from the client's address (original_src), not the node's
    status, body = env.loop.run(_request("GET", "/out/who", source=EGRESS_CLIENT, port=8081))
    assert (status, body) == (
        200,
        f"GET /out/who from upstream (client {EGRESS_CLIENT})\n".encode(),
    )


def test_policy_change_applies_to_an_open_connection(env: Env) -> None:
    reader_writer: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def open_conn() -> int:
        conn = await asyncio.open_connection(SERVER, 8080, local_addr=(ALLOWED, 0))
        reader_writer.append(conn)
        return (await _request("GET", "/private/a", conn=conn))[0]

    async def again() -> int:
        return (await _request("GET", "/private/a", conn=reader_writer[0]))[0]

    assert env.loop.run(open_conn()) == 403
    rules = (*(BASE_PEERS[0].rules or ()), HTTPRule(path="/private/.*"))
    wider = (cfg.PeerHTTPRules((f"{ALLOWED}/32",), rules),)
    try:
        env.apply(ingress(wider), EGRESS)
        assert env.loop.run(again()) == 200  # the same connection, the new policy
        env.apply(ingress(BASE_PEERS), EGRESS)
        assert env.loop.run(again()) == 403
        # a listener change (another endpoint's chain added: LDS) keeps the connection too
        more = ingress(BASE_PEERS)
        other = cfg.HTTPChain("ep8-ingress-8080", "ingress", ("10.199.0.9",), 8080, BASE_PEERS)
        env.apply(
            cfg.ProxyListener(more.name, more.port, more.direction, (*more.chains, other)), EGRESS
        )
        assert env.loop.run(again()) == 403
        assert env.loop.run(_request("GET", "/public/b", conn=reader_writer[0]))[0] == 200
    finally:
        env.apply(ingress(BASE_PEERS), EGRESS)
        reader_writer[0][1].close()


def test_access_log_records(env: Env) -> None:
    async def run() -> list[HTTPAccess]:
        await _request("GET", "/public/logged?q=1")
        await _request("GET", "/private/logged")
        deadline = time.monotonic() + 5
        while len([r for r in env.records if "/logged" in r.url]) < 2:
            assert time.monotonic() < deadline, env.records
            await asyncio.sleep(0.02)
        return [r for r in env.records if "/logged" in r.url]

    denied, allowed = sorted(env.loop.run(run()), key=lambda r: r.url)  # /private < /public
    assert allowed.url == f"http://{SERVER}:8080/public/logged?q=1"
    assert (allowed.method, allowed.protocol, allowed.code) == ("GET", "HTTP/1.1", 200)
    assert (allowed.verdict, allowed.endpoint_id, allowed.direction) == ("FORWARDED", 7, "ingress")
    assert str(allowed.source[0]) == ALLOWED and allowed.destination == (IPv4Address(SERVER), 8080)
    assert allowed.latency_ns > 0 and allowed.time_ns > 0
    assert (denied.code, denied.verdict) == (403, "DROPPED")
    assert denied.details.startswith("rbac_access_denied")
    assert not env.writer.paths.access_log.is_file()  # a pipe: nothing grows on disk


def test_killed_envoy_is_restarted(env: Env) -> None:
    before = env.envoy.pid
    assert before is not None
    os.kill(before, signal.SIGKILL)

    async def restarted() -> int:
        deadline = time.monotonic() + 15
        while env.envoy.pid == before or not env.envoy.alive():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await env.envoy.wait_ready()
        return (await _request("GET", "/public/again"))[0]

    assert env.loop.run(restarted()) == 200
    assert env.envoy.restarts >= 1


def test_a_connection_no_chain_matches_is_closed(env: Env) -> None:
    # straight to the proxy port: its original destination is no chain's, nothing answers
    async def direct() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", INGRESS_PORT)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            return await reader.read()
        except ConnectionResetError:
            return b""
        finally:
            writer.close()

    assert env.loop.run(direct()) == b""


STAR_WARS_L7 = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule1, namespace: default}
spec:
  description: "L7 policy to restrict access to specific HTTP call"
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
  - fromEndpoints:
    - matchLabels: {org: empire}
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http:
        - method: "POST"
          path: "/v1/request-landing"
"""


async def star_wars_requests() -> tuple[tuple[int, bytes], tuple[int, bytes], int]:
    return (
        await _request("POST", "/v1/request-landing", source=ALLOWED),
        await _request("PUT", "/v1/exhaust-port", source=ALLOWED),
        await _status_or_closed("POST", "/v1/request-landing", source=OTHER),
    )


def test_ciliums_l7_example_from_the_policy_engine(env: Env) -> None:
    # Cilium's example (port 80 there): the policy computed for the deathstar, its L7 entries
    # grouped into the node's listeners with the peers' addresses from the ipcache's view
    deathstar = pod(1000, "default", org="empire", **{"class": "deathstar"})
    tiefighter = pod(1001, "default", org="empire", **{"class": "tiefighter"})
    xwing = pod(1002, "default", org="alliance", **{"class": "xwing"})
    lab = Lab(deathstar, tiefighter, xwing)
    lab.apply(STAR_WARS_L7)
    pol = lab.policy(deathstar)
    ipcache = [(f"{SERVER}/32", 1000), (f"{ALLOWED}/32", 1001), (f"{OTHER}/32", 1002)]
    views = [EndpointView(7, (SERVER,), pol)]
    listeners = http_listeners(views, PORTS, identity_prefixes(ipcache))
    assert [(lst.name, [c.name for c in lst.chains]) for lst in listeners] == [
        ("cilium-http-ingress", ["ep7-ingress-8080"])
    ]
    [chain] = listeners[0].chains
    landing = (HTTPRule("POST", "/v1/request-landing"),)
    assert chain.peers == (cfg.PeerHTTPRules((f"{SERVER}/32", f"{ALLOWED}/32"), landing),)
    grpc_chain = ingress(BASE_PEERS).chains[1]
    try:
        lst = listeners[0]
        env.apply(cfg.ProxyListener(lst.name, lst.port, lst.direction, (chain, grpc_chain)), EGRESS)
        got = env.loop.run(star_wars_requests())
    finally:
        env.apply(ingress(BASE_PEERS), EGRESS)
    assert got[0] == (200, b"POST /v1/request-landing from upstream\n")
    assert got[1] == (403, b"Access denied\r\n")
    # the xwing: no rule of its identity on this port (the datapath drops it at L3/L4 before
    # the proxy; were it to reach Envoy, RBAC denies it too)
    assert got[2] == 403


def test_node_envoy_runs_once_an_http_rule_applies(
    env: Env, tmp_path_factory: pytest.TempPathFactory
) -> None:
    lab = Lab(
        pod(1000, "default", org="empire", **{"class": "deathstar"}),
        pod(1001, "default", org="empire", **{"class": "tiefighter"}),
    )
    lab.apply(STAR_WARS_L7.replace('"8080"', '"8082"'))
    pol = lab.policy(pod(1000, "default", org="empire", **{"class": "deathstar"}))
    views: list[EndpointView] = []
    ipcache = [(f"{ALLOWED}/32", 1001)]
    ports = ProxyPorts({HTTP_INGRESS: NODE_INGRESS_PORT, HTTP_EGRESS: NODE_INGRESS_PORT + 1})
    dumps: list[int] = []

    def read_ipcache() -> list[tuple[str, int]]:
        dumps.append(1)
        return ipcache

    node = NodeEnvoy("f-node", tmp_path_factory.mktemp("node-envoy"), ports, lambda: views,
                     read_ipcache)  # fmt: skip

    async def until(check: Callable[[], Awaitable[bool]]) -> None:
        deadline = time.monotonic() + 10
        while not await check():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

    async def serves(status: int) -> bool:
        got = await _status_or_closed("POST", "/v1/request-landing", port=8082)
        return got == status

    async def run() -> None:
        await node.start()
        assert node.process.pid is None  # no HTTP rule on this node: no Envoy
        assert dumps == []  # nor an ipcache dump
        views.append(EndpointView(7, (SERVER,), pol))
        node.changed()
        await until(lambda: serves(200))
        assert await _request("PUT", "/v1/exhaust-port", port=8082) == (403, b"Access denied\r\n")
        ipcache.clear()  # the tiefighter's address is gone from the ipcache
        node.changed()
        await until(lambda: serves(403))
        await node.stop()
        assert node.process.pid is None

    try:
        env.loop.run(run())
    finally:
        env.loop.run(node.stop())


async def _log_writes(envoy: EnvoyProcess) -> dict[str, str]:
    """Envoy's counters of its file writes (the access log's): completed, failed."""
    stats = await envoy.admin("/stats?filter=^filesystem\\.write_(completed|failed)$")
    return dict(line.split(": ", 1) for line in stats.splitlines() if ": " in line)


def _deathstar_policy() -> EndpointPolicy:
    """Cilium's example on port 8082 (NODE_INGRESS_PORT's): the deathstar's policy."""
    deathstar = pod(1000, "default", org="empire", **{"class": "deathstar"})
    lab = Lab(deathstar, pod(1001, "default", org="empire", **{"class": "tiefighter"}))
    lab.apply(STAR_WARS_L7.replace('"8080"', '"8082"'))
    return lab.policy(deathstar)


def test_detached_envoy_is_adopted_with_its_connections(
    env: Env, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The agent's exit (``NodeEnvoy.detach``) leaves Envoy running; the next agent's
    ``NodeEnvoy`` adopts it (same pid, no file rewritten): a keep-alive connection opened before
    goes on, decided as before, and the access log of a request made while no agent read the
    pipe reaches the next agent (Envoy holds a reader: its write waited, nothing was lost)."""
    pol = _deathstar_policy()
    views = [EndpointView(7, (SERVER,), pol)]
    ports = ProxyPorts({HTTP_INGRESS: NODE_INGRESS_PORT, HTTP_EGRESS: NODE_INGRESS_PORT + 1})
    root = tmp_path_factory.mktemp("adopted-envoy")
    seen: list[HTTPAccess] = []

    def node() -> NodeEnvoy:
        return NodeEnvoy("f-node", root, ports, lambda: views,
                         lambda: [(f"{ALLOWED}/32", 1001)],
                         on_access=lambda b: seen.extend(b.records()))  # fmt: skip

    first, second = node(), node()

    async def run() -> None:
        await first.start()
        assert await first.process.admin("/ready")
        pid = first.process.pid
        conn = await asyncio.open_connection(SERVER, 8082, local_addr=(ALLOWED, 0))
        assert (await _request("POST", "/v1/request-landing", port=8082, conn=conn))[0] == 200
        await first.detach()
        assert first.process.pid is None and processes.alive_recorded(first.paths.pidfile)
        lds = first.paths.lds.stat().st_mtime_ns
        # no agent reads the pipe now: Envoy's access log waits for the next one
        written = await _log_writes(first.process)
        assert (await _request("PUT", "/v1/exhaust-port", port=8082, conn=conn))[0] == 403
        deadline = time.monotonic() + 5
        while await _log_writes(first.process) == written:  # flushed to the pipe (100 ms)
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await second.start()
        assert second.process.pid == pid and second.process.adopted
        assert second.paths.lds.stat().st_mtime_ns == lds  # unchanged: not rewritten
        assert (await _request("POST", "/v1/request-landing", port=8082, conn=conn))[0] == 200
        conn[1].close()
        deadline = time.monotonic() + 5
        while [(a.method, a.code) for a in seen] != [("POST", 200), ("PUT", 403), ("POST", 200)]:
            assert time.monotonic() < deadline, seen
            await asyncio.sleep(0.05)
        await second.stop()
        assert not processes.alive_recorded(second.paths.pidfile)

    try:
        env.loop.run(run())
    finally:
        env.loop.run(first.stop())
        env.loop.run(second.stop())


def test_listeners_bind_both_families(env: Env) -> None:
    listening = env.loop.run(env.envoy.admin("/listeners"))
    assert f"0.0.0.0:{INGRESS_PORT}" in listening and f"[::]:{INGRESS_PORT}" in listening, listening


def test_malformed_http_is_answered_and_envoy_lives_on(env: Env) -> None:
    async def raw(payload: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(SERVER, 8080, local_addr=(ALLOWED, 0))
        writer.write(payload)
        try:
            return await asyncio.wait_for(reader.read(200), 5)
        except ConnectionResetError:
            return b""
        finally:
            writer.close()

    pid = env.envoy.pid
    garbage = env.loop.run(raw(b"\x16\x03\x01 not http at all\r\n\r\n"))
    assert garbage.startswith(b"HTTP/1.1 400 Bad Request"), garbage
    huge = env.loop.run(
        raw(b"GET /public HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    )
    assert huge.startswith(b"HTTP/1.1 431"), huge  # over Envoy's 60 KiB of request headers
    assert env.loop.run(_request("GET", "/public/after"))[0] == 200
    assert env.envoy.pid == pid and env.envoy.alive()


def test_the_envoy_of_a_dead_agent_is_adopted_another_process_replaced(tmp_path: Path) -> None:
    paths = EnvoyPaths(tmp_path / "envoy")
    left = EnvoyProcess("f-dead", paths)
    asyncio.run(left.start())  # the loop ends: its supervisor is gone, the process is not
    assert left.alive()

    async def next_agent() -> tuple[int | None, bool]:
        envoy = EnvoyProcess("f-dead", paths)
        await envoy.start()
        try:
            return envoy.pid, envoy.adopted
        finally:
            await envoy.stop()

    assert asyncio.run(next_agent()) == (left.pid, True)  # the same Envoy, taken over
    assert not left.alive() and not paths.pidfile.exists()  # stopped by the next one
    # a pid file naming a process that is no Envoy of this node: stopped, a new Envoy started
    other = subprocess.Popen(["sleep", "60"])
    try:
        started = processes.start_time(other.pid)
        paths.pidfile.write_text(json.dumps({"pid": other.pid, "start_time": started}))
        pid, adopted = asyncio.run(next_agent())
        assert pid not in (None, other.pid) and not adopted
        assert not processes.alive(other.pid, started)  # stopped (and reaped: our child)
    finally:
        other.kill()
        other.wait()


def test_an_envoy_that_cannot_start_leaves_nothing_and_the_agent_runs_on(tmp_path: Path) -> None:
    broken = EnvoyProcess("f-bad", EnvoyPaths(tmp_path / "a"), binary=Path("/bin/false"))
    with pytest.raises(EnvoyError, match=r"envoy \(pid \d+\) exited"):
        asyncio.run(broken.start())
    assert broken.pid is None and not broken.paths.pidfile.exists()

    deathstar = pod(1000, "default", org="empire", **{"class": "deathstar"})
    lab = Lab(deathstar, pod(1001, "default", org="empire", **{"class": "tiefighter"}))
    lab.apply(STAR_WARS_L7)
    views = [EndpointView(7, (SERVER,), lab.policy(deathstar))]
    node = NodeEnvoy("f-bad", tmp_path / "b", PORTS, lambda: views, list)
    node.process = EnvoyProcess("f-bad", node.paths, binary=Path("/bin/false"))

    async def run() -> int | None:
        await node.start()  # logged, not raised: redirected traffic is dropped meanwhile
        try:
            return node.process.pid
        finally:
            await node.stop()

    assert asyncio.run(run()) is None


def test_websocket_upgrade_passes_when_the_request_is_allowed(env: Env) -> None:
    async def run() -> tuple[str, int]:
        connector = aiohttp.TCPConnector(local_addr=(ALLOWED, 0))
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.ws_connect(f"http://{SERVER}:8080/public/ws") as ws:
                await ws.send_str("hello")
                answer = (await ws.receive(5)).data
            try:
                await session.ws_connect(f"http://{SERVER}:8080/private/ws")
                denied = 101
            except aiohttp.WSServerHandshakeError as err:
                denied = err.status
        return answer, denied

    assert env.loop.run(run()) == ("echo hello", 403)
