"""The ``seven`` family of Hubble's parser: the L7 parts of a flow made from an :class:`L7Record`.

Upstream's ``pkg/hubble/parser/seven`` turns a proxy's access log record into an L7 flow; the
parts that depend on the record alone are here (the ``Layer7`` message, the ``Summary``
string), the parts shared with the other families (endpoints, services, time, UUID) are the
decoder's (``FlowDecoder.decode_l7`` in :mod:`ciliary.agent.flows`). Upstream's spellings:

* HTTP request ``HTTP/1.1 GET http://host/path``, response
  ``HTTP/1.1 200 3ms (GET http://host/path)``; headers sorted by name;
  request messages carry no ``code``;
* DNS request ``DNS Query example.com. A,AAAA``, response
  ``DNS Answer "1.2.3.4,5.6.7.8" TTL: 30 (Proxy example.com. A)`` (``RCode: Query Refused``
  instead of the answer when the response code is not NOERROR, ``CNAMEs: "a.,b."`` after the
  addresses); request messages carry only the query, its types and the observation source.
"""

from __future__ import annotations

from ciliary.core.flow import L7FlowType
from ciliary.core.l7record import DNSRecord, HTTPRecord, L7Record
from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.gopacket import DNS_RCODE_NAMES

__all__ = ["fill_layer7", "layer7", "summary"]


def layer7(rec: L7Record) -> flow_pb2.Layer7:
    """The flow's ``l7``: type, latency and the protocol's record, as upstream's decodeLayer7."""
    l7 = flow_pb2.Layer7()
    fill_layer7(rec, l7)
    return l7


def fill_layer7(rec: L7Record, l7: flow_pb2.Layer7) -> None:
    """:func:`layer7` into a flow's own (empty) ``l7``: no message made and copied per flow."""
    l7.type = rec.kind  # type: ignore[assignment]
    if rec.latency_ns:
        l7.latency_ns = rec.latency_ns
    request = rec.kind == L7FlowType.REQUEST
    if rec.http is not None:
        _http(rec.http, request, l7.http)
    elif rec.dns is not None:
        _dns(rec.dns, request, l7.dns)


def _http(http: HTTPRecord, request: bool, out: flow_pb2.HTTP) -> None:
    out.method, out.url, out.protocol = http.method, http.url, http.protocol
    if not request:
        out.code = http.code
    if http.headers:
        for key, value in sorted(http.headers, key=lambda kv: kv[0]):
            out.headers.add(key=key, value=value)


def _dns(dns: DNSRecord, request: bool, out: flow_pb2.DNS) -> None:
    out.query, out.observation_source = dns.query, dns.observation_source
    out.qtypes.extend(dns.qtypes)
    if request:
        return
    out.ips.extend(dns.ips)
    out.ttl, out.rcode = dns.ttl, dns.rcode
    out.cnames.extend(dns.cnames)
    out.rrtypes.extend(dns.rrtypes)


def summary(rec: L7Record) -> str:
    """Hubble's ``Summary`` of an L7 flow (see the module doc); "" for a sample."""
    if rec.http is not None:
        http = rec.http
        what = f"{http.method} {http.url}"
        if rec.kind == L7FlowType.REQUEST:
            return f"{http.protocol} {what}"
        if rec.kind == L7FlowType.RESPONSE:
            return f"{http.protocol} {http.code} {rec.latency_ns // 1_000_000}ms ({what})"
        return ""
    if rec.dns is not None:
        dns = rec.dns
        qtypes = ",".join(dns.qtypes)
        if rec.kind == L7FlowType.REQUEST:
            return f"DNS Query {dns.query} {qtypes}"
        if rec.kind == L7FlowType.RESPONSE:
            if dns.rcode:
                answer = "RCode: " + DNS_RCODE_NAMES.get(dns.rcode, "Unknown")
            else:
                parts = []
                if dns.ips:
                    parts.append('"' + ",".join(dns.ips) + '"')
                if dns.cnames:
                    parts.append('CNAMEs: "' + ",".join(dns.cnames) + '"')
                answer = " ".join(parts)
            source = "Proxy" if dns.observation_source == "proxy" else "Query"
            return f"DNS Answer {answer} TTL: {dns.ttl} ({source} {dns.query} {qtypes})"
    return ""
