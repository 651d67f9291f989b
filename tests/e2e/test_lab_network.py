"""The lab network (underlay) of a two-node lab with its own ``spec.nodeNetwork``: each node's
``eth0`` holds its node IPs and reaches the other node's over IPv4 and IPv6 through the bridge in
``cilu-<lab>`` (nothing of it in the root netns); ``kubectl get nodes -o wide`` shows them as the
nodes' InternalIPs (a pod's hostIP too); the agents run with them and the routing flags; ``lab
down`` removes the lab network, also one left by a crash without a record."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ciliary.datapath.linux import netns
from ciliary.lab import manager
from tests.e2e.conftest import kube_lab, unique
from tests.kubectl import get_json, kubectl

pytestmark = pytest.mark.timeout(300)

LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {lab}}}
spec:
  hubble: {{relay: {{enabled: false}}}}
  nodeNetwork: {{ipv4: 192.168.77.0/24, ipv6: "fd77:1::/64"}}
  tunnelPort: 4789
  nodes:
  - name: {n1}
  - name: {n2}
"""
IPS = {0: ("192.168.77.2", "fd77:1::2"), 1: ("192.168.77.3", "fd77:1::3")}


@dataclass
class NetLab:
    name: str
    nodes: list[str]
    kubeconfig: str


@pytest.fixture(scope="module")
def netlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetLab]:
    name, nodes = unique("net"), [unique("na"), unique("nb")]
    path = tmp_path_factory.mktemp("lab") / "lab.yaml"
    path.write_text(LAB.format(lab=name, n1=nodes[0], n2=nodes[1]))
    with kube_lab(path, name, nodes) as kubeconfig:
        yield NetLab(name, nodes, kubeconfig)


def in_node(lab: NetLab, node: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", f"ciln-{lab.name}-{node}", *argv],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_nodes_reach_each_other_on_the_lab_network(netlab: NetLab) -> None:
    for i, node in enumerate(netlab.nodes):
        link = json.loads(in_node(netlab, node, "ip", "-j", "addr", "show", "eth0").stdout)[0]
        assert link["mtu"] == 1500 and "UP" in link["flags"]
        have = {(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["scope"] == "global"}
        assert have == {(IPS[i][0], 24), (IPS[i][1], 64)}
        other = IPS[1 - i]
        for address in other:
            got = in_node(netlab, node, "ping", "-c", "1", "-W", "5", address)
            assert got.returncode == 0, (node, address, got.stdout, got.stderr)
    bridge = subprocess.run(
        ["ip", "-n", f"cilu-{netlab.name}", "-j", "addr", "show", "br0"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    br = json.loads(bridge)[0]
    assert {a["local"] for a in br["addr_info"] if a["scope"] == "global"} == {
        "192.168.77.1",
        "fd77:1::1",
    }
    ports = subprocess.run(
        ["ip", "-n", f"cilu-{netlab.name}", "-j", "link", "show", "master", "br0"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert sorted(p["ifname"] for p in json.loads(ports)) == sorted(netlab.nodes)
    # nothing of it in the root netns: no port, no address of the lab network
    root = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True)
    names = {link["ifname"] for link in json.loads(root.stdout)}
    assert not names & set(netlab.nodes)
    assert "192.168.77." not in root.stdout and "fd77:1::" not in root.stdout


def test_kubectl_shows_the_node_ips_as_internal_ips(netlab: NetLab) -> None:
    rows = kubectl(netlab.kubeconfig, "get", "nodes", "-o", "wide").splitlines()
    assert rows[0].split()[5] == "INTERNAL-IP"
    wide = {r.split()[0]: r.split()[5] for r in rows[1:]}
    assert wide == {node: IPS[i][0] for i, node in enumerate(netlab.nodes)}
    for i, node in enumerate(netlab.nodes):
        addresses = get_json(netlab.kubeconfig, "node", node)["status"]["addresses"]
        assert addresses == [
            {"type": "InternalIP", "address": IPS[i][0]},
            {"type": "InternalIP", "address": IPS[i][1]},
            {"type": "Hostname", "address": node},
        ]
    # kubelet's hostIP: the pod's node's InternalIP (the lab's DNS pod)
    dns = get_json(netlab.kubeconfig, "pods", "-n", "kube-system")["items"][0]
    node_index = netlab.nodes.index(dns["spec"]["nodeName"])
    assert dns["status"]["hostIP"] == IPS[node_index][0]


def test_agents_run_with_their_node_ips_and_the_routing(netlab: NetLab) -> None:
    rec = manager.record(netlab.name)
    for i, nrec in enumerate(rec.nodes):
        assert (nrec.node_ipv4, nrec.node_ipv6) == IPS[i]
        assert nrec.agent_pid is not None
        argv = Path(f"/proc/{nrec.agent_pid}/cmdline").read_bytes().decode().split("\0")
        flags = " ".join(argv)
        assert f"--ipv4-node {IPS[i][0]} --ipv6-node {IPS[i][1]}" in flags
        assert "--devices eth0 --routing-mode tunnel --tunnel-port 4789" in flags
        assert "--auto-direct-node-routes" not in flags
    view = manager.status(netlab.name)
    assert [(n.node_ipv4, n.node_ipv6) for n in view.nodes] == [IPS[0], IPS[1]]


def test_lab_down_removes_the_lab_network(netlab: NetLab) -> None:
    assert netns.exists(f"cilu-{netlab.name}")
    manager.down(netlab.name)
    assert not netns.exists(f"cilu-{netlab.name}")


def test_lab_down_removes_a_lab_network_left_without_a_record() -> None:
    """As after a crash before the record's first write survived: the prefix sweep finds it."""
    name = unique("crash")
    netns.create(f"cilu-{name}")
    try:
        assert manager.down(name) == [name]
        assert not netns.exists(f"cilu-{name}")
    finally:
        netns.remove(f"cilu-{name}")
