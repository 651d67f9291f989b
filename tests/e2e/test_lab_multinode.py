"""Pods on three nodes of one lab talk across nodes, in both of Cilium's routing modes: VXLAN
(the default; the source identity rides in the VNI) and native routing (the lab network routes
the pod CIDRs, the receiving node takes the identity from its ipcache). A policy allowing one
source is enforced at the destination node with the sender's real identity: a pod of the third
node with other labels is dropped there, ``Policy denied``, and the receiving node's Hubble names
its identity. Hubble on either node names both pods of a cross-node flow (the receiving node
knows the sender only by its address and the identity the overlay carried; its pod name and
namespace come from the cluster's CiliumEndpoints, as upstream's ipcache metadata), so pod
filters select cross-node traffic, and the relay's ``--node-name`` selects one node's flows. An
agent restart on either end leaves a cross-node connection established. A node's own stack
reaches a pod of another node over ICMP and HTTP, IPv4 and IPv6 (tunnel mode: routed via
ciliary_host, tunnelled by cil_from_host with the host identity), and the receiving node sees it
as remote-node: a policy allowing remote-node admits it, one allowing only a pod drops it.
Cluster health, as ``cilium-health`` (probes every second here, ``spec.healthCheckInterval``):
every agent reports every node reachable over ICMP and HTTP (:4240 ``/hello``) on its IPv4 and
IPv6 node IPs and on its health endpoint's (identity 4 ``reserved:health`` in ``ciliary endpoint
list``, in a netns of its own, its addresses the CiliumNode's ``spec.health``; reached over the
overlay or the native routes as a pod), with round-trip times; the third node's agent stopped,
its HTTP turns unreachable on both paths while ICMP stays (the health netns' stack answers);
then its ``eth0`` down, ICMP too, each within a few probe intervals (these two come last: they
take the third node away); ``lab down`` leaves no health netns (``assert_no_leftovers``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ciliary.core.models import ClusterHealth, StatusResponse
from ciliary.datapath.libbpf import Map
from ciliary.datapath.maps.config import DP_F_FIB_MAIN_V4, DP_F_FIB_MAIN_V6, ConfigMap
from ciliary.datapath.maps.tunnel import TUNNEL_DIRECT_MAP, TunnelDirectMap
from ciliary.lab import manager
from tests.e2e.conftest import CILIARY, kube_lab, unique
from tests.kubectl import get_json, kubectl, wait_for

pytestmark = pytest.mark.timeout(300)

LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {lab}}}
spec:
  routingMode: {mode}
  autoDirectNodeRoutes: {direct}
{native}  healthCheckInterval: 1
  nodes:
  - name: {n1}
  - name: {n2}
  - name: {n3}
---
apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, labels: {{app: client}}}}
spec:
  nodeName: {n1}
  containers: [{{name: main, command: [ciliary, workload, pause]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: other, labels: {{app: other}}}}
spec:
  nodeName: {n3}
  containers: [{{name: main, command: [ciliary, workload, pause]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: shop, labels: {{app: server}}}}
spec:
  nodeName: {n2}
  containers:
  - name: echo
    command: [ciliary, workload, echo-server, --tcp-port, "7", --udp-port, "7"]
  - name: web
    command: [ciliary, workload, http-server, --port, "80"]
"""

# native routing with the pod pools as the native routing CIDRs (as upstream asks of native
# routing with masquerade): what lets bpf_lxc route in the main table alone (lib/fib.h)
NATIVE_CIDRS = """\
  ipv4NativeRoutingCIDR: 10.200.0.0/16
  ipv6NativeRoutingCIDR: fd00:10:200::/104
"""

ONLY_CLIENT = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-from-client, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: client
        k8s:io.kubernetes.pod.namespace: default
"""

# A TCP connection held open across an agent restart: one echo round trip per line read from
# stdin, "ok"/"fail" printed for each.
HOLD = """\
import socket, sys
s = socket.create_connection((sys.argv[1], 7), timeout=5)
for line in sys.stdin:
    try:
        s.sendall(line.encode())
        got = b""
        while len(got) < len(line):
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        print("ok" if got == line.encode() else "fail", flush=True)
    except OSError as err:
        print(f"fail {err}", flush=True)
"""


@dataclass(frozen=True)
class MultiLab:
    name: str
    mode: str
    nodes: list[str]
    kubeconfig: str

    def ip(self, pod: str, family: int = 4) -> str:
        prec = manager.find_pod(manager.record(self.name), pod)
        addr = prec.ipv4 if family == 4 else prec.ipv6
        assert addr is not None, (pod, family)
        return addr.partition("/")[0]

    def run(self, pod: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return manager.run_in_pod(pod, list(argv), name=self.name, timeout=30)


@pytest.fixture(scope="module", params=["tunnel", "native"])
def lab(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MultiLab]:
    mode = str(request.param)
    name, nodes = unique("mn"), [unique("n") for _ in range(3)]
    path = tmp_path_factory.mktemp("multinode") / "lab.yaml"
    direct = str(mode == "native").lower()
    native = NATIVE_CIDRS if mode == "native" else ""
    text = LAB.format(
        lab=name, mode=mode, direct=direct, native=native, n1=nodes[0], n2=nodes[1], n3=nodes[2]
    )
    path.write_text(text)
    with kube_lab(path, name, nodes) as kubeconfig:
        yield MultiLab(name, mode, nodes, kubeconfig)


def _serving(lab: MultiLab, family: int) -> None:
    host = lab.ip("shop/server", family)
    url = f"http://[{host}]/" if family == 6 else f"http://{host}/"
    wait_for(
        f"the server over IPv{family}",
        lambda: lab.run("default/client", "ciliary", "workload", "http-get", url).returncode == 0,
        30,
    )


@pytest.mark.parametrize("family", [4, 6])
def test_pod_to_pod_across_nodes(lab: MultiLab, family: int) -> None:
    _serving(lab, family)
    server = lab.ip("shop/server", family)
    for argv in (
        ["ciliary", "workload", "tcp-echo", server, "7", "--count", "3"],
        ["ciliary", "workload", "udp-echo", server, "7", "--count", "3"],
        ["ciliary", "workload", "ping", server, "-c", "3", "-i", "0.1"],
    ):
        for pod in ("default/client", "default/other"):  # from node 1 and from node 3
            res = lab.run(pod, *argv)
            assert res.returncode == 0, f"{pod} {argv}: {res.stdout} {res.stderr}"


def _identity(lab: MultiLab, pod: str) -> int:
    cep = get_json(lab.kubeconfig, "ciliumendpoints", pod, "-n", "default")
    return int(cep["status"]["identity"]["id"])


def _pod(endpoint: dict[str, Any]) -> str:
    return f"{endpoint.get('namespace', '')}/{endpoint.get('pod_name', '')}"


def _observe(server: str, *flags: str) -> list[dict[str, Any]]:
    res = subprocess.run(
        [CILIARY, "observe", "--server", server, "--last", "500", "-o", "jsonpb", *flags],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return [r["flow"] for r in map(json.loads, res.stdout.splitlines()) if "flow" in r]


def _node_socket(lab: MultiLab, node: str) -> str:
    nrec = next(n for n in manager.record(lab.name).nodes if n.name == node)
    return f"unix://{nrec.state_dir}/hubble.sock"


def test_policy_enforced_at_the_destination_with_the_source_identity(lab: MultiLab) -> None:
    _serving(lab, 4)
    server = lab.ip("shop/server")
    tcp = ["ciliary", "workload", "tcp-echo", server, "7", "--timeout", "1"]
    kubectl(lab.kubeconfig, "apply", "-f", "-", stdin=ONLY_CLIENT)
    try:
        wait_for("other denied", lambda: lab.run("default/other", *tcp).returncode != 0, 20)
        assert lab.run("default/client", *tcp).returncode == 0

        other_id, client_id = _identity(lab, "other"), _identity(lab, "client")
        assert other_id != client_id
        n2 = lab.nodes[1]

        def denied() -> list[dict[str, Any]]:
            return [
                f
                for f in _observe(
                    _node_socket(lab, n2), "--verdict", "DROPPED", "--to-pod", "shop/server"
                )
                if f.get("drop_reason_desc") == "POLICY_DENIED"
            ]

        drop = wait_for("the destination node's drop", denied, 20)[-1]
        # decided on node 2 (the server's) with the sender's real identity, not world's
        assert drop["node_name"].endswith(n2), drop
        assert drop["source"]["identity"] == other_id, drop
        assert "k8s:app=other" in drop["source"]["labels"], drop
        assert _pod(drop["source"]) == "default/other", drop  # named from its CiliumEndpoint
        assert drop["traffic_direction"] == "INGRESS", drop

        allowed = [
            f
            for f in _observe(
                _node_socket(lab, n2), "--verdict", "FORWARDED", "--to-pod", "shop/server"
            )
            if f["source"]["identity"] == client_id
        ]
        assert allowed, "no forwarded flow from the client at the destination node"
        # observed on both ends: into the tunnel, or (native) straight to eth0 by BPF host
        # routing, never through the node stack; delivered at the destination (from-overlay
        # is reported at aggregation "none" only, as upstream)
        sent = _observe(
            _node_socket(lab, lab.nodes[0]), "--to-ip", server, "--verdict", "FORWARDED"
        )
        points = {f["trace_observation_point"] for f in sent if "trace_observation_point" in f}
        assert points == {"TO_OVERLAY" if lab.mode == "tunnel" else "TO_NETWORK"}, points
        points = {f["trace_observation_point"] for f in allowed if "trace_observation_point" in f}
        assert points == {"TO_ENDPOINT"}, points
    finally:
        kubectl(lab.kubeconfig, "delete", "cnp", "-n", "shop", "server-from-client")
    wait_for("other allowed again", lambda: lab.run("default/other", *tcp).returncode == 0, 20)


def test_receiving_node_names_the_remote_client(lab: MultiLab) -> None:
    """On the server's node the client is a remote pod: ``--from-pod default/client`` selects
    its flows, and they name it (and the server) as on the client's own node."""
    _serving(lab, 4)
    n1, n2 = lab.nodes[0], lab.nodes[1]
    node2 = _node_socket(lab, n2)
    flows = wait_for(
        "node 2's flows from default/client",
        lambda: _observe(node2, "--from-pod", "default/client", "--to-pod", "shop/server"),
        10,
    )
    for f in flows:
        assert f["node_name"] == f"{lab.name}/{n2}", f
        assert (_pod(f["source"]), _pod(f["destination"])) == ("default/client", "shop/server")
        assert "ID" not in f["source"], f  # not an endpoint of this node
        assert "k8s:app=client" in f["source"]["labels"], f
        assert f["source"]["cluster_name"] == lab.name, f
    # replies name the remote client as their destination; --namespace matches either end
    replies = _observe(node2, "--to-pod", "default/client")
    assert replies and all(_pod(f["source"]) == "shop/server" for f in replies), replies
    ns = _observe(node2, "--namespace", "default")
    assert len(ns) >= len(flows) + len(replies), (len(ns), len(flows), len(replies))
    # on the client's node the server is the remote one
    sent = _observe(_node_socket(lab, n1), "--to-pod", "shop/server")
    assert sent and all(_pod(f["source"]) == "default/client" for f in sent), sent


def test_relay_names_both_ends_and_selects_a_node(lab: MultiLab) -> None:
    """Through the relay both nodes' flows of the connection name both pods; ``--node-name``
    (``<cluster>/<node>``, or a node pattern) keeps one node's."""
    _serving(lab, 4)
    relay = manager.record(lab.name).relay
    assert relay is not None
    n1, n2 = lab.nodes[0], lab.nodes[1]
    both = _observe(relay.address, "--from-pod", "default/client", "--to-pod", "shop/server")
    nodes = {f["node_name"] for f in both}
    assert nodes == {f"{lab.name}/{n1}", f"{lab.name}/{n2}"}, nodes
    # <cluster>/<node>, or a bare node name (any cluster)
    for pattern, node in ((f"{lab.name}/{n1}", n1), (n2, n2)):
        one = _observe(relay.address, "--node-name", pattern, "--from-pod", "default/client")
        assert one and {f["node_name"] for f in one} == {f"{lab.name}/{node}"}, (pattern, one)
    assert _observe(relay.address, "--node-name", f"other/{n1}") == []


def test_connection_survives_agent_restarts(lab: MultiLab) -> None:
    _serving(lab, 4)
    client = manager.find_pod(manager.record(lab.name), "default/client")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", client.netns, sys.executable, "-c", HOLD, lab.ip("shop/server")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None

    def round_trip() -> str:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("hello\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    try:
        assert round_trip() == "ok"
        for node in (lab.nodes[0], lab.nodes[1]):  # the client's, then the server's
            manager.restart_agent(node, name=lab.name)
            assert round_trip() == "ok", f"after restarting {node}'s agent"
    finally:
        proc.communicate(timeout=10)  # closes stdin: the holder ends; its pipes are closed


# A bulk transfer through the echo server: ``size`` bytes sent (the pod's TCP hands its veth GSO
# packets of tens of KB) while the echo comes back; prints the bytes echoed.
BULK = """\
import socket, sys, threading
size = int(sys.argv[2])
s = socket.create_connection((sys.argv[1], 7), timeout=10)
threading.Thread(target=lambda: s.sendall(b"x" * size), daemon=True).start()
got = 0
while got < size:
    chunk = s.recv(1 << 16)
    if not chunk:
        break
    got += len(chunk)
print(got)
"""


def _stack_forwarded(netns: str, family: int) -> int:
    """Datagrams the node's own stack forwarded (IpForwDatagrams, Ip6OutForwDatagrams)."""
    if family == 4:
        head, values = [
            line.split()[1:]
            for line in subprocess.run(
                ["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"],
                capture_output=True, text=True, check=True,
            ).stdout.splitlines()
            if line.startswith("Ip: ")
        ][:2]  # fmt: skip
        return int(dict(zip(head, values, strict=True))["ForwDatagrams"])
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "cat", "/proc/net/snmp6"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return int(dict(line.split() for line in out.splitlines())["Ip6OutForwDatagrams"])


@pytest.mark.parametrize("family", [4, 6])
def test_bulk_tcp_leaves_the_node_by_bpf_not_by_its_stack(lab: MultiLab, family: int) -> None:
    """A pod's bulk TCP to another node's pod is routed by bpf_lxc (tunnel: into ciliary_vxlan;
    native: the FIB and bpf_redirect to eth0, lib/fib.h), not forwarded by the node's stack,
    also when its packets are GSO packets far larger than the MTU: the FIB's MTU check is on
    the segments, as the stack's own (before, every GSO packet was "too big" for the FIB and
    took the stack's forwarding path in native mode)."""
    _serving(lab, family)
    size = 8 << 20
    client = manager.find_pod(manager.record(lab.name), "default/client")
    node = next(n for n in manager.record(lab.name).nodes if n.name == lab.nodes[0])
    before = _stack_forwarded(node.netns, family)
    res = subprocess.run(
        ["ip", "netns", "exec", client.netns, sys.executable, "-c", BULK,
         lab.ip("shop/server", family), str(size)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    forwarded = _stack_forwarded(node.netns, family) - before
    assert res.stdout.strip() == str(size), res.stderr
    # 8 MB is thousands of MTU-sized segments and at least 128 GSO packets of <= 64 KB
    assert forwarded < 20, f"node 1's stack forwarded {forwarded} of the transfer's packets"


def _fib_main_flags(lab: MultiLab, node: str) -> int:
    """The DP_F_FIB_MAIN_* bits of ``node``'s ciliary_config (agent/fibdirect.py)."""
    nrec = next(n for n in manager.record(lab.name).nodes if n.name == node)
    bpf_map = Map.from_pin(Path(nrec.pin_dir) / "ciliary_config")
    try:
        return ConfigMap(bpf_map).get().flags & (DP_F_FIB_MAIN_V4 | DP_F_FIB_MAIN_V6)
    finally:
        bpf_map.close()


@pytest.mark.parametrize("family", [4, 6])
def test_a_rule_added_on_the_node_applies_to_its_pods_traffic(lab: MultiLab, family: int) -> None:
    """In native routing bpf_lxc looks a remote pod's route up in the main table alone while
    the node's ip rules cannot change it (lib/fib.h, agent/fibdirect.py); a rule added later that
    prohibits the server's address on the client's node applies to the client's packets at once
    (the agent sees it and goes back to the full lookup), and when it is gone the direct lookup
    comes back. In tunnel mode the packets are encapsulated, no route is looked up for them: the
    rule changes nothing."""
    _serving(lab, family)
    bit = DP_F_FIB_MAIN_V4 if family == 4 else DP_F_FIB_MAIN_V6
    server = lab.ip("shop/server", family)
    node = next(n for n in manager.record(lab.name).nodes if n.name == lab.nodes[0])
    echo = ["ciliary", "workload", "tcp-echo", server, "7", "--count", "1"]
    rule = ["ip", f"-{family}", "-n", node.netns, "rule"]
    prefix = f"{server}/{32 if family == 4 else 128}"
    native = lab.mode == "native"
    assert bool(_fib_main_flags(lab, node.name) & bit) == native
    subprocess.run([*rule, "add", "pref", "50", "to", prefix, "prohibit"], check=True)
    try:
        if native:
            wait_for("the full lookup", lambda: not _fib_main_flags(lab, node.name) & bit, 5)
        res = lab.run("default/client", *echo)
        assert (res.returncode == 0) == (not native), f"{res.stdout} {res.stderr}"
    finally:
        subprocess.run([*rule, "del", "pref", "50"], check=True)
    if native:
        wait_for("the direct lookup", lambda: bool(_fib_main_flags(lab, node.name) & bit), 5)
    res = lab.run("default/client", *echo)
    assert res.returncode == 0, f"{res.stdout} {res.stderr}"


def _tunnel_direct(lab: MultiLab, node: str) -> set[str]:
    """The tunnel endpoints in ``node``'s ciliary_tunnel_direct (agent/fibdirect.py)."""
    nrec = next(n for n in manager.record(lab.name).nodes if n.name == node)
    bpf_map = Map.from_pin(Path(nrec.pin_dir) / TUNNEL_DIRECT_MAP)
    try:
        return {str(ep) for ep in TunnelDirectMap(bpf_map).endpoints()}
    finally:
        bpf_map.close()


def test_a_rule_added_on_the_node_applies_to_its_tunnelled_traffic(lab: MultiLab) -> None:
    """In tunnel mode bpf_lxc finds the next hop of the outer packet with the main table alone
    for the tunnel endpoints whose route the node's ip rules cannot change
    (ciliary_tunnel_direct, lib/encap.h, agent/fibdirect.py): the other nodes' IPs. A rule
    added later that prohibits the server's node on the client's node takes its endpoint out
    and the client's packets then meet the rule (the full lookup, and the tunnel device's own);
    when it is gone the endpoint comes back. In native routing the map stays empty and the
    rule, on a node address rather than the pod's, changes nothing for the pod's packets."""
    _serving(lab, 4)
    server = lab.ip("shop/server")
    rec = manager.record(lab.name)
    client_node = next(n for n in rec.nodes if n.name == lab.nodes[0])
    server_node = manager.find_pod(rec, "shop/server").node
    others = {
        (n.node_ipv4 or "").partition("/")[0] for n in rec.nodes if n.name != client_node.name
    }
    endpoint = next(
        (n.node_ipv4 or "").partition("/")[0] for n in rec.nodes if n.name == server_node
    )
    assert server_node != client_node.name
    tunnel = lab.mode == "tunnel"
    want = others if tunnel else set()
    wait_for("the proven endpoints", lambda: _tunnel_direct(lab, client_node.name) == want, 10)
    echo = ["ciliary", "workload", "tcp-echo", server, "7", "--count", "1"]
    rule = ["ip", "-4", "-n", client_node.netns, "rule"]
    subprocess.run([*rule, "add", "pref", "50", "to", f"{endpoint}/32", "prohibit"], check=True)
    try:
        if tunnel:
            wait_for(
                "the full lookup for the server's node",
                lambda: _tunnel_direct(lab, client_node.name) == others - {endpoint},
                5,
            )
        res = lab.run("default/client", *echo)
        assert (res.returncode == 0) == (not tunnel), f"{res.stdout} {res.stderr}"
    finally:
        subprocess.run([*rule, "del", "pref", "50"], check=True)
    wait_for("the direct lookup again", lambda: _tunnel_direct(lab, client_node.name) == want, 5)
    res = lab.run("default/client", *echo)
    assert res.returncode == 0, f"{res.stdout} {res.stderr}"


REMOTE_NODES = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-from-nodes, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEntities: [remote-node]
"""


def _from_node(lab: MultiLab, node: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """A command of the node itself (its netns, no pod)."""
    nrec = next(n for n in manager.record(lab.name).nodes if n.name == node)
    return subprocess.run(
        ["ip", "netns", "exec", nrec.netns, CILIARY, *argv],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_a_node_reaches_a_pod_of_another_node_as_remote_node(lab: MultiLab) -> None:
    """Node 1's own stack to node 2's server, ICMP and HTTP, IPv4 and IPv6 (tunnel mode: routed
    via ciliary_host, tunnelled by cil_from_host with HOST, read as remote-node by node 2);
    a policy allowing remote-node lets it in, one allowing only the client pod drops it at
    node 2 with source identity remote-node (6)."""
    _serving(lab, 4)
    n1, n2 = lab.nodes[0], lab.nodes[1]
    v4, v6 = lab.ip("shop/server", 4), lab.ip("shop/server", 6)
    probes = [
        ["workload", "ping", v4, "-c", "1", "-W", "1"],
        ["workload", "http-get", f"http://{v4}/", "--timeout", "1"],
        ["workload", "http-get", f"http://[{v6}]/", "--timeout", "1"],
    ]

    def all_pass() -> bool:
        return all(_from_node(lab, n1, *argv).returncode == 0 for argv in probes)

    wait_for("node 1 reaches the server (no policy)", all_pass, 20)
    kubectl(lab.kubeconfig, "apply", "-f", "-", stdin=REMOTE_NODES)
    try:
        wait_for("node 1 reaches the server (remote-node allowed)", all_pass, 20)
        kubectl(lab.kubeconfig, "apply", "-f", "-", stdin=ONLY_CLIENT)
        kubectl(lab.kubeconfig, "delete", "cnp", "-n", "shop", "server-from-nodes")

        def all_denied() -> bool:
            return all(_from_node(lab, n1, *argv).returncode != 0 for argv in probes)

        wait_for("node 1 denied (only the client allowed)", all_denied, 20)

        def denied() -> list[dict[str, Any]]:
            return [
                f
                for f in _observe(
                    _node_socket(lab, n2), "--verdict", "DROPPED", "--to-pod", "shop/server"
                )
                if f.get("drop_reason_desc") == "POLICY_DENIED" and f["source"].get("identity") == 6
            ]

        drop = wait_for("node 2's drop of remote-node", denied, 20)[-1]
        assert "reserved:remote-node" in drop["source"]["labels"], drop
    finally:
        kubectl(lab.kubeconfig, "delete", "cnp", "-n", "shop", "--all")
    wait_for("node 1 allowed again", all_pass, 20)
    if lab.mode == "tunnel":  # the agent's route: via ciliary_host from the router address
        nrec = next(n for n in manager.record(lab.name).nodes if n.name == n1)
        routes = subprocess.run(
            ["ip", "-n", nrec.netns, "route", "show", "proto", "193"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
        assert "dev ciliary_host" in routes and "src" in routes, routes


WITHIN = 8.0
"""A health change shows within a probe round in flight (probe timeout = interval) and the next."""


def _ciliary(*argv: str) -> str:
    got = subprocess.run([CILIARY, *argv], capture_output=True, text=True, timeout=30, check=False)
    assert got.returncode == 0, (argv, got.stdout, got.stderr)
    return got.stdout


def _health(node: str) -> ClusterHealth:
    status = StatusResponse.model_validate(
        json.loads(_ciliary("--node", node, "status", "-o", "json"))
    )
    assert status.cluster_health is not None
    return status.cluster_health


def _wait_health(node: str, ok: Callable[[ClusterHealth], bool], within: float) -> ClusterHealth:
    deadline = time.monotonic() + within
    while True:
        health = _health(node)
        if ok(health) or time.monotonic() > deadline:
            return health
        time.sleep(0.2)


def _paths(health: ClusterHealth, node: str) -> dict[str, tuple[bool | None, bool | None]]:
    """address → (ICMP ok, HTTP ok) of ``node`` in ``health`` (None: not probed), of the node
    and of its health endpoint."""
    (entry,) = [n for n in health.nodes if n.name == node]
    return {
        p.ip: (p.icmp.ok if p.icmp else None, p.http.ok if p.http else None)
        for p in [*entry.host, *entry.endpoint]
    }


def _node_ips(lab: MultiLab) -> dict[str, list[str]]:
    return {
        n.name: [ip for ip in (n.node_ipv4, n.node_ipv6) if ip]
        for n in manager.record(lab.name).nodes
    }


def _health_ips(lab: MultiLab) -> dict[str, list[str]]:
    """Each node's health endpoint addresses, from its CiliumNode's ``spec.health``."""
    out = {}
    for node in lab.nodes:
        spec = get_json(lab.kubeconfig, "ciliumnodes", node)["spec"]["health"]
        out[node] = [spec["ipv4"], spec["ipv6"]]
    return out


def _all_ips(lab: MultiLab) -> dict[str, list[str]]:
    return {n: ips + _health_ips(lab)[n] for n, ips in _node_ips(lab).items()}


def test_every_node_reaches_every_node_over_icmp_and_http(lab: MultiLab) -> None:
    ips, health_ips = _node_ips(lab), _health_ips(lab)
    for node in lab.nodes:
        # the node's health endpoint: identity 4, reserved:health, the addresses of spec.health
        listed = json.loads(_ciliary("--node", node, "endpoint", "list", "-o", "json"))
        (ep,) = [e for e in listed if e["identity"] == 4]
        assert [ep["ipv4"], ep["ipv6"]] == health_ips[node]
        assert (ep["pod_name"], ep["namespace"]) == ("", "")
        assert ep["netns"] == f"/run/netns/ciln-{lab.name}-{node}-health" and ep["state"] == "ready"
        table = _ciliary("--node", node, "endpoint", "list")
        assert "reserved:health" in table and health_ips[node][0] in table, table
    for node in lab.nodes:
        health = _wait_health(node, lambda h: len(h.nodes) == 3 and h.reachable() == 3, 30)
        assert health.reachable() == 3, health
        assert health.port == 4240 and health.probe_interval_s == 1.0
        assert sorted((n.name, n.local) for n in health.nodes) == sorted(
            (n, n == node) for n in lab.nodes
        )
        for n in health.nodes:
            assert [p.ip for p in n.host] == ips[n.name] and len(ips[n.name]) == 2
            assert [p.ip for p in n.endpoint] == health_ips[n.name]
            for p in [*n.host, *n.endpoint]:
                for probe in (p.icmp, p.http):
                    assert probe is not None and probe.ok and probe.latency_s is not None
                    assert 0 < probe.latency_s < 1, probe
    text = _ciliary("--node", lab.nodes[0], "status", "--all-health")
    assert "Cluster health:" in text and "3/3 reachable" in text
    for ip in (ip for node_ips in _all_ips(lab).values() for ip in node_ips):
        assert ip in text, text  # the table lists every address with its latencies
    assert text.count("reachable ") >= 24, text
    detail = _ciliary("--node", lab.nodes[0], "health", "status")
    assert f"{lab.nodes[0]} (localhost):" in detail
    assert f"Host connectivity to {ips[lab.nodes[2]][1]}:" in detail
    assert f"Endpoint connectivity to {health_ips[lab.nodes[2]][1]}:" in detail
    # 3 nodes x (2 node + 2 health endpoint addresses) x ICMP + HTTP
    assert detail.count("OK, RTT=") == 24, detail
    # the other nodes' probes arrive as remote-node (over the overlay: the VNI; native: the
    # ipcache) and pass: no policy selects reserved:health
    b = lab.nodes[1]
    flows = _observe(_node_socket(lab, b), "--to-ip", health_ips[b][0], "--port", "4240")
    remote = [f for f in flows if f["source"].get("identity") == 6]
    assert remote and all(f["verdict"] == "FORWARDED" for f in remote), flows
    assert all(f["destination"]["identity"] == 4 for f in remote), remote


def test_a_stopped_agent_is_unreachable_over_http_only(lab: MultiLab) -> None:
    a, c = lab.nodes[0], lab.nodes[2]
    _wait_health(a, lambda h: h.reachable() == 3, 30)
    manager.stop_agent(c, name=lab.name)
    t0 = time.monotonic()
    # the health endpoint's netns stays and answers ICMP; the responder was the agent's
    want = {ip: (True, False) for ip in _all_ips(lab)[c]}
    health = _wait_health(a, lambda h: _paths(h, c) == want, WITHIN)
    took = time.monotonic() - t0
    assert _paths(health, c) == want, health
    assert health.reachable() == 2
    assert "2/3 reachable" in _ciliary("--node", a, "status")
    print(f"agent stopped -> HTTP unreachable in {took:.2f}s")


def test_a_node_off_the_network_is_unreachable_over_icmp_too(lab: MultiLab) -> None:
    """After the test above (its agent stays down): its stack stops answering too."""
    a, c = lab.nodes[0], lab.nodes[2]
    health = _wait_health(a, lambda h: all(icmp for icmp, _ in _paths(h, c).values()), 30)
    assert all(icmp for icmp, _ in _paths(health, c).values()), health
    subprocess.run(
        ["ip", "-n", f"ciln-{lab.name}-{c}", "link", "set", "eth0", "down"], check=True, timeout=10
    )
    t0 = time.monotonic()
    want = {ip: (False, False) for ip in _all_ips(lab)[c]}
    health = _wait_health(a, lambda h: _paths(h, c) == want, WITHIN)
    took = time.monotonic() - t0
    assert _paths(health, c) == want, health
    (entry,) = [n for n in health.nodes if n.name == c]
    assert entry.host[0].icmp is not None and "no echo reply" in entry.host[0].icmp.status
    text = _ciliary("--node", a, "status")  # without --all-health: the unreachable node's rows
    after = text.split("Cluster health")[1]
    assert "2/3 reachable" in text and _node_ips(lab)[c][0] in after, text
    assert _node_ips(lab)[a][0] not in after, text
    print(f"eth0 down -> ICMP and HTTP unreachable in {took:.2f}s")
