"""The l7 benchmark (bench/l7.py): its lab file is a valid lab whose client policy redirects one
port only, its standalone Envoy is the proxy without our policy, its rows carry the target's
ratio (b/c) the right way round, and its load generator (bench/httpload.c) counts what it was
answered and fails on anything but 200."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench import dnsproxy, l7, tools
from bench.l7 import DIRECT, ENVOY, L7, http_rows, lab_file, standalone_envoy

from ciliary.lab.schema import parse_lab_text
from ciliary.policy.api import parse_policy_text


def test_lab_file_redirects_the_l7_and_dns_ports_only() -> None:
    text = lab_file("jl7x", "jl7xa")
    parsed = parse_lab_text(text, "bench.yaml")
    assert sorted(p.name for p in parsed.pods) == ["client-0", "proxy-0", "server-0"]
    (cnp,) = parsed.other_documents
    assert parse_policy_text(text.split("---\n")[1], "bench.yaml")  # a valid CNP
    to_server, to_proxy = cnp.body["spec"]["egress"]
    l7_port, direct, dns, dns_direct = to_server["toPorts"]
    assert l7_port["ports"] == [{"port": str(l7.L7_PORT), "protocol": "TCP"}]
    assert l7_port["rules"] == {"http": [{"method": "GET", "path": l7.PATH}]}
    assert "rules" not in direct and direct["ports"][0]["port"] == str(l7.DIRECT_PORT)
    # the DNS rows: 53 through the agent's DNS proxy, 5353 direct, both UDP and TCP
    assert dns["ports"] == [{"port": str(l7.DNS_PORT), "protocol": "ANY"}]
    assert dns["rules"] == {"dns": [{"matchPattern": "*.example.com"}]}
    assert "rules" not in dns_direct
    assert dns_direct["ports"] == [{"port": str(l7.DNS_DIRECT_PORT), "protocol": "ANY"}]
    assert "rules" not in to_proxy["toPorts"][0]


def test_dns_rows_name_where_they_were_measured() -> None:
    found = {
        "proxy": {"times": [0.002, 0.0021, 0.0019], "lost": 1},
        "direct": {"times": [0.001, 0.0011, 0.0009], "lost": 0},
    }
    rows = dnsproxy.rows(found, l7.LAB_DNS)
    assert [r["benchmark"] for r in rows] == [
        f"DNS query latency p50{l7.LAB_DNS}", f"DNS query latency p99{l7.LAB_DNS}",
        f"DNS queries/s (one in flight){l7.LAB_DNS}", f"DNS queries lost (1 s timeout){l7.LAB_DNS}",
    ]  # fmt: skip
    assert rows[0]["values"] == pytest.approx({"direct": 1.0, "through the DNS proxy": 2.0})
    assert rows[3]["values"] == {"through the DNS proxy": 1, "direct": 0}
    assert dnsproxy.added_ms(found) == pytest.approx(1.0)


def test_standalone_envoy_is_a_plain_reverse_proxy() -> None:
    boot = standalone_envoy("10.200.0.9", tmp_admin := Path("/x/admin.sock"))
    assert boot["admin"]["address"]["pipe"]["path"] == str(tmp_admin)
    (listener,) = boot["static_resources"]["listeners"]
    assert listener["address"]["socket_address"]["port_value"] == l7.PROXY_PORT
    assert "listener_filters" not in listener  # no original_dst, no original_src
    (chain,) = listener["filter_chains"]
    (hcm,) = chain["filters"]
    cfg = hcm["typed_config"]
    assert cfg["codec_type"] == "AUTO" and "access_log" not in cfg
    assert [f["name"] for f in cfg["http_filters"]] == ["envoy.filters.http.router"]  # no RBAC
    (cluster,) = boot["static_resources"]["clusters"]
    (ep,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert ep["endpoint"]["address"]["socket_address"] == {
        "address": "10.200.0.9",
        "port_value": l7.DIRECT_PORT,
    }


def test_rows_carry_the_b_over_c_ratio() -> None:
    # per round: (requests/s, p50, p99, failed, SYN retransmits)
    samples = {
        key: {
            DIRECT: [(10_000.0, 50.0, 90.0, 0.0, 0.0)] * 3,
            L7: [
                (900.0, 300.0, 900.0, 1.0, 5.0),
                (800.0, 330.0, 990.0, 2.0, 7.0),
                (850.0, 320.0, 950.0, 0.0, 0.0),
            ],
            ENVOY: [(1000.0, 250.0, 700.0, 0.0, 0.0)] * 3,
        }
        for key in l7.METRICS
    }
    rows = http_rows(samples, {"keepalive": "KA", "close": "CL"}, rounds=3, seconds=2)
    assert [r["metric"] for r in rows] == [
        "keepalive-rps", "keepalive-p50", "keepalive-p99", "keepalive-failed",
        "keepalive-syn-retrans", "close-rps", "close-p50", "close-p99", "close-failed",
        "close-syn-retrans",
    ]  # fmt: skip
    rps, p50, p99, failed, syns = rows[:5]
    assert failed["values"] == {DIRECT: 0, L7: 3, ENVOY: 0} and failed["baseline"] is None
    assert syns["values"] == {DIRECT: 0, L7: 12, ENVOY: 0} and syns["unit"] == "SYNs"
    for row in (r for r in rows if r["baseline"] is not None):
        assert row["baseline"] == ENVOY and list(row["values"]) == [DIRECT, L7, ENVOY]
        assert row["group"] == "l7" and len(row["samples"][L7]) == 3
    assert rps["values"][L7] == 850.0 and rps["b/c"] == 0.85  # median, b/c
    assert rps["higher_is_better"] and not p50["higher_is_better"]
    assert p50["values"][L7] == 320.0 and p50["b/c"] == round(250 / 320, 3)  # c/b: ≥ 0.9 is good
    assert p99["unit"] == "usec" and p99["b/c"] == round(700 / 950, 3)


@pytest.fixture(scope="module")
def httpload() -> Iterator[Path]:
    with tools.c_binary(tools.SOURCE.with_name("httpload.c")) as binary:
        yield binary


def _counting_server(status: int) -> tuple[int, list[int], threading.Thread]:
    """A loopback HTTP/1.1 server answering ``status`` with a 2-byte body, keep-alive, one
    connection; also the count of the requests it answered."""
    ls = socket.create_server(("127.0.0.1", 0))
    answer = f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\nok".encode()
    answered = [0]

    def serve() -> None:
        ls.settimeout(10)
        with ls:
            conn, _ = ls.accept()
            with conn:
                while (req := conn.recv(4096)) and b"\r\n\r\n" in req:
                    conn.sendall(answer)
                    answered[0] += 1

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return ls.getsockname()[1], answered, thread


def _server(status: int) -> tuple[int, threading.Thread]:
    """A loopback HTTP/1.1 server answering ``status`` with a 2-byte body, keep-alive."""
    port, _, thread = _counting_server(status)
    return port, thread


def test_httpload_counts_answers(httpload: Path) -> None:
    port, thread = _server(200)
    rps, p50, p99, failed = l7.httpload(httpload, [], "127.0.0.1", port, 0.2, keepalive=True)
    thread.join(5)
    assert rps > 100 and 0 < p50 <= p99 and failed == 0


def test_httpload_counts_failed_connections(httpload: Path) -> None:
    """A port nobody listens on: every connection refused, counted, none answered: exit 1."""
    with socket.create_server(("127.0.0.1", 0)) as ls:
        port = ls.getsockname()[1]  # closed below: refused from then on
    res = subprocess.run([str(httpload), "-c", "127.0.0.1", str(port), "/", "0.1"],
                         check=False, capture_output=True, text=True, timeout=10)  # fmt: skip
    assert res.returncode == 1 and "no request answered (" in res.stderr, res
    assert int(res.stderr.split("(")[1].split()[0]) > 0


def test_httpload_fails_on_a_denial(httpload: Path) -> None:
    port, thread = _server(403)
    res = subprocess.run([str(httpload), "-k", "127.0.0.1", str(port), "/", "1"],
                         check=False, capture_output=True, text=True, timeout=10)  # fmt: skip
    thread.join(5)
    assert res.returncode == 1 and "HTTP/1.1 403" in res.stderr, res


def test_httpload_alternates_between_two_servers(httpload: Path) -> None:
    """-ka: requests alternate, one keep-alive connection each; a line per server, in the
    order given, each with the requests that server answered and the time they took, the two
    times within the run's (no timing of the machine is asserted: loaded CI runs it too)."""
    (pa, na, ta), (pb, nb, tb) = _counting_server(200), _counting_server(200)
    start = time.monotonic()
    argv = [str(httpload), "-ka", "127.0.0.1", str(pa), "127.0.0.1", str(pb), "/", "0.3"]
    res = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)
    wall = time.monotonic() - start
    ta.join(5)
    tb.join(5)
    (count_a, spent_a, p50a, p99a, failed_a), (count_b, spent_b, _, _, failed_b) = (
        line.split() for line in res.stdout.splitlines()
    )
    assert (int(count_a), int(count_b)) == (na[0], nb[0])  # each server's own answers
    assert na[0] == nb[0] > 0  # the run ends after a whole pair
    spent = (float(spent_a), float(spent_b))
    assert min(spent) > 0 and sum(spent) < wall
    assert 0 < float(p50a) <= float(p99a) and failed_a == failed_b == "0"


def test_alternating_rates_are_each_sides_requests_over_its_own_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[list[str]] = []

    def run_tool(argv: list[str], timeout: float) -> str:
        seen.append(list(argv))
        return "100 0.500000 300.0 900.0 1\n50 0.125000 200.0 400.0 0\n"

    monkeypatch.setattr(l7.tools, "run_tool", run_tool)
    ends = (("10.0.0.2", 80), ("10.0.0.3", 10000))
    found = l7.alternating(Path("/x/httpload"), ["nsenter"], ends, 2.0, keepalive=False)
    assert found == ((200.0, 300.0, 900.0, 1.0), (400.0, 200.0, 400.0, 0.0))
    assert seen == [["nsenter", "/x/httpload", "-ca", "10.0.0.2", "80", "10.0.0.3", "10000",
                     l7.PATH, "2.0"]]  # fmt: skip


def test_alternating_rows_give_b_over_c_and_each_rounds_own() -> None:
    samples = {
        key: {
            L7: [(900.0, 300.0, 900.0, 0.0), (500.0, 600.0, 990.0, 0.0), (950.0, 280.0, 1.0, 0.0)],
            ENVOY: [(1e3, 250.0, 700.0, 0.0), (520.0, 590.0, 1.0, 0.0), (1e3, 260.0, 1.0, 0.0)],
        }
        for key in l7.METRICS
    }  # fmt: skip
    rows = l7.alternating_rows(samples, {"keepalive": "KA", "close": "CL"}, rounds=3, seconds=2)
    assert [r["metric"] for r in rows] == [
        "keepalive-alternating-rps", "keepalive-alternating-p50", "keepalive-alternating-ratio",
        "close-alternating-rps", "close-alternating-p50", "close-alternating-ratio",
    ]  # fmt: skip
    rps, p50, ratio = rows[:3]
    assert rps["values"] == {L7: 900.0, ENVOY: 1000.0} and rps["b/c"] == 0.9
    assert p50["values"] == {L7: 300.0, ENVOY: 260.0} and p50["b/c"] == round(260 / 300, 3)
    per = ratio["values"]  # 90, 96.15, 95 %: a slow round falls on both sides
    assert per["median of the rounds' b/c"] == 95.0 and per["lowest round"] == 90.0
    assert round(per["highest round"], 2) == 96.15 and ratio["baseline"] is None


def test_access_log_cost_measures_each_stage_of_real_lines() -> None:
    """The in-process access log bench parses the lines the agent reads (every tenth denied)
    and reports µs per line for each stage, each stage including the one before."""
    from ciliary.agent.accesslog import parse_line  # noqa: PLC0415

    denied, allowed = parse_line(l7.access_log_line(0)), parse_line(l7.access_log_line(1))
    assert (denied.verdict, denied.code, allowed.verdict, allowed.code) == (
        "DROPPED", 403, "FORWARDED", 200,
    )  # fmt: skip
    cost = l7.access_log_cost(lines=300, rounds=1)
    assert list(cost) == ["parse", "+ L7 records", "+ Hubble decode (2 flows)",
                          "+ observer ring + metrics", "batched (the agent's path): parse",
                          "batched: + L7 batch, rows, observer ring + metrics"]  # fmt: skip
    assert all(v > 0 for v in cost.values())
    assert cost["parse"] < cost["+ observer ring + metrics"]
    assert l7.access_log_row(cost)["values"] == cost
