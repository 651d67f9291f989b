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

from ciliary.lab.cniruntime import CNIRuntime
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
