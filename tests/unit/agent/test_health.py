"""Cluster health (``agent/health.py``): the prober's bookkeeping (targets replace the node set,
results kept per node/address/probe, a node reachable only when every address answered both
probes, the report's order), the echo packets, the ``/hello`` responder and the probes
themselves over loopback. Across the lab network: ``tests/e2e/test_lab_health.py``."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from pydantic import ValidationError
from rich.console import Console

from ciliary.agent import health
from ciliary.agent.health import (
    ClusterHealthChecker,
    HealthBook,
    HealthTarget,
    Pinger,
    _answer,
    _checksum,
    echo_request,
    http_probe,
    parse_echo_reply,
)
from ciliary.agent.main import _parser
from ciliary.cli.health import fmt_rtt, render_health, render_table, summary
from ciliary.core.models import ConnectivityStatus, StatusResponse
from ciliary.lab import underlay
from ciliary.lab.schema import LabBody
from ciliary.lab.state import NodeRecord

OK = ConnectivityStatus(ok=True, latency_s=0.0004, last_probed=1.0)
BAD = ConnectivityStatus(ok=False, status="no echo reply within 2s", last_probed=1.0)


def test_book_counts_a_node_reachable_only_when_every_address_answered_both_probes() -> None:
    book = HealthBook(60.0, 4240)
    book.set_targets(
        [
            HealthTarget("b", ("10.0.0.3", "fd00::3")),
            HealthTarget("a", ("10.0.0.2",), local=True),
            HealthTarget("c", ()),
        ]
    )
    for kind in ("icmp", "http"):
        book.record("a", "10.0.0.2", kind, OK)  # type: ignore[arg-type]
        book.record("b", "10.0.0.3", kind, OK)  # type: ignore[arg-type]
    book.record("b", "fd00::3", "icmp", OK)
    report = book.report()
    assert [n.name for n in report.nodes] == ["a", "b", "c"]  # this node first, then by name
    assert report.last_probe is None
    assert [n.reachable() for n in report.nodes] == [True, False, False]  # b: v6 HTTP missing
    book.record("b", "fd00::3", "http", OK)
    book.round_done(123.0)
    report = book.report()
    assert report.reachable() == 2 and report.last_probe == 123.0
    assert str(summary(report)).startswith("2/3 reachable")
    book.record("b", "fd00::3", "http", BAD)  # the last probe counts
    assert book.report().reachable() == 1


def test_a_node_is_reachable_only_when_its_health_endpoint_answered_too() -> None:
    """Upstream's count: host and endpoint paths; both printed as cilium-health prints them."""
    book = HealthBook(1.0, 4240)
    book.set_targets(
        [
            HealthTarget("a", ("10.0.0.2",), local=True, endpoint_addresses=("10.1.0.2",)),
            HealthTarget("b", ("10.0.0.3",)),  # publishes no health endpoint: host path only
        ]
    )
    for kind in ("icmp", "http"):
        book.record("a", "10.0.0.2", kind, OK)  # type: ignore[arg-type]
        book.record("b", "10.0.0.3", kind, OK)  # type: ignore[arg-type]
    book.record("a", "10.1.0.2", "icmp", OK)
    book.record("a", "10.1.0.2", "http", BAD)
    book.round_done(5.0)
    report = book.report()
    assert [p.ip for p in report.nodes[0].endpoint] == ["10.1.0.2"]
    assert report.nodes[1].endpoint == []
    assert [n.reachable() for n in report.nodes] == [False, True]
    console = Console(width=200, record=True)
    status = StatusResponse.model_construct(node="a", cluster_health=report)
    render_health(console, status)
    render_table(console, report, all_nodes=True)
    text = console.export_text()
    assert "Host connectivity to 10.0.0.2:" in text
    assert "Endpoint connectivity to 10.1.0.2:" in text
    assert text.count("OK, RTT=") == 5 and "no echo reply within 2s" in text, text
    assert "endpoint   10.1.0.2" in text and "node       10.0.0.2" in text, text
    book.record("a", "10.1.0.2", "http", OK)
    assert book.report().reachable() == 2


def test_book_forgets_nodes_and_addresses_that_left_and_ignores_unknown_results() -> None:
    book = HealthBook(2.0, 4240)
    book.set_targets([HealthTarget("a", ("10.0.0.2", "fd00::2")), HealthTarget("b", ("10.0.0.3",))])
    book.record("a", "10.0.0.2", "icmp", OK)
    book.record("a", "fd00::2", "icmp", OK)
    book.record("b", "10.0.0.3", "icmp", OK)
    book.set_targets([HealthTarget("a", ("10.0.0.2",))])  # b left, a lost its IPv6 address
    book.record("b", "10.0.0.3", "http", OK)  # a round that raced b's removal
    book.record("a", "10.0.0.9", "http", OK)  # not an address of a
    report = book.report()
    assert [(n.name, [p.ip for p in n.host]) for n in report.nodes] == [("a", ["10.0.0.2"])]
    assert report.nodes[0].host[0].icmp == OK and report.nodes[0].host[0].http is None
    book.set_targets([HealthTarget("a", ("10.0.0.2", "fd00::2"))])  # the address is back: unprobed
    assert book.report().nodes[0].host[1].icmp is None


def test_echo_packets() -> None:
    v4 = echo_request(0x1234, 7, v6=False)
    assert v4[0] == 8 and _checksum(v4) == 0  # a valid checksum sums to zero
    ip_header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(v4), 0, 0, 64, 1, 0, b"\0" * 4,
                            b"\0" * 4)  # fmt: skip
    reply = bytes([0]) + v4[1:]
    assert parse_echo_reply(ip_header + reply, v6=False) == (0x1234, 7)
    assert parse_echo_reply(ip_header + v4, v6=False) is None  # a request, not a reply
    v6 = echo_request(0x1234, 8, v6=True)
    assert v6[0] == 128
    assert parse_echo_reply(bytes([129]) + v6[1:], v6=True) == (0x1234, 8)
    assert parse_echo_reply(b"\x81\x00", v6=True) is None
    assert fmt_rtt(0.000634746) == "634.746µs" and fmt_rtt(0.0012) == "1.200ms"


def test_responder_answers_hello_and_the_probes_measure_it_over_loopback() -> None:
    async def run() -> None:
        server = await asyncio.start_server(_answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            ok = await http_probe("127.0.0.1", port, 2.0)
            assert ok.ok and ok.latency_s is not None and 0 < ok.latency_s < 2
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readline()).startswith(b"HTTP/1.1 404")
            writer.close()
        finally:
            server.close()
            await server.wait_closed()
        refused = await http_probe("127.0.0.1", port, 2.0)  # nothing listens any more
        assert not refused.ok and "Connection refused" in refused.status, refused
        pings = await Pinger().ping(["127.0.0.1", "::1"], 2.0)
        assert all(p.ok and p.latency_s is not None for p in pings.values()), pings
        assert set(pings) == {"127.0.0.1", "::1"}

    asyncio.run(run())


def test_checker_round_probes_every_target_and_a_missing_responder_is_unreachable() -> None:
    async def run() -> None:
        with socket.socket() as s:  # a free port for the responder
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        targets = [HealthTarget("self", ("127.0.0.1",), local=True)]
        checker = ClusterHealthChecker(
            lambda: targets, interval_s=0.5, port=port, listen_host="127.0.0.1"
        )
        await checker.probe_once()  # before start: no responder, ICMP answers
        path = checker.report().nodes[0].host[0]
        assert path.icmp is not None and path.icmp.ok
        assert path.http is not None and not path.http.ok
        await checker.start()
        try:
            for _ in range(50):  # the loop's rounds, every 0.5 s
                report = checker.report()
                if report.reachable() == 1:
                    break
                await asyncio.sleep(0.1)
            assert report.reachable() == 1, report
        finally:
            await checker.stop()

    asyncio.run(run())


def test_a_failed_path_is_probed_again_soon_not_after_the_interval() -> None:
    """A node whose responder was not up yet at the first round shows reachable after the
    retry wait, not after the (here one-minute) interval."""

    async def run() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        targets = [HealthTarget("late", ("127.0.0.1",))]
        checker = ClusterHealthChecker(  # its own responder elsewhere: 127.0.0.2
            lambda: targets, interval_s=60, port=port, listen_host="127.0.0.2", retry_s=0.2
        )
        await checker.start()
        try:
            for _ in range(50):
                if checker.report().last_probe is not None:
                    break
                await asyncio.sleep(0.05)
            assert checker.report().reachable() == 0  # nothing answers on 127.0.0.1 yet
            late = await asyncio.start_server(health._answer, "127.0.0.1", port)
            try:
                for _ in range(40):
                    if checker.report().reachable() == 1:
                        break
                    await asyncio.sleep(0.05)
                assert checker.report().reachable() == 1, checker.report()
            finally:
                late.close()
                await late.wait_closed()
        finally:
            await checker.stop()

    asyncio.run(run())


def test_flags_and_the_lab_field_that_sets_the_interval() -> None:
    args = _parser().parse_args(["--node-name", "n"])
    assert (args.enable_health_checking, args.cluster_health_port) == (True, 4240)
    assert args.cluster_health_interval == 60.0  # upstream's interval
    for bad in (["--cluster-health-interval", "0"], ["--cluster-health-port", "70000"]):
        with pytest.raises(SystemExit):
            _parser().parse_args(["--node-name", "n", *bad])
    spec = LabBody.model_validate({"nodes": [{"name": "a"}], "healthCheckInterval": 1.5})
    record, _ips = underlay.plan("l", spec)
    nrec = NodeRecord(name="a", netns="ns", state_dir="/s", pin_dir="/p", socket="/s/a")
    flags = underlay.agent_flags(record, nrec)
    assert flags[flags.index("--cluster-health-interval") + 1] == "1.5"
    with pytest.raises(ValidationError, match="healthCheckInterval"):
        LabBody.model_validate({"nodes": [{"name": "a"}], "healthCheckInterval": 0})
