"""The agent's DNS proxy with real pods and the datapath's redirect (agent/daemon.py,
agent/dnsproxy.py, bpf/lib/proxy.h): a real standalone agent in a node netns, three pods added
through the CNI plugin (client, a DNS server for ``example.com`` — ``ciliary workload
dns-server``) and a world host in a netns of its own routed through the node.

The client's policy allows DNS to the DNS pod with ``rules: dns`` (``matchName:
web.example.com``, ``matchPattern: "api-*.example.com"``) and TCP 8080 to ``toFQDNs:
web.example.com``.
Asserted, as issue #15's DNS walkthrough asks: before any lookup the world host is unreachable
(default deny); the client's ``dns-query`` (UDP and TCP) for an allowed name gets the server's
answer through the proxy (the server sees the client's own address: transparent forwarding),
and the client's *first* connection to the answer's IP right after it succeeds (its first SYN
is not dropped: the policy maps allowed the IP before the answer was released); a name the
rules do not allow gets REFUSED and never reaches the server; the agent's DNS cache lists the
name. Also: a query sent to the proxy's own port (not redirected) is refused; a connection opened
before an answer's TTL passed keeps working after it (the IP is kept as a DNS zombie while
conntrack sees the connection; the agent's conntrack GC runs every second here), also across an
agent restart (which restores the answers and the kept IPs), and once it is closed the IP leaves
and new connections to it are dropped. Malformed DNS sent by the pod (UDP and TCP, redirected by
the datapath as any query) is answered FORMERR or dropped, counted as ``parse_errors``, and the
proxy answers the pod's next query.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.rcode
import pytest

from ciliary.core.models import FQDNCacheEntry
from tests.kubectl import wait_for

from .conftest import (
    PYTHON,
    RUN_ROOT,
    VENV_BIN,
    NodeAgent,
    Pods,
    node_agent,
    run_plugin,
    sh,
    unique,
)

pytestmark = pytest.mark.timeout(180)

PORT = 10999
V4_RANGE = "10.233.0.0/24"
WORLD_IP, WORLD_GW = "172.19.0.100", "172.19.0.1"
OTHER_WORLD_IP = "172.19.0.101"
SHORT_WORLD_IP = "172.19.0.102"
SHORT_TTL = 2
RECORDS = {
    "web.example.com.": [WORLD_IP],
    "api-v1.example.com.": [OTHER_WORLD_IP],
    "evil.example.com.": [OTHER_WORLD_IP],
    "short.example.com.": [SHORT_WORLD_IP],
}
POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-dns, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns:
        - matchName: web.example.com
        - matchName: short.example.com
        - matchPattern: "api-*.example.com"
  - toFQDNs: [{matchName: web.example.com}, {matchName: short.example.com}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"""
CT_GC_INTERVAL_S = 1.0
CT_LIFETIME_CLOSE_S = 10  # bpf/lib/conntrack.h: a closed connection's entry lives on this long
WORLD_SERVER = r"""
import socket, threading
def echo(c):
    with c:
        c.sendall(b"world")
        while data := c.recv(100):
            c.sendall(data)
t = socket.socket()
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", 8080))
t.listen(8)
print("ready", flush=True)
while True:
    threading.Thread(target=echo, args=(t.accept()[0],), daemon=True).start()
"""
# One TCP connection with a timeout shorter than the first SYN retransmission (1 s): it only
# succeeds when the first SYN passes.
CONNECT = r"""
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.8)
    print(s.recv(100).decode())
except OSError as err:
    print(f"error {type(err).__name__}")
"""
# Malformed DNS to the server (argv[1]:53), UDP then TCP, each case's reply printed as JSON (see
# test_malformed_dns_from_a_pod). IDs: UDP 0x1001-0x1006, TCP 0x2001-0x2002.
MALFORMED = r"""
import json, random, socket, struct, sys
import dns.flags, dns.message
server = (sys.argv[1], 53)
def query(qid):
    q = dns.message.make_query("web.example.com", "A")
    q.id = qid
    return q.to_wire()
def header(qid, flags=0x0100, counts=(0, 0, 0, 0)):
    return struct.pack("!HHHHHH", qid, flags, *counts)
def reply(wire):
    m = dns.message.from_wire(wire)
    return [m.rcode(), sorted(rd.address for rr in m.answer for rd in rr if hasattr(rd, "address"))]
noise = bytearray(random.Random(7).randbytes(48))
noise[:3] = b"\x10\x01\x01"  # its ID, and a query's flags byte (QR clear: FORMERR is due)
corrupted = bytearray(query(0x1002))
corrupted[12] = 63  # the first label's length: past the message's end
response = bytearray(query(0x1005))
response[2] |= 0x80
udp_cases = [bytes(noise), bytes(corrupted), query(0x1003)[:7], header(0x1004), bytes(response)]
for case in udp_cases:  # none is a query of one question
    try:
        m = dns.message.from_wire(case)
    except Exception:
        continue
    if len(m.question) == 1 and not m.flags & dns.flags.QR:
        raise SystemExit(f"not malformed: {case.hex()}")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(5)
for case in [*udp_cases, query(0x1006)]:
    u.sendto(case, server)
udp = {}
while len(udp) < 4:  # 3 FORMERR and the answer; a reply to a case that gets none would be seen
    wire, peer = u.recvfrom(65535)
    assert peer == server, peer
    udp[struct.unpack("!H", wire[:2])[0]] = reply(wire)
def tcp(data, shut=False):
    t = socket.create_connection(server, timeout=5)
    t.sendall(data)
    if shut:
        t.shutdown(socket.SHUT_WR)
    return t
def closed(t):
    with t:
        return "closed" if t.recv(65535) == b"" else "answered"
tcp_closed = [
    closed(tcp(b"\xff\xff" + query(0x1007) + bytes(100 - len(query(0x1007))), shut=True)),
    closed(tcp(b"\x00", shut=True)),
    closed(tcp(b"\x00\x00")),
    closed(tcp(b"\x00\x07" + query(0x1008)[:7])),
    closed(tcp(struct.pack("!H", len(response)) + bytes(response))),
]
def exchange(t, wire):
    t.sendall(struct.pack("!H", len(wire)) + wire)
    size = struct.unpack("!H", t.recv(2, socket.MSG_WAITALL))[0]
    got = t.recv(size, socket.MSG_WAITALL)
    return [struct.unpack("!H", got[:2])[0], *reply(got)]
with tcp(b"") as t:
    answers = [exchange(t, header(0x2001)), exchange(t, query(0x2002))]
print(json.dumps({"udp": udp, "tcp_closed": tcp_closed, "tcp": answers}))
"""
# One TCP connection held open: each line of stdin is sent and the echo printed (or the error).
HOLD = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
print(s.recv(100).decode(), flush=True)
for line in sys.stdin:
    s.sendall(line.encode())
    try:
        print(s.recv(100).decode().strip(), flush=True)
    except OSError as err:
        print(f"error {type(err).__name__}", flush=True)
"""


class Cluster:
    """The agent, its pods, the world host and the DNS server's log."""

    def __init__(self, agent: NodeAgent, pods: Pods, tmp: Path) -> None:
        self.agent = agent
        self.conf = {"cniVersion": "1.0.0", "name": "ciliary", "type": "ciliary-cni",
                     "node": agent.node}  # fmt: skip
        self.added: list[tuple[str, str]] = []
        self.procs: list[subprocess.Popen[str]] = []
        self.client_ns, self.client_ip = self._add(pods, "client")
        self.dns_ns, self.dns_ip = self._add(pods, "dns")
        # a second DNS pod whose answers live SHORT_TTL seconds
        self.short_dns_ns, self.short_dns_ip = self._add(pods, "dns", "dns-short")
        self.world_ns = unique("e-dnsw-")
        records = tmp / "records.json"
        records.write_text(json.dumps(RECORDS))
        self.dns_log = tmp / "dns-server.log"

    def _add(self, pods: Pods, app: str, pod: str | None = None) -> tuple[str, str]:
        name, path = pods.new()
        cid = unique("c")
        conf = {**self.conf, "args": {"cni": {"labels": [{"key": "app", "value": app}]}}}
        run = run_plugin("ADD", conf, container_id=cid, netns=str(path),
                         args=f"K8S_POD_NAME={pod or app};K8S_POD_NAMESPACE=default")  # fmt: skip
        assert run.rc == 0, str(run)
        self.added.append((cid, str(path)))
        ip = next(i["address"].split("/")[0] for i in run.json["ips"] if "." in i["address"])
        return name, ip

    def start(self) -> None:
        node, world = self.agent.netns, self.world_ns
        sh("ip", "netns", "add", world)
        sh("ip", "link", "add", "w0", "netns", node, "type", "veth", "peer", "eth0", "netns", world)
        sh("ip", "-n", node, "addr", "add", f"{WORLD_GW}/24", "dev", "w0")
        sh("ip", "-n", world, "addr", "add", f"{WORLD_IP}/24", "dev", "eth0")
        for extra in (OTHER_WORLD_IP, SHORT_WORLD_IP):
            sh("ip", "-n", world, "addr", "add", f"{extra}/24", "dev", "eth0")
        for ns, dev in ((node, "w0"), (world, "eth0"), (world, "lo")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", world, "route", "add", V4_RANGE, "via", WORLD_GW)
        self.procs.append(serve(world, [PYTHON, "-c", WORLD_SERVER], "ready"))
        short_log = self.dns_log.with_name("dns-short.log")
        for ns, log, ttl in ((self.dns_ns, self.dns_log, 30),
                             (self.short_dns_ns, short_log, SHORT_TTL)):  # fmt: skip
            with log.open("w") as out:
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", ns, PYTHON, "-m", "ciliary.workload.main",
                     "dns-server", "--records", str(self.dns_log.with_name("records.json")),
                     "--domain", "example.com", "--ttl", str(ttl)],
                    stdout=out, stderr=subprocess.STDOUT, text=True,
                )  # fmt: skip
            self.procs.append(proc)
            deadline = time.monotonic() + 15
            while "listening on tcp" not in log.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)

    def cleanup(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.communicate(timeout=10)  # reaps it and closes its pipes
        for cid, path in self.added:
            run_plugin("DEL", self.conf, container_id=cid, netns=path)
        sh("ip", "netns", "del", self.world_ns, check=False)

    def query(self, name: str, *flags: str, server: str | None = None) -> str:
        res = subprocess.run(
            ["ip", "netns", "exec", self.client_ns, PYTHON, "-m", "ciliary.workload.main",
             "dns-query", name, "--server", server or self.dns_ip, "--timeout", "3", *flags],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        assert res.returncode == 0, f"{name} {flags}: {res.stdout}{res.stderr}"
        return res.stdout

    def connect(self, ip: str, port: int = 8080) -> str:
        res = subprocess.run(
            ["ip", "netns", "exec", self.client_ns, PYTHON, "-c", CONNECT, ip, str(port)],
            capture_output=True, text=True, timeout=20, check=True,
        )  # fmt: skip
        return res.stdout.strip()


def serve(netns: str, argv: list[str], ready: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != ready:
        proc.kill()
        raise AssertionError(f"{argv[-1][:40]} did not start: {line!r} {proc.communicate()[1]!r}")
    return proc


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("dnsproxy-agent")
    pods = Pods()
    flags = ("--tofqdns-proxy-port", str(PORT), "--conntrack-gc-interval", f"{CT_GC_INTERVAL_S}s")
    with node_agent(tmp, V4_RANGE, None, flags) as agent:
        c = Cluster(agent, pods, tmp)
        try:
            c.start()
            with agent.client() as cl:
                cl.policy_import(POLICY, "client-dns.yaml")
            yield c
        finally:
            c.cleanup()
            pods.cleanup()


def test_the_agent_serves_its_dns_proxy_port(cluster: Cluster) -> None:
    agent = cluster.agent
    assert f"DNS proxy listening on port {PORT}" in agent.log.read_text()
    for flags in ((), ("--tcp",)):
        res = subprocess.run(
            ["ip", "netns", "exec", agent.netns, PYTHON, "-m", "ciliary.workload.main",
             "dns-query", "web.example.com", "--server", "127.0.0.1", "--port", str(PORT),
             "--expect-rcode", "REFUSED", *flags],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr  # not redirected: refused


def test_dns_walkthrough(cluster: Cluster) -> None:
    # before any lookup the world host is not allowed (toFQDNs selects nothing yet)
    assert cluster.connect(WORLD_IP).startswith("error")
    log_before = len(cluster.dns_log.read_text())
    out = cluster.query("web.example.com")
    assert WORLD_IP in out, out
    # the first SYN right after the answer passes: the maps allowed the IP before the release
    assert cluster.connect(WORLD_IP) == "world"
    assert "A" in cluster.query("web.example.com", "--tcp")
    assert OTHER_WORLD_IP in cluster.query("api-v1.example.com")  # matchPattern
    for flags in ((), ("--tcp",)):
        assert "REFUSED" in cluster.query("evil.example.com", "--expect-rcode", "REFUSED", *flags)
    # allowed by DNS but not by toFQDNs: still dropped
    assert cluster.connect(OTHER_WORLD_IP).startswith("error")
    server_log = cluster.dns_log.read_text()[log_before:]
    assert "evil.example.com" not in server_log, server_log
    assert f"web.example.com. from {cluster.client_ip}:" in server_log, server_log
    with cluster.agent.client() as cl:
        cache = {(e.fqdn, e.ip) for e in cl.fqdn_cache()}
    assert ("web.example.com", WORLD_IP) in cache, cache
    # Hubble: the proxy's L7 DNS flows, named after the pods
    dns_flows = [f for f in hubble(cluster) if "dns" in f.get("l7", {})]
    seen = {
        (f["l7"]["type"], f["verdict"], f["l7"]["dns"]["query"],
         tuple(f["l7"]["dns"].get("ips", ())))
        for f in dns_flows
    }  # fmt: skip
    assert ("REQUEST", "FORWARDED", "web.example.com.", ()) in seen, seen
    assert ("RESPONSE", "FORWARDED", "web.example.com.", (WORLD_IP,)) in seen, seen
    assert ("REQUEST", "DROPPED", "evil.example.com.", ()) in seen, seen
    request = next(
        f for f in dns_flows
        if f["l7"]["dns"]["query"] == "web.example.com." and f["l7"]["type"] == "REQUEST"
        and f["IP"]["source"] == cluster.client_ip
    )  # fmt: skip
    assert request["source"]["pod_name"] == "client", request
    assert request["destination"]["pod_name"] == "dns", request
    assert request["l7"]["dns"]["observation_source"] == "proxy", request
    assert request["Type"] == "L7" and request["event_type"]["type"] == 129, request
    # the agent's metrics count the proxy's requests (upstream's cilium_policy_l7_total)
    counts = l7_counts(cluster)
    assert counts["denied"] >= 2 and counts["forwarded"] >= 3, counts
    assert counts["received"] >= counts["denied"] + counts["forwarded"], counts


def l7_counts(cluster: Cluster) -> dict[str, float]:
    """The DNS proxy's ``cilium_policy_l7_total`` by rule, scraped from the agent's metrics."""
    scrape = subprocess.run(
        ["ip", "netns", "exec", cluster.agent.netns, PYTHON, "-c",
         "import urllib.request; print(urllib.request.urlopen("
         "'http://127.0.0.1:9962/metrics', timeout=10).read().decode())"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    return {
        line.split('rule="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in scrape.splitlines()
        if line.startswith("cilium_policy_l7_total{") and 'proxy_type="fqdn"' in line
    }


def test_malformed_dns_from_a_pod(cluster: Cluster) -> None:
    """Malformed DNS from the client pod to its DNS server, over real sockets, redirected to the
    agent's proxy by the datapath as any query: over UDP (the agent's path without a task, no
    concurrency limit) random bytes, a query whose name runs past its end, a query with no
    question (QDCOUNT 0) get FORMERR with their IDs; a header cut short and a response get
    nothing. Over TCP (a connection each) a length prefix of 65535 with 100 bytes behind it
    before the pod's end of the stream, one byte of a length prefix, an empty message, a header
    cut short and a response: the proxy closes the connection without a reply; a query with no
    question gets FORMERR and the connection goes on. Each one is a received request and a
    ``parse_errors`` of ``cilium_policy_l7_total``, none forwarded or denied; a well-formed
    query after them (UDP, and TCP on the connection that had the FORMERR) is answered."""
    before = l7_counts(cluster)
    res = subprocess.run(
        ["ip", "netns", "exec", cluster.client_ns, PYTHON, "-c", MALFORMED, cluster.dns_ip],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    seen = json.loads(res.stdout)
    formerr, noerror = dns.rcode.FORMERR, dns.rcode.NOERROR
    assert seen["udp"] == {
        "4097": [formerr, []], "4098": [formerr, []], "4100": [formerr, []],
        "4102": [noerror, [WORLD_IP]],
    }, seen  # fmt: skip
    assert seen["tcp_closed"] == ["closed"] * 5, seen
    assert seen["tcp"] == [[8193, formerr, []], [8194, noerror, [WORLD_IP]]], seen
    after = l7_counts(cluster)
    delta = {rule: after[rule] - before.get(rule, 0) for rule in after}
    # UDP 5 malformed + 1 query, TCP 5 closed + 1 FORMERR + 1 query
    assert delta == {"received": 13, "parse_errors": 11, "forwarded": 2, "denied": 0}, delta


def hubble(cluster: Cluster) -> list[dict[str, Any]]:
    sock = RUN_ROOT / cluster.agent.node / "hubble.sock"
    res = subprocess.run(
        [str(VENV_BIN / "ciliary"), "observe", "--server", f"unix://{sock}", "--last", "2000",
         "-o", "jsonpb"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return [r["flow"] for r in map(json.loads, res.stdout.splitlines()) if "flow" in r]


def _zombie(cluster: Cluster, ip: str) -> FQDNCacheEntry | None:
    """The agent's cache entry keeping ``ip`` for a connection (source connection), if any."""
    with cluster.agent.client() as cl:
        return next((e for e in cl.fqdn_cache() if e.ip == ip and e.source == "connection"), None)


def _kept_by_a_pass(cluster: Cluster, ip: str, since: float) -> None:
    """Waits for a conntrack GC pass that began after ``since`` (a zombie's expiration is the
    next pass) and kept ``ip``."""
    wait_for(
        f"a conntrack GC pass after {since} keeping {ip}",
        lambda: (z := _zombie(cluster, ip)) is not None
        and z.expiration_time.timestamp() > since + CT_GC_INTERVAL_S,
        timeout=15,
    )  # fmt: skip


def _echo(hold: subprocess.Popen[str], line: str) -> str:
    assert hold.stdin is not None and hold.stdout is not None
    hold.stdin.write(line + "\n")
    hold.stdin.flush()
    return hold.stdout.readline().strip()


def test_a_connection_outlives_its_answer_and_restarts(cluster: Cluster) -> None:
    """Issue #15 (upstream's DNS zombies): an answer's IP stays allowed past its TTL while a
    connection uses it, so data sent after the expiry passes (policy is checked on each of its
    packets), also after an agent restart (the saved cache keeps the zombie; the restarted
    agent's answers are restored too: the first connection to a name resolved before passes);
    once the connection is closed and a conntrack GC pass saw none, the IP leaves toFQDNs and a
    new connection to it is dropped."""
    cluster.query("web.example.com")  # TTL 30: an answer across the restart
    assert SHORT_WORLD_IP in cluster.query("short.example.com", server=cluster.short_dns_ip)
    hold = subprocess.Popen(
        ["ip", "netns", "exec", cluster.client_ns, PYTHON, "-c", HOLD, SHORT_WORLD_IP, "8080"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert hold.stdout is not None
    try:
        assert hold.stdout.readline().strip() == "world"
        zombie = wait_for(
            "the expired answer's IP kept for the connection",
            lambda: _zombie(cluster, SHORT_WORLD_IP), timeout=SHORT_TTL + 10,
        )  # fmt: skip
        _kept_by_a_pass(cluster, SHORT_WORLD_IP, since=time.time())
        assert zombie.fqdn == "short.example.com"
        with cluster.agent.client() as cl:
            assert "short.example.com" not in {
                e.fqdn for e in cl.fqdn_cache() if e.source == "lookup"
            }  # the answer itself expired
        listing = subprocess.run(
            [str(VENV_BIN / "ciliary"), "fqdn", "cache", "list", "--node", cluster.agent.node],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        assert any(
            line.split()[:3] == ["connection", "short.example.com", SHORT_WORLD_IP]
            for line in listing.splitlines() if line.split()
        ), listing  # fmt: skip
        assert _echo(hold, "after-the-ttl") == "after-the-ttl"
        cluster.agent.stop()
        restarted = time.time()
        cluster.agent.start()
        assert cluster.connect(WORLD_IP) == "world"  # the answers were restored
        with cluster.agent.client() as cl:
            assert ("web.example.com", WORLD_IP) in {(e.fqdn, e.ip) for e in cl.fqdn_cache()}
        assert "REFUSED" in cluster.query("evil.example.com", "--expect-rcode", "REFUSED")
        _kept_by_a_pass(cluster, SHORT_WORLD_IP, since=restarted)  # the zombie too
        assert _echo(hold, "after-a-restart") == "after-a-restart"
    finally:
        hold.communicate(timeout=10)  # its stdin closed: the connection closes
    # its conntrack entry outlives the close by CT_LIFETIME_CLOSE_S; the first pass after that
    # sees no connection and the next DNS GC removes the IP (no probing connection meanwhile:
    # it would be one)
    wait_for(
        "the IP to leave the cache",
        lambda: _zombie(cluster, SHORT_WORLD_IP) is None,
        timeout=CT_LIFETIME_CLOSE_S + 4 * CT_GC_INTERVAL_S + 5,
    )  # fmt: skip
    assert cluster.connect(SHORT_WORLD_IP).startswith("error")
    with cluster.agent.client() as cl:
        assert "short.example.com" not in {e.fqdn for e in cl.fqdn_cache()}
