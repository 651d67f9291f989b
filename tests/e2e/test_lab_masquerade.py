"""BPF masquerade (Cilium's ``bpf.masquerade``) and hostPort in a lab: a pod reaches a world
host, which has no route to pod CIDRs, over IPv4 and IPv6 (HTTP, UDP, ping) because its packets
leave the node's eth0 with the node IP as source and the replies are translated back; a world host
inside ``ipv4NativeRoutingCIDR`` receives the pod's own address instead; ``ciliary bpf nat list``
shows the mapping; an agent restart keeps a masqueraded TCP connection working (the NAT maps are
pinned, the new programs replace the old ones atomically); a container's ``hostPort`` is served on
the node's addresses, to the world host and to another pod (the agent's HostPort service)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ciliary.lab import manager
from tests.e2e.conftest import CILIARY, kube_lab, unique
from tests.kubectl import wait_for

pytestmark = pytest.mark.timeout(300)

LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {lab}}}
spec:
  hubble: {{relay: {{enabled: false}}}}
  nodeNetwork: {{ipv4: 192.168.78.0/24, ipv6: "fd78:1::/64"}}
  ipv4NativeRoutingCIDR: 192.168.78.96/28
  nodes:
  - name: {node}
  externals:
  - name: {web}
    command: [ciliary, workload, http-server, --port, "80"]
  - name: {inner}
    addresses: [192.168.78.100]
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeName: {node}
  containers: [{{name: main, command: [ciliary, workload, pause]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: hostported}}
spec:
  nodeName: {node}
  containers:
  - name: http
    command: [ciliary, workload, http-server, --port, "8080"]
    ports: [{{containerPort: 8080, hostPort: {host_port}}}]
"""
HOST_PORT = 18080
FETCH = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"  # noqa: E501
NODE = ("192.168.78.2", "fd78:1::2")
WEB = ("192.168.78.254", "fd78:1::ffff:ffff:ffff:fffe")
INNER = "192.168.78.100"  # inside ipv4NativeRoutingCIDR: never masqueraded
PORT = 9000

# A world host's peer log: every UDP datagram and TCP connection on PORT prints the peer's
# address; TCP connections are echoed (the held connection's round trips).
PEERS = """\
import socket, sys, threading
out = open(sys.argv[1], "a", buffering=1)
def peer(addr):
    return addr[0].removeprefix("::ffff:")
def dual(kind):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", int(sys.argv[2])))
    return s
def udp():
    s = dual(socket.SOCK_DGRAM)
    while True:
        _, addr = s.recvfrom(2048)
        out.write(f"udp {peer(addr)}\\n")
def echo(c, addr):
    out.write(f"tcp {peer(addr)}\\n")
    while data := c.recv(4096):
        c.sendall(data)
threading.Thread(target=udp, daemon=True).start()
t = dual(socket.SOCK_STREAM)
t.listen()
while True:
    c, addr = t.accept()
    threading.Thread(target=echo, args=(c, addr), daemon=True).start()
"""
SEND_UDP = "import socket, sys; socket.socket(int(sys.argv[3]), socket.SOCK_DGRAM).sendto(b'x', (sys.argv[1], int(sys.argv[2])))"  # noqa: E501
# One echo round trip per line read from stdin, "ok"/"fail" printed for each.
HOLD = """\
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
for line in sys.stdin:
    try:
        s.sendall(line.encode())
        print("ok" if s.recv(4096) == line.encode() else "fail", flush=True)
    except OSError as err:
        print(f"fail {err}", flush=True)
"""


@dataclass(frozen=True)
class MasqLab:
    name: str
    node: str
    pod_netns: str
    pod_ips: tuple[str, str]
    logs: dict[str, Path]  # world host -> its peer log
    world_netns: str  # the web host's


@pytest.fixture(scope="module")
def masq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MasqLab]:
    name, node, web, inner = unique("masq"), unique("n"), unique("w"), unique("i")
    tmp = tmp_path_factory.mktemp("masq")
    path = tmp / "lab.yaml"
    path.write_text(LAB.format(lab=name, node=node, web=web, inner=inner, host_port=HOST_PORT))
    procs: list[subprocess.Popen[bytes]] = []
    with kube_lab(path, name, [node]):
        try:
            logs = {}
            for host in (web, inner):
                logs[host] = tmp / f"{host}.log"
                logs[host].touch()
                argv = [sys.executable, "-c", PEERS, str(logs[host]), str(PORT)]
                world = ["ip", "netns", "exec", f"cilw-{name}-{host}"]
                procs.append(subprocess.Popen([*world, *argv]))
            pod = manager.find_pod(manager.record(name), "default/client")
            assert pod.ipv4 is not None and pod.ipv6 is not None
            ips = (pod.ipv4.partition("/")[0], pod.ipv6.partition("/")[0])
            yield MasqLab(
                name, node, pod.netns, ips, {"web": logs[web], "inner": logs[inner]},
                f"cilw-{name}-{web}",
            )  # fmt: skip
        finally:
            for p in procs:
                p.kill()
                p.wait()


def in_pod(lab: MasqLab, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", lab.pod_netns, *argv],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def peers_seen(log: Path) -> list[str]:
    return log.read_text().splitlines()


def nat_list(lab: MasqLab) -> str:
    return subprocess.run(
        [CILIARY, "bpf", "nat", "list", "--node", lab.node],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip


@pytest.mark.parametrize("family", [4, 6])
def test_pod_reaches_a_world_host_as_the_node(masq: MasqLab, family: int) -> None:
    i = 0 if family == 4 else 1
    host = WEB[i]
    url = f"http://{host}/" if family == 4 else f"http://[{host}]/"
    wait_for(
        f"http-get {url} from the pod",
        lambda: (
            manager.run_in_pod(
                "default/client", ["ciliary", "workload", "http-get", url], name=masq.name
            ).returncode
            == 0
        ),
        30,
    )
    ping = in_pod(masq, "ping", f"-{family}", "-c", "1", "-W", "5", host)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    af = "2" if family == 4 else "10"
    sent = in_pod(masq, sys.executable, "-c", SEND_UDP, host, str(PORT), af)
    assert sent.returncode == 0, sent.stderr
    wait_for("the world host's UDP peer", lambda: f"udp {NODE[i]}" in peers_seen(masq.logs["web"]))
    assert f"udp {masq.pod_ips[i]}" not in peers_seen(masq.logs["web"])


RAW_253 = "import socket, sys; socket.socket(socket.AF_INET, socket.SOCK_RAW, 253).sendto(b'x', (sys.argv[1], 0))"  # noqa: E501


def test_a_protocol_without_ports_to_the_world_is_dropped(masq: MasqLab) -> None:
    """Nothing to give a NAT port (IP protocol 253): dropped on the device, never leaked with the
    pod's address; Hubble names upstream's reason."""
    sent = in_pod(masq, sys.executable, "-c", RAW_253, WEB[0])
    assert sent.returncode == 0, sent.stderr
    nrec = next(n for n in manager.record(masq.name).nodes if n.name == masq.node)

    def dropped() -> list[dict[str, Any]]:
        res = subprocess.run(
            [CILIARY, "observe", "--server", f"unix://{nrec.state_dir}/hubble.sock", "--last",
             "500", "--verdict", "DROPPED", "-o", "jsonpb"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        flows = [r["flow"] for r in map(json.loads, res.stdout.splitlines()) if "flow" in r]
        return [
            f
            for f in flows
            if f.get("drop_reason_desc") == "UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE"
            and f["IP"]["destination"] == WEB[0]
        ]

    flows = wait_for("the drop 168 flow", dropped, 20)
    assert flows[0]["IP"]["source"] == masq.pod_ips[0]


def test_native_routing_cidr_is_not_masqueraded(masq: MasqLab) -> None:
    sent = in_pod(masq, sys.executable, "-c", SEND_UDP, INNER, str(PORT), "2")
    assert sent.returncode == 0, sent.stderr
    wait_for(
        "the pod's own address", lambda: f"udp {masq.pod_ips[0]}" in peers_seen(masq.logs["inner"])
    )
    assert f"udp {NODE[0]}" not in peers_seen(masq.logs["inner"])


def test_a_pod_answers_a_world_host_with_its_own_address(masq: MasqLab) -> None:
    """A connection the world host opens (given a route to the pod through the node) is not
    masqueraded: the pod's replies carry the pod's address, else the host's socket drops them."""
    world = ["ip", "netns", "exec", masq.world_netns]
    pod_ip = masq.pod_ips[0]
    subprocess.run([*world, "ip", "route", "replace", pod_ip, "via", NODE[0]], check=True)
    server = subprocess.Popen(
        ["ip", "netns", "exec", masq.pod_netns, sys.executable, "-c", PEERS, "/dev/null", "9001"]
    )
    try:
        wait_for("the pod's server", lambda: "9001" in in_pod(masq, "ss", "-ltnH").stdout, 10)
        client = subprocess.run(
            [*world, sys.executable, "-c", HOLD, pod_ip, "9001"],
            input="hello\n", capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert client.stdout.strip() == "ok", client.stdout + client.stderr
    finally:
        server.kill()
        server.wait()
        subprocess.run([*world, "ip", "route", "del", pod_ip], check=False)


@pytest.mark.parametrize("family", [4, 6])
def test_a_host_port_is_served_on_the_node_address(masq: MasqLab, family: int) -> None:
    """A container's ``hostPort`` without portmap or iptables: the agent's HostPort service
    (node address:hostPort → the pod's containerPort) serves a world host and another pod."""
    node = NODE[0] if family == 4 else f"[{NODE[1]}]"
    url = f"http://{node}:{HOST_PORT}/"
    world = ["ip", "netns", "exec", masq.world_netns, sys.executable, "-c", FETCH, url]

    def from_world() -> dict[str, Any] | None:
        res = subprocess.run(world, capture_output=True, text=True, timeout=30, check=False)
        return json.loads(res.stdout) if res.returncode == 0 else None

    answer = wait_for(f"GET {url} from the world host", from_world, 30)
    assert answer["pod"] == "hostported", answer
    got = manager.run_in_pod("default/client", [sys.executable, "-c", FETCH, url], name=masq.name)
    assert got.returncode == 0, got.stdout + got.stderr
    assert json.loads(got.stdout)["pod"] == "hostported"
    listing = subprocess.run(
        [CILIARY, "service", "list", "--node", masq.node, "-o", "json"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    frontends = [f for f in json.loads(listing) if f["type"] == "HostPort"]
    assert {(f["address"], f["port"]) for f in frontends} == {
        (NODE[0], HOST_PORT),
        (NODE[1], HOST_PORT),
    }
    assert all(f["name"] == f"hostported/host-port/{HOST_PORT}" for f in frontends), frontends


def test_masqueraded_connection_survives_an_agent_restart(masq: MasqLab) -> None:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", masq.pod_netns, sys.executable, "-c", HOLD, WEB[0], str(PORT)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def round_trip() -> str:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("hello\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    try:
        assert round_trip() == "ok"
        assert f"tcp {NODE[0]}" in peers_seen(masq.logs["web"])
        # the pod's tuple and the reply's, cilium-dbg's shape
        lines = [ln for ln in nat_list(masq).splitlines() if f"{WEB[0]}:{PORT}" in ln]
        out = [ln for ln in lines if ln.startswith("TCP OUT")]
        assert len(out) == 1, lines
        pod_port = out[0].split()[2].rpartition(":")[2]
        nat_to = out[0].split()[6]
        assert out[0].split()[2] == f"{masq.pod_ips[0]}:{pod_port}"
        assert out[0].split()[5] == "XLATE_SRC" and nat_to.startswith(f"{NODE[0]}:")
        nat_port = int(nat_to.rpartition(":")[2])
        assert 32768 <= nat_port <= 65535
        assert f"TCP IN {WEB[0]}:{PORT} -> {nat_to} XLATE_DST {masq.pod_ips[0]}:{pod_port}" in (
            " ".join(ln.split()[:7]) for ln in lines
        )
        started = time.monotonic()
        manager.restart_agent(masq.node, name=masq.name)
        assert round_trip() == "ok", f"after the agent restart ({time.monotonic() - started:.1f} s)"
        assert nat_to in nat_list(masq)
    finally:
        proc.communicate(timeout=10)
