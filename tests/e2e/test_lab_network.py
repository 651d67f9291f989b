"""The lab network (underlay) of a two-node lab with its own ``spec.nodeNetwork``: each node's
``eth0`` holds its node IPs and reaches the other node's over IPv4 and IPv6 through the bridge in
``cilu-<lab>`` (nothing of it in the root netns); world hosts (``spec.externals``) are on it
with their addresses and serve their command; ``kubectl get nodes -o wide`` shows the node IPs
as the nodes' InternalIPs (a pod's hostIP too); the agents run with them and the routing flags;
the API server is on the lab network (its ``.1``/``::1``, port 6443) for the nodes with their
kubeconfigs' credentials and out of a pod's reach (a pod still reaches a world host there);
``lab down`` removes the lab network and the world, also a lab network left by a crash without a
record."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ciliary.datapath.linux import netns
from ciliary.lab import manager, process
from tests.e2e.conftest import CILIARY, assert_no_leftovers, kube_lab, unique
from tests.kubectl import KUBECTL, get_json, kubectl

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
  externals:
  - name: {web}
    command: [ciliary, workload, http-server, --port, "8080"]
  - name: {db}
    addresses: [192.168.77.100, "fd77:1::100"]
"""
IPS = {0: ("192.168.77.2", "fd77:1::2"), 1: ("192.168.77.3", "fd77:1::3")}
WEB = ("192.168.77.254", "fd77:1::ffff:ffff:ffff:fffe")  # from the top of the subnets
DB = ("192.168.77.100", "fd77:1::100")
API = ("192.168.77.1", "fd77:1::1")  # the lab network's own addresses (its bridge's)


@dataclass
class NetLab:
    name: str
    nodes: list[str]
    kubeconfig: str
    web: str
    db: str


@pytest.fixture(scope="module")
def netlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetLab]:
    name, nodes, web, db = unique("net"), [unique("na"), unique("nb")], unique("w"), unique("d")
    path = tmp_path_factory.mktemp("lab") / "lab.yaml"
    path.write_text(LAB.format(lab=name, n1=nodes[0], n2=nodes[1], web=web, db=db))
    with kube_lab(path, name, nodes) as kubeconfig:
        yield NetLab(name, nodes, kubeconfig, web, db)


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
        # what eth0 receives for the node skips the rule-by-rule source check (bridge.accept_local)
        sysctl = in_node(netlab, node, "cat", "/proc/sys/net/ipv4/conf/eth0/accept_local")
        assert sysctl.stdout.strip() == "1", sysctl
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
    assert sorted(p["ifname"] for p in json.loads(ports)) == sorted(
        [*netlab.nodes, netlab.web, netlab.db]
    )
    # nothing of it in the root netns: no port, no address of the lab network
    root = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True)
    names = {link["ifname"] for link in json.loads(root.stdout)}
    assert not names & {*netlab.nodes, netlab.web, netlab.db}
    assert "192.168.77." not in root.stdout and "fd77:1::" not in root.stdout


def test_world_hosts_are_on_the_lab_network_and_serve(netlab: NetLab) -> None:
    for host, ips in ((netlab.web, WEB), (netlab.db, DB)):
        got = subprocess.run(
            ["ip", "-n", f"cilw-{netlab.name}-{host}", "-j", "addr", "show", "eth0"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        addr_info = json.loads(got)[0]["addr_info"]
        assert {a["local"] for a in addr_info if a["scope"] == "global"} == set(ips)
        # tunnel mode: no route to the pod CIDRs (the world reaches pods through services only)
        for family in ("-4", "-6"):
            routes = subprocess.run(
                ["ip", family, "-n", f"cilw-{netlab.name}-{host}", "route"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            assert " via " not in routes, (host, routes)
        for address in ips:
            ping = in_node(netlab, netlab.nodes[0], "ping", "-c", "1", "-W", "5", address)
            assert ping.returncode == 0, (host, address, ping.stdout, ping.stderr)
    # the web host's command serves on its addresses (it may still be starting: ask again)
    for url in (f"http://{WEB[0]}:8080/", f"http://[{WEB[1]}]:8080/"):
        deadline = time.monotonic() + 15
        while True:
            got = in_node(netlab, netlab.nodes[1], CILIARY, "workload", "http-get", url)
            if got.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert got.returncode == 0, (url, got.stdout, got.stderr)
    view = manager.status(netlab.name)
    assert [(e.name, e.ipv4, e.ipv6, e.alive) for e in view.externals] == [
        (netlab.web, *WEB, True),
        (netlab.db, *DB, False),  # no command: nothing runs
    ]
    table = subprocess.run(
        [CILIARY, "lab", "status", "--name", netlab.name],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "WORLD HOST" in table and f"cilw-{netlab.name}-{netlab.web}" in table


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


def connect(ns: str, host: str, port: int) -> str:
    """``ok`` or the error of a TCP connect from inside the netns ``ns`` (3 s)."""
    code = (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(({host!r}, {port}), timeout=3).close()\n"
        "    print('ok')\n"
        "except OSError as err:\n"
        "    print(type(err).__name__, err)\n"
    )
    got = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return got.stdout.strip()


def test_nodes_reach_the_api_on_the_lab_network_and_pods_do_not(netlab: NetLab) -> None:
    rec = manager.record(netlab.name)
    assert rec.control_plane is not None
    assert rec.control_plane.network_urls == [
        f"https://{API[0]}:6443",
        f"https://[{API[1]}]:6443",
    ]
    for node in rec.nodes:
        assert node.kubeconfig is not None  # what the agent uses: the API on the lab network
        assert f"server: https://{API[0]}:6443" in Path(node.kubeconfig).read_text()
        for url in rec.control_plane.network_urls:  # the node's own certificate, the lab's CA
            got = in_node(
                netlab, node.name, KUBECTL, "--kubeconfig", node.kubeconfig, "--server", url,
                "--request-timeout=5s", "get", "nodes", "-o", "name",
            )  # fmt: skip
            # kubectl checks the serving certificate names the address
            assert got.returncode == 0, (node.name, url, got.stderr)
            assert sorted(got.stdout.split()) == sorted(f"node/{n}" for n in netlab.nodes)
    # a pod (the lab's DNS pod) reaches a world host on the lab network (masqueraded) but not
    # the API there: its node forwards nothing of it to port 6443 of the bridge's addresses
    pod = manager.status(netlab.name).pods[0]
    for web, api in zip(WEB, API, strict=True):
        assert connect(pod.netns, web, 8080) == "ok", (pod.name, web)
        refused = connect(pod.netns, api, 6443)
        assert refused != "ok" and "timed out" not in refused, (pod.name, api, refused)
    # its node's own connections there pass (the fence is for what it forwards only)
    node_ns = f"ciln-{netlab.name}-{pod.node}"
    assert [connect(node_ns, api, 6443) for api in API] == ["ok", "ok"]
    # the kubernetes Service names it: the first address of the service range (#14)
    svc = get_json(netlab.kubeconfig, "svc", "kubernetes", "-n", "default")["spec"]
    assert (svc["clusterIPs"], svc["ports"][0]["port"]) == (["10.96.0.1"], 443)
    eps = get_json(netlab.kubeconfig, "endpointslice", "kubernetes", "-n", "default")
    assert eps["endpoints"][0]["addresses"] == [API[0]] and eps["ports"][0]["port"] == 6443


def test_lab_down_removes_the_lab_network(netlab: NetLab) -> None:
    web = manager.record(netlab.name).externals[0]
    assert process.alive(web.pid, web.start_time)
    assert netns.exists(f"cilu-{netlab.name}")
    manager.down(netlab.name)
    assert not netns.exists(f"cilu-{netlab.name}")
    assert not netns.list_names(f"cilw-{netlab.name}-")
    assert not process.alive(web.pid, web.start_time)


def test_lab_down_removes_a_lab_network_left_without_a_record() -> None:
    """As after a crash before the record's first write survived: the prefix sweep finds it."""
    name = unique("crash")
    netns.create(f"cilu-{name}")
    try:
        assert manager.down(name) == [name]
        assert not netns.exists(f"cilu-{name}")
    finally:
        netns.remove(f"cilu-{name}")


def test_a_world_host_whose_command_cannot_start_fails_lab_up(tmp_path: Path) -> None:
    name, node = unique("wbad"), unique("n")
    path = tmp_path / "lab.yaml"
    path.write_text(
        f"""\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {name}}}
spec:
  hubble: {{enabled: false}}
  nodes: [{{name: {node}}}]
  externals: [{{name: ext, command: [/nonexistent/server]}}]
"""
    )
    with pytest.raises(manager.LabError) as info:
        manager.up(path)
    assert "world host ext (spec.externals): cannot start '/nonexistent/server'" in str(info.value)
    assert "nothing was left behind" in str(info.value)
    assert_no_leftovers(name, [node])
