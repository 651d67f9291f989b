"""The DNS proxy's decisions without sockets (agent/dnsproxy.py): allowed names forwarded,
others REFUSED (or NXDOMAIN with nameError), matchPattern through the real policy engine, the
DNS cache updated and the datapath's update awaited BEFORE the answer is released (bounded by the
maximum delay), answers parsed into cache entries, malformed queries answered FORMERR, a
failing server SERVFAIL; each query and answer an event."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv6Address, ip_address

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from ciliary.agent import dnsproxy
from ciliary.agent.dnsproxy import (
    DNSProxy,
    EndpointDNSRules,
    MalformedQueryError,
    answer_lookups,
    parse_query,
)
from ciliary.agent.flows import FlowDecoder
from ciliary.agent.main import _parser
from ciliary.core.flow import L7FlowType, TrafficDirection, Verdict
from ciliary.core.l7record import L7Record
from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.metrics import FlowMetrics
from ciliary.policy.fqdn import DNSCache, DNSLookup
from ciliary.policy.mapstate import PROTO_UDP
from tests.unit.policy.engine.lab import Lab, pod
from tests.unit.policy.engine.test_l7_dns import CLIENT, DNS, DNS_RULES, OTHER

POD = ("10.0.0.2", 40000)
SERVER = ("10.96.0.10", 53)
PROXY_PORT = 10001
ADDRESSES = {"10.0.0.2": CLIENT, "10.0.0.3": OTHER}


class Rules:
    """The agent side: the engine's policies, the DNS cache and a datapath update that takes
    ``delay`` seconds; ``log`` says in which order things happened."""

    def __init__(self, delay: float = 0.0) -> None:
        self.lab = Lab(CLIENT, OTHER, DNS, pod(1003, "default", app="x"))
        self.lab.apply(DNS_RULES)
        self.cache = DNSCache()
        self.delay = delay
        self.log: list[str] = []
        self.rules = EndpointDNSRules(
            endpoint_at=lambda ip: ADDRESSES[str(ip)].id if str(ip) in ADDRESSES else None,
            policy_of=lambda ep: self.lab.policy(next(i for i in ADDRESSES.values() if i.id == ep)),
            identity_of=lambda ip: DNS.id if str(ip) == SERVER[0] else 2,
            update=self.update,
        )

    async def update(self, lookups: list[DNSLookup]) -> None:
        await asyncio.sleep(self.delay)
        self.cache.load(lookups)
        self.log.append("maps updated")


def answer_for(query_wire: bytes, *addresses: str, ttl: int = 60) -> bytes:
    query = dns.message.from_wire(query_wire)
    response = dns.message.make_response(query)
    name = query.question[0].name
    for address in addresses:
        rdtype = "AAAA" if ":" in address else "A"
        response.answer.append(dns.rrset.from_text(name, ttl, "IN", rdtype, address))
    return response.to_wire()


def make_proxy(rules: Rules, **kw: object) -> tuple[DNSProxy, list[L7Record]]:
    events: list[L7Record] = []
    proxy = DNSProxy(PROXY_PORT, rules.rules, on_event=events.append, **kw)  # type: ignore[arg-type]
    return proxy, events


def ask(
    proxy: DNSProxy,
    rules: Rules,
    name: str,
    *addresses: str,
    source: tuple[str, int] = POD,
    dest: tuple[str, int] = SERVER,
) -> tuple[dns.message.Message, list[str]]:
    forwarded: list[str] = []

    async def forward(wire: bytes, pod_addr: tuple[str, int], server: tuple[str, int]) -> bytes:
        assert (pod_addr, server) == (source, dest)
        forwarded.append(dns.message.from_wire(wire).question[0].name.to_text())
        return answer_for(wire, *addresses)

    async def run() -> bytes | None:
        wire = dns.message.make_query(name, "A").to_wire()
        reply = await proxy.handle(wire, source, dest, "UDP", forward)
        rules.log.append("answer released")
        return reply

    reply = asyncio.run(run())
    assert reply is not None
    return dns.message.from_wire(reply), forwarded


def test_an_allowed_name_is_forwarded_and_its_answer_cached_before_release() -> None:
    rules = Rules(delay=0.02)
    proxy, events = make_proxy(rules)
    response, forwarded = ask(proxy, rules, "partner.example.com.", "192.0.2.7")
    assert forwarded == ["partner.example.com."]
    assert response.rcode() == dns.rcode.NOERROR
    assert [rd.address for rd in response.answer[0]] == ["192.0.2.7"]
    assert rules.cache.lookup("partner.example.com") == ["192.0.2.7"]
    # the order upstream guarantees: the datapath allows the IPs, then the pod sees them
    assert rules.log == ["maps updated", "answer released"]
    # Hubble's two L7 records: the pod's request, the server's answer back to it
    request, answer = events
    assert (request.kind, request.verdict, answer.kind, answer.verdict) == (
        L7FlowType.REQUEST, Verdict.FORWARDED, L7FlowType.RESPONSE, Verdict.FORWARDED,
    )  # fmt: skip
    assert request.direction == answer.direction == TrafficDirection.EGRESS
    assert (str(request.source.ip), request.source.port) == POD == (
        str(answer.destination.ip), answer.destination.port,
    )  # fmt: skip
    assert (str(request.destination.ip), request.destination.port) == SERVER
    assert request.transport == 17 and request.latency_ns == 0
    assert request.dns is not None and answer.dns is not None
    assert (request.dns.query, request.dns.qtypes, request.dns.ips) == (
        "partner.example.com.", ("A",), (),
    )  # fmt: skip
    assert (answer.dns.ips, answer.dns.ttl, answer.dns.rrtypes, answer.dns.rcode) == (
        ("192.0.2.7",), 60, ("A",), 0,
    )  # fmt: skip
    assert answer.latency_ns > 0 and answer.dns.observation_source == "proxy"
    decision = proxy.decide(POD, SERVER, "UDP", "partner.example.com.")
    assert (decision.endpoint, decision.rules) == (
        CLIENT.id, ("CiliumNetworkPolicy default/dns rule 0 egress[0]",),
    )  # fmt: skip
    assert proxy.stats.late_releases == 0


def test_the_answer_waits_no_longer_than_the_maximum_delay() -> None:
    rules = Rules(delay=0.3)
    proxy, _ = make_proxy(rules, response_max_delay_s=0.05)

    async def run() -> None:
        async def forward(wire: bytes, *_: object) -> bytes:
            return answer_for(wire, "192.0.2.9")

        wire = dns.message.make_query("partner.example.com", "A").to_wire()
        reply = await proxy.handle(wire, POD, SERVER, "UDP", forward)
        assert reply is not None
        rules.log.append("answer released")
        await asyncio.sleep(0.4)  # the update goes on alone

    asyncio.run(run())
    assert rules.log == ["answer released", "maps updated"]
    assert proxy.stats.late_releases == 1
    assert rules.cache.lookup("partner.example.com") == ["192.0.2.9"]


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("docs.cilium.io", True),  # matchPattern *.cilium.io
        ("a.docs.cilium.io", False),
        ("cilium.io", False),
        ("evil.example.com", False),
    ],
)
def test_match_pattern_decides(name: str, allowed: bool) -> None:
    rules = Rules()
    proxy, events = make_proxy(rules)
    response, forwarded = ask(proxy, rules, name, "192.0.2.1")
    assert (response.rcode() == dns.rcode.NOERROR) is allowed
    assert bool(forwarded) is allowed
    assert bool(rules.cache.names()) is allowed
    assert events[0].verdict == (Verdict.FORWARDED if allowed else Verdict.DROPPED)


def test_a_disallowed_name_is_refused_or_name_error_and_never_forwarded() -> None:
    for code, rcode in (("refused", dns.rcode.REFUSED), ("nameError", dns.rcode.NXDOMAIN)):
        rules = Rules()
        proxy, events = make_proxy(rules, reject_code=code)
        response, forwarded = ask(proxy, rules, "evil.example.com", "192.0.2.66")
        assert response.rcode() == rcode and not response.answer
        assert response.question[0].name.to_text() == "evil.example.com."
        assert forwarded == [] and rules.cache.names() == [] and rules.log == ["answer released"]
        assert [(e.kind, e.verdict) for e in events] == [(L7FlowType.REQUEST, Verdict.DROPPED)]
        assert proxy.decide(POD, SERVER, "UDP", "evil.example.com.").reason == "name not allowed"
        assert proxy.stats.refused == 1
    with pytest.raises(ValueError, match="reject-response-code 'servfail'"):
        make_proxy(Rules(), reject_code="servfail")


def test_unknown_sources_other_servers_and_direct_queries_are_refused() -> None:
    rules = Rules()
    proxy, events = make_proxy(rules)
    for source, dest, reason in (
        (("10.0.0.9", 5000), SERVER, "10.0.0.9 is no endpoint of this node"),
        (POD, ("10.96.0.99", 53), "default deny"),  # a server its rules do not name
        (POD, ("10.0.0.1", PROXY_PORT), "not redirected: no original destination to forward to"),
    ):
        response, forwarded = ask(proxy, rules, "partner.example.com", source=source, dest=dest)
        assert response.rcode() == dns.rcode.REFUSED and not forwarded
        assert events[-1].verdict == Verdict.DROPPED
        assert proxy.decide(source, dest, "UDP", "partner.example.com.").reason == reason
    # an endpoint no rule restricts: every name passes (no L7 rule on its entry)
    response, forwarded = ask(proxy, rules, "evil.example.com", "192.0.2.3", source=("10.0.0.3", 1))
    assert response.rcode() == dns.rcode.NOERROR and forwarded


def test_answers_become_cache_entries() -> None:
    query = dns.message.make_query("www.example.com", "A")
    response = dns.message.make_response(query)
    response.answer.append(
        dns.rrset.from_text("www.example.com.", 300, "IN", "CNAME", "edge.cdn.example.")
    )
    response.answer.append(
        dns.rrset.from_text("edge.cdn.example.", 20, "IN", "A", "192.0.2.1", "192.0.2.2")
    )
    found = answer_lookups("www.example.com.", response, 1000.0)
    assert found.ips == ("192.0.2.1", "192.0.2.2") and found.ttl == 20
    assert found.cnames == ("edge.cdn.example.",) and found.rrtypes == ("CNAME", "A")
    assert found.lookups == (
        DNSLookup("www.example.com.", ("192.0.2.1", "192.0.2.2"), 20, 1000.0),
        DNSLookup("edge.cdn.example.", ("192.0.2.1", "192.0.2.2"), 20, 1000.0),
    )
    nx = dns.message.make_response(query)
    nx.set_rcode(dns.rcode.NXDOMAIN)
    assert answer_lookups("www.example.com.", nx, 0.0).lookups == ()
    v6 = dns.message.make_response(dns.message.make_query("v6.example", "AAAA"))
    v6.answer.append(dns.rrset.from_text("v6.example.", 5, "IN", "AAAA", "2001:db8::5"))
    assert answer_lookups("v6.example.", v6, 0.0).lookups[0].ips == ("2001:db8::5",)


def test_malformed_queries_and_failing_servers() -> None:
    rules = Rules()
    proxy, events = make_proxy(rules)
    good = dns.message.make_query("partner.example.com", "A").to_wire()

    async def run(wire: bytes, answer: bytes | Exception) -> bytes | None:
        async def forward(*_: object) -> bytes:
            if isinstance(answer, Exception):
                raise answer
            return answer

        return await proxy.handle(wire, POD, SERVER, "UDP", forward)

    formerr = asyncio.run(run(good[:14], b""))  # a header and half a question
    assert formerr is not None and dns.message.from_wire(formerr).rcode() == dns.rcode.FORMERR
    assert asyncio.run(run(b"\x01", b"")) is None  # not even a header: nothing to answer
    with pytest.raises(MalformedQueryError, match="a response"):
        parse_query(answer_for(good))
    for failure in (TimeoutError(), ConnectionRefusedError(), b"garbage"):
        reply = asyncio.run(run(good, failure))
        assert reply is not None and dns.message.from_wire(reply).rcode() == dns.rcode.SERVFAIL
        assert events[-1].verdict == Verdict.ERROR and events[-1].kind == L7FlowType.RESPONSE
        assert events[-1].dns is not None and events[-1].dns.rcode == dns.rcode.SERVFAIL
    assert proxy.stats.malformed == 2 and proxy.stats.errors == 3
    assert rules.cache.names() == []


def test_a_tcp_message_cut_short_or_stalled_is_a_malformed_query(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The TCP listener's reader on a loopback connection: a pod that closes between messages
    sent nothing to count; one byte of a length, fewer bytes than the length said before the
    pod's end of the stream, or before the idle timeout, is one malformed query each, and the
    proxy closes the connection."""
    monkeypatch.setattr(dnsproxy, "TCP_IDLE_TIMEOUT_S", 0.2)
    proxy, events = make_proxy(Rules())

    async def run() -> list[bytes]:
        server = await asyncio.start_server(proxy._tcp_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        seen: list[bytes] = []
        try:
            for data, end in ((b"", True), (b"\x00", True), (b"\x00\x20hello", True),
                              (b"\x00\x20hello", False)):  # fmt: skip
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(data)
                if end:
                    writer.write_eof()
                seen.append(await asyncio.wait_for(reader.read(), 5))  # b"": closed by it
                writer.close()
        finally:
            server.close()
            await server.wait_closed()
        return seen

    assert asyncio.run(run()) == [b""] * 4
    assert (proxy.stats.queries, proxy.stats.malformed) == (3, 3)
    assert proxy.stats.forwarded + proxy.stats.refused + proxy.stats.errors == 0
    assert events == []


def test_addresses_of_either_family() -> None:
    rules = Rules()
    assert (
        rules.rules.decide(
            IPv6Address("fd00::9"), ip_address(SERVER[0]), PROTO_UDP, 53, "partner.example.com"
        ).reason
        == "fd00::9 is no endpoint of this node"
    )
    assert rules.rules.decide(
        IPv4Address(POD[0]), ip_address(SERVER[0]), PROTO_UDP, 53, "partner.example.com"
    ).allowed


def test_agent_flags() -> None:
    args = _parser().parse_args(["--node-name", "n1"])
    assert args.tofqdns_dns_reject_response_code == "refused"
    assert args.tofqdns_proxy_response_max_delay == 0.1
    assert args.dnsproxy_enable_transparent_mode is True
    args = _parser().parse_args(
        ["--node-name", "n1", "--tofqdns-dns-reject-response-code", "nameError",
         "--tofqdns-proxy-response-max-delay", "250ms",
         "--dnsproxy-enable-transparent-mode=false"]
    )  # fmt: skip
    assert args.tofqdns_dns_reject_response_code == "nameError"
    assert args.tofqdns_proxy_response_max_delay == 0.25
    assert args.dnsproxy_enable_transparent_mode is False
    args = _parser().parse_args(
        ["--node-name", "n1", "--dnsproxy-concurrency-limit", "100",
         "--dnsproxy-concurrency-processing-grace-period", "0s"]
    )  # fmt: skip
    assert (args.dnsproxy_concurrency_limit, args.dnsproxy_concurrency_processing_grace_period) == (
        100, 0.0,
    )  # fmt: skip
    assert (
        _parser()
        .parse_args(
            ["--node-name", "n1", "--dnsproxy-concurrency-processing-grace-period", "250ms"]
        )
        .dnsproxy_concurrency_processing_grace_period
        == 0.25
    )
    for bad in (["--tofqdns-dns-reject-response-code", "servfail"],
                ["--tofqdns-proxy-response-max-delay", "0s"],
                ["--tofqdns-proxy-response-max-delay", "soon"],
                ["--dnsproxy-concurrency-limit", "-1"],
                ["--tofqdns-max-deferred-connection-deletes", "-1"],
                ["--tofqdns-idle-connection-grace-period", "later"],
                ["--conntrack-gc-interval", "0s"]):  # fmt: skip
        with pytest.raises(SystemExit):
            _parser().parse_args(["--node-name", "n1", *bad])


def test_dns_zombie_flags() -> None:
    """Upstream's names and defaults: expired answers' IPs kept while connections use them."""
    args = _parser().parse_args(["--node-name", "n1"])
    assert (
        args.tofqdns_idle_connection_grace_period,
        args.tofqdns_max_deferred_connection_deletes,
        args.conntrack_gc_interval,
    ) == (0.0, 10000, 30.0)
    args = _parser().parse_args(
        ["--node-name", "n1", "--tofqdns-idle-connection-grace-period", "1m",
         "--tofqdns-max-deferred-connection-deletes", "0", "--conntrack-gc-interval", "500ms"]
    )  # fmt: skip
    assert (
        args.tofqdns_idle_connection_grace_period,
        args.tofqdns_max_deferred_connection_deletes,
        args.conntrack_gc_interval,
    ) == (60.0, 0, 0.5)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=600),
        st.builds(
            lambda wire, at, byte: wire[:at] + bytes([byte]) + wire[at + 1 :],
            st.sampled_from(
                [
                    dns.message.make_query("partner.example.com", "A").to_wire(),
                    dns.message.make_query("x" * 63 + ".example.com", "AAAA").to_wire(),
                ]
            ),
            st.integers(0, 60),
            st.integers(0, 255),
        ),
    )
)
def test_no_input_crashes_the_proxy_and_every_query_is_counted(wire: bytes) -> None:
    rules = Rules()
    proxy, _ = make_proxy(rules)

    async def forward(query: bytes, *_: object) -> bytes:
        return answer_for(query, "192.0.2.1")

    reply = asyncio.run(proxy.handle(wire, POD, SERVER, "UDP", forward))
    stats = proxy.stats
    assert stats.queries == 1
    assert stats.malformed + stats.refused + stats.forwarded + stats.errors == 1
    if reply is not None:
        response = dns.message.from_wire(reply)
        assert response.id == int.from_bytes(wire[:2], "big")
        assert response.rcode() in (dns.rcode.NOERROR, dns.rcode.FORMERR, dns.rcode.REFUSED)


def test_the_concurrency_limit_drops_what_finds_no_room_in_the_grace_period() -> None:
    rules = Rules()
    proxy, _ = make_proxy(rules, concurrency_limit=2, concurrency_grace_s=0.05)
    release = asyncio.Event()

    async def forward(query: bytes, *_: object) -> bytes:
        await release.wait()  # a slow server
        return answer_for(query, "192.0.2.1")

    async def run() -> list[bytes | None]:
        wire = dns.message.make_query("partner.example.com", "A").to_wire()
        slow = [asyncio.ensure_future(proxy.handle(wire, POD, SERVER, "UDP", forward))
                for _ in range(3)]  # fmt: skip
        await asyncio.sleep(0.2)  # the third waited the grace period: dropped
        release.set()
        return list(await asyncio.gather(*slow))

    replies = asyncio.run(run())
    assert [r is None for r in replies] == [False, False, True]
    assert (proxy.stats.queries, proxy.stats.forwarded, proxy.stats.over_limit) == (3, 2, 1)
    with pytest.raises(ValueError, match="must not be negative"):
        make_proxy(Rules(), concurrency_limit=-1)


def test_an_allow_all_dns_rule_gives_flows_and_metrics_without_denying() -> None:
    """Visibility without enforcement (#15 Build 6): ``dns: [{matchPattern: "*"}]`` forwards
    every name, and each query and answer still becomes an L7 DNS flow counted by the ``dns``
    metrics (queries with no rcode, responses NOERROR, none "Policy denied")."""
    rules = Rules()
    rules.lab.apply(DNS_RULES.replace("name: dns,", "name: dns-visibility,").split("rules:")[0]
                    + 'rules:\n        dns: [{matchPattern: "*"}]\n')  # fmt: skip
    proxy, events = make_proxy(rules)
    for name in ("evil.example.com.", "kubernetes.default.svc.cluster.local.", "a.b.c.d."):
        response, forwarded = ask(proxy, rules, name, "192.0.2.9")
        assert response.rcode() == dns.rcode.NOERROR and forwarded == [name]
    assert [e.verdict for e in events] == [Verdict.FORWARDED] * 6
    decoder = FlowDecoder("node-a")
    registry = CollectorRegistry()
    metrics = FlowMetrics("dns:query", registry)
    for flow in map(decoder.decode_l7, events):
        assert flow.Type == flow_pb2.L7 and flow.l7.WhichOneof("record") == "dns"
        metrics.on_flow(flow)
    query = {"rcode": "", "qtypes": "A", "ips_returned": "0", "query": "evil.example.com."}
    assert registry.get_sample_value("hubble_dns_queries_total", query) == 1
    answer = {**query, "rcode": "No Error", "ips_returned": "1"}
    assert registry.get_sample_value("hubble_dns_responses_total", answer) == 1
    assert not any(
        s.labels.get("rcode") == "Policy denied" for m in registry.collect() for s in m.samples
    )
