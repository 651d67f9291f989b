"""What the DNS proxy reads of a message on its hot path, straight off the wire with dnspython's
own wire parser.

Why not ``dns.message.from_wire`` for every message: building a ``Message`` (rrsets, rdata
objects, enum values) cost 90 µs per one-address answer and 30 µs per query on the lab machine,
the largest part of what the proxy added to a pod's query (#15: p50 added at most 1 ms). The
proxy needs little of a message: the question's name and type, the rcode, and the answer
section's addresses, CNAME targets and TTLs.

These readers take the common shapes only, and read them with ``dns.wire.Parser`` and
``dns.name.from_wire_parser`` (bounds, label types, compression pointers: the checks the full
parse makes), so that a message they accept is one the full parse accepts and reads the same.
Anything else is ``None`` and the caller takes the full parse, errors included:
- a query: any opcode but QUERY, a response, more or fewer than one question, any record
  (EDNS included), trailing bytes;
- an answer: any opcode but QUERY, more than one question, a record of a class other than IN
  or of a type other than A, AAAA, CNAME, NS (and one OPT, at the root, in the additional
  section), a name with two CNAMEs (dnspython keeps the last), trailing bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

import dns.exception
import dns.ipv4
import dns.ipv6
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.wire

__all__ = ["WireAnswer", "WireQuestion", "WireRRset", "read_answer", "read_query"]

_HEADER: Final = struct.Struct("!HHHHHH")
_RR: Final = struct.Struct("!HHIH")
_QR: Final = 0x8000
_OPCODE: Final = 0x7800
_IN: Final = 1
_A: Final = int(dns.rdatatype.A)
_AAAA: Final = int(dns.rdatatype.AAAA)
_CNAME: Final = int(dns.rdatatype.CNAME)
_NS: Final = int(dns.rdatatype.NS)
_OPT: Final = int(dns.rdatatype.OPT)
_TO_QNAME: Final = b"\xc0\x0c"  # a compression pointer to offset 12: the question's name
_MAX_TTL: Final = 0x7FFFFFFF  # a larger TTL reads as 0 (RFC 2181 8), as dnspython does


@dataclass(frozen=True, slots=True)
class WireQuestion:
    """A query's question: the name as ``Name.to_text()`` writes it, the type as text."""

    qname: str
    qtypes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WireRRset:
    """The records of one name and type in the answer section, as dnspython groups them."""

    owner: str
    """As ``Name.to_text()`` writes the name (its first spelling in the message)."""
    rdtype: int
    ttl: int
    """The lowest TTL of its records."""
    values: tuple[str, ...]
    """The distinct addresses (A, AAAA) or target names (CNAME, NS), in message order."""


@dataclass(frozen=True, slots=True)
class WireAnswer:
    """A response's rcode (extended by EDNS) and its answer section, grouped by rrset."""

    rcode: int
    rrsets: tuple[WireRRset, ...]


def read_query(wire: bytes) -> WireQuestion | None:
    """The question of a plain one-question query (None: take the full parse)."""
    if len(wire) < _HEADER.size:
        return None
    _id, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(wire)
    if flags & (_QR | _OPCODE) or (qdcount, ancount, nscount, arcount) != (1, 0, 0, 0):
        return None
    parser = dns.wire.Parser(wire, _HEADER.size)
    try:
        qname = dns.name.from_wire_parser(parser)
        qtype, _qclass = parser.get_struct("!HH")
    except dns.exception.DNSException:
        return None
    if parser.remaining():
        return None
    return WireQuestion(qname.to_text(), (dns.rdatatype.to_text(qtype),))


def _value(parser: dns.wire.Parser, rdtype: int, rdlen: int) -> str | None:
    """The rdata of an A, AAAA, CNAME or NS record as text (None: another type); raises
    ``DNSException`` where dnspython's rdata parse would: as ``dns.rdata.from_wire_parser``, any
    other error of the rdata's reading is a ``FormError`` (an AAAA of another length than 16 is a
    ``ValueError`` of ``dns.ipv6.inet_ntoa``)."""
    try:
        with parser.restrict_to(rdlen):
            if rdtype == _A:
                return dns.ipv4.inet_ntoa(parser.get_remaining())
            if rdtype == _AAAA:
                return dns.ipv6.inet_ntoa(parser.get_remaining())
            if rdtype in (_CNAME, _NS):
                return dns.name.from_wire_parser(parser).to_text()
            parser.get_remaining()  # leave the block consumed: restrict_to checks it
            return None
    except dns.exception.DNSException:
        raise
    except Exception as err:  # dnspython's ExceptionWrapper(FormError), which is untyped
        raise dns.exception.FormError(str(err)) from err  # type: ignore[no-untyped-call]


def read_answer(wire: bytes) -> WireAnswer | None:
    """The rcode and answer records of a response of the common shape (None: take the full
    parse, which also says what is wrong with a malformed one)."""
    if len(wire) < _HEADER.size:
        return None
    _id, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(wire)
    if flags & _OPCODE or qdcount > 1:
        return None
    parser = dns.wire.Parser(wire, _HEADER.size)
    rrsets: dict[tuple[str, int], tuple[str, dict[str, None], int]] = {}
    extended = 0
    seen_opt = False
    question: dns.name.Name | None = None
    question_text: str | None = None
    try:
        if qdcount:
            question = dns.name.from_wire_parser(parser)
            parser.get_struct("!HH")
        for section, count in ((1, ancount), (2, nscount), (3, arcount)):
            for _ in range(count):
                if question is not None and wire[parser.current : parser.current + 2] == _TO_QNAME:
                    # a pointer to the question's name, which reads before this record: the
                    # same name from_wire_parser would give, without reading it again
                    owner = question
                    parser.seek(parser.current + 2)
                else:
                    owner = dns.name.from_wire_parser(parser)
                rdtype, rdclass, ttl, rdlen = parser.get_struct(_RR.format)
                if rdtype == _OPT:
                    if section != 3 or seen_opt or owner != dns.name.root:
                        return None  # dnspython: BadEDNS
                    seen_opt = True
                    extended = ttl >> 24
                    with parser.restrict_to(rdlen):  # its options, as dnspython reads them
                        dns.rdata.from_wire_parser(rdclass, rdtype, parser)
                    continue
                if rdclass != _IN:
                    return None
                value = _value(parser, rdtype, rdlen)
                if value is None:
                    return None
                if section != 1:
                    continue
                if owner is not question:
                    text = owner.to_text()
                elif question_text is None:
                    text = question_text = owner.to_text()
                else:
                    text = question_text
                key = (text.lower(), rdtype)
                ttl = 0 if ttl > _MAX_TTL else ttl
                found = rrsets.get(key)
                if found is None:
                    rrsets[key] = (text, {value: None}, ttl)
                    continue
                if rdtype == _CNAME and value not in found[1]:
                    return None  # a singleton type: dnspython keeps the last of them
                found[1][value] = None
                rrsets[key] = (found[0], found[1], min(found[2], ttl))
    except dns.exception.DNSException:
        return None
    if parser.remaining():
        return None
    found_rrsets = tuple(
        WireRRset(owner, rdtype, ttl, tuple(values))
        for (_lower, rdtype), (owner, values, ttl) in rrsets.items()
    )
    return WireAnswer((flags & 0xF) | (extended << 4), found_rrsets)
