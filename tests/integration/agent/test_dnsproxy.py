"""The DNS proxy with real sockets, a real redirect and a real DNS server (agent/dnsproxy.py).

Three scratch namespaces, dual stack: a pod (10.0.0.2, fd00:e::2), a node (the proxy; routes
between the two) and a DNS server (10.0.1.53, fd00:e:1::53, ``ciliary workload dns-server``).
The node redirects the pod's port-53 packets to the proxy's transparent listeners with
iptables/ip6tables TPROXY, upstream's classic path
(``bpf_sk_assign`` delivers them to the same sockets the same way: original destination kept),
and routes packets of the proxy's transparent upstream sockets to them (``-m socket
--transparent``, as TPROXY setups do). The pod runs ``ciliary workload dns-query`` over UDP and
TCP: an allowed name gets the server's answer, with the pod's own address seen by the server
(transparent mode), and lands in the DNS cache; a disallowed one gets REFUSED and never reaches
the server."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench import dnsproxy as bench_dnsproxy

from ciliary.agent.dnsproxy import DNSProxy, EndpointDNSRules
from ciliary.core.flow import L7FlowType, Verdict
from ciliary.core.l7record import L7Record
from ciliary.datapath.linux import netns
from ciliary.policy.fqdn import DNSCache, DNSLookup
from tests.unit.policy.engine.lab import Lab
from tests.unit.policy.engine.test_l7_dns import CLIENT, DNS, DNS_RULES

pytestmark = [pytest.mark.timeout(120), pytest.mark.privileged]

POD_IP, NODE_POD_SIDE = "10.0.0.2", "10.0.0.1"
SERVER_IP, NODE_DNS_SIDE = "10.0.1.53", "10.0.1.1"
POD_IP6, NODE_POD_SIDE6 = "fd00:e::2", "fd00:e::1"
SERVER_IP6, NODE_DNS_SIDE6 = "fd00:e:1::53", "fd00:e:1::1"
PROXY_PORT = 10053
RECORDS = {
    "partner.example.com.": ["192.0.2.10", "2001:db8::10"],
    "evil.example.com.": ["192.0.2.66"],
}


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=20)


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tag = secrets.token_hex(3)
    names = {role: f"e-dnsp-{tag}-{role}" for role in ("pod", "node", "dns")}
    server: subprocess.Popen[str] | None = None
    try:
        for name in names.values():
            netns.create(name)
        pod, node, dns = names["pod"], names["node"], names["dns"]
        sh("ip", "link", "add", "p0", "netns", node, "type", "veth", "peer", "eth0", "netns", pod)
        sh("ip", "link", "add", "d0", "netns", node, "type", "veth", "peer", "eth0", "netns", dns)
        for ns, dev, addr, addr6 in (
            (node, "p0", f"{NODE_POD_SIDE}/24", f"{NODE_POD_SIDE6}/64"),
            (pod, "eth0", f"{POD_IP}/24", f"{POD_IP6}/64"),
            (node, "d0", f"{NODE_DNS_SIDE}/24", f"{NODE_DNS_SIDE6}/64"),
            (dns, "eth0", f"{SERVER_IP}/24", f"{SERVER_IP6}/64"),
        ):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "addr", "add", addr6, "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
        for ns, gw, gw6 in (
            (pod, NODE_POD_SIDE, NODE_POD_SIDE6),
            (dns, NODE_DNS_SIDE, NODE_DNS_SIDE6),
        ):
            sh("ip", "-n", ns, "route", "add", "default", "via", gw)
            sh("ip", "-n", ns, "-6", "route", "add", "default", "via", gw6)
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv6.conf.all.forwarding=1"):  # fmt: skip
            sh("ip", "netns", "exec", node, "sysctl", "-qw", key)
        # iptables TPROXY stands in for bpf_sk_assign; -m socket routes the replies to the
        # proxy's transparent upstream sockets to them (both: local delivery by the fwmark)
        for tables, local in (("iptables", "0.0.0.0/0"), ("ip6tables", "::/0")):
            for proto in ("udp", "tcp"):
                sh("ip", "netns", "exec", node, tables, "-t", "mangle", "-A", "PREROUTING",
                   "-i", "p0", "-p", proto, "--dport", "53", "-j", "TPROXY",
                   "--on-port", str(PROXY_PORT), "--tproxy-mark", "0x200/0xf00")  # fmt: skip
                sh("ip", "netns", "exec", node, tables, "-t", "mangle", "-A", "PREROUTING",
                   "-i", "d0", "-p", proto, "--sport", "53", "-m", "socket", "--transparent",
                   "-j", "MARK", "--set-mark", "0x200/0xf00")  # fmt: skip
            family = "-6" if ":" in local else "-4"
            sh("ip", "-n", node, family, "rule", "add", "fwmark", "0x200/0xf00", "lookup", "100")
            sh("ip", "-n", node, family, "route", "add", "local", local, "dev", "lo",
               "table", "100")  # fmt: skip
        records = tmp_path_factory.mktemp("dns") / "records.json"
        records.write_text(json.dumps(RECORDS))
        log = records.with_name("server.log")
        with log.open("w") as out:
            server = subprocess.Popen(
                ["ip", "netns", "exec", dns, sys.executable, "-m", "ciliary.workload.main",
                 "dns-server", "--records", str(records), "--domain", "example.com"],
                stdout=out, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
        deadline = time.monotonic() + 15
        while "listening on tcp" not in log.read_text():
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield {**names, "server_log": str(log)}
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        for name in names.values():
            netns.remove(name)


async def query(pod_ns: str, name: str, *flags: str, server: str = SERVER_IP) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", pod_ns, sys.executable, "-m", "ciliary.workload.main",
        "dns-query", name, "--server", server, "--timeout", "5", *flags,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


def run_proxy_scenario(topology: dict[str, str], transparent: bool) -> dict[str, object]:
    lab = Lab(CLIENT, DNS)
    lab.apply(DNS_RULES)
    cache = DNSCache()
    updates: list[str] = []

    async def update(lookups: list[DNSLookup]) -> None:
        cache.load(lookups)
        updates.append(",".join(lk.name for lk in lookups))

    rules = EndpointDNSRules(
        endpoint_at=lambda ip: CLIENT.id if str(ip) in (POD_IP, POD_IP6) else None,
        policy_of=lambda _ep: lab.policy(CLIENT),
        identity_of=lambda ip: DNS.id if str(ip) in (SERVER_IP, SERVER_IP6) else 2,
        update=update,
    )
    events: list[L7Record] = []

    async def scenario() -> dict[str, object]:
        proxy = DNSProxy(PROXY_PORT, rules, on_event=events.append, transparent=transparent)
        await proxy.start()
        try:
            pod = topology["pod"]
            results = {
                "udp-allowed": await query(pod, "partner.example.com"),
                "tcp-allowed": await query(pod, "partner.example.com", "--tcp", "--type", "AAAA"),
                "udp-refused": await query(pod, "evil.example.com", "--expect-rcode", "REFUSED"),
                "tcp-refused": await query(
                    pod, "evil.example.com", "--tcp", "--expect-rcode", "REFUSED"
                ),
                "udp6-allowed": await query(pod, "partner.example.com", server=SERVER_IP6),
                "tcp6-refused": await query(
                    pod, "evil.example.com", "--tcp", "--expect-rcode", "REFUSED",
                    server=SERVER_IP6,
                ),
            }  # fmt: skip
            # A and AAAA at once from one pod socket (glibc's way): both answered
            both = await asyncio.gather(
                query(pod, "partner.example.com"),
                query(pod, "partner.example.com", "--type", "AAAA"),
            )
            return {"results": results, "both": both, "stats": proxy.stats}
        finally:
            await proxy.stop()

    out = netns.call_in(topology["node"], lambda: asyncio.run(scenario()))
    return {**out, "cache": cache, "events": events, "updates": updates}


@pytest.mark.parametrize("transparent", [True, False], ids=["transparent", "node-source"])
def test_pod_queries_through_the_proxy(topology: dict[str, str], transparent: bool) -> None:
    log_before = Path(topology["server_log"]).read_text()
    out = run_proxy_scenario(topology, transparent)
    results = out["results"]
    assert isinstance(results, dict)
    for what, (rc, text) in results.items():
        assert rc == 0, f"{what}: {text}"
    assert "192.0.2.10" in results["udp-allowed"][1]
    assert "2001:db8::10" in results["tcp-allowed"][1]
    assert "REFUSED" in results["udp-refused"][1]
    assert "192.0.2.10" in results["udp6-allowed"][1]
    both = out["both"]
    assert isinstance(both, list) and all(rc == 0 for rc, _ in both), both
    cache = out["cache"]
    assert isinstance(cache, DNSCache)
    assert cache.lookup("partner.example.com") == ["192.0.2.10", "2001:db8::10"]
    assert cache.names() == ["partner.example.com"]
    server_log = Path(topology["server_log"]).read_text()[len(log_before) :]
    assert "evil.example.com" not in server_log  # refused names never reach the server
    assert "partner.example.com" in server_log
    seen_from = (POD_IP, POD_IP6) if transparent else (NODE_DNS_SIDE, NODE_DNS_SIDE6)
    for source in seen_from:
        shown = f"[{source}]" if ":" in source else source
        assert f"partner.example.com. from {shown}:" in server_log, server_log
    events = out["events"]
    assert isinstance(events, list)
    dropped = [e for e in events if e.verdict == Verdict.DROPPED]
    assert sorted((e.transport, str(e.destination.ip), e.dns and e.dns.query) for e in dropped) == [
        (6, SERVER_IP, "evil.example.com."), (6, SERVER_IP6, "evil.example.com."),
        (17, SERVER_IP, "evil.example.com."),
    ]  # fmt: skip
    # the original destination, as the pod addressed it, on every record
    requests = [e for e in events if e.kind == L7FlowType.REQUEST]
    responses = [e for e in events if e.kind == L7FlowType.RESPONSE]
    servers = {(SERVER_IP, 53), (SERVER_IP6, 53)}
    assert {(str(e.destination.ip), e.destination.port) for e in requests} == servers
    assert {(str(e.source.ip), e.source.port) for e in responses} == servers
    assert {str(e.source.ip) for e in requests} == {POD_IP, POD_IP6}
    assert len(responses) == 5 and all(e.verdict == Verdict.FORWARDED for e in responses)


def test_the_bench_group_measures_both_paths() -> None:
    results = {r["benchmark"]: r["values"] for r in bench_dnsproxy.run(20, log=lambda _: None)}
    assert set(results["DNS query latency p50"]) == {"direct", "through the DNS proxy"}
    assert all(v > 0 for v in results["DNS queries/s (one in flight)"].values())
    assert results["DNS queries lost (1 s timeout)"] == {"through the DNS proxy": 0, "direct": 0}
