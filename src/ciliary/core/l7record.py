"""The typed L7 record a proxy hands to Hubble: one request or response it saw.

Upstream's proxies (Envoy, the DNS proxy) report every request and response as an access log
record (``pkg/proxy/accesslog``, ``LogRecord``), which reaches Hubble as the monitor message type
``ACCESS_LOG`` (129) and becomes an L7 flow there (``pkg/hubble/parser/seven``). Here the same
record is this frozen value: the DNS proxy (``ciliary.agent.dnsproxy``) and Envoy's access log
reader build one per request and response and publish it to the agent's event fan-out
(``Monitor.publish``), which hands it to Hubble's parser like a datapath record
(``FlowDecoder.decode_l7``, the ``seven`` family; see docs/hubble.md "Events").

It lives in ``core`` because its producers (agent components) and its parser (agent) must
share it without depending on each other. A record is validated when it is built: a record that
could not become a flow is a ``ValueError`` naming the field, at its producer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv6Address
from typing import ClassVar

from ciliary.core.flow import MSG_ACCESS_LOG, L7FlowType, TrafficDirection, Verdict

__all__ = ["DNSRecord", "HTTPRecord", "L7Batch", "L7Endpoint", "L7Record"]

_L7_VERDICTS = frozenset({Verdict.FORWARDED, Verdict.DROPPED, Verdict.ERROR, Verdict.REDIRECTED})
_TRANSPORTS = frozenset({6, 17, 132})
_KINDS = frozenset({L7FlowType.REQUEST, L7FlowType.RESPONSE, L7FlowType.SAMPLE})


@dataclass(frozen=True, slots=True)
class L7Endpoint:
    """One side of the proxied connection as the pod sees it (upstream's ``EndpointInfo``):
    the pod's own address and port, or the peer's original destination."""

    ip: IPv4Address | IPv6Address
    port: int
    identity: int = 0
    """The security identity the proxy knows for it; 0: the parser resolves it (endpoint,
    ipcache) from the address, as for datapath records."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"L7 endpoint {self.ip}: port {self.port} is not 0..65535")


@dataclass(frozen=True, slots=True)
class HTTPRecord:
    """Hubble's ``flow.HTTP``: ``code`` 0 on a request; ``headers`` as (name, value) pairs in
    the order the proxy saw them (the parser sorts them by name, as upstream)."""

    method: str
    url: str
    protocol: str = "HTTP/1.1"
    code: int = 0
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class DNSRecord:
    """Hubble's ``flow.DNS``. ``query`` with its trailing dot; ``qtypes``/``rrtypes`` by name
    (``A``, ``AAAA``, as dnspython and gopacket spell them); the answer fields (``ips``, ``ttl``,
    ``cnames``, ``rcode``, ``rrtypes``) are a response's only."""

    query: str
    qtypes: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    ttl: int = 0
    cnames: tuple[str, ...] = ()
    rcode: int = 0
    rrtypes: tuple[str, ...] = ()
    observation_source: str = "proxy"


@dataclass(frozen=True, slots=True)
class L7Record:
    """One request or response a proxy saw (see the module doc). Exactly one of ``http``,
    ``dns`` says which protocol; ``latency_ns`` is a response's time since its request (the
    proxy measured it; 0 on requests); ``time_ns`` is wall-clock (``time.time_ns()``)."""

    type: ClassVar[int] = MSG_ACCESS_LOG
    """The record type every event of the fan-out is dispatched on (``EventType``)."""

    time_ns: int
    kind: L7FlowType
    verdict: Verdict
    direction: TrafficDirection
    """Where the proxy enforced: egress of the source pod, ingress of the destination pod."""
    source: L7Endpoint
    destination: L7Endpoint
    transport: int
    """IP protocol of the connection: 6 TCP, 17 UDP, 132 SCTP."""
    http: HTTPRecord | None = None
    dns: DNSRecord | None = None
    latency_ns: int = 0

    def __post_init__(self) -> None:
        if (self.http is None) == (self.dns is None):
            raise ValueError("an L7 record carries exactly one of http, dns")
        if self.kind not in _KINDS:
            raise ValueError(f"L7 record kind {self.kind!r} is not request/response/sample")
        if self.verdict not in _L7_VERDICTS:
            raise ValueError(
                f"L7 record verdict {self.verdict!r} is not FORWARDED/DROPPED/ERROR/REDIRECTED"
            )
        if self.source.ip.version != self.destination.ip.version:
            raise ValueError(
                f"L7 record source {self.source.ip} and destination {self.destination.ip}"
                " are of different IP versions"
            )
        if self.transport not in _TRANSPORTS:
            raise ValueError(f"L7 record transport {self.transport} is not 6, 17 or 132")
        if self.latency_ns < 0 or self.time_ns < 0:
            raise ValueError("L7 record time_ns and latency_ns are >= 0")


@dataclass(frozen=True, slots=True)
class L7Batch:
    """Many requests of one proxy read at once (Envoy's access log: a pipe read's lines), each
    a request and a response record, grouped (#15: per request only what differs is kept).

    ``pairs[g]`` is group ``g``'s (request, response) records as its first request made them;
    the requests of a group differ only in their time, latency and client port (and so in the
    response's time, latency, the milliseconds of its summary and its destination port), which
    are per request: ``group[i]``, ``time_ns[i]`` (the request's), ``latency_ns[i]`` (the
    response's time is ``time_ns[i] + latency_ns[i]``) and ``client_port[i]`` (the request's
    source port, the response's destination port). As events, request ``i`` is event ``2i``
    and its response event ``2i + 1``; ``events`` says how many of them the batch carries (a
    queue with room for only part of it keeps a prefix and counts the rest as lost)."""

    type: ClassVar[int] = MSG_ACCESS_LOG

    pairs: tuple[tuple[L7Record, L7Record], ...]
    group: tuple[int, ...]
    time_ns: tuple[int, ...]
    latency_ns: tuple[int, ...]
    client_port: tuple[int, ...]
    events: int = -1
    """The events carried (a prefix of the ``2 * len(group)``); -1: all of them."""

    def __post_init__(self) -> None:
        n = len(self.group)
        if not len(self.time_ns) == len(self.latency_ns) == len(self.client_port) == n:
            raise ValueError(
                "L7 batch columns group, time_ns, latency_ns, client_port differ in length"
            )
        if self.events == -1:
            object.__setattr__(self, "events", 2 * n)
        if not 0 <= self.events <= 2 * n:
            raise ValueError(f"L7 batch of {n} requests cannot carry {self.events} events")

    def records(self) -> Iterator[L7Record]:
        """The batch's events one by one (request ``i``, then its response), as records."""
        left = self.events
        for g, time_ns, latency_ns, port in zip(
            self.group, self.time_ns, self.latency_ns, self.client_port, strict=True
        ):
            request, response = self.pairs[g]
            if left <= 0:
                return
            client = replace(request.source, port=port)
            yield replace(request, time_ns=time_ns, source=client)
            if left <= 1:
                return
            yield replace(response, time_ns=time_ns + latency_ns, latency_ns=latency_ns,
                          destination=client)  # fmt: skip
            left -= 2

    def head(self, events: int) -> L7Batch:
        """The batch's first ``events`` events (the requests they belong to)."""
        keep = min(max(events, 0), self.events)
        lines = (keep + 1) // 2
        return L7Batch(
            self.pairs,
            self.group[:lines],
            self.time_ns[:lines],
            self.latency_ns[:lines],
            self.client_port[:lines],
            keep,
        )
