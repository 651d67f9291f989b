"""Cluster health as ``cilium-health`` does it: is every node reachable from this one, and how
fast?

A node that cannot reach another shows it nowhere else until a pod's connection hangs. So each
agent, as upstream's, answers probes and probes every node the node manager knows (its
CiliumNodes, this node's own included, as upstream's "localhost" entry) on two paths:

* **host**: the node's IPs (``InternalIP``). A **responder** (HTTP on the health port, 4240,
  ``GET /hello`` → 200) listens on every address of the node's netns;
* **endpoint**: the node's **health endpoint** (``agent/healthendpoint.py``: a pod-like endpoint
  with identity ``reserved:health`` and addresses of the pod CIDR, published as the CiliumNode's
  ``spec.health``); the same responder listens inside its netns (:func:`serve_in_netns`: sockets
  made in a thread that entered it, served by this loop), so reaching it proves the pod path
  too — overlay or native routes, the remote node's ipcache entry for it, its ``bpf_lxc``.

Each address gets an ICMP echo (the stack of the node, or of the health netns, answers: it
proves the path) and ``GET /hello`` on the health port (the agent answers: it also proves the
agent runs), every interval (upstream's 60 s) and when a node joins or leaves. Each result is
kept with its round-trip time and when it was probed; a node is reachable when every address of
both paths answered both probes (upstream's count; a node that publishes no health endpoint is
judged on its host path); ``ciliary status`` reports "Cluster health: N/M reachable" from them.

The bookkeeping (:class:`HealthBook`) is sans-IO: targets in, results in, a
:class:`~ciliary.core.models.ClusterHealth` out, so it is tested without sockets. A node that
leaves the cluster leaves the report with its next round; a node's results are always its last
probe's (no failure threshold: upstream's ``--health-check-icmp-failure-threshold`` is not
implemented). A round pings every address at once, then probes them all over HTTP at once, each
bounded by the probe timeout, so a dead node costs a round at most twice that long. Upstream's
responder is a process of its own in the health netns, so it answers while the agent is down;
here it is the agent's socket, so a stopped agent's endpoint answers ICMP but not HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Literal

from ciliary.core.defaults import CLUSTER_HEALTH_PORT
from ciliary.core.models import ClusterHealth, ConnectivityStatus, NodeHealth, PathStatus
from ciliary.datapath.linux import netns

log = logging.getLogger(__name__)

HEALTH_PORT = CLUSTER_HEALTH_PORT
"""Upstream's ``--cluster-health-port`` default."""
DEFAULT_PROBE_INTERVAL_S = 60.0
"""Upstream's probe interval (cilium-health's ``--interval`` default)."""
HELLO_PATH = "/hello"
MAX_PROBE_TIMEOUT_S = 5.0
RETRY_AFTER_FAILURE_S = 5.0
"""A round that found a path down is followed by the next one this soon (or at the interval,
when shorter): a node that joined before its agent answered, or a blip, does not show
unreachable for a whole minute."""
"""A probe waits at most this long (less when the interval is shorter)."""

ProbeKind = Literal["icmp", "http"]


@dataclass(frozen=True)
class HealthTarget:
    """A node to probe: its name, its node IPs (IPv4 first), whether it is this node, and its
    health endpoint's addresses (IPv4 first; none when it publishes no health endpoint)."""

    name: str
    addresses: tuple[str, ...]
    local: bool = False
    endpoint_addresses: tuple[str, ...] = ()

    @property
    def all_addresses(self) -> tuple[str, ...]:
        return (*self.addresses, *self.endpoint_addresses)


class HealthBook:
    """The prober's results, per node, address and probe kind. Targets replace the set of nodes
    (a node or address no longer known loses its results); a result for an unknown path is
    dropped (a round that raced a node's removal)."""

    def __init__(self, interval_s: float, port: int) -> None:
        self.interval_s = interval_s
        self.port = port
        self._targets: dict[str, HealthTarget] = {}
        self._results: dict[tuple[str, str, ProbeKind], ConnectivityStatus] = {}
        self.last_probe: float | None = None

    def set_targets(self, targets: Iterable[HealthTarget]) -> None:
        self._targets = {t.name: t for t in targets}
        wanted = {(t.name, a) for t in self._targets.values() for a in t.all_addresses}
        self._results = {k: v for k, v in self._results.items() if (k[0], k[1]) in wanted}

    def record(self, node: str, address: str, kind: ProbeKind, result: ConnectivityStatus) -> None:
        target = self._targets.get(node)
        if target is not None and address in target.all_addresses:
            self._results[(node, address, kind)] = result

    def round_done(self, at: float) -> None:
        self.last_probe = at

    def any_failed(self) -> bool:
        """Did the last results of some path fail?"""
        return any(not r.ok for r in self._results.values())

    def _path(self, node: str, address: str) -> PathStatus:
        return PathStatus(
            ip=address,
            icmp=self._results.get((node, address, "icmp")),
            http=self._results.get((node, address, "http")),
        )

    def report(self) -> ClusterHealth:
        nodes = [
            NodeHealth(
                name=t.name,
                local=t.local,
                host=[self._path(t.name, a) for a in t.addresses],
                endpoint=[self._path(t.name, a) for a in t.endpoint_addresses],
            )
            for t in sorted(self._targets.values(), key=lambda t: (not t.local, t.name))
        ]
        return ClusterHealth(
            probe_interval_s=self.interval_s,
            port=self.port,
            last_probe=self.last_probe,
            nodes=nodes,
        )


# ---- ICMP echo ------------------------------------------------------------------------------

ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 8, 0
ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY = 128, 129
_PAYLOAD = b"ciliary-health"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def echo_request(ident: int, seq: int, *, v6: bool) -> bytes:
    """An ICMP (v4) or ICMPv6 echo request; the kernel fills ICMPv6's checksum itself."""
    kind = ICMPV6_ECHO_REQUEST if v6 else ICMP_ECHO_REQUEST
    head = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
    if v6:
        return head + _PAYLOAD
    csum = _checksum(head + _PAYLOAD)
    return struct.pack("!BBHHH", kind, 0, csum, ident, seq) + _PAYLOAD


def parse_echo_reply(data: bytes, *, v6: bool) -> tuple[int, int] | None:
    """(identifier, sequence) of an echo reply read from a raw socket (IPv4's carries the IP
    header, IPv6's does not); None for anything else."""
    if not v6:
        if len(data) < 20:
            return None
        data = data[(data[0] & 0x0F) * 4 :]
    if len(data) < 8:
        return None
    kind, _code, _csum, ident, seq = struct.unpack("!BBHHH", data[:8])
    if kind != (ICMPV6_ECHO_REPLY if v6 else ICMP_ECHO_REPLY):
        return None
    return ident, seq


class Pinger:
    """Echo requests over one raw socket per family per round; replies matched by identifier
    (this prober's) and sequence number (one per address per round)."""

    def __init__(self) -> None:
        self._ident = (os.getpid() ^ id(self)) & 0xFFFF
        self._seq = 0

    async def ping(self, addresses: list[str], timeout: float) -> dict[str, ConnectivityStatus]:
        """Both families at once: a dead IPv4 path does not delay (or inflate) IPv6's."""
        families = [
            [a for a in addresses if (ip_address(a).version == 6) == v6] for v6 in (False, True)
        ]
        results = await asyncio.gather(
            *(
                self._ping_family(f, timeout, v6=v6)
                for v6, f in zip((False, True), families, strict=True)
                if f
            )
        )
        return {addr: st for part in results for addr, st in part.items()}

    async def _ping_family(
        self, addresses: list[str], timeout: float, *, v6: bool
    ) -> dict[str, ConnectivityStatus]:
        loop = asyncio.get_running_loop()
        fam, proto = (
            (socket.AF_INET6, socket.IPPROTO_ICMPV6)
            if v6
            else (socket.AF_INET, socket.IPPROTO_ICMP)
        )
        out: dict[str, ConnectivityStatus] = {}
        sent: dict[int, tuple[str, float]] = {}
        with socket.socket(fam, socket.SOCK_RAW, proto) as sock:
            sock.setblocking(False)
            for addr in addresses:
                self._seq = (self._seq + 1) & 0xFFFF
                try:
                    sock.sendto(echo_request(self._ident, self._seq, v6=v6), (addr, 0))
                except OSError as err:  # no route, network down: answered at once
                    out[addr] = _failed(f"send: {err.strerror or err}")
                    continue
                sent[self._seq] = (addr, time.monotonic())
            deadline = time.monotonic() + timeout
            while sent and (left := deadline - time.monotonic()) > 0:
                try:
                    data = await asyncio.wait_for(loop.sock_recv(sock, 2048), left)
                except TimeoutError:
                    break
                reply = parse_echo_reply(data, v6=v6)
                if reply is None or reply[0] != self._ident or reply[1] not in sent:
                    continue  # another process's echo, or not a reply
                addr, t0 = sent.pop(reply[1])
                out[addr] = ConnectivityStatus(
                    ok=True, latency_s=time.monotonic() - t0, last_probed=time.time()
                )
        for addr, _t0 in sent.values():
            out[addr] = _failed(f"no echo reply within {timeout:g}s")
        return out


def _failed(why: str) -> ConnectivityStatus:
    return ConnectivityStatus(ok=False, status=why, last_probed=time.time())


# ---- HTTP -----------------------------------------------------------------------------------


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


async def http_probe(address: str, port: int, timeout: float) -> ConnectivityStatus:
    """``GET http://<address>:<port>/hello``: reachable when the answer is 200."""
    url = f"http://{_hostport(address, port)}{HELLO_PATH}"
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(address, port)
            try:
                request = (
                    f"GET {HELLO_PATH} HTTP/1.1\r\nHost: {_hostport(address, port)}\r\n"
                    "Connection: close\r\n\r\n"
                )
                writer.write(request.encode())
                await writer.drain()
                status_line = await reader.readline()
            finally:
                writer.close()
    except TimeoutError:
        return _failed(f'Get "{url}": no answer within {timeout:g}s')
    except OSError as err:  # asyncio's text names the address again: the errno's is enough
        return _failed(f'Get "{url}": {os.strerror(err.errno) if err.errno else err}')
    latency = time.monotonic() - t0
    parts = status_line.decode("latin-1").split()
    if len(parts) < 2 or parts[1] != "200":
        return _failed(f'Get "{url}": answered {status_line.decode("latin-1").strip()!r}')
    return ConnectivityStatus(ok=True, latency_s=latency, last_probed=time.time())


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One request of the responder: ``GET /hello`` → 200, anything else 404/405."""
    try:
        async with asyncio.timeout(5.0):
            head = await reader.readuntil(b"\r\n\r\n")
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3:
            code, reason = 400, "Bad Request"
        elif parts[1] != HELLO_PATH:
            code, reason = 404, "Not Found"
        elif parts[0] != "GET":
            code, reason = 405, "Method Not Allowed"
        else:
            code, reason = 200, "OK"
        body = b"ciliary-health\n" if code == 200 else f"{reason}\n".encode()
        writer.write(
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
        pass  # a client that sent no request: nothing to answer
    finally:
        writer.close()


def _listen_all(port: int) -> list[socket.socket]:
    """Listening sockets on every address of both families of the calling thread's netns."""
    out: list[socket.socket] = []
    try:
        for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            sock = socket.socket(family, socket.SOCK_STREAM)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.setblocking(False)
    except BaseException:
        for sock in out:
            sock.close()
        raise
    return out


async def serve_in_netns(netns_path: str, port: int) -> list[asyncio.Server]:
    """The ``/hello`` responder on ``port`` inside another network namespace (the health
    endpoint's), served by this event loop: a socket belongs to the netns of the thread that
    made it, so they are made in a thread of their own that entered it
    (:func:`~ciliary.datapath.linux.netns.call_in`); no process runs there."""
    socks = await asyncio.to_thread(netns.call_in, netns_path, lambda: _listen_all(port))
    servers: list[asyncio.Server] = []
    try:
        for sock in socks:
            servers.append(await asyncio.start_server(_answer, sock=sock))
    except BaseException:
        for server in servers:
            server.close()
        for sock in socks[len(servers) :]:
            sock.close()
        raise
    return servers


# ---- the component --------------------------------------------------------------------------


class ClusterHealthChecker:
    """Responder + prober of one node. ``targets`` is asked once per round (the node manager's
    nodes at that moment), the first round once ``ready`` returned (its informers synced);
    results go to the :class:`HealthBook`."""

    def __init__(
        self,
        targets: Callable[[], list[HealthTarget]],
        *,
        ready: Callable[[], Awaitable[None]] | None = None,
        interval_s: float = DEFAULT_PROBE_INTERVAL_S,
        port: int = HEALTH_PORT,
        listen_host: str | None = None,
        retry_s: float = RETRY_AFTER_FAILURE_S,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"cluster health interval must be > 0 s, got {interval_s}")
        self._targets = targets
        self._ready = ready
        self.port = port
        self._listen_host = listen_host
        """None: every address of the node's netns (tests pass loopback)."""
        self.interval_s = interval_s
        self.retry_s = min(retry_s, interval_s)
        """The wait after a round with a failed path."""
        self.timeout_s = min(MAX_PROBE_TIMEOUT_S, interval_s)
        self.book = HealthBook(interval_s, port)
        self._pinger = Pinger()
        self._server: asyncio.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        try:  # every address of both families of the node's netns, as upstream's responder
            self._server = await asyncio.start_server(
                _answer, host=self._listen_host, port=self.port
            )
        except OSError as err:  # the other nodes will report this one unreachable over HTTP
            log.error("cluster health: cannot listen on port %d: %s", self.port, err)
        self._task = asyncio.create_task(self._run(), name="cluster-health-prober")

    def probe_soon(self) -> None:
        """Start the next round now (e.g. the node set changed) instead of at the interval."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def report(self) -> ClusterHealth:
        return self.book.report()

    async def _run(self) -> None:
        if self._ready is not None:
            await self._ready()
        while True:
            self._wake.clear()
            try:
                await self.probe_once()
            except Exception:  # a round's failure is logged; the next round tries again
                log.exception("cluster health: probe round failed")
            wait = self.retry_s if self.book.any_failed() else self.interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def probe_once(self) -> None:
        """One round: every address of every target, ICMP and HTTP, concurrently."""
        targets = self._targets()
        self.book.set_targets(targets)
        paths = [(t.name, a) for t in targets for a in t.all_addresses]
        addresses = sorted({a for _n, a in paths})
        # ICMP first, then HTTP: connection set-ups on the same loop would delay reading the
        # echo replies and inflate their round-trip times (lab, IPv4: 5-6 ms, not 0.2-0.4 ms)
        pings = await self._pinger.ping(addresses, self.timeout_s)
        https = await asyncio.gather(*(http_probe(a, self.port, self.timeout_s) for a in addresses))
        by_address = dict(zip(addresses, https, strict=True))
        for name, addr in paths:
            if addr in pings:
                self.book.record(name, addr, "icmp", pings[addr])
            self.book.record(name, addr, "http", by_address[addr])
        self.book.round_done(time.time())


__all__ = [
    "DEFAULT_PROBE_INTERVAL_S",
    "HEALTH_PORT",
    "ClusterHealthChecker",
    "HealthBook",
    "HealthTarget",
    "Pinger",
    "echo_request",
    "http_probe",
    "parse_echo_reply",
    "serve_in_netns",
]
