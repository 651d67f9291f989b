"""Chained CNI plugins with real traffic, as the lab's runtime runs them: ``ciliary-cni`` first,
then Debian's ``portmap`` (hostPort) and ``bandwidth``, executed inside a real node netns with a
real agent and datapath, and checked with real TCP connections and iperf3 between pod netns.

* hostPort hairpin: a pod reaches another pod's hostPort through the node's IP, as with portmap on
  other CNIs. The request goes through the node stack (portmap's DNAT), so the reply must too: if
  the datapath delivered it straight to the client pod, nothing would undo the DNAT and the
  client, seeing an answer from an address it never called, would reset the connection.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from ipaddress import ip_interface
from pathlib import Path
from typing import Any

import pytest

from ciliary.lab.cniruntime import CNIRuntime, CNIRuntimeError
from tests.integration.cni.conftest import (
    VENV_BIN,
    NodeAgent,
    in_netns,
    netns_add,
    netns_del,
    node_agent,
    unique,
)

pytestmark = pytest.mark.timeout(180)

V4_RANGE = "10.232.0.0/24"
NODE_IP = "192.0.2.10"  # TEST-NET-1, only ever inside the node netns made here
REFERENCE_PLUGINS = Path("/usr/lib/cni")

# a TCP server that answers every line with "echo:" + the line and the peer it saw
SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(8)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    data = c.recv(1024)
    c.sendall(b"echo:" + data)
    c.close()
"""
CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
c.sendall(b"hello"); print(c.recv(1024).decode()); c.close()
"""


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeAgent]:
    with node_agent(tmp_path_factory.mktemp("lab-cni"), V4_RANGE, None) as a:
        # the node's own address (the one hostPorts are reached on), local to the node netns
        in_netns(a.netns, "ip", "addr", "add", f"{NODE_IP}/32", "dev", "lo")
        yield a


class Pods:
    """Pod netns and the processes started in them; all gone at the end of the test."""

    def __init__(self) -> None:
        self.netns: list[str] = []
        self.procs: list[subprocess.Popen[str]] = []

    def new(self) -> tuple[str, str]:
        name = unique("cicp-")
        self.netns.append(name)
        return name, str(netns_add(name))

    def serve(self, pod: str, port: int) -> None:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", pod, "python3", "-c", SERVER, str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    def cleanup(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
        for name in self.netns:
            netns_del(name)


@pytest.fixture
def pods() -> Iterator[Pods]:
    p = Pods()
    try:
        yield p
    finally:
        p.cleanup()


def runtime(agent: NodeAgent, base: Path, plugins: list[dict[str, Any]]) -> CNIRuntime:
    conf_dir = base / "net.d"
    conf_dir.mkdir(parents=True, exist_ok=True)
    body = {"cniVersion": "1.0.0", "name": unique("lab"), "plugins": plugins}
    (conf_dir / "10-lab.conflist").write_text(json.dumps(body))
    return CNIRuntime(
        conf_dir, [VENV_BIN, REFERENCE_PLUGINS], netns_of_runtime=str(agent.netns_path)
    )


def pod_ip(result: dict[str, Any]) -> str:
    return str(ip_interface(result["ips"][0]["address"]).ip)


def test_pod_reaches_a_hostport_on_its_own_node_through_the_node_ip(
    agent: NodeAgent, pods: Pods, tmp_path: Path
) -> None:
    rt = runtime(agent, tmp_path, [
        {"type": "ciliary-cni", "node": agent.node},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
    ])  # fmt: skip
    caps = {"portMappings": [{"hostPort": 18090, "containerPort": 8080, "protocol": "tcp"}]}
    (server, server_path), (client, client_path) = pods.new(), pods.new()
    sid, cid = unique("srv"), unique("cli")
    try:
        served = rt.add(sid, server_path, "eth0", capability_args=caps)
        rt.add(cid, client_path, "eth0")
        pods.serve(server, 8080)
        # direct pod-to-pod first: the datapath's own fast path keeps working
        direct = in_netns(client, "python3", "-c", CLIENT, pod_ip(served), "8080", check=False)
        assert direct.stdout.strip() == "echo:hello", direct
        started = time.monotonic()
        hairpin = in_netns(client, "python3", "-c", CLIENT, NODE_IP, "18090", check=False)
        assert (hairpin.returncode, hairpin.stdout.strip()) == (0, "echo:hello"), hairpin
        assert time.monotonic() - started < 5
    finally:
        rt.delete(cid, client_path, "eth0")
        rt.delete(sid, server_path, "eth0")


# --------------------------------------------------------------------------- bandwidth

RATE = 8_000_000  # bits/s


def iperf3(netns: str, server_ip: str, port: int, pods: Pods, server_pod: str) -> float:
    """Bits/s a 2 s TCP stream from ``netns`` to ``server_ip`` got (received side)."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", server_pod, "iperf3", "-s", "-1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        out = ""
        for _ in range(50):  # the server listens within a moment
            run = in_netns(netns, "iperf3", "-c", server_ip, "-p", str(port), "-t", "2", "-J",
                           check=False)  # fmt: skip
            out = run.stdout
            # (with -J, iperf3 exits 0 also when it could not connect: the JSON says "error")
            end = json.loads(out or "{}").get("end", {}) if run.returncode == 0 else {}
            if "sum_received" in end:
                return float(end["sum_received"]["bits_per_second"])
            time.sleep(0.1)
        raise AssertionError(f"iperf3 never ran: {out}")
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_bandwidth_ingress_rate_shapes_real_traffic_to_the_pod(
    agent: NodeAgent, pods: Pods, tmp_path: Path
) -> None:
    rt = runtime(agent, tmp_path, [
        {"type": "ciliary-cni", "node": agent.node},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
    ])  # fmt: skip
    caps = {"bandwidth": {"ingressRate": RATE, "ingressBurst": RATE // 8}}
    (shaped, shaped_path), (free, free_path) = pods.new(), pods.new()
    sid, fid = unique("bw"), unique("free")
    try:
        ip = pod_ip(rt.add(sid, shaped_path, "eth0", capability_args=caps))
        free_ip = pod_ip(rt.add(fid, free_path, "eth0"))
        # from the node (and so from other nodes, hostPorts, ...): through the veth's tbf
        limited = iperf3(agent.netns, ip, 5201, pods, shaped)
        unlimited = iperf3(agent.netns, free_ip, 5202, pods, free)
        assert 0.3 * RATE < limited < 1.3 * RATE, (limited, unlimited)
        assert unlimited > 10 * RATE, (limited, unlimited)
        # what the README says: a pod of the same node is delivered straight into the shaped
        # pod (bpf_redirect_peer), past the veth's qdisc, so it is not limited
        same_node = iperf3(free, ip, 5203, pods, shaped)
        assert same_node > 10 * RATE, same_node
    finally:
        rt.delete(sid, shaped_path, "eth0")
        rt.delete(fid, free_path, "eth0")


def test_bandwidth_egress_rate_after_ciliary_is_refused_before_anything_is_made(
    agent: NodeAgent, pods: Pods, tmp_path: Path
) -> None:
    rt = runtime(agent, tmp_path, [
        {"type": "ciliary-cni", "node": agent.node},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
    ])  # fmt: skip
    caps = {"bandwidth": {"egressRate": RATE, "egressBurst": RATE // 8}}
    _, path = pods.new()
    cid = unique("bwe")
    links_before = agent.links()
    with pytest.raises(CNIRuntimeError) as err:
        rt.add(cid, path, "eth0", capability_args=caps)
    assert (err.value.code, err.value.plugin) == (7, "bandwidth"), err.value
    for fragment in ("egressRate 8000000", "ciliary-cni", "tcx", "ingressRate only"):
        assert fragment in err.value.msg, err.value.msg
    assert agent.links() == links_before  # no endpoint, no ifb: nothing half-made
    with agent.client() as cl:
        assert [e for e in cl.endpoints() if e.container_id == cid] == []
