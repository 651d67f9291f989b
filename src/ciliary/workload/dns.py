"""``dns-server`` and ``dns-query``: the cluster's DNS, and a client that checks its answers.

``dns-server`` is an authoritative-only server (UDP and TCP, dual stack) for one domain,
``cluster.local`` by default, as the DNS pod of a Kubernetes cluster is. It answers from a JSON
records file, which it re-reads when the file changes (the controller manager's cluster DNS
controller rewrites it, atomically, as Services, endpoints and pods come and go; a file that
cannot be read keeps the previous names). Each name maps to its records by type, as rdata text
(``{"web.shop.svc.cluster.local.": {"A": ["10.96.0.20"], "AAAA": ["fd00:10:96::14"]},
"_http._tcp.web.shop.svc.cluster.local.": {"SRV": ["0 100 80 web.shop.svc.cluster.local."]},
"db.shop.svc.cluster.local.": {"CNAME": ["db.example.com."]}}``: types A, AAAA, SRV and CNAME;
a CNAME is alone at its name), or to a plain list of addresses, the A/AAAA shorthand.

A name under the domain that the file does not know is NXDOMAIN; a name that exists (a record
name, or a name between it and the domain) without the asked type is NODATA (NOERROR, no
answers); a name elsewhere is REFUSED: there is no recursion, as the lab has no outside world.
A CNAME answers every type and is followed inside the zone (its target's records of the asked
type join the answer; a target outside the zone is left to the client); an SRV answer carries its
targets' addresses in the additional section, as CoreDNS's. Answers carry the AA flag and a TTL
of 30 seconds (``--ttl``); negative answers carry the domain's SOA (RFC 2308). One log line per
query.

``dns-query`` sends one query and prints ``NAME TYPE -> RCODE, answers``; it exits 0 when the
rcode is the expected one (by default NOERROR with at least one answer), else 1.

Messages are parsed and built with dnspython.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import ipaddress
import json
import os
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from ciliary.workload.common import (
    ServerService,
    TCPServer,
    UDPServer,
    describe_error,
    fail,
    format_address,
    log,
    say,
    serve_until_signal,
    strip_brackets,
)

TTL = 30
DEFAULT_DOMAIN = "cluster.local"
TCP_IDLE_TIMEOUT = 10.0  # a TCP client that says nothing is dropped after this long
UDP_PAYLOAD_WITHOUT_EDNS = 512  # RFC 1035: a UDP answer to a query without EDNS fits in 512

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
RECORD_TYPES = (
    dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.SRV, dns.rdatatype.CNAME,
)  # fmt: skip
"""The types a records file may hold."""
MAX_CNAME_CHAIN = 8
RData = dict[dns.rdatatype.RdataType, list[dns.rdata.Rdata]]


class RecordsError(Exception):
    """The records file cannot be used; ``str()`` is one line naming the file."""


@dataclasses.dataclass(frozen=True)
class Zone:
    """The names the server is authoritative for, as read from the records file."""

    domain: dns.name.Name
    records: dict[dns.name.Name, RData]
    serial: int = 1
    ttl: int = TTL

    @functools.cached_property
    def names(self) -> frozenset[dns.name.Name]:
        """Every name that exists: the record names, the domain and the names in between."""
        return _existing_names(self.domain, tuple(self.records))

    def rrset(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.rrset.RRset | None:
        """``name``'s records of ``rdtype`` (None: it has none)."""
        rdatas = self.records.get(name, {}).get(rdtype)
        if not rdatas:
            return None
        return dns.rrset.from_rdata_list(name, self.ttl, rdatas)

    def soa(self) -> dns.rrset.RRset:
        """The domain's SOA record (as CoreDNS's kubernetes plugin writes it)."""
        ns = dns.name.from_text("ns.dns", origin=self.domain)
        mbox = dns.name.from_text("hostmaster", origin=self.domain)
        text = f"{ns} {mbox} {self.serial} 7200 1800 86400 {self.ttl}"
        return dns.rrset.from_text_list(self.domain, self.ttl, "IN", "SOA", [text])


def _existing_names(
    domain: dns.name.Name, names: tuple[dns.name.Name, ...]
) -> frozenset[dns.name.Name]:
    found = {domain}
    for record in names:
        name = record
        while name != domain and name.is_subdomain(domain) and name not in found:
            found.add(name)
            name = name.parent()
    return frozenset(found)


def parse_records(text: str, domain: dns.name.Name, where: str) -> tuple[Zone, list[str]]:
    """The zone of a records file's text, and the names it gives outside ``domain`` (ignored).

    Raises :class:`RecordsError` naming the file, the name and what was expected when the text
    is not a JSON object of names to record types (or to address lists).
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise RecordsError(f"{where}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RecordsError(f"{where}: expected a JSON object of names to records")
    records: dict[dns.name.Name, RData] = {}
    outside: list[str] = []
    for key, value in data.items():
        try:
            name = dns.name.from_text(key)
        except dns.exception.DNSException as exc:
            raise RecordsError(f"{where}: {key!r} is not a DNS name: {exc}") from None
        parsed = _parse_name_records(value, f"{where}: {key!r}")
        if not name.is_subdomain(domain):
            outside.append(name.to_text())
            continue
        known = records.setdefault(name, {})
        for rdtype, rdatas in parsed.items():
            have = known.setdefault(rdtype, [])
            have.extend(rd for rd in rdatas if rd not in have)
        if dns.rdatatype.CNAME in known and (len(known) > 1 or len(known[dns.rdatatype.CNAME]) > 1):
            raise RecordsError(f"{where}: {key!r}: a CNAME must be the name's only record")
    return Zone(domain, records), outside


def _parse_name_records(value: object, where: str) -> RData:
    if isinstance(value, list):  # the shorthand: addresses
        if not all(isinstance(v, str) for v in value):
            raise RecordsError(
                f"{where}: expected a list of IP addresses or an object of record types,"
                f" got {value!r}"
            )
        try:
            ips = [ipaddress.ip_address(v) for v in value]
        except ValueError as exc:
            raise RecordsError(f"{where}: {exc}") from None
        value = {
            "A": [str(ip) for ip in ips if ip.version == 4],
            "AAAA": [str(ip) for ip in ips if ip.version == 6],
        }
    if not isinstance(value, dict):
        raise RecordsError(
            f"{where}: expected a list of IP addresses or an object of record types, got {value!r}"
        )
    out: RData = {}
    allowed = ", ".join(dns.rdatatype.to_text(t) for t in RECORD_TYPES)
    for type_text, texts in value.items():
        try:
            rdtype = dns.rdatatype.from_text(str(type_text))
        except dns.exception.DNSException:
            rdtype = None
        if rdtype not in RECORD_TYPES:
            raise RecordsError(f"{where}: record type {type_text!r}: expected one of {allowed}")
        assert rdtype is not None
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise RecordsError(f"{where}: {type_text}: expected a list of record texts")
        rdatas: list[dns.rdata.Rdata] = []
        for text in texts:
            try:
                rd = dns.rdata.from_text(
                    dns.rdataclass.IN, rdtype, text, origin=dns.name.root, relativize=False
                )
            except (dns.exception.DNSException, ValueError) as exc:
                raise RecordsError(f"{where}: {type_text} {text!r}: {exc}") from None
            if rd not in rdatas:
                rdatas.append(rd)
        if rdatas:
            out[rdtype] = rdatas
    return out


def _names(count: int) -> str:
    return f"{count} name" if count == 1 else f"{count} names"


def _answers(count: int) -> str:
    return f"{count} answer" if count == 1 else f"{count} answers"


class Records:
    """The records file, re-read when its mtime (or size, or inode) changes.

    Each query checks the file first (one stat). A file replaced by rename, as the lab writes
    it, always has a new inode, so no change is missed however fast they come.

    The first read must succeed (:class:`RecordsError` otherwise); later failures are logged
    once per change of the file and keep the previous zone.
    """

    def __init__(self, path: Path, domain: dns.name.Name, ttl: int = TTL) -> None:
        self.path = path
        self.domain = domain
        self.ttl = ttl
        self._lock = threading.Lock()
        self._signature = self._stat()
        if self._signature is None:
            raise RecordsError(f"{path}: cannot read the records file: no such file")
        self._zone = self._read(self._signature)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _read(self, signature: tuple[int, int, int]) -> Zone:
        try:
            text = self.path.read_text()
        except OSError as exc:
            raise RecordsError(f"{self.path}: cannot read: {describe_error(exc)}") from None
        except UnicodeDecodeError:
            raise RecordsError(f"{self.path}: not UTF-8 text") from None
        zone, outside = parse_records(text, self.domain, str(self.path))
        zone = dataclasses.replace(
            zone, serial=max(1, signature[0] // 1_000_000_000 % 2**32), ttl=self.ttl
        )
        note = ""
        if outside:
            note = f" ({len(outside)} outside {self.domain} ignored: {', '.join(outside[:3])})"
        log(f"records: {_names(len(zone.records))} from {self.path}{note}")
        return zone

    def zone(self) -> Zone:
        """The current zone, re-read first if the file changed."""
        with self._lock:
            signature = self._stat()
            if signature is not None and signature != self._signature:
                self._signature = signature
                try:
                    self._zone = self._read(signature)
                except RecordsError as exc:
                    log(f"records: {exc}; keeping {_names(len(self._zone.records))}")
            return self._zone


def answer(zone: Zone, query: dns.message.Message) -> tuple[dns.message.Message, str]:
    """The response to ``query`` and the ``TYPE NAME -> RCODE N answers`` part of its log line."""
    response = dns.message.make_response(query)
    if query.opcode() != dns.opcode.QUERY:
        response.set_rcode(dns.rcode.NOTIMP)
        return response, f"opcode {dns.opcode.to_text(query.opcode())} -> NOTIMP"
    if len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return response, f"{len(query.question)} questions -> FORMERR"
    question = query.question[0]
    qname, qtype = question.name, question.rdtype
    asked = f"{dns.rdatatype.to_text(qtype)} {qname}"
    if question.rdclass != dns.rdataclass.IN or not qname.is_subdomain(zone.domain):
        response.set_rcode(dns.rcode.REFUSED)
        return response, f"{asked} -> REFUSED"
    response.flags |= dns.flags.AA
    if qname not in zone.names:
        response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(zone.soa())
        return response, f"{asked} -> NXDOMAIN"
    count = 0
    name = qname
    for _ in range(MAX_CNAME_CHAIN):  # a CNAME answers every type; followed inside the zone
        cname = zone.rrset(name, dns.rdatatype.CNAME)
        if cname is None or qtype == dns.rdatatype.CNAME:
            break
        response.answer.append(cname)
        count += 1
        name = cname[0].target
        if not name.is_subdomain(zone.domain):
            return response, f"{asked} -> NOERROR {_answers(count)}"
        if name not in zone.names:  # RFC 6604: the rcode is the chain's last name's
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(zone.soa())
            return response, f"{asked} -> NXDOMAIN {_answers(count)}"
    wanted = RECORD_TYPES if qtype == dns.rdatatype.ANY else (qtype,)
    for rdtype in wanted:
        rrset = zone.rrset(name, rdtype)
        if rrset is not None:
            response.answer.append(rrset)
            count += len(rrset)
            if rdtype == dns.rdatatype.SRV:
                _add_targets(zone, rrset, response)
    if qtype == dns.rdatatype.SOA and name == zone.domain:
        response.answer.append(zone.soa())
        count += 1
    if not count:
        response.authority.append(zone.soa())  # NODATA: the name exists, not with this type
    return response, f"{asked} -> NOERROR {_answers(count)}"


def _add_targets(zone: Zone, srv: dns.rrset.RRset, response: dns.message.Message) -> None:
    """The SRV targets' addresses of the zone, in the additional section (as CoreDNS adds)."""
    for rd in srv:
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            rrset = zone.rrset(rd.target, rdtype)
            if rrset is not None and rrset not in response.additional:
                response.additional.append(rrset)


def _formerr(wire: bytes) -> bytes | None:
    """A header-only FORMERR for a message too broken to parse (None: not even an ID, or a
    response, which is never answered)."""
    if len(wire) < 12 or wire[2] & 0x80:
        return None
    response = dns.message.Message(id=int.from_bytes(wire[:2], "big"))
    response.flags = dns.flags.QR
    response.set_rcode(dns.rcode.FORMERR)
    return response.to_wire()


def respond(zone: Zone, wire: bytes, *, udp: bool) -> tuple[bytes | None, str]:
    """The wire response to the query ``wire`` (None: drop it) and its log summary.

    Over UDP an answer larger than the client can take (512 bytes, or its EDNS payload size)
    is sent empty with the TC flag, so that the client asks again over TCP.
    """
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException as exc:
        reply = _formerr(wire)
        reason = str(exc) or type(exc).__name__
        return reply, f"malformed ({reason}) -> {'FORMERR' if reply else 'dropped'}"
    if query.flags & dns.flags.QR:
        return None, "a response, not a query -> dropped"
    response, summary = answer(zone, query)
    if not udp:
        return response.to_wire(), summary
    limit = UDP_PAYLOAD_WITHOUT_EDNS
    if query.edns >= 0:
        limit = max(query.payload, UDP_PAYLOAD_WITHOUT_EDNS)
    try:
        return response.to_wire(max_size=limit), summary
    except dns.exception.TooBig:
        response.answer.clear()
        response.authority.clear()
        response.additional.clear()
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit), f"{summary} (truncated)"


class _DNSServerMixin:
    records: Records


class _UDPServer(UDPServer, _DNSServerMixin):
    pass


class _TCPServer(TCPServer, _DNSServerMixin):
    pass


class _UDPHandler(socketserver.BaseRequestHandler):
    server: _UDPServer

    def handle(self) -> None:
        wire: bytes = self.request[0]
        sock: socket.socket = self.request[1]
        peer = format_address(self.client_address)
        reply, summary = respond(self.server.records.zone(), wire, udp=True)
        if reply is not None:
            try:
                sock.sendto(reply, self.client_address)
            except OSError as exc:
                summary += f" (reply failed: {describe_error(exc)})"
        log(f"query {summary.replace(' -> ', f' from {peer} -> ', 1)}")


class _TCPHandler(socketserver.BaseRequestHandler):
    """RFC 7766: length-prefixed messages, several per connection, until the client closes or
    stays idle for :data:`TCP_IDLE_TIMEOUT`."""

    server: _TCPServer

    def _read(self, conn: socket.socket, size: int) -> bytes | None:
        data = bytearray()
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                return None
            data += chunk
        return bytes(data)

    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.settimeout(TCP_IDLE_TIMEOUT)
        peer = format_address(self.client_address)
        try:
            while (prefix := self._read(conn, 2)) is not None:
                wire = self._read(conn, int.from_bytes(prefix, "big"))
                if wire is None:
                    log(f"query from {peer}: connection closed mid-message (tcp)")
                    return
                reply, summary = respond(self.server.records.zone(), wire, udp=False)
                if reply is not None:
                    conn.sendall(len(reply).to_bytes(2, "big") + reply)
                log(f"query {summary.replace(' -> ', f' from {peer} -> ', 1)} (tcp)")
        except TimeoutError:
            return  # an idle connection: closing it is normal
        except OSError as exc:
            log(f"query from {peer}: {describe_error(exc)} (tcp)")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    server = sub.add_parser(
        "dns-server", help="authoritative DNS (UDP+TCP) for the names of a JSON records file"
    )
    server.add_argument(
        "--records",
        required=True,
        type=Path,
        help='JSON file {"name.": {"A": ["10.0.0.5"], "SRV": ["0 100 80 t."], ...}, ...}'
        ' (or {"name.": ["10.0.0.5", "fd00::5"]}), re-read when it changes',
    )
    server.add_argument("--port", type=int, default=53, help="UDP and TCP port (53; 0: any)")
    server.add_argument(
        "--ttl", type=int, default=TTL, choices=range(0, 86401), metavar="SECONDS",
        help=f"the TTL of every answer ({TTL})",
    )  # fmt: skip
    server.add_argument("--bind", help="address to listen on (default: [::], dual-stack)")
    server.add_argument(
        "--domain",
        default=DEFAULT_DOMAIN,
        help=f"the zone served: unknown names in it are NXDOMAIN, others REFUSED"
        f" ({DEFAULT_DOMAIN})",
    )
    server.set_defaults(run=run_server)

    query = sub.add_parser(
        "dns-query", help="ask a DNS server one question, check the rcode (and answers)"
    )
    query.add_argument("name", help="the name to look up")
    query.add_argument("--server", required=True, help="IP address of the DNS server")
    query.add_argument("--port", type=int, default=53, help="server port (53)")
    query.add_argument(
        "--type", default="A", choices=["A", "AAAA", "SRV", "CNAME"], help="record type (A)"
    )
    query.add_argument("--tcp", action="store_true", help="ask over TCP (default: UDP)")
    query.add_argument("--timeout", type=float, default=2.0, help="seconds (2)")
    query.add_argument(
        "--expect-rcode",
        choices=["NOERROR", "NXDOMAIN", "REFUSED"],
        help="the rcode that means success (default: NOERROR with at least one answer)",
    )
    query.set_defaults(run=run_query)


class _ListenError(Exception):
    pass


def _listen(bind: str | None, port: int) -> tuple[_UDPServer, _TCPServer]:
    """UDP and TCP servers on the same port (with port 0, the one the kernel gives to UDP)."""
    try:
        udp = _UDPServer(bind, port, _UDPHandler)
    except (OSError, ValueError, OverflowError) as exc:
        raise _ListenError(f"cannot listen on udp port {port}: {describe_error(exc)}") from exc
    port = int(udp.server_address[1])
    try:
        tcp = _TCPServer(bind, port, _TCPHandler)
    except (OSError, ValueError, OverflowError) as exc:
        udp.server_close()
        raise _ListenError(f"cannot listen on tcp port {port}: {describe_error(exc)}") from exc
    return udp, tcp


def run_server(args: argparse.Namespace) -> int:
    prog = "dns-server"
    try:
        domain = dns.name.from_text(args.domain)
    except dns.exception.DNSException as exc:
        return fail(prog, f"--domain {args.domain!r}: {exc}")
    try:
        records = Records(args.records, domain, args.ttl)
    except RecordsError as exc:
        return fail(prog, str(exc))
    # with port 0, the UDP port the kernel gives is tried for TCP: again if it is taken there
    for attempt in range(5 if args.port == 0 else 1):
        try:
            udp, tcp = _listen(args.bind, args.port)
            break
        except _ListenError as exc:
            retry = isinstance(exc.__cause__, OSError) and attempt < 4 and args.port == 0
            if not retry:
                return fail(prog, str(exc))
    udp.records = tcp.records = records
    return serve_until_signal(
        [ServerService("udp", udp), ServerService("tcp", tcp)],
        prog,
        ready=[
            f"{prog}: listening on udp {format_address(udp.server_address)}",
            f"{prog}: listening on tcp {format_address(tcp.server_address)}",
            f"{prog}: authoritative for {domain} (ttl {args.ttl}s)",
        ],
    )


def _ask(query: dns.message.Message, server: str, args: argparse.Namespace) -> dns.message.Message:
    if args.tcp:
        return dns.query.tcp(query, server, timeout=args.timeout, port=args.port)
    response = dns.query.udp(query, server, timeout=args.timeout, port=args.port)
    if response.flags & dns.flags.TC:  # as a stub resolver does: the whole answer over TCP
        response = dns.query.tcp(query, server, timeout=args.timeout, port=args.port)
    return response


def run_query(args: argparse.Namespace) -> int:
    prog = "dns-query"
    if args.timeout <= 0:
        return fail(prog, "--timeout must be positive")
    server = strip_brackets(args.server)
    try:
        ipaddress.ip_address(server)
    except ValueError:
        return fail(prog, f"--server: expected an IP address, got {args.server!r}")
    try:
        qname = dns.name.from_text(args.name)
    except dns.exception.DNSException as exc:
        return fail(prog, f"{args.name!r} is not a DNS name: {exc}")
    qtype = dns.rdatatype.from_text(args.type)
    query = dns.message.make_query(qname, qtype)
    where = f"{args.server} port {args.port} ({'tcp' if args.tcp else 'udp'})"
    try:
        response = _ask(query, server, args)
    except (dns.exception.Timeout, TimeoutError):
        return fail(prog, f"{qname} {args.type}: {where}: timed out after {args.timeout:g}s")
    except OSError as exc:
        return fail(prog, f"{qname} {args.type}: {where}: {describe_error(exc, args.timeout)}")
    except (dns.exception.DNSException, EOFError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        return fail(prog, f"{qname} {args.type}: {where}: bad response: {reason}")
    rcode = dns.rcode.to_text(response.rcode())
    answers: list[Any] = [
        rdata for rrset in response.answer if rrset.rdtype == qtype for rdata in rrset
    ]
    shown = " ".join(str(a) for a in answers) if answers else "no answers"
    say(f"{qname} {args.type} -> {rcode}, {shown}")
    expected = args.expect_rcode or "NOERROR"
    if rcode != expected:
        return fail(prog, f"{qname} {args.type}: expected {expected}, got {rcode}")
    if args.expect_rcode is None and not answers:
        return fail(prog, f"{qname} {args.type}: NOERROR but no {args.type} answers")
    return 0
