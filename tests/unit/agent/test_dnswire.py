"""The DNS proxy's wire readers (agent/dnswire.py) against dnspython's full parse: what they
accept, the full parse accepts and reads the same (the question; the rcode, addresses, CNAMEs,
TTLs and rrsets of an answer, as ``answer_lookups`` gives them), for real messages and for
every corruption hypothesis finds; and the common shapes do take the fast path."""

from __future__ import annotations

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rrset
from hypothesis import given, settings
from hypothesis import strategies as st

from ciliary.agent.dnsproxy import _answer, answer_lookups, parse_query
from ciliary.agent.dnswire import read_answer, read_query


def _response(
    qname: str = "www.example.com",
    *answers: tuple[str, int, str, str],
    edns: bool = False,
    authority: tuple[tuple[str, int, str, str], ...] = (),
    additional: tuple[tuple[str, int, str, str], ...] = (),
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
) -> bytes:
    query = dns.message.make_query(qname, "A", use_edns=0 if edns else False)
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    for section, records in (
        (response.answer, answers), (response.authority, authority),
        (response.additional, additional),
    ):  # fmt: skip
        for name, ttl, rdtype, value in records:
            section.append(dns.rrset.from_text(name, ttl, "IN", rdtype, value))
    return response.to_wire()


RESPONSES = [
    _response("www.example.com", ("www.example.com.", 30, "A", "192.0.2.10")),
    _response(
        "www.example.com",
        ("www.example.com.", 300, "CNAME", "edge.cdn.example."),
        ("edge.cdn.example.", 20, "A", "192.0.2.1"),
        ("edge.cdn.example.", 25, "A", "192.0.2.2"),
        ("EDGE.cdn.example.", 10, "A", "192.0.2.2"),
        edns=True,
    ),
    _response(
        "v6.example",
        ("v6.example.", 5, "AAAA", "2001:db8::5"),
        ("v6.example.", 7, "AAAA", "::ffff:192.0.2.1"),
    ),
    _response(
        "www.example.com",
        ("www.example.com.", 60, "A", "192.0.2.3"),
        authority=(("example.com.", 60, "NS", "ns1.example.com."),),
        additional=(("ns1.example.com.", 60, "A", "192.0.2.53"),),
    ),
    _response("nx.example.com", rcode=dns.rcode.NXDOMAIN),
    _response("big.example.com", ("big.example.com.", 0x80000000, "A", "192.0.2.9")),
]
QUERIES = [
    dns.message.make_query("partner.example.com", "A").to_wire(),
    dns.message.make_query("x" * 63 + ".example.com", "AAAA").to_wire(),
    dns.message.make_query("_http._tcp.example.com", "SRV").to_wire(),
]


def _full_answer(wire: bytes) -> object:
    return answer_lookups("www.example.com.", dns.message.from_wire(wire), 1.0)


def _check_answer(wire: bytes) -> bool:
    """Whether the fast reader took ``wire``; when it did, the full parse reads it the same."""
    read = read_answer(wire)
    if read is None:
        return False
    fast = _answer("www.example.com.", read.rcode, read.rrsets, 1.0)
    assert fast == _full_answer(wire)  # raises if the full parse refuses what we took
    return True


def _check_query(wire: bytes) -> bool:
    question = read_query(wire)
    if question is None:
        return False
    query = parse_query(wire)  # raises if the full parse refuses what we took
    assert question.qname == query.question[0].name.to_text()
    assert question.qtypes == (dns.rdatatype.to_text(query.question[0].rdtype),)
    return True


def test_the_common_shapes_take_the_fast_path_and_read_the_same() -> None:
    assert all(_check_answer(wire) for wire in RESPONSES)
    assert all(_check_query(wire) for wire in QUERIES)
    cname = read_answer(RESPONSES[1])
    assert cname is not None
    assert [(r.owner, r.rdtype, r.ttl, r.values) for r in cname.rrsets] == [
        ("www.example.com.", 5, 300, ("edge.cdn.example.",)),
        ("edge.cdn.example.", 1, 10, ("192.0.2.1", "192.0.2.2")),
    ]
    big = read_answer(RESPONSES[-1])
    assert big is not None and big.rrsets[0].ttl == 0  # over 2^31-1: 0, as dnspython


def test_other_shapes_are_left_to_the_full_parse() -> None:
    edns_query = dns.message.make_query("a.example", "A", use_edns=0).to_wire()
    update = dns.message.make_query("a.example", "A")
    update.set_opcode(dns.opcode.UPDATE)
    txt = _response("t.example", ("t.example.", 5, "TXT", '"hello"'))
    extended = dns.message.make_response(dns.message.make_query("a.example", "A", use_edns=0))
    extended.set_rcode(dns.rcode.BADVERS)  # an EDNS extended rcode
    for wire in (edns_query, update.to_wire(), QUERIES[0] + b"\x00", RESPONSES[0]):
        assert read_query(wire) is None
    for wire in (txt, RESPONSES[0] + b"\x00", QUERIES[0][:5]):
        assert read_answer(wire) is None
    read = read_answer(extended.to_wire())
    assert read is not None and read.rcode == dns.rcode.BADVERS == extended.rcode()


def _refused_by_both(wire: bytes) -> None:
    assert read_answer(wire) is None
    try:
        dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return
    raise AssertionError("the full parse takes it: the case tests nothing")


def test_what_the_full_parse_refuses_the_fast_reader_leaves_to_it() -> None:
    # an update's zone must be one SOA question: an answer with the UPDATE opcode is a FormError
    update = bytearray(RESPONSES[0])
    update[2] |= int(dns.opcode.UPDATE) << 3
    _refused_by_both(bytes(update))
    # OPT owned by another name than the root (BadEDNS), or two of them
    opt = dns.message.make_response(dns.message.make_query("a.example", "A", use_edns=0))
    wire = opt.to_wire()
    at = wire.index(b"\x00\x00\x29")  # the root owner of the OPT record, then its type
    _refused_by_both(wire[:at] + b"\xc0\x0c" + wire[at + 1 :])
    twice = bytearray(wire + wire[at:])
    twice[11] = 2  # ARCOUNT
    _refused_by_both(bytes(twice))
    # an A record of 5 bytes, a truncated CNAME target, a pointer forwards
    a = RESPONSES[0]
    _refused_by_both(a[:-6] + b"\x00\x05" + a[-4:] + b"\x00")
    cname = RESPONSES[1]
    _refused_by_both(cname[:40])
    forward = bytearray(a)
    forward[12 + len(b"\x03www\x07example\x03com\x00") + 4] = 0xC0
    forward[12 + len(b"\x03www\x07example\x03com\x00") + 5] = 0x40
    _refused_by_both(bytes(forward))


def test_an_aaaa_of_another_length_is_left_to_the_full_parse() -> None:
    """dns.ipv6.inet_ntoa raises ValueError (not a DNSException) for an AAAA's rdata of another
    length than 16; dnspython's rdata parse turns that into a FormError, and so must the fast
    reader (hypothesis found it: the reader raised instead of answering None)."""
    response = _response("v6.example", ("v6.example.", 5, "AAAA", "2001:db8::5"))
    rdlen_at = response.index(b"\x00\x10\x20\x01\x0d\xb8")  # rdlength 16, then the address
    for length in (0, 4, 15):
        wire = bytearray(response[: rdlen_at + 2 + length])
        wire[rdlen_at : rdlen_at + 2] = length.to_bytes(2, "big")
        _refused_by_both(bytes(wire))


def test_two_cnames_of_one_name_are_left_to_the_full_parse() -> None:
    """dnspython keeps only the last record of a singleton type (and the lowest TTL of both)."""
    query = dns.message.make_query("www.example.com", "A")
    response = dns.message.make_response(query)
    for target, ttl in (("one.example.", 50), ("two.example.", 90)):
        response.answer.append(dns.rrset.from_text("www.example.com.", ttl, "IN", "CNAME", target))
    wire = response.to_wire()
    assert wire.count(b"\x00\x05\x00\x01") == 2  # two CNAME records on the wire
    assert read_answer(wire) is None
    assert _full_answer(wire).cnames == ("two.example.",)  # type: ignore[attr-defined]


@settings(max_examples=400)
@given(
    st.sampled_from(RESPONSES + QUERIES),
    st.lists(
        st.tuples(st.one_of(st.integers(0, 12), st.integers(0, 200)), st.integers(0, 255)),
        max_size=3,
    ),
    st.integers(0, 220),
)
def test_what_the_fast_readers_take_the_full_parse_takes_and_reads_the_same(
    wire: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(wire)
    for at, byte in flips:
        if at < len(data):
            data[at] = byte
    mutated = bytes(data[: max(cut, 0) or len(data)])
    _check_answer(mutated)
    _check_query(mutated)


@given(st.binary(max_size=300))
def test_no_bytes_crash_the_readers(wire: bytes) -> None:
    _check_answer(wire)
    _check_query(wire)
