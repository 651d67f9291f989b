"""The L7 proxy redirect with real packets (bpf/lib/proxy.h, issue #15 Build 2): a real agent in a
node netns, two pods added through the CNI plugin, a policy whose egress rules carry L7 rules.

The agent writes its proxies' ports (``cilium-http-egress``, ``cilium-dns-egress``) into the
client's policy map: asserted through its API. The datapath part is then tested against a test
listener that stands in for the proxies (the agent's own proxies, once they run, hold their
ports): the redirecting entries are pointed at the listener's ports in the pinned map, and the
listener, bound with IP_TRANSPARENT in the node netns, answers what it saw.

Asserted, over IPv4 and IPv6: the pod's TCP connection and UDP query to a port with an L7 rule
reach it unchanged
(its local address / IP_RECVORIGDSTADDR is the original destination, the web pod's address and
port) and its answers come back to the pod from that destination; its upstream connection to the
web pod made as the pod (IP_TRANSPARENT, bound to the pod's address and port) gets the web pod's
replies; a port without L7 rules reaches the web pod itself; without a listener the connection
is dropped (fail closed) and Hubble names the reason (178, SOCKET_LOOKUP_FAILED).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ciliary.core.proxyports import DNS_EGRESS, HTTP_EGRESS
from ciliary.datapath.libbpf import Map
from ciliary.datapath.maps.conntrack import CT_F_PROXY_SHARED, CTMap

from .conftest import (
    PIN_ROOT,
    RUN_ROOT,
    VENV_BIN,
    NodeAgent,
    Pods,
    node_agent,
    run_plugin,
    unique,
)
from .l7proxy import CLIENT, LISTENER, netns_exec, point_to, serve, stop

pytestmark = pytest.mark.timeout(120)

V4_RANGE = "10.231.0.0/24"
V6_RANGE = "fd00:10:231::/120"
TEST_TCP_PORT, TEST_UDP_PORT = 10901, 10902  # the stand-in proxy's (free in a fresh node netns)
NO_PROXY_PORT = 10903

POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-l7, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET}]}
    - ports: [{port: "53", protocol: UDP}]
      rules: {dns: [{matchPattern: "*"}]}
    - ports: [{port: "8080", protocol: TCP}]
"""

# The web pod's servers: TCP 80 and UDP 53 (behind the L7 rules: what the proxy's upstream
# connections reach) and TCP 8080 (no L7 rule: never redirected); each answer names the port
# and the peer it saw.
WEB_SERVER = r"""
import select, socket
servers = []
for family, wildcard in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    for kind, port in ((socket.SOCK_STREAM, 80), (socket.SOCK_STREAM, 8080),
                       (socket.SOCK_DGRAM, 53)):
        s = socket.socket(family, kind)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((wildcard, port))
        if kind == socket.SOCK_STREAM:
            s.listen(8)
        servers.append(s)
print("ready", flush=True)
while True:
    for s in select.select(servers, [], [])[0]:
        port = s.getsockname()[1]
        if s.type == socket.SOCK_DGRAM:
            _, peer = s.recvfrom(512)
            s.sendto(f"web pod {port} from {peer[0]}".encode(), peer)
        else:
            c, peer = s.accept()
            c.sendall(f"web pod {port} from {peer[0]}".encode())
            c.close()
"""


class Node:
    """The agent, its two pods and their addresses."""

    def __init__(self, agent: NodeAgent, pods: Pods) -> None:
        self.agent = agent
        self.conf = {"cniVersion": "1.0.0", "name": "ciliary", "type": "ciliary-cni",
                     "node": agent.node}  # fmt: skip
        self.added: list[tuple[str, str]] = []
        self.client_ns, self.client_ips, self.client_ep = self._add(pods, "client")
        self.web_ns, self.web_ips, _ = self._add(pods, "web")
        self.client_ip, self.web_ip = self.client_ips[4], self.web_ips[4]

    def _add(self, pods: Pods, app: str) -> tuple[str, dict[int, str], int]:
        cid = unique("c")
        name, path = pods.new()
        conf = {**self.conf, "args": {"cni": {"labels": [{"key": "app", "value": app}]}}}
        run = run_plugin("ADD", conf, container_id=cid, netns=path,
                         args=f"K8S_POD_NAME={app};K8S_POD_NAMESPACE=default")  # fmt: skip
        assert run.rc == 0, str(run)
        self.added.append((cid, path))
        addrs = [i["address"].split("/")[0] for i in run.json["ips"]]
        ips = {6 if ":" in a else 4: a for a in addrs}
        with self.agent.client() as cl:
            ep = next(e.id for e in cl.endpoints() if e.container_id == cid)
        return name, ips, ep

    def cleanup(self) -> None:
        for cid, path in self.added:
            run_plugin("DEL", self.conf, container_id=cid, netns=path)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    pods = Pods()
    with node_agent(tmp_path_factory.mktemp("proxy-agent"), V4_RANGE, V6_RANGE) as agent:
        n = Node(agent, pods)
        try:
            with agent.client() as cl:
                cl.policy_import(POLICY, "client-l7.yaml")
            yield n
        finally:
            n.cleanup()
            pods.cleanup()


def _proxy_ports(node: Node) -> dict[tuple[str, str], int]:
    """(protocol, ports) → proxy port of the client's policy map entries that redirect."""
    with node.agent.client() as cl:
        entries = cl.endpoint_policy(node.client_ep).entries
    return {(e.protocol, e.ports): e.proxy_port for e in entries if e.proxy_port}


def _hubble(node: Node, *flags: str) -> list[dict[str, Any]]:
    sock = Path(RUN_ROOT) / node.agent.node / "hubble.sock"
    res = subprocess.run(
        [str(VENV_BIN / "ciliary"), "observe", "--server", f"unix://{sock}", "--last", "2000",
         "-o", "jsonpb", *flags],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return [r["flow"] for r in map(json.loads, res.stdout.splitlines()) if "flow" in r]


@pytest.mark.parametrize("upstream", ["pod-tuple", "own-port"])
def test_l7_ports_reach_the_proxy_with_the_original_destination(node: Node, upstream: str) -> None:
    ports = _proxy_ports(node)
    # the policy map names the node's proxies for the L7 ports only (8080 has none)
    assert set(ports) == {("TCP", "80"), ("UDP", "53")}
    with node.agent.client() as cl:
        status = cl.endpoint_policy(node.client_ep)
    assert not any("L7" in note for note in status.unsupported)
    # the ports of the node's proxies, as the agent's status lists them
    with node.agent.client() as cl:
        proxies = cl.status().proxy_ports
    assert ports["TCP", "80"] == proxies[HTTP_EGRESS]
    assert ports["UDP", "53"] == proxies[DNS_EGRESS]
    point_to(node.agent.node, node.client_ep, TEST_TCP_PORT, TEST_UDP_PORT)
    listener = serve(node.agent.netns, LISTENER, str(TEST_TCP_PORT), str(TEST_UDP_PORT), upstream)
    web = serve(node.web_ns, WEB_SERVER)
    try:
        for family in (4, 6):
            web_ip, client_ip = node.web_ips[family], node.client_ips[family]
            # the proxy sees the original destination; its upstream connection as the pod
            # (same tuple) gets the web pod's replies
            for kind, port in (("tcp", 80), ("udp", 53)):
                seen = netns_exec(node.client_ns, CLIENT, kind, web_ip, str(port))
                assert seen == (
                    f"proxy {kind} {web_ip}:{port} from {client_ip},"
                    f" upstream: web pod {port} from {client_ip}"
                )
            # a port without L7 rules is not redirected: the web pod answers
            seen = netns_exec(node.client_ns, CLIENT, "tcp", web_ip, "8080")
            assert seen == f"web pod 8080 from {client_ip}"
    finally:
        stop(listener)
        stop(web)
    # a proxy's own-port upstream packets (SO_MARK 0x0A00) are traced leaving it (from-proxy);
    # those of the pod's tuple are the pod's own connection's
    from_proxy = [
        f for f in _hubble(node, "--from-ip", node.client_ip)
        if f.get("trace_observation_point") == "FROM_PROXY"
        and f["IP"]["destination"] == node.web_ip
    ]  # fmt: skip
    assert bool(from_proxy) == (upstream == "own-port")
    # the redirect is traced at the to-proxy observation point
    to_proxy = [
        f for f in _hubble(node, "--from-ip", node.client_ip)
        if f.get("trace_observation_point") == "TO_PROXY"
        and f["IP"]["destination"] == node.web_ip
    ]  # fmt: skip
    assert {f["l4"].get("TCP", f["l4"].get("UDP"))["destination_port"] for f in to_proxy} >= {
        80,
        53,
    }


def test_without_a_proxy_listening_the_connection_is_dropped(node: Node) -> None:
    point_to(node.agent.node, node.client_ep, NO_PROXY_PORT, NO_PROXY_PORT)
    assert netns_exec(node.client_ns, CLIENT, "tcp", node.web_ip, "80").startswith("error")

    def dropped() -> list[dict[str, Any]]:
        return [
            f for f in _hubble(node, "--verdict", "DROPPED", "--from-ip", node.client_ip)
            if f.get("drop_reason_desc") == "SOCKET_LOOKUP_FAILED"
            and f["IP"]["destination"] == node.web_ip
        ]  # fmt: skip

    deadline = time.monotonic() + 15
    while not dropped():
        assert time.monotonic() < deadline, "no SOCKET_LOOKUP_FAILED drop in Hubble"
        time.sleep(0.2)


# A proxy that keeps its upstream connections, as Envoy's connection pool does: a transparent TCP
# listener (argv 1) in the node netns that, for each accepted connection, speaks to the
# original destination over its one connection per (pod address, destination), made as the pod
# from a port of its own with SO_MARK 0x0A00 (as Envoy's original_src), and answers with the
# destination's answer and that connection's port. The web pod's side (KEEP_WEB) keeps every
# connection too and answers each message.
POOL_PROXY = r"""
import select, socket, sys
IP_TRANSPARENT, IPV6_TRANSPARENT = 19, 75


def transparent(v6):
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
    if v6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    else:
        s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    s.settimeout(2)
    return s


listeners = []
for wildcard in ("0.0.0.0", "::"):
    s = transparent(":" in wildcard)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((wildcard, int(sys.argv[1])))
    s.settimeout(None)
    s.listen(8)
    listeners.append(s)
pool = {}
print("ready", flush=True)
while True:
    for s in select.select(listeners, [], [])[0]:
        c, peer = s.accept()
        orig = c.getsockname()[:2]
        try:
            up = pool.get((peer[0], orig))
            if up is None:
                up = transparent(":" in orig[0])
                up.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 0x0A00)
                up.bind((peer[0], 0))
                up.connect(orig)
                pool[peer[0], orig] = up
            up.send(b"hello")
            answer = f"{up.recv(200).decode()} port {up.getsockname()[1]}"
        except OSError as err:
            answer = f"error {type(err).__name__} {err.errno}"
        c.sendall(answer.encode())
        c.close()
"""

KEEP_WEB = r"""
import select, socket
listeners, conns = [], []
for family, wildcard in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    s = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((wildcard, 80))
    s.listen(8)
    listeners.append(s)
print("ready", flush=True)
while True:
    for s in select.select(listeners + conns, [], [])[0]:
        if s in listeners:
            conns.append(s.accept()[0])
        elif s.recv(100):
            s.sendall(f"web pod 80 from {s.getpeername()[0]}".encode())
        else:
            conns.remove(s)
            s.close()
"""

# A pod's connection from source port argv 3: its connect time, the pod's SYN retransmissions
# meanwhile (TcpExt TCPSynRetrans, IPv4 and IPv6) and what it was answered, as JSON.
FROM_PORT = r"""
import json, socket, sys, time
host, port, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def syn_retransmits():
    lines = open("/proc/net/netstat").read().splitlines()
    for head, values in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            return int(dict(zip(head.split()[1:], values.split()[1:]))["TCPSynRetrans"])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", sport))
s.settimeout(3)
before, began = syn_retransmits(), time.monotonic()
try:
    s.connect((host, port))
    took = time.monotonic() - began
    answer = s.recv(200).decode()
except OSError as err:
    took, answer = time.monotonic() - began, f"error {type(err).__name__}"
print(json.dumps([syn_retransmits() - before, round(took, 3), answer]))
"""


def test_a_pod_connection_on_the_tuple_of_the_proxys_upstream_connects_at_once(node: Node) -> None:
    """The proxy speaks to the destination as the pod from a port of its own and keeps that
    connection (Envoy's pool); the pod's kernel cannot see the port, so a new connection of the
    pod to the same destination may come from it. Its SYN must reach the proxy at once (a new
    conntrack entry: lib/conntrack.h ct_syn_reopens), and the proxy's connection keep working
    on the same tuple, also after the pod's connection closed. Before, the SYN was folded into
    the proxy's entry, found no socket and was dropped, every retransmission too (the l7
    bench's stalls: 2 s without an answer)."""
    point_to(node.agent.node, node.client_ep, TEST_TCP_PORT, TEST_UDP_PORT)
    proxy = serve(node.agent.netns, POOL_PROXY, str(TEST_TCP_PORT))
    web = serve(node.web_ns, KEEP_WEB)
    ct_map = Map.from_pin(PIN_ROOT / node.agent.node / "ciliary_ct")
    ct = CTMap(ct_map)
    try:
        for family in (4, 6):
            web_ip, client_ip = node.web_ips[family], node.client_ips[family]
            first = netns_exec(node.client_ns, CLIENT, "tcp", web_ip, "80")
            found = re.fullmatch(rf"web pod 80 from {re.escape(client_ip)} port (\d+)", first)
            assert found, first
            upstream_port = found[1]
            # from the port of the proxy's upstream connection: the proxy answers at once,
            # through that same connection (its replies still reach the proxy's socket)
            retransmits, took, answer = json.loads(
                netns_exec(node.client_ns, FROM_PORT, web_ip, "80", upstream_port)
            )
            assert (retransmits, answer) == (0, first), (took, answer)
            assert took < 0.5
            # that connection is over (the proxy closed it) but the proxy's goes on: the tuple's
            # entry keeps an established connection's lifetime, not the 10 s after closing
            # (a FIN of the web pod's after that would have found no entry)
            (entry,) = [
                r for r in ct.items()
                if (str(r.src), r.sport, str(r.dst), r.dport)
                == (client_ip, int(upstream_port), web_ip, 80)
            ]  # fmt: skip
            assert entry.flags & CT_F_PROXY_SHARED, hex(entry.flags)
            assert entry.expires_ns - time.monotonic_ns() > 3600 * 10**9
    finally:
        ct_map.close()
        stop(proxy)
        stop(web)
