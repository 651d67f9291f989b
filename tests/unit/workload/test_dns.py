"""``dns-server`` and ``dns-query`` on loopback: the server in a subprocess with a temporary
records file, the client in-process; answers are also checked with dnspython directly.

Every rcode path (NOERROR, NODATA, NXDOMAIN, REFUSED, FORMERR, NOTIMP), both transports, both
families, truncation, reloading the file, and the client's exit codes and one-line errors.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from ciliary.workload import dns as dnsw

from .test_workloads import Server, closed_port, hosts, run, server

pytestmark = pytest.mark.timeout(60)

DOMAIN = dns.name.from_text("cluster.local")
RECORDS = {
    "web.shop.pod.cluster.local.": ["10.200.0.5", "fd00:10:200::5"],
    "10-200-0-5.shop.pod.cluster.local.": ["10.200.0.5"],
    "db.shop.pod.cluster.local": ["10.200.0.6"],  # no trailing dot: absolute all the same
    "elsewhere.example.": ["192.0.2.1"],  # outside the domain: ignored
}


def write_atomically(path: Path, records: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records))
    os.replace(tmp, path)


@pytest.fixture
def records_file(tmp_path: Path) -> Path:
    path = tmp_path / "records.json"
    write_atomically(path, RECORDS)
    return path


@pytest.fixture
def dns_server(records_file: Path) -> Iterator[tuple[Server, int]]:
    with server("dns-server", "--records", str(records_file), "--port", "0") as srv:
        port = srv.port("udp")
        assert srv.port("tcp") == port
        srv.wait_for(r"dns-server: authoritative for cluster\.local\. \(ttl 30s\)")
        yield srv, port


def ask(
    host: str, port: int, name: str, rdtype: str = "A", *, tcp: bool = False
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(query, host, timeout=5, port=port)
    return dns.query.udp(query, host, timeout=5, port=port)


def addresses(response: dns.message.Message) -> list[str]:
    return sorted(str(rd) for rrset in response.answer for rd in rrset)


# ---- the server, seen with dnspython -----------------------------------------------------------


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("host", hosts())
def test_a_and_aaaa_answers(dns_server: tuple[Server, int], host: str, tcp: bool) -> None:
    srv, port = dns_server
    resp = ask(host, port, "web.shop.pod.cluster.local", "A", tcp=tcp)
    assert resp.rcode() == dns.rcode.NOERROR
    assert resp.flags & dns.flags.AA and not resp.flags & dns.flags.RA
    assert addresses(resp) == ["10.200.0.5"]
    assert [rrset.ttl for rrset in resp.answer] == [30]
    resp = ask(host, port, "web.shop.pod.cluster.local", "AAAA", tcp=tcp)
    assert addresses(resp) == ["fd00:10:200::5"]
    assert addresses(ask(host, port, "10-200-0-5.shop.pod.cluster.local", tcp=tcp)) == [
        "10.200.0.5"
    ]
    assert addresses(ask(host, port, "db.shop.pod.cluster.local", tcp=tcp)) == ["10.200.0.6"]
    peer = re.escape(f"[{host}]" if ":" in host else host)
    suffix = r" \(tcp\)" if tcp else ""
    srv.wait_for(
        rf"query A web\.shop\.pod\.cluster\.local\. from {peer}:\d+ -> NOERROR 1 answer{suffix}$"
    )
    status, rest, err = srv.finish()
    assert (status, err) == (0, "")
    assert "SIGTERM received, stopping" in rest


def test_names_are_case_insensitive_and_echoed(dns_server: tuple[Server, int]) -> None:
    _, port = dns_server
    resp = ask("127.0.0.1", port, "WEB.Shop.POD.cluster.local")
    assert addresses(resp) == ["10.200.0.5"]
    assert resp.question[0].name.to_text() == "WEB.Shop.POD.cluster.local."


def test_negative_answers(dns_server: tuple[Server, int]) -> None:
    srv, port = dns_server
    # unknown name under the domain: NXDOMAIN, authoritative, with the SOA for caching
    resp = ask("127.0.0.1", port, "nobody.shop.pod.cluster.local")
    assert resp.rcode() == dns.rcode.NXDOMAIN and resp.flags & dns.flags.AA
    assert not resp.answer
    assert [r.rdtype for r in resp.authority] == [dns.rdatatype.SOA]
    assert resp.authority[0].name == DOMAIN
    # a known name without that type, and a name between the domain and a record: NODATA
    for name, rdtype in (("db.shop.pod.cluster.local", "AAAA"), ("shop.pod.cluster.local", "A")):
        resp = ask("127.0.0.1", port, name, rdtype)
        assert (resp.rcode(), resp.answer) == (dns.rcode.NOERROR, [])
        assert [r.rdtype for r in resp.authority] == [dns.rdatatype.SOA]
    # the SOA of the apex itself
    resp = ask("127.0.0.1", port, "cluster.local", "SOA")
    assert resp.rcode() == dns.rcode.NOERROR and len(resp.answer) == 1
    # names outside the domain are refused, also when the file lists them: no recursion
    for name in ("example.com", "elsewhere.example", "local"):
        resp = ask("127.0.0.1", port, name)
        assert resp.rcode() == dns.rcode.REFUSED
        assert not resp.answer and not resp.flags & dns.flags.AA
    srv.wait_for(r"query A nobody\.shop\.pod\.cluster\.local\. from \S+ -> NXDOMAIN$")
    srv.wait_for(r"query A example\.com\. from 127\.0\.0\.1:\d+ -> REFUSED$")


def test_several_queries_on_one_tcp_connection(dns_server: tuple[Server, int]) -> None:
    _, port = dns_server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for name, expected in (("web", "10.200.0.5"), ("db", "10.200.0.6")):
            query = dns.message.make_query(f"{name}.shop.pod.cluster.local", "A")
            dns.query.send_tcp(sock, query)
            resp, _ = dns.query.receive_tcp(sock, time.time() + 5)
            assert resp.id == query.id and addresses(resp) == [expected]


def test_reload_when_the_file_changes(dns_server: tuple[Server, int], records_file: Path) -> None:
    srv, port = dns_server
    assert ask("127.0.0.1", port, "new.default.pod.cluster.local").rcode() == dns.rcode.NXDOMAIN
    write_atomically(records_file, {"new.default.pod.cluster.local.": ["10.200.0.9"]})
    resp = ask("127.0.0.1", port, "new.default.pod.cluster.local")
    assert addresses(resp) == ["10.200.0.9"]
    assert ask("127.0.0.1", port, "web.shop.pod.cluster.local").rcode() == dns.rcode.NXDOMAIN
    srv.wait_for(rf"records: 1 name from {re.escape(str(records_file))}$")
    # a broken file keeps the names known (and says so, once)
    write_atomically(records_file, {"x.cluster.local.": "not a list"})
    assert addresses(ask("127.0.0.1", port, "new.default.pod.cluster.local")) == ["10.200.0.9"]
    ask("127.0.0.1", port, "new.default.pod.cluster.local")
    srv.wait_for(r"records: .*expected a list of IP addresses.*; keeping 1 name$")
    # a rewrite in place (no rename) is seen too
    records_file.write_text(json.dumps({"later.cluster.local": ["fd00::7"]}))
    later = ask("127.0.0.1", port, "later.cluster.local", "AAAA")
    assert addresses(later) == ["fd00::7"]
    status, rest, _ = srv.finish()
    assert status == 0
    log = "\n".join([*srv.lines, rest])
    assert log.count("; keeping 1 name") == 1, log
    assert log.count("records: 1 name from") == 2, log  # the two good rewrites


def test_malformed_and_unsupported_messages() -> None:
    zone, outside = dnsw.parse_records(json.dumps(RECORDS), DOMAIN, "records.json")
    assert outside == ["elsewhere.example."]
    # garbage with a header: FORMERR with the same ID; shorter than a header or a response:
    # no answer at all
    reply, summary = dnsw.respond(
        zone, b"\x12\x34" + b"\x01\x00" + b"\x00\x05" + b"\x00" * 6, udp=True
    )
    assert reply is not None and summary.endswith("-> FORMERR")
    parsed = dns.message.from_wire(reply)
    assert (parsed.id, parsed.rcode()) == (0x1234, dns.rcode.FORMERR)
    assert dnsw.respond(zone, b"\x12", udp=True)[0] is None
    response = dns.message.make_response(dns.message.make_query("web.cluster.local", "A"))
    assert dnsw.respond(zone, response.to_wire(), udp=True)[0] is None
    # another opcode: NOTIMP
    notify = dns.message.make_query("cluster.local", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    reply, _ = dnsw.respond(zone, notify.to_wire(), udp=False)
    assert reply is not None and dns.message.from_wire(reply).rcode() == dns.rcode.NOTIMP


def test_udp_truncation_and_client_retry_over_tcp(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    many = [f"fd00::{i:x}" for i in range(1, 60)]  # 59 AAAA records: far more than 512 bytes
    path = tmp_path / "records.json"
    write_atomically(path, {"big.cluster.local.": many})
    zone, _ = dnsw.parse_records(path.read_text(), DOMAIN, str(path))
    wire = dns.message.make_query("big.cluster.local", "AAAA").to_wire()
    reply, summary = dnsw.respond(zone, wire, udp=True)
    assert reply is not None and len(reply) <= 512 and summary.endswith("(truncated)")
    truncated = dns.message.from_wire(reply)
    assert truncated.flags & dns.flags.TC and not truncated.answer
    edns = dns.message.make_query("big.cluster.local", "AAAA", use_edns=0, payload=4096)
    reply, _ = dnsw.respond(zone, edns.to_wire(), udp=True)
    assert reply is not None and len(addresses(dns.message.from_wire(reply))) == 59
    with server("dns-server", "--records", str(path), "--port", "0", "--bind", "127.0.0.1") as srv:
        port = srv.port("udp")
        status, out, err = run(
            capsys, "dns-query", "big.cluster.local", "--server", "127.0.0.1",
            "--port", str(port), "--type", "AAAA",
        )  # fmt: skip
        assert (status, err) == (0, "")
        assert len(out.split("NOERROR, ")[1].split()) == 59
        srv.wait_for(r"query AAAA big\.cluster\.local\. from .* \(truncated\)$")
        srv.wait_for(r"query AAAA big\.cluster\.local\. from .*NOERROR 59 answers \(tcp\)$")


# ---- start-up errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the records file: no such file"),
        ("{not json", "not JSON"),
        ("[]", "expected a JSON object"),
        ('{"a..b.cluster.local.": ["10.0.0.1"]}', "is not a DNS name"),
        ('{"a.cluster.local.": ["10.0.0.300"]}', "does not appear to be an IPv4 or IPv6 address"),
    ],
)
def test_bad_records_file_fails_at_start(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "records.json"
    if content is not None:
        path.write_text(content)
    with server("dns-server", "--records", str(path), "--port", "0") as srv:
        srv.proc.wait(timeout=20)
        status, out, err = srv.finish()
    assert status == 1 and out == ""
    assert err.startswith(f"dns-server: {path}: ") and err.count("\n") == 1
    assert message in err


def test_port_in_use_fails_at_start(records_file: Path) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as taken:
        taken.bind(("::", 0))
        port = taken.getsockname()[1]
        with server("dns-server", "--records", str(records_file), "--port", str(port)) as srv:
            srv.proc.wait(timeout=20)
            status, _, err = srv.finish()
    assert status == 1
    assert err == f"dns-server: cannot listen on udp port {port}: address already in use\n"


# ---- the client ---------------------------------------------------------------------------------


def test_client_exit_codes(
    dns_server: tuple[Server, int], capsys: pytest.CaptureFixture[str]
) -> None:
    _, port = dns_server
    base = ["--server", "127.0.0.1", "--port", str(port)]

    status, out, err = run(capsys, "dns-query", "web.shop.pod.cluster.local", *base)
    assert (status, out, err) == (0, "web.shop.pod.cluster.local. A -> NOERROR, 10.200.0.5\n", "")
    status, out, err = run(
        capsys, "dns-query", "web.shop.pod.cluster.local", *base, "--type", "AAAA", "--tcp"
    )
    assert (status, out, err) == (
        0,
        "web.shop.pod.cluster.local. AAAA -> NOERROR, fd00:10:200::5\n",
        "",
    )

    status, out, err = run(capsys, "dns-query", "nobody.cluster.local", *base)
    assert (status, out) == (1, "nobody.cluster.local. A -> NXDOMAIN, no answers\n")
    assert err == "dns-query: nobody.cluster.local. A: expected NOERROR, got NXDOMAIN\n"
    status, _, err = run(
        capsys, "dns-query", "nobody.cluster.local", *base, "--expect-rcode", "NXDOMAIN"
    )
    assert (status, err) == (0, "")
    status, out, err = run(capsys, "dns-query", "example.com", *base, "--expect-rcode", "REFUSED")
    assert (status, out, err) == (0, "example.com. A -> REFUSED, no answers\n", "")
    status, _, err = run(
        capsys, "dns-query", "web.shop.pod.cluster.local", *base, "--expect-rcode", "NXDOMAIN"
    )
    assert status == 1 and "expected NXDOMAIN, got NOERROR" in err

    # NOERROR without answers: a failure by default, a success when NOERROR is asked for
    status, out, err = run(
        capsys, "dns-query", "db.shop.pod.cluster.local", *base, "--type", "AAAA"
    )
    assert (status, out) == (1, "db.shop.pod.cluster.local. AAAA -> NOERROR, no answers\n")
    assert err == "dns-query: db.shop.pod.cluster.local. AAAA: NOERROR but no AAAA answers\n"
    status, _, _ = run(
        capsys, "dns-query", "db.shop.pod.cluster.local", *base,
        "--type", "AAAA", "--expect-rcode", "NOERROR",
    )  # fmt: skip
    assert status == 0


@pytest.mark.parametrize("host", hosts())
def test_client_times_out(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as silent:  # receives, never answers
        silent.bind((host, 0))
        port = silent.getsockname()[1]
        start = time.monotonic()
        status, out, err = run(
            capsys, "dns-query", "a.cluster.local", "--server", host, "--port", str(port),
            "--timeout", "0.3",
        )  # fmt: skip
    assert time.monotonic() - start < 5
    assert (status, out) == (1, "")
    assert err == f"dns-query: a.cluster.local. A: {host} port {port} (udp): timed out after 0.3s\n"


def test_client_errors(capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()
    status, out, err = run(
        capsys,
        "dns-query",
        "a.cluster.local",
        "--server",
        "127.0.0.1",
        "--port",
        str(port),
        "--tcp",
    )
    assert (status, out) == (1, "")
    assert (
        err == f"dns-query: a.cluster.local. A: 127.0.0.1 port {port} (tcp): connection refused\n"
    )
    status, _, err = run(capsys, "dns-query", "a.cluster.local", "--server", "dns.example")
    assert (status, err) == (1, "dns-query: --server: expected an IP address, got 'dns.example'\n")
    status, _, err = run(capsys, "dns-query", "a..b", "--server", "127.0.0.1")
    assert status == 1 and err.startswith("dns-query: 'a..b' is not a DNS name: ")
    status, _, err = run(capsys, "dns-query", "a.b", "--server", "127.0.0.1", "--timeout", "0")
    assert (status, err) == (1, "dns-query: --timeout must be positive\n")
    assert run(capsys, "dns-query", "a.b", "--server", "127.0.0.1", "--type", "MX")[0] == 2
    assert run(capsys, "dns-query", "a.b")[0] == 2  # --server is required


# ---- services: SRV, CNAME, NODATA (the cluster DNS controller's record types) ----------------

SERVICE_RECORDS = {
    "web.shop.svc.cluster.local.": {"A": ["10.96.0.20"], "AAAA": ["fd00:10:96::14"]},
    "_http._tcp.web.shop.svc.cluster.local.": {"SRV": ["0 100 80 web.shop.svc.cluster.local."]},
    "db.shop.svc.cluster.local.": {"A": ["10.200.0.7", "10.200.0.8"]},
    "db-0.db.shop.svc.cluster.local.": {"A": ["10.200.0.7"]},
    "10-200-0-8.db.shop.svc.cluster.local.": {"A": ["10.200.0.8"]},
    "_pg._tcp.db.shop.svc.cluster.local.": {
        "SRV": [
            "0 50 5432 db-0.db.shop.svc.cluster.local.",
            "0 50 5432 10-200-0-8.db.shop.svc.cluster.local.",
        ]
    },
    "mail.shop.svc.cluster.local.": {"CNAME": ["smtp.example.com."]},
    "front.shop.svc.cluster.local.": {"CNAME": ["web.shop.svc.cluster.local."]},
    "dangling.shop.svc.cluster.local.": {"CNAME": ["nothing.shop.svc.cluster.local."]},
    "old.shop.pod.cluster.local.": ["10.200.0.9"],  # the address-list shorthand still reads
}


@pytest.fixture
def service_dns() -> Iterator[int]:
    """The server's UDP and TCP listeners in this process, on loopback, with SERVICE_RECORDS."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "records.json"
        write_atomically(path, SERVICE_RECORDS)
        udp, tcp = dnsw._listen("127.0.0.1", 0)
        udp.records = tcp.records = dnsw.Records(path, DOMAIN)
        threads = [
            threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True) for s in (udp, tcp)
        ]
        for t in threads:
            t.start()
        try:
            yield int(udp.server_address[1])
        finally:
            for s in (udp, tcp):
                s.shutdown()
                s.server_close()


def rdatas(section: list[dns.rrset.RRset], rdtype: str) -> list[str]:
    wanted = dns.rdatatype.from_text(rdtype)
    return sorted(str(rd) for rrset in section if rrset.rdtype == wanted for rd in rrset)


def test_srv_answers_with_target_addresses(service_dns: int) -> None:
    resp = ask("127.0.0.1", service_dns, "_http._tcp.web.shop.svc.cluster.local", "SRV")
    assert resp.rcode() == dns.rcode.NOERROR and resp.flags & dns.flags.AA
    assert rdatas(resp.answer, "SRV") == ["0 100 80 web.shop.svc.cluster.local."]
    assert rdatas(resp.additional, "A") == ["10.96.0.20"]
    assert rdatas(resp.additional, "AAAA") == ["fd00:10:96::14"]
    resp = ask("127.0.0.1", service_dns, "_pg._tcp.db.shop.svc.cluster.local", "SRV", tcp=True)
    assert rdatas(resp.answer, "SRV") == [
        "0 50 5432 10-200-0-8.db.shop.svc.cluster.local.",
        "0 50 5432 db-0.db.shop.svc.cluster.local.",
    ]
    assert rdatas(resp.additional, "A") == ["10.200.0.7", "10.200.0.8"]
    # a headless Service's name: its endpoints; an endpoint's own name
    assert addresses(ask("127.0.0.1", service_dns, "db.shop.svc.cluster.local")) == [
        "10.200.0.7",
        "10.200.0.8",
    ]
    assert addresses(ask("127.0.0.1", service_dns, "db-0.db.shop.svc.cluster.local")) == [
        "10.200.0.7"
    ]
    assert addresses(ask("127.0.0.1", service_dns, "old.shop.pod.cluster.local")) == ["10.200.0.9"]


def test_cname_answers_every_type_and_is_followed_in_the_zone(service_dns: int) -> None:
    for rdtype in ("A", "AAAA", "CNAME", "SRV"):
        resp = ask("127.0.0.1", service_dns, "mail.shop.svc.cluster.local", rdtype)
        assert resp.rcode() == dns.rcode.NOERROR
        assert rdatas(resp.answer, "CNAME") == ["smtp.example.com."]
        assert len(resp.answer) == 1  # outside the zone: the client follows it
    resp = ask("127.0.0.1", service_dns, "front.shop.svc.cluster.local", "A")
    assert rdatas(resp.answer, "CNAME") == ["web.shop.svc.cluster.local."]
    assert rdatas(resp.answer, "A") == ["10.96.0.20"]
    resp = ask("127.0.0.1", service_dns, "dangling.shop.svc.cluster.local", "A")
    assert resp.rcode() == dns.rcode.NXDOMAIN  # RFC 6604: the chain's last name
    assert rdatas(resp.answer, "CNAME") == ["nothing.shop.svc.cluster.local."]


def test_nodata_and_nxdomain_for_services(service_dns: int) -> None:
    for name, rdtype in (
        ("web.shop.svc.cluster.local", "SRV"),  # exists, other types
        ("_http._tcp.web.shop.svc.cluster.local", "A"),
        ("_tcp.web.shop.svc.cluster.local", "SRV"),  # between a record and the domain
        ("svc.cluster.local", "A"),
    ):
        resp = ask("127.0.0.1", service_dns, name, rdtype)
        assert (resp.rcode(), resp.answer) == (dns.rcode.NOERROR, []), name
        assert [r.rdtype for r in resp.authority] == [dns.rdatatype.SOA]
    resp = ask("127.0.0.1", service_dns, "_ftp._tcp.web.shop.svc.cluster.local", "SRV")
    assert resp.rcode() == dns.rcode.NXDOMAIN
    assert [r.rdtype for r in resp.authority] == [dns.rdatatype.SOA]


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (
            {"a.cluster.local.": {"MX": ["10 b."]}},
            "record type 'MX': expected one of A, AAAA, SRV, CNAME",
        ),
        ({"a.cluster.local.": {"SRV": ["0 100 x."]}}, "SRV '0 100 x.'"),
        (
            {"a.cluster.local.": {"CNAME": ["b."], "A": ["10.0.0.1"]}},
            "a CNAME must be the name's only",
        ),
        ({"a.cluster.local.": {"A": "10.0.0.1"}}, "A: expected a list of record texts"),
        ({"a.cluster.local.": 5}, "expected a list of IP addresses or an object of record types"),
    ],
)
def test_bad_typed_records_are_refused_naming_the_name(records: object, message: str) -> None:
    with pytest.raises(dnsw.RecordsError) as err:
        dnsw.parse_records(json.dumps(records), DOMAIN, "records.json")
    assert str(err.value).startswith("records.json: 'a.cluster.local.': ") and message in str(
        err.value
    )


def test_the_ttl_is_the_servers_choice(tmp_path: Path) -> None:
    path = tmp_path / "records.json"
    write_atomically(path, {"web.shop.svc.cluster.local.": ["10.96.0.20"]})
    zone = dnsw.Records(path, DOMAIN, ttl=2).zone()
    query = dns.message.make_query("web.shop.svc.cluster.local", "A")
    response, _ = dnsw.answer(zone, query)
    assert [rrset.ttl for rrset in response.answer] == [2]
    missing, _ = dnsw.answer(zone, dns.message.make_query("nope.shop.svc.cluster.local", "A"))
    assert missing.authority[0].ttl == 2  # the SOA of a negative answer too
    default = dnsw.Records(path, DOMAIN).zone()
    assert dnsw.answer(default, query)[0].answer[0].ttl == dnsw.TTL == 30
