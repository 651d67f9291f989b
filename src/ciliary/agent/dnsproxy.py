"""The agent's DNS proxy: pods' DNS queries, allowed or refused by ``rules: dns``, and the answers
that feed ``toFQDNs`` before the pod sees them.

Why in the agent (as Cilium's ``pkg/fqdn/dnsproxy``): the IPs of an answer must be allowed in the
datapath *before* the pod can use them, or the pod's first connection to a fresh IP is dropped.
Only whoever holds the answer back can promise that: the proxy takes the query, asks the
original server itself, records the answer in the DNS cache (:meth:`PolicyManager.dns_changed`:
CIDR identities, ipcache, endpoints' policy maps regenerated) and releases the answer to the pod
only once that is done, or after ``--tofqdns-proxy-response-max-delay`` (upstream's 100 ms), when
it logs that the pod may race the maps.

How queries arrive (``docs/architecture.md``, "L7 proxy redirect"): the datapath assigns a pod's
DNS packets, unchanged, to the proxy's listening sockets in the node netns (``bpf_sk_assign``;
iptables TPROXY does the same, the integration test uses it). The sockets are ``IP_TRANSPARENT``
on ``0.0.0.0``/``[::]`` at the proxy port (:mod:`ciliary.core.proxyports`); the original
destination of a UDP datagram is its ``IP_ORIGDSTADDR`` ancillary data, of a TCP connection the
accepted socket's local address. The answer goes back to the pod from that original address
(a transparent socket bound to it), so the pod's resolver sees its server answer.

Forwarding (upstream's transparent mode, ``--dnsproxy-enable-transparent-mode``, default true):
the query leaves from the pod's own address and port (a transparent socket bound to them), so
the server and the policy on its side see the pod, and the server's reply comes back on the
pod's connection, which the datapath assigns to that socket. Queries of one pod socket to one
server share one upstream socket (as upstream's shared clients since 1.15: glibc sends A and
AAAA together from one port), answers matched by message ID (rewritten per query, so equal IDs
never collide). Without transparent mode the query leaves from the node's address.

Decisions are sans-IO (:func:`decide` on the policy engine's :func:`~ciliary.policy.trace.
dns_verdict`, :func:`answer_lookups`, :func:`reject`): a query whose source is no endpoint of
this node, whose original destination is the proxy itself (not redirected), that the
endpoint's rules do not allow, or that is malformed, never leaves the node; the pod gets
REFUSED (``--tofqdns-dns-reject-response-code refused|nameError``: NXDOMAIN), FORMERR for what
cannot be parsed (nothing for what has no header; a TCP message cut short closes its
connection), SERVFAIL when the server cannot be reached in ``FORWARD_TIMEOUT_S`` or answers
garbage. Every query and answer is an
:class:`~ciliary.core.l7record.L7Record` to ``on_event`` (the agent publishes it to Hubble: an L7
DNS flow, ``dns-request`` FORWARDED or DROPPED, ``dns-response`` with the answer or ERROR,
``observation_source`` "proxy"); why a query was refused is logged (debug).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Final, Literal, Protocol, TypeAlias

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdatatype

from ciliary.agent.dnswire import WireQuestion, WireRRset, read_answer, read_query
from ciliary.core.flow import L7FlowType, TrafficDirection, Verdict
from ciliary.core.l7record import DNSRecord, L7Endpoint, L7Record
from ciliary.policy.fqdn import DNSLookup
from ciliary.policy.mapstate import PROTO_TCP, PROTO_UDP, RuleRef
from ciliary.policy.resolve import EndpointPolicy
from ciliary.policy.trace import dns_verdict

__all__ = [
    "DNSProxy",
    "Decision",
    "EndpointDNSRules",
    "ProxyPolicy",
    "RejectCode",
    "answer_lookups",
    "reject",
]

log = logging.getLogger(__name__)

IPAddress: TypeAlias = IPv4Address | IPv6Address
Address: TypeAlias = tuple[str, int]
RejectCode: TypeAlias = Literal["refused", "nameError"]
Forward: TypeAlias = Callable[[bytes, Address, Address], Awaitable[bytes]]
"""Asks the server (pod address, original destination) a query; its answer."""
Reply: TypeAlias = tuple[bytes | None, Callable[[], None]]
"""A query's reply (None: none is sent), and what to do once it is sent (its event)."""
REJECT_RCODES: Final[dict[str, dns.rcode.Rcode]] = {
    "refused": dns.rcode.REFUSED,
    "nameError": dns.rcode.NXDOMAIN,
}
"""``--tofqdns-dns-reject-response-code`` values (upstream's) → the rcode a denied query gets."""

FORWARD_TIMEOUT_S: Final = 10.0  # upstream's ProxyForwardTimeout
DEFAULT_RESPONSE_MAX_DELAY_S: Final = 0.1  # upstream's --tofqdns-proxy-response-max-delay
MAX_MESSAGE: Final = 65535
TCP_IDLE_TIMEOUT_S: Final = 10.0

# <linux/in.h>, <linux/in6.h>: not all in Python's socket module
IP_TRANSPARENT: Final = 19
IP_RECVORIGDSTADDR: Final = 20  # the ancillary message type is the same number (IP_ORIGDSTADDR)
IPV6_RECVORIGDSTADDR: Final = 74
IPV6_TRANSPARENT: Final = 75


# ---- decisions (sans-IO) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """What the agent says of one query: ``allowed``; the querying ``endpoint`` (None: the
    source is no endpoint here); ``reason`` and the rules behind it (why, for the event)."""

    allowed: bool
    reason: str
    endpoint: int | None = None
    derived_from: frozenset[RuleRef] = frozenset()

    @property
    def rules(self) -> tuple[str, ...]:
        """The rules behind the decision, named (sorted): only when asked, not per query."""
        return tuple(str(r) for r in sorted(self.derived_from))


class ProxyPolicy(Protocol):
    """The agent's side of the proxy: the rules, and the cache the answers go to."""

    def decide(
        self, source: IPAddress, server: IPAddress, protocol: int, port: int, name: str
    ) -> Decision:
        """Whether the endpoint at ``source`` may ask ``name`` from ``server``:``port``."""
        ...

    def answered(self, lookups: list[DNSLookup]) -> Awaitable[None] | None:
        """Records the answers; done once the datapath allows their IPs as the rules say
        (None: done already, nothing the datapath allows changed)."""
        ...


@dataclass(frozen=True)
class EndpointDNSRules:
    """:class:`ProxyPolicy` on the agent's endpoints: the endpoint at the query's source
    (``endpoint_at``; none: refused), its realized policy (``policy_of``) decided on with the
    server's identity as the datapath resolves it (``identity_of``); answers go to ``update``
    (the DNS cache, then the endpoints' regeneration when the rules' IPs changed)."""

    endpoint_at: Callable[[IPAddress], int | None]
    policy_of: Callable[[int], EndpointPolicy | None]
    identity_of: Callable[[IPAddress], int]
    update: Callable[[list[DNSLookup]], Awaitable[None] | None]

    def decide(
        self, source: IPAddress, server: IPAddress, protocol: int, port: int, name: str
    ) -> Decision:
        endpoint = self.endpoint_at(source)
        if endpoint is None:
            return Decision(False, f"{source} is no endpoint of this node")
        verdict = dns_verdict(
            self.policy_of(endpoint), self.identity_of(server), protocol, port, name
        )
        return Decision(verdict.allowed, verdict.reason, endpoint, verdict.rules)

    def answered(self, lookups: list[DNSLookup]) -> Awaitable[None] | None:
        return self.update(lookups)


_address: Final = functools.lru_cache(maxsize=4096)(ip_address)
"""A pod's and its servers' addresses recur in every query: parsed once (immutable values)."""


def _ips(source: Address, dest: Address) -> tuple[IPAddress, IPAddress] | None:
    """The addresses of a query's source and original destination (None: one is no address)."""
    try:
        return _address(source[0]), _address(dest[0])
    except ValueError:
        return None


def _nothing() -> None:
    """What is left to do after a reply that has no event to follow it."""


class MalformedQueryError(Exception):
    """A query that cannot be parsed; ``reply`` is the FORMERR to send (None: nothing)."""

    def __init__(self, reason: str, reply: bytes | None) -> None:
        super().__init__(reason)
        self.reply = reply


def parse_query(wire: bytes) -> dns.message.Message:
    """The query in ``wire``; :class:`MalformedQueryError` when it is no single-question query."""
    try:
        query = dns.message.from_wire(wire)
    except (dns.exception.DNSException, ValueError) as err:
        raise MalformedQueryError(str(err) or type(err).__name__, _formerr(wire)) from None
    if query.flags & dns.flags.QR:
        raise MalformedQueryError("a response, not a query", None)
    if len(query.question) != 1:
        raise MalformedQueryError(f"{len(query.question)} questions", _formerr(wire))
    return query


def _formerr(wire: bytes) -> bytes | None:
    """A header-only FORMERR (None: too short for a header, or a response: never answered)."""
    if len(wire) < 12 or wire[2] & 0x80:
        return None
    message = dns.message.Message(id=int.from_bytes(wire[:2], "big"))
    message.flags = dns.flags.QR
    message.set_rcode(dns.rcode.FORMERR)
    return message.to_wire()


def reject(query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
    """The answer to a query that is not forwarded: its question, ``rcode``, nothing else."""
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    return response.to_wire()


@dataclass(frozen=True, slots=True)
class Answer:
    """What a response says, for the cache and the event."""

    rcode: int
    ips: tuple[str, ...]
    ttl: int
    cnames: tuple[str, ...]
    rrtypes: tuple[str, ...]
    lookups: tuple[DNSLookup, ...]


def answer_lookups(qname: str, response: dns.message.Message, now: float) -> Answer:
    """The IPs of ``response`` (to the query of ``qname``) as DNS cache entries: every address
    of the answer section under the name asked for (what the pod connects to after asking it)
    and under the owner name of its record (a CNAME's target selects them too), each with the
    lowest TTL of the records on the way, as upstream's ``ExtractMsgDetails``. Nothing for a
    response other than NOERROR."""
    rrsets = tuple(
        WireRRset(
            rrset.name.to_text(), int(rrset.rdtype), rrset.ttl,
            tuple(_rdata_text(rd) for rd in rrset),
        )
        for rrset in response.answer
    )  # fmt: skip
    return _answer(qname, int(response.rcode()), rrsets, now)


def _rdata_text(rd: dns.rdata.Rdata) -> str:
    if rd.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return str(rd.address)  # type: ignore[attr-defined]
    if rd.rdtype == dns.rdatatype.CNAME:
        return str(rd.target.to_text())  # type: ignore[attr-defined]
    return ""


_RRTYPES: Final = {
    int(t): t.name for t in (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.CNAME)
}
"""The answer types of nearly every response, named without the enum's lookups."""


def _answer(qname: str, rcode: int, rrsets: tuple[WireRRset, ...], now: float) -> Answer:
    """:func:`answer_lookups` on the answer section's rrsets, however they were read."""
    ips: dict[str, None] = {}
    owners: dict[str, dict[str, None]] = {}
    cnames: list[str] = []
    rrtypes: list[str] = []
    ttl: int | None = None
    for rrset in rrsets:
        rrtypes.append(_RRTYPES.get(rrset.rdtype) or dns.rdatatype.RdataType.to_text(rrset.rdtype))
        ttl = rrset.ttl if ttl is None else min(ttl, rrset.ttl)
        if rrset.rdtype == dns.rdatatype.CNAME:
            cnames.extend(rrset.values)
        elif rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            of_owner = owners.setdefault(rrset.owner, {})
            for address in rrset.values:
                ips[address] = None
                of_owner[address] = None
    lowest = ttl or 0
    lookups: list[DNSLookup] = []
    if rcode == dns.rcode.NOERROR and ips:
        lookups.append(DNSLookup(qname, tuple(ips), lowest, now))
        asked = qname.lower()
        for name, found in owners.items():
            if name.lower() != asked:  # equal names write the same text but for case
                lookups.append(DNSLookup(name, tuple(found), lowest, now))
    return Answer(rcode, tuple(ips), lowest, tuple(cnames), tuple(rrtypes), tuple(lookups))


def _qtypes(query: dns.message.Message) -> tuple[str, ...]:
    return tuple(dns.rdatatype.to_text(q.rdtype) for q in query.question)


@dataclass(frozen=True, slots=True)
class _Records:
    """The L7 records of one query: the request from the pod to its server (the original
    destination), the response back (upstream's two ``dns-request``/``dns-response`` flows)."""

    pod: L7Endpoint
    server: L7Endpoint
    transport: int
    asked: DNSRecord

    def _record(
        self, kind: L7FlowType, verdict: Verdict, dns_record: DNSRecord, latency_ns: int = 0
    ) -> L7Record:
        request = kind == L7FlowType.REQUEST
        return L7Record(
            time_ns=time.time_ns(), kind=kind, verdict=verdict,
            direction=TrafficDirection.EGRESS, source=self.pod if request else self.server,
            destination=self.server if request else self.pod, transport=self.transport,
            dns=dns_record, latency_ns=latency_ns,
        )  # fmt: skip

    def request(self, verdict: Verdict) -> L7Record:
        return self._record(L7FlowType.REQUEST, verdict, self.asked)

    def response(self, verdict: Verdict, answer: Answer, latency_ns: int) -> L7Record:
        dns_record = DNSRecord(
            self.asked.query, self.asked.qtypes, ips=answer.ips, ttl=answer.ttl,
            cnames=answer.cnames, rcode=answer.rcode, rrtypes=answer.rrtypes,
        )  # fmt: skip
        return self._record(L7FlowType.RESPONSE, verdict, dns_record, latency_ns)


@dataclass(frozen=True, slots=True)
class _Query:
    """A query the proxy forwarded: what its answer needs."""

    wire: bytes
    query: dns.message.Message | None
    """The full parse, when the query took it (else made only for a SERVFAIL)."""
    qname: str
    records: _Records
    started: int
    """``time.monotonic_ns()`` when it arrived (the response's latency)."""


# ---- sockets -------------------------------------------------------------------------------


def _transparent(sock: socket.socket, family: int) -> None:
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def listen_sockets(port: int) -> list[tuple[Literal["UDP", "TCP"], socket.socket]]:
    """The proxy's listeners (UDP and TCP on ``0.0.0.0`` and ``[::]``, v6only, transparent,
    UDP with the original destination as ancillary data), made in the calling thread's netns.
    IPv6 is left out when the netns has none."""
    out: list[tuple[Literal["UDP", "TCP"], socket.socket]] = []
    try:
        for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                try:
                    sock = socket.socket(family, kind)
                except OSError:
                    if family == socket.AF_INET6:
                        break
                    raise
                out.append(("UDP" if kind == socket.SOCK_DGRAM else "TCP", sock))
                sock.setblocking(False)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                _transparent(sock, family)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    if kind == socket.SOCK_DGRAM:
                        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR, 1)
                elif kind == socket.SOCK_DGRAM:
                    sock.setsockopt(socket.IPPROTO_IP, IP_RECVORIGDSTADDR, 1)
                sock.bind((host, port))
                if kind == socket.SOCK_STREAM:
                    sock.listen(128)
    except BaseException:
        for _, sock in out:
            sock.close()
        raise
    return out


def original_destination(ancdata: list[tuple[int, int, bytes]]) -> Address | None:
    """The ``IP_ORIGDSTADDR``/``IPV6_ORIGDSTADDR`` of a datagram (a ``sockaddr_in``/``_in6``)."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_RECVORIGDSTADDR and len(data) >= 8:
            return socket.inet_ntop(socket.AF_INET, data[4:8]), int.from_bytes(data[2:4], "big")
        if level == socket.IPPROTO_IPV6 and kind == IPV6_RECVORIGDSTADDR and len(data) >= 24:
            return socket.inet_ntop(socket.AF_INET6, data[8:24]), int.from_bytes(data[2:4], "big")
    return None


def _bound_socket(kind: int, local: Address | None, remote: Address) -> socket.socket:
    """A non-blocking socket towards ``remote``, bound to ``local`` (transparent: the address
    need not be this netns's) or, with None, to what the kernel picks."""
    family = _family(remote[0])
    sock = socket.socket(family, kind)
    try:
        sock.setblocking(False)
        if local is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            _transparent(sock, family)
            sock.bind(local)
    except BaseException:
        sock.close()
        raise
    return sock


class _TCPUpstream:
    """The upstream TCP connection of one pod connection (pod address/port → server), opened
    at its first forwarded query and used for the next ones, one at a time."""

    def __init__(self, transparent: bool) -> None:
        self._transparent = transparent
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def ask(self, wire: bytes, pod: Address, server: Address) -> bytes:
        if self._streams is None:
            sock = _bound_socket(socket.SOCK_STREAM, pod if self._transparent else None, server)
            try:
                await asyncio.get_running_loop().sock_connect(sock, server)
                self._streams = await asyncio.open_connection(sock=sock)
            except BaseException:
                sock.close()
                raise
        reader, writer = self._streams
        writer.write(len(wire).to_bytes(2, "big") + wire)
        await writer.drain()
        size = int.from_bytes(await reader.readexactly(2), "big")
        return await reader.readexactly(size)

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()


AnswerCallback: TypeAlias = Callable[[bytes | BaseException], None]
"""Gets the server's answer to one forwarded query, or why there is none."""


class _UDPUpstream:
    """One upstream UDP socket (pod address/port → server), shared by that pod socket's
    concurrent queries; each query's ID rewritten to one unused here, restored in its answer.
    An answer goes to its query's callback from the socket's reader itself (no task, no turn
    of the loop in between: a busy agent loop has other callbacks queued); closed once no query
    waits."""

    def __init__(self, sock: socket.socket, on_idle: Callable[[], None]) -> None:
        self._sock = sock
        self._pending: dict[int, tuple[AnswerCallback, bytes, asyncio.TimerHandle]] = {}
        self._next = secrets.randbelow(0x10000)
        self._on_idle = on_idle
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        while self._pending:
            try:
                wire = self._sock.recv(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # ICMP unreachable on a connected socket
                for qid in list(self._pending):
                    self._deliver(qid, err)
                return
            if len(wire) >= 2:
                self._deliver(int.from_bytes(wire[:2], "big"), wire)

    def _deliver(self, qid: int, outcome: bytes | BaseException) -> None:
        """The query's callback (an answer with the pod's own ID back in it); closes the socket
        when it was the last query waiting."""
        found = self._pending.pop(qid, None)
        if found is None:
            return  # an answer to no query waiting here (late, or forged): dropped
        callback, asked, timer = found
        timer.cancel()
        if not self._pending:
            self.close()
            self._on_idle()
        try:
            callback(outcome if isinstance(outcome, BaseException) else asked[:2] + outcome[2:])
        except Exception:
            log.exception("DNS proxy: answer callback failed")

    def ask_then(self, wire: bytes, timeout: float, callback: AnswerCallback) -> None:
        """Forwards ``wire``; ``callback`` gets the answer, the socket's error, or
        ``TimeoutError`` after ``timeout`` seconds."""
        while self._next in self._pending:
            self._next = (self._next + 1) & 0xFFFF
        qid, self._next = self._next, (self._next + 1) & 0xFFFF
        timer = self._loop.call_later(timeout, self._deliver, qid, TimeoutError())
        self._pending[qid] = (callback, wire, timer)
        message = qid.to_bytes(2, "big") + wire[2:]
        try:
            self._sock.send(message)
        except (BlockingIOError, InterruptedError):  # a full buffer: send once there is room
            task = self._loop.create_task(self._send_later(qid, message))
            _background.add(task)
            task.add_done_callback(_background.discard)
        except OSError as err:
            self._loop.call_soon(self._deliver, qid, err)  # as a reply would: not from here

    async def _send_later(self, qid: int, message: bytes) -> None:
        try:
            await self._loop.sock_sendall(self._sock, message)
        except OSError as err:
            self._deliver(qid, err)

    async def ask(self, wire: bytes, timeout: float) -> bytes:
        """:meth:`ask_then`, awaited."""
        fut: asyncio.Future[bytes] = self._loop.create_future()

        def settle(outcome: bytes | BaseException) -> None:
            if fut.done():
                return
            if isinstance(outcome, BaseException):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)

        self.ask_then(wire, timeout, settle)
        return await fut

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()


_background: set[asyncio.Task[None]] = set()
"""Sends waiting for room in a socket's buffer (referenced until done)."""


# ---- the proxy -------------------------------------------------------------------------------


@dataclass
class ProxyStats:
    """Counters (the agent's metrics read them)."""

    queries: int = 0
    refused: int = 0
    forwarded: int = 0
    malformed: int = 0
    errors: int = 0
    late_releases: int = 0
    """Answers released after the maximum delay, before the datapath allowed their IPs."""
    over_limit: int = 0
    """Queries dropped unanswered: the concurrency limit stayed reached for the grace period."""


@dataclass
class DNSProxy:
    """The proxy of one node: :meth:`start` in the node netns (sockets belong to the netns of
    the thread that makes them), :meth:`stop` closes everything it made."""

    port: int
    policy: ProxyPolicy
    on_event: Callable[[L7Record], None] = lambda _record: None
    reject_code: str = "refused"
    """``--tofqdns-dns-reject-response-code``: a :data:`RejectCode` (checked at creation)."""
    response_max_delay_s: float = DEFAULT_RESPONSE_MAX_DELAY_S
    forward_timeout_s: float = FORWARD_TIMEOUT_S
    transparent: bool = True
    concurrency_limit: int = 0
    """``--dnsproxy-concurrency-limit``: queries processed at once (0: no limit, upstream's
    default); a query that finds no room within ``concurrency_grace_s``
    (``--dnsproxy-concurrency-processing-grace-period``) is dropped unanswered and counted."""
    concurrency_grace_s: float = 0.0
    stats: ProxyStats = field(default_factory=ProxyStats)
    _room: asyncio.Semaphore | None = None
    _listeners: list[tuple[str, socket.socket]] = field(default_factory=list)
    _servers: list[asyncio.Server] = field(default_factory=list)
    _upstreams: dict[tuple[Address, Address], _UDPUpstream] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.reject_code not in REJECT_RCODES:
            raise ValueError(
                f"--tofqdns-dns-reject-response-code {self.reject_code!r}: expected one of"
                f" {', '.join(REJECT_RCODES)}"
            )
        if self.response_max_delay_s <= 0:
            raise ValueError("--tofqdns-proxy-response-max-delay must be positive")
        if self.concurrency_limit < 0 or self.concurrency_grace_s < 0:
            raise ValueError(
                "--dnsproxy-concurrency-limit and its grace period must not be negative"
            )
        if self.concurrency_limit:
            self._room = asyncio.Semaphore(self.concurrency_limit)

    async def start(self) -> None:
        self._listeners = list(listen_sockets(self.port))
        loop = asyncio.get_running_loop()
        for kind, sock in self._listeners:
            if kind == "UDP":
                loop.add_reader(sock.fileno(), self._udp_readable, sock)
            else:
                self._servers.append(await asyncio.start_server(self._tcp_client, sock=sock))
        log.info("DNS proxy listening on port %d (udp, tcp)", self.port)

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for server in self._servers:
            server.close()
        for kind, sock in self._listeners:
            if kind == "UDP" and sock.fileno() >= 0:
                loop.remove_reader(sock.fileno())
                sock.close()
        for task in list(self._tasks):
            task.cancel()
        for upstream in list(self._upstreams.values()):
            upstream.close()
        self._upstreams.clear()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()
        self._listeners.clear()

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # a task, named, referenced
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("DNS proxy: %s failed", task.get_name(), exc_info=task.exception())

    # ---- UDP ------------------------------------------------------------------------------

    def _udp_readable(self, sock: socket.socket) -> None:
        for _ in range(64):  # a bounded batch per wake-up: TCP clients get their turn
            try:
                wire, ancdata, _flags, peer = sock.recvmsg(MAX_MESSAGE, 256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                log.warning("DNS proxy: udp receive: %s", err)
                return
            source: Address = (peer[0], peer[1])
            dest = original_destination(ancdata) or (source[0], 0)
            if self._room is not None:  # the concurrency limit waits: a task per query
                self._spawn(self._udp_query(sock, wire, source, dest), f"dns-udp-{source[0]}")
            else:
                try:
                    self._udp_at_once(sock, wire, source, dest)
                except Exception:  # one query's bug must not cost the batch behind it
                    log.exception("DNS proxy: query from %s failed", source[0])

    def _udp_at_once(
        self, listener: socket.socket, wire: bytes, source: Address, dest: Address
    ) -> None:
        """One UDP query without a task: decided and forwarded now, its answer handled from the
        upstream socket's reader (a task only when the answer must wait for the datapath).
        Each turn of the loop a query skips is a turn behind whatever else the agent's loop
        has queued (Hubble's batches): the pod's query waits for none of them."""
        begun = self._begin(wire, source, dest, "UDP")
        if not isinstance(begun, _Query):
            self._release_udp(listener, begun, source, dest)
            return

        def answered(outcome: bytes | BaseException) -> None:
            if isinstance(outcome, BaseException):
                self._release_udp(listener, self._unanswered(begun, outcome), source, dest)
                return
            done, pending = self._finish(begun, outcome)
            if pending is None:
                self._release_udp(listener, done, source, dest)
                return

            async def released() -> None:
                await self._await_update(pending, begun.qname)
                self._release_udp(listener, done, source, dest)

            self._spawn(released(), f"dns-answer-{begun.qname}")

        try:
            upstream = self._upstream_udp(source, dest)
        except OSError as err:
            answered(err)
            return
        upstream.ask_then(wire, self.forward_timeout_s, answered)

    def _release_udp(
        self,
        listener: socket.socket,
        done: Reply,
        pod: Address,
        server: Address,
    ) -> None:
        reply, after = done
        if reply is not None:
            self._send_udp(listener, reply, pod, server)
        after()

    async def _udp_query(
        self, listener: socket.socket, wire: bytes, source: Address, dest: Address
    ) -> None:
        reply, after = await self._admitted(wire, source, dest, "UDP", self._forward_udp)
        if reply is not None:
            self._send_udp(listener, reply, source, dest)
        after()

    def _send_udp(
        self, listener: socket.socket, reply: bytes, pod: Address, server: Address
    ) -> None:
        """The answer to the pod from the address it asked (the listener's own when the pod
        asked the proxy directly)."""
        try:
            if server[1] == self.port:
                listener.sendto(reply, pod)
                return
            with contextlib.closing(_bound_socket(socket.SOCK_DGRAM, server, pod)) as sock:
                sock.sendto(reply, pod)  # a fresh socket's buffer: never would block
        except OSError as err:
            log.warning("DNS proxy: cannot answer %s from %s: %s", pod, server, err)

    async def _forward_udp(self, wire: bytes, pod: Address, server: Address) -> bytes:
        return await self._upstream_udp(pod, server).ask(wire, self.forward_timeout_s)

    def _upstream_udp(self, pod: Address, server: Address) -> _UDPUpstream:
        """The upstream socket of the pod's socket to ``server`` (made when none waits)."""
        key = (pod, server)
        upstream = self._upstreams.get(key)
        if upstream is None:
            sock = _bound_socket(socket.SOCK_DGRAM, pod if self.transparent else None, server)
            try:
                sock.connect(server)  # UDP: no handshake, a non-blocking connect never waits
            except BaseException:
                sock.close()
                raise
            upstream = _UDPUpstream(sock, lambda: self._forget_upstream(key))
            self._upstreams[key] = upstream
        return upstream

    def _forget_upstream(self, key: tuple[Address, Address]) -> None:
        self._upstreams.pop(key, None)

    # ---- TCP ------------------------------------------------------------------------------

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        source: Address = (peer[0], peer[1])
        dest: Address = (local[0], local[1])  # the original destination (transparent)
        upstream = _TCPUpstream(self.transparent)
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT_S)
                except asyncio.IncompleteReadError as err:
                    if err.partial:  # one byte of a length: a message cut short
                        self._cut_short(source, "1 byte of its length")
                    return  # else the pod closed between messages
                size = int.from_bytes(head, "big")
                try:
                    wire = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE_TIMEOUT_S)
                except asyncio.IncompleteReadError as err:
                    self._cut_short(source, f"{len(err.partial)} of {size} bytes")
                    return
                except TimeoutError:
                    self._cut_short(source, f"not {size} bytes in {TCP_IDLE_TIMEOUT_S:g} s")
                    return
                reply, after = await self._admitted(wire, source, dest, "TCP", upstream.ask)
                if reply is None:
                    after()
                    return
                writer.write(len(reply).to_bytes(2, "big") + reply)
                after()
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            return
        finally:
            upstream.close()
            writer.close()

    def _cut_short(self, source: Address, got: str) -> None:
        """A TCP message that ended (the pod's end of the stream) or stalled (the idle timeout)
        before its length said: a malformed query, counted as one; the connection closes."""
        self.stats.queries += 1
        self.stats.malformed += 1
        log.info("DNS proxy: malformed query from %s: TCP message cut short: %s", source[0], got)

    # ---- one query --------------------------------------------------------------------------

    async def handle(
        self,
        wire: bytes,
        source: Address,
        dest: Address,
        protocol: Literal["UDP", "TCP"],
        forward: Forward,
    ) -> bytes | None:
        """The reply to one query from ``source`` to ``dest`` (None: none is sent), its events
        emitted."""
        reply, after = await self._admitted(wire, source, dest, protocol, forward)
        after()
        return reply

    async def _admitted(
        self,
        wire: bytes,
        source: Address,
        dest: Address,
        protocol: Literal["UDP", "TCP"],
        forward: Forward,
    ) -> Reply:
        """:meth:`handle` within the concurrency limit; the reply, and what to do once it is
        sent (the response's event: the pod's answer does not wait for Hubble)."""
        if self._room is None:
            return await self._handle(wire, source, dest, protocol, forward)
        try:
            if self._room.locked():  # wait_for(..., 0) would give up even with room
                await asyncio.wait_for(self._room.acquire(), self.concurrency_grace_s)
            else:
                await self._room.acquire()
        except TimeoutError:
            self.stats.queries += 1
            self.stats.over_limit += 1
            log.debug("DNS proxy: query from %s dropped: concurrency limit", source[0])
            return None, _nothing
        try:
            return await self._handle(wire, source, dest, protocol, forward)
        finally:
            self._room.release()

    async def _handle(
        self,
        wire: bytes,
        source: Address,
        dest: Address,
        protocol: Literal["UDP", "TCP"],
        forward: Forward,
    ) -> Reply:
        begun = self._begin(wire, source, dest, protocol)
        if not isinstance(begun, _Query):
            return begun
        try:
            answer_wire = await forward(wire, source, dest)
        except (OSError, TimeoutError, EOFError, asyncio.IncompleteReadError) as err:
            return self._unanswered(begun, err)
        done, pending = self._finish(begun, answer_wire)
        if pending is not None:
            await self._await_update(pending, begun.qname)
        return done

    def _begin(
        self, wire: bytes, source: Address, dest: Address, protocol: Literal["UDP", "TCP"]
    ) -> Reply | _Query:
        """A query up to its forwarding: the reply now (malformed, refused), or what its
        answer needs; the request's event emitted."""
        started = time.monotonic_ns()
        self.stats.queries += 1
        question = read_query(wire)  # the common query, without building a Message
        query: dns.message.Message | None = None
        if question is None:
            try:
                query = parse_query(wire)
            except MalformedQueryError as err:
                self.stats.malformed += 1
                log.info("DNS proxy: malformed query from %s: %s", source[0], err)
                return err.reply, _nothing
            question = WireQuestion(query.question[0].name.to_text(), _qtypes(query))
        qname = question.qname
        ips = _ips(source, dest)
        decision = self._decide(ips, source, dest, protocol, qname)
        records = (
            None
            if ips is None
            else _Records(
                L7Endpoint(ips[0], source[1]), L7Endpoint(ips[1], dest[1]),
                PROTO_UDP if protocol == "UDP" else PROTO_TCP,
                DNSRecord(qname, question.qtypes),
            )
        )  # fmt: skip
        if not decision.allowed:
            self.stats.refused += 1
            log.debug(
                "DNS proxy: %s from %s to %s refused: %s", qname, source, dest, decision.reason
            )
            if records is not None:
                self._emit(lambda: records.request(Verdict.DROPPED))
            rejected = reject(query or parse_query(wire), REJECT_RCODES[self.reject_code])
            return rejected, _nothing
        assert records is not None  # a query from a bad address is never allowed
        self._emit(lambda: records.request(Verdict.FORWARDED))
        return _Query(wire, query, qname, records, started)

    def _finish(self, begun: _Query, answer_wire: bytes) -> tuple[Reply, Awaitable[None] | None]:
        """The server's answer: the reply and its event, and the cache update still to await
        before the reply is released (None: released now)."""
        try:
            read = read_answer(answer_wire)  # the common answer, without building a Message
            if read is None:
                full = dns.message.from_wire(answer_wire)
                answer = answer_lookups(begun.qname, full, time.time())
            else:
                answer = _answer(begun.qname, read.rcode, read.rrsets, time.time())
        except (dns.exception.DNSException, ValueError) as err:
            return self._failed(begun, f"bad answer: {err}"), None
        pending = self.policy.answered(list(answer.lookups)) if answer.lookups else None
        self.stats.forwarded += 1
        latency = time.monotonic_ns() - begun.started
        records = begun.records
        after = lambda: self._emit(  # noqa: E731 - built now, run once the reply is out
            lambda: records.response(Verdict.FORWARDED, answer, latency)
        )
        return (answer_wire, after), pending

    def _unanswered(self, begun: _Query, err: BaseException) -> Reply:
        """The reply when the server could not be asked or did not answer: SERVFAIL."""
        return self._failed(begun, f"server: {err!r}")

    def decide(
        self, source: Address, dest: Address, protocol: Literal["UDP", "TCP"], qname: str
    ) -> Decision:
        """Whether a query for ``qname`` from ``source`` to ``dest`` (the original
        destination) is forwarded, and why."""
        return self._decide(_ips(source, dest), source, dest, protocol, qname)

    def _decide(
        self,
        ips: tuple[IPAddress, IPAddress] | None,
        source: Address,
        dest: Address,
        protocol: Literal["UDP", "TCP"],
        qname: str,
    ) -> Decision:
        if dest[1] == self.port:
            return Decision(False, "not redirected: no original destination to forward to")
        if ips is None:
            return Decision(False, f"bad address {source[0]!r} or {dest[0]!r}")
        proto = PROTO_UDP if protocol == "UDP" else PROTO_TCP
        return self.policy.decide(ips[0], ips[1], proto, dest[1], qname)

    async def _await_update(self, pending: Awaitable[None], qname: str) -> None:
        """The datapath's update for an answer, awaited up to the maximum delay (then it goes
        on alone)."""
        update = asyncio.ensure_future(pending)
        update.set_name(f"dns-answer-{qname}")
        self._tasks.add(update)
        update.add_done_callback(self._done)
        done, _ = await asyncio.wait({update}, timeout=self.response_max_delay_s)
        if not done:
            self.stats.late_releases += 1
            log.warning(
                "DNS proxy: %s answered before the datapath allows its IPs (policy update"
                " longer than %g s)", qname, self.response_max_delay_s,
            )  # fmt: skip

    def _failed(self, begun: _Query, reason: str) -> tuple[bytes, Callable[[], None]]:
        self.stats.errors += 1
        log.info("DNS proxy: %s: %s", begun.qname, reason)
        failed = Answer(int(dns.rcode.SERVFAIL), (), 0, (), (), ())
        latency = time.monotonic_ns() - begun.started
        records = begun.records
        self._emit(lambda: records.response(Verdict.ERROR, failed, latency))
        return reject(begun.query or parse_query(begun.wire), dns.rcode.SERVFAIL), _nothing

    def _emit(self, make: Callable[[], L7Record]) -> None:
        """The record ``make`` builds to ``on_event`` (neither may fail the query)."""
        try:
            self.on_event(make())
        except Exception:
            log.exception("DNS proxy: event sink failed")
